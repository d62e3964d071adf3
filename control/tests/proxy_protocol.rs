//! PROXY protocol end to end (issue 11): a real HAProxy in `mode tcp` in front of
//! the real `sipvane` binary, SIPp callers over TCP through it, on both I/O drivers.
//!
//! HAProxy connects to sipvane from 127.0.0.2 (`source`), the callers are on
//! 127.0.0.1: the `received`/`rport` sipvane writes into each caller's Via (SIPp
//! asks for `rport`) show which address sipvane took for the caller, and the
//! callee's copy of each INVITE shows them.

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{
    free_tcp_port, free_udp_addr, localhost, metrics, require_binary, wait_for_tcp_listener,
    ChildGuard, Scenario, Sipvane, Uac, Uas, WorkDir,
};

const RUN_LIMIT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(5);

on_both_drivers!(
    haproxy_callers_keep_their_address,
    proxy_header_from_elsewhere_is_refused,
);

/// HAProxy on loopback with three frontends towards `sipvane`: PROXY v2, PROXY
/// v1 (both from 127.0.0.2) and none (from 127.0.0.4).
struct Haproxy {
    _child: ChildGuard,
    _dir: WorkDir,
    v2: std::net::SocketAddr,
    v1: std::net::SocketAddr,
    plain: std::net::SocketAddr,
}

impl Haproxy {
    fn start(sipvane: std::net::SocketAddr) -> Haproxy {
        let bin = require_binary("haproxy", "run scripts/deps.sh (apt-get install haproxy)");
        let dir = WorkDir::new("haproxy", "proxy");
        let (v2, v1, plain) = (
            localhost(free_tcp_port()),
            localhost(free_tcp_port()),
            localhost(free_tcp_port()),
        );
        let cfg = format!(
            "global\n  maxconn 1000\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend v2\n  bind {v2}\n  default_backend v2\n\
             backend v2\n  server s {sipvane} send-proxy-v2 source 127.0.0.2\n\
             frontend v1\n  bind {v1}\n  default_backend v1\n\
             backend v1\n  server s {sipvane} send-proxy source 127.0.0.2\n\
             frontend plain\n  bind {plain}\n  default_backend plain\n\
             backend plain\n  server s {sipvane} source 127.0.0.4\n"
        );
        std::fs::write(dir.file("haproxy.cfg"), cfg).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.file("haproxy.log")).expect("haproxy.log");
        let child = ChildGuard::spawn(
            Command::new(bin)
                .arg("-db")
                .arg("-f")
                .arg(dir.file("haproxy.cfg"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
        )
        .expect("start haproxy");
        for a in [v2, v1, plain] {
            assert!(
                wait_for_tcp_listener(a, SETTLE),
                "haproxy does not listen on {a}: {}",
                dir.read("haproxy.log")
            );
        }
        Haproxy {
            _child: child,
            _dir: dir,
            v2,
            v1,
            plain,
        }
    }
}

/// The callers' Vias (the TCP one of each INVITE) as the callee got them:
/// `(received, rport == sent-by port)`. SIPp's Via asks for `rport`, so sipvane
/// fills both from the address it took for the caller.
fn caller_vias(invites: &[String]) -> Vec<(String, bool)> {
    invites
        .iter()
        .map(|m| {
            let via = m
                .lines()
                .filter(|l| l.to_ascii_lowercase().starts_with("via:"))
                .flat_map(|l| l[4..].split(','))
                .find(|v| v.trim().starts_with("SIP/2.0/TCP"))
                .unwrap_or_else(|| panic!("no caller Via in\n{m}"));
            let mut params = via.split(';').map(str::trim);
            let sent_by = params.next().unwrap_or_default();
            let port = sent_by.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
            let (mut received, mut rport) = (String::new(), String::new());
            for p in params {
                if let Some(v) = p.strip_prefix("received=") {
                    received = v.to_string();
                } else if let Some(v) = p.strip_prefix("rport=") {
                    rport = v.to_string();
                }
            }
            (received, rport == port)
        })
        .collect()
}

/// Connections closed for a refused PROXY header, over all workers.
fn proxy_header_closes(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("sipvane_worker_tcp_closed_total{"))
        .filter(|l| l.contains("reason=\"proxy_header\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// SIPp callers over one TCP connection each (`-t t1`) through HAProxy's PROXY v2
/// and v1 frontends: every call completes and sipvane takes the callers' address
/// (127.0.0.1 and each caller's own port), not HAProxy's (127.0.0.2 and its
/// port). Through the frontend without a PROXY
/// header (from 127.0.0.4, not in `proxy_protocol_from`) HAProxy's address shows,
/// so the check above can tell the two apart.
fn haproxy_callers_keep_their_address(io: &str) {
    let mut uas = Uas::builder(Scenario::Uas).traced().start();
    let mut sipvane = Sipvane::builder("pp")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", uas.addr()))
        .toml("[tcp]\nproxy_protocol_from = [\"127.0.0.2/32\"]")
        .start();
    let ha = Haproxy::start(sipvane.addr());
    for (front, calls) in [(ha.v2, 100), (ha.v1, 20), (ha.plain, 10)] {
        Uac::new(Scenario::Uac, front)
            .transport("t1")
            .calls(calls)
            .rate(100)
            .timeout(RUN_LIMIT)
            .run()
            .assert_all_succeeded(u64::from(calls));
    }
    let st = uas.wait_until(SETTLE, |s| s.count("BYE", "Recv") >= 130);
    assert_eq!(st.invites_received(), 130, "{st:?}");
    let vias = caller_vias(&uas.received("INVITE"));
    assert_eq!(vias.len(), 130);
    let count =
        |r: &str, own_port: bool| vias.iter().filter(|v| v.0 == r && v.1 == own_port).count();
    assert_eq!(count("127.0.0.1", true), 120, "{vias:?}");
    assert_eq!(count("127.0.0.4", false), 10, "{vias:?}");
    let m = metrics(&sipvane);
    assert_eq!(proxy_header_closes(&m), 0, "{m}");
    uas.stop();
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 130);
    assert_eq!(c.get("dialogs_ended"), 130);
}

/// A PROXY header from a source outside `proxy_protocol_from` (a client claiming
/// another address): the connection is closed and counted, nothing reaches the core.
fn proxy_header_from_elsewhere_is_refused(io: &str) {
    let mut sipvane = Sipvane::builder("ppdeny")
        .io(io)
        .workers(1)
        .destination(format!("1 sip:{}", free_udp_addr()))
        .toml("[tcp]\nproxy_protocol_from = [\"127.0.0.2\"]")
        .start();
    for header in [
        &b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 5060\r\n"[..],
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x01\x7f\x00\x00\x01\x13\x88\x13\xc4",
    ] {
        let mut s = TcpStream::connect(sipvane.addr()).expect("connect");
        s.set_read_timeout(Some(SETTLE)).unwrap();
        s.write_all(header).unwrap();
        let _ = s.write_all(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n");
        let mut buf = [0u8; 512];
        // Closed by sipvane: end of stream (or a reset), never an answer, never a timeout.
        match s.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    // Counters are published once per worker turn: wait for them.
    let deadline = std::time::Instant::now() + SETTLE;
    while proxy_header_closes(&metrics(&sipvane)) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = metrics(&sipvane);
    assert_eq!(proxy_header_closes(&m), 2, "{m}");
    let c = sipvane.stop();
    assert_eq!(c.get("parse_errors"), 0);
}
