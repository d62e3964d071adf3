//! Outbound TLS (issue 11): dispatcher destinations with `;transport=tls` (or
//! `sips:`) are reached over TLS, verified against `[tls] ca`. The callee is
//! Python's `ssl` module (OpenSSL, a TLS stack independent of sipvane's
//! rustls); the caller a SIPp UAC over UDP; the real `sipvane` binary in
//! between, on both I/O drivers.

#[macro_use]
mod support;

use std::process::Command;
use std::time::Duration;

use support::tls::{CertDir, KamailioTls, PyTlsUas};
use support::{metrics, Scenario, Sipvane, Uac, Uas};

const SETTLE: Duration = Duration::from_secs(5);
const RUN_LIMIT: Duration = Duration::from_secs(60);

on_both_drivers!(
    udp_caller_reaches_a_tls_destination,
    untrusted_destination_fails_over_at_once,
    kamailio_tls_destination_completes_calls,
    client_certificate_for_a_destination_requiring_one,
    destination_refusing_us_without_a_client_certificate_fails_over,
);

/// The sum over every label set of a metric (`name{...} value` lines).
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `[tls] ca` only: no TLS listener, outbound TLS.
fn ca_toml(certs: &CertDir) -> String {
    format!("[tls]\nca = \"{}\"\n", certs.path("ca.crt"))
}

/// 20 calls from a UDP caller to a TLS callee whose certificate (IP SAN
/// 127.0.0.1) is signed by `[tls] ca`: INVITE, ACK and BYE reach it over TLS,
/// each with our Via saying TLS.
fn udp_caller_reaches_a_tls_destination(io: &str) {
    let certs = CertDir::new(&format!("ok-{io}"));
    certs.issue("ca", "IP:127.0.0.1", "srv");
    let uas = PyTlsUas::start(&certs, "srv");
    let mut sipvane = Sipvane::builder("tlsout")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{};transport=tls", uas.addr()))
        .toml(&ca_toml(&certs))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(20)
        .rate(20)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(20);
    assert!(
        uas.wait_for(|_| uas.received("BYE") >= 20, SETTLE),
        "{:?}",
        uas.lines()
    );
    assert_eq!(uas.received("INVITE"), 20, "{:?}", uas.lines());
    assert_eq!(uas.received("ACK"), 20, "{:?}", uas.lines());
    assert_eq!(uas.handshake_failures(), 0, "{:?}", uas.lines());
    for method in ["INVITE", "ACK", "BYE"] {
        let vias: Vec<String> = uas
            .lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix(&format!("VIA {method} ")).map(str::to_owned))
            .collect();
        assert_eq!(vias.len(), 20, "{method}: {vias:?}");
        assert!(
            vias.iter().all(|v| v.contains("SIP/2.0/TLS ")),
            "{method}: {vias:?}"
        );
    }
    let m = metrics(&sipvane);
    assert!(
        metric_sum(&m, "sipvane_worker_tls_connected_total") >= 1,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "sipvane_tls_out_handshake_failures_total"),
        0,
        "{m}"
    );
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 20);
    assert_eq!(c.get("dialogs_ended"), 20);
}

/// A destination whose certificate another CA signed: the handshake fails
/// (sipvane refuses the certificate), which counts as a failed connect, so
/// every call it gets fails over to the good destination at once.
fn untrusted_destination_fails_over_at_once(io: &str) {
    let certs = CertDir::new(&format!("bad-{io}"));
    certs.issue("ca", "IP:127.0.0.1", "srv");
    certs.issue("other-ca", "IP:127.0.0.1", "stranger");
    let bad = PyTlsUas::start(&certs, "stranger");
    let good = PyTlsUas::start(&certs, "srv");
    let mut sipvane = Sipvane::builder("tlsout-bad")
        .io(io)
        .workers(1)
        .algorithm("round-robin")
        .destination(format!("1 sip:{};transport=tls", bad.addr()))
        .destination(format!("1 sip:{};transport=tls", good.addr()))
        .toml(&ca_toml(&certs))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(10)
        .rate(10)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(10);
    assert!(good.wait_for(|_| good.received("BYE") >= 10, SETTLE));
    assert_eq!(bad.received("INVITE"), 0, "{:?}", bad.lines());
    assert!(bad.handshake_failures() >= 1, "{:?}", bad.lines());
    let m = metrics(&sipvane);
    let failed = metric_sum(&m, "sipvane_tls_out_handshake_failures_total");
    assert!(failed >= 1, "{m}");
    assert!(m.contains("reason=\"tls\""), "{m}");
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 10);
    // One failed handshake fails every request waiting on that connection.
    assert!(c.get("failovers") >= failed, "{failed}");
    assert_eq!(c.get("connect_failures"), c.get("failovers"));
    assert_eq!(
        c.get("timeouts"),
        0,
        "failover came from the failed handshake, not fr_timer"
    );
}

/// Kamailio with its tls module as the TLS destination, relaying to a SIPp
/// callee over UDP: 50 calls complete, the in-dialog ACK and BYE reach
/// Kamailio over the pooled TLS connection along its TLS Record-Route.
fn kamailio_tls_destination_completes_calls(io: &str) {
    let certs = CertDir::new(&format!("kam-{io}"));
    certs.issue("ca", "IP:127.0.0.1", "kam");
    let mut uas = Uas::start(Scenario::Uas, support::free_udp_addr());
    let kamailio = KamailioTls::start(&certs, "kam", uas.addr());
    let mut sipvane = Sipvane::builder("tlsout-kam")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{};transport=tls", kamailio.addr()))
        .toml(&ca_toml(&certs))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(50)
        .rate(50)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(50);
    let f = uas.wait_until(SETTLE, |s| s.count("BYE", "Recv") >= 50);
    assert_eq!(f.invites_received(), 50, "{f:?}");
    assert_eq!(f.count("ACK", "Recv"), 50, "{f:?}");
    let m = metrics(&sipvane);
    assert!(
        metric_sum(&m, "sipvane_worker_tls_connected_total") >= 1,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "sipvane_tls_out_handshake_failures_total"),
        0,
        "{m}"
    );
    uas.stop();
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 50, "{}", kamailio.log());
    assert_eq!(c.get("dialogs_ended"), 50);
}

/// Mutual TLS towards a trunk: a destination requiring a client certificate
/// signed by its CA gets `[tls] client_certificate`, or, without it, the
/// listener's `certificate` (as Kamailio's tls module presents its one
/// certificate both ways); calls complete over it.
fn client_certificate_for_a_destination_requiring_one(io: &str) {
    let certs = CertDir::new(&format!("mutual-{io}"));
    certs.issue("ca", "IP:127.0.0.1", "srv");
    certs.issue_named("other-ca", "DNS:sipvane.test", "sipvane client", "client");
    certs.issue_named("other-ca", "DNS:sip.test", "sipvane listener", "listener");
    let uas = PyTlsUas::start_requiring_client_cert(&certs, "srv", "other-ca");
    let explicit = format!(
        "client_certificate = \"{}\"\nclient_private_key = \"{}\"\n",
        certs.path("client.crt"),
        certs.path("client.key")
    );
    let listener = format!(
        "listen = \"127.0.0.1:{}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        support::free_tcp_port(),
        certs.path("listener.crt"),
        certs.path("listener.key")
    );
    for (extra, cn, calls) in [
        (explicit, "sipvane client", 10),
        (listener, "sipvane listener", 20),
    ] {
        let mut sipvane = Sipvane::builder("tlsout-mutual")
            .io(io)
            .destination(format!("1 sip:{};transport=tls", uas.addr()))
            .toml(&format!("{}{extra}", ca_toml(&certs)))
            .start();
        Uac::new(Scenario::Uac, sipvane.addr())
            .calls(10)
            .rate(10)
            .timeout(RUN_LIMIT)
            .run()
            .assert_all_succeeded(10);
        assert!(
            uas.wait_for(|_| uas.received("BYE") >= calls, SETTLE),
            "{:?}",
            uas.lines()
        );
        let peers: Vec<String> = uas
            .lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix("PEER-CERT ").map(str::to_owned))
            .collect();
        assert!(peers.last().is_some_and(|p| p == cn), "{peers:?}");
        assert_eq!(uas.handshake_failures(), 0, "{:?}", uas.lines());
        sipvane.stop();
    }
}

/// Without a client certificate, a destination requiring one refuses the
/// handshake (TLS 1.3: after our side completed it, with a
/// certificate_required alert): the requests waiting on it fail over at once
/// to the other destination, not after fr_timer.
fn destination_refusing_us_without_a_client_certificate_fails_over(io: &str) {
    let certs = CertDir::new(&format!("refused-{io}"));
    certs.issue("ca", "IP:127.0.0.1", "srv");
    let strict = PyTlsUas::start_requiring_client_cert(&certs, "srv", "other-ca");
    let good = PyTlsUas::start(&certs, "srv");
    let mut sipvane = Sipvane::builder("tlsout-refused")
        .io(io)
        .workers(1)
        .algorithm("round-robin")
        .destination(format!("1 sip:{};transport=tls", strict.addr()))
        .destination(format!("1 sip:{};transport=tls", good.addr()))
        .toml(&ca_toml(&certs))
        .start();
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(10)
        .rate(10)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(10);
    assert!(good.wait_for(|_| good.received("BYE") >= 10, SETTLE));
    assert_eq!(strict.received("INVITE"), 0, "{:?}", strict.lines());
    assert!(strict.handshake_failures() >= 1, "{:?}", strict.lines());
    let m = metrics(&sipvane);
    assert!(
        metric_sum(&m, "sipvane_tls_out_handshake_failures_total") >= 1,
        "{m}"
    );
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 10);
    assert!(c.get("failovers") >= 1);
    assert_eq!(
        c.get("timeouts"),
        0,
        "failover came from the refused handshake, not fr_timer"
    );
}

/// A TLS destination without `[tls] ca` is a one-line error at its line of
/// the dispatcher list (`check-config` and start-up alike).
#[test]
fn tls_destination_needs_a_ca() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let list = dir.join("tlsout-noca.list");
    std::fs::write(
        &list,
        "1 sip:127.0.0.1:5070\n1 sips:127.0.0.1:5071\n1 sip:127.0.0.1:5072;transport=TLS\n",
    )
    .unwrap();
    let toml = dir.join("tlsout-noca.toml");
    std::fs::write(
        &toml,
        format!("[dispatcher]\nlist = \"{}\"\n", list.display()),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sipvane"))
        .arg("check-config")
        .arg(&toml)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sipvane");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    let l = list.display();
    assert_eq!(
        lines,
        [
            format!("{l}:2: TLS destination 'sips:127.0.0.1:5071' needs [tls] ca (the PEM CA bundle its certificate is verified against)"),
            format!("{l}:3: TLS destination 'sip:127.0.0.1:5072;transport=TLS' needs [tls] ca (the PEM CA bundle its certificate is verified against)"),
        ],
        "{err}"
    );
}

/// OPTIONS probes of a TLS destination go over TLS (the control thread runs
/// the same rustls client session): the good destination answers them over
/// TLS and stays up; one whose certificate another CA signed fails every
/// probe at the handshake and is taken down ("probe connection failed").
#[test]
fn tls_destinations_are_probed_over_tls() {
    let wait = Duration::from_secs(30);
    let certs = CertDir::new("probe");
    certs.issue("ca", "IP:127.0.0.1", "srv");
    certs.issue("other-ca", "IP:127.0.0.1", "stranger");
    let good = PyTlsUas::start(&certs, "srv");
    let bad = PyTlsUas::start(&certs, "stranger");
    let sipvane = Sipvane::builder("tlsout-probe")
        .destination(format!("1 sip:{};transport=tls", good.addr()))
        .destination(format!("1 sip:{};transport=tls", bad.addr()))
        .toml("ping_interval_s = 1")
        .toml(&ca_toml(&certs))
        .start();
    assert!(
        good.wait_for(|_| good.received("OPTIONS") >= 2, wait),
        "{:?}",
        good.lines()
    );
    assert!(good
        .lines()
        .iter()
        .filter(|l| l.starts_with("VIA OPTIONS "))
        .all(|l| l.contains("SIP/2.0/TLS ")));
    assert!(
        sipvane.wait_for_log("probe connection failed", 1, wait),
        "{}",
        sipvane.log()
    );
    let log = sipvane.log();
    let good_uri = good.addr().to_string();
    assert!(
        !log.lines()
            .any(|l| l.contains("destination down") && l.contains(&good_uri)),
        "{log}"
    );
    assert_eq!(bad.received("OPTIONS"), 0, "{:?}", bad.lines());
    assert!(bad.handshake_failures() >= 1, "{:?}", bad.lines());
}
