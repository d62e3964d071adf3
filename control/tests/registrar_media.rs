//! Forced media anchoring for NATed registered phones, end to end
//! (PostgreSQL with Kamailio's schema, a real RTPEngine, SIPp): a phone
//! registers a private Contact from another port (NATed, stored with
//! `received`); `[rtpengine] sets` names a set the call does not use, yet
//! the call to the phone is anchored: the phone sees the engine's address
//! and port in the INVITE, the caller in the 200, and the engine holds the
//! session during the call. On both I/O drivers.

#[path = "support/db.rs"]
mod db_support;
#[macro_use]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use db_support::{runtime, KamailioDb};
use support::{
    free_udp_addr, free_udp_port, received_messages, Scenario, Service, ServiceKind, Sipvane, Uac,
    Uas,
};

on_both_drivers!(calls_to_a_nated_phone_are_anchored_whatever_the_sets_say);

/// The m=audio port of a message's SDP.
fn audio_port(msg: &str) -> u16 {
    msg.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no m=audio port in:\n{msg}"))
}

fn calls_to_a_nated_phone_are_anchored_whatever_the_sets_say(io: &str) {
    support::require_sipp();
    let engine = Service::start(ServiceKind::Rtpengine);
    let (pmin, pmax) = engine.media_ports().expect("media ports");
    let rt = runtime();
    let db = KamailioDb::pg_with_one_user(&rt);
    let pbx = Uas::builder(Scenario::Uas).addr(free_udp_addr()).start();
    let mut sipvane = Sipvane::builder("registrar-media")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", pbx.addr()))
        .toml(&format!(
            "ping_interval_s = 0\n\
             [registrar]\ndomain = \"example.com\"\ndb_url = \"{}\"\nprefixes = [\"6\"]\n\
             write_back_ms = 200\nauthenticate_calls = false\nnat_ping_interval_s = 0\n\
             [rtpengine]\nengines = [\"{}\"]\ntimeout_ms = 1000\nretries = 1\n\
             # Only set 9 (unused) is anchored: the call is anchored for the NAT alone.\n\
             sets = [9]\n",
            db.url(),
            engine.url()
        ))
        .start();

    // The phone registers a private Contact from its real port: NATed.
    let port = free_udp_port();
    Uac::new(Scenario::RegisterAuth, sipvane.addr())
        .service("6001")
        .local_port(port)
        .arg("-au")
        .arg("6001")
        .arg("-ap")
        .arg("pw-6001")
        .arg("-key")
        .arg("contact")
        .arg("192.168.77.1:5060")
        .arg("-key")
        .arg("expires")
        .arg("3600")
        .run()
        .assert_all_succeeded(1);
    // Visible to every worker within milliseconds (published by the control thread).
    std::thread::sleep(Duration::from_millis(300));
    let phone = Uas::builder(Scenario::Uas).port(port).traced().start();
    assert_eq!(phone.addr().port(), port, "the phone's port was taken");

    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .service("6001")
        .arg("-trace_msg")
        .arg("-message_file")
        .arg("msg.log")
        .timeout(Duration::from_secs(30))
        .run();
    run.assert_all_succeeded(1);
    let invites = phone.received("INVITE ");
    assert_eq!(invites.len(), 1, "{invites:?}");
    let to_phone = audio_port(&invites[0]);
    assert!(
        (pmin..=pmax).contains(&to_phone),
        "the phone's INVITE is not anchored (m= port {to_phone} not in {pmin}..={pmax}):\n{}",
        invites[0]
    );
    let oks = received_messages(run.log_dir(), "SIP/2.0 200");
    let ok = oks
        .iter()
        .find(|m| m.contains("CSeq: 1 INVITE"))
        .unwrap_or_else(|| panic!("no 200 to INVITE in the caller's log: {oks:?}"));
    let to_caller = audio_port(ok);
    assert!(
        (pmin..=pmax).contains(&to_caller),
        "the caller's 200 is not anchored (m= port {to_caller}):\n{ok}"
    );
    assert_ne!(to_phone, to_caller);
    assert_eq!(
        pbx.stats().invites_received(),
        0,
        "the call went to the PBX"
    );
    let engine_addr = SocketAddr::from(([127, 0, 0, 1], engine.port()));
    let c = sipvane.stop();
    assert_eq!(
        c.get("rtpengine0_offers"),
        1,
        "{c:?} (engine {engine_addr})"
    );
    assert_eq!(c.get("rtpengine0_answers"), 1, "{c:?}");
    assert_eq!(c.get("rtpengine0_deletes"), 1, "{c:?}");
}
