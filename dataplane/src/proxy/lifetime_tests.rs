//! Call slots (counted at selection) and dialog lifetime, driven directly.

use std::time::{Duration, Instant};

use super::tests::{answer, invite, sent, worker, CALLER, DEST};
use super::*;
use crate::dispatch::Algorithm;

const DEST2: &str = "127.0.0.1:5080";

fn active(w: &Worker) -> Vec<u32> {
    let t = w.table.load();
    t.sets()[0]
        .dests()
        .iter()
        .map(|d| d.stats.active_calls())
        .collect()
}

#[test]
fn call_load_counts_ringing_calls_and_maxload_holds() {
    let t0 = Instant::now();
    let list = format!("1 sip:{DEST} 0 0 maxload=1\n1 sip:{DEST2} 0 0 maxload=1\n");
    let cfg = ProxyConfig {
        algorithm: Algorithm::CallLoad,
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &list, t0);
    let mut out = Outbox::new();
    let caller = CALLER.parse().unwrap();
    let mut targets = Vec::new();
    let mut forwarded = Vec::new();
    for n in 0..3 {
        out.clear();
        w.on_datagram(
            t0,
            SOCK_PUBLIC,
            caller,
            &invite(&format!("z9hG4bK-cl{n}")),
            &mut out,
        );
        let s = sent(&out);
        match s.iter().find(|(_, m)| m.starts_with("INVITE ")) {
            Some((dst, m)) => {
                targets.push(*dst);
                forwarded.push((*dst, m.clone()));
            }
            None => assert!(s[0].1.starts_with("SIP/2.0 503 "), "third call: {s:?}"),
        }
    }
    // Nothing answered yet: each destination has exactly one ringing call.
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert_ne!(targets[0], targets[1]);
    assert_eq!(active(&w), vec![1, 1]);

    // One is refused (486): its slot is free again. The other answers: the
    // slot passes to the dialog, and the BYE frees it.
    let (d0, f0) = forwarded[0].clone();
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, d0, &answer(&f0, 486, "x"), &mut out);
    let (d1, f1) = forwarded[1].clone();
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, d1, &answer(&f1, 200, "ok1"), &mut out);
    let mut want = vec![0, 0];
    let i1 = if d1 == DEST.parse().unwrap() { 0 } else { 1 };
    want[i1] = 1;
    assert_eq!(active(&w), want);
    let bye = format!(
        "BYE sip:100@{d1} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-clbye\r\n\
         Route: <sip:127.0.0.1:5061;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>;tag=ok1\r\nCall-ID: z9hG4bK-cl1@t\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, caller, bye.as_bytes(), &mut out);
    assert_eq!(active(&w), vec![0, 0]);
}

#[test]
fn failover_moves_the_slot_and_a_cancel_releases_it() {
    let t0 = Instant::now();
    let list = format!("1 sip:{DEST}\n1 sip:{DEST2}\n");
    let cfg = ProxyConfig {
        algorithm: Algorithm::Priority,
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &list, t0);
    let mut out = Outbox::new();
    let caller = CALLER.parse().unwrap();
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-fo"), &mut out);
    let (d, f) = sent(&out)[0].clone();
    assert_eq!(active(&w).iter().sum::<u32>(), 1);
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, d, &answer(&f, 503, "x"), &mut out);
    let moved = sent(&out)
        .into_iter()
        .find(|(_, m)| m.starts_with("INVITE "))
        .unwrap();
    assert_ne!(moved.0, d);
    assert_eq!(
        active(&w).iter().sum::<u32>(),
        1,
        "the slot moved: {:?}",
        active(&w)
    );
    // The caller cancels; the 487 ends the call and frees the slot.
    let cancel = String::from_utf8(invite("z9hG4bK-fo"))
        .unwrap()
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    out.clear();
    w.on_datagram(t0, SOCK_PUBLIC, caller, cancel.as_bytes(), &mut out);
    out.clear();
    w.on_datagram(
        t0,
        SOCK_PRIVATE,
        moved.0,
        &answer(&moved.1, 487, "y"),
        &mut out,
    );
    assert_eq!(active(&w), vec![0, 0]);
}

#[test]
fn algorithm_5_hashes_the_credentials_username() {
    let t0 = Instant::now();
    let list = (0..4)
        .map(|i| format!("1 sip:127.0.0.1:{}\n", 5070 + i))
        .collect::<String>();
    let cfg = ProxyConfig {
        algorithm: Algorithm::HashAuthUser,
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &list, t0);
    let mut out = Outbox::new();
    let mut dests = std::collections::BTreeSet::new();
    for n in 0..8 {
        let m = String::from_utf8(invite(&format!("z9hG4bK-au{n}")))
            .unwrap()
            .replace(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nProxy-Authorization: Digest username=\"alice\", realm=\"r\"\r\n",
            );
        out.clear();
        w.on_datagram(
            t0,
            SOCK_PUBLIC,
            CALLER.parse().unwrap(),
            m.as_bytes(),
            &mut out,
        );
        dests.insert(sent(&out)[0].0);
    }
    // Round-robin (no username) would have used all four.
    assert_eq!(dests.len(), 1, "{dests:?}");
}

/// A dialog set up at t0 by a 2xx (with extra headers), timeout 60 s.
fn dialog_worker(extra_2xx: &str) -> (Worker, Instant) {
    let t0 = Instant::now();
    let cfg = ProxyConfig {
        dialog_timeout: Duration::from_secs(60),
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        &invite("z9hG4bK-dl"),
        &mut out,
    );
    let f = sent(&out)[0].1.clone();
    let ok = String::from_utf8(answer(&f, 200, "dl")).unwrap().replace(
        "Content-Length: 0",
        &format!("{extra_2xx}Content-Length: 0"),
    );
    out.clear();
    w.on_datagram(
        t0,
        SOCK_PRIVATE,
        DEST.parse().unwrap(),
        ok.as_bytes(),
        &mut out,
    );
    assert_eq!(w.occupancy().1, 1);
    (w, t0)
}

fn run_to(w: &mut Worker, at: Instant) {
    let mut out = Outbox::new();
    w.on_timer(at, &mut out);
}

fn in_dialog(w: &mut Worker, now: Instant, n: u32) {
    let m = format!(
        "INFO sip:100@{DEST} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-info{n}\r\n\
         Route: <sip:127.0.0.1:5061;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>;tag=dl\r\nCall-ID: z9hG4bK-dl@t\r\nCSeq: {} INFO\r\nContent-Length: 0\r\n\r\n",
        n + 2
    );
    let mut out = Outbox::new();
    w.on_datagram(
        now,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        m.as_bytes(),
        &mut out,
    );
    assert!(
        sent(&out).iter().any(|(d, _)| *d == DEST.parse().unwrap()),
        "relayed"
    );
}

#[test]
fn in_dialog_requests_keep_a_dialog_alive() {
    let (mut w, t0) = dialog_worker("");
    let s = Duration::from_secs;
    in_dialog(&mut w, t0 + s(50), 0);
    run_to(&mut w, t0 + s(100));
    assert_eq!(w.occupancy().1, 1, "refreshed at 50 s: alive at 100 s");
    run_to(&mut w, t0 + s(111));
    assert_eq!(w.occupancy().1, 0, "expired 60 s after the last request");
    assert_eq!(w.stats().snapshot().dialogs_expired, 1);
}

#[test]
fn session_expires_shortens_the_dialog_lifetime() {
    let (mut w, t0) = dialog_worker("Session-Expires: 10;refresher=uac\r\n");
    let s = Duration::from_secs;
    run_to(&mut w, t0 + s(41));
    assert_eq!(w.occupancy().1, 1, "10 s + 32 s of grace");
    in_dialog(&mut w, t0 + s(41), 0);
    run_to(&mut w, t0 + s(82));
    assert_eq!(w.occupancy().1, 1, "the refresh restarted the interval");
    run_to(&mut w, t0 + s(84));
    assert_eq!(w.occupancy().1, 0);
}

/// A re-INVITE's 2xx retransmitted after the BYE ended the dialog (its
/// ACK lost, the BYE overtook it) is relayed but makes no new dialog: it is
/// not a call answered and holds no call slot (found by the simulation,
/// dataplane/tests/sim).
#[test]
fn a_late_reinvite_2xx_does_not_revive_its_dialog() {
    let (mut w, t0) = dialog_worker("");
    let caller = CALLER.parse().unwrap();
    let dest: SocketAddr = DEST.parse().unwrap();
    let in_dialog = |method: &str, branch: &str, seq: u32| {
        format!(
            "{method} sip:100@{DEST} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
             Route: <sip:127.0.0.1:5061;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=f1\r\n\
             To: <sip:100@127.0.0.1>;tag=dl\r\nCall-ID: z9hG4bK-dl@t\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut out = Outbox::new();
    let reinvite = in_dialog("INVITE", "z9hG4bK-re", 2);
    w.on_datagram(t0, SOCK_PRIVATE, caller, reinvite.as_bytes(), &mut out);
    let fwd = sent(&out)
        .into_iter()
        .find(|(d, _)| *d == dest)
        .expect("re-INVITE forwarded")
        .1;
    let ok = answer(&fwd, 200, "dl");
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, dest, &ok, &mut out);
    out.clear();
    let bye = in_dialog("BYE", "z9hG4bK-bye", 3);
    w.on_datagram(t0, SOCK_PRIVATE, caller, bye.as_bytes(), &mut out);
    assert_eq!(w.occupancy().1, 0, "the BYE ended the dialog");
    assert_eq!(active(&w), vec![0]);

    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, dest, &ok, &mut out);
    assert!(
        sent(&out)
            .iter()
            .any(|(d, m)| *d == caller && m.starts_with("SIP/2.0 200 ")),
        "the retransmission still reaches the caller"
    );
    assert_eq!(w.occupancy().1, 0, "no dialog revived");
    assert_eq!(active(&w), vec![0], "no call slot taken");
    let s = w.stats().snapshot();
    assert_eq!((s.calls_answered, s.dialogs_created), (1, 1));
}

/// The initial INVITE's 2xx retransmitted (the caller's ACK was lost) after
/// the caller's BYE ended the dialog: relayed, but the dialog stays ended.
#[test]
fn a_2xx_retransmitted_after_the_bye_does_not_revive_the_dialog() {
    let t0 = Instant::now();
    let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0);
    let caller: SocketAddr = CALLER.parse().unwrap();
    let dest: SocketAddr = DEST.parse().unwrap();
    let mut out = Outbox::new();
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-rv"), &mut out);
    let ok = answer(&sent(&out)[0].1, 200, "rv");
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, dest, &ok, &mut out);
    let bye = format!(
        "BYE sip:100@{DEST} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-rvbye\r\n\
         Route: <sip:127.0.0.1:5061;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>;tag=rv\r\nCall-ID: z9hG4bK-rv@t\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, caller, bye.as_bytes(), &mut out);
    assert_eq!(w.occupancy().1, 0);
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, dest, &ok, &mut out);
    assert!(sent(&out)
        .iter()
        .any(|(d, m)| *d == caller && m.starts_with("SIP/2.0 200 ")));
    assert_eq!(w.occupancy().1, 0, "no dialog revived");
    assert_eq!(active(&w), vec![0], "no call slot taken");
    assert_eq!(w.stats().snapshot().calls_answered, 1);
}

/// The CANCEL sipvane sends to a destination that rang past fr_inv_timer
/// is retransmitted for 64·T1, not only for fr_timer: under loss, three
/// sends left destinations ringing (found by the simulation,
/// dataplane/tests/sim).
#[test]
fn a_cancel_is_retransmitted_until_timer_f() {
    let t0 = Instant::now();
    let mut cfg = ProxyConfig::default();
    cfg.timers.fr_inv_timer = Duration::from_secs(10);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let dest: SocketAddr = DEST.parse().unwrap();
    let mut out = Outbox::new();
    w.on_datagram(
        t0,
        SOCK_PUBLIC,
        CALLER.parse().unwrap(),
        &invite("z9hG4bK-cf"),
        &mut out,
    );
    let ringing = answer(&sent(&out)[0].1, 180, "cf");
    out.clear();
    w.on_datagram(t0, SOCK_PRIVATE, dest, &ringing, &mut out);
    // fr_inv_timer: the CANCEL goes out; then every copy of it is lost.
    let mut cancels = Vec::new();
    let mut at = t0;
    while at < t0 + Duration::from_secs(50) {
        at += Duration::from_millis(100);
        out.clear();
        w.on_timer(at, &mut out);
        if sent(&out)
            .iter()
            .any(|(d, m)| *d == dest && m.starts_with("CANCEL "))
        {
            cancels.push(at - t0);
        }
    }
    let last = *cancels.last().expect("a CANCEL was sent");
    assert!(
        cancels.len() >= 8 && last >= Duration::from_secs(10 + 20),
        "CANCEL sent at {cancels:?}"
    );
    assert_eq!(w.occupancy().0, 0, "given up after Timer F");
}

/// An attempt given up at fr_timer answers late while the next one is
/// still trying: the caller gets the 2xx, the call is counted and tracked
/// (its dialog holds the answering destination's slot), and the other
/// destination is cancelled at its first provisional — its INVITE kept to
/// build that CANCEL (found by the simulation, dataplane/tests/sim).
#[test]
fn a_late_answer_from_an_abandoned_attempt_cancels_the_current_one() {
    let t0 = Instant::now();
    let cfg = ProxyConfig {
        algorithm: Algorithm::Priority,
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n1 sip:{DEST2}\n"), t0);
    let caller: SocketAddr = CALLER.parse().unwrap();
    let mut out = Outbox::new();
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-la"), &mut out);
    let (first, f1) = sent(&out)[0].clone();
    // fr_timer: the first is silent, the INVITE moves on.
    let t1 = t0 + Duration::from_millis(2100);
    out.clear();
    w.on_timer(t1, &mut out);
    let (second, f2) = sent(&out)
        .into_iter()
        .find(|(_, m)| m.starts_with("INVITE "))
        .expect("failed over");
    assert_ne!(first, second);
    // The first answers now; the second has not said anything yet.
    out.clear();
    w.on_datagram(t1, SOCK_PRIVATE, first, &answer(&f1, 200, "la1"), &mut out);
    assert!(sent(&out)
        .iter()
        .any(|(d, m)| *d == caller && m.starts_with("SIP/2.0 200 ")));
    assert_eq!(w.stats().snapshot().calls_answered, 1);
    assert_eq!(w.occupancy().1, 1, "the answered call is a dialog");
    // Its INVITE is still retransmitted, and its first provisional gets a CANCEL.
    let mut retransmitted = false;
    for ms in [2700, 3200, 3700] {
        out.clear();
        w.on_timer(t0 + Duration::from_millis(ms), &mut out);
        retransmitted |= sent(&out)
            .iter()
            .any(|(d, m)| *d == second && m.starts_with("INVITE "));
    }
    assert!(retransmitted);
    out.clear();
    let t2 = t0 + Duration::from_millis(3800);
    w.on_datagram(t2, SOCK_PRIVATE, second, &answer(&f2, 180, "la2"), &mut out);
    assert!(
        sent(&out)
            .iter()
            .any(|(d, m)| *d == second && m.starts_with("CANCEL ")),
        "{:?}",
        sent(&out)
    );
    assert_eq!(
        active(&w).iter().sum::<u32>(),
        2,
        "the dialog and the ringing attempt"
    );
}

/// When every destination refused after ringing, the 503 sipvane answers
/// is retransmitted on Timer G from then on, not first at the last
/// attempt's stale fr_inv_timer deadline (a caller whose first copy was
/// lost waited up to fr_inv_timer; found by the simulation,
/// dataplane/tests/sim).
#[test]
fn the_all_failed_503_is_retransmitted_on_timer_g() {
    let t0 = Instant::now();
    let cfg = ProxyConfig {
        algorithm: Algorithm::Priority,
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n1 sip:{DEST2}\n"), t0);
    let caller: SocketAddr = CALLER.parse().unwrap();
    let mut out = Outbox::new();
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-g"), &mut out);
    let (mut dst, mut fwd) = sent(&out)[0].clone();
    for _ in 0..2 {
        out.clear();
        w.on_datagram(t0, SOCK_PRIVATE, dst, &answer(&fwd, 180, "g"), &mut out);
        out.clear();
        w.on_datagram(t0, SOCK_PRIVATE, dst, &answer(&fwd, 503, "g"), &mut out);
        if let Some(next) = sent(&out)
            .into_iter()
            .find(|(_, m)| m.starts_with("INVITE "))
        {
            (dst, fwd) = next;
        }
    }
    assert!(sent(&out)
        .iter()
        .any(|(d, m)| *d == caller && m.starts_with("SIP/2.0 503 ")));
    let at = w.next_deadline().expect("Timer G armed");
    assert!(at <= t0 + Duration::from_millis(500), "{:?}", at - t0);
    out.clear();
    w.on_timer(t0 + Duration::from_millis(600), &mut out);
    assert!(
        sent(&out)
            .iter()
            .any(|(d, m)| *d == caller && m.starts_with("SIP/2.0 503 ")),
        "at {:?}: {:?}",
        at - t0,
        sent(&out)
    );
}
