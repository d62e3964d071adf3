//! Everything the two drivers share except the syscalls: cross-worker state, the
//! per-turn bookkeeping around the core (handoffs, timers, counters, heartbeat),
//! the wakeup eventfd and socket setup.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use socket2::{Domain, Protocol, Socket, Type};

use super::outbox::PREDECESSOR;
use super::{Core, Outbox, SocketId, SocketSpec, TcpStats, WorkerStats};

/// Longest a driver sleeps, so that a stop request is noticed promptly even if its
/// wakeup were lost.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(100);

/// Capacity of each worker's handoff queue.
pub(crate) const HANDOFF_QUEUE: usize = 4096;

/// A datagram on its way to another worker.
///
/// Handoffs are the rare path (a packet that reached the wrong worker), so one
/// allocation per handoff for the copied bytes is accepted here; the normal
/// receive → send path never allocates.
pub(crate) struct Handoff {
    pub socket: SocketId,
    pub src: SocketAddr,
    pub data: Box<[u8]>,
}

/// How other threads wake a worker (handoffs, stop): an eventfd the io_uring
/// driver keeps a `Read` on, or the mio `Waker` of the epoll driver's `Poll`.
pub(crate) enum Wake {
    EventFd(EventFd),
    Mio(mio::Waker),
}

impl Wake {
    pub fn wake(&self) {
        match self {
            Wake::EventFd(e) => e.wake(),
            Wake::Mio(w) => {
                // Only fails on a broken eventfd; the 100 ms wait cap covers it.
                let _ = w.wake();
            }
        }
    }
}

/// A blocking eventfd (see [`Wake`]).
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    /// Blocking on purpose: an `IORING_OP_READ` on an `O_NONBLOCK` eventfd completes
    /// at once with `EAGAIN` instead of waiting for a write.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned exclusively by us.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. The only failure is a counter at
        // u64::MAX - 1, which cannot happen while the reader keeps draining it, and a
        // lost wakeup is covered by MAX_WAIT anyway.
        unsafe {
            libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Counters of one worker, written only by that worker (plain stores, no RMW
/// contention) and read by the pool.
#[derive(Default)]
pub(crate) struct StatCells {
    pub running: AtomicBool,
    pub turns: AtomicU64,
    pub last_turn_ms: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub send_errors: AtomicU64,
    pub send_would_block: AtomicU64,
    pub recv_errors: AtomicU64,
    pub recv_buffers_exhausted: AtomicU64,
    pub truncated: AtomicU64,
    pub handoffs_out: AtomicU64,
    pub handoffs_in: AtomicU64,
    pub handoff_drops: AtomicU64,
    pub timers: AtomicU64,
    /// Datagrams the successor relayed that did not fit the handoff queue
    /// (written by the relay thread, hence a counter of its own).
    pub relay_drops: AtomicU64,
    /// [`Core::open_work`] once the worker handed its sockets over.
    pub open_work: AtomicU64,
    /// Written whole once per turn by the worker (a seqlock-free copy: a reader
    /// may see counters from two adjacent turns, which is fine for metrics).
    pub tcp: TcpCells,
}

/// [`TcpStats`] as atomics.
#[derive(Default)]
pub(crate) struct TcpCells {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    connected: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    no_connection: AtomicU64,
    tls_handshake_failures: AtomicU64,
    tls_client_cert_failures: AtomicU64,
    tls_connected: AtomicU64,
    tls_out_handshake_failures: AtomicU64,
    tls_accepted: AtomicU64,
    tls_open: AtomicU64,
    closed: [AtomicU64; crate::transport::CloseReason::ALL.len()],
}

impl TcpCells {
    fn store(&self, t: &TcpStats) {
        let set = |cell: &AtomicU64, v: u64| cell.store(v, Ordering::Relaxed);
        set(&self.open, t.open);
        set(&self.accepted, t.accepted);
        set(&self.refused, t.refused);
        set(&self.connected, t.connected);
        set(&self.messages_in, t.messages_in);
        set(&self.messages_out, t.messages_out);
        set(&self.no_connection, t.no_connection);
        set(&self.tls_handshake_failures, t.tls_handshake_failures);
        set(&self.tls_client_cert_failures, t.tls_client_cert_failures);
        set(&self.tls_connected, t.tls_connected);
        set(
            &self.tls_out_handshake_failures,
            t.tls_out_handshake_failures,
        );
        set(&self.tls_accepted, t.tls_accepted);
        set(&self.tls_open, t.tls_open);
        for (cell, v) in self.closed.iter().zip(t.closed) {
            set(cell, v);
        }
    }

    fn load(&self) -> TcpStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut closed = [0; crate::transport::CloseReason::ALL.len()];
        for (v, cell) in closed.iter_mut().zip(&self.closed) {
            *v = get(cell);
        }
        TcpStats {
            open: get(&self.open),
            accepted: get(&self.accepted),
            refused: get(&self.refused),
            connected: get(&self.connected),
            messages_in: get(&self.messages_in),
            messages_out: get(&self.messages_out),
            no_connection: get(&self.no_connection),
            tls_handshake_failures: get(&self.tls_handshake_failures),
            tls_client_cert_failures: get(&self.tls_client_cert_failures),
            tls_connected: get(&self.tls_connected),
            tls_out_handshake_failures: get(&self.tls_out_handshake_failures),
            tls_accepted: get(&self.tls_accepted),
            tls_open: get(&self.tls_open),
            closed,
        }
    }
}

/// A restart hand-over request to one worker and its answer.
#[derive(Default)]
pub(crate) struct HandoverCell {
    /// How many of the worker's first sockets to stop reading; 0: none asked.
    pub mute: AtomicU8,
    /// [`Core::handover`]'s report, set once the sockets are no longer read.
    pub report: Mutex<Option<Vec<u8>>>,
}

/// Per-worker state other threads touch.
pub(crate) struct WorkerShared {
    pub queue: ArrayQueue<Handoff>,
    pub wake: Wake,
    pub stats: StatCells,
    pub handover: HandoverCell,
}

/// State shared by all workers and the pool.
pub(crate) struct Shared {
    pub stop: AtomicBool,
    pub epoch: Instant,
    pub workers: Box<[CachePadded<WorkerShared>]>,
    /// The previous process's relay socket during a restart (non-blocking).
    pub predecessor: Option<UnixDatagram>,
}

impl Shared {
    /// One worker per wakeup handle.
    #[cfg(test)]
    pub fn new(wakes: Vec<Wake>) -> Self {
        Self::with_predecessor(wakes, None)
    }

    /// One worker per wakeup handle; `predecessor` receives relayed datagrams.
    pub fn with_predecessor(wakes: Vec<Wake>, predecessor: Option<UnixDatagram>) -> Self {
        let workers = wakes
            .into_iter()
            .map(|wake| {
                CachePadded::new(WorkerShared {
                    queue: ArrayQueue::new(HANDOFF_QUEUE),
                    wake,
                    stats: StatCells::default(),
                    handover: HandoverCell::default(),
                })
            })
            .collect();
        Shared {
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
            workers,
            predecessor,
        }
    }

    pub fn stats(&self, index: usize) -> WorkerStats {
        let Some(w) = self.workers.get(index) else {
            return WorkerStats::default();
        };
        let s = &w.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        WorkerStats {
            running: s.running.load(Ordering::Relaxed),
            turns: get(&s.turns),
            idle: Duration::from_millis(now_ms.saturating_sub(get(&s.last_turn_ms))),
            datagrams_in: get(&s.datagrams_in),
            datagrams_out: get(&s.datagrams_out),
            send_errors: get(&s.send_errors),
            send_would_block: get(&s.send_would_block),
            recv_errors: get(&s.recv_errors),
            recv_buffers_exhausted: get(&s.recv_buffers_exhausted),
            truncated: get(&s.truncated),
            handoffs_out: get(&s.handoffs_out),
            handoffs_in: get(&s.handoffs_in),
            handoff_drops: get(&s.handoff_drops) + get(&s.relay_drops),
            timers: get(&s.timers),
            tcp: s.tcp.load(),
        }
    }
}

/// Local tallies, published once per turn.
#[derive(Default, Debug, Clone)]
pub(crate) struct Counters {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub send_errors: u64,
    pub send_would_block: u64,
    pub recv_errors: u64,
    pub recv_buffers_exhausted: u64,
    pub truncated: u64,
    pub handoffs_out: u64,
    pub handoffs_in: u64,
    pub handoff_drops: u64,
    pub timers: u64,
    pub tcp: TcpStats,
}

impl Counters {
    /// Accounts for one finished send.
    pub fn sent(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) => self.datagrams_out += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.send_errors += 1;
                self.send_would_block += 1;
            }
            Err(e) => {
                self.send_errors += 1;
                tracing::debug!(error = %e, "send failed");
            }
        }
    }
}

/// The driver-independent half of a worker: the core plus the bookkeeping around it.
pub(crate) struct Shell<C> {
    pub core: C,
    pub index: usize,
    pub counters: Counters,
    /// HEP capture; `None` when `[hep]` is off.
    hep: Option<crate::hep::Tap>,
    shared: Arc<Shared>,
    turns: u64,
    /// Workers that got a handoff this turn and still need a wakeup (deduplicated
    /// so a burst costs one eventfd write per target).
    to_wake: Vec<bool>,
    /// The sockets were handed over: publish `open_work` every turn.
    handed_over: bool,
    /// Relay frame being written (datagrams for the previous process).
    frame: Vec<u8>,
    /// The public socket, watched for a standing receive queue.
    backlog_fd: Option<RawFd>,
    /// Datagrams delivered this turn.
    turn_datagrams: u32,
    /// Since when busy turns have ended with the public socket's receive
    /// queue deep.
    backlog_since: Option<Instant>,
}

/// A turn that delivered fewer datagrams than this is not a backlog (and
/// costs no syscall): the queue drained as fast as it filled.
const BACKLOG_CHECK_AT: u32 = 16;

/// Whether a socket's receive queue is at least a quarter full (`SO_MEMINFO`:
/// bytes queued against `SO_RCVBUF`). A queue that merely holds what arrived
/// during the last turn is far below that; one the worker cannot drain grows
/// to the brim (and then the kernel drops).
pub(crate) fn receive_queue_deep(fd: RawFd) -> bool {
    // SK_MEMINFO_VARS (9 on every kernel since 4.6; the kernel copies at most `len`).
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is
    // that large, and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let rmem = info[libc::SK_MEMINFO_RMEM_ALLOC as usize];
    let rcvbuf = info[libc::SK_MEMINFO_RCVBUF as usize];
    r == 0 && rcvbuf > 0 && u64::from(rmem) * 4 >= u64::from(rcvbuf)
}

impl<C: Core> Shell<C> {
    pub fn new(mut core: C, index: usize, shared: Arc<Shared>) -> Self {
        let n = shared.workers.len();
        let hep = core.take_hep_tap();
        Shell {
            hep,
            core,
            index,
            counters: Counters::default(),
            shared,
            turns: 0,
            to_wake: vec![false; n],
            handed_over: false,
            frame: Vec::new(),
            backlog_fd: None,
            turn_datagrams: 0,
            backlog_since: None,
        }
    }

    /// Watch `fd` (the public socket) for a standing receive queue; see
    /// [`Core::on_backlog`].
    pub fn watch_backlog(&mut self, fd: RawFd) {
        self.backlog_fd = Some(fd);
    }

    /// How many of its first sockets this worker was asked to stop reading
    /// (a restart hand-over), until it has [`reported`](Shell::report_handover).
    pub fn handover_requested(&self) -> Option<usize> {
        if self.handed_over {
            return None;
        }
        let me = self.shared.workers.get(self.index)?;
        match me.handover.mute.load(Ordering::Acquire) {
            0 => None,
            n => Some(usize::from(n)),
        }
    }

    /// The driver no longer reads the handed-over sockets and has delivered
    /// everything it read from them: the core reports what it still owns.
    pub fn report_handover(&mut self, now: Instant) {
        self.handed_over = true;
        let report = self.core.handover(now);
        if let Some(me) = self.shared.workers.get(self.index) {
            // Published before the report, so nobody reads a stale 0.
            let open = self.core.open_work() as u64;
            me.stats.open_work.store(open, Ordering::Relaxed);
            if let Ok(mut cell) = me.handover.report.lock() {
                *cell = Some(report);
            }
        }
    }

    #[inline]
    pub fn deliver(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        data: &[u8],
        out: &mut Outbox,
    ) {
        self.counters.datagrams_in += 1;
        self.turn_datagrams += 1;
        if let Some(tap) = self.hep.as_mut() {
            tap.received(socket, src, data);
        }
        self.core.on_datagram(now, socket, src, data, out);
    }

    /// HEP capture is on: stream connections need their local address.
    #[inline]
    pub fn capturing(&self) -> bool {
        self.hep.is_some()
    }

    /// Captures one SIP message of a TCP connection (HEP), from `src` to `dst`.
    #[inline]
    pub fn capture_stream(&mut self, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        if let Some(tap) = self.hep.as_mut() {
            tap.stream(src, dst, data);
        }
    }

    /// Captures the datagrams about to be sent (HEP); call once before each flush.
    /// Stream sends are captured by `stream` once queued on their connection.
    #[inline]
    pub fn capture_sends(&mut self, out: &Outbox) {
        if let Some(tap) = self.hep.as_mut() {
            for (socket, dst, data) in out.iter() {
                tap.sent(socket, dst, data);
            }
        }
    }

    /// Delivers datagrams handed to this worker; at most one queue's worth per turn
    /// so a flood from other workers cannot starve our own sockets.
    pub fn poll_handoffs(&mut self, now: Instant, out: &mut Outbox) {
        let Some(me) = self.shared.workers.get(self.index) else {
            return;
        };
        for _ in 0..HANDOFF_QUEUE {
            let Some(h) = me.queue.pop() else { break };
            self.counters.handoffs_in += 1;
            self.core.on_datagram(now, h.socket, h.src, &h.data, out);
        }
    }

    pub fn has_handoffs(&self) -> bool {
        self.shared
            .workers
            .get(self.index)
            .is_some_and(|w| !w.queue.is_empty())
    }

    /// Runs the core's timer if its deadline has passed.
    pub fn poll_timer(&mut self, now: Instant, out: &mut Outbox) {
        if self.core.next_deadline().is_some_and(|d| d <= now) {
            self.counters.timers += 1;
            self.core.on_timer(now, out);
        }
    }

    /// How long the driver may sleep: until the core's next deadline, at most
    /// `MAX_WAIT`, zero if handoffs are already waiting.
    pub fn wait_time(&self, now: Instant) -> Duration {
        if self.has_handoffs() {
            return Duration::ZERO;
        }
        match self.core.next_deadline() {
            Some(d) => d.saturating_duration_since(now).min(MAX_WAIT),
            None => MAX_WAIT,
        }
    }

    /// Pushes this turn's handoffs onto their targets' queues and wakes them. A full
    /// queue or an unknown worker drops the datagram and counts it.
    pub fn route_handoffs(&mut self, out: &Outbox) {
        let mut any = false;
        for (target, socket, src, data) in out.handoffs() {
            if target & PREDECESSOR != 0 {
                self.relay(target & !PREDECESSOR, socket, src, data);
                continue;
            }
            let Some(w) = self.shared.workers.get(target) else {
                self.counters.handoff_drops += 1;
                continue;
            };
            let h = Handoff {
                socket,
                src,
                data: data.into(),
            };
            if w.queue.push(h).is_ok() {
                self.counters.handoffs_out += 1;
                self.to_wake[target] = true;
                any = true;
            } else {
                self.counters.handoff_drops += 1;
            }
        }
        if any {
            for (i, flag) in self.to_wake.iter_mut().enumerate() {
                if std::mem::take(flag) {
                    self.shared.workers[i].wake.wake();
                }
            }
        }
    }

    /// Sends a datagram to the previous process's worker `worker`; without one,
    /// or when its socket is full or gone, the datagram is dropped and counted.
    fn relay(&mut self, worker: usize, socket: SocketId, src: SocketAddr, data: &[u8]) {
        let Some(to) = self.shared.predecessor.as_ref() else {
            self.counters.handoff_drops += 1;
            return;
        };
        let worker = u8::try_from(worker).unwrap_or(u8::MAX);
        super::handover::encode(worker, socket, src, data, &mut self.frame);
        match to.send(&self.frame) {
            Ok(_) => self.counters.handoffs_out += 1,
            Err(_) => self.counters.handoff_drops += 1,
        }
    }

    /// Publishes counters and the heartbeat, and tells the core whether its
    /// public socket keeps a backlog; call once per loop turn.
    pub fn end_turn(&mut self, now: Instant) {
        self.turns += 1;
        if let Some(tap) = self.hep.as_mut() {
            tap.poll(now);
        }
        if let Some(fd) = self.backlog_fd {
            let backlogged = self.turn_datagrams >= BACKLOG_CHECK_AT && receive_queue_deep(fd);
            self.backlog_since = match (backlogged, self.backlog_since) {
                (false, _) => None,
                (true, None) => Some(now),
                (true, since) => since,
            };
            self.core.on_backlog(now, self.backlog_since);
        }
        self.turn_datagrams = 0;
        let Some(w) = self.shared.workers.get(self.index) else {
            return;
        };
        let s = &w.stats;
        let c = &self.counters;
        let set = |cell: &AtomicU64, v: u64| cell.store(v, Ordering::Relaxed);
        set(&s.turns, self.turns);
        set(
            &s.last_turn_ms,
            now.saturating_duration_since(self.shared.epoch).as_millis() as u64,
        );
        set(&s.datagrams_in, c.datagrams_in);
        set(&s.datagrams_out, c.datagrams_out);
        set(&s.send_errors, c.send_errors);
        set(&s.send_would_block, c.send_would_block);
        set(&s.recv_errors, c.recv_errors);
        set(&s.recv_buffers_exhausted, c.recv_buffers_exhausted);
        set(&s.truncated, c.truncated);
        set(&s.handoffs_out, c.handoffs_out);
        set(&s.handoffs_in, c.handoffs_in);
        set(&s.handoff_drops, c.handoff_drops);
        set(&s.timers, c.timers);
        if self.handed_over {
            set(&s.open_work, self.core.open_work() as u64);
        }
        s.tcp.store(&c.tcp);
    }

    pub fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    /// This worker's wakeup eventfd, if it has one (io_uring driver).
    pub fn wake_fd(&self) -> Option<RawFd> {
        match &self.shared.workers.get(self.index)?.wake {
            Wake::EventFd(e) => Some(e.raw()),
            Wake::Mio(_) => None,
        }
    }
}

/// Creates and binds one UDP socket (non-blocking, close-on-exec). The error names
/// the address so "address in use" is actionable.
pub(crate) fn bind(spec: &SocketSpec, addr: SocketAddr) -> io::Result<UdpSocket> {
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}"));
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(ctx)?;
    if addr.is_ipv6() {
        // Explicit so that "0.0.0.0:5060" and "[::]:5060" can be bound side by side.
        socket.set_only_v6(true).map_err(ctx)?;
    }
    if spec.reuse_port {
        socket.set_reuse_port(true).map_err(ctx)?;
    }
    if let Some(n) = spec.recv_buffer {
        socket.set_recv_buffer_size(n).map_err(ctx)?;
    }
    if let Some(n) = spec.send_buffer {
        socket.set_send_buffer_size(n).map_err(ctx)?;
    }
    socket.set_nonblocking(true).map_err(ctx)?;
    socket.bind(&addr.into()).map_err(ctx)?;
    Ok(socket.into())
}

/// Decodes a kernel `sockaddr_in` / `sockaddr_in6` (as the io_uring driver receives
/// it inside a provided buffer). `None` for anything else or a short buffer.
pub(crate) fn sockaddr_from_bytes(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_deep_receive_queue() {
        let rx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        rx.set_recv_buffer_size(64 * 1024).unwrap();
        rx.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let rx: UdpSocket = rx.into();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        assert!(!receive_queue_deep(rx.as_raw_fd()));
        tx.send_to(&[0u8; 500], to).unwrap();
        assert!(
            !receive_queue_deep(rx.as_raw_fd()),
            "one datagram is no backlog"
        );
        // Loopback delivers synchronously: fill until the queue is deep
        // (bounded; the kernel drops once the buffer is full).
        for _ in 0..1000 {
            if receive_queue_deep(rx.as_raw_fd()) {
                break;
            }
            tx.send_to(&[0u8; 500], to).unwrap();
        }
        assert!(receive_queue_deep(rx.as_raw_fd()));
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 600];
        while rx.recv_from(&mut buf).is_ok() {}
        assert!(!receive_queue_deep(rx.as_raw_fd()));
    }

    fn raw(addr: SocketAddr) -> Vec<u8> {
        let sa = socket2::SockAddr::from(addr);
        // SAFETY: `as_ptr` points at `len` initialised bytes of the sockaddr.
        unsafe { std::slice::from_raw_parts(sa.as_ptr().cast::<u8>(), sa.len() as usize) }.to_vec()
    }

    #[test]
    fn sockaddr_roundtrip_v4_v6() {
        for a in [
            "127.0.0.1:5060".parse::<SocketAddr>().unwrap(),
            "[::1]:5061".parse().unwrap(),
            "[fe80::1%3]:7".parse().unwrap(),
        ] {
            assert_eq!(sockaddr_from_bytes(&raw(a)), Some(a));
        }
    }

    #[test]
    fn sockaddr_rejects_short_and_unknown() {
        let v6 = raw("[::1]:5061".parse().unwrap());
        for n in 0..v6.len() {
            assert_eq!(sockaddr_from_bytes(&v6[..n]), None, "len {n}");
        }
        let mut unix = v6.clone();
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(sockaddr_from_bytes(&unix), None);
    }

    #[test]
    fn bind_error_names_the_address() {
        let first = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = first.local_addr().unwrap();
        let spec = SocketSpec::new(addr);
        let err = bind(&spec, addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
