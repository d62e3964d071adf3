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
    let (d, f) = sent(&out)[1].clone();
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
        dests.insert(sent(&out)[1].0);
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
    let f = sent(&out)[1].1.clone();
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
