//! The carrier edge with the default configuration, end to end against the
//! real binary: relay attempts of every kind reach no address sipvane did not
//! choose, a restarted process repeats no branch, a destination given up at
//! fr_timer is cancelled when it rings. (Flood limits: `flood.rs`, a binary of
//! its own so its load does not starve these timing-sensitive tests.)
//!
//! Addresses: sipvane on 127.0.0.1, the destination ("pbx") a test socket on
//! 127.0.0.1, the "victim" an attacker wants us to reach on 127.0.0.2 and the
//! attacker itself on 127.0.0.3 — all loopback.

#[macro_use]
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use support::{assert_loopback, free_udp_addr, Scenario, Sipvane, Uac, Uas};

fn bind(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind loopback");
    assert_loopback(s.local_addr().unwrap());
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Everything `sock` receives within `window`.
fn drain(sock: &UdpSocket, window: Duration) -> Vec<String> {
    let end = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < end {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

fn request(
    method: &str,
    ruri: &str,
    from: SocketAddr,
    routes: &[String],
    to_tag: bool,
    n: u32,
) -> String {
    let mut m = format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-atk{n};rport\r\n"
    );
    for r in routes {
        m.push_str(&format!("Route: <{r}>\r\n"));
    }
    let tag = if to_tag { ";tag=pbx1" } else { "" };
    let cseq = if method == "ACK" {
        "1 ACK".to_string()
    } else {
        format!("1 {method}")
    };
    m.push_str(&format!(
        "Max-Forwards: 70\r\nFrom: <sip:atk@{from}>;tag=a{n}\r\nTo: <sip:100@127.0.0.1>{tag}\r\n\
         Call-ID: atk-{n}@test\r\nCSeq: {cseq}\r\nContact: <sip:atk@{from}>\r\nContent-Length: 0\r\n\r\n"
    ));
    m
}

fn status(msg: &str) -> u16 {
    msg.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn relay_attempts_reach_no_foreign_address(io: &str) {
    let pbx = bind("127.0.0.1");
    let victim = bind("127.0.0.2");
    let attacker = bind("127.0.0.3");
    let pbx_addr = pbx.local_addr().unwrap();
    let v = victim.local_addr().unwrap();
    let mut sv = Sipvane::builder("security-relay")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{pbx_addr}"))
        .start();
    let me = attacker.local_addr().unwrap();
    let our_rr = format!("sip:{};lr", sv.private_addr(0));
    let victim_route = format!("sip:{v};lr");
    let victim_uri = format!("sip:100@{v}");
    let attempts = [
        // Pre-loaded Route to the victim on an initial request: stripped, dispatched.
        (
            "INVITE",
            "sip:100@127.0.0.1".to_string(),
            vec![victim_route.clone()],
            false,
            Some(100),
        ),
        // In-dialog with a foreign top Route.
        (
            "BYE",
            victim_uri.clone(),
            vec![victim_route.clone()],
            true,
            Some(404),
        ),
        // In-dialog without any Route, Request-URI at the victim.
        ("BYE", victim_uri.clone(), vec![], true, Some(404)),
        // In-dialog through our own Record-Route, Request-URI at the victim.
        (
            "INVITE",
            victim_uri.clone(),
            vec![our_rr.clone()],
            true,
            Some(403),
        ),
        (
            "MESSAGE",
            victim_uri.clone(),
            vec![our_rr.clone()],
            true,
            Some(403),
        ),
        // ACKs are never answered; they must not go anywhere either.
        (
            "ACK",
            victim_uri.clone(),
            vec![victim_route.clone()],
            true,
            None,
        ),
        ("ACK", victim_uri.clone(), vec![our_rr.clone()], true, None),
        ("ACK", victim_uri.clone(), vec![], true, None),
    ];
    for (n, (method, ruri, routes, tag, want)) in attempts.iter().enumerate() {
        let m = request(method, ruri, me, routes, *tag, n as u32);
        attacker.send_to(m.as_bytes(), sv.addr()).unwrap();
        // Only what answers this attempt (the first INVITE's 503 comes later).
        let got: Vec<String> = drain(&attacker, Duration::from_millis(300))
            .into_iter()
            .filter(|r| r.contains(&format!("Call-ID: atk-{n}@test")))
            .collect();
        match want {
            Some(code) => assert!(
                got.iter().any(|r| status(r) == *code),
                "{method} {ruri} {routes:?}: want {code}, got {got:?}"
            ),
            None => assert!(
                got.is_empty(),
                "{method}: nothing answers an ACK, got {got:?}"
            ),
        }
    }
    // The prober's OPTIONS aside, only the stripped INVITE (and its
    // retransmissions: the pbx never answers) reached the pbx.
    let at_pbx: Vec<String> = drain(&pbx, Duration::from_millis(300))
        .into_iter()
        .filter(|m| !m.starts_with("OPTIONS "))
        .collect();
    assert!(!at_pbx.is_empty());
    for m in &at_pbx {
        assert!(
            m.starts_with("INVITE sip:100@127.0.0.1 ") && m.contains("Call-ID: atk-0@test"),
            "{m}"
        );
        assert!(
            !m.contains(&v.to_string()),
            "the pre-loaded Route was removed:\n{m}"
        );
    }
    let at_victim = drain(&victim, Duration::from_millis(500));
    assert!(
        at_victim.is_empty(),
        "the victim was reached: {at_victim:?}"
    );

    // Normal calls still pass, in-dialog requests included.
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    drop(sv.stop());
    let mut sv = Sipvane::builder("security-calls")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", uas.addr()))
        .start();
    Uac::new(Scenario::Uac, sv.addr())
        .calls(20)
        .rate(20)
        .run()
        .assert_all_succeeded(20);
    let c = sv.stop();
    assert_eq!(c.get("relay_denied"), 0);
    uas.stop();
}

/// The branch of the forwarded INVITE with Call-ID `atk-{n}@test`
/// (retransmissions of earlier ones are skipped).
fn forwarded_branch(pbx: &UdpSocket, n: u32) -> String {
    let got = drain(pbx, Duration::from_millis(500));
    let inv = got
        .iter()
        .find(|m| m.starts_with("INVITE ") && m.contains(&format!("Call-ID: atk-{n}@test")))
        .expect("the INVITE reached the pbx");
    let via = inv.lines().find(|l| l.starts_with("Via:")).unwrap();
    via.split("branch=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn a_restart_repeats_no_branch(io: &str) {
    let pbx = bind("127.0.0.1");
    let caller = bind("127.0.0.1");
    let me = caller.local_addr().unwrap();
    let mut branches = Vec::new();
    for run in 0..2u32 {
        let mut sv = Sipvane::builder("security-restart")
            .io(io)
            .workers(1)
            .destination(format!("1 sip:{}", pbx.local_addr().unwrap()))
            .start();
        for k in 0..3 {
            // The same sequence in both runs: same slots, same generations.
            let n = 100 * (run + 1) + k;
            let m = request("INVITE", "sip:100@127.0.0.1", me, &[], false, n);
            caller.send_to(m.as_bytes(), sv.addr()).unwrap();
            branches.push((run, forwarded_branch(&pbx, n)));
        }
        drop(sv.stop());
    }
    for (i, (run_a, a)) in branches.iter().enumerate() {
        assert!(a.starts_with("z9hG4bKsv") && a.len() == 49, "{a}");
        for (run_b, b) in &branches[i + 1..] {
            assert_ne!(a, b, "runs {run_a} and {run_b} sent the same branch");
        }
    }
}

/// A destination that stays silent past fr_timer and rings later: every
/// call completes on the next destination, and the late one gets a CANCEL
/// for every INVITE it received (its scenario fails any call left ringing).
fn a_destination_given_up_at_fr_timer_is_never_left_ringing(io: &str) {
    let mut late = Uas::start(Scenario::UasLate, free_udp_addr());
    let mut good = Uas::start(Scenario::Uas, free_udp_addr());
    // Priority order (algorithm 8): the late one first, always, and it stays
    // usable (its OPTIONS are answered; failures never take it out).
    let mut sv = Sipvane::builder("security-late")
        .io(io)
        .workers(2)
        .algorithm("8")
        .destination(format!("1 sip:{} 0 10", late.addr()))
        .destination(format!("1 sip:{} 0 5", good.addr()))
        .toml("failure_threshold = 1000")
        .start();
    Uac::new(Scenario::Uac, sv.addr())
        .calls(6)
        .rate(3)
        .run()
        .assert_all_succeeded(6);
    // The late one's CANCELs arrive 2.5 s after each INVITE.
    std::thread::sleep(Duration::from_secs(4));
    let l = late.stop();
    let got = l.invites_received();
    assert!(got >= 1, "the late destination was tried: {l:?}");
    assert_eq!(
        l.count("CANCEL", "Recv"),
        got,
        "one CANCEL per INVITE: {l:?}"
    );
    assert_eq!(l.failed, 0, "a destination was left ringing: {l:?}");
    good.stop();
    let c = sv.stop();
    assert_eq!(c.get("abandoned_cancels"), got);
}

/// A plain restart (no hand-over): calls set up before it still end with
/// their BYE, because in-dialog requests route by sipvane's Record-Route
/// (host and private port), not by anything the old process knew.
fn established_calls_survive_a_plain_restart(io: &str) {
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sv = Sipvane::builder("security-restart-calls")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", uas.addr()))
        .start();
    // 10 calls in 1 s, each held 4 s: all are up when sipvane restarts.
    let uac = Uac::new(Scenario::Uac, sv.addr())
        .calls(10)
        .rate(10)
        .hold(Duration::from_secs(4))
        .spawn();
    std::thread::sleep(Duration::from_millis(2000));
    let before = sv.restart();
    assert_eq!(before.get("dialogs_created"), 10);
    let run = uac.wait();
    run.assert_all_succeeded(10);
    let after = sv.stop();
    // The new process relayed the BYEs (and their 200s) without knowing the dialogs.
    assert!(after.get("requests") >= 10, "{:?}", after.0);
    uas.stop();
}

on_both_drivers!(
    established_calls_survive_a_plain_restart,
    a_destination_given_up_at_fr_timer_is_never_left_ringing,
    relay_attempts_reach_no_foreign_address,
    a_restart_repeats_no_branch,
);
