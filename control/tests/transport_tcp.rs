//! TCP end to end (issue 11): real SIPp callers and callees over TCP and UDP,
//! the real `sipvane` binary in between, on both I/O drivers.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use support::tcp::{open_fds, tcp_connections, wait_for_fds};
use support::{free_tcp_port, free_udp_addr, localhost, metrics, Scenario, Sipvane, Uac, Uas};

/// The sum of a metric over all its label sets.
fn metric_sum(text: &str, name: &str) -> u64 {
    support::tcp::metric_sum(text, name, None)
}

const SETTLE: Duration = Duration::from_secs(5);
const RUN_LIMIT: Duration = Duration::from_secs(60);

on_both_drivers!(
    tcp_callers_reach_tcp_backends,
    udp_caller_reaches_tcp_backend,
    tcp_caller_reaches_udp_backend,
    refused_tcp_connect_fails_over_at_once,
    large_invite_to_udp_backend_goes_over_tcp,
    large_invite_falls_back_to_udp_without_tcp,
);

/// One TCP connection per call from the callers (`-t tn`), pooled per-worker
/// connections to two TCP callees (`-t t1`, `;transport=tcp`); ACK and BYE follow
/// the Record-Route back over TCP.
fn tcp_callers_reach_tcp_backends(io: &str) {
    let mut a = Uas::builder(Scenario::Uas).tcp().start();
    let mut b = Uas::builder(Scenario::Uas).tcp().start();
    let mut sipvane = Sipvane::builder("tcp")
        .io(io)
        .workers(2)
        .algorithm("round-robin")
        .destination(format!("1 sip:{};transport=tcp", a.addr()))
        .destination(format!("1 sip:{};transport=tcp", b.addr()))
        .start();
    let fds = open_fds(sipvane.pid());
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .transport("tn")
        .calls(1000)
        .rate(200)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(1000);

    a.wait_until(SETTLE, |s| s.invites_received() > 0);
    b.wait_until(SETTLE, |s| s.invites_received() > 0);
    let m = metrics(&sipvane);
    let (fa, fb) = (a.stop(), b.stop());
    assert_eq!(fa.invites_received() + fb.invites_received(), 1000);
    for f in [&fa, &fb] {
        assert!(f.invites_received() > 0, "{f:?}");
        assert_eq!(f.count("ACK", "Recv"), f.invites_received(), "{f:?}");
        assert_eq!(f.count("BYE", "Recv"), f.invites_received(), "{f:?}");
        assert_eq!(f.failed, 0, "{f:?}");
    }
    // One connection per call came in; the callees were reached over a few pooled ones.
    assert_eq!(
        metric_sum(&m, "sipvane_worker_tcp_accepted_total"),
        1000,
        "{m}"
    );
    let connected = metric_sum(&m, "sipvane_worker_tcp_connected_total");
    assert!(
        (2..=4).contains(&connected),
        "{connected} outbound connections\n{m}"
    );
    assert_eq!(metric_sum(&m, "sipvane_worker_tcp_refused_total"), 0);
    assert_eq!(metric_sum(&m, "sipvane_worker_tcp_no_connection_total"), 0);
    // The callers' connections ended with their calls, the pooled ones with the
    // callees: every socket is closed again.
    wait_for_fds(sipvane.pid(), fds, SETTLE);
    assert_eq!(tcp_connections(&sipvane), 0);
    let c = sipvane.stop();
    assert_eq!(c.get("initial_invites"), 1000);
    assert_eq!(c.get("calls_answered"), 1000);
    assert_eq!(c.get("dialogs_ended"), 1000);
    assert_eq!(c.get("failovers"), 0);
    assert_eq!(c.get("timeouts"), 0);
    assert_eq!(c.get("parse_errors"), 0);
}

/// A UDP caller (SIPp retransmits on that leg) and a TCP callee: the Via towards
/// the callee says TCP, ACK and BYE reach it over the pooled connection.
fn udp_caller_reaches_tcp_backend(io: &str) {
    let mut a = Uas::builder(Scenario::Uas).tcp().start();
    let mut sipvane = Sipvane::builder("udp2tcp")
        .io(io)
        .destination(format!("1 sip:{};transport=tcp", a.addr()))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(200)
        .rate(100)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(200);
    let fa = a.wait_until(SETTLE, |s| s.count("BYE", "Recv") >= 200);
    let m = metrics(&sipvane);
    assert_eq!(fa.invites_received(), 200, "{fa:?}");
    assert_eq!(fa.count("ACK", "Recv"), 200, "{fa:?}");
    assert_eq!(fa.count("BYE", "Recv"), 200, "{fa:?}");
    assert_eq!(
        metric_sum(&m, "sipvane_worker_tcp_accepted_total"),
        0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "sipvane_worker_tcp_connected_total") >= 1,
        "{m}"
    );
    // The pooled connection stays open (tcp.idle_timeout_s) and shows in /status.
    assert!(tcp_connections(&sipvane) >= 1);
    a.stop();
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 200);
    assert_eq!(c.get("dialogs_ended"), 200);
}

/// A TCP caller on one connection (`-t t1`) and a UDP callee: responses go back
/// over the caller's connection, the callee sees UDP.
fn tcp_caller_reaches_udp_backend(io: &str) {
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("tcp2udp")
        .io(io)
        .destination(format!("1 sip:{}", a.addr()))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .transport("t1")
        .calls(200)
        .rate(100)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(200);
    let fa = a.wait_until(SETTLE, |s| s.count("BYE", "Recv") >= 200);
    let m = metrics(&sipvane);
    assert_eq!(fa.invites_received(), 200, "{fa:?}");
    assert_eq!(fa.count("BYE", "Recv"), 200, "{fa:?}");
    assert_eq!(
        metric_sum(&m, "sipvane_worker_tcp_accepted_total"),
        1,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "sipvane_worker_tcp_connected_total"),
        0,
        "{m}"
    );
    a.stop();
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 200);
    assert_eq!(c.get("dialogs_ended"), 200);
}

/// A TCP destination nobody listens on: the refused connect is reported to the
/// core, which fails the attempt over at once (no fr_timer wait, no timeout).
fn refused_tcp_connect_fails_over_at_once(io: &str) {
    let dead = localhost(free_tcp_port());
    let mut good = Uas::builder(Scenario::Uas).tcp().start();
    let mut sipvane = Sipvane::builder("tcpdead")
        .io(io)
        .workers(1)
        .algorithm("round-robin")
        .destination(format!("1 sip:{dead};transport=tcp"))
        .destination(format!("1 sip:{};transport=tcp", good.addr()))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(20)
        .rate(20)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(20);
    let m = metrics(&sipvane);
    let refused = metric_sum(&m, "sipvane_connect_failures_total");
    assert!(refused >= 1, "{m}");
    good.stop();
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 20);
    assert_eq!(c.get("failovers"), refused);
    assert_eq!(
        c.get("timeouts"),
        0,
        "failover came from the refused connect, not fr_timer"
    );
}

/// RFC 3261 §18.1.1: a UDP caller's INVITE of ~1 800 bytes to a destination
/// listed without `;transport=tcp` reaches it over TCP ([tcp] udp_mtu = 1300):
/// the callee listens on TCP only, so nothing else could reach it. Small
/// in-dialog requests follow the callee's Contact (`transport=tcp`).
fn large_invite_to_udp_backend_goes_over_tcp(io: &str) {
    let mut a = Uas::builder(Scenario::Uas).tcp().start();
    let mut sipvane = Sipvane::builder("mtu2tcp")
        .io(io)
        .destination(format!("1 sip:{}", a.addr()))
        .start();
    let run = Uac::new(Scenario::UacLarge, sipvane.addr())
        .calls(50)
        .rate(50)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(50);
    let fa = a.wait_until(SETTLE, |s| s.count("BYE", "Recv") >= 50);
    assert_eq!(fa.invites_received(), 50, "{fa:?}");
    let m = metrics(&sipvane);
    assert_eq!(metric_sum(&m, "sipvane_udp_mtu_switches_total"), 50, "{m}");
    assert_eq!(metric_sum(&m, "sipvane_udp_mtu_fallbacks_total"), 0, "{m}");
    assert!(
        metric_sum(&m, "sipvane_worker_tcp_connected_total") >= 1,
        "{m}"
    );
    a.stop();
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 50);
    assert_eq!(c.get("failovers"), 0);
}

/// The same INVITE to a UDP-only callee: TCP is refused, so each INVITE goes
/// over UDP after all (no failover, no timeout) and every call completes.
fn large_invite_falls_back_to_udp_without_tcp(io: &str) {
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("mtufallback")
        .io(io)
        .destination(format!("1 sip:{}", a.addr()))
        .start();
    let run = Uac::new(Scenario::UacLarge, sipvane.addr())
        .calls(20)
        .rate(20)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(20);
    let fa = a.wait_until(SETTLE, |s| s.count("BYE", "Recv") >= 20);
    assert_eq!(fa.invites_received(), 20, "{fa:?}");
    let m = metrics(&sipvane);
    assert_eq!(metric_sum(&m, "sipvane_udp_mtu_switches_total"), 20, "{m}");
    assert_eq!(metric_sum(&m, "sipvane_udp_mtu_fallbacks_total"), 20, "{m}");
    a.stop();
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 20);
    assert_eq!(c.get("failovers"), 0);
    assert_eq!(c.get("timeouts"), 0);
}

/// A `;transport=tcp` destination played by a plain TCP listener of the test,
/// answering every OPTIONS it reads with 200 until stopped; counts the probes.
struct TcpResponder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    probes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpResponder {
    fn start(listener: std::net::TcpListener) -> TcpResponder {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, p) = (stop.clone(), probes.clone());
        listener.set_nonblocking(true).expect("nonblocking");
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                let Ok((mut c, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let text = String::from_utf8_lossy(&req).into_owned();
                if !text.starts_with("OPTIONS ") || !text.contains("Via: SIP/2.0/TCP ") {
                    continue;
                }
                p.fetch_add(1, Ordering::Relaxed);
                let mut resp = String::from("SIP/2.0 200 OK\r\n");
                for l in text.lines() {
                    let lower = l.to_ascii_lowercase();
                    if ["via:", "from:", "to:", "call-id:", "cseq:"]
                        .iter()
                        .any(|h| lower.starts_with(h))
                    {
                        resp.push_str(l);
                        resp.push_str("\r\n");
                    }
                }
                resp.push_str("Content-Length: 0\r\n\r\n");
                let _ = c.write_all(resp.as_bytes());
            }
        });
        TcpResponder {
            stop,
            probes,
            thread: Some(thread),
        }
    }

    fn probes(&self) -> usize {
        self.probes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops answering and closes the listener: connections are refused.
    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// OPTIONS probing of a TCP destination goes over TCP; a destination that
/// refuses the connection is taken down by its failed probes and brought back
/// when it answers again.
#[test]
fn tcp_destinations_are_probed_over_tcp() {
    let wait = Duration::from_secs(30);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let uri = format!("sip:{addr};transport=tcp");
    let responder = TcpResponder::start(listener);
    let mut sipvane = Sipvane::builder("tcpprobe")
        .destination(format!("1 {uri}"))
        .toml("ping_interval_s = 1")
        .start();
    let end = Instant::now() + wait;
    while responder.probes() < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(responder.probes() >= 2, "no OPTIONS over TCP arrived");
    responder.stop();
    assert!(
        sipvane.wait_for_log("probe connection failed", 1, wait),
        "refused probes did not take the destination down:\n{}",
        sipvane.log()
    );
    // Answering again (same port): probes bring it back.
    let listener = std::net::TcpListener::bind(addr).expect("rebind the destination's port");
    let responder = TcpResponder::start(listener);
    assert!(
        sipvane.wait_for_log("probe answered 200", 1, wait),
        "answered probes did not bring it back:\n{}",
        sipvane.log()
    );
    responder.stop();
    sipvane.stop();
}
