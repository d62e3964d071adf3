//! Integration tests of the worker pool, run against both I/O drivers.
//!
//! Only loopback is used; every loop is bounded in count and in time.

use std::cell::Cell;
use std::collections::HashSet;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dataplane::worker::{
    start, Core, Driver, Outbox, Pool, SocketId, SocketSpec, WorkerContext, WorkerSpec, WorkerStats,
};

const LOCALHOST: &str = "127.0.0.1:0";

/// Set `SIPVANE_SKIP_URING=1` where io_uring is blocked (e.g. default container seccomp).
fn skip(driver: Driver) -> bool {
    driver == Driver::Uring && std::env::var_os("SIPVANE_SKIP_URING").is_some()
}

fn any() -> SocketAddr {
    LOCALHOST.parse().unwrap()
}

/// `n` workers, each with a shared `SO_REUSEPORT` socket (id 0) and a private one (id 1).
fn specs(n: usize) -> Vec<WorkerSpec> {
    (0..n)
        .map(|_| WorkerSpec {
            sockets: vec![SocketSpec::reuse_port(any()), SocketSpec::new(any())],
            cpu: None,
            tcp: None,
        })
        .collect()
}

/// Polls `cond` on the pool's stats until it holds or `limit` passes.
fn wait_stats(
    pool: &Pool,
    limit: Duration,
    cond: impl Fn(&[WorkerStats]) -> bool,
) -> Vec<WorkerStats> {
    let end = Instant::now() + limit;
    loop {
        let s = pool.stats();
        if cond(&s) || Instant::now() >= end {
            return s;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Replies with the same bytes from the same socket. Holds an `Rc` to prove cores
/// need not be `Send`.
struct Echo {
    seen: Rc<Cell<u64>>,
}

impl Core for Echo {
    fn on_datagram(
        &mut self,
        _: Instant,
        socket: SocketId,
        src: SocketAddr,
        data: &[u8],
        out: &mut Outbox,
    ) {
        self.seen.set(self.seen.get() + 1);
        out.send(socket, src, data);
    }
    fn on_timer(&mut self, _: Instant, _: &mut Outbox) {}
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

/// One client: sends `count` numbered datagrams to `target`, keeping at most
/// `window` unanswered, and checks every echo. Returns how many distinct echoes came back.
fn client(
    id: u32,
    target: SocketAddr,
    count: u32,
    window: u32,
    limit: Duration,
) -> io::Result<u32> {
    let sock = UdpSocket::bind(LOCALHOST)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let msg = |seq: u32| {
        let mut m = [0u8; 24];
        m[..4].copy_from_slice(&id.to_be_bytes());
        m[4..8].copy_from_slice(&seq.to_be_bytes());
        m[8..].copy_from_slice(b"sipvane-echotest");
        m
    };
    let mut got = vec![false; count as usize];
    let (mut next, mut received) = (0u32, 0u32);
    while next < count.min(window) {
        sock.send_to(&msg(next), target)?;
        next += 1;
    }
    let end = Instant::now() + limit;
    let mut buf = [0u8; 64];
    while received < count && Instant::now() < end {
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => {
                assert_eq!(from, target, "echo must come from the socket we sent to");
                assert_eq!(len, 24);
                let cid = u32::from_be_bytes(buf[..4].try_into().unwrap());
                let seq = u32::from_be_bytes(buf[4..8].try_into().unwrap());
                assert_eq!(cid, id);
                assert_eq!(buf[..len], msg(seq));
                if std::mem::replace(&mut got[seq as usize], true) {
                    continue;
                }
                received += 1;
                if next < count {
                    sock.send_to(&msg(next), target)?;
                    next += 1;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(received)
}

fn echo_10k(driver: Driver) {
    if skip(driver) {
        return;
    }
    let contexts = Arc::new(Mutex::new(Vec::<(WorkerContext, Option<String>)>::new()));
    let recorded = Arc::clone(&contexts);
    let pool = start(driver, specs(2), move |ctx| {
        let name = thread::current().name().map(str::to_owned);
        recorded.lock().unwrap().push((ctx, name));
        Echo {
            seen: Rc::new(Cell::new(0)),
        }
    })
    .unwrap();
    assert_ne!(pool.driver(), Driver::Auto);
    if driver != Driver::Auto {
        assert_eq!(pool.driver(), driver);
    }

    // Factory ran once per worker, on the named worker thread, with its addresses.
    let mut ctxs = contexts.lock().unwrap().clone();
    ctxs.sort_by_key(|(c, _)| c.index);
    assert_eq!(ctxs.len(), 2);
    for (i, (ctx, name)) in ctxs.iter().enumerate() {
        assert_eq!(ctx.index, i);
        assert_eq!(ctx.workers, 2);
        assert_eq!(ctx.local_addrs, pool.local_addrs(i));
        assert_eq!(name.as_deref(), Some(format!("sipvane-w{i}").as_str()));
    }
    let public = pool.local_addrs(0)[0];
    assert_eq!(
        public,
        pool.local_addrs(1)[0],
        "SO_REUSEPORT group shares the port"
    );
    assert_ne!(pool.local_addrs(0)[1], pool.local_addrs(1)[1]);
    assert!(pool.local_addrs(2).is_empty());

    // 8 clients: 4 on the shared port, 2 on each private port; 10k datagrams in all.
    let targets = [
        public,
        public,
        public,
        public,
        pool.local_addrs(0)[1],
        pool.local_addrs(0)[1],
        pool.local_addrs(1)[1],
        pool.local_addrs(1)[1],
    ];
    let per_client = 10_000 / targets.len() as u32;
    let handles: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            thread::spawn(move || client(i as u32, t, per_client, 8, Duration::from_secs(20)))
        })
        .collect();
    let mut total = 0;
    for h in handles {
        let got = h.join().unwrap().unwrap();
        assert_eq!(got, per_client, "a client missed echoes");
        total += got;
    }
    assert_eq!(total, 10_000);

    let stats = wait_stats(&pool, Duration::from_secs(2), |s| {
        s.iter().map(|w| w.datagrams_out).sum::<u64>() == 10_000
    });
    assert_eq!(
        stats.iter().map(|w| w.datagrams_in).sum::<u64>(),
        10_000,
        "{stats:?}"
    );
    assert_eq!(
        stats.iter().map(|w| w.datagrams_out).sum::<u64>(),
        10_000,
        "{stats:?}"
    );
    // Each worker served at least its private-port clients.
    for w in &stats {
        assert!(w.datagrams_in >= 2 * u64::from(per_client), "{stats:?}");
        assert_eq!(w.send_errors, 0);
        assert_eq!(w.recv_errors, 0);
        assert!(w.running);
    }
    pool.stop().unwrap();
}

/// Fires once at a deadline set at construction and sends "tick" to `to`.
struct Timer {
    deadline: Option<Instant>,
    to: SocketAddr,
}

impl Core for Timer {
    fn on_datagram(&mut self, _: Instant, _: SocketId, _: SocketAddr, _: &[u8], _: &mut Outbox) {}
    fn on_timer(&mut self, now: Instant, out: &mut Outbox) {
        assert!(self.deadline.is_some_and(|d| now >= d), "timer ran early");
        self.deadline = None;
        out.send(0, self.to, b"tick");
    }
    fn next_deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

fn timer_fires(driver: Driver) {
    if skip(driver) {
        return;
    }
    let sink = UdpSocket::bind(LOCALHOST).unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let to = sink.local_addr().unwrap();
    // Longer than the 100 ms wait cap, so the capped waits must not fire it early.
    let delay = Duration::from_millis(250);
    let t0 = Instant::now();
    let pool = start(driver, specs(1), move |_| Timer {
        deadline: Some(Instant::now() + delay),
        to,
    })
    .unwrap();
    let mut buf = [0u8; 16];
    let (len, from) = sink.recv_from(&mut buf).unwrap();
    let elapsed = t0.elapsed();
    assert_eq!(&buf[..len], b"tick");
    assert_eq!(from, pool.local_addrs(0)[0]);
    assert!(elapsed >= delay, "fired after {elapsed:?}");
    assert!(
        elapsed < delay + Duration::from_secs(2),
        "fired after {elapsed:?}"
    );
    let stats = wait_stats(&pool, Duration::from_secs(1), |s| s[0].datagrams_out == 1);
    assert_eq!(stats[0].timers, 1);
    assert_eq!(stats[0].datagrams_out, 1);
    pool.stop().unwrap();
}

/// Worker 0 hands everything to worker 1 ("bad" goes to a worker that does not
/// exist); worker 1 answers "w1:" + data from the same socket id.
struct Relay {
    index: usize,
}

impl Core for Relay {
    fn on_datagram(
        &mut self,
        _: Instant,
        socket: SocketId,
        src: SocketAddr,
        data: &[u8],
        out: &mut Outbox,
    ) {
        if self.index == 0 {
            let target = if data == b"bad" { 99 } else { 1 };
            out.handoff(target, socket, src, data);
        } else {
            out.send_with(socket, src, |b| {
                b.extend_from_slice(b"w1:");
                b.extend_from_slice(data);
            });
        }
    }
    fn on_timer(&mut self, _: Instant, _: &mut Outbox) {}
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

fn handoff(driver: Driver) {
    if skip(driver) {
        return;
    }
    let pool = start(driver, specs(2), |ctx| Relay { index: ctx.index }).unwrap();
    let to = pool.local_addrs(0)[1]; // worker 0's private port
    let reply_from = pool.local_addrs(1)[1]; // worker 1 answers on its own socket 1
    let client = UdpSocket::bind(LOCALHOST).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    client.send_to(b"bad", to).unwrap();

    const N: usize = 300;
    let mut seen = HashSet::new();
    let mut sent = 0;
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 64];
    while seen.len() < N && Instant::now() < end {
        // Window of 16 outstanding requests.
        while sent < N && sent - seen.len() < 16 {
            client
                .send_to(format!("req-{sent}").as_bytes(), to)
                .unwrap();
            sent += 1;
        }
        match client.recv_from(&mut buf) {
            Ok((len, from)) => {
                assert_eq!(from, reply_from);
                let text = std::str::from_utf8(&buf[..len]).unwrap();
                let rest = text.strip_prefix("w1:req-").expect(text);
                seen.insert(rest.parse::<usize>().unwrap());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(seen.len(), N);

    let stats = wait_stats(&pool, Duration::from_secs(2), |s| {
        s[1].datagrams_out == N as u64 && s[0].handoff_drops == 1
    });
    let (w0, w1) = (&stats[0], &stats[1]);
    assert_eq!(w0.datagrams_in, N as u64 + 1, "{stats:?}");
    assert_eq!(w0.handoffs_out, N as u64, "{stats:?}");
    assert_eq!(w0.handoff_drops, 1, "{stats:?}");
    assert_eq!(w0.datagrams_out, 0, "{stats:?}");
    assert_eq!(w1.handoffs_in, N as u64, "{stats:?}");
    assert_eq!(w1.datagrams_in, 0, "{stats:?}");
    assert_eq!(w1.datagrams_out, N as u64, "{stats:?}");
    pool.stop().unwrap();
}

/// Echoes, but stalls the worker for 150 ms on the first datagram so a burst piles up
/// in the socket buffer.
struct Stall {
    stalled: bool,
}

impl Core for Stall {
    fn on_datagram(
        &mut self,
        _: Instant,
        socket: SocketId,
        src: SocketAddr,
        data: &[u8],
        out: &mut Outbox,
    ) {
        if !self.stalled {
            self.stalled = true;
            thread::sleep(Duration::from_millis(150));
        }
        out.send(socket, src, data);
    }
    fn on_timer(&mut self, _: Instant, _: &mut Outbox) {}
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

/// A burst larger than one turn's receive batch (epoll) and than the provided
/// buffer ring (io_uring) is still fully served.
fn burst(driver: Driver) {
    if skip(driver) {
        return;
    }
    const N: usize = 600;
    let specs = vec![WorkerSpec {
        sockets: vec![SocketSpec {
            recv_buffer: Some(2 << 20),
            ..SocketSpec::new(any())
        }],
        cpu: None,
        tcp: None,
    }];
    let pool = start(driver, specs, |_| Stall { stalled: false }).unwrap();
    let to = pool.local_addrs(0)[0];
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    client.set_recv_buffer_size(2 << 20).unwrap();
    client.bind(&any().into()).unwrap();
    let client: UdpSocket = client.into();
    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    for i in 0..N as u32 {
        client.send_to(&i.to_be_bytes(), to).unwrap();
    }
    let mut seen = vec![false; N];
    let mut count = 0;
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 16];
    while count < N && Instant::now() < end {
        match client.recv_from(&mut buf) {
            Ok((4, _)) => {
                let i = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                if !std::mem::replace(&mut seen[i], true) {
                    count += 1;
                }
            }
            Ok((len, _)) => panic!("unexpected {len}-byte reply"),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let stats = pool.stats();
    assert_eq!(count, N, "{stats:?}");
    assert_eq!(stats[0].recv_errors, 0, "{stats:?}");
    pool.stop().unwrap();
}

/// Sends one copy from a socket id the worker does not have, then a real echo.
struct WrongSocket;

impl Core for WrongSocket {
    fn on_datagram(
        &mut self,
        _: Instant,
        socket: SocketId,
        src: SocketAddr,
        data: &[u8],
        out: &mut Outbox,
    ) {
        out.send(9, src, data);
        out.send(socket, src, data);
    }
    fn on_timer(&mut self, _: Instant, _: &mut Outbox) {}
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

fn unknown_socket_id_is_a_counted_send_error(driver: Driver) {
    if skip(driver) {
        return;
    }
    let pool = start(driver, specs(1), |_| WrongSocket).unwrap();
    let client = UdpSocket::bind(LOCALHOST).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    client.send_to(b"hello", pool.local_addrs(0)[1]).unwrap();
    let mut buf = [0u8; 16];
    let (len, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"hello");
    // io_uring counts a sent datagram when its completion is reaped, a turn later.
    let stats = wait_stats(&pool, Duration::from_secs(1), |s| {
        s[0].send_errors == 1 && s[0].datagrams_out == 1
    });
    assert_eq!(stats[0].send_errors, 1, "{stats:?}");
    assert_eq!(stats[0].datagrams_out, 1, "{stats:?}");
    pool.stop().unwrap();
}

struct Idle;

impl Core for Idle {
    fn on_datagram(&mut self, _: Instant, _: SocketId, _: SocketAddr, _: &[u8], _: &mut Outbox) {}
    fn on_timer(&mut self, _: Instant, _: &mut Outbox) {}
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

fn idle_heartbeat_and_prompt_stop(driver: Driver) {
    if skip(driver) {
        return;
    }
    let pool = start(driver, specs(2), |_| Idle).unwrap();
    let before = pool.heartbeats();
    thread::sleep(Duration::from_millis(350));
    let after = pool.heartbeats();
    for (b, a) in before.iter().zip(&after) {
        // An idle worker still turns at least every 100 ms.
        assert!(a >= &(b + 2), "heartbeats {before:?} -> {after:?}");
    }
    for s in pool.stats() {
        assert!(s.running);
        assert!(s.idle < Duration::from_millis(500), "{s:?}");
    }
    let t = Instant::now();
    pool.stop().unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(300), "stop took {took:?}");
}

fn bind_conflict_is_reported_with_address(driver: Driver) {
    if skip(driver) {
        return;
    }
    let taken = UdpSocket::bind(LOCALHOST).unwrap();
    let addr = taken.local_addr().unwrap();
    let specs = vec![WorkerSpec {
        sockets: vec![SocketSpec::new(addr)],
        cpu: None,
        tcp: None,
    }];
    let err = start(driver, specs, |_| Idle).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

fn pinning_failure_is_not_fatal(driver: Driver) {
    if skip(driver) {
        return;
    }
    let specs = vec![WorkerSpec {
        sockets: vec![SocketSpec::new(any())],
        cpu: Some(100_000),
        tcp: None,
    }];
    let pool = start(driver, specs, |_| Idle).unwrap();
    pool.stop().unwrap();
}

/// Panics on any datagram: a worker that dies.
struct Fragile;

impl Core for Fragile {
    fn on_datagram(&mut self, _: Instant, _: SocketId, _: SocketAddr, _: &[u8], _: &mut Outbox) {
        panic!("test: this worker panics on its first datagram");
    }
    fn on_timer(&mut self, _: Instant, _: &mut Outbox) {}
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

/// A worker that panics is reported dead (the other keeps running) and the
/// pool's stop names it; a stopped pool reports nobody dead.
fn dead_worker_is_reported(driver: Driver) {
    if skip(driver) {
        return;
    }
    let pool = start(driver, specs(2), |_| Fragile).unwrap();
    let monitor = pool.monitor();
    assert!(monitor.dead_workers().is_empty());
    // Worker 1's private socket: only it can receive this.
    let private = pool.local_addrs(1)[1];
    let tx = UdpSocket::bind(any()).unwrap();
    tx.send_to(b"x", private).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while monitor.dead_workers().is_empty() && Instant::now() < end {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(monitor.dead_workers(), vec![1]);
    assert!(pool.stats()[0].running, "the other worker runs on");
    let err = pool.stop().unwrap_err();
    assert!(err.to_string().contains("worker 1 panicked"), "{err}");
    assert!(monitor.dead_workers().is_empty(), "stopping is not dying");
}

macro_rules! for_driver {
    ($name:ident, $driver:expr) => {
        mod $name {
            use super::*;
            const D: Driver = $driver;

            #[test]
            fn echo_10k_datagrams() {
                echo_10k(D);
            }
            #[test]
            fn timer_fires_and_sends() {
                timer_fires(D);
            }
            #[test]
            fn handoff_between_workers() {
                handoff(D);
            }
            #[test]
            fn burst_larger_than_buffers() {
                burst(D);
            }
            #[test]
            fn unknown_socket_id() {
                unknown_socket_id_is_a_counted_send_error(D);
            }
            #[test]
            fn idle_heartbeat_and_stop() {
                idle_heartbeat_and_prompt_stop(D);
            }
            #[test]
            fn bind_conflict() {
                bind_conflict_is_reported_with_address(D);
            }
            #[test]
            fn bad_cpu_pin() {
                pinning_failure_is_not_fatal(D);
            }
            #[test]
            fn dead_worker() {
                dead_worker_is_reported(D);
            }
        }
    };
}

for_driver!(epoll, Driver::Epoll);
for_driver!(uring, Driver::Uring);

#[test]
fn auto_resolves_consistently() {
    let explicit = start(Driver::Uring, specs(1), |_| Idle);
    let auto = start(Driver::Auto, specs(1), |_| Idle).unwrap();
    match explicit {
        Ok(p) => {
            assert_eq!(p.driver(), Driver::Uring);
            assert_eq!(auto.driver(), Driver::Uring);
            p.stop().unwrap();
        }
        Err(e) => {
            assert!(e.to_string().contains("io_uring"), "{e}");
            assert_eq!(auto.driver(), Driver::Epoll);
        }
    }
    auto.stop().unwrap();
}

/// Where io_uring is enabled (as on the development machine), Auto must pick it.
#[test]
fn auto_picks_uring_when_enabled() {
    let enabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim() == "0")
        .unwrap_or(false);
    if !enabled || skip(Driver::Uring) {
        return;
    }
    let pool = start(Driver::Auto, specs(1), |_| Idle).unwrap();
    assert_eq!(pool.driver(), Driver::Uring);
    pool.stop().unwrap();
}
