//! Restart and upgrade without dropped calls, end to end: SIPp places calls
//! through sipvane at a steady rate while a new process (the same binary,
//! then a copy of it standing in for an upgraded one) takes over the sockets
//! of the running one. Calls ringing at the switch (their 200 reaches the new
//! process and is relayed to the old one, which holds the INVITE
//! transaction) and calls already up (their BYE routes by Record-Route) all
//! complete; each old process exits 0 by itself once its transactions end.

#[macro_use]
mod support;

use std::time::Duration;

use support::{sip_options_ping, Scenario, Sipvane, Uac, Uas};

fn calls_in_flight_survive_a_restart_and_an_upgrade(io: &str) {
    // Answers 0.6 s after the 180: at any moment ~60 INVITEs are ringing.
    let mut uas = Uas::builder(Scenario::UasSlow)
        .answer_delay(Duration::from_millis(600))
        .start();
    let mut sv = Sipvane::builder(&format!("restart-handover-{io}"))
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", uas.addr()))
        .start();
    // 100 calls/s for 15 s, each held 2 s: ~260 calls in flight at a switch.
    const CALLS: u64 = 1500;
    let uac = Uac::new(Scenario::Uac, sv.addr())
        .calls(CALLS as u32)
        .rate(100)
        .hold(Duration::from_secs(2))
        .timeout(Duration::from_secs(90))
        .spawn();
    let seen = uas.wait_until(Duration::from_secs(30), |s| s.invites_received() >= 300);
    assert!(seen.invites_received() >= 300, "{seen:?}");
    let first = sv.pid();

    // A restart onto the same binary.
    let old = sv.handover_restart(None);
    assert_ne!(old.pid(), sv.pid());
    assert_eq!(old.pid(), first);
    let old_counters = old.wait_exit(Duration::from_secs(60));
    assert!(
        old_counters.get("initial_invites") >= 300,
        "{old_counters:?}"
    );
    assert!(
        old_counters.get("initial_invites") < CALLS,
        "{old_counters:?}"
    );

    // An upgrade: a new binary on disk (a copy) takes over from the first
    // successor, which hands over in turn.
    let upgraded = sv.dir().join("sipvane-upgraded");
    std::fs::copy(env!("CARGO_BIN_EXE_sipvane"), &upgraded).expect("copy the binary");
    let second = sv.handover_restart(Some(&upgraded));
    let second_counters = second.wait_exit(Duration::from_secs(60));
    // The first successor relayed the old process's responses and requests.
    assert!(
        second_counters.get("relayed_to_predecessor") > 0,
        "{second_counters:?}"
    );

    let run = uac.wait();
    run.assert_all_succeeded(CALLS);
    assert_eq!(
        sip_options_ping(sv.addr(), Duration::from_secs(2)),
        Some(200),
        "the upgraded process serves"
    );
    let last = sv.stop();
    assert!(last.get("relayed_to_predecessor") > 0, "{last:?}");
    assert_eq!(last.get("forged_responses"), 0, "{last:?}");
    uas.stop();
}

on_both_drivers!(calls_in_flight_survive_a_restart_and_an_upgrade);
