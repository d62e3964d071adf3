//! Faults `make chaos` (scripts/chaos.sh) shows in figures, asserted here as
//! behaviours: a destination that freezes (SIGSTOP: its socket still exists,
//! nothing answers) costs no new call — each attempt to it fails over after
//! `fr_timer` until it is taken out — and once it resumes (SIGCONT) the
//! probes bring it back and new calls reach it again. (A killed destination
//! and one answering 503 are in proxy_sipp.rs.) One of two RTPEngines killed
//! under load costs no call either: offers move to the other engine, and the
//! restarted (empty) engine gets new calls again.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use support::{api_get, free_udp_addr, Scenario, Service, ServiceKind, Sipvane, Uac, Uas};

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

/// (`up`, `offers`) of the engine at `address` (`IP:PORT`) in `GET /status`.
fn engine(sv: &Sipvane, address: &str) -> (bool, u64) {
    let body = api_get(sv, "/status");
    let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let e = v["rtpengine"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["address"] == address)
        .unwrap_or_else(|| panic!("no engine {address} in {body}"));
    (
        e["up"].as_bool().expect("up"),
        e["offers"].as_u64().expect("offers"),
    )
}

fn a_killed_media_relay_costs_no_call_and_is_used_again_once_restarted(io: &str) {
    let good = Service::start(ServiceKind::Rtpengine);
    let mut killed = Service::start(ServiceKind::Rtpengine);
    let killed_addr = killed.url().trim_start_matches("udp:").to_string();
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    // on_failure stays "reject": a call no engine takes would fail with 503.
    let mut sv = Sipvane::builder("chaos-rtpengine")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", uas.addr()))
        .toml(&format!(
            "[rtpengine]\nengines = [\"{}\", \"{}\"]\ntimeout_ms = 500\nretries = 1\nping_interval_s = 1",
            good.url(),
            killed.url()
        ))
        .start();
    Uac::new(Scenario::Uac, sv.addr())
        .calls(20)
        .rate(20)
        .run()
        .assert_all_succeeded(20);
    assert!(
        engine(&sv, &killed_addr).1 > 0,
        "no call used the second engine"
    );

    // Killed while calls come in: those hashed to it move to the other one.
    let load = Uac::new(Scenario::Uac, sv.addr())
        .calls(60)
        .rate(20)
        .hold(Duration::from_millis(500))
        .spawn();
    std::thread::sleep(Duration::from_millis(800));
    killed.kill();
    load.wait().assert_all_succeeded(60);
    assert!(
        !engine(&sv, &killed_addr).0,
        "the killed engine is still up in /status"
    );

    // Started again (it has forgotten every session): pings bring it back.
    killed.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !engine(&sv, &killed_addr).0 {
        assert!(
            Instant::now() < deadline,
            "the restarted engine never came back; log:\n{}",
            sv.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = engine(&sv, &killed_addr).1;
    Uac::new(Scenario::Uac, sv.addr())
        .calls(20)
        .rate(20)
        .run()
        .assert_all_succeeded(20);
    let offers_after = engine(&sv, &killed_addr).1 - before;

    let c = sv.stop();
    uas.stop();
    drop(good);
    // The Call-ID hash gives it about half of the new calls.
    assert!(
        offers_after >= 3,
        "{offers_after} of 20 new calls were offered to the restarted engine"
    );
    // The kill hit requests in flight (offers moved on, answers and deletes
    // of its calls given up), and still no call failed.
    assert!(c.get("rtpengine1_timeouts") >= 1, "{c:?}");
    assert_eq!(c.get("calls_failed"), 0, "{c:?}");
    assert_eq!(c.get("rtpengine_rejected"), 0, "{c:?}");
    assert_eq!(c.get("rtpengine_passthrough"), 0, "{c:?}");
}

on_both_drivers!(
    a_frozen_destination_is_avoided_and_used_again_once_resumed,
    a_killed_media_relay_costs_no_call_and_is_used_again_once_restarted,
);
