//! Heap bytes per active call in the proxy core: one worker holds CALLS
//! concurrent established calls (INVITE, 200, ACK through the core, no BYE)
//! with its tables sized for them, and we print the worker's live heap divided
//! by the number of calls — once while the INVITE transactions still linger
//! (`wait_timer_ms`, 5 s, to absorb retransmissions) and once after they are
//! gone, when only the dialogs remain.
//!
//! `cargo bench -p dataplane --bench call_memory` (CALLS=100000 to change the
//! count). Counts what the worker allocates (a counting global allocator), not
//! RSS: the kernel's socket buffers and the allocator's own overhead are not in
//! it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::dispatch::{parse_list, shared, Table};
use dataplane::proxy::{ProxyConfig, ProxyStats, Worker, SOCK_PRIVATE, SOCK_PUBLIC};
use dataplane::sip::build::{self, ReplyOpts};
use dataplane::sip::parse;
use dataplane::worker::{Core, Outbox};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting live bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CALLER: &str = "127.0.0.1:40000";
const DEST: &str = "127.0.0.1:5070";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let calls: usize = std::env::var("CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let t0 = Instant::now();
    let defs = parse_list(&format!("1 sip:{DEST}\n")).unwrap();
    let table = Table::build(&defs, t0, &mut |_: &str| Ok(addr(DEST))).unwrap();
    let table = shared(table);
    let stats = Arc::new(ProxyStats::default());
    let cfg = Arc::new(ProxyConfig {
        max_transactions: calls + 64,
        overload_transactions: calls + 64,
        max_dialogs: calls + 64,
        ..ProxyConfig::default()
    });

    let before = live();
    let mut w = Worker::new(0, cfg, table, stats, t0);
    let empty = live() - before;
    let mut out = Outbox::new();
    let mut now = t0;
    for n in 0..calls {
        let invite = format!(
            "INVITE sip:100@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{n:x}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=f{n:x}\r\nTo: <sip:100@127.0.0.1>\r\n\
             Call-ID: {n:08x}-4f1c@10.1.2.3\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{CALLER}>\r\n\
             Content-Length: 0\r\n\r\n"
        );
        out.clear();
        w.on_datagram(now, SOCK_PUBLIC, addr(CALLER), invite.as_bytes(), &mut out);
        let fwd = out
            .iter()
            .find(|(_, d, _)| *d == addr(DEST))
            .map(|(_, _, b)| b.to_vec())
            .expect("INVITE forwarded");
        let mut ok = Vec::new();
        let opts = ReplyOpts {
            to_tag: Some(b"callee"),
            ..ReplyOpts::default()
        };
        build::reply(&parse(&fwd).unwrap(), 200, b"OK", &opts, &mut ok).unwrap();
        out.clear();
        w.on_datagram(now, SOCK_PRIVATE, addr(DEST), &ok, &mut out);
        let ack = format!(
            "ACK sip:100@{DEST} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-a{n:x}\r\n\
             Max-Forwards: 70\r\nRoute: <sip:127.0.0.1:5061;lr>\r\nFrom: <sip:a@127.0.0.1>;tag=f{n:x}\r\n\
             To: <sip:100@127.0.0.1>;tag=callee\r\nCall-ID: {n:08x}-4f1c@10.1.2.3\r\nCSeq: 1 ACK\r\n\
             Content-Length: 0\r\n\r\n"
        );
        out.clear();
        w.on_datagram(now, SOCK_PUBLIC, addr(CALLER), ack.as_bytes(), &mut out);
        if n % 1000 == 999 {
            // 1000 calls per simulated 10 ms: all still within wait_timer_ms.
            now += Duration::from_millis(10);
            out.clear();
            w.on_timer(now, &mut out);
        }
    }
    let (txns, dialogs) = w.occupancy();
    assert_eq!(dialogs, calls, "every call established");
    let lingering = live() - before;

    // Past wait_timer_ms: the INVITE transactions are reaped.
    let end = now + Duration::from_secs(6);
    while now < end {
        now += Duration::from_millis(100);
        out.clear();
        w.on_timer(now, &mut out);
    }
    let (txns_after, dialogs_after) = w.occupancy();
    assert_eq!(dialogs_after, calls);
    let steady = live() - before;

    let per = |b: isize| b as f64 / calls as f64;
    println!("call_memory: {calls} established calls on one worker, tables sized for them");
    println!(
        "  empty worker (tables reserved):           {:>12} B = {:>7.0} B/call",
        empty,
        per(empty)
    );
    println!(
        "  with INVITE transactions lingering ({txns:>6} transactions): {:>12} B = {:>7.0} B/call",
        lingering,
        per(lingering)
    );
    println!(
        "  dialogs only ({txns_after} transactions left):        {:>12} B = {:>7.0} B/call",
        steady,
        per(steady)
    );
    drop(w);
}
