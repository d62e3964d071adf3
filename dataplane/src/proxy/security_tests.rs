//! Trust at the edge, driven directly: forged responses, branches and local
//! To-tags.

use std::time::Instant;

use super::tests::{answer, invite, sent, to_tag, worker, CALLER, DEST};
use super::*;

const DEST2: &str = "127.0.0.1:5080";

fn branch_of(forwarded: &str) -> String {
    let via = forwarded.lines().find(|l| l.starts_with("Via:")).unwrap();
    via.split("branch=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn a_forged_response_changes_nothing() {
    let t0 = Instant::now();
    let list = format!("1 sip:{DEST}\n1 sip:{DEST2}\n");
    let cfg = ProxyConfig {
        algorithm: crate::dispatch::Algorithm::Priority,
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &list, t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        &invite("z9hG4bK-f"),
        &mut out,
    );
    let s = sent(&out);
    let (dest, fwd) = (s[0].0, s[0].1.clone());
    let real = branch_of(&fwd);
    assert!(real.as_bytes().starts_with(branch::PREFIX));

    // An off-path sender that knows the form: a random seal, then the real
    // branch with one digit altered, then the real one from another epoch.
    let mut altered = real.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
    let altered = String::from_utf8(altered).unwrap();
    let guessed = format!(
        "{}{}",
        std::str::from_utf8(branch::PREFIX).unwrap(),
        "5".repeat(40)
    );
    for forged in [guessed.as_str(), altered.as_str()] {
        let spray = String::from_utf8(answer(&fwd, 503, "x"))
            .unwrap()
            .replace(&real, forged);
        out.clear();
        w.on_datagram(t0, SOCK_PRIVATE, dest, spray.as_bytes(), &mut out);
        assert!(
            out.is_empty(),
            "a forged 503 must not fail over: {:?}",
            sent(&out)
        );
    }
    let st = w.stats().snapshot();
    assert_eq!(
        (st.forged_responses, st.failovers, st.replies_5xx),
        (2, 0, 0)
    );

    // The real answer still completes the call.
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, dest, &answer(&fwd, 200, "t1"), &mut out);
    let s = sent(&out);
    assert!(s.len() == 1 && s[0].1.starts_with("SIP/2.0 200 "), "{s:?}");
}

#[test]
fn branches_share_only_the_prefix_and_a_restart_repeats_none() {
    let t0 = Instant::now();
    let list = format!("1 sip:{DEST}\n");
    let first_run = |cfg: ProxyConfig| {
        let mut w = worker(cfg, &list, t0);
        let mut out = Outbox::new();
        (0..3)
            .map(|i| {
                out.clear();
                w.on_datagram(
                    t0,
                    SOCK_PUBLIC,
                    CALLER.parse().unwrap(),
                    &invite(&format!("z9hG4bK-r{i}")),
                    &mut out,
                );
                branch_of(&sent(&out)[0].1)
            })
            .collect::<Vec<_>>()
    };
    let a = first_run(ProxyConfig::default());
    // What the control plane does on every start: new secret, new epoch.
    let b = first_run(ProxyConfig {
        branch_secret: [11, 12, 13, 14],
        epoch: 2,
        ..ProxyConfig::default()
    });
    let p = branch::PREFIX.len();
    for (i, x) in a.iter().enumerate() {
        assert!(!b.contains(x), "restart repeated {x}");
        for y in &a[i + 1..] {
            let same = x.as_bytes()[p..]
                .iter()
                .zip(&y.as_bytes()[p..])
                .filter(|(c, d)| c == d)
                .count();
            assert!(same < 12, "{x} and {y} share {same} digits");
        }
    }
}

#[test]
fn local_to_tags_are_unguessable_and_stable_per_request() {
    let t0 = Instant::now();
    // No destination usable (flag 4 = disabled): sipvane answers 503 itself.
    let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST} 4\n"), t0);
    let mut out = Outbox::new();
    let mut tag = |branch: &str| {
        out.clear();
        w.on_datagram(
            t0,
            SOCK_PUBLIC,
            CALLER.parse().unwrap(),
            &invite(branch),
            &mut out,
        );
        to_tag(&sent(&out)[0].1)
    };
    let (a, b, a_again) = (tag("z9hG4bK-t1"), tag("z9hG4bK-t2"), tag("z9hG4bK-t1"));
    assert_ne!(a, b);
    assert_eq!(a, a_again, "a retransmission sees the same To-tag");
    assert_eq!(a.len(), 16);
}

#[test]
fn an_attempt_given_up_at_fr_timer_is_cancelled_when_it_rings_late() {
    let t0 = Instant::now();
    let list = format!("1 sip:{DEST}\n1 sip:{DEST2}\n");
    let cfg = ProxyConfig {
        algorithm: crate::dispatch::Algorithm::Priority,
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &list, t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        &invite("z9hG4bK-slow"),
        &mut out,
    );
    let s = sent(&out);
    let (slow, slow_invite) = (s[0].0, s[0].1.clone());
    // fr_timer (2 s): the call moves on to the other destination.
    let t2 = t0 + std::time::Duration::from_millis(2100);
    out.clear();
    w.on_timer(t2, &mut out);
    let s = sent(&out);
    let moved = s
        .iter()
        .find(|(_, m)| m.starts_with("INVITE "))
        .expect("failed over");
    assert_ne!(moved.0, slow);
    let fast_invite = moved.1.clone();

    // The slow one rings after all: it gets a CANCEL for exactly its INVITE,
    // and the caller does not see its 180.
    let t3 = t2 + std::time::Duration::from_millis(100);
    out.clear();
    w.on_datagram(
        t3,
        SOCK_PRIVATE,
        slow,
        &answer(&slow_invite, 180, "s1"),
        &mut out,
    );
    let s = sent(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].0, slow);
    assert!(s[0].1.starts_with("CANCEL "), "{}", s[0].1);
    assert!(
        s[0].1.contains(&branch_of(&slow_invite)),
        "same branch as its INVITE"
    );
    assert_eq!(w.stats().snapshot().abandoned_cancels, 1);
    // A second 180 does not get a second CANCEL.
    out.clear();
    w.on_datagram(
        t3,
        SOCK_PRIVATE,
        slow,
        &answer(&slow_invite, 180, "s1"),
        &mut out,
    );
    assert!(sent(&out).is_empty(), "{:?}", sent(&out));

    // The other destination answers; the caller gets that 200.
    out.clear();
    w.on_datagram(
        t3,
        SOCK_PRIVATE,
        moved.0,
        &answer(&fast_invite, 200, "f1"),
        &mut out,
    );
    let s = sent(&out);
    assert!(
        s.len() == 1 && s[0].0 == CALLER.parse().unwrap() && s[0].1.starts_with("SIP/2.0 200 ")
    );

    // The slow one confirms: 200 to the CANCEL, 487 to its INVITE, which is ACKed.
    let cancel = String::from_utf8(answer(&slow_invite, 200, "s1"))
        .unwrap()
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    out.clear();
    w.on_datagram(t3, SOCK_PRIVATE, slow, cancel.as_bytes(), &mut out);
    assert!(sent(&out).is_empty());
    out.clear();
    w.on_datagram(
        t3,
        SOCK_PRIVATE,
        slow,
        &answer(&slow_invite, 487, "s1"),
        &mut out,
    );
    let s = sent(&out);
    assert!(
        s.len() == 1 && s[0].0 == slow && s[0].1.starts_with("ACK "),
        "{s:?}"
    );

    // Everything ends: no transaction is left once the timers ran out.
    for step in 1..=400 {
        let now = t3 + std::time::Duration::from_millis(100 * step);
        out.clear();
        w.on_timer(now, &mut out);
    }
    assert_eq!(w.occupancy().0, 0, "no transaction left");
}

#[test]
fn an_abandoned_attempt_that_never_answers_is_forgotten_after_64_t1() {
    let t0 = Instant::now();
    let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        &invite("z9hG4bK-gone"),
        &mut out,
    );
    let mut finals = 0;
    for step in 1..=400 {
        let now = t0 + std::time::Duration::from_millis(100 * step);
        out.clear();
        w.on_timer(now, &mut out);
        finals += sent(&out)
            .iter()
            .filter(|(_, m)| m.starts_with("SIP/2.0 503"))
            .count();
    }
    assert!(finals >= 1);
    assert_eq!(w.occupancy().0, 0, "the watch ends at 64·T1");
}

#[test]
fn a_strict_routers_request_is_rewritten_and_relayed() {
    let t0 = Instant::now();
    let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0);
    let bye = format!(
        "BYE sip:127.0.0.1:5061 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-strict\r\n\
         Route: <sip:100@{DEST}>\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>;tag=t1\r\nCall-ID: strict@t\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PRIVATE,
        CALLER.parse().unwrap(),
        bye.as_bytes(),
        &mut out,
    );
    let s = sent(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].0, DEST.parse().unwrap());
    assert!(
        s[0].1
            .starts_with(&format!("BYE sip:100@{DEST} SIP/2.0\r\n")),
        "{}",
        s[0].1
    );
    assert!(!s[0].1.contains("\r\nRoute:"), "{}", s[0].1);
}
