//! Phones registered over TCP or TLS are called on their connection (issues
//! 11 and 13), end to end on both I/O drivers (PostgreSQL with Kamailio's
//! schema, SIPp, two workers): a Python phone (tests/fixtures/stream_phone.py)
//! registers over one TCP (TLS) connection with digest authentication and a
//! Contact naming a private address (as behind a NAT); SIPp callers on UDP
//! call it. Every INVITE arrives on the phone's connection with a
//! `SIP/2.0/TCP` (`TLS`) Via whichever worker the caller reached (the one
//! holding the connection gets it handed over), the caller's ACK and BYE
//! reach it there, and so does the phone's own BYE to a caller. The
//! `location` row's `received` says `;transport=tcp` (`tls`), no OPTIONS
//! keep-alive is sent to it (its CRLF keep-alive is answered instead).

#[path = "support/db.rs"]
mod db_support;
#[macro_use]
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use db_support::{runtime, KamailioDb};
use support::process::ChildGuard;
use support::tls::CertDir;
use support::{free_tcp_port, free_udp_addr, metric, metrics, Scenario, Sipvane, Uac, Uas};

on_both_drivers!(
    tcp_phone_is_called_on_its_connection,
    tls_phone_is_called_on_its_connection
);

/// Calls the phone answers (the callers hang up) before the one it hangs up.
const ANSWER: usize = 4;

/// The phone script, its output lines as they come.
struct Phone {
    lines: Arc<Mutex<Vec<String>>>,
    _child: ChildGuard,
}

impl Phone {
    fn start(args: &[String]) -> Phone {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stream_phone.py");
        let mut child = ChildGuard::spawn(
            Command::new("timeout")
                .arg("90")
                .arg("python3")
                .arg(script)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .expect("run python3");
        let stdout = child.stdout().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Phone {
            lines,
            _child: child,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Waits (at most `timeout`) for a line starting with `prefix`.
    fn wait_for(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().iter().find(|l| l.starts_with(prefix)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "phone: no {prefix} in {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn all(&self, prefix: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix(prefix).map(str::to_owned))
            .collect()
    }
}

fn tcp_phone_is_called_on_its_connection(io: &str) {
    phone_is_called_on_its_connection(io, "tcp");
}

fn tls_phone_is_called_on_its_connection(io: &str) {
    phone_is_called_on_its_connection(io, "tls");
}

fn phone_is_called_on_its_connection(io: &str, transport: &str) {
    support::require_sipp();
    let rt = runtime();
    let db = KamailioDb::pg_with_one_user(&rt);
    let pbx = Uas::builder(Scenario::Uas).addr(free_udp_addr()).start();
    let certs = CertDir::new(&format!("stream-{transport}-{io}"));
    certs.issue("ca", "DNS:sip.test", "server");
    let tls_port = free_tcp_port();
    let tls = if transport == "tls" {
        format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            certs.path("server.crt"),
            certs.path("server.key")
        )
    } else {
        String::new()
    };
    let mut sipvane = Sipvane::builder("registrar-stream")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", pbx.addr()))
        .toml(&format!(
            "ping_interval_s = 0\n\
             [registrar]\ndomain = \"example.com\"\ndb_url = \"{}\"\nprefixes = [\"6\"]\n\
             write_back_ms = 200\nauthenticate_calls = false\nnat_ping_interval_s = 1\n\
             {tls}",
            db.url()
        ))
        .start();
    let port = match transport {
        "tls" => tls_port,
        _ => sipvane.addr().port(),
    };
    let mut args: Vec<String> = [
        transport,
        "127.0.0.1",
        &port.to_string(),
        "example.com",
        "6001",
        "pw-6001",
        &ANSWER.to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    if transport == "tls" {
        args.push(certs.path("ca.crt"));
        args.push("sip.test".into());
    }
    let phone = Phone::start(&args);
    assert_eq!(
        phone.wait_for("REGISTER1 ", Duration::from_secs(10)),
        "REGISTER1 401"
    );
    assert_eq!(
        phone.wait_for("REGISTER2 ", Duration::from_secs(10)),
        "REGISTER2 200"
    );
    assert_eq!(phone.wait_for("PONG ", Duration::from_secs(5)), "PONG yes");
    // The row: received is the connection's peer, with its transport.
    let deadline = Instant::now() + Duration::from_secs(10);
    let received = loop {
        let sql = "SELECT CAST(COALESCE(received, '') AS TEXT) FROM location";
        let rows = rt.block_on(db.query(sql, 1));
        if let Some(r) = rows.first() {
            break r[0].clone();
        }
        assert!(Instant::now() < deadline, "no location row");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        received.starts_with("sip:127.0.0.1:")
            && received.ends_with(&format!(";transport={transport}")),
        "{received}"
    );

    // SIPp callers on UDP, one call after another: whichever worker a
    // call reaches, it arrives on the phone's connection.
    Uac::new(Scenario::Uac, sipvane.addr())
        .service("6001")
        .calls(ANSWER as u32)
        .timeout(Duration::from_secs(30))
        .run()
        .assert_all_succeeded(ANSWER as u64);
    // The last call: the phone hangs up over its connection.
    Uac::new(Scenario::UacWaitBye, sipvane.addr())
        .service("6001")
        .timeout(Duration::from_secs(20))
        .run()
        .assert_all_succeeded(1);
    assert_eq!(
        phone.wait_for("BYE-OUT ", Duration::from_secs(5)),
        "BYE-OUT 200"
    );
    phone.wait_for("DONE ", Duration::from_secs(5));
    let vias = phone.all("INVITE-VIA ");
    assert_eq!(vias.len(), ANSWER + 1, "{:?}", phone.lines());
    let via = format!("SIP/2.0/{} 127.0.0.1:", transport.to_uppercase());
    assert!(vias.iter().all(|v| v.starts_with(&via)), "{vias:?}");
    assert_eq!(phone.all("ACK ").len(), ANSWER + 1);
    assert_eq!(phone.all("BYE-IN ").len(), ANSWER, "{:?}", phone.lines());
    assert!(
        phone.all("OPTIONS ").is_empty(),
        "pinged: {:?}",
        phone.lines()
    );
    let m = metrics(&sipvane);
    assert_eq!(metric(&m, "sipvane_registrar_nat_pings_total"), 0, "{m}");
    assert_eq!(pbx.stats().invites_received(), 0, "a call went to the PBX");
    sipvane.stop();
}
