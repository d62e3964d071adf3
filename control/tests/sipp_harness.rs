//! Proves the SIPp harness and the scenarios in `sipp-scenarios/` work with no
//! proxy in between: UAC and UAS talk directly over loopback.

mod support;

use std::time::{Duration, Instant};

use support::{free_udp_addr, sip_options_ping, Scenario, Uac, Uas};

const SETTLE: Duration = Duration::from_secs(5);

#[test]
fn uac_to_uas_50_calls_all_succeed_and_uas_counts_them() {
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    let run = Uac::new(Scenario::Uac, uas.addr())
        .calls(50)
        .rate(50)
        .timeout(Duration::from_secs(20))
        .run();
    run.assert_all_succeeded(50);
    assert_eq!(
        run.stats.count("200", "Recv"),
        100,
        "50 x 200/INVITE + 50 x 200/BYE"
    );
    assert_eq!(run.stats.count("BYE", "Sent"), 50);

    let live = uas.wait_for_calls(50, SETTLE);
    assert_eq!(live.invites_received(), 50, "{live:?}");
    let fin = uas.stop();
    assert_eq!(fin.invites_received(), 50, "{fin:?}\n{}", uas.errors());
    assert_eq!(fin.count("ACK", "Recv"), 50);
    assert_eq!(fin.count("BYE", "Recv"), 50);
    assert_eq!(fin.failed, 0, "{}", uas.errors());
}

#[test]
fn uac_cancel_to_uas_cancel_every_call_is_cancelled() {
    let mut uas = Uas::start(Scenario::UasCancel, free_udp_addr());
    let run = Uac::new(Scenario::UacCancel, uas.addr())
        .calls(10)
        .rate(50)
        .timeout(Duration::from_secs(20))
        .run();
    run.assert_all_succeeded(10);
    assert_eq!(run.stats.count("CANCEL", "Sent"), 10);
    assert_eq!(run.stats.count("487", "Recv"), 10);

    uas.wait_until(SETTLE, |s| s.count("ACK", "Recv") >= 10);
    let fin = uas.stop();
    assert_eq!(fin.invites_received(), 10, "{fin:?}");
    assert_eq!(fin.count("CANCEL", "Recv"), 10);
    assert_eq!(fin.count("487", "Sent"), 10);
    assert_eq!(fin.count("ACK", "Recv"), 10);
    assert_eq!(fin.successful, 10, "{}", uas.errors());
}

#[test]
fn uac_cancel_beats_a_slow_uas() {
    let mut uas = Uas::builder(Scenario::UasSlow)
        .answer_delay(Duration::from_secs(5))
        .start();
    let run = Uac::new(Scenario::UacCancel, uas.addr())
        .calls(3)
        .rate(30)
        .timeout(Duration::from_secs(10))
        .run();
    run.assert_all_succeeded(3);
    // Cancelled long before the 5 s answer.
    assert!(run.elapsed < Duration::from_secs(4), "{:?}", run.elapsed);
    uas.wait_until(SETTLE, |s| s.count("ACK", "Recv") >= 3);
    let fin = uas.stop();
    assert_eq!(fin.count("CANCEL", "Recv"), 3, "{fin:?}");
    assert_eq!(fin.count("487", "Sent"), 3);
}

#[test]
fn slow_uas_answers_after_the_delay() {
    let uas = Uas::builder(Scenario::UasSlow)
        .answer_delay(Duration::from_millis(400))
        .start();
    let t0 = Instant::now();
    let run = Uac::new(Scenario::Uac, uas.addr())
        .calls(2)
        .rate(20)
        .timeout(Duration::from_secs(10))
        .run();
    run.assert_all_succeeded(2);
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn uac_to_uas_503_reports_failed_calls() {
    let mut uas = Uas::start(Scenario::Uas503, free_udp_addr());
    let run = Uac::new(Scenario::Uac, uas.addr())
        .calls(10)
        .rate(50)
        .timeout(Duration::from_secs(20))
        .run();
    assert_eq!(run.exit_code, Some(1), "sipp exits 1 when calls fail");
    assert!(!run.timed_out);
    assert_eq!(run.stats.total_calls, 10);
    assert_eq!(run.stats.successful, 0);
    assert_eq!(run.stats.failed, 10, "{:?}", run.stats);
    assert_eq!(run.stats.unexpected_codes.get(&503), Some(&10));

    // SIPp ACKs the 503 on its own, so the UAS completes every transaction.
    uas.wait_until(SETTLE, |s| s.count("ACK", "Recv") >= 10);
    let fin = uas.stop();
    assert_eq!(fin.invites_received(), 10);
    assert_eq!(fin.count("503", "Sent"), 10);
    assert_eq!(fin.count("ACK", "Recv"), 10, "{}", uas.errors());
}

#[test]
fn uas_answers_options_probes_without_counting_a_call() {
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    assert_eq!(
        sip_options_ping(uas.addr(), Duration::from_secs(2)),
        Some(200)
    );
    let run = Uac::new(Scenario::Options, uas.addr())
        .calls(3)
        .rate(30)
        .timeout(Duration::from_secs(10))
        .run();
    run.assert_all_succeeded(3);
    let fin = uas.stop();
    assert_eq!(fin.invites_received(), 0);
    assert_eq!(fin.count("OPTIONS", "Recv"), 4, "{fin:?}");
    assert_eq!(fin.failed, 0);
}

#[test]
fn uas_can_be_killed_and_restarted_on_the_same_port() {
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    let addr = uas.addr();
    Uac::new(Scenario::Uac, addr)
        .calls(3)
        .rate(30)
        .run()
        .assert_all_succeeded(3);
    let before = uas.wait_for_calls(3, SETTLE);
    assert_eq!(before.invites_received(), 3);

    uas.kill();
    assert!(!uas.is_running());
    assert_eq!(sip_options_ping(addr, Duration::from_millis(300)), None);

    let old = uas.restart();
    assert_eq!(old.invites_received(), 3, "old counters survive the kill");
    assert_eq!(uas.addr(), addr);
    assert_eq!(sip_options_ping(addr, Duration::from_secs(2)), Some(200));
    Uac::new(Scenario::Uac, addr)
        .calls(2)
        .rate(20)
        .run()
        .assert_all_succeeded(2);
    let fin = uas.stop();
    assert_eq!(fin.invites_received(), 2, "fresh counters after restart");
}

#[test]
fn uac_hard_timeout_when_nobody_answers() {
    let nobody = free_udp_addr();
    let t0 = Instant::now();
    let run = Uac::new(Scenario::Uac, nobody)
        .calls(1)
        .timeout(Duration::from_secs(1))
        .run();
    assert!(run.timed_out, "{run:?}");
    assert_ne!(run.exit_code, Some(0));
    assert_eq!(run.stats.successful, 0);
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
}

#[test]
fn dropping_a_uas_kills_sipp() {
    let uas = Uas::start(Scenario::Uas, free_udp_addr());
    let addr = uas.addr();
    let pid = uas.pid().expect("running");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(uas);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "sipp {pid} survived its handle"
    );
    assert!(!support::udp_bound(addr), "port {addr} still bound");
}

/// A port taken between picking it and SIPp binding it (another test, the
/// kernel) moves a first start to a fresh port instead of failing the test.
#[test]
fn a_taken_port_moves_the_uas_elsewhere() {
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr");
    let mut uas = Uas::start(Scenario::Uas, taken);
    assert_ne!(uas.addr(), taken);
    assert_eq!(
        sip_options_ping(uas.addr(), Duration::from_secs(5)),
        Some(200)
    );
    uas.stop();
}
