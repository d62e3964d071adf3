//! The proxy core with media anchoring, driven directly: the engine's ng
//! replies are written by the test, time is synthetic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::media::{MediaConfig, MediaPolicy, MediaShared, SOCK_MEDIA};
use super::*;
use crate::rtpengine::ng::split_cookie;
use crate::rtpengine::NgFlags;

const CALLER: &str = "127.0.0.1:40000";
const DEST: &str = "127.0.0.1:5070";
const ENGINE: &str = "127.0.0.1:22222";
const ENGINE2: &str = "127.0.0.1:22223";

const OFFER_SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\n";
const ENGINE_OFFER_SDP: &str = "v=0\r\no=- 1 1 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
const ANSWER_SDP: &str = "v=0\r\no=- 2 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n";
const ENGINE_ANSWER_SDP: &str = "v=0\r\no=- 2 1 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\nm=audio 40002 RTP/AVP 0\r\n";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn worker(policy: MediaPolicy, engines: &[&str], now: Instant) -> Worker {
    let media = MediaConfig {
        engines: engines.iter().map(|e| (addr(e), 1)).collect(),
        offer_flags: NgFlags::parse("replace-origin").unwrap(),
        answer_flags: NgFlags::parse("replace-origin").unwrap(),
        timeout: Duration::from_millis(100),
        retries: 1,
        on_failure: policy,
        ..MediaConfig::default()
    };
    let cfg = ProxyConfig {
        media: Some(Arc::new(MediaShared::new(media, 1, 7))),
        ..ProxyConfig::default()
    };
    super::tests::worker(cfg, &format!("1 sip:{DEST}\n"), now)
}

fn invite_with_sdp(branch: &str) -> Vec<u8> {
    format!(
        "INVITE sip:100@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>\r\n\
         Call-ID: {branch}@t\r\n\
         CSeq: 1 INVITE\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{OFFER_SDP}",
        OFFER_SDP.len()
    )
    .into_bytes()
}

/// (socket, destination, text) of everything queued.
fn sent(out: &Outbox) -> Vec<(SocketId, SocketAddr, String)> {
    out.iter()
        .map(|(s, dst, b)| (s, dst, String::from_utf8_lossy(b).into_owned()))
        .collect()
}

fn ng_to_engine(out: &Outbox) -> Vec<(SocketAddr, String)> {
    sent(out)
        .into_iter()
        .filter(|(s, _, _)| *s == SOCK_MEDIA)
        .map(|(_, d, t)| (d, t))
        .collect()
}

/// The engine's reply to ng request `req`: `ok`, with `sdp` when given.
fn ng_reply(req: &str, sdp: Option<&str>) -> Vec<u8> {
    let (cookie, _) = split_cookie(req.as_bytes()).unwrap();
    let mut v = cookie.to_vec();
    v.extend_from_slice(b" d");
    if let Some(sdp) = sdp {
        v.extend_from_slice(format!("3:sdp{}:{sdp}", sdp.len()).as_bytes());
    }
    v.extend_from_slice(b"6:result2:oke");
    v
}

/// A response to the forwarded INVITE, with `sdp` as its body.
fn response(forwarded: &str, code: u16, sdp: &str) -> Vec<u8> {
    let msg = parse(forwarded.as_bytes()).expect("forwarded parses");
    let mut out = Vec::new();
    let opts = ReplyOpts {
        to_tag: Some(b"t1"),
        ..ReplyOpts::default()
    };
    build::reply(&msg, code, build::reason_phrase(code), &opts, &mut out).expect("reply");
    let text = String::from_utf8(out).unwrap();
    let head = text
        .strip_suffix("Content-Length: 0\r\n\r\n")
        .expect("empty reply");
    format!(
        "{head}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

fn body_of(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn content_length(msg: &str) -> usize {
    let m = parse(msg.as_bytes()).unwrap();
    m.content_length().unwrap() as usize
}

#[test]
fn invite_waits_for_the_offer_and_carries_the_engines_sdp() {
    let t0 = Instant::now();
    let mut w = worker(MediaPolicy::Reject, &[ENGINE], t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        addr(CALLER),
        &invite_with_sdp("z9hG4bK-m1"),
        &mut out,
    );
    let s = sent(&out);
    assert!(
        !s.iter().any(|(_, _, t)| t.starts_with("INVITE ")),
        "held: {s:?}"
    );
    let ng = ng_to_engine(&out);
    // The engine takes longer than 200 ms: the caller gets 100 Trying.
    out.clear();
    let t_trying = t0 + crate::txn::TRYING_DELAY;
    assert!(w.next_deadline().is_some_and(|d| d <= t_trying));
    w.on_timer(t_trying, &mut out);
    let s: Vec<_> = sent(&out)
        .into_iter()
        .filter(|(_, d, _)| *d == addr(CALLER))
        .collect();
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].2.starts_with("SIP/2.0 100 "), "{s:?}");
    assert_eq!(ng.len(), 1);
    assert_eq!(ng[0].0, addr(ENGINE));
    assert!(ng[0].1.contains("7:command5:offer"), "{}", ng[0].1);
    assert!(ng[0].1.contains("8:from-tag2:f1"), "{}", ng[0].1);

    // The engine answers: the INVITE goes out with its SDP.
    let reply = ng_reply(&ng[0].1, Some(ENGINE_OFFER_SDP));
    out.clear();
    w.on_datagram(t0, SOCK_MEDIA, addr(ENGINE), &reply, &mut out);
    let s = sent(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].1, addr(DEST));
    let fwd = s[0].2.clone();
    assert!(fwd.starts_with("INVITE "));
    assert_eq!(body_of(&fwd), ENGINE_OFFER_SDP);
    assert_eq!(content_length(&fwd), ENGINE_OFFER_SDP.len());

    // The 200's SDP goes through `answer` before the caller sees it.
    let ok = response(&fwd, 200, ANSWER_SDP);
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, addr(DEST), &ok, &mut out);
    let ng = ng_to_engine(&out);
    assert_eq!(ng.len(), 1, "{:?}", sent(&out));
    assert!(ng[0].1.contains("7:command6:answer"), "{}", ng[0].1);
    assert!(ng[0].1.contains("6:to-tag2:t1"), "{}", ng[0].1);
    assert!(!sent(&out)
        .iter()
        .any(|(_, _, t)| t.starts_with("SIP/2.0 200")));

    // A retransmitted 200 while the answer is out is not answered twice.
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, addr(DEST), &ok, &mut out);
    let reply = ng_reply(&ng[0].1, Some(ENGINE_ANSWER_SDP));
    w.on_datagram(t0, SOCK_MEDIA, addr(ENGINE), &reply, &mut out);
    let s = sent(&out);
    let oks: Vec<_> = s
        .iter()
        .filter(|(_, _, t)| t.starts_with("SIP/2.0 200"))
        .collect();
    assert!(!oks.is_empty(), "{s:?}");
    for (_, dst, t) in &oks {
        assert_eq!(*dst, addr(CALLER));
        assert_eq!(body_of(t), ENGINE_ANSWER_SDP);
        assert_eq!(content_length(t), ENGINE_ANSWER_SDP.len());
    }
    assert_eq!(w.occupancy().1, 1, "one dialog");

    // BYE ends the dialog and deletes the session.
    let bye = format!(
        "BYE sip:100@{DEST} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-bye\r\n\
         Max-Forwards: 70\r\n\
         Route: <sip:127.0.0.1:5061;lr>\r\n\
         From: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>;tag=t1\r\n\
         Call-ID: z9hG4bK-m1@t\r\n\
         CSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    out.clear();
    w.on_datagram(t0, SOCK_PUBLIC, addr(CALLER), bye.as_bytes(), &mut out);
    let ng = ng_to_engine(&out);
    assert_eq!(ng.len(), 1, "{:?}", sent(&out));
    assert!(ng[0].1.contains("7:command6:delete"), "{}", ng[0].1);
    assert!(ng[0].1.contains("7:call-id12:z9hG4bK-m1@t"), "{}", ng[0].1);
    assert!(sent(&out)
        .iter()
        .any(|(_, d, t)| *d == addr(DEST) && t.starts_with("BYE ")));
    w.on_datagram(
        t0,
        SOCK_MEDIA,
        addr(ENGINE),
        &ng_reply(&ng[0].1, None),
        &mut out,
    );

    let st = w.media.as_ref().unwrap().shared().engine_totals(0);
    assert_eq!((st.offers, st.answers, st.deletes), (1, 1, 1));
    assert_eq!(w.media.as_ref().unwrap().shared().policy_totals(), (0, 0));
}

/// Drives time in 10 ms steps until `until`, collecting everything sent.
fn run_until(w: &mut Worker, from: Instant, until: Instant) -> Vec<(SocketId, SocketAddr, String)> {
    let mut all = Vec::new();
    let mut now = from;
    let mut out = Outbox::new();
    while now < until {
        now += Duration::from_millis(10);
        if w.next_deadline().is_some_and(|d| d <= now) {
            out.clear();
            w.on_timer(now, &mut out);
            all.extend(sent(&out));
        }
    }
    all
}

#[test]
fn silent_engine_is_retried_then_the_call_gets_503() {
    let t0 = Instant::now();
    let mut w = worker(MediaPolicy::Reject, &[ENGINE], t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        addr(CALLER),
        &invite_with_sdp("z9hG4bK-m2"),
        &mut out,
    );
    assert_eq!(ng_to_engine(&out).len(), 1);
    let later = run_until(&mut w, t0, t0 + Duration::from_secs(1));
    let resent = later.iter().filter(|(s, _, _)| *s == SOCK_MEDIA).count();
    assert_eq!(resent, 1, "one retransmission (retries = 1): {later:?}");
    let finals: Vec<_> = later
        .iter()
        .filter(|(_, _, t)| t.starts_with("SIP/2.0 503"))
        .collect();
    assert!(!finals.is_empty(), "{later:?}");
    assert_eq!(finals[0].1, addr(CALLER));
    assert!(!later.iter().any(|(_, _, t)| t.starts_with("INVITE ")));
    let shared = w.media.as_ref().unwrap().shared().clone();
    assert_eq!(shared.engine_totals(0).timeouts, 1);
    assert_eq!(shared.policy_totals(), (1, 0));
}

#[test]
fn silent_engine_with_passthrough_forwards_the_original_sdp() {
    let t0 = Instant::now();
    let mut w = worker(MediaPolicy::Passthrough, &[ENGINE], t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        addr(CALLER),
        &invite_with_sdp("z9hG4bK-m3"),
        &mut out,
    );
    let later = run_until(&mut w, t0, t0 + Duration::from_millis(500));
    let fwd: Vec<_> = later
        .iter()
        .filter(|(_, d, t)| *d == addr(DEST) && t.starts_with("INVITE "))
        .collect();
    assert_eq!(fwd.len(), 1, "{later:?}");
    assert_eq!(body_of(&fwd[0].2), OFFER_SDP);
    assert_eq!(w.media.as_ref().unwrap().shared().policy_totals(), (0, 1));

    // Not anchored: the 200 goes straight through, no answer.
    let ok = response(&fwd[0].2, 200, ANSWER_SDP);
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, addr(DEST), &ok, &mut out);
    assert!(ng_to_engine(&out).is_empty());
    assert!(sent(&out)
        .iter()
        .any(|(_, _, t)| t.starts_with("SIP/2.0 200")));
}

#[test]
fn dead_engine_fails_over_to_the_next() {
    let t0 = Instant::now();
    let mut w = worker(MediaPolicy::Reject, &[ENGINE, ENGINE2], t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        addr(CALLER),
        &invite_with_sdp("z9hG4bK-m4"),
        &mut out,
    );
    let first = ng_to_engine(&out)[0].0;
    let other = if first == addr(ENGINE) {
        addr(ENGINE2)
    } else {
        addr(ENGINE)
    };
    // The first engine never answers; after its retries the offer moves on.
    let later = run_until(&mut w, t0, t0 + Duration::from_millis(250));
    let moved: Vec<_> = later
        .iter()
        .filter(|(s, d, _)| *s == SOCK_MEDIA && *d == other)
        .collect();
    assert_eq!(moved.len(), 1, "{later:?}");
    out.clear();
    let now = t0 + Duration::from_millis(250);
    w.on_datagram(
        now,
        SOCK_MEDIA,
        other,
        &ng_reply(&moved[0].2, Some(ENGINE_OFFER_SDP)),
        &mut out,
    );
    let s = sent(&out);
    assert!(
        s.iter()
            .any(|(_, d, t)| *d == addr(DEST) && body_of(t) == ENGINE_OFFER_SDP),
        "{s:?}"
    );
}

#[test]
fn cancel_while_offering_ends_the_call_and_deletes() {
    let t0 = Instant::now();
    let mut w = worker(MediaPolicy::Reject, &[ENGINE], t0);
    let mut out = Outbox::new();
    let inv = invite_with_sdp("z9hG4bK-m5");
    w.on_datagram(t0, SOCK_PUBLIC, addr(CALLER), &inv, &mut out);
    let offer = ng_to_engine(&out)[0].1.clone();
    let cancel = String::from_utf8(inv)
        .unwrap()
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .replace("Content-Type: application/sdp\r\n", "");
    let cancel = format!(
        "{}Content-Length: 0\r\n\r\n",
        cancel.split("Content-Length:").next().unwrap()
    );
    out.clear();
    w.on_datagram(t0, SOCK_PUBLIC, addr(CALLER), cancel.as_bytes(), &mut out);
    let s = sent(&out);
    assert!(
        s.iter().any(|(_, _, t)| t.starts_with("SIP/2.0 200")),
        "{s:?}"
    );
    assert!(
        s.iter().any(|(_, _, t)| t.starts_with("SIP/2.0 487")),
        "{s:?}"
    );
    let ng = ng_to_engine(&out);
    assert!(
        ng.iter().any(|(_, t)| t.contains("7:command6:delete")),
        "{ng:?}"
    );
    // The late offer reply changes nothing.
    out.clear();
    w.on_datagram(
        t0,
        SOCK_MEDIA,
        addr(ENGINE),
        &ng_reply(&offer, Some(ENGINE_OFFER_SDP)),
        &mut out,
    );
    assert!(out.is_empty(), "{:?}", sent(&out));
}

#[test]
fn failed_call_deletes_its_session() {
    let t0 = Instant::now();
    let mut w = worker(MediaPolicy::Reject, &[ENGINE], t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        addr(CALLER),
        &invite_with_sdp("z9hG4bK-m6"),
        &mut out,
    );
    let offer = ng_to_engine(&out)[0].1.clone();
    out.clear();
    w.on_datagram(
        t0,
        SOCK_MEDIA,
        addr(ENGINE),
        &ng_reply(&offer, Some(ENGINE_OFFER_SDP)),
        &mut out,
    );
    let fwd = sent(&out)[0].2.clone();
    let busy = {
        let msg = parse(fwd.as_bytes()).unwrap();
        let mut v = Vec::new();
        let opts = ReplyOpts {
            to_tag: Some(b"t1"),
            ..ReplyOpts::default()
        };
        build::reply(&msg, 486, b"Busy Here", &opts, &mut v).unwrap();
        v
    };
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, addr(DEST), &busy, &mut out);
    let s = sent(&out);
    assert!(
        s.iter()
            .any(|(_, d, t)| *d == addr(CALLER) && t.starts_with("SIP/2.0 486")),
        "{s:?}"
    );
    let ng = ng_to_engine(&out);
    assert_eq!(ng.len(), 1, "{s:?}");
    assert!(ng[0].1.contains("7:command6:delete"));
}

#[test]
fn invite_without_sdp_is_not_anchored() {
    let t0 = Instant::now();
    let mut w = worker(MediaPolicy::Reject, &[ENGINE], t0);
    let mut out = Outbox::new();
    let inv = format!(
        "INVITE sip:100@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-m7\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>\r\n\
         Call-ID: m7@t\r\n\
         CSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    w.on_datagram(t0, SOCK_PUBLIC, addr(CALLER), inv.as_bytes(), &mut out);
    assert!(ng_to_engine(&out).is_empty());
    assert!(sent(&out)
        .iter()
        .any(|(_, d, t)| *d == addr(DEST) && t.starts_with("INVITE ")));
}

/// Sets up an anchored, answered call; returns the forwarded INVITE.
fn established(w: &mut Worker, t0: Instant, branch: &str) -> String {
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        addr(CALLER),
        &invite_with_sdp(branch),
        &mut out,
    );
    let offer = ng_to_engine(&out)[0].1.clone();
    out.clear();
    w.on_datagram(
        t0,
        SOCK_MEDIA,
        addr(ENGINE),
        &ng_reply(&offer, Some(ENGINE_OFFER_SDP)),
        &mut out,
    );
    let fwd = sent(&out)[0].2.clone();
    out.clear();
    w.on_datagram(
        t0,
        SOCK_PRIVATE,
        addr(DEST),
        &response(&fwd, 200, ANSWER_SDP),
        &mut out,
    );
    let answer = ng_to_engine(&out)[0].1.clone();
    out.clear();
    w.on_datagram(
        t0,
        SOCK_MEDIA,
        addr(ENGINE),
        &ng_reply(&answer, Some(ENGINE_ANSWER_SDP)),
        &mut out,
    );
    assert_eq!(w.occupancy().1, 1);
    fwd
}

#[test]
fn reinvite_with_sdp_is_offered_to_the_calls_engine_and_a_failure_keeps_the_session() {
    let t0 = Instant::now();
    let mut w = worker(MediaPolicy::Reject, &[ENGINE, ENGINE2], t0);
    established(&mut w, t0, "z9hG4bK-m8");
    let engine = w
        .dialogs
        .iter()
        .next()
        .and_then(|(_, _, d)| d.data.media.as_ref().map(|m| m.engine))
        .unwrap();
    let engine_addr = if engine == 0 {
        addr(ENGINE)
    } else {
        addr(ENGINE2)
    };

    let reinvite = String::from_utf8(invite_with_sdp("z9hG4bK-m8"))
        .unwrap()
        .replace("branch=z9hG4bK-m8", "branch=z9hG4bK-m8re")
        .replace("To: <sip:100@127.0.0.1>", "To: <sip:100@127.0.0.1>;tag=t1")
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nRoute: <sip:127.0.0.1:5061;lr>\r\n",
        )
        .replace(
            "INVITE sip:100@127.0.0.1:5060",
            &format!("INVITE sip:100@{DEST}"),
        );
    let mut out = Outbox::new();
    w.on_datagram(t0, SOCK_PUBLIC, addr(CALLER), reinvite.as_bytes(), &mut out);
    let ng = ng_to_engine(&out);
    assert_eq!(ng.len(), 1, "{:?}", sent(&out));
    assert_eq!(ng[0].0, engine_addr, "pinned to the call's engine");
    assert!(ng[0].1.contains("7:command5:offer"));
    out.clear();
    w.on_datagram(
        t0,
        SOCK_MEDIA,
        engine_addr,
        &ng_reply(&ng[0].1, Some(ENGINE_OFFER_SDP)),
        &mut out,
    );
    let fwd = sent(&out);
    assert_eq!(fwd.len(), 1, "{fwd:?}");
    assert!(fwd[0].2.starts_with("INVITE "));
    assert_eq!(body_of(&fwd[0].2), ENGINE_OFFER_SDP);

    // 488 to the re-INVITE: relayed, and the call's session is not deleted.
    let msg = parse(fwd[0].2.as_bytes()).unwrap();
    let mut rej = Vec::new();
    let opts = ReplyOpts {
        to_tag: Some(b"t1"),
        ..ReplyOpts::default()
    };
    build::reply(&msg, 488, b"Not Acceptable Here", &opts, &mut rej).unwrap();
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, addr(DEST), &rej, &mut out);
    assert!(sent(&out)
        .iter()
        .any(|(_, d, t)| *d == addr(CALLER) && t.starts_with("SIP/2.0 488")));
    assert!(ng_to_engine(&out).is_empty(), "{:?}", sent(&out));
    assert_eq!(w.occupancy().1, 1, "the dialog lives on");
}

#[test]
fn dialog_timeout_deletes_the_session() {
    let t0 = Instant::now();
    let media = MediaConfig {
        engines: vec![(addr(ENGINE), 1)],
        ..MediaConfig::default()
    };
    let cfg = ProxyConfig {
        media: Some(Arc::new(MediaShared::new(media, 1, 7))),
        dialog_timeout: Duration::from_secs(60),
        ..ProxyConfig::default()
    };
    let mut w = super::tests::worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    established(&mut w, t0, "z9hG4bK-m9");
    let later = run_until(&mut w, t0, t0 + Duration::from_secs(61));
    let deletes: Vec<_> = later
        .iter()
        .filter(|(s, _, t)| *s == SOCK_MEDIA && t.contains("7:command6:delete"))
        .collect();
    // One delete, retransmitted unchanged (same cookie) while unanswered.
    assert!(!deletes.is_empty(), "{later:?}");
    assert!(deletes.iter().all(|d| d.2 == deletes[0].2), "{deletes:?}");
    assert_eq!(w.occupancy().1, 0);
}

#[test]
fn a_rule_overrides_the_sets_anchoring() {
    let t0 = Instant::now();
    let media = MediaConfig {
        engines: vec![(addr(ENGINE), 1)],
        // Set 1 is not anchored...
        sets: vec![9],
        ..MediaConfig::default()
    };
    let cfg = ProxyConfig {
        media: Some(Arc::new(MediaShared::new(media, 1, 7))),
        // ...but calls to user 100 are, by rule.
        rules: vec![SetRule::Prefix {
            prefix: "100".into(),
            set: 1,
            media: Some(true),
        }],
        ..ProxyConfig::default()
    };
    let mut w = super::tests::worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        addr(CALLER),
        &invite_with_sdp("z9hG4bK-r1"),
        &mut out,
    );
    assert_eq!(ng_to_engine(&out).len(), 1, "anchored by the rule");

    let other = String::from_utf8(invite_with_sdp("z9hG4bK-r2"))
        .unwrap()
        .replace("INVITE sip:100@", "INVITE sip:200@");
    out.clear();
    w.on_datagram(t0, SOCK_PUBLIC, addr(CALLER), other.as_bytes(), &mut out);
    assert!(ng_to_engine(&out).is_empty(), "set 1 is not anchored");
    assert!(sent(&out)
        .iter()
        .any(|(_, d, t)| *d == addr(DEST) && t.starts_with("INVITE ")));
}

#[test]
fn dialog_payload_stays_small() {
    // DESIGN: ≤ 512 B of state per active dialog; the dialog table adds
    // ≈190 B of index and timer to this payload.
    let size = std::mem::size_of::<DialogData>();
    eprintln!("DialogData {size} B");
    assert!(size <= 200, "DialogData is {size} B");
}

/// A worker with an engine and a registrar whose 6001 is registered from
/// `received` (a NAT) or, when `None`, from its Contact's own address.
fn registrar_worker(t0: Instant, received: Option<&str>) -> Worker {
    let (mut cfg, reg) = super::registrar_tests::config(t0, false);
    let media = MediaConfig {
        engines: vec![(addr(ENGINE), 1)],
        offer_flags: NgFlags::parse("replace-origin").unwrap(),
        answer_flags: NgFlags::parse("replace-origin").unwrap(),
        timeout: Duration::from_millis(100),
        retries: 1,
        on_failure: MediaPolicy::Reject,
        // Only set 9 is anchored: calls to registered users never would be.
        sets: vec![9],
        ..MediaConfig::default()
    };
    cfg.media = Some(Arc::new(MediaShared::new(media, 1, 7)));
    let now_unix = reg.config.unix(t0);
    let binding = crate::registrar::Binding {
        contact: "sip:6001@192.168.1.5:5060".into(),
        received: received.map(addr),
        path: "".into(),
        expires: now_unix + 3600,
        q: 1000,
        call_id: "reg".into(),
        cseq: 1,
        user_agent: "".into(),
        ruid: "r1".into(),
        last_modified: now_unix,
        stream: None,
    };
    reg.location.apply(vec![crate::registrar::Update {
        aor: "6001@example.com".into(),
        op: crate::registrar::Op::Upsert(binding),
    }]);
    super::tests::worker(cfg, &format!("1 sip:{DEST}\n"), t0)
}

fn invite_to_6001(branch: &str) -> Vec<u8> {
    String::from_utf8(invite_with_sdp(branch))
        .unwrap()
        .replacen(
            "INVITE sip:100@127.0.0.1:5060",
            "INVITE sip:6001@example.com",
            1,
        )
        .into_bytes()
}

#[test]
fn a_call_to_a_nated_binding_is_anchored_whatever_the_sets_say() {
    let t0 = Instant::now();
    let nat = "203.0.113.9:40000";
    let mut w = registrar_worker(t0, Some(nat));
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        addr(CALLER),
        &invite_to_6001("z9hG4bK-n1"),
        &mut out,
    );
    assert!(
        !sent(&out).iter().any(|(_, _, t)| t.starts_with("INVITE ")),
        "held for the offer: {:?}",
        sent(&out)
    );
    let ng = ng_to_engine(&out);
    assert_eq!(ng.len(), 1, "{:?}", sent(&out));
    assert!(ng[0].1.contains("7:command5:offer"), "{}", ng[0].1);

    // The engine answers: the branch goes to the NAT with the engine's SDP.
    out.clear();
    let reply = ng_reply(&ng[0].1, Some(ENGINE_OFFER_SDP));
    w.on_datagram(t0, SOCK_MEDIA, addr(ENGINE), &reply, &mut out);
    let s = sent(&out);
    let (_, to, fwd) = s
        .iter()
        .find(|(_, _, t)| t.starts_with("INVITE "))
        .expect("forwarded")
        .clone();
    assert_eq!(to, addr(nat));
    assert!(
        fwd.starts_with("INVITE sip:6001@192.168.1.5:5060 SIP/2.0\r\n"),
        "{fwd}"
    );
    assert_eq!(body_of(&fwd), ENGINE_OFFER_SDP);

    // The phone's 200 goes through `answer`, then to the caller.
    out.clear();
    let ok = response(&fwd, 200, ANSWER_SDP);
    w.on_datagram(t0, SOCK_PRIVATE, addr(nat), &ok, &mut out);
    let ng = ng_to_engine(&out);
    assert_eq!(ng.len(), 1, "{:?}", sent(&out));
    assert!(ng[0].1.contains("7:command6:answer"), "{}", ng[0].1);
    out.clear();
    let reply = ng_reply(&ng[0].1, Some(ENGINE_ANSWER_SDP));
    w.on_datagram(t0, SOCK_MEDIA, addr(ENGINE), &reply, &mut out);
    let s = sent(&out);
    let (_, to, ok) = s
        .iter()
        .find(|(_, _, t)| t.starts_with("SIP/2.0 200"))
        .expect("relayed")
        .clone();
    assert_eq!(to, addr(CALLER));
    assert_eq!(body_of(&ok), ENGINE_ANSWER_SDP);
    let st = w.media.as_ref().unwrap().shared().engine_totals(0);
    assert_eq!((st.offers, st.answers), (1, 1));
}

#[test]
fn a_call_to_a_direct_binding_follows_the_sets() {
    let t0 = Instant::now();
    let mut w = registrar_worker(t0, None);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        addr(CALLER),
        &invite_to_6001("z9hG4bK-n2"),
        &mut out,
    );
    assert!(ng_to_engine(&out).is_empty(), "{:?}", sent(&out));
    let s = sent(&out);
    let (_, to, fwd) = s
        .iter()
        .find(|(_, _, t)| t.starts_with("INVITE "))
        .expect("forwarded at once")
        .clone();
    assert_eq!(to, addr("192.168.1.5:5060"));
    assert_eq!(body_of(&fwd), OFFER_SDP);
}

#[test]
fn a_caller_cancelling_while_the_offer_is_out_gets_487() {
    let t0 = Instant::now();
    let mut w = registrar_worker(t0, Some("203.0.113.9:40000"));
    let mut out = Outbox::new();
    let invite = invite_to_6001("z9hG4bK-n3");
    w.on_datagram(t0, SOCK_PUBLIC, addr(CALLER), &invite, &mut out);
    assert_eq!(ng_to_engine(&out).len(), 1);
    let cancel = String::from_utf8(invite)
        .unwrap()
        .replace("INVITE sip", "CANCEL sip")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let cancel = format!(
        "{}\r\n\r\n",
        cancel.split("Content-Type").next().unwrap().trim_end()
    )
    .replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n");
    out.clear();
    w.on_datagram(t0, SOCK_PUBLIC, addr(CALLER), cancel.as_bytes(), &mut out);
    let s = sent(&out);
    assert!(
        s.iter().any(|(_, _, t)| t.starts_with("SIP/2.0 487")),
        "{s:?}"
    );
    assert!(!s.iter().any(|(_, _, t)| t.starts_with("INVITE ")), "{s:?}");
}

#[test]
fn a_call_from_a_nated_phone_is_anchored_whatever_the_sets_say() {
    let t0 = Instant::now();
    let mut w = registrar_worker(t0, None);
    // 6002 of the registrar's domain calls the PBX (set 1, not anchored by
    // the sets) from behind a NAT: its Contact names a private address.
    let nat = "203.0.113.7:41000";
    let invite = |to: &str, branch: &str| {
        String::from_utf8(invite_with_sdp(branch))
            .unwrap()
            .replacen(
                "INVITE sip:100@127.0.0.1:5060",
                &format!("INVITE sip:{to}@example.com"),
                1,
            )
            .replace(
                &format!("Via: SIP/2.0/UDP {CALLER}"),
                &format!("Via: SIP/2.0/UDP {nat}"),
            )
            .replace("From: <sip:a@127.0.0.1>", "From: <sip:6002@example.com>")
            .replace(
                "CSeq: 1 INVITE\r\n",
                "CSeq: 1 INVITE\r\nContact: <sip:6002@192.168.1.9:5060>\r\n",
            )
            .into_bytes()
    };
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        addr(nat),
        &invite("1000", "z9hG4bK-n4"),
        &mut out,
    );
    let ng = ng_to_engine(&out);
    assert_eq!(ng.len(), 1, "not anchored: {:?}", sent(&out));
    assert!(ng[0].1.contains("7:command5:offer"), "{}", ng[0].1);
    out.clear();
    let reply = ng_reply(&ng[0].1, Some(ENGINE_OFFER_SDP));
    w.on_datagram(t0, SOCK_MEDIA, addr(ENGINE), &reply, &mut out);
    let s = sent(&out);
    let (_, to, fwd) = s
        .iter()
        .find(|(_, _, t)| t.starts_with("INVITE "))
        .expect("forwarded")
        .clone();
    assert_eq!(to, addr(DEST));
    assert_eq!(body_of(&fwd), ENGINE_OFFER_SDP);
    assert!(fwd.contains(&format!("Contact: <sip:6002@{nat}>")), "{fwd}");

    // The same phone calling from its own address (no NAT): the sets decide.
    let direct = String::from_utf8(invite("1000", "z9hG4bK-n5"))
        .unwrap()
        .replace("192.168.1.9:5060", nat);
    out.clear();
    w.on_datagram(t0, SOCK_PUBLIC, addr(nat), direct.as_bytes(), &mut out);
    assert!(ng_to_engine(&out).is_empty(), "{:?}", sent(&out));
}
