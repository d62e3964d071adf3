//! Double Record-Route when a call changes transport (issue 11, Kamailio
//! `enable_double_rr`), end to end on both I/O drivers: a caller on TCP or
//! TLS (Python, tests/fixtures/rr_follower.py) calls a UDP callee through
//! the real `sipvane` with two workers. The caller follows its route set as
//! RFC 3263 says (the first entry's address, port and transport: sipvane's
//! TCP port with `;transport=tcp`, or its TLS port with `;transport=tls`,
//! never the worker's private UDP port); the callee's BYE, sent over UDP
//! along its route set to a Request-URI nobody can reach, arrives on the
//! caller's connection (the flow token on the caller's entry) with a Via
//! naming the caller's transport; the caller's own BYE over a connection to
//! its route's address completes, and ends the dialog on the worker holding
//! it whichever worker that connection reached.

#[macro_use]
mod support;

use std::path::Path;
use std::process::Command;

use support::tls::CertDir;
use support::{free_tcp_port, free_udp_port, Sipvane};

on_both_drivers!(
    tcp_caller_follows_the_record_route,
    tls_caller_follows_the_record_route,
);

/// Runs the fixture; returns its "KEY value" lines.
fn follower(args: &[String]) -> Vec<(String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rr_follower.py");
    let out = Command::new("timeout")
        .arg("60")
        .arg("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rr_follower failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn find<'a>(lines: &'a [(String, String)], key: &str) -> &'a str {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
}

/// What both transports check: the route, the callee's BYE on the caller's
/// connection with our Via on that transport, the caller's BYE.
fn check(lines: &[(String, String)], transport: &str, port: u16) {
    let via = transport.to_uppercase();
    for call in ["1", "2"] {
        assert_eq!(find(lines, &format!("INVITE{call}")), "200", "{lines:?}");
        assert_eq!(
            find(lines, &format!("NEXT{call}")),
            format!("127.0.0.1:{port} {transport}"),
            "{lines:?}"
        );
        assert_eq!(find(lines, &format!("ACK{call}")), "reached the callee");
    }
    // The caller's route set: its own entry (with the flow token), then the
    // worker's private UDP entry.
    let route = find(lines, "ROUTE1");
    assert!(
        route.starts_with(&format!(
            "<sip:127.0.0.1:{port};transport={transport};lr;sv-flow="
        )),
        "{route}"
    );
    assert_eq!(route.split(' ').count(), 2, "{route}");
    assert!(
        find(lines, "BYE-IN").starts_with("BYE sip:caller@192.0.2.55:5999"),
        "{lines:?}"
    );
    assert!(
        find(lines, "BYE-IN-VIA").starts_with(&format!("SIP/2.0/{via} 127.0.0.1:")),
        "{lines:?}"
    );
    assert_eq!(find(lines, "CALLEE-BYE"), "200");
    assert_eq!(find(lines, "CALLER-BYE"), "200");
    assert_eq!(find(lines, "CALLER-BYE-REACHED"), "callee");
}

fn tcp_caller_follows_the_record_route(io: &str) {
    let callee = free_udp_port();
    let mut sipvane = Sipvane::builder("rr-tcp")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:127.0.0.1:{callee}"))
        .toml("ping_interval_s = 0")
        .start();
    let sip = sipvane.addr().port();
    let lines = follower(&[
        "tcp".into(),
        "127.0.0.1".into(),
        sip.to_string(),
        sip.to_string(),
        callee.to_string(),
    ]);
    check(&lines, "tcp", sip);
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 2);
    // Both dialogs ended on the worker holding them, also when the caller's
    // BYE came over a new connection to another worker.
    assert_eq!(c.get("dialogs_ended"), 2);
}

fn tls_caller_follows_the_record_route(io: &str) {
    let certs = CertDir::new(&format!("rr-{io}"));
    certs.issue("ca", "DNS:sip.test", "server");
    let callee = free_udp_port();
    let tls_port = free_tcp_port();
    let mut sipvane = Sipvane::builder("rr-tls")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:127.0.0.1:{callee}"))
        .toml("ping_interval_s = 0")
        .toml(&format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            certs.path("server.crt"),
            certs.path("server.key")
        ))
        .start();
    let sip = sipvane.addr().port();
    let lines = follower(&[
        "tls".into(),
        "127.0.0.1".into(),
        tls_port.to_string(),
        sip.to_string(),
        callee.to_string(),
        certs.path("ca.crt"),
        "sip.test".into(),
    ]);
    check(&lines, "tls", tls_port);
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 2);
    // Both dialogs ended on the worker holding them, also when the caller's
    // BYE came over a new connection to another worker.
    assert_eq!(c.get("dialogs_ended"), 2);
}
