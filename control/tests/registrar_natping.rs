//! NAT keep-alive end to end (PostgreSQL with Kamailio's schema, SIPp): a
//! phone registers with a private Contact from its real port, so its
//! binding is stored with `received`; with `nat_ping_interval_s = 1` the
//! SIPp UAS on that port receives OPTIONS pings and answers them, and the
//! binding stays; once the phone is gone (SIPp stopped) the binding is
//! removed after `nat_ping_max_misses` unanswered pings, and so is its row.
//! On both I/O drivers (the pings leave from a timer, on the public socket).

#[path = "support/db.rs"]
mod db_support;
#[macro_use]
mod support;

use std::time::{Duration, Instant};

use db_support::{runtime, KamailioDb};
use support::{free_udp_addr, free_udp_port, metric, metrics, Scenario, Sipvane, Uac, Uas};

on_both_drivers!(nated_phones_are_pinged_and_dropped_when_they_stop_answering);

fn nated_phones_are_pinged_and_dropped_when_they_stop_answering(io: &str) {
    support::require_sipp();
    let rt = runtime();
    let db = KamailioDb::pg_with_one_user(&rt);
    let pbx = Uas::builder(Scenario::Uas).addr(free_udp_addr()).start();
    let mut sipvane = Sipvane::builder("registrar-natping")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", pbx.addr()))
        .toml(&format!(
            "ping_interval_s = 0\n\
             [registrar]\ndomain = \"example.com\"\ndb_url = \"{}\"\nprefixes = [\"6\"]\n\
             write_back_ms = 200\nnat_ping_interval_s = 1\nnat_ping_max_misses = 2\n",
            db.url()
        ))
        .start();
    let rows = || {
        let sql = "SELECT contact, CAST(COALESCE(received, '') AS TEXT) FROM location";
        rt.block_on(db.query(sql, 2))
    };
    let wait_rows = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = rows();
            if r.len() == n || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // The phone sits behind a "NAT": its Contact names a private address.
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
    let r = wait_rows(1);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0][1], format!("sip:127.0.0.1:{port}"), "{r:?}");
    let mut phone = Uas::builder(Scenario::Uas).port(port).start();
    assert_eq!(phone.addr().port(), port, "the phone's port was taken");
    // It is pinged (from sipvane's public port) and answers: it stays.
    let pinged = phone.wait_until(Duration::from_secs(10), |s| s.count("OPTIONS", "Recv") >= 3);
    assert!(pinged.count("OPTIONS", "Recv") >= 3, "{pinged:?}");
    assert_eq!(rows().len(), 1, "an answering phone lost its binding");
    // Gone: two unanswered pings later the binding and its row are removed.
    phone.stop();
    let r = wait_rows(0);
    assert!(r.is_empty(), "a silent NATed binding was kept: {r:?}");
    let m = metrics(&sipvane);
    assert!(metric(&m, "sipvane_registrar_nat_pings_total") >= 4, "{m}");
    assert_eq!(
        metric(&m, "sipvane_registrar_nat_ping_removals_total"),
        1,
        "{m}"
    );
    // And calls to it get 404.
    Uac::new(Scenario::Uac404, sipvane.addr())
        .service("6001")
        .run()
        .assert_all_succeeded(1);
    let counters = sipvane.stop();
    assert_eq!(
        counters.get("registrar_nat_ping_removals"),
        1,
        "{counters:?}"
    );
}
