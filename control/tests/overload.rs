//! Overload end to end: a caller offers new calls as fast as a test thread
//! can send them — far more than one worker completes — to a destination
//! that answers every INVITE `486 Busy Here`. sipvane must shed the excess
//! with a stateless `503` + `Retry-After` — at the transaction-table
//! watermark (a small table), or (a table too big to fill) because its
//! receive queue stands for `shed_backlog_ms` (CPU overload) — keep
//! answering OPTIONS and the management API meanwhile, keep its memory
//! bounded (the transaction table never grows past `max_transactions`), and
//! once the load is gone and the finished transactions have expired, complete
//! every new call again. A binary of its own: the flood loads the machine,
//! and test binaries run one after another.
//!
//! Nothing here asserts how fast anything happens (the box is shared): the
//! flood is bounded in datagrams and seconds, and the test asserts outcomes.
//! The recovery time is printed for docs/reliability.md.
//!
//! Addresses: sipvane, SIPp and the busy destination on 127.0.0.1, the
//! flooding caller on 127.0.0.3 — all loopback.

#[macro_use]
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::sip::build::{self, ReplyOpts};
use dataplane::sip::{parse, Method};
use support::{api_get, assert_loopback, free_udp_addr, sip_options_ping, status_code};
use support::{Scenario, Sipvane, Uac, Uas};

/// Transaction slots per worker, and the watermark above which new INVITEs
/// are shed: small, so the flood reaches it at once and the bound on memory
/// is easy to state.
const MAX_TRANSACTIONS: u64 = 2000;
const WATERMARK: f64 = 0.5;
const RETRY_AFTER_S: u32 = 7;

/// What makes sipvane shed in a run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    /// `max_transactions = MAX_TRANSACTIONS`, watermark `WATERMARK`, backlog
    /// shedding off.
    Table,
    /// `BACKLOG_TABLE` slots (the flood does not fill them) and backlog
    /// shedding at 100 ms.
    Backlog,
}

/// Transaction slots in the backlog run.
const BACKLOG_TABLE: u64 = 40_000;

/// The flood: at most this many INVITEs, for at most this long.
const FLOOD_INVITES: u32 = 400_000;
const FLOOD_FOR: Duration = Duration::from_secs(6);

fn bind(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind loopback");
    assert_loopback(s.local_addr().unwrap());
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// A destination that answers every INVITE 486 and every other request but
/// ACK 200 (so OPTIONS probes keep it in service). Runs until `stop`.
fn busy_destination(stop: Arc<AtomicBool>) -> (SocketAddr, std::thread::JoinHandle<u64>) {
    let sock = bind("127.0.0.1");
    let addr = sock.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut out = Vec::with_capacity(2048);
        let mut invites = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(msg) = parse(&buf[..n]) else { continue };
            let code = match msg.method() {
                Some(Method::Ack) | None => continue,
                Some(Method::Invite) => {
                    invites += 1;
                    486
                }
                Some(_) => 200,
            };
            out.clear();
            let reason = build::reason_phrase(code);
            if build::reply(&msg, code, reason, &ReplyOpts::default(), &mut out).is_ok() {
                let _ = sock.send_to(&out, from);
            }
        }
        invites
    });
    (addr, t)
}

fn invite(from: SocketAddr, n: u32) -> String {
    format!(
        "INVITE sip:900@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-ov{n};rport;oc;oc-algo=\"loss\"\r\n\
         Max-Forwards: 70\r\nFrom: <sip:flood@{from}>;tag=f{n}\r\nTo: <sip:900@127.0.0.1>\r\n\
         Call-ID: overload-{n}@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The ACK for a non-2xx final (RFC 3261 §17.1.1.3): the INVITE's
/// Request-URI, Via, From, Call-ID; the response's To (with its tag).
fn ack_for(response: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(response).ok()?;
    let line = |name: &str| {
        text.lines()
            .find(|l| l.len() > name.len() && l[..name.len()].eq_ignore_ascii_case(name))
    };
    let mut ack = String::from("ACK sip:900@127.0.0.1 SIP/2.0\r\n");
    for name in ["Via:", "From:", "To:", "Call-ID:"] {
        ack.push_str(line(name)?);
        ack.push_str("\r\n");
    }
    ack.push_str("Max-Forwards: 70\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
    Some(ack.into_bytes())
}

/// What the flooding caller got back.
#[derive(Default)]
struct Answers {
    sent: AtomicU64,
    busy: AtomicU64,
    shed: AtomicU64,
    /// 503s that carried `Retry-After: RETRY_AFTER_S`.
    shed_with_retry_after: AtomicU64,
    /// 503s whose Via told the caller (it offered RFC 7339 `oc`) to hold
    /// back 100 % of its requests.
    shed_with_oc_100: AtomicU64,
    /// The highest `oc` loss value of any other response.
    max_oc_other: AtomicU64,
    other: AtomicU64,
}

/// The `oc=N` loss value in the top Via of a response, if any.
fn oc_loss(msg: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(msg).ok()?;
    let via = text.lines().find(|l| l.starts_with("Via:"))?;
    via.split(';')
        .find_map(|p| p.trim().strip_prefix("oc=")?.parse().ok())
}

/// Sends INVITEs as fast as one thread can (bounded), and ACKs every final.
fn flood(target: SocketAddr, answers: Arc<Answers>) -> Vec<std::thread::JoinHandle<()>> {
    let sock = bind("127.0.0.3");
    let me = sock.local_addr().unwrap();
    let rx = sock.try_clone().unwrap();
    let sending = Arc::new(AtomicBool::new(true));
    let (a, s) = (answers.clone(), sending.clone());
    let sender = std::thread::spawn(move || {
        let end = Instant::now() + FLOOD_FOR;
        let mut n = 0;
        while n < FLOOD_INVITES && Instant::now() < end {
            let _ = sock.send_to(invite(me, n).as_bytes(), target);
            n += 1;
        }
        a.sent.store(u64::from(n), Ordering::Relaxed);
        s.store(false, Ordering::Relaxed);
    });
    let receiver = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let retry_after = format!("Retry-After: {RETRY_AFTER_S}\r\n");
        // Keep ACKing retransmitted finals for a while after the last send.
        let mut quiet_until = Instant::now() + FLOOD_FOR + Duration::from_secs(40);
        while Instant::now() < quiet_until {
            let Ok((n, from)) = rx.recv_from(&mut buf) else {
                if !sending.load(Ordering::Relaxed) {
                    quiet_until = quiet_until.min(Instant::now() + Duration::from_secs(3));
                }
                continue;
            };
            let msg = &buf[..n];
            let Some(code) = status_code(msg) else {
                continue;
            };
            let oc = oc_loss(msg);
            if code != 503 {
                answers
                    .max_oc_other
                    .fetch_max(oc.unwrap_or(0), Ordering::Relaxed);
            }
            let counter = match code {
                100..=199 => continue,
                486 => &answers.busy,
                503 => {
                    let text = String::from_utf8_lossy(msg);
                    if text.contains(&retry_after) {
                        answers
                            .shed_with_retry_after
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if oc == Some(100) {
                        answers.shed_with_oc_100.fetch_add(1, Ordering::Relaxed);
                    }
                    &answers.shed
                }
                _ => &answers.other,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(ack) = ack_for(msg) {
                let _ = rx.send_to(&ack, from);
            }
        }
    });
    vec![sender, receiver]
}

/// An OPTIONS whose Via offers RFC 7339 overload control; the answer.
fn options_offering_oc(target: SocketAddr) -> String {
    let sock = bind("127.0.0.1");
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let me = sock.local_addr().unwrap();
    let req = format!(
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-ocq;oc;oc-algo=\"loss\"\r\n\
         Max-Forwards: 70\r\nFrom: <sip:q@{me}>;tag=q\r\nTo: <sip:127.0.0.1>\r\n\
         Call-ID: oc-options@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let mut buf = vec![0u8; 4096];
    for _ in 0..3 {
        sock.send_to(req.as_bytes(), target).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no answer to OPTIONS after the flood");
}

/// Datagrams the kernel dropped because a receive buffer of a UDP socket
/// bound to `port` on 127.0.0.1 was full (the `drops` column of
/// /proc/net/udp): load the worker could not read at all, counted.
fn kernel_drops(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").expect("read /proc/net/udp");
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// The most transactions any worker holds now, from `GET /status`.
fn transactions(sv: &Sipvane) -> u64 {
    let body = api_get(sv, "/status");
    let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    v["worker_detail"]
        .as_array()
        .expect("worker_detail")
        .iter()
        .map(|w| w["transactions"].as_u64().expect("transactions"))
        .max()
        .unwrap_or(0)
}

fn overload_sheds_stays_responsive_and_recovers(io: &str) {
    overload_run(io, Policy::Table);
}

fn cpu_overload_sheds_by_receive_backlog(io: &str) {
    overload_run(io, Policy::Backlog);
}

fn overload_run(io: &str, policy: Policy) {
    let (table, proxy_toml) = match policy {
        Policy::Table => (
            MAX_TRANSACTIONS,
            format!(
                "max_transactions = {MAX_TRANSACTIONS}\noverload_watermark = {WATERMARK}\n\
                 retry_after_s = {RETRY_AFTER_S}\nshed_backlog_ms = 0"
            ),
        ),
        Policy::Backlog => (
            BACKLOG_TABLE,
            format!(
                "max_transactions = {BACKLOG_TABLE}\nretry_after_s = {RETRY_AFTER_S}\nshed_backlog_ms = 100"
            ),
        ),
    };
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    let stop_busy = Arc::new(AtomicBool::new(false));
    let (busy, busy_thread) = busy_destination(stop_busy.clone());
    let mut sv = Sipvane::builder("overload")
        .io(io)
        .workers(1)
        .destination(format!("1 sip:{}", uas.addr()))
        .destination(format!("2 sip:{busy}"))
        .proxy_toml(&proxy_toml)
        .toml("[[dispatcher.rules]]\nprefix = \"9\"\nset = 2")
        .start();

    // Before: calls complete, and the memory the process settles at.
    Uac::new(Scenario::Uac, sv.addr())
        .calls(20)
        .rate(20)
        .run()
        .assert_all_succeeded(20);
    let rss_before = sv.rss_kib();

    let answers = Arc::new(Answers::default());
    let flooders = flood(sv.addr(), answers.clone());
    // During: OPTIONS and the management API answer, the table stays within
    // its bound, memory stays flat.
    let (mut pings, mut pongs, mut rss_max, mut txns_max) = (0, 0, rss_before, 0);
    let flood_end = Instant::now() + FLOOD_FOR;
    while Instant::now() < flood_end {
        pings += 1;
        if sip_options_ping(sv.addr(), Duration::from_secs(2)) == Some(200) {
            pongs += 1;
        }
        // api_get panics on a failed or timed-out request.
        let health = api_get(&sv, "/health");
        assert!(health.contains("\"ok\""), "unhealthy under load: {health}");
        txns_max = txns_max.max(transactions(&sv));
        rss_max = rss_max.max(sv.rss_kib());
        std::thread::sleep(Duration::from_millis(100));
    }
    let dropped = kernel_drops(sv.addr().port());
    let flood_stopped = Instant::now();
    for f in flooders {
        f.join().unwrap();
    }

    // After: once the finished transactions have expired, every new call
    // completes again.
    let drain_deadline = Instant::now() + Duration::from_secs(90);
    while transactions(&sv) > 0 {
        assert!(
            Instant::now() < drain_deadline,
            "transactions never drained after the flood: {}",
            transactions(&sv)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let drained_after = flood_stopped.elapsed();
    let idle_oc = options_offering_oc(sv.addr());
    let after = Uac::new(Scenario::Uac, sv.addr()).calls(100).rate(50).run();
    after.assert_all_succeeded(100);

    let c = sv.stop();
    stop_busy.store(true, Ordering::Relaxed);
    let reached_busy = busy_thread.join().unwrap();
    uas.stop();

    let sent = answers.sent.load(Ordering::Relaxed);
    let busy_answers = answers.busy.load(Ordering::Relaxed);
    let shed = answers.shed.load(Ordering::Relaxed);
    let shed_ra = answers.shed_with_retry_after.load(Ordering::Relaxed);
    let shed_oc = answers.shed_with_oc_100.load(Ordering::Relaxed);
    let max_oc_other = answers.max_oc_other.load(Ordering::Relaxed);
    let other = answers.other.load(Ordering::Relaxed);
    println!(
        "overload [{io}, {policy:?}]: {sent} INVITEs offered in {FLOOD_FOR:?}; admitted {} (486 from the \
         destination: {busy_answers}), shed 503 {shed} (overload_rejects {}), other {other}, \
         not answered {} (the kernel dropped {dropped} at sipvane's socket); OPTIONS answered {pongs}/{pings}; \
         transactions max {txns_max}/{table}; RSS {rss_before} -> max {rss_max} KiB; \
         transactions drained {drained_after:?} after the flood; 100/100 calls after; \
         RFC 7339: {shed_oc} 503s said oc=100, other answers up to oc={max_oc_other}, \
         overload_feedback {}, backlog_rejects {}",
        c.get("initial_invites"),
        c.get("overload_rejects"),
        sent.saturating_sub(busy_answers + shed + other),
        c.get("overload_feedback"),
        c.get("backlog_rejects"),
    );

    // Shedding happened, statelessly and with Retry-After, and it was the
    // policy under test that shed (not a full table or a dead destination).
    match policy {
        Policy::Table => {
            assert!(c.get("overload_rejects") > 0, "nothing was shed: {c:?}");
            assert_eq!(c.get("backlog_rejects"), 0, "{c:?}");
            // RFC 7339: the flooding caller offered `oc`, so every 503 told
            // it to hold back everything, answers admitted on the way up told
            // it to slow down.
            assert_eq!(shed_oc, shed, "{shed} 503s, {shed_oc} with oc=100");
            assert!(c.get("overload_feedback") >= shed_oc, "{c:?}");
        }
        Policy::Backlog => {
            assert!(c.get("backlog_rejects") > 0, "nothing was shed: {c:?}");
        }
    }
    assert!(
        shed > 0 && shed_ra == shed,
        "{shed} 503s, {shed_ra} with Retry-After: {RETRY_AFTER_S}"
    );
    // Once the table drained, the `oc` caller is told control is off.
    assert!(
        idle_oc.contains(";oc=0;oc-algo=\"loss\";oc-validity=0;oc-seq="),
        "after the flood: {idle_oc}"
    );
    assert_eq!(c.get("table_full"), 0, "the table filled up: {c:?}");
    assert_eq!(c.get("no_destination"), 0, "{c:?}");
    // Admitted calls went through (shedding is not refusing everything).
    assert!(busy_answers > 0 && reached_busy > 0, "no call was admitted");
    assert!(
        txns_max <= table,
        "{txns_max} transactions open, the table holds {table}"
    );
    assert!(
        pongs > 0,
        "no OPTIONS answered during the overload ({pings} tried)"
    );
    // Bounded memory: a handful of MiB over the settled process plus what
    // the open transactions hold (their pooled buffers: up to ~8 KiB each),
    // not a queue of everything offered (one INVITE is ~330 bytes; the flood
    // offered ~100 MiB and more).
    let bound = rss_before + 32 * 1024 + txns_max * 8;
    assert!(
        rss_max < bound,
        "RSS grew from {rss_before} KiB to {rss_max} KiB under overload \
         ({txns_max} transactions; bound {bound} KiB)"
    );
}

on_both_drivers!(
    overload_sheds_stays_responsive_and_recovers,
    cpu_overload_sheds_by_receive_backlog
);
