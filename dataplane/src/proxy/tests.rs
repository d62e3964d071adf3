//! The core driven directly: no sockets, synthetic time.

use super::*;
use crate::dispatch::{parse_list, shared, Table};
use crate::sip::Uri;
use crate::txn::TRYING_DELAY;
use std::time::Duration;

pub(super) const CALLER: &str = "127.0.0.1:40000";
pub(super) const DEST: &str = "127.0.0.1:5070";

/// A worker over `list` (IP-literal destinations), for these tests and
/// the media ones.
pub(super) fn worker(cfg: ProxyConfig, list: &str, now: Instant) -> Worker {
    let defs = parse_list(list).expect("list");
    let table = Table::build(&defs, now, &mut |uri: &str| {
        let u = Uri::parse(uri.as_bytes()).map_err(|e| e.to_string())?;
        crate::route::uri_addr(&u).ok_or_else(|| "not an IP".to_string())
    })
    .expect("table");
    Worker::new(
        0,
        Arc::new(cfg),
        shared(table),
        Arc::new(ProxyStats::default()),
        now,
    )
}

pub(super) fn invite(branch: &str) -> Vec<u8> {
    format!(
        "INVITE sip:100@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>\r\n\
         Call-ID: {branch}@t\r\n\
         CSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

pub(super) fn sent(out: &Outbox) -> Vec<(SocketAddr, String)> {
    out.iter()
        .map(|(_, dst, b)| (dst, String::from_utf8_lossy(b).into_owned()))
        .collect()
}

/// The To-tag of a response.
pub(super) fn to_tag(resp: &str) -> String {
    let to = resp.lines().find(|l| l.starts_with("To:")).unwrap();
    to.split(";tag=").nth(1).unwrap().trim().to_owned()
}

/// A response to the request sipvane forwarded, as the destination sends it.
pub(super) fn answer(forwarded: &str, code: u16, to_tag: &str) -> Vec<u8> {
    let msg = parse(forwarded.as_bytes()).expect("forwarded parses");
    let mut out = Vec::new();
    let opts = ReplyOpts {
        to_tag: Some(to_tag.as_bytes()),
        ..ReplyOpts::default()
    };
    build::reply(&msg, code, build::reason_phrase(code), &opts, &mut out).expect("reply");
    out
}

#[test]
fn invite_is_forwarded_answered_and_becomes_a_dialog() {
    let t0 = Instant::now();
    let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        &invite("z9hG4bK-a"),
        &mut out,
    );
    // Forwarded at once; no 100 Trying (the answer comes within 200 ms).
    let s = sent(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].0, DEST.parse().unwrap());
    assert!(
        s[0].1.contains("Record-Route: <sip:127.0.0.1:5061;lr>"),
        "{}",
        s[0].1
    );
    assert!(s[0].1.contains("Max-Forwards: 69"));

    let ok = answer(&s[0].1, 200, "t1");
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, DEST.parse().unwrap(), &ok, &mut out);
    let s = sent(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, CALLER.parse().unwrap());
    assert!(s[0].1.starts_with("SIP/2.0 200 "));
    assert!(
        !s[0]
            .1
            .contains(std::str::from_utf8(branch::PREFIX).unwrap()),
        "sipvane's Via must be popped"
    );
    assert_eq!(w.occupancy().1, 1, "one dialog");
    assert_eq!(w.stats().snapshot().calls_answered, 1);

    // The callee retransmits its 2xx until the ACK: relayed again,
    // counted once.
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, DEST.parse().unwrap(), &ok, &mut out);
    assert_eq!(sent(&out).len(), 1, "a 2xx retransmission is relayed");
    assert_eq!(w.stats().snapshot().calls_answered, 1);
    assert_eq!(w.occupancy().1, 1);
}

#[test]
fn call_events_start_answered_end_and_failed() {
    let t0 = Instant::now();
    let sink = Arc::new(EventSink::new(16));
    let list = format!("1 sip:{DEST}\n");
    let mut w = worker(ProxyConfig::default(), &list, t0).with_events(sink.clone());
    let caller: SocketAddr = CALLER.parse().unwrap();
    let dest: SocketAddr = DEST.parse().unwrap();
    let mut out = Outbox::new();
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-ev"), &mut out);
    let fwd = sent(&out)[0].1.clone();
    let t1 = t0 + Duration::from_millis(250);
    out.clear();
    w.on_datagram(t1, SOCK_PRIVATE, dest, &answer(&fwd, 200, "t9"), &mut out);
    let bye = format!(
        "BYE sip:100@{DEST} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-bye\r\n\
         Route: <sip:127.0.0.1:5061;lr>\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>;tag=t9\r\n\
         Call-ID: z9hG4bK-ev@t\r\n\
         CSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let t2 = t0 + Duration::from_secs(3);
    out.clear();
    w.on_datagram(t2, SOCK_PRIVATE, caller, bye.as_bytes(), &mut out);

    let got: Vec<CallEvent> = std::iter::from_fn(|| sink.pop()).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        matches!(&got[0], CallEvent::Start { call_id, set: 1, dest: d, ruri, .. }
            if &**call_id == "z9hG4bK-ev@t" && *d == dest && &**ruri == "sip:100@127.0.0.1:5060"),
        "{:?}",
        got[0]
    );
    assert!(
        matches!(&got[1], CallEvent::Answered { setup, dest: d, .. }
            if *setup == Duration::from_millis(250) && *d == dest),
        "{:?}",
        got[1]
    );
    assert!(
        matches!(&got[2], CallEvent::End { duration, timeout: false, dest: Some(d), .. }
            if *duration == Duration::from_millis(2750) && *d == dest),
        "{:?}",
        got[2]
    );

    // A destination answering 486 (not a failover code): the call fails.
    out.clear();
    w.on_datagram(t2, SOCK_PUBLIC, caller, &invite("z9hG4bK-busy"), &mut out);
    let fwd = sent(&out)[0].1.clone();
    out.clear();
    w.on_datagram(t2, SOCK_PRIVATE, dest, &answer(&fwd, 486, "t2"), &mut out);
    let got: Vec<CallEvent> = std::iter::from_fn(|| sink.pop()).collect();
    assert!(
        matches!(&got[..], [CallEvent::Start { .. }, CallEvent::Failed { code: 486, dest: Some(d), call_id, .. }]
            if *d == dest && &**call_id == "z9hG4bK-busy@t"),
        "{got:?}"
    );
    assert_eq!(sink.dropped(), 0);
}

#[test]
fn no_answer_fails_over_then_503_when_none_left() {
    let t0 = Instant::now();
    let list = "1 sip:127.0.0.1:5070\n1 sip:127.0.0.1:5080\n";
    let mut w = worker(ProxyConfig::default(), list, t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        &invite("z9hG4bK-b"),
        &mut out,
    );
    let first = sent(&out)[0].0;
    // Drive time in 100 ms steps to 5 s: two fr_timer (2 s) expiries.
    let mut dests = vec![first];
    let mut finals = Vec::new();
    let mut tryings = Vec::new();
    for step in 1..=50 {
        let now = t0 + Duration::from_millis(100 * step);
        if w.next_deadline().is_some_and(|d| d <= now) {
            out.clear();
            w.on_timer(now, &mut out);
            for (dst, m) in sent(&out) {
                if m.starts_with("INVITE ") && !dests.contains(&dst) {
                    dests.push(dst);
                }
                if m.starts_with("SIP/2.0 100 ") {
                    tryings.push(now - t0);
                } else if m.starts_with("SIP/2.0 ") {
                    finals.push(m);
                }
            }
        }
    }
    assert_eq!(dests.len(), 2, "both destinations tried: {dests:?}");
    // Nothing came back: sipvane's own 100 Trying went out once, at 200 ms.
    assert_eq!(tryings, vec![Duration::from_millis(200)]);
    // The 503 went out at 4 s; Timer G resent it (unchanged) at 4.5 s.
    assert_eq!(finals.len(), 2, "{finals:?}");
    assert!(finals[0].starts_with("SIP/2.0 503 "), "{}", finals[0]);
    assert_eq!(finals[0], finals[1]);
    let st = w.stats().snapshot();
    assert_eq!((st.failovers, st.timeouts, st.calls_failed), (1, 2, 1));

    // The caller's ACK stops the retransmissions.
    let ack = String::from_utf8(invite("z9hG4bK-b"))
        .unwrap()
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace(
            "To: <sip:100@127.0.0.1>",
            &format!("To: <sip:100@127.0.0.1>;tag={}", to_tag(&finals[0])),
        );
    let t5 = t0 + Duration::from_secs(5);
    out.clear();
    w.on_datagram(
        t5,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        ack.as_bytes(),
        &mut out,
    );
    assert!(out.is_empty(), "an ACK for our 503 is absorbed");
    for step in 1..=100 {
        let now = t5 + Duration::from_millis(100 * step);
        out.clear();
        w.on_timer(now, &mut out);
        assert!(out.is_empty(), "nothing after the ACK: {:?}", sent(&out));
    }
}

#[test]
fn overload_sheds_new_invites_with_retry_after() {
    let t0 = Instant::now();
    let cfg = ProxyConfig {
        overload_transactions: 1,
        retry_after_s: 7,
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        &invite("z9hG4bK-c1"),
        &mut out,
    );
    out.clear();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        &invite("z9hG4bK-c2"),
        &mut out,
    );
    let s = sent(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].1.starts_with("SIP/2.0 503 "));
    assert!(s[0].1.contains("Retry-After: 7"), "{}", s[0].1);
    assert_eq!(w.stats().snapshot().overload_rejects, 1);
}

#[test]
fn no_usable_destination_gets_503() {
    let t0 = Instant::now();
    // Flag 4: administratively disabled.
    let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST} 4\n"), t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        &invite("z9hG4bK-d"),
        &mut out,
    );
    let s = sent(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].1.starts_with("SIP/2.0 503 "));
    assert_eq!(w.stats().snapshot().no_destination, 1);

    // The caller's ACK for that 503 has no transaction to end and
    // nowhere to go: dropped, and counted as such (not as a response).
    let ack = String::from_utf8(invite("z9hG4bK-d"))
        .unwrap()
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace(
            "To: <sip:100@127.0.0.1>",
            &format!("To: <sip:100@127.0.0.1>;tag={}", to_tag(&s[0].1)),
        );
    out.clear();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        ack.as_bytes(),
        &mut out,
    );
    assert!(sent(&out).is_empty());
    let st = w.stats().snapshot();
    assert_eq!((st.unmatched_acks, st.stray_responses), (1, 0));
}

#[test]
fn garbage_is_counted_never_answered() {
    let t0 = Instant::now();
    let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0);
    let mut out = Outbox::new();
    for junk in [
        &b"\x00\xff\x10"[..],
        b"INVITE",
        b"SIP/2.0 200\r\n\r\n",
        b"\r\n\r\n",
    ] {
        w.on_datagram(t0, SOCK_PUBLIC, CALLER.parse().unwrap(), junk, &mut out);
    }
    assert!(out.is_empty());
    assert_eq!(w.stats().snapshot().parse_errors, 2);
}

/// RFC 3261 §17.2.1: the INVITE's 100 Trying only when nothing provisional
/// went upstream within 200 ms — never when the destination rings sooner,
/// at once when the caller retransmits first, and resent afterwards.
#[test]
fn trying_only_when_no_provisional_within_200_ms() {
    let t0 = Instant::now();
    let caller: SocketAddr = CALLER.parse().unwrap();
    let dest: SocketAddr = DEST.parse().unwrap();
    let upstream = |out: &Outbox| -> Vec<String> {
        sent(out)
            .into_iter()
            .filter(|(d, _)| *d == caller)
            .map(|(_, m)| m)
            .collect()
    };
    let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0);
    let mut out = Outbox::new();

    // A destination that rings after 150 ms: its 180 is the only provisional.
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-t1"), &mut out);
    let fwd = sent(&out)[0].1.clone();
    out.clear();
    let t150 = t0 + Duration::from_millis(150);
    w.on_datagram(t150, SOCK_PRIVATE, dest, &answer(&fwd, 180, "r1"), &mut out);
    let up = upstream(&out);
    assert!(up.len() == 1 && up[0].starts_with("SIP/2.0 180 "), "{up:?}");
    out.clear();
    w.on_timer(t0 + Duration::from_millis(400), &mut out);
    assert!(upstream(&out).is_empty(), "{:?}", upstream(&out));

    // A silent destination: nothing at 199 ms, the 100 at 200 ms, and the
    // caller's retransmission gets it again.
    let b = t0 + Duration::from_secs(1);
    let ms = |n: u64| b + Duration::from_millis(n);
    out.clear();
    w.on_datagram(b, SOCK_PUBLIC, caller, &invite("z9hG4bK-t2"), &mut out);
    assert!(upstream(&out).is_empty());
    out.clear();
    w.on_timer(ms(199), &mut out);
    assert!(upstream(&out).is_empty(), "{:?}", upstream(&out));
    assert!(w.next_deadline().is_some_and(|d| d <= b + TRYING_DELAY));
    w.on_timer(b + TRYING_DELAY, &mut out);
    let up = upstream(&out);
    assert!(
        up.len() == 1 && up[0].starts_with("SIP/2.0 100 Trying"),
        "{up:?}"
    );
    assert!(up[0].contains("branch=z9hG4bK-t2"), "{}", up[0]);
    out.clear();
    w.on_datagram(
        ms(500),
        SOCK_PUBLIC,
        caller,
        &invite("z9hG4bK-t2"),
        &mut out,
    );
    let up = upstream(&out);
    assert!(up.len() == 1 && up[0].starts_with("SIP/2.0 100 "), "{up:?}");

    // A caller retransmitting before 200 ms (T1 set short) gets the 100 at
    // once, and not a second one at 200 ms.
    out.clear();
    w.on_datagram(
        ms(600),
        SOCK_PUBLIC,
        caller,
        &invite("z9hG4bK-t3"),
        &mut out,
    );
    out.clear();
    w.on_datagram(
        ms(650),
        SOCK_PUBLIC,
        caller,
        &invite("z9hG4bK-t3"),
        &mut out,
    );
    let up = upstream(&out);
    assert!(up.len() == 1 && up[0].starts_with("SIP/2.0 100 "), "{up:?}");
    out.clear();
    w.on_timer(ms(900), &mut out);
    assert!(
        !upstream(&out).iter().any(|m| m.contains("z9hG4bK-t3")),
        "{:?}",
        upstream(&out)
    );
    assert_eq!(w.stats().snapshot().replies_1xx, 3);
}

#[test]
fn ip_bytes_writes_what_display_writes() {
    for ip in [
        "0.0.0.0",
        "127.0.0.1",
        "10.20.100.255",
        "192.168.9.99",
        "255.255.255.255",
        "::1",
        "2001:db8::42",
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(&ip_bytes(ip)[..], ip.to_string().as_bytes());
    }
}

#[test]
fn stateless_branch_is_the_cookie_and_sixteen_hex_digits() {
    let b = stateless_branch(b"z9hG4bK-1", b"call@host");
    assert_eq!(b.len(), 9 + 16);
    assert!(b.starts_with(b"z9hG4bKsa"));
    assert!(b[9..]
        .iter()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(b, stateless_branch(b"z9hG4bK-1", b"call@host"));
    assert_ne!(b, stateless_branch(b"z9hG4bK-2", b"call@host"));
}

/// An INVITE carrying `pad` bytes of SDP-like body.
fn large_invite(branch: &str, pad: usize) -> Vec<u8> {
    let body = "a=x\r\n".repeat(pad / 5);
    format!(
        "INVITE sip:100@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>\r\n\
         Call-ID: {branch}@t\r\n\
         CSeq: 1 INVITE\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn a_request_over_the_udp_mtu_goes_over_tcp_and_back_to_udp_if_refused() {
    let t0 = Instant::now();
    let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0);
    let dest: SocketAddr = DEST.parse().unwrap();
    let mut out = Outbox::new();
    // Small: UDP, as the destination says.
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        &invite("z9hG4bK-s"),
        &mut out,
    );
    let s: Vec<_> = out
        .iter()
        .map(|(sock, a, b)| (sock, a, b.to_vec()))
        .collect();
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].0, s[0].1), (SOCK_PRIVATE, dest));
    assert!(String::from_utf8_lossy(&s[0].2).contains("Via: SIP/2.0/UDP 127.0.0.1"));

    // Over 1300 bytes: the same destination over TCP, the Via says so.
    out.clear();
    let big = large_invite("z9hG4bK-b", 1400);
    w.on_datagram(t0, SOCK_PUBLIC, CALLER.parse().unwrap(), &big, &mut out);
    let s: Vec<_> = out
        .iter()
        .map(|(sock, a, b)| (sock, a, b.to_vec()))
        .collect();
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].0, s[0].1), (SOCK_TCP_OUT, dest));
    let tcp_copy = String::from_utf8_lossy(&s[0].2).into_owned();
    assert!(
        tcp_copy.contains("Via: SIP/2.0/TCP 127.0.0.1"),
        "{tcp_copy}"
    );
    assert_eq!(w.stats().snapshot().udp_mtu_switches, 1);

    // Nobody listens on TCP there: the same attempt goes over UDP instead
    // of failing the call over (same branch: nothing was sent on TCP).
    out.clear();
    w.on_connect_failed(t0, dest, &mut out);
    let s: Vec<_> = out
        .iter()
        .map(|(sock, a, b)| (sock, a, b.to_vec()))
        .collect();
    assert_eq!(s.len(), 1, "resent once");
    assert_eq!((s[0].0, s[0].1), (SOCK_PRIVATE, dest));
    let udp_copy = String::from_utf8_lossy(&s[0].2).into_owned();
    // Over TCP the callee's side of the double Record-Route named TCP;
    // over UDP one entry is left.
    assert_eq!(
        udp_copy,
        tcp_copy
            .replacen("SIP/2.0/TCP 127.0.0.1", "SIP/2.0/UDP 127.0.0.1", 1)
            .replacen(
                "Record-Route: <sip:127.0.0.1:5060;transport=tcp;lr>\r\n",
                "",
                1
            )
    );
    let st = w.stats().snapshot();
    assert_eq!(
        (st.udp_mtu_fallbacks, st.connect_failures, st.failovers),
        (1, 0, 0)
    );

    // udp_mtu = 0: never switched.
    let cfg = ProxyConfig {
        udp_mtu: 0,
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    out.clear();
    w.on_datagram(t0, SOCK_PUBLIC, CALLER.parse().unwrap(), &big, &mut out);
    let s: Vec<_> = out.iter().map(|(sock, a, _)| (sock, a)).collect();
    assert_eq!(s, vec![(SOCK_PRIVATE, dest)]);
}

/// The Record-Route lines of a forwarded request, top first.
fn rr_lines(fwd: &str) -> Vec<String> {
    fwd.lines()
        .filter_map(|l| l.strip_prefix("Record-Route: "))
        .map(str::to_owned)
        .collect()
}

/// A BYE of the dialog of `invite(call)` with these Route values (top
/// first), from the side whose tag is `from_tag` to the one with `to_tag`.
fn bye_of(call: &str, ruri: &str, routes: &[String], from_tag: &str, to_tag: &str) -> Vec<u8> {
    let route: String = routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
    format!(
        "BYE {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {DEST};branch=z9hG4bK-bye{from_tag}{call}\r\n\
         {route}\
         Max-Forwards: 70\r\n\
         From: <sip:100@127.0.0.1>;tag={from_tag}\r\n\
         To: <sip:a@127.0.0.1>;tag={to_tag}\r\n\
         Call-ID: {call}@t\r\n\
         CSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// What the worker sent: socket, address, text.
fn sent_on(out: &Outbox) -> Vec<(SocketId, SocketAddr, String)> {
    out.iter()
        .map(|(sock, a, b)| (sock, a, String::from_utf8_lossy(b).into_owned()))
        .collect()
}

#[test]
fn in_dialog_requests_towards_a_tcp_caller_follow_its_flow_token() {
    let t0 = Instant::now();
    let cfg = ProxyConfig {
        tls_port: Some(5081),
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let caller: SocketAddr = CALLER.parse().unwrap();
    let dest: SocketAddr = DEST.parse().unwrap();
    let mut out = Outbox::new();
    for (socket, leg, via) in [(SOCK_TCP, "tcp", "TCP"), (SOCK_TLS, "tls", "TLS")] {
        let call = format!("z9hG4bK-fl{leg}");
        // The INVITE arrives over the caller's connection, goes to a UDP
        // callee: two entries, the callee's (top) UDP, the caller's over
        // its transport with the flow token.
        out.clear();
        w.on_datagram(t0, socket, caller, &invite(&call), &mut out);
        let s = sent(&out);
        assert_eq!(s.len(), 1);
        let rr = rr_lines(&s[0].1);
        assert_eq!(rr.len(), 2, "{rr:?}");
        assert_eq!(rr[0], "<sip:127.0.0.1:5061;lr>");
        let port = if leg == "tls" { 5081 } else { 5060 };
        assert!(
            rr[1].starts_with(&format!(
                "<sip:127.0.0.1:{port};transport={leg};lr;sv-flow="
            )),
            "{rr:?}"
        );
        // The callee hangs up over UDP along its route set (the entries in
        // order): its BYE's Request-URI is the caller's Contact, a private
        // address nobody can reach; the token sends it over the flow, both
        // our entries popped, our Via naming the caller's transport.
        out.clear();
        let ruri = "sip:a@192.168.1.20:5070;transport=tcp";
        w.on_datagram(
            t0,
            SOCK_PRIVATE,
            dest,
            &bye_of(&call, ruri, &rr, "callee1", "f1"),
            &mut out,
        );
        let s = sent_on(&out);
        assert_eq!(s.len(), 1, "{s:?}");
        let want = if leg == "tls" {
            SOCK_TLS_OUT
        } else {
            SOCK_TCP_OUT
        };
        assert_eq!((s[0].0, s[0].1), (want, caller));
        let fwd = &s[0].2;
        assert!(fwd.starts_with(&format!("BYE {ruri} ")), "{fwd}");
        assert!(
            fwd.contains(&format!("Via: SIP/2.0/{via} 127.0.0.1:5061;")),
            "{fwd}"
        );
        assert!(
            !fwd.contains("Route:"),
            "our Route entries are popped:\n{fwd}"
        );
        // The caller's own BYE (To-tag = the callee's), its route set the
        // reverse: not sent back to it; both entries popped, to the callee.
        out.clear();
        let mut back = rr.clone();
        back.reverse();
        let own = bye_of(
            &format!("{call}x"),
            &format!("sip:b@{DEST}"),
            &back,
            "f1",
            "callee1",
        );
        w.on_datagram(t0, socket, caller, &own, &mut out);
        let s = sent_on(&out);
        assert_eq!((s[0].0, s[0].1), (SOCK_PRIVATE, dest), "{s:?}");
        assert!(!s[0].2.contains("Route:"), "{}", s[0].2);
    }
    // A UDP caller to a UDP callee gets the one plain entry.
    out.clear();
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-udp"), &mut out);
    assert_eq!(rr_lines(&sent(&out)[0].1), ["<sip:127.0.0.1:5061;lr>"]);
}

#[test]
fn a_udp_caller_to_a_tcp_callee_gets_a_tcp_entry_facing_the_callee() {
    let t0 = Instant::now();
    let mut w = worker(
        ProxyConfig::default(),
        &format!("1 sip:{DEST};transport=tcp\n"),
        t0,
    );
    let caller: SocketAddr = CALLER.parse().unwrap();
    let dest: SocketAddr = DEST.parse().unwrap();
    let mut out = Outbox::new();
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-ut"), &mut out);
    let s = sent_on(&out);
    assert_eq!((s[0].0, s[0].1), (SOCK_TCP_OUT, dest));
    let rr = rr_lines(&s[0].2);
    assert_eq!(
        rr,
        [
            "<sip:127.0.0.1:5060;transport=tcp;lr>",
            "<sip:127.0.0.1:5061;lr>"
        ]
    );
    // The callee's BYE (over TCP, on a connection of its own or ours),
    // along the entries: both popped, to the caller's Contact over UDP.
    out.clear();
    let bye = bye_of(
        "z9hG4bK-ut",
        &format!("sip:a@{CALLER}"),
        &rr,
        "callee1",
        "f1",
    );
    w.on_datagram(t0, SOCK_TCP, dest, &bye, &mut out);
    let s = sent_on(&out);
    assert_eq!((s[0].0, s[0].1), (SOCK_PRIVATE, caller), "{s:?}");
    assert!(s[0].2.contains("Via: SIP/2.0/UDP 127.0.0.1:5061;"));
    assert!(!s[0].2.contains("Route:"), "{}", s[0].2);
    // The caller's ACK/BYE over UDP along the reverse: to the callee over TCP.
    out.clear();
    let mut back = rr.clone();
    back.reverse();
    let own = bye_of(
        "z9hG4bK-ut2",
        &format!("sip:b@{DEST};transport=tcp"),
        &back,
        "f1",
        "callee1",
    );
    w.on_datagram(t0, SOCK_PRIVATE, caller, &own, &mut out);
    let s = sent_on(&out);
    assert_eq!((s[0].0, s[0].1), (SOCK_TCP_OUT, dest), "{s:?}");
    // A TCP caller to the TCP callee: one entry, with its token.
    out.clear();
    w.on_datagram(t0, SOCK_TCP, caller, &invite("z9hG4bK-tt"), &mut out);
    let rr = rr_lines(&sent(&out)[0].1);
    assert_eq!(rr.len(), 1);
    assert!(
        rr[0].starts_with("<sip:127.0.0.1:5061;lr;sv-flow="),
        "{rr:?}"
    );
}
