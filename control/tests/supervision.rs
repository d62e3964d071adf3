//! Supervision, end to end: a worker thread or a control-thread task that
//! panics takes the real `sipvane` down with a non-zero exit after an
//! orderly stop (the final counters line is still written), so systemd
//! restarts it — never a half-dead process. The panics come from the
//! test-only `SIPVANE_TEST_PANIC` hook (docs/reliability.md).

#[macro_use]
mod support;

use std::net::UdpSocket;
use std::time::Duration;

use support::{sip_options_ping, Sipvane};

const PANIC_DATAGRAM: &[u8] = b"SIPVANE-TEST-PANIC";

fn started(io: &str, name: &str, hook: &str) -> Sipvane {
    Sipvane::builder(name)
        .io(io)
        .workers(2)
        .destination("1 sip:127.0.0.1:9")
        .env("SIPVANE_TEST_PANIC", hook)
        .start()
}

/// The process exits non-zero within 5 s, saying what died, after stopping
/// the rest in order.
fn assert_exits_non_zero(sv: &mut Sipvane, what: &str) {
    let status = sv.wait_exit(Duration::from_secs(5));
    let log = sv.log();
    let status = status.unwrap_or_else(|| panic!("sipvane still runs; log:\n{log}"));
    assert_eq!(status.code(), Some(1), "{status:?}; log:\n{log}");
    assert!(log.contains(what), "no {what:?} in log:\n{log}");
    assert!(
        log.contains("exit non-zero for the service manager to restart sipvane"),
        "log:\n{log}"
    );
    assert!(
        log.contains("sipvane: counters "),
        "no orderly stop; log:\n{log}"
    );
}

fn a_panicking_worker_stops_the_process(io: &str) {
    let mut sv = started(io, "supervise-worker", "worker");
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Whichever worker the kernel hands it to panics.
    tx.send_to(PANIC_DATAGRAM, sv.addr()).unwrap();
    assert_exits_non_zero(
        &mut sv,
        "stopped running (its transactions and dialogs are lost)",
    );
    assert!(sv.log().contains("this worker panics on request"));
}

fn a_panicking_control_task_stops_the_process(io: &str) {
    let mut sv = started(io, "supervise-control", "control");
    // The hook's task installs its handler as the control thread starts,
    // before the process answers; a margin all the same.
    std::thread::sleep(Duration::from_millis(200));
    sv.signal(libc::SIGUSR2);
    assert_exits_non_zero(&mut sv, "the control-thread task test panic panicked");
}

on_both_drivers!(
    a_panicking_worker_stops_the_process,
    a_panicking_control_task_stops_the_process
);

/// Without the hook the trigger does not exist: the datagram is dropped as
/// unparsable and sipvane answers on.
#[test]
fn without_the_hook_the_datagram_is_harmless() {
    let mut sv = Sipvane::builder("supervise-off")
        .workers(2)
        .destination("1 sip:127.0.0.1:9")
        .start();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..4 {
        tx.send_to(PANIC_DATAGRAM, sv.addr()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sip_options_ping(sv.addr(), Duration::from_secs(2)),
        Some(200)
    );
    let counters = sv.stop();
    assert!(counters.get("parse_errors") >= 4);
}
