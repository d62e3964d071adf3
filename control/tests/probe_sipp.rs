//! OPTIONS probing end to end: SIPp callees behind the real `sipvane`, a SIPp
//! caller keeping calls coming, a real Redis receiving `dst_down` / `dst_up`.
//!
//! The call-failure health check is switched off (`failure_threshold` huge) so
//! that only the prober can take a destination out of rotation.

mod support;

#[path = "support/redis.rs"]
mod redis_support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::Commands;
use redis_support::RedisServer;
use serde_json::Value;
use support::{free_udp_addr, Scenario, Sipvane, Uac, Uas};

/// Upper bound of every wait (a loaded 2-core machine); never a fixed sleep
/// except where the test watches that something does *not* happen.
const WAIT: Duration = Duration::from_secs(20);
const LIST: &str = "sipvane:events";

/// Every datagram a socket receives: arrival time, first line, Call-ID.
#[derive(Clone, Debug)]
struct Datagram {
    at: Instant,
    first_line: String,
    call_id: String,
}

struct Recorder {
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Datagram>>>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Records on `sock` until stopped or `limit` passes.
    fn start(sock: UdpSocket, limit: Duration) -> Recorder {
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (stop.clone(), got.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + limit;
            let mut buf = [0u8; 65_536];
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("set timeout");
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let first_line = text.lines().next().unwrap_or_default().to_string();
                    let call_id = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Call-ID:"))
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    g.lock().expect("recorder lock").push(Datagram {
                        at: Instant::now(),
                        first_line,
                        call_id,
                    });
                }
            }
        });
        Recorder {
            stop,
            got,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<Datagram> {
        self.got.lock().expect("recorder lock").clone()
    }

    /// Stops recording and closes the socket.
    fn finish(mut self) -> Vec<Datagram> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("recorder thread");
        }
        self.snapshot()
    }
}

/// Events of `kind` for `uri` in the Redis list.
fn events(redis: &RedisServer, kind: &str, uri: &str) -> Vec<Value> {
    let mut conn = redis.connection();
    let raw: Vec<String> = conn.lrange(LIST, 0, -1).expect("LRANGE");
    raw.iter()
        .map(|s| serde_json::from_str::<Value>(s).expect("events are JSON"))
        .filter(|v| v["type"] == kind && v["uri"] == uri)
        .collect()
}

fn wait_for_event(redis: &RedisServer, kind: &str, uri: &str) -> (Instant, Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(e) = events(redis, kind, uri).pop() {
            return (Instant::now(), e);
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event for {uri} in {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Binds `addr` once the killed process that held it is gone.
fn rebind(addr: SocketAddr) -> UdpSocket {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match UdpSocket::bind(addr) {
            Ok(s) => return s,
            Err(e) if Instant::now() >= deadline => panic!("cannot rebind {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn dead_destination_is_probed_out_and_back_in() {
    let redis = RedisServer::start();
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, free_udp_addr());
    let a_addr = a.addr();
    let a_uri = format!("sip:{a_addr}");
    // Flag 4: disabled. Never selected, never probed.
    let disabled_sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let disabled_addr = disabled_sock.local_addr().expect("addr");
    let disabled = Recorder::start(disabled_sock, Duration::from_secs(120));
    let mut sipvane = Sipvane::builder("probe")
        .algorithm("round-robin")
        .destination(format!("1 {a_uri}"))
        .destination(format!("1 sip:{}", b.addr()))
        .destination(format!("1 sip:{disabled_addr} 4"))
        .toml(
            "ping_interval_s = 1\nprobing_threshold = 2\ninactive_threshold = 2\n\
             failure_threshold = 1000000\nfr_timer_ms = 1000",
        )
        .toml(&format!("[events]\nredis_url = \"{}\"", redis.url()))
        .start();

    // 20 calls/s for at most 30 s: enough to span the whole test.
    let uac = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(600)
        .rate(20)
        .timeout(Duration::from_secs(60))
        .spawn();
    let s = a.wait_until(WAIT, |s| s.invites_received() >= 20);
    assert!(s.invites_received() >= 20, "a got no calls: {s:?}");
    assert!(s.count("OPTIONS", "Recv") >= 1, "a was never probed: {s:?}");

    // a dies; a socket that never answers takes its address, to see what
    // sipvane still sends there.
    a.kill();
    let killed = Instant::now();
    let blackhole = Recorder::start(rebind(a_addr), Duration::from_secs(60));
    let (down_at, down) = wait_for_event(&redis, "dst_down", &a_uri);
    assert_eq!(down["set"], 1, "{down}");
    assert_eq!(down["reason"], "probe timeout", "{down}");
    assert!(down["ts"].as_u64().is_some_and(|t| t > 0), "{down}");
    // Watch for three probe periods that no new call goes there.
    std::thread::sleep(Duration::from_secs(3));
    let seen = blackhole.finish();
    // New calls, not sipvane's retransmissions of INVITEs sent before.
    let invite = |d: &&Datagram| d.first_line.starts_with("INVITE ");
    let before: std::collections::HashSet<&str> = seen
        .iter()
        .filter(invite)
        .filter(|d| d.at <= down_at)
        .map(|d| d.call_id.as_str())
        .collect();
    let new_after: Vec<_> = seen
        .iter()
        .filter(invite)
        .filter(|d| d.at > down_at && !before.contains(d.call_id.as_str()))
        .collect();
    assert!(
        new_after.is_empty(),
        "new calls reached the dead destination after dst_down ({:?} after the kill): {new_after:?}",
        down_at - killed
    );
    let probes_after = seen
        .iter()
        .filter(|d| d.first_line.starts_with("OPTIONS ") && d.at > down_at)
        .count();
    assert!(
        probes_after >= 1,
        "a down destination must still be probed: {seen:?}"
    );
    let invites_before = before.len();
    let log = plain(&sipvane.log());
    assert!(
        log.contains("destination down")
            && log.contains(&format!("uri={a_uri}"))
            && log.contains("new=probing"),
        "state change not logged:\n{log}"
    );

    // a comes back: probes bring it back, and it gets calls again.
    a.restart();
    let (_, up) = wait_for_event(&redis, "dst_up", &a_uri);
    assert_eq!(up["set"], 1, "{up}");
    assert_eq!(up["reason"], "probe answered 200", "{up}");
    let s = a.wait_until(WAIT, |s| s.invites_received() >= 5);
    assert!(
        s.invites_received() >= 5,
        "a got no calls after coming back: {s:?}"
    );
    assert!(
        log_has_up(&plain(&sipvane.log()), &a_uri),
        "{}",
        sipvane.log()
    );

    let run = uac.wait();
    let counters = sipvane.stop();
    // Every INVITE that reached the dead address timed out and failed over
    // (one more may have been lost while its address was unbound); a BYE of a
    // call cut by the kill may time out too, without a failover.
    let failovers = counters.get("failovers");
    assert!(
        (invites_before as u64..=invites_before as u64 + 2).contains(&failovers),
        "{invites_before} INVITEs at the dead address: {counters:?}"
    );
    assert!(counters.get("timeouts") >= failovers, "{counters:?}");
    assert_eq!(counters.get("calls_failed"), 0, "{counters:?}");
    // Only calls in progress with a at the moment it died may fail.
    assert!(run.stats.failed <= 5, "{:?}", run.stats);
    assert!(b.stop().invites_received() >= 20);
    a.stop();

    let at_disabled = disabled.finish();
    assert!(
        at_disabled.is_empty(),
        "the disabled destination received {at_disabled:?}"
    );
    // Exactly one down and one up, in that order.
    let mut conn = redis.connection();
    let raw: Vec<String> = conn.lrange(LIST, 0, -1).expect("LRANGE");
    let kinds: Vec<String> = raw
        .iter()
        .filter_map(|s| serde_json::from_str::<Value>(s).ok())
        .filter(|v| v["uri"] == a_uri.as_str())
        .map(|v| v["type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(kinds, ["dst_down", "dst_up"]);
}

/// The log without terminal colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn log_has_up(log: &str, uri: &str) -> bool {
    log.lines().any(|l| {
        l.contains("destination up")
            && l.contains(&format!("uri={uri}"))
            && l.contains("new=active")
    })
}

#[test]
fn probing_off_sends_nothing() {
    let dest = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = dest.local_addr().expect("addr");
    let rec = Recorder::start(dest, Duration::from_secs(30));
    let mut sipvane = Sipvane::builder("probe-off")
        .destination(format!("1 sip:{addr}"))
        .toml("ping_interval_s = 0")
        .start();
    std::thread::sleep(Duration::from_millis(1500));
    sipvane.stop();
    assert!(rec.finish().is_empty());
    assert!(plain(&sipvane.log()).contains("OPTIONS probing is off"));
}

/// A destination that rejects calls (503) but answers probes: the data plane
/// takes it out after one failed call, the prober takes it over at its next
/// round and brings it back after two answered probes — long before the
/// 300 s hold-down would have.
#[test]
fn probes_not_the_hold_down_bring_back_a_destination_taken_out_by_calls() {
    let redis = RedisServer::start();
    let mut bad = Uas::start(Scenario::Uas503, free_udp_addr());
    let mut good = Uas::start(Scenario::Uas, free_udp_addr());
    let bad_uri = format!("sip:{}", bad.addr());
    let mut sipvane = Sipvane::builder("probe-holddown")
        .algorithm("round-robin")
        .destination(format!("1 {bad_uri}"))
        .destination(format!("1 sip:{}", good.addr()))
        .toml(
            "ping_interval_s = 1\nprobing_threshold = 2\ninactive_threshold = 2\n\
             failure_threshold = 1\nhold_down_s = 300",
        )
        .toml(&format!("[events]\nredis_url = \"{}\"", redis.url()))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(10)
        .rate(10)
        .timeout(Duration::from_secs(30))
        .run();
    run.assert_all_succeeded(10);
    assert_eq!(bad.stats().invites_received(), 1, "{:?}", bad.stats());

    let (down_at, down) = wait_for_event(&redis, "dst_down", &bad_uri);
    assert_eq!(down["reason"], "call failures", "{down}");
    let (up_at, up) = wait_for_event(&redis, "dst_up", &bad_uri);
    assert_eq!(up["reason"], "probe answered 200", "{up}");
    assert!(
        up_at.duration_since(down_at) < Duration::from_secs(60),
        "back after {:?}: that is not the prober",
        up_at.duration_since(down_at)
    );
    let log = plain(&sipvane.log());
    assert!(
        log.lines().any(|l| l.contains("destination down")
            && l.contains(&format!("uri={bad_uri}"))
            && l.contains("reason=call failures")),
        "{log}"
    );
    // Back in rotation: the next calls reach it again (and fail over).
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(4)
        .rate(10)
        .timeout(Duration::from_secs(30))
        .run();
    run.assert_all_succeeded(4);
    let s = bad.stop();
    assert_eq!(s.invites_received(), 2, "{s:?}");
    good.stop();
    let c = sipvane.stop();
    assert_eq!(c.get("failovers"), 2, "{c:?}");
}

/// The prober re-reads the table every round: a destination added by a reload
/// is probed from the next round on, one removed is no longer probed.
#[test]
fn reloaded_destinations_are_probed_and_removed_ones_forgotten() {
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let added = sock.local_addr().expect("addr");
    let rec = Recorder::start(sock, Duration::from_secs(60));
    let mut sipvane = Sipvane::builder("probe-reload")
        .destination(format!("1 sip:{}", a.addr()))
        .toml("ping_interval_s = 1")
        .start();

    std::fs::write(
        sipvane.list_path(),
        format!("1 sip:{}\n2 sip:{added}\n", a.addr()),
    )
    .expect("rewrite list");
    sipvane.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while rec.snapshot().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = rec.snapshot();
    assert!(
        seen.len() >= 2,
        "the added destination was not probed: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|d| d.first_line == format!("OPTIONS sip:{added} SIP/2.0")),
        "{seen:?}"
    );

    std::fs::write(sipvane.list_path(), format!("1 sip:{}\n", a.addr())).expect("rewrite list");
    sipvane.signal(libc::SIGHUP);
    assert!(
        sipvane.wait_for_log("dispatcher reloaded", 2, WAIT),
        "{}",
        sipvane.log()
    );
    // A probe already out may still be retransmitted (500 ms, 1 s); after
    // that, three rounds of silence.
    std::thread::sleep(Duration::from_millis(1500));
    let before = rec.snapshot().len();
    std::thread::sleep(Duration::from_secs(3));
    let after = rec.finish();
    assert_eq!(
        after.len(),
        before,
        "a removed destination is still probed: {:?}",
        &after[before..]
    );
    // a was probed all along.
    let s = a.stop();
    assert!(s.count("OPTIONS", "Recv") >= 4, "{s:?}");
    sipvane.stop();
}

/// A reply to a probe whose sealed branch was altered (an off-path forger)
/// is ignored and counted in `/metrics`; the genuine reply is not counted.
#[test]
fn forged_probe_replies_are_counted_in_metrics() {
    let dest = UdpSocket::bind("127.0.0.1:0").expect("bind");
    support::assert_loopback(dest.local_addr().unwrap());
    dest.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let addr = dest.local_addr().expect("addr");
    let mut sipvane = Sipvane::builder("probe-forged")
        .destination(format!("1 sip:{addr}"))
        .toml("ping_interval_s = 1")
        .start();
    let end = Instant::now() + WAIT;
    let mut buf = [0u8; 65536];
    let (probe, from) = loop {
        assert!(Instant::now() < end, "no probe within {WAIT:?}");
        if let Ok((n, from)) = dest.recv_from(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.starts_with("OPTIONS ") {
                break (m, from);
            }
        }
    };
    let reply = probe.replacen("OPTIONS sip:", "SIP/2.0 200 OK\r\nX-Was: sip:", 1);
    let start = reply.find("branch=").unwrap() + "branch=".len();
    let stop = start + reply[start..].find(';').unwrap();
    let branch = &reply[start..stop];
    let flipped = if branch.ends_with('0') { '1' } else { '0' };
    let forged = format!(
        "{}{}{flipped}{}",
        &reply[..start],
        &branch[..branch.len() - 1],
        &reply[stop..]
    );
    dest.send_to(forged.as_bytes(), from).unwrap();
    dest.send_to(reply.as_bytes(), from).unwrap();
    let counted = loop {
        let n = support::metric(
            &support::metrics(&sipvane),
            "sipvane_probe_forged_replies_total",
        );
        if n >= 1 || Instant::now() >= end {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    sipvane.stop();
    assert_eq!(counted, 1, "one forged reply, one genuine");
}
