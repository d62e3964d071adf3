//! Thin I/O shells that run a sans-IO [`Core`] on each worker thread.
//!
//! [`start`] binds every socket up front (bind errors surface synchronously, naming
//! the address), then spawns one named thread per worker (`sipvane-w0`, ...), which
//! builds its core with the caller's factory (so cores need not be `Send`) and runs
//! a driver loop: io_uring (multishot `RecvMsg` over a provided-buffer ring, batched
//! `SendMsg`) or epoll via mio. Both drivers share the bookkeeping in `shell`:
//! handoffs between workers over bounded queues, timers from
//! [`Core::next_deadline`], counters and a heartbeat for `/health`.
//!
//! A worker never sleeps longer than 100 ms, so [`Pool::stop`] returns promptly
//! even when a wakeup is lost.

mod epoll;
pub mod handover;
mod outbox;
mod shell;
mod stream;
mod uring;

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use handover::Injector;

/// The marker [`Outbox::handoffs`] sets on targets in the previous process.
#[cfg(test)]
pub(crate) fn outbox_predecessor_flag() -> usize {
    outbox::PREDECESSOR
}
pub use outbox::Outbox;
pub use stream::{TcpSpec, TcpStats, TlsSpec};

use shell::{EventFd, Shared, Shell, Wake};

/// Index into a worker's socket list (0 = public `SO_REUSEPORT`, 1 = private, ...),
/// or one of the TCP pseudo-sockets below.
pub type SocketId = u8;

/// Messages from the worker's TCP connections arrive as from this socket, with the
/// peer's address; a send to it goes over the existing connection with that peer
/// (never a new one: a reply whose connection closed is dropped and counted).
pub const SOCK_TCP: SocketId = 0x70;
/// A send to it goes over the worker's pooled TCP connection to the destination,
/// opening one if there is none.
pub const SOCK_TCP_OUT: SocketId = 0x71;
/// As [`SOCK_TCP_OUT`] for a TLS destination: a new connection runs the TLS
/// client handshake (verified as [`Core::tls_peer`] says) before the message.
pub const SOCK_TLS_OUT: SocketId = 0x72;

/// Messages from the worker's TLS connections (inbound or outbound) arrive as
/// from this socket: the core knows which peers it reaches over TLS (its Via
/// towards them, the Record-Route facing them). A send to it is a send to
/// [`SOCK_TCP`] (the existing connection with that peer).
pub const SOCK_TLS: SocketId = 0x73;

/// A socket id the stream side sends on (a connection, not a UDP socket).
pub fn is_stream(socket: SocketId) -> bool {
    matches!(socket, SOCK_TCP | SOCK_TCP_OUT | SOCK_TLS_OUT | SOCK_TLS)
}

/// A sans-IO state machine run by one worker thread. It never touches sockets or
/// clocks: the driver passes `now` and the received bytes in, and sends what the
/// core queued in the [`Outbox`].
pub trait Core: 'static {
    /// A datagram arrived on `socket` from `src` (or was handed over by another
    /// worker, with the socket and source it originally arrived with).
    fn on_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        data: &[u8],
        out: &mut Outbox,
    );
    /// Called when `now >= next_deadline()`.
    fn on_timer(&mut self, now: Instant, out: &mut Outbox);
    /// A TCP connection to `dst` (opened for a [`SOCK_TCP_OUT`] send) could not be
    /// established; what was sent on it is lost. The default ignores it.
    fn on_connect_failed(&mut self, now: Instant, dst: SocketAddr, out: &mut Outbox) {
        let _ = (now, dst, out);
    }
    /// Who a new TLS connection to `dst` (for a [`SOCK_TLS_OUT`] send) is to:
    /// the name its certificate must carry and whether it is verified. The
    /// default: the IP address, verified.
    fn tls_peer(&self, dst: SocketAddr) -> crate::transport::tls::TlsPeer {
        crate::transport::tls::TlsPeer {
            name: dst.ip().to_string(),
            verify: true,
        }
    }
    /// The next instant `on_timer` should run, if any.
    fn next_deadline(&self) -> Option<Instant>;
    /// Called once per loop turn: `since` is when the worker's public socket
    /// started to keep its receive queue at least a quarter full across busy
    /// turns (it cannot keep up with what arrives), `None` once it is below
    /// that. The default ignores it.
    fn on_backlog(&mut self, now: Instant, since: Option<Instant>) {
        let _ = (now, since);
    }
    /// The HEP capture sender the driver should feed with every datagram received
    /// from and sent on the worker's sockets; taken once when the driver starts.
    /// `None` (the default) captures nothing and costs one `Option` check.
    fn take_hep_tap(&mut self) -> Option<crate::hep::Tap> {
        None
    }
    /// A restart hand-over: the driver has stopped reading the handed-over
    /// sockets and delivered all it read. The core answers what its successor
    /// must know (opaque to the pool; e.g. its live transaction keys) and from
    /// now on only sees datagrams relayed back to it, handoffs and timers.
    fn handover(&mut self, _now: Instant) -> Vec<u8> {
        Vec::new()
    }
    /// Work still in progress after a hand-over (open transactions); the
    /// process exits once every worker reports 0.
    fn open_work(&self) -> usize {
        0
    }
}

/// What a process taking over from a running one starts with.
#[derive(Debug, Default)]
pub struct Inherit {
    /// Already-bound sockets by worker and [`SocketId`], used instead of
    /// binding the spec's address; missing entries are bound as usual.
    pub sockets: Vec<Vec<UdpSocket>>,
    /// Where [`Outbox::to_predecessor`] datagrams go.
    pub predecessor: Option<UnixDatagram>,
}

/// Which I/O driver runs the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll.
    #[default]
    Auto,
    /// io_uring (Linux ≥ 6.0); an error if unavailable.
    Uring,
    /// epoll through mio.
    Epoll,
}

/// An unknown driver name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown I/O driver {0:?} (expected \"auto\", \"io_uring\" or \"epoll\")")]
pub struct ParseDriverError(pub String);

impl FromStr for Driver {
    type Err = ParseDriverError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Driver::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Driver::Uring),
            "epoll" => Ok(Driver::Epoll),
            _ => Err(ParseDriverError(s.to_owned())),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Auto => "auto",
            Driver::Uring => "io_uring",
            Driver::Epoll => "epoll",
        })
    }
}

/// One UDP socket of a worker.
///
/// `reuse_port` sockets form a `SO_REUSEPORT` group across workers. With port 0, the
/// first such socket gets an ephemeral port and every later `reuse_port` spec with
/// the same requested address is bound to that same port (tests rely on this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketSpec {
    /// Address to bind.
    pub addr: SocketAddr,
    /// Set `SO_REUSEPORT` before binding.
    pub reuse_port: bool,
    /// `SO_RCVBUF` in bytes (the kernel doubles it); `None` keeps the default.
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes; `None` keeps the default.
    pub send_buffer: Option<usize>,
}

impl SocketSpec {
    /// A plain socket on `addr`: no `SO_REUSEPORT`, default buffers.
    pub fn new(addr: SocketAddr) -> Self {
        SocketSpec {
            addr,
            reuse_port: false,
            recv_buffer: None,
            send_buffer: None,
        }
    }

    /// A `SO_REUSEPORT` socket on `addr`, default buffers.
    pub fn reuse_port(addr: SocketAddr) -> Self {
        SocketSpec {
            reuse_port: true,
            ..SocketSpec::new(addr)
        }
    }
}

/// What one worker thread owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerSpec {
    /// Its sockets; the position is the [`SocketId`] (at most 256).
    pub sockets: Vec<SocketSpec>,
    /// CPU to pin the thread to; failure to pin is logged, not fatal.
    pub cpu: Option<usize>,
    /// TCP listener and limits; `None`: no TCP (no listener, no outbound connections).
    pub tcp: Option<TcpSpec>,
}

/// Passed to the core factory on the worker thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerContext {
    /// This worker's index (0-based).
    pub index: usize,
    /// Number of workers in the pool.
    pub workers: usize,
    /// Bound address of each of this worker's sockets, by [`SocketId`].
    pub local_addrs: Vec<SocketAddr>,
}

/// A snapshot of one worker's liveness and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// The driver loop is running (false before start, after stop, or if it died).
    pub running: bool,
    /// Loop turns so far; grows at least every 100 ms while the worker is healthy.
    pub turns: u64,
    /// Time since the last completed loop turn (rounded to ms).
    pub idle: Duration,
    /// Datagrams received from the worker's sockets.
    pub datagrams_in: u64,
    /// Datagrams sent successfully.
    pub datagrams_out: u64,
    /// Failed sends, including `send_would_block`.
    pub send_errors: u64,
    /// Sends dropped because the socket buffer was full (`EAGAIN`).
    pub send_would_block: u64,
    /// Receive errors.
    pub recv_errors: u64,
    /// io_uring only: times the provided receive buffers ran out (`ENOBUFS`). Nothing
    /// is lost (datagrams wait in the socket buffer and the receive is re-armed), but
    /// a steadily growing count means the ring needs more buffers.
    pub recv_buffers_exhausted: u64,
    /// Datagrams dropped because they did not fit the receive buffer.
    pub truncated: u64,
    /// Datagrams this worker handed to another worker.
    pub handoffs_out: u64,
    /// Datagrams other workers handed to this one.
    pub handoffs_in: u64,
    /// Handoffs dropped because the target queue was full or the target unknown.
    pub handoff_drops: u64,
    /// `Core::on_timer` calls.
    pub timers: u64,
    /// TCP connections and messages.
    pub tcp: TcpStats,
}

/// Internal seam between the shared loop bookkeeping and one driver's syscalls.
trait Io {
    fn run<C: Core>(&mut self, shell: &mut Shell<C>) -> io::Result<()>;
}

/// Binds all sockets, resolves the driver and starts one thread per worker.
///
/// Returns once every worker has built its core and driver; any bind, driver or
/// start-up failure is returned here (and already-started workers are stopped).
pub fn start<C, F>(driver: Driver, workers: Vec<WorkerSpec>, make_core: F) -> io::Result<Pool>
where
    C: Core,
    F: Fn(WorkerContext) -> C + Send + Sync + 'static,
{
    start_with(driver, workers, Inherit::default(), make_core)
}

/// [`start`] for a process that takes over from a running one: sockets it
/// inherited replace binding, and datagrams of the old process's transactions
/// are relayed to `inherit.predecessor`.
pub fn start_with<C, F>(
    driver: Driver,
    workers: Vec<WorkerSpec>,
    inherit: Inherit,
    make_core: F,
) -> io::Result<Pool>
where
    C: Core,
    F: Fn(WorkerContext) -> C + Send + Sync + 'static,
{
    let n = workers.len();
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a worker pool needs at least one worker",
        ));
    }
    let bound = bind_all(&workers, inherit.sockets)?;
    // The pool keeps a handle on every socket: a later hand-over passes them on.
    let sockets = bound
        .iter()
        .map(|socks| socks.iter().map(UdpSocket::try_clone).collect())
        .collect::<io::Result<Vec<Vec<UdpSocket>>>>()?;
    let listeners = bind_listeners(&workers, &bound)?;
    let local_addrs = bound
        .iter()
        .map(|socks| socks.iter().map(UdpSocket::local_addr).collect())
        .collect::<io::Result<Vec<Vec<SocketAddr>>>>()?;
    let resolved = resolve(driver)?;
    let mut wakes = Vec::with_capacity(n);
    let mut polls = Vec::with_capacity(n);
    for _ in 0..n {
        if resolved == Driver::Uring {
            wakes.push(Wake::EventFd(EventFd::new()?));
            polls.push(None);
        } else {
            let poll = mio::Poll::new()?;
            wakes.push(Wake::Mio(mio::Waker::new(poll.registry(), epoll::WAKE)?));
            polls.push(Some(poll));
        }
    }
    if let Some(p) = &inherit.predecessor {
        p.set_nonblocking(true)?;
    }
    let shared = Arc::new(Shared::with_predecessor(wakes, inherit.predecessor));
    let make_core = Arc::new(make_core);

    let (tx, rx) = mpsc::channel::<(usize, io::Result<()>)>();
    let mut pool = Pool {
        driver: resolved,
        shared: Arc::clone(&shared),
        threads: Vec::with_capacity(n),
        local_addrs: local_addrs.clone(),
        sockets,
    };
    let per_worker = workers.into_iter().zip(bound).zip(polls).zip(listeners);
    for (index, (((spec, sockets), poll), listener)) in per_worker.enumerate() {
        let ctx = WorkerContext {
            index,
            workers: n,
            local_addrs: local_addrs[index].clone(),
        };
        let shared = Arc::clone(&shared);
        let make_core = Arc::clone(&make_core);
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("sipvane-w{index}"))
            .spawn(move || {
                let (listener, tls_listener) = listener;
                let tcp = spec.tcp.map(|t| {
                    let tls = tls_listener.zip(t.tls.map(|t| t.server));
                    (listener, t.limits, t.proxy_from, tls, t.tls_client)
                });
                worker_main(ctx, spec.cpu, sockets, tcp, poll, shared, &*make_core, tx)
            });
        match spawned {
            Ok(h) => pool.threads.push(h),
            Err(e) => {
                let _ = pool.shutdown();
                return Err(e);
            }
        }
    }
    drop(tx);

    for _ in 0..n {
        let failure = match rx.recv() {
            Ok((_, Ok(()))) => continue,
            Ok((i, Err(e))) => io::Error::new(e.kind(), format!("worker {i}: {e}")),
            Err(_) => io::Error::other("a worker thread died during start-up"),
        };
        let _ = pool.shutdown();
        return Err(failure);
    }
    tracing::info!(driver = %resolved, workers = n, "worker pool started");
    Ok(pool)
}

type Listeners = (Option<std::net::TcpListener>, Option<std::net::TcpListener>);

/// Binds the TCP listener of every worker that has one (on the port of its first
/// UDP socket when the spec's port is 0), and its TLS listener.
fn bind_listeners(workers: &[WorkerSpec], udp: &[Vec<UdpSocket>]) -> io::Result<Vec<Listeners>> {
    workers
        .iter()
        .zip(udp)
        .map(|(w, socks)| {
            let Some(tcp) = &w.tcp else {
                return Ok((None, None));
            };
            let tls = match &tcp.tls {
                Some(t) => Some(stream::bind_listener(t.addr)?),
                None => None,
            };
            let mut addr = tcp.addr;
            if addr.port() == 0 {
                if let Some(s) = socks.first() {
                    addr.set_port(s.local_addr()?.port());
                }
            }
            Ok((Some(stream::bind_listener(addr)?), tls))
        })
        .collect()
}

/// Binds every socket of every worker on the calling thread, except those
/// inherited (`inherited[worker][socket]`), which are used as they are.
fn bind_all(
    workers: &[WorkerSpec],
    inherited: Vec<Vec<UdpSocket>>,
) -> io::Result<Vec<Vec<UdpSocket>>> {
    let mut inherited: Vec<std::vec::IntoIter<UdpSocket>> =
        inherited.into_iter().map(Vec::into_iter).collect();
    // (requested address, port the kernel picked) of reuse_port groups bound to port 0.
    let mut groups: Vec<(SocketAddr, u16)> = Vec::new();
    let mut bound = Vec::with_capacity(workers.len());
    for (i, w) in workers.iter().enumerate() {
        if w.sockets.len() > usize::from(SocketId::MAX) + 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("worker {i} has {} sockets, at most 256", w.sockets.len()),
            ));
        }
        let mut socks = Vec::with_capacity(w.sockets.len());
        for spec in &w.sockets {
            if let Some(sock) = inherited.get_mut(i).and_then(Iterator::next) {
                sock.set_nonblocking(true)?;
                socks.push(sock);
                continue;
            }
            let ephemeral_group = spec.reuse_port && spec.addr.port() == 0;
            let mut addr = spec.addr;
            let known = groups.iter().find(|(req, _)| *req == spec.addr);
            if let (true, Some((_, port))) = (ephemeral_group, known) {
                addr.set_port(*port);
            }
            let sock = shell::bind(spec, addr)?;
            if ephemeral_group && known.is_none() {
                groups.push((spec.addr, sock.local_addr()?.port()));
            }
            socks.push(sock);
        }
        bound.push(socks);
    }
    Ok(bound)
}

/// Whether the io_uring driver works here, checked once per process.
///
/// The probe runs on a throwaway thread: when a ring is torn down, the kernel
/// queues signal-style task work on every thread that used it, which makes that
/// thread's next interruptible syscall with a timeout (e.g. a `recv` with
/// `SO_RCVTIMEO`) fail with `EINTR`. That must not hit the caller of `start`.
fn uring_available() -> io::Result<()> {
    static VERDICT: std::sync::OnceLock<Result<(), (io::ErrorKind, String)>> =
        std::sync::OnceLock::new();
    let verdict = VERDICT.get_or_init(|| {
        let probed = std::thread::Builder::new()
            .name("sipvane-probe".into())
            .spawn(uring::probe)
            .map_err(|e| (e.kind(), e.to_string()))?
            .join();
        match probed {
            Ok(r) => r.map_err(|e| (e.kind(), e.to_string())),
            Err(_) => Err((io::ErrorKind::Other, "io_uring probe panicked".into())),
        }
    });
    verdict
        .clone()
        .map_err(|(kind, msg)| io::Error::new(kind, msg))
}

/// Picks the driver actually used.
fn resolve(driver: Driver) -> io::Result<Driver> {
    match driver {
        Driver::Epoll => Ok(Driver::Epoll),
        Driver::Uring => match uring_available() {
            Ok(()) => Ok(Driver::Uring),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("io_uring driver unavailable: {e}"),
            )),
        },
        Driver::Auto => match uring_available() {
            Ok(()) => {
                tracing::info!("I/O driver: io_uring");
                Ok(Driver::Uring)
            }
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable, falling back to epoll");
                Ok(Driver::Epoll)
            }
        },
    }
}

/// Clears the `running` flag however the worker ends, panics included.
struct RunningGuard<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The TCP side a worker starts with: its listener (if bound) and limits.
type TcpSetup = Option<(
    Option<std::net::TcpListener>,
    crate::transport::Limits,
    Vec<crate::route::Cidr>,
    Option<(std::net::TcpListener, crate::transport::tls::TlsServer)>,
    Option<crate::transport::tls::TlsClient>,
)>;

/// Body of a worker thread. `poll` is set for the epoll driver, `None` for io_uring.
#[allow(clippy::too_many_arguments)]
fn worker_main<C, F>(
    ctx: WorkerContext,
    cpu: Option<usize>,
    sockets: Vec<UdpSocket>,
    tcp: TcpSetup,
    poll: Option<mio::Poll>,
    shared: Arc<Shared>,
    make_core: &F,
    ready: mpsc::Sender<(usize, io::Result<()>)>,
) -> io::Result<()>
where
    C: Core,
    F: Fn(WorkerContext) -> C,
{
    let index = ctx.index;
    if let Some(id) = cpu {
        // Pin first so the driver's buffers are allocated on the local NUMA node.
        // core_affinity's CPU_SET panics (without unwinding) past CPU_SETSIZE.
        let in_range = id < libc::CPU_SETSIZE as usize;
        if !in_range || !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            tracing::warn!(worker = index, cpu = id, "could not pin worker to CPU");
        }
    }
    let streams = match tcp
        .map(|(l, limits, proxy_from, tls, client)| {
            stream::Streams::new(l, limits, proxy_from, tls, client)
        })
        .transpose()
    {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("tcp setup failed: {e}");
            let _ = ready.send((index, Err(io::Error::new(e.kind(), msg))));
            return Err(e);
        }
    };
    match poll {
        None => match uring::Uring::new(sockets, streams) {
            Ok(io) => serve(io, ctx, shared, make_core, ready),
            Err(e) => {
                let msg = format!("io_uring setup failed: {e}");
                let _ = ready.send((index, Err(io::Error::new(e.kind(), msg))));
                Err(e)
            }
        },
        Some(poll) => match epoll::Epoll::new(sockets, streams, poll) {
            Ok(io) => serve(io, ctx, shared, make_core, ready),
            Err(e) => {
                let msg = format!("epoll setup failed: {e}");
                let _ = ready.send((index, Err(io::Error::new(e.kind(), msg))));
                Err(e)
            }
        },
    }
}

fn serve<D, C, F>(
    mut io: D,
    ctx: WorkerContext,
    shared: Arc<Shared>,
    make_core: &F,
    ready: mpsc::Sender<(usize, io::Result<()>)>,
) -> io::Result<()>
where
    D: Io,
    C: Core,
    F: Fn(WorkerContext) -> C,
{
    let index = ctx.index;
    let core = make_core(ctx);
    let running = &shared.workers[index].stats.running;
    running.store(true, Ordering::Relaxed);
    let _guard = RunningGuard(running);
    let mut shell = Shell::new(core, index, Arc::clone(&shared));
    let _ = ready.send((index, Ok(())));
    drop(ready);
    let result = io.run(&mut shell);
    if let Err(e) = &result {
        tracing::error!(worker = index, error = %e, "worker loop failed");
    }
    result
}

/// A running set of workers. Dropping it stops them too (ignoring errors).
pub struct Pool {
    driver: Driver,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    local_addrs: Vec<Vec<SocketAddr>>,
    /// A handle on each worker's sockets (the workers own clones).
    sockets: Vec<Vec<UdpSocket>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("driver", &self.driver)
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// The driver in use (never `Auto`).
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.local_addrs.len()
    }

    /// Bound addresses of worker `worker`'s sockets by [`SocketId`] (empty if there is
    /// no such worker).
    pub fn local_addrs(&self, worker: usize) -> &[SocketAddr] {
        self.local_addrs.get(worker).map_or(&[], Vec::as_slice)
    }

    /// Loop-turn counter of each worker: a healthy worker's grows at least every
    /// 100 ms.
    pub fn heartbeats(&self) -> Vec<u64> {
        (0..self.workers())
            .map(|i| self.shared.stats(i).turns)
            .collect()
    }

    /// Counters and liveness of each worker.
    pub fn stats(&self) -> Vec<WorkerStats> {
        (0..self.workers()).map(|i| self.shared.stats(i)).collect()
    }

    /// A read-only view of the workers for the control thread (health,
    /// status, metrics), which does not own the pool.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Worker `worker`'s sockets by [`SocketId`] (empty if there is no such
    /// worker): what a restart hands to the successor.
    pub fn sockets(&self, worker: usize) -> &[UdpSocket] {
        self.sockets.get(worker).map_or(&[], Vec::as_slice)
    }

    /// Restart hand-over: every worker stops reading its first `mute` sockets
    /// (the successor reads them from now on), delivers what it already read,
    /// and reports [`Core::handover`]. Returns the reports by worker once all
    /// are in, or `TimedOut` after `timeout`. Sending, timers and handoffs go
    /// on; [`Monitor::open_work`] tells when the workers are done.
    pub fn handover(&self, mute: usize, timeout: Duration) -> io::Result<Vec<Vec<u8>>> {
        let mute = u8::try_from(mute.max(1)).unwrap_or(u8::MAX);
        for w in self.shared.workers.iter() {
            w.handover.mute.store(mute, Ordering::Release);
            w.wake.wake();
        }
        let deadline = Instant::now() + timeout;
        let mut reports: Vec<Option<Vec<u8>>> = vec![None; self.workers()];
        loop {
            for (w, r) in self.shared.workers.iter().zip(reports.iter_mut()) {
                if r.is_none() {
                    *r = w.handover.report.lock().ok().and_then(|mut c| c.take());
                }
            }
            if reports.iter().all(Option::is_some) {
                return Ok(reports.into_iter().flatten().collect());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "workers did not stop reading their sockets in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Feeds datagrams relayed by a successor to the workers.
    pub fn injector(&self) -> Injector {
        Injector {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Signals every worker, wakes it and joins it. Returns the first worker error
    /// (or panic) if any.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        for w in self.shared.workers.iter() {
            w.wake.wake();
        }
        let mut result = Ok(());
        for (i, h) in self.threads.drain(..).enumerate() {
            let r = match h.join() {
                Ok(r) => r,
                Err(_) => Err(io::Error::other(format!("worker {i} panicked"))),
            };
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// Reads the workers' heartbeats, counters and queue depths; cheap to clone.
/// Reading never writes anything a worker reads.
#[derive(Clone)]
pub struct Monitor {
    shared: Arc<Shared>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("workers", &self.workers())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.workers.len()
    }

    /// Counters and liveness of each worker.
    pub fn stats(&self) -> Vec<WorkerStats> {
        (0..self.workers()).map(|i| self.shared.stats(i)).collect()
    }

    /// Workers whose loop ended although the pool was not told to stop: a
    /// panic or a fatal I/O error. Their transactions and dialogs are lost;
    /// the control thread stops the process with a non-zero exit so the
    /// service manager restarts it (docs/reliability.md).
    pub fn dead_workers(&self) -> Vec<usize> {
        if self.shared.stop.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.shared
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.stats.running.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .collect()
    }

    /// Datagrams waiting in each worker's handoff queue.
    pub fn queue_depths(&self) -> Vec<usize> {
        self.shared.workers.iter().map(|w| w.queue.len()).collect()
    }

    /// Capacity of each handoff queue.
    pub fn queue_capacity(&self) -> usize {
        shell::HANDOFF_QUEUE
    }

    /// After [`Pool::handover`]: the workers' [`Core::open_work`], summed.
    pub fn open_work(&self) -> u64 {
        self.shared
            .workers
            .iter()
            .map(|w| w.stats.open_work.load(Ordering::Relaxed))
            .sum()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names_roundtrip() {
        for (s, d) in [
            ("auto", Driver::Auto),
            ("uring", Driver::Uring),
            ("io_uring", Driver::Uring),
            ("IO_URING", Driver::Uring),
            ("epoll", Driver::Epoll),
        ] {
            assert_eq!(s.parse::<Driver>(), Ok(d));
        }
        for d in [Driver::Auto, Driver::Uring, Driver::Epoll] {
            assert_eq!(d.to_string().parse::<Driver>(), Ok(d));
        }
        assert!("kqueue".parse::<Driver>().is_err());
    }

    #[test]
    fn reuse_port_groups_share_the_ephemeral_port() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let specs = vec![
            WorkerSpec {
                sockets: vec![SocketSpec::reuse_port(any), SocketSpec::new(any)],
                cpu: None,
                tcp: None,
            },
            WorkerSpec {
                sockets: vec![SocketSpec::reuse_port(any), SocketSpec::new(any)],
                cpu: None,
                tcp: None,
            },
        ];
        let bound = bind_all(&specs, Vec::new()).unwrap();
        let port = |w: usize, s: usize| bound[w][s].local_addr().unwrap().port();
        assert_eq!(port(0, 0), port(1, 0));
        assert_ne!(port(0, 1), port(1, 1));
        assert_ne!(port(0, 0), port(0, 1));
    }

    #[test]
    fn empty_pool_is_rejected() {
        struct Nop;
        impl Core for Nop {
            fn on_datagram(
                &mut self,
                _: Instant,
                _: SocketId,
                _: SocketAddr,
                _: &[u8],
                _: &mut Outbox,
            ) {
            }
            fn on_timer(&mut self, _: Instant, _: &mut Outbox) {}
            fn next_deadline(&self) -> Option<Instant> {
                None
            }
        }
        let err = start(Driver::Epoll, vec![], |_| Nop).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
