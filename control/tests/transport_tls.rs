//! TLS end to end (issue 11): Python's `ssl` module (OpenSSL, a TLS stack
//! independent of sipvane's rustls) as the caller over TLS, a SIPp UDP callee,
//! the real `sipvane` binary in between, on both I/O drivers. Certificates are
//! made by `openssl` in the test: a CA, a server certificate it signed for
//! `sip.test`, and a second CA the server certificate does not chain to.
//! The rustls caller is `sipvane-bench tls-uac` (bench/tests/e2e.rs).

#[macro_use]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::tls::CertDir;
use support::{free_tcp_port, metrics, Scenario, Sipvane, Uas};

const SETTLE: Duration = Duration::from_secs(5);

on_both_drivers!(
    python_tls_caller_completes_options_and_a_call,
    client_trusting_another_ca_fails_fast_and_is_counted,
    certificate_reload_keeps_connections,
    sni_chooses_the_certificate,
    client_ca_requires_a_client_certificate,
);

/// The sum over every label set of a metric (`name{...} value` lines).
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `ca.crt` signing `server.crt`/`server.key` (for `sip.test`), and an
/// unrelated `other-ca.crt` (support::tls::CertDir), removed on drop.
struct Certs(CertDir);

impl Certs {
    fn new(tag: &str) -> Certs {
        let certs = Certs(CertDir::new(&format!("in-{tag}")));
        certs.issue("sip.test", "server");
        certs
    }

    /// A certificate for `sip.test` (subject CN `cn`) signed by `ca.crt`, as
    /// `NAME.crt` / `NAME.key`.
    fn issue(&self, cn: &str, name: &str) {
        self.issue_for("sip.test", cn, name);
    }

    /// As `issue`, for DNS name `dns`.
    fn issue_for(&self, dns: &str, cn: &str, name: &str) {
        self.0.issue_named("ca", &format!("DNS:{dns}"), cn, name);
    }

    fn path(&self, f: &str) -> String {
        self.0.path(f)
    }

    /// The `[tls]` section for a listener on `port`.
    fn toml(&self, port: u16) -> String {
        format!(
            "[tls]\nlisten = \"127.0.0.1:{port}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            self.path("server.crt"),
            self.path("server.key")
        )
    }
}

/// Runs the Python TLS client; returns its output lines.
fn python_client(tls_port: u16, ca: &str, mode: &str, sip_port: u16) -> Vec<String> {
    python_client_named(tls_port, ca, "sip.test", mode, sip_port)
}

/// As `python_client`, asking for (and verifying) server name `name`.
fn python_client_named(
    tls_port: u16,
    ca: &str,
    name: &str,
    mode: &str,
    sip_port: u16,
) -> Vec<String> {
    python_client_with(tls_port, ca, name, mode, sip_port, None)
}

/// As `python_client_named`, presenting client certificate `identity`
/// (certificate, key files).
fn python_client_with(
    tls_port: u16,
    ca: &str,
    name: &str,
    mode: &str,
    sip_port: u16,
    identity: Option<(&str, &str)>,
) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls_sip_client.py");
    let out = Command::new("timeout")
        .arg("30")
        .arg("python3")
        .arg(script)
        .args(["127.0.0.1", &tls_port.to_string(), ca, name, mode])
        .arg(sip_port.to_string())
        .args(identity.iter().flat_map(|(c, k)| [c, k]))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// OPTIONS, then INVITE → 200 → ACK → BYE → 200 along the Record-Route, all over
/// the one TLS connection, to a SIPp callee over UDP.
fn python_tls_caller_completes_options_and_a_call(io: &str) {
    let certs = Certs::new(&format!("call-{io}"));
    let mut uas = Uas::builder(Scenario::Uas).start();
    let tls_port = free_tcp_port();
    let mut sipvane = Sipvane::builder("tls")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", uas.addr()))
        .toml(&certs.toml(tls_port))
        .start();
    let lines = python_client(
        tls_port,
        &certs.path("ca.crt"),
        "call",
        sipvane.addr().port(),
    );
    let find = |step: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{step} ")))
            .unwrap_or_else(|| panic!("no {step} in {lines:?}"))
            .to_owned()
    };
    assert_eq!(find("OPTIONS"), "200", "{lines:?}");
    assert_eq!(find("INVITE"), "200", "{lines:?}");
    assert!(!find("RECORD-ROUTE").is_empty(), "{lines:?}");
    assert_eq!(find("BYE"), "200", "{lines:?}");
    uas.wait_until(SETTLE, |s| s.count("BYE", "Recv") > 0);
    let m = metrics(&sipvane);
    let f = uas.stop();
    assert_eq!(f.invites_received(), 1, "{f:?}");
    assert_eq!(f.count("ACK", "Recv"), 1, "{f:?}");
    assert_eq!(f.count("BYE", "Recv"), 1, "{f:?}");
    assert_eq!(
        metric_sum(&m, "sipvane_worker_tls_accepted_total"),
        1,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "sipvane_tls_handshake_failures_total"),
        0,
        "{m}"
    );
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 1);
    assert_eq!(c.get("dialogs_ended"), 1);
}

/// A client verifying against a CA that did not sign the server certificate
/// gets a clear verification error at once (no hang), and sipvane counts a
/// failed handshake.
fn client_trusting_another_ca_fails_fast_and_is_counted(io: &str) {
    let certs = Certs::new(&format!("other-{io}"));
    let tls_port = free_tcp_port();
    let uas = free_tcp_port();
    let sipvane = Sipvane::builder("tls-bad-ca")
        .io(io)
        .destination(format!("1 sip:127.0.0.1:{uas}"))
        .toml(&certs.toml(tls_port))
        .start();
    let started = Instant::now();
    let lines = python_client(
        tls_port,
        &certs.path("other-ca.crt"),
        "options",
        sipvane.addr().port(),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let line = lines.join("\n");
    assert!(line.starts_with("HANDSHAKE-ERROR"), "{line}");
    assert!(line.contains("CERTIFICATE_VERIFY_FAILED"), "{line}");
    // The client's alert reaches sipvane asynchronously.
    let deadline = Instant::now() + SETTLE;
    loop {
        let m = metrics(&sipvane);
        if metric_sum(&m, "sipvane_tls_handshake_failures_total") == 1 {
            assert!(m.contains("reason=\"tls\""), "{m}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "handshake failure not counted\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGHUP and `ctl reload` re-read the certificate files: a connection opened
/// after the reload sees the new certificate, one opened before still works.
fn certificate_reload_keeps_connections(io: &str) {
    use std::io::{BufRead, BufReader, Write};
    let certs = Certs::new(&format!("reload-{io}"));
    let tls_port = free_tcp_port();
    let mut sipvane = Sipvane::builder("tls-reload")
        .io(io)
        .destination(format!("1 sip:127.0.0.1:{}", free_tcp_port()))
        .toml(&certs.toml(tls_port))
        .start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls_reload_client.py");
    let mut child = Command::new("timeout")
        .arg("30")
        .arg("python3")
        .arg(script)
        .args(["127.0.0.1", &tls_port.to_string(), &certs.path("ca.crt")])
        .arg("sip.test")
        .arg(sipvane.addr().port().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().expect("client output").expect("client output");
    assert_eq!(next(), "OLD sip.test");
    assert_eq!(next(), "OPTIONS1 200");
    // The files are replaced in place (as certbot or an operator does), then SIGHUP.
    certs.issue("sip.test renewed", "server");
    sipvane.signal(libc::SIGHUP);
    assert!(
        sipvane.wait_for_log("TLS certificate reloaded", 1, SETTLE),
        "{}",
        sipvane.log()
    );
    writeln!(child.stdin.as_mut().expect("stdin")).expect("write stdin");
    assert_eq!(next(), "NEW sip.test renewed");
    assert_eq!(next(), "OPTIONS1 200");
    assert_eq!(next(), "OPTIONS2 200");
    assert!(child.wait().expect("client exit").success());
    // A reload that cannot read the files keeps the certificate in service.
    std::fs::write(certs.path("server.key"), "not a key\n").expect("write");
    sipvane.signal(libc::SIGHUP);
    assert!(
        sipvane.wait_for_log("TLS certificate not reloaded", 1, SETTLE),
        "{}",
        sipvane.log()
    );
    let lines = python_client(
        tls_port,
        &certs.path("ca.crt"),
        "options",
        sipvane.addr().port(),
    );
    assert_eq!(lines, ["OPTIONS 200"]);
}

/// `[[tls.sni]]`: a client asking for `pbx.test` gets that certificate, one
/// asking for `sip.test` (or anything else) the default one.
fn sni_chooses_the_certificate(io: &str) {
    let certs = Certs::new(&format!("sni-{io}"));
    certs.issue_for("pbx.test", "pbx.test", "pbx");
    let tls_port = free_tcp_port();
    let sipvane = Sipvane::builder("tls-sni")
        .io(io)
        .destination(format!("1 sip:127.0.0.1:{}", free_tcp_port()))
        .toml(&format!(
            "{}\n[[tls.sni]]\nnames = [\"PBX.test\"]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            certs.toml(tls_port),
            certs.path("pbx.crt"),
            certs.path("pbx.key")
        ))
        .start();
    let ca = certs.path("ca.crt");
    let sip_port = sipvane.addr().port();
    for name in ["pbx.test", "sip.test"] {
        let lines = python_client_named(tls_port, &ca, name, "options", sip_port);
        assert_eq!(lines, ["OPTIONS 200"], "{name}");
    }
    // An unknown name gets the default certificate, which is not for it.
    let lines = python_client_named(tls_port, &ca, "other.test", "options", sip_port);
    assert!(lines.join(" ").contains("HANDSHAKE-ERROR"), "{lines:?}");
}

/// `[tls] client_ca` (mutual TLS): a client presenting a certificate that CA
/// signed completes OPTIONS; one without a certificate, or with one another CA
/// signed, fails the handshake, counted and logged with its address. The
/// bundle is re-read on SIGHUP with the certificates.
fn client_ca_requires_a_client_certificate(io: &str) {
    let certs = Certs::new(&format!("mutual-{io}"));
    // `trunk` from the client CA, `stranger` from the server's CA.
    certs
        .0
        .issue_named("other-ca", "DNS:trunk.test", "trunk", "trunk");
    certs.issue("stranger", "stranger");
    let client_ca = certs.path("client-ca.crt");
    std::fs::copy(certs.path("other-ca.crt"), &client_ca).expect("copy");
    let tls_port = free_tcp_port();
    let mut sipvane = Sipvane::builder("tls-mutual")
        .io(io)
        .destination(format!("1 sip:127.0.0.1:{}", free_tcp_port()))
        .toml(&format!(
            "{}client_ca = \"{client_ca}\"\n",
            certs.toml(tls_port)
        ))
        .start();
    let ca = certs.path("ca.crt");
    let sip_port = sipvane.addr().port();
    let (trunk, stranger) = (
        (certs.path("trunk.crt"), certs.path("trunk.key")),
        (certs.path("stranger.crt"), certs.path("stranger.key")),
    );
    let client = |id: Option<&(String, String)>| {
        let id = id.map(|(c, k)| (c.as_str(), k.as_str()));
        python_client_with(tls_port, &ca, "sip.test", "options", sip_port, id).join("\n")
    };
    assert_eq!(client(Some(&trunk)), "OPTIONS 200");
    for id in [None, Some(&stranger)] {
        let out = client(id);
        assert!(out.starts_with("HANDSHAKE-ERROR"), "{id:?}: {out}");
    }
    let deadline = Instant::now() + SETTLE;
    loop {
        let m = metrics(&sipvane);
        if metric_sum(&m, "sipvane_tls_client_cert_failures_total") == 2 {
            assert_eq!(
                metric_sum(&m, "sipvane_tls_handshake_failures_total"),
                2,
                "{m}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not counted\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = sipvane.log();
    assert!(
        log.lines()
            .any(|l| l.contains("TLS client refused") && l.contains("127.0.0.1:")),
        "{log}"
    );
    // The operator now trusts the server's CA for clients instead: reloaded
    // on SIGHUP with the certificates.
    std::fs::copy(certs.path("ca.crt"), &client_ca).expect("copy");
    sipvane.signal(libc::SIGHUP);
    assert!(
        sipvane.wait_for_log("TLS certificate reloaded", 1, SETTLE),
        "{}",
        sipvane.log()
    );
    assert_eq!(client(Some(&stranger)), "OPTIONS 200");
    assert!(client(Some(&trunk)).starts_with("HANDSHAKE-ERROR"));
}
