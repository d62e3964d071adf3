//! Path (RFC 3327) end to end (PostgreSQL with Kamailio's schema, SIPp): an
//! "edge proxy" (a SIPp UAC) relays a phone's REGISTER with its own address
//! in `Path` and `Supported: path`; the 200 lists the Path and `location.path`
//! holds it. A call to the user then reaches a SIPp UAS listening at the
//! edge's address (not the phone's private Contact), with the Contact as
//! Request-URI and the Path as Route, and completes (ACK, BYE). On both I/O
//! drivers.

#[path = "support/db.rs"]
mod db_support;
#[macro_use]
mod support;

use std::time::{Duration, Instant};

use db_support::{runtime, KamailioDb};
use support::{free_udp_addr, free_udp_port, received_messages, Scenario, Sipvane, Uac, Uas};

on_both_drivers!(calls_to_a_user_registered_through_an_edge_go_through_its_path);

/// The phone's Contact: a private address only the edge can reach.
const CONTACT: &str = "192.168.77.1:5060";

fn calls_to_a_user_registered_through_an_edge_go_through_its_path(io: &str) {
    support::require_sipp();
    let rt = runtime();
    let db = KamailioDb::pg_with_one_user(&rt);
    let pbx = Uas::builder(Scenario::Uas).addr(free_udp_addr()).start();
    let mut sipvane = Sipvane::builder("registrar-path")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", pbx.addr()))
        .toml(&format!(
            "ping_interval_s = 0\n\
             [registrar]\ndomain = \"example.com\"\ndb_url = \"{}\"\nprefixes = [\"6\"]\n\
             write_back_ms = 200\nauthenticate_calls = false\n",
            db.url()
        ))
        .start();

    // The edge relays the phone's REGISTER from its own port, named in Path.
    let edge_port = free_udp_port();
    let path = format!("<sip:127.0.0.1:{edge_port};lr>");
    let reg = Uac::new(Scenario::RegisterPath, sipvane.addr())
        .service("6001")
        .local_port(edge_port)
        .arg("-au")
        .arg("6001")
        .arg("-ap")
        .arg("pw-6001")
        .arg("-key")
        .arg("contact")
        .arg(CONTACT)
        .arg("-key")
        .arg("expires")
        .arg("3600")
        .arg("-trace_msg")
        .arg("-message_file")
        .arg("msg.log")
        .run();
    reg.assert_all_succeeded(1);
    let oks = received_messages(reg.log_dir(), "SIP/2.0 200");
    assert_eq!(oks.len(), 1, "{oks:?}");
    assert!(
        oks[0]
            .lines()
            .any(|l| l.trim_end() == format!("Path: {path}")),
        "the 200 does not list the Path: {}",
        oks[0]
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let rows = loop {
        let sql = "SELECT contact, CAST(COALESCE(path, '') AS TEXT), \
                   CAST(COALESCE(received, '') AS TEXT) FROM location";
        let r = rt.block_on(db.query(sql, 3));
        if !r.is_empty() || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        rows,
        vec![vec![
            format!("sip:6001@{CONTACT}"),
            path.clone(),
            String::new()
        ]],
        "location row"
    );

    // The edge now listens where its Path points; a call to 6001 reaches it.
    let edge = Uas::builder(Scenario::Uas).port(edge_port).traced().start();
    assert_eq!(edge.addr().port(), edge_port, "the edge's port was taken");
    Uac::new(Scenario::Uac, sipvane.addr())
        .service("6001")
        .timeout(Duration::from_secs(20))
        .run()
        .assert_all_succeeded(1);
    let got = edge.wait_for_calls(1, Duration::from_secs(10));
    assert_eq!(got.invites_received(), 1, "{got:?}");
    let invites = edge.received("INVITE");
    assert_eq!(invites.len(), 1, "{invites:?}");
    let invite = &invites[0];
    assert!(
        invite.starts_with(&format!("INVITE sip:6001@{CONTACT} SIP/2.0")),
        "Request-URI is not the Contact: {invite}"
    );
    let routes: Vec<&str> = invite
        .lines()
        .filter_map(|l| l.strip_prefix("Route: "))
        .map(str::trim_end)
        .collect();
    assert_eq!(routes, vec![path.as_str()], "{invite}");
    assert_eq!(
        pbx.stats().invites_received(),
        0,
        "the call went to the PBX"
    );
    sipvane.stop();
}
