//! Requests whose next hop is a host name: parked, asked, resumed; the
//! bounds; the worker's cache.

use super::tests::{sent, worker, CALLER, DEST};
use super::*;
use crate::route::names::{Answer, NameBridge, Resolved};
use std::time::Duration;

fn names_cfg(bridge: &Arc<NameBridge>, max_parked: usize) -> ProxyConfig {
    ProxyConfig {
        names: Some(NameSettings {
            bridge: bridge.clone(),
            max_parked,
            max_wait: Duration::from_secs(3),
        }),
        ..ProxyConfig::default()
    }
}

/// An in-dialog BYE through our Record-Route to `ruri` (a backend's Contact).
fn bye(ruri: &str, branch: &str) -> Vec<u8> {
    format!(
        "BYE {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Route: <sip:127.0.0.1:5061;lr>\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>;tag=t1\r\n\
         Call-ID: {branch}@t\r\n\
         CSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn answer(bridge: &NameBridge, name: &[u8], resolved: Resolved, ttl_s: u64) {
    assert!(bridge.answer(
        0,
        Answer {
            name: name.into(),
            resolved,
            ttl: Duration::from_secs(ttl_s),
        }
    ));
}

fn status(s: &(SocketAddr, String)) -> &str {
    s.1.lines().next().unwrap_or("")
}

#[test]
fn a_name_is_asked_once_parked_requests_resume_and_the_next_uses_the_cache() {
    let t0 = Instant::now();
    let bridge = Arc::new(NameBridge::new(1, 16));
    let list = format!("1 sip:{DEST}\n");
    let mut w = worker(names_cfg(&bridge, 8), &list, t0);
    let caller: SocketAddr = CALLER.parse().unwrap();
    let mut out = Outbox::new();
    // Two calls' BYEs to the backend's Contact `sip:pbx1.test`: parked, one
    // question.
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        caller,
        &bye("sip:100@PBX1.test", "z9hG4bK-1"),
        &mut out,
    );
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        caller,
        &bye("sip:100@pbx1.test", "z9hG4bK-2"),
        &mut out,
    );
    // A retransmission while parked is absorbed.
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        caller,
        &bye("sip:100@pbx1.test", "z9hG4bK-2"),
        &mut out,
    );
    assert!(out.is_empty(), "{:?}", sent(&out));
    let q = bridge.next_question().expect("asked");
    assert_eq!(&*q.name, b"sip:pbx1.test");
    assert!(bridge.next_question().is_none(), "asked once");
    assert!(w
        .next_deadline()
        .is_some_and(|d| d <= t0 + Duration::from_secs(3)));

    // The answer (a dispatcher destination's address) resumes both.
    answer(
        &bridge,
        &q.name,
        Resolved::Found {
            to: DEST.parse().unwrap(),
            tcp: false,
        },
        60,
    );
    let t1 = t0 + Duration::from_millis(5);
    w.on_datagram(t1, SOCK_NAMES, "0.0.0.0:0".parse().unwrap(), b"", &mut out);
    let s = sent(&out);
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(s
        .iter()
        .all(|m| m.0 == DEST.parse().unwrap() && m.1.starts_with("BYE ")));
    let st = w.stats().snapshot();
    assert_eq!((st.dns_parked, st.dns_resumed), (2, 2));

    // Within the TTL: relayed at once, no question.
    out.clear();
    w.on_datagram(
        t1,
        SOCK_PUBLIC,
        caller,
        &bye("sip:100@pbx1.test", "z9hG4bK-3"),
        &mut out,
    );
    assert_eq!(sent(&out).len(), 1);
    assert!(bridge.next_question().is_none());
    // After it: asked again.
    out.clear();
    let t2 = t1 + Duration::from_secs(61);
    w.on_datagram(
        t2,
        SOCK_PUBLIC,
        caller,
        &bye("sip:100@pbx1.test", "z9hG4bK-4"),
        &mut out,
    );
    assert!(out.is_empty());
    assert!(bridge.next_question().is_some());
}

#[test]
fn unknown_names_get_478_and_a_foreign_answer_is_still_refused() {
    let t0 = Instant::now();
    let bridge = Arc::new(NameBridge::new(1, 16));
    let list = format!("1 sip:{DEST}\n");
    let mut w = worker(names_cfg(&bridge, 8), &list, t0);
    let caller: SocketAddr = CALLER.parse().unwrap();
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        caller,
        &bye("sip:100@gone.test", "z9hG4bK-g"),
        &mut out,
    );
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        caller,
        &bye("sip:100@evil.test", "z9hG4bK-e"),
        &mut out,
    );
    answer(&bridge, b"sip:gone.test", Resolved::NoSuchName, 30);
    answer(
        &bridge,
        b"sip:evil.test",
        Resolved::Found {
            to: "203.0.113.7:5060".parse().unwrap(),
            tcp: false,
        },
        30,
    );
    w.on_timer(t0, &mut out);
    let s = sent(&out);
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(s.iter().all(|m| m.0 == caller), "nothing relayed: {s:?}");
    assert!(status(&s[0]).starts_with("SIP/2.0 478"), "{s:?}");
    assert!(status(&s[1]).starts_with("SIP/2.0 403"), "{s:?}");
    let st = w.stats().snapshot();
    assert_eq!((st.dns_unresolvable, st.relay_denied), (1, 1));
}

#[test]
fn parking_is_bounded_in_number_and_time() {
    let t0 = Instant::now();
    let bridge = Arc::new(NameBridge::new(1, 16));
    let list = format!("1 sip:{DEST}\n");
    let mut w = worker(names_cfg(&bridge, 2), &list, t0);
    let caller: SocketAddr = CALLER.parse().unwrap();
    let mut out = Outbox::new();
    for i in 0..3 {
        let b = bye(&format!("sip:100@slow{i}.test"), &format!("z9hG4bK-s{i}"));
        w.on_datagram(t0, SOCK_PUBLIC, caller, &b, &mut out);
    }
    let s = sent(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(status(&s[0]).starts_with("SIP/2.0 503"));
    assert!(s[0].1.contains("Retry-After:"), "{}", s[0].1);
    out.clear();
    // No answer within max_wait: 503 for both.
    w.on_timer(t0 + Duration::from_secs(3), &mut out);
    let s = sent(&out);
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(s.iter().all(|m| status(m).starts_with("SIP/2.0 503")));
    let st = w.stats().snapshot();
    assert_eq!((st.dns_parked, st.dns_refused, st.dns_timeouts), (2, 1, 2));
    assert_eq!(
        w.next_deadline()
            .filter(|d| *d <= t0 + Duration::from_secs(3)),
        None
    );
    // A late answer is kept for the next request.
    answer(
        &bridge,
        b"sip:slow0.test",
        Resolved::Found {
            to: DEST.parse().unwrap(),
            tcp: false,
        },
        30,
    );
    out.clear();
    let t1 = t0 + Duration::from_secs(4);
    w.on_timer(t1, &mut out);
    w.on_datagram(
        t1,
        SOCK_PUBLIC,
        caller,
        &bye("sip:100@slow0.test", "z9hG4bK-late"),
        &mut out,
    );
    assert_eq!(sent(&out).first().map(|m| m.0), Some(DEST.parse().unwrap()));
}

#[test]
fn without_a_resolver_names_get_503() {
    let t0 = Instant::now();
    let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0);
    let mut out = Outbox::new();
    let caller: SocketAddr = CALLER.parse().unwrap();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        caller,
        &bye("sip:100@pbx1.test", "z9hG4bK-n"),
        &mut out,
    );
    let s = sent(&out);
    assert!(status(&s[0]).starts_with("SIP/2.0 503"), "{s:?}");
}
