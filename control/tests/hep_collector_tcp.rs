//! HEP to a TCP collector (`[hep] collector = "tcp:…"`) end to end: the real
//! `sipvane` with SIPp calls. Kamailio's `sipcapture` as the TCP receiver
//! (Kamailio's core reads HEP3 from TCP connections with `tcp_accept_hep3`)
//! stores every message; and a collector of the test that goes away and comes
//! back: captures are dropped and counted while it is away, calls are not
//! affected, and capture resumes on the re-opened connections.

#[path = "support/db.rs"]
mod db_support;
#[path = "support/hep.rs"]
mod hep_support;
#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hep_support::{assert_complete, by_call, decode_all, Kamailio, TcpCollector, AGENT, KEY};
use support::{free_udp_addr, free_udp_port, metric, metrics, Scenario, Sipvane, Uac, Uas};

const RUN_LIMIT: Duration = Duration::from_secs(40);

on_both_drivers!(tcp_collector_feeds_kamailio);

fn hep_toml(collector: SocketAddr, extra: &str) -> String {
    format!(
        "[hep]\ncollector = \"tcp:{collector}\"\nagent_id = {AGENT}\npassword = \"{KEY}\"\n{extra}"
    )
}

fn calls(target: SocketAddr, n: u32, local_port: u16) {
    Uac::new(Scenario::Uac, target)
        .calls(n)
        .rate(20)
        .local_port(local_port)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(u64::from(n));
}

/// Waits until `f` holds on sipvane's metrics.
fn wait_metrics(sipvane: &Sipvane, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = metrics(sipvane);
        if f(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every worker connects to Kamailio's TCP listener; every message of every
/// call is stored by `sipcapture` with the right addresses, exactly as many as
/// sipvane counted sent.
fn tcp_collector_feeds_kamailio(io: &str) {
    const CALLS: u32 = 10;
    let kamailio = Kamailio::start_tcp();
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    let uas_addr = uas.addr();
    let uac_port = free_udp_port();
    let mut sipvane = Sipvane::builder("hep-tcpc")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{uas_addr}"))
        .toml(&hep_toml(kamailio.tcp.unwrap(), ""))
        .start();
    calls(sipvane.addr(), CALLS, uac_port);
    uas.wait_until(Duration::from_secs(5), |s| {
        s.count("BYE", "Recv") >= u64::from(CALLS)
    });
    uas.stop();
    let m = wait_metrics(&sipvane, "both workers connected", |m| {
        metric(m, "sipvane_hep_collector_connections") == 2
    });
    assert_eq!(metric(&m, "sipvane_hep_connect_failures_total"), 0, "{m}");
    let c = sipvane.stop();
    assert_eq!(c.get("hep_dropped"), 0);
    let stored = kamailio.stop(c.get("hep_sent") as usize);
    assert_eq!(
        stored.len() as u64,
        c.get("hep_sent"),
        "rows vs packets sent"
    );
    let seen: Vec<_> = stored.into_iter().collect();
    assert!(seen.iter().all(|s| s.4 == 17), "UDP calls stored as UDP");
    let role = |a: SocketAddr| match a.port() {
        p if p == uac_port => "uac",
        p if p == uas_addr.port() => "uas",
        _ => "sv",
    };
    let calls = by_call(&seen, |s, d| (role(s), role(d)));
    assert_eq!(calls.len(), CALLS as usize, "{calls:#?}");
    assert_complete(&calls);
}

/// The collector goes away: calls go on, the workers notice, captures queue up
/// to `queue_bytes` and are then dropped and counted, reconnects fail and are
/// counted. The collector comes back on the same port: the workers reconnect
/// (backoff ≤ 5 s) and the next calls are captured whole, on a stream that
/// is still in step (every packet decodes).
#[test]
fn collector_away_drops_and_counts_then_resumes() {
    let collector = TcpCollector::start(None);
    let addr = collector.addr;
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    let uas_addr = uas.addr();
    let uac_port = free_udp_port();
    let mut sipvane = Sipvane::builder("hep-away")
        .io("epoll")
        .workers(2)
        .destination(format!("1 sip:{uas_addr}"))
        .toml(&hep_toml(addr, "queue_bytes = 65536"))
        .start();
    calls(sipvane.addr(), 5, uac_port);
    let m = wait_metrics(&sipvane, "first captures", |m| {
        metric(m, "sipvane_hep_sent_total") as usize == collector.count()
            && collector.count() >= 5 * 13
    });
    assert_eq!(metric(&m, "sipvane_hep_dropped_total"), 0, "{m}");
    let before = collector.finish();

    // Away: the idle connections are seen closed, then captures pile up.
    wait_metrics(&sipvane, "connections seen closed", |m| {
        metric(m, "sipvane_hep_collector_connections") == 0
    });
    calls(sipvane.addr(), 60, uac_port);
    let m = wait_metrics(&sipvane, "drops and failed reconnects", |m| {
        metric(m, "sipvane_hep_dropped_total") > 0
            && metric(m, "sipvane_hep_connect_failures_total") > 0
    });
    assert!(metric(&m, "sipvane_hep_disconnects_total") >= 2, "{m}");
    let sent_while_away = metric(&m, "sipvane_hep_sent_total");

    // Back on the same port.
    let collector = TcpCollector::start(Some(addr));
    wait_metrics(&sipvane, "reconnected", |m| {
        metric(m, "sipvane_hep_collector_connections") == 2
    });
    calls(sipvane.addr(), 5, uac_port);
    uas.wait_until(Duration::from_secs(5), |s| s.count("BYE", "Recv") >= 70);
    uas.stop();
    let m = wait_metrics(&sipvane, "everything sent arrived", |m| {
        metric(m, "sipvane_hep_sent_total") as usize == before.len() + collector.count()
    });
    assert!(
        metric(&m, "sipvane_hep_sent_total") > sent_while_away,
        "{m}"
    );
    sipvane.stop();
    let after = collector.finish();
    let seen = decode_all(&after);
    let role = |a: SocketAddr| match a.port() {
        p if p == uac_port => "uac",
        p if p == uas_addr.port() => "uas",
        _ => "sv",
    };
    let calls = by_call(&seen, |s, d| (role(s), role(d)));
    // The last five calls at least, whole (the queue kept the first 64 KiB of
    // the calls made while away, and those may be cut short by the drops).
    let first: BTreeSet<_> = by_call(&decode_all(&before), |s, d| (role(s), role(d)))
        .into_keys()
        .collect();
    assert!(calls.keys().all(|c| !first.contains(c)));
    let whole: Vec<_> = calls
        .iter()
        .filter(|(_, msgs)| msgs.is_superset(&hep_support::expected_call()))
        .collect();
    assert!(
        whole.len() >= 5,
        "{} whole calls after the return",
        whole.len()
    );
    let mut last = calls.clone();
    last.retain(|c, _| whole.iter().any(|(w, _)| *w == c));
    assert_complete(&last);
}
