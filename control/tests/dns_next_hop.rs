//! Next hops named by host names, end to end: the real `sipvane`, a private
//! dnsmasq, and test sockets as caller and backend. A backend whose Contact
//! is a name (`sip:100@pbx1.sipvane.test:PORT`, or by SRV without a port)
//! gets the call's ACK and BYE; a name that does not exist gets 478; a name
//! whose DNS server never answers holds up nothing but its own request.
//!
//! Between sipvane and dnsmasq sits a small UDP relay of the test's own
//! that never answers questions about `slow.sipvane.test` (dnsmasq cannot
//! delay an answer).

#[macro_use]
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{assert_loopback, Dnsmasq, Record, Sipvane};

fn bind() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
    assert_loopback(s.local_addr().unwrap());
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// The first message `sock` receives within `limit` that `pred` accepts.
fn recv_until(sock: &UdpSocket, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
    let end = Instant::now() + limit;
    let mut buf = [0u8; 65536];
    while Instant::now() < end {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if pred(&m) {
                return Some(m);
            }
        }
    }
    None
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .collect()
}

/// A response to `req` with `extra` headers (Via, From, To, Call-ID, CSeq
/// and Record-Route copied; `to_tag` added when the To has none).
fn reply(req: &str, code: u16, to_tag: &str, extra: &str) -> String {
    let mut m = format!("SIP/2.0 {code} X\r\n");
    for name in ["Via", "From", "Call-ID", "CSeq", "Record-Route"] {
        for l in header(req, name) {
            m.push_str(l);
            m.push_str("\r\n");
        }
    }
    for l in header(req, "To") {
        m.push_str(l);
        if !l.contains(";tag=") {
            m.push_str(&format!(";tag={to_tag}"));
        }
        m.push_str("\r\n");
    }
    m.push_str(extra);
    m.push_str("Content-Length: 0\r\n\r\n");
    m
}

fn status(msg: &str) -> u16 {
    msg.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// An in-dialog request of call `call` from `me`, through `route` to `ruri`.
fn in_dialog(
    method: &str,
    ruri: &str,
    route: &str,
    me: SocketAddr,
    call: &str,
    cseq: u32,
) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call}-{cseq};rport\r\n\
         Route: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:a@{me}>;tag=caller\r\n\
         To: <sip:100@127.0.0.1>;tag=pbx\r\nCall-ID: {call}@test\r\nCSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A UDP relay in front of dnsmasq that drops every question naming
/// `slow.sipvane.test`; stops when dropped.
struct SlowDns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowDns {
    fn start(upstream: SocketAddr) -> SlowDns {
        let sock = bind();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let up = bind();
            let mut buf = [0u8; 4096];
            // One question at a time: id → who asked.
            let mut asked: std::collections::HashMap<[u8; 2], SocketAddr> = Default::default();
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let q = &buf[..n];
                    if n > 12 && !q.windows(5).any(|w| w == b"\x04slow") {
                        asked.insert([q[0], q[1]], from);
                        let _ = up.send_to(q, upstream);
                    }
                }
                up.set_nonblocking(true).unwrap();
                while let Ok((n, _)) = up.recv_from(&mut buf) {
                    if n < 2 {
                        continue;
                    }
                    if let Some(to) = asked.remove(&[buf[0], buf[1]]) {
                        let _ = sock.send_to(&buf[..n], to);
                    }
                }
                up.set_nonblocking(false).unwrap();
            }
        });
        SlowDns {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SlowDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers what reaches the backend (`pbx`) until `stop`: 200 to everything
/// but ACK. Returns the requests it saw.
fn backend(pbx: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = pbx.recv_from(&mut buf) else {
                continue;
            };
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.starts_with("SIP/2.0") || m.starts_with("ACK ") {
                seen.push(m);
                continue;
            }
            let _ = pbx.send_to(reply(&m, 200, "pbx", "").as_bytes(), from);
            seen.push(m);
        }
        seen
    })
}

fn calls_reach_backends_named_by_dns(io: &str) {
    let pbx = bind();
    let pbx_addr = pbx.local_addr().unwrap();
    let caller = bind();
    let me = caller.local_addr().unwrap();
    let dns = Dnsmasq::start(
        60,
        &[
            Record::A("pbx1.sipvane.test".into(), "127.0.0.1".into(), 60),
            Record::Srv(
                "_sip._udp.pbx2.sipvane.test".into(),
                "pbx1.sipvane.test".into(),
                pbx_addr.port(),
                0,
                10,
            ),
        ],
    );
    let slow = SlowDns::start(dns.addr());
    let mut sv = Sipvane::builder("dns-next-hop")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{pbx_addr}"))
        .toml(&format!(
            "ping_interval_s = 0\n[dns]\nservers = [\"{}\"]\ntimeout_ms = 5000\nmax_wait_ms = 2500\nnegative_ttl_s = 5",
            slow.addr
        ))
        .start();

    // A call whose backend names itself `sip:100@pbx1.sipvane.test:PORT`.
    let contact = format!("sip:100@pbx1.sipvane.test:{}", pbx_addr.port());
    let invite = format!(
        "INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-inv1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@{me}>;tag=caller\r\nTo: <sip:100@127.0.0.1>\r\n\
         Call-ID: call1@test\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{me}>\r\nContent-Length: 0\r\n\r\n"
    );
    caller.send_to(invite.as_bytes(), sv.addr()).unwrap();
    let at_pbx = recv_until(&pbx, Duration::from_secs(5), |m| m.starts_with("INVITE "))
        .expect("the INVITE reached the backend");
    let ok = reply(&at_pbx, 200, "pbx", &format!("Contact: <{contact}>\r\n"));
    pbx.send_to(ok.as_bytes(), sv.private_addr(0)).unwrap();
    let ok = recv_until(&caller, Duration::from_secs(5), |m| status(m) == 200)
        .expect("the 200 reached the caller");
    let rr = header(&ok, "Record-Route")
        .first()
        .expect("sipvane record-routes")
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .to_owned();

    // The ACK (stateless) and the BYE go to the Contact's name.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = backend(pbx, stop.clone());
    let ack = in_dialog("ACK", &contact, &rr, me, "call1", 1);
    caller.send_to(ack.as_bytes(), sv.addr()).unwrap();
    let bye = in_dialog("BYE", &contact, &rr, me, "call1", 2);
    caller.send_to(bye.as_bytes(), sv.addr()).unwrap();
    let bye_ok = recv_until(&caller, Duration::from_secs(5), |m| {
        m.contains("CSeq: 2 BYE")
    });
    assert_eq!(bye_ok.as_deref().map(status), Some(200), "{}", sv.log());

    // SRV (no port): `sip:100@pbx2.sipvane.test` reaches the same backend.
    let info = in_dialog("INFO", "sip:100@pbx2.sipvane.test", &rr, me, "call1", 3);
    caller.send_to(info.as_bytes(), sv.addr()).unwrap();
    let info_ok = recv_until(&caller, Duration::from_secs(5), |m| {
        m.contains("CSeq: 3 INFO")
    });
    assert_eq!(info_ok.as_deref().map(status), Some(200));

    // A name that does not exist: 478, nothing sent anywhere.
    let gone = in_dialog("INFO", "sip:100@gone.sipvane.test", &rr, me, "call1", 4);
    caller.send_to(gone.as_bytes(), sv.addr()).unwrap();
    let gone = recv_until(&caller, Duration::from_secs(5), |m| {
        m.contains("CSeq: 4 INFO")
    });
    assert_eq!(gone.as_deref().map(status), Some(478));

    // A name whose server never answers: its request waits, every other
    // request passes meanwhile, and it gets 503 after max_wait_ms.
    let slow_req = in_dialog(
        "INFO",
        "sip:100@slow.sipvane.test:5999",
        &rr,
        me,
        "call1",
        5,
    );
    caller.send_to(slow_req.as_bytes(), sv.addr()).unwrap();
    let started = Instant::now();
    for n in 0..10 {
        let call = format!("other{n}");
        let m = in_dialog("BYE", &contact, &rr, me, &call, 2);
        caller.send_to(m.as_bytes(), sv.addr()).unwrap();
        let got = recv_until(&caller, Duration::from_secs(2), |m| {
            m.contains(&format!("Call-ID: {call}@test"))
        });
        assert_eq!(got.as_deref().map(status), Some(200), "call {n}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the other calls were answered while the slow name was still parked"
    );
    let slow_answer = recv_until(&caller, Duration::from_secs(6), |m| {
        m.contains("CSeq: 5 INFO")
    });
    assert_eq!(slow_answer.as_deref().map(status), Some(503));

    stop.store(true, Ordering::Relaxed);
    let seen = seen.join().unwrap();
    // What reached the backend: the ACK, the BYEs and the SRV INFO; never
    // the requests for names that did not resolve.
    assert!(seen
        .iter()
        .any(|m| m.starts_with(&format!("ACK {contact} "))));
    assert_eq!(seen.iter().filter(|m| m.starts_with("BYE ")).count(), 11);
    assert!(seen
        .iter()
        .any(|m| m.starts_with("INFO sip:100@pbx2.sipvane.test ")));
    assert!(!seen
        .iter()
        .any(|m| m.contains("gone.sipvane") || m.contains("slow.sipvane")));
    let c = sv.stop();
    assert!(c.get("dns_parked") >= 3, "{:?}", c.0);
    assert_eq!(c.get("dns_unresolvable"), 1);
    assert_eq!(c.get("dns_timeouts"), 1);
    // Within the TTL, a name seen before is not asked again: the 10 BYEs
    // all used the worker's cache (at most one park per worker and name).
    assert!(c.get("dns_resumed") <= 6, "{:?}", c.0);
}

on_both_drivers!(calls_reach_backends_named_by_dns);
