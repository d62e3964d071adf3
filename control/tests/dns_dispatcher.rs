//! Dispatcher destinations named by DNS, end to end: the real `sipvane`, a
//! real DNS server (a private dnsmasq on loopback serving only the test's
//! records) and SIPp backends reached through SRV / NAPTR / A names.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use support::sipvane::{api_get, metric, metrics};
use support::{free_udp_addr, Dnsmasq, Record, Scenario, Sipvane, Uac, Uas};

const RUN_LIMIT: Duration = Duration::from_secs(60);

fn a(name: &str) -> Record {
    Record::A(name.into(), "127.0.0.1".into(), 1)
}

fn srv(owner: &str, target: &str, port: u16, prio: u16, weight: u16) -> Record {
    Record::Srv(owner.into(), target.into(), port, prio, weight)
}

fn dns_toml(dns: &Dnsmasq) -> String {
    format!(
        "ping_interval_s = 0\n[dns]\nservers = [\"{}\"]\nmin_ttl_s = 1\nnegative_ttl_s = 1\ntimeout_ms = 1000",
        dns.addr()
    )
}

/// Polls `GET /dispatcher` until `pred` holds (bounded); returns the last body.
fn wait_dispatcher(sipvane: &Sipvane, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = api_get(sipvane, "/dispatcher");
        if pred(&body) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn uri(host: &str, addr: SocketAddr) -> String {
    format!("sip:{host}:{}", addr.port())
}

/// `sip:pool.sipvane.test` (no port) resolves through SRV into one destination
/// per target; both take calls. The SRV record then changes to a third
/// backend while calls are up: sipvane re-resolves when the 1 s TTL is due,
/// republishes the table, every call in progress finishes and new calls go to
/// the new target only.
#[test]
fn srv_pool_follows_record_changes_without_dropping_calls() {
    let mut ua = Uas::start(Scenario::Uas, free_udp_addr());
    let mut ub = Uas::start(Scenario::Uas, free_udp_addr());
    let mut uc = Uas::start(Scenario::Uas, free_udp_addr());
    let owner = "_sip._udp.pool.sipvane.test";
    let hosts = [
        a("a.sipvane.test"),
        a("b.sipvane.test"),
        a("c.sipvane.test"),
    ];
    let mut records = hosts.to_vec();
    records.push(srv(owner, "a.sipvane.test", ua.addr().port(), 0, 50));
    records.push(srv(owner, "b.sipvane.test", ub.addr().port(), 0, 50));
    let mut dns = Dnsmasq::start(1, &records);
    let mut sipvane = Sipvane::builder("dns-srv")
        .destination("1 sip:pool.sipvane.test")
        .toml(&dns_toml(&dns))
        .start();

    let (uri_a, uri_b, uri_c) = (
        uri("a.sipvane.test", ua.addr()),
        uri("b.sipvane.test", ub.addr()),
        uri("c.sipvane.test", uc.addr()),
    );
    let table = api_get(&sipvane, "/dispatcher");
    assert!(
        table.contains(&uri_a) && table.contains(&uri_b) && !table.contains(&uri_c),
        "{table}"
    );
    assert!(table.contains("SRV of sip:pool.sipvane.test"), "{table}");

    let calls = 30;
    let uac = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(calls)
        .rate(20)
        .hold(Duration::from_secs(2))
        .timeout(RUN_LIMIT)
        .spawn();
    std::thread::sleep(Duration::from_millis(500));
    let mut changed = hosts.to_vec();
    changed.push(srv(owner, "c.sipvane.test", uc.addr().port(), 0, 10));
    dns.serve(&changed);
    let table = wait_dispatcher(&sipvane, |t| t.contains(&uri_c) && !t.contains(&uri_a));
    assert!(
        table.contains(&uri_c) && !table.contains(&uri_a) && !table.contains(&uri_b),
        "the SRV change was not picked up:\n{table}\n{}",
        sipvane.log()
    );
    assert!(
        sipvane
            .log()
            .contains("dispatcher destinations re-resolved"),
        "{}",
        sipvane.log()
    );
    let run = uac.wait();
    run.assert_all_succeeded(u64::from(calls));

    let after = 10;
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(after)
        .rate(20)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(u64::from(after));

    let m = metrics(&sipvane);
    assert!(metric(&m, "sipvane_dns_queries_total") >= 3, "{m}");
    assert_eq!(metric(&m, "sipvane_dns_failures_total"), 0, "{m}");
    let (fa, fb, fc) = (ua.stop(), ub.stop(), uc.stop());
    let (ia, ib, ic) = (
        fa.invites_received(),
        fb.invites_received(),
        fc.invites_received(),
    );
    assert_eq!(ia + ib + ic, u64::from(calls + after), "{ia} {ib} {ic}");
    assert!(ia > 0 && ib > 0, "both SRV targets took calls: {ia} {ib}");
    assert!(
        ic >= u64::from(after),
        "new calls go to the new target: {ic}"
    );
    for f in [&fa, &fb, &fc] {
        assert_eq!(f.count("BYE", "Recv"), f.invites_received(), "{f:?}");
    }
    sipvane.stop();
}

/// A name without port or transport goes NAPTR → SRV → A: the NAPTR record
/// for TCP is passed over (destinations are UDP), the UDP one names the SRV
/// that names the backend. A name with a port is looked up with A only and
/// keeps its URI.
#[test]
fn naptr_then_srv_and_plain_a_records() {
    let mut ua = Uas::start(Scenario::Uas, free_udp_addr());
    let mut ub = Uas::start(Scenario::Uas, free_udp_addr());
    let records = [
        a("a.sipvane.test"),
        a("pbx.sipvane.test"),
        Record::Naptr(
            "carrier.sipvane.test".into(),
            10,
            10,
            "S".into(),
            "SIP+D2T".into(),
            "_sip._tcp.carrier.sipvane.test".into(),
        ),
        Record::Naptr(
            "carrier.sipvane.test".into(),
            20,
            10,
            "S".into(),
            "SIP+D2U".into(),
            "_sip._udp.edge.sipvane.test".into(),
        ),
        srv(
            "_sip._udp.edge.sipvane.test",
            "a.sipvane.test",
            ua.addr().port(),
            0,
            0,
        ),
    ];
    let dns = Dnsmasq::start(60, &records);
    let pbx = uri("pbx.sipvane.test", ub.addr());
    let mut sipvane = Sipvane::builder("dns-naptr")
        .destination("1 sip:carrier.sipvane.test")
        .destination(format!("1 {pbx}"))
        .toml(&dns_toml(&dns))
        .start();
    let table = api_get(&sipvane, "/dispatcher");
    assert!(
        table.contains(&uri("a.sipvane.test", ua.addr())) && table.contains(&pbx),
        "{table}"
    );
    let log = dns.log();
    assert!(log.contains("query[NAPTR] carrier.sipvane.test"), "{log}");
    assert!(
        !log.contains("_sip._tcp.carrier"),
        "the TCP NAPTR is not followed:\n{log}"
    );
    let calls = 10;
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(calls)
        .rate(20)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(u64::from(calls));
    let (fa, fb) = (ua.stop(), ub.stop());
    assert!(fa.invites_received() > 0 && fb.invites_received() > 0);
    sipvane.stop();
}

/// A name that does not resolve: at start-up it is the error of its line
/// (`check-config` and `run` alike); once running, a name that disappears
/// keeps the table in service (logged, counted as failures only when the
/// server does not answer) and calls keep flowing.
#[test]
fn a_name_that_fails() {
    let mut ua = Uas::start(Scenario::Uas, free_udp_addr());
    let mut dns = Dnsmasq::start(1, &[a("pbx.sipvane.test")]);

    let dir = support::WorkDir::new("dns", "check");
    let list = dir.file("dispatcher.list");
    std::fs::write(&list, "1 sip:nowhere.sipvane.test:5060\n").unwrap();
    let cfg = dir.file("sipvane.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dispatcher]\nlist = \"{}\"\n{}",
            list.display(),
            dns_toml(&dns)
        ),
    )
    .unwrap();
    let o = support::output_within(
        Command::new(env!("CARGO_BIN_EXE_sipvane")).args(["check-config", cfg.to_str().unwrap()]),
        Duration::from_secs(30),
        "sipvane check-config with an unknown name",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}:1: cannot resolve destination 'sip:nowhere.sipvane.test:5060': nowhere.sipvane.test: no A/AAAA record",
            list.display()
        )),
        "{err}"
    );
    assert!(
        dns.log().contains("query[A] nowhere.sipvane.test"),
        "{}",
        dns.log()
    );

    let pbx = uri("pbx.sipvane.test", ua.addr());
    let mut sipvane = Sipvane::builder("dns-fail")
        .destination(format!("1 {pbx}"))
        .toml(&dns_toml(&dns))
        .start();
    dns.serve(&[]);
    assert!(
        sipvane.wait_for_log(
            "dispatcher destinations did not resolve; keeping the current table",
            1,
            Duration::from_secs(20)
        ),
        "{}",
        sipvane.log()
    );
    let calls = 10;
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(calls)
        .rate(20)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(u64::from(calls));
    assert!(api_get(&sipvane, "/dispatcher").contains(&pbx));
    assert_eq!(ua.stop().invites_received(), u64::from(calls));
    sipvane.stop();
}
