//! Calls to a user with several bindings, driven through a worker: equal
//! `q` ring in parallel (first 2xx wins, the rest are cancelled), lower `q`
//! after the higher ones failed, a 6xx ends the search, silence is 480.

use super::registrar_tests::{
    config, feed, invite, registered, registered_from, registered_with, PHONE,
};
use super::tests::{answer, sent, worker, DEST};
use super::*;
use std::time::Duration;

const SECOND: &str = "10.0.0.10:5070";
const CALLER: &str = "10.0.0.7:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The INVITE sent to `to` among `s`.
fn invite_to(s: &[(SocketAddr, String)], to: &str) -> String {
    s.iter()
        .find(|(a, m)| *a == addr(to) && m.starts_with("INVITE"))
        .unwrap_or_else(|| panic!("no INVITE to {to}: {s:?}"))
        .1
        .clone()
}

fn has(s: &[(SocketAddr, String)], to: &str, start: &str) -> bool {
    s.iter()
        .any(|(a, m)| *a == addr(to) && m.starts_with(start))
}

/// A worker with 6001 registered at PHONE and SECOND (equal q unless
/// `second_params` gives one).
fn two_phones(t0: Instant, second_params: &str) -> Worker {
    let (cfg, reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    registered(&mut w, &reg, t0, "6001", "pw1");
    registered_with(&mut w, &reg, t0, SECOND, "6001", "pw1", second_params);
    w
}

#[test]
fn equal_q_bindings_ring_together_and_the_first_2xx_cancels_the_other() {
    let t0 = Instant::now();
    let mut w = two_phones(t0, "");
    let s = feed(&mut w, t0, CALLER, &invite("a", "6001", "z9hG4bK-p1", ""));
    let first = invite_to(&s, PHONE);
    let second = invite_to(&s, SECOND);
    assert!(first.starts_with(&format!("INVITE sip:6001@{PHONE} ")));
    assert!(second.starts_with(&format!("INVITE sip:6001@{SECOND} ")));
    // Both ring; the caller hears it.
    let s = feed(&mut w, t0, PHONE, &answer(&first, 180, "t1"));
    assert!(has(&s, CALLER, "SIP/2.0 180"), "{s:?}");
    let s = feed(&mut w, t0, SECOND, &answer(&second, 180, "t2"));
    assert!(has(&s, CALLER, "SIP/2.0 180"), "{s:?}");
    // SECOND answers: the caller gets its 200, PHONE a CANCEL.
    let s = feed(&mut w, t0, SECOND, &answer(&second, 200, "t2"));
    assert!(has(&s, CALLER, "SIP/2.0 200"), "{s:?}");
    let cancel = s
        .iter()
        .find(|(a, m)| *a == addr(PHONE) && m.starts_with("CANCEL"))
        .unwrap_or_else(|| panic!("no CANCEL to the other phone: {s:?}"));
    assert!(cancel.1.starts_with(&format!("CANCEL sip:6001@{PHONE} ")));
    assert!(!has(&s, SECOND, "CANCEL"), "{s:?}");
    // Its 487 is acknowledged and stays here.
    let s = feed(&mut w, t0, PHONE, &answer(&cancel.1, 200, "t1"));
    assert!(s.is_empty(), "{s:?}");
    let s = feed(&mut w, t0, PHONE, &answer(&first, 487, "t1"));
    assert!(has(&s, PHONE, "ACK"), "{s:?}");
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(w.stats().snapshot().calls_answered, 1);
    // Everything ends once the timers ran out.
    let mut out = Outbox::new();
    for k in 1..=80 {
        w.on_timer(t0 + Duration::from_secs(k), &mut out);
    }
    assert_eq!(w.txns.len(), 0);
}

#[test]
fn a_binding_that_has_not_rung_is_cancelled_once_it_does() {
    let t0 = Instant::now();
    let mut w = two_phones(t0, "");
    let s = feed(&mut w, t0, CALLER, &invite("a", "6001", "z9hG4bK-p2", ""));
    let first = invite_to(&s, PHONE);
    let second = invite_to(&s, SECOND);
    let s = feed(&mut w, t0, SECOND, &answer(&second, 200, "t2"));
    assert!(has(&s, CALLER, "SIP/2.0 200"), "{s:?}");
    assert!(!has(&s, PHONE, "CANCEL"), "not before it rang: {s:?}");
    let s = feed(&mut w, t0, PHONE, &answer(&first, 180, "t1"));
    assert!(has(&s, PHONE, "CANCEL"), "{s:?}");
    assert!(!has(&s, CALLER, "SIP/2.0 180"), "decided: {s:?}");
}

#[test]
fn refusals_are_chosen_from_once_all_bindings_answered() {
    let t0 = Instant::now();
    let mut w = two_phones(t0, "");
    let s = feed(&mut w, t0, CALLER, &invite("a", "6001", "z9hG4bK-p3", ""));
    let first = invite_to(&s, PHONE);
    let second = invite_to(&s, SECOND);
    let s = feed(&mut w, t0, PHONE, &answer(&first, 503, "t1"));
    assert!(has(&s, PHONE, "ACK"), "{s:?}");
    assert!(!has(&s, CALLER, "SIP/2.0"), "{s:?}");
    let s = feed(&mut w, t0, SECOND, &answer(&second, 486, "t2"));
    assert!(has(&s, CALLER, "SIP/2.0 486"), "4xx over 5xx: {s:?}");
}

#[test]
fn a_503_chosen_for_the_caller_goes_as_500() {
    // RFC 3261 §16.7 step 6: every binding answered 503.
    let t0 = Instant::now();
    let mut w = two_phones(t0, "");
    let s = feed(&mut w, t0, CALLER, &invite("a", "6001", "z9hG4bK-p5", ""));
    let first = invite_to(&s, PHONE);
    let second = invite_to(&s, SECOND);
    feed(&mut w, t0, PHONE, &answer(&first, 503, "t1"));
    let s = feed(&mut w, t0, SECOND, &answer(&second, 503, "t2"));
    let to_caller: Vec<_> = s.iter().filter(|(a, _)| *a == addr(CALLER)).collect();
    assert_eq!(to_caller.len(), 1, "{s:?}");
    assert!(
        to_caller[0]
            .1
            .starts_with("SIP/2.0 500 Server Internal Error\r\n"),
        "{s:?}"
    );
    // A 503 that is not the best answer changes nothing else.
    let s = feed(&mut w, t0, CALLER, &invite("a", "6001", "z9hG4bK-p6", ""));
    let (first, second) = (invite_to(&s, PHONE), invite_to(&s, SECOND));
    feed(&mut w, t0, PHONE, &answer(&first, 503, "t1"));
    let s = feed(&mut w, t0, SECOND, &answer(&second, 486, "t2"));
    assert!(has(&s, CALLER, "SIP/2.0 486"), "{s:?}");
}

#[test]
fn a_6xx_cancels_the_others_and_is_the_answer() {
    let t0 = Instant::now();
    let mut w = two_phones(t0, "");
    let s = feed(&mut w, t0, CALLER, &invite("a", "6001", "z9hG4bK-p4", ""));
    let first = invite_to(&s, PHONE);
    let second = invite_to(&s, SECOND);
    feed(&mut w, t0, PHONE, &answer(&first, 180, "t1"));
    let s = feed(&mut w, t0, SECOND, &answer(&second, 603, "t2"));
    assert!(has(&s, PHONE, "CANCEL"), "{s:?}");
    assert!(
        !has(&s, CALLER, "SIP/2.0 603"),
        "after the others ended: {s:?}"
    );
    let s = feed(&mut w, t0, PHONE, &answer(&first, 487, "t1"));
    assert!(has(&s, CALLER, "SIP/2.0 603"), "{s:?}");
}

#[test]
fn a_lower_q_binding_rings_only_after_the_better_ones_failed() {
    let t0 = Instant::now();
    let mut w = two_phones(t0, ";q=0.5");
    let s = feed(&mut w, t0, CALLER, &invite("a", "6001", "z9hG4bK-p5", ""));
    let first = invite_to(&s, PHONE);
    assert!(!has(&s, SECOND, "INVITE"), "{s:?}");
    let s = feed(&mut w, t0, PHONE, &answer(&first, 486, "t1"));
    assert!(has(&s, PHONE, "ACK"), "{s:?}");
    assert!(!has(&s, CALLER, "SIP/2.0 486"), "{s:?}");
    let second = invite_to(&s, SECOND);
    assert!(second.starts_with(&format!("INVITE sip:6001@{SECOND} ")));
    let s = feed(&mut w, t0, SECOND, &answer(&second, 404, "t2"));
    assert!(
        has(&s, CALLER, "SIP/2.0 486"),
        "the first of a class: {s:?}"
    );
}

#[test]
fn silent_bindings_give_480_and_a_late_ring_is_cancelled() {
    let t0 = Instant::now();
    let mut w = two_phones(t0, ";q=0.1");
    let s = feed(&mut w, t0, CALLER, &invite("a", "6001", "z9hG4bK-p6", ""));
    let first = invite_to(&s, PHONE);
    // fr_timer (2 s): PHONE is given up on, SECOND tried.
    let mut out = Outbox::new();
    w.on_timer(t0 + Duration::from_secs(3), &mut out);
    let s = sent(&out);
    let second = invite_to(&s, SECOND);
    // PHONE rings late: cancelled, not relayed.
    let t1 = t0 + Duration::from_secs(3);
    let s = feed(&mut w, t1, PHONE, &answer(&first, 180, "t1"));
    assert!(
        has(&s, PHONE, "CANCEL") && !has(&s, CALLER, "SIP/2.0"),
        "{s:?}"
    );
    let mut out = Outbox::new();
    w.on_timer(t0 + Duration::from_secs(6), &mut out);
    let s = sent(&out);
    assert!(has(&s, CALLER, "SIP/2.0 480"), "{s:?}");
    assert!(!second.is_empty());
}

#[test]
fn the_callers_cancel_reaches_every_ringing_binding() {
    let t0 = Instant::now();
    let mut w = two_phones(t0, "");
    let inv = invite("a", "6001", "z9hG4bK-p7", "");
    let s = feed(&mut w, t0, CALLER, &inv);
    let first = invite_to(&s, PHONE);
    let second = invite_to(&s, SECOND);
    feed(&mut w, t0, PHONE, &answer(&first, 180, "t1"));
    feed(&mut w, t0, SECOND, &answer(&second, 180, "t2"));
    let cancel = String::from_utf8(inv)
        .unwrap()
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let s = feed(&mut w, t0, CALLER, cancel.as_bytes());
    assert!(has(&s, CALLER, "SIP/2.0 200"), "{s:?}");
    assert!(
        has(&s, PHONE, "CANCEL") && has(&s, SECOND, "CANCEL"),
        "{s:?}"
    );
    feed(&mut w, t0, PHONE, &answer(&first, 487, "t1"));
    let s = feed(&mut w, t0, SECOND, &answer(&second, 487, "t2"));
    assert!(has(&s, CALLER, "SIP/2.0 487"), "{s:?}");
}

#[test]
fn branches_are_bounded_by_max_branches() {
    let t0 = Instant::now();
    let (mut cfg, reg) = config(t0, false);
    let mut rc = reg.config.clone();
    rc.max_branches = 1;
    rc.max_contacts = 3;
    let reg = crate::registrar::Registrar::shared(rc, 64);
    reg.credentials
        .store(config(t0, false).1.credentials.load_full());
    cfg.registrar = Some(reg.clone());
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    registered(&mut w, &reg, t0, "6001", "pw1");
    registered_from(&mut w, &reg, t0, SECOND, "6001", "pw1");
    let s = feed(&mut w, t0, CALLER, &invite("a", "6001", "z9hG4bK-p8", ""));
    let invites = s.iter().filter(|(_, m)| m.starts_with("INVITE")).count();
    assert_eq!(invites, 1, "{s:?}");
}
