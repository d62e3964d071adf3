//! Faults `make chaos` (scripts/chaos.sh) shows in figures, asserted here as
//! behaviours: a destination that freezes (SIGSTOP: its socket still exists,
//! nothing answers) costs no new call — each attempt to it fails over after
//! `fr_timer` until it is taken out — and once it resumes (SIGCONT) the
//! probes bring it back and new calls reach it again. (A killed destination
//! and one answering 503 are in proxy_sipp.rs.)

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use support::{api_get, free_udp_addr, Scenario, Sipvane, Uac, Uas};

/// `usable` of the destination `uri` in `GET /dispatcher`.
fn usable(sv: &Sipvane, uri: &str) -> bool {
    let body = api_get(sv, "/dispatcher");
    let v: serde_json::Value = serde_json::from_str(&body).expect("dispatcher JSON");
    v["sets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["destinations"].as_array().into_iter().flatten())
        .find(|d| d["uri"] == uri)
        .and_then(|d| d["usable"].as_bool())
        .unwrap_or_else(|| panic!("no {uri} in {body}"))
}

fn a_frozen_destination_is_avoided_and_used_again_once_resumed(io: &str) {
    let mut good = Uas::start(Scenario::Uas, free_udp_addr());
    let mut frozen = Uas::start(Scenario::Uas, free_udp_addr());
    let frozen_uri = format!("sip:{}", frozen.addr());
    let mut sv = Sipvane::builder("chaos-sigstop")
        .io(io)
        .algorithm("round-robin")
        .destination(format!("1 sip:{}", good.addr()))
        .destination(format!("1 {frozen_uri}"))
        .toml("fr_timer_ms = 500\nping_interval_s = 1")
        .start();
    let pid = frozen.pid().expect("SIPp runs") as libc::pid_t;
    // SAFETY: plain syscalls on a child process this test owns.
    unsafe { libc::kill(pid, libc::SIGSTOP) };

    let during = Uac::new(Scenario::Uac, sv.addr()).calls(40).rate(20).run();
    during.assert_all_succeeded(40);
    assert!(
        !usable(&sv, &frozen_uri),
        "the frozen destination is still in use"
    );

    unsafe { libc::kill(pid, libc::SIGCONT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !usable(&sv, &frozen_uri) {
        assert!(
            Instant::now() < deadline,
            "the resumed destination never came back; log:\n{}",
            sv.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = frozen.stats().invites_received();
    let after = Uac::new(Scenario::Uac, sv.addr()).calls(20).rate(20).run();
    after.assert_all_succeeded(20);
    let reached = frozen.wait_until(Duration::from_secs(10), |s| {
        s.invites_received() >= before + 5
    });

    let c = sv.stop();
    good.stop();
    frozen.stop();
    // Round-robin gives it every other new call once it is back.
    assert!(
        reached.invites_received() >= before + 5,
        "{} INVITEs reached the resumed destination after it came back",
        reached.invites_received() - before
    );
    assert!(c.get("timeouts") >= 1 && c.get("failovers") >= 1, "{c:?}");
    assert_eq!(c.get("calls_failed"), 0, "{c:?}");
}

on_both_drivers!(a_frozen_destination_is_avoided_and_used_again_once_resumed);
