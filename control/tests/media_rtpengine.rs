//! Media anchoring end to end: SIPp caller → sipvane → SIPp callee, with a
//! real RTPEngine (userspace, private, loopback) anchoring the media. What
//! each side received is read back from SIPp's message logs; the engine is
//! asked over ng (`list`, `query`) what sessions it holds.

#[macro_use]
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dataplane::rtpengine::ng::{write_request, Reply, Request};
use support::{
    free_udp_port, received_messages, Scenario, Service, ServiceKind, Sipvane, Uac, Uas,
};

const RUN_LIMIT: Duration = Duration::from_secs(40);

/// SIPp with its message log (`msg.log` in its work dir).
fn traced_uas() -> Uas {
    Uas::builder(Scenario::Uas).traced().start()
}

fn traced_uac(target: SocketAddr) -> Uac {
    Uac::new(Scenario::Uac, target)
        .arg("-trace_msg")
        .arg("-message_file")
        .arg("msg.log")
        .timeout(RUN_LIMIT)
}

/// (c= address, m=audio port) of a message's SDP.
fn media_of(msg: &str) -> (String, u16) {
    let line = |p: &str| {
        msg.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .unwrap_or_else(|| panic!("no {p} line in:\n{msg}"))
            .to_string()
    };
    let c = line("c=IN IP4 ");
    let m = line("m=audio ");
    let port = m
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad m= line {m:?}"));
    (c, port)
}

/// One ng request to the engine and its reply (bounded wait).
fn ng(engine: SocketAddr, req: &Request<'_>) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    // RTPEngine answers a repeated cookie from its reply cache: never reuse one.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cookie = format!("test_{}_{seq}", std::process::id());
    let mut out = Vec::new();
    write_request(cookie.as_bytes(), req, &mut out).ok()?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..4 {
        sock.send_to(&out, engine).ok()?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// Call-IDs the engine holds.
fn engine_calls(engine: SocketAddr) -> Vec<String> {
    let reply = ng(engine, &Request::list(None)).expect("rtpengine answers list");
    let r = Reply::parse(&reply).expect("list reply");
    r.calls()
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_bytes())
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `query` finds the call.
fn engine_knows(engine: SocketAddr, call_id: &str) -> bool {
    let reply = ng(engine, &Request::query(call_id.as_bytes())).expect("rtpengine answers query");
    Reply::parse(&reply).is_ok_and(|r| r.is_success())
}

fn engine_addr(svc: &Service) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], svc.port()))
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// A live engine answers in well under a millisecond, but the suite runs
/// many tests at once on a small machine: 1 s (and one retransmission)
/// keeps a live engine from being mistaken for a dead one.
fn rtp_toml(engines: &[String], extra: &str) -> String {
    let list: Vec<String> = engines.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[rtpengine]\nengines = [{}]\ntimeout_ms = 1000\nretries = 1\n{extra}\n",
        list.join(", ")
    )
}

on_both_drivers!(call_media_is_anchored_and_released);

/// One call: the callee sees the engine's address in the INVITE, the caller
/// sees it in the 200; the engine holds the session during the call and
/// forgets it after the BYE.
fn call_media_is_anchored_and_released(io: &str) {
    let engine = Service::start(ServiceKind::Rtpengine);
    let (pmin, pmax) = engine.media_ports().expect("media ports");
    let uas = traced_uas();
    let mut sipvane = Sipvane::builder(&format!("media-{io}"))
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", uas.addr()))
        .toml("ping_interval_s = 0")
        .toml(&rtp_toml(
            &[engine.url().to_string()],
            "ping_interval_s = 1",
        ))
        .start();
    let ng_addr = engine_addr(&engine);
    assert!(engine_calls(ng_addr).is_empty());

    // Hold the call 3 s so the session can be inspected mid-call.
    let uac = traced_uac(sipvane.addr())
        .hold(Duration::from_secs(3))
        .spawn();
    let mut call_id = String::new();
    let found = wait_until(Duration::from_secs(10), || {
        if let Some(c) = engine_calls(ng_addr).into_iter().next() {
            call_id = c;
            true
        } else {
            false
        }
    });
    assert!(
        found,
        "rtpengine never saw the call; sipvane log:\n{}",
        sipvane.log()
    );
    assert!(engine_knows(ng_addr, &call_id), "query finds {call_id}");
    let run = uac.wait();
    run.assert_all_succeeded(1);

    // What the callee got: the engine's address and a port of its range.
    let invites = uas.received("INVITE ");
    assert!(!invites.is_empty(), "the UAS logged no INVITE");
    let (c, port) = media_of(&invites[0]);
    assert_eq!(c, "127.0.0.1", "{}", invites[0]);
    assert!(
        (pmin..=pmax).contains(&port),
        "INVITE m= port {port} not in {pmin}..={pmax}:\n{}",
        invites[0]
    );
    assert!(invites[0].contains(&call_id));

    // What the caller got in the 200: the engine again, another port.
    let oks = received_messages(run.log_dir(), "SIP/2.0 200");
    let ok = oks
        .iter()
        .find(|m| m.contains("CSeq: 1 INVITE"))
        .unwrap_or_else(|| panic!("no 200 to INVITE in the UAC log: {oks:?}"));
    let (c2, port2) = media_of(ok);
    assert_eq!(c2, "127.0.0.1", "{ok}");
    assert!(
        (pmin..=pmax).contains(&port2),
        "200 m= port {port2} not in range:\n{ok}"
    );
    assert_ne!(port, port2);

    // The BYE deleted the session.
    let gone = wait_until(Duration::from_secs(5), || !engine_knows(ng_addr, &call_id));
    assert!(gone, "rtpengine still holds {call_id} after the BYE");

    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), 1);
    assert_eq!(c.get("rtpengine0_offers"), 1);
    assert_eq!(c.get("rtpengine0_answers"), 1);
    assert_eq!(c.get("rtpengine0_deletes"), 1);
    assert_eq!(c.get("rtpengine0_timeouts"), 0);
    assert_eq!(c.get("rtpengine_rejected"), 0);
}

/// The engine dies mid-test: with `reject` the next calls get 503 quickly
/// and nothing hangs.
#[test]
fn dead_engine_with_reject_fails_calls_with_503() {
    let engine = Service::start(ServiceKind::Rtpengine);
    let uas = Uas::start(Scenario::Uas, support::free_udp_addr());
    let mut sipvane = Sipvane::builder("media-reject")
        .destination(format!("1 sip:{}", uas.addr()))
        .toml("ping_interval_s = 0")
        .toml(&rtp_toml(
            &[engine.url().to_string()],
            "on_failure = \"reject\"\nping_interval_s = 1",
        ))
        .start();
    traced_uac(sipvane.addr())
        .calls(5)
        .rate(10)
        .run()
        .assert_all_succeeded(5);

    drop(engine); // stops rtpengine
    let started = Instant::now();
    let run = traced_uac(sipvane.addr()).calls(5).rate(10).run();
    assert!(started.elapsed() < RUN_LIMIT, "bounded");
    assert!(!run.timed_out, "{}", run.errors());
    assert_eq!(run.stats.successful, 0, "{:?}", run.stats);
    assert_eq!(run.stats.failed, 5, "{:?}", run.stats);
    let finals = received_messages(run.log_dir(), "SIP/2.0 503");
    assert_eq!(finals.len(), 5, "{finals:?}");
    assert!(
        finals[0].contains("Media relay unavailable"),
        "{}",
        finals[0]
    );
    assert_eq!(
        uas.stats().invites_received(),
        5,
        "no INVITE reached the callee un-anchored"
    );

    let c = sipvane.stop();
    assert_eq!(c.get("rtpengine_rejected"), 5);
    assert_eq!(c.get("rtpengine0_offers"), 5);
}

/// The engine dies: with `passthrough` calls go on with their own SDP.
#[test]
fn dead_engine_with_passthrough_relays_calls_unanchored() {
    let engine = Service::start(ServiceKind::Rtpengine);
    let (pmin, pmax) = engine.media_ports().expect("media ports");
    let uas = traced_uas();
    let mut sipvane = Sipvane::builder("media-pass")
        .destination(format!("1 sip:{}", uas.addr()))
        .toml("ping_interval_s = 0")
        .toml(&rtp_toml(
            &[engine.url().to_string()],
            "on_failure = \"passthrough\"\nping_interval_s = 1",
        ))
        .start();
    drop(engine);
    let run = traced_uac(sipvane.addr()).calls(5).rate(10).run();
    run.assert_all_succeeded(5);
    for inv in uas.received("INVITE ") {
        let (_, port) = media_of(&inv);
        assert!(!(pmin..=pmax).contains(&port), "not anchored: {inv}");
    }
    let c = sipvane.stop();
    assert_eq!(c.get("rtpengine_passthrough"), 5);
    assert_eq!(c.get("rtpengine0_offers"), 0);
}

/// Two engines, one never started: every call lands on the live one.
#[test]
fn calls_go_to_the_live_engine() {
    let live = Service::start(ServiceKind::Rtpengine);
    let (pmin, pmax) = live.media_ports().expect("media ports");
    let dead = format!("udp:127.0.0.1:{}", free_udp_port());
    let uas = traced_uas();
    let mut sipvane = Sipvane::builder("media-two")
        .workers(2)
        .destination(format!("1 sip:{}", uas.addr()))
        .toml("ping_interval_s = 0")
        .toml(&rtp_toml(
            &[dead, live.url().to_string()],
            "ping_interval_s = 1",
        ))
        .start();
    let run = traced_uac(sipvane.addr()).calls(20).rate(20).run();
    run.assert_all_succeeded(20);
    let invites = uas.received("INVITE ");
    assert_eq!(invites.len(), 20);
    for inv in &invites {
        let (_, port) = media_of(inv);
        assert!(
            (pmin..=pmax).contains(&port),
            "anchored on the live engine: {inv}"
        );
    }
    // The control thread's pings found the dead engine.
    let log = sipvane.log();
    assert!(log.contains("rtpengine does not answer ping"), "{log}");
    // ... and the management API shows both engines with their state.
    let status = mgmt_get(sipvane.mgmt_addr(), "/status");
    let engines: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let engines = engines["rtpengine"]
        .as_array()
        .expect("rtpengine list")
        .clone();
    assert_eq!(engines.len(), 2, "{status}");
    assert_eq!(engines[0]["up"], false, "{status}");
    assert_eq!(engines[1]["up"], true, "{status}");
    assert_eq!(engines[1]["offers"], 20, "{status}");
    let metrics = mgmt_get(sipvane.mgmt_addr(), "/metrics");
    assert!(
        metrics.contains(&format!(
            "sipvane_rtpengine_up{{engine=\"{}\"}} 1",
            live.url().trim_start_matches("udp:")
        )),
        "{metrics}"
    );
    let c = sipvane.stop();
    assert_eq!(c.get("rtpengine0_offers"), 0);
    assert_eq!(c.get("rtpengine1_offers"), 20);
    assert_eq!(c.get("rtpengine1_deletes"), 20);
}

/// GET on the management API; the body.
fn mgmt_get(mgmt: std::net::SocketAddr, path: &str) -> String {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent();
    agent
        .get(&format!("http://{mgmt}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}
