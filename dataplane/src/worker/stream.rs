//! TCP and TLS for both drivers: a worker's listener and connections, kept in a mio `Poll`
//! of their own whose file descriptor the driver watches (the epoll driver registers
//! it in its `Poll`, the io_uring driver keeps a `PollAdd` on it). Framing, limits,
//! timeouts and flow tokens are the sans-IO `transport` module; this is only the
//! syscalls around it.
//!
//! Messages from a connection go to the core as from socket [`SOCK_TCP`] ([`SOCK_TLS`]
//! for a TLS connection) with the peer's address, on the worker that owns the connection (never handed to another:
//! replies must leave on the same connection). Sends to [`SOCK_TCP`] use an existing
//! connection with that peer only; sends to [`SOCK_TCP_OUT`] use the worker's pooled
//! connection to the destination or open one (non-blocking connect; bytes wait in
//! the connection's write queue until it is up). A failed connect is reported to the
//! core ([`Core::on_connect_failed`]) so the transaction fails over at once.
//!
//! A connection from the TLS listener carries a [`TlsSession`]: bytes read go
//! through it before the framer, bytes sent through it before the socket. To the
//! core it is a stream connection like a TCP one (replies and in-dialog requests
//! to its peer use it).
//!
//! A send to [`SOCK_TLS_OUT`] without a pooled connection opens one whose
//! `Sock` carries a client [`TlsSession`] (`[tls] ca`, the name and verification
//! the core gives for the destination): the ClientHello waits in the write queue
//! with the message behind it, and a handshake that fails (certificate not
//! trusted, not TLS, ...) is a failed connect, so the transaction fails over.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::shell::Shell;
use super::{Core, Outbox, SOCK_TCP, SOCK_TCP_OUT, SOCK_TLS, SOCK_TLS_OUT};
use crate::route::Cidr;
use crate::transport::proxy_protocol::{Rest, Step};
use crate::transport::tls::{TlsClient, TlsServer, TlsSession};
use crate::transport::{CloseReason, Conn, FlowId, Flows, Frame, FrameError, Limits, PONG};

/// Token of the listener in the streams' own `Poll` (connections use their slot index).
const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the TLS listener.
const TLS_LISTENER: Token = Token(usize::MAX - 2);
/// Bytes read per `read` call.
const READ_BUF: usize = 64 * 1024;
/// Reads per connection per turn before the others get a go (it stays on the ready list).
const READS_PER_TURN: usize = 4;
/// Accepts per turn before other work.
const ACCEPTS_PER_TURN: usize = 256;
/// A connection whose unsent bytes pass this is closed (a peer that stopped reading).
const MAX_BACKLOG: usize = 4 << 20;
/// An outbound connect that has not completed by then has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often connections are checked for slowloris and idle timeouts.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What the worker's TCP side listens on and enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSpec {
    /// Address of the `SO_REUSEPORT` listener (the public SIP address). Port 0: the
    /// port of the worker's first UDP socket.
    pub addr: SocketAddr,
    /// Limits of this worker's connections.
    pub limits: Limits,
    /// Sources whose connections start with a PROXY header (`[tcp]
    /// proxy_protocol_from`).
    pub proxy_from: Vec<Cidr>,
    /// The TLS listener (`[tls]`), whose connections share these limits.
    pub tls: Option<TlsSpec>,
    /// How connections to TLS destinations are verified (`[tls] ca`); without
    /// it a send to [`SOCK_TLS_OUT`] fails as a failed connect.
    pub tls_client: Option<TlsClient>,
}

/// The worker's TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSpec {
    /// Address of the `SO_REUSEPORT` listener.
    pub addr: SocketAddr,
    /// Certificates for new handshakes (swapped on reload).
    pub server: TlsServer,
}

/// TCP counters of one worker (cumulative, except `open`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections open now (inbound + outbound).
    pub open: u64,
    /// Inbound connections accepted.
    pub accepted: u64,
    /// Inbound connections refused (`max_connections` / `max_per_source`).
    pub refused: u64,
    /// Outbound connections established.
    pub connected: u64,
    /// Messages received over TCP.
    pub messages_in: u64,
    /// Messages sent over TCP.
    pub messages_out: u64,
    /// Sends dropped: no connection to the peer (a reply whose connection closed).
    pub no_connection: u64,
    /// TLS connections open now (part of `open`).
    pub tls_open: u64,
    /// TLS connections accepted (part of `accepted`).
    pub tls_accepted: u64,
    /// TLS handshakes that failed (bad client hello, client rejecting our
    /// certificate, ...); also closed as `tls`.
    pub tls_handshake_failures: u64,
    /// Of `tls_handshake_failures`: clients without a certificate `[tls]
    /// client_ca` signed (mutual TLS).
    pub tls_client_cert_failures: u64,
    /// Outbound TLS connections established (handshake done; part of `connected`
    /// is the TCP connect).
    pub tls_connected: u64,
    /// Outbound TLS handshakes that failed (destination's certificate not
    /// trusted or not for its name, not TLS, ...); also closed as `tls`.
    pub tls_out_handshake_failures: u64,
    /// Connections closed, by [`CloseReason::index`].
    pub closed: [u64; CloseReason::ALL.len()],
}

/// The driver's part of one connection.
pub(crate) struct Sock {
    stream: TcpStream,
    /// Bytes not yet accepted by the kernel.
    wbuf: Vec<u8>,
    /// Set while an outbound connect is in progress (since when).
    connecting: Option<Instant>,
    /// On the ready list (so it is queued once, without searching the list).
    queued: bool,
    /// Our end of the connection, looked up on first use (HEP capture only).
    local: Option<SocketAddr>,
    /// The TLS session of a connection from the TLS listener.
    tls: Option<Box<TlsSession>>,
}

impl Sock {
    fn new(stream: TcpStream, connecting: Option<Instant>) -> Sock {
        Sock {
            stream,
            wbuf: Vec::new(),
            connecting,
            queued: false,
            local: None,
            tls: None,
        }
    }

    /// Our end of the connection (for an outbound one, bound at `connect`).
    fn local(&mut self, peer: SocketAddr) -> SocketAddr {
        *self.local.get_or_insert_with(|| {
            self.stream.local_addr().unwrap_or_else(|_| {
                // Only on a socket already broken: an address of the right family.
                let ip: std::net::IpAddr = match peer {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
                };
                SocketAddr::new(ip, 0)
            })
        })
    }
}

pub(crate) struct Streams {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    accept_pending: bool,
    tls_listener: Option<(TcpListener, TlsServer)>,
    tls_accept_pending: bool,
    tls_client: Option<TlsClient>,
    /// Plaintext out of TLS records (reused) and records to send.
    plain: Vec<u8>,
    tls_out: Vec<u8>,
    flows: Flows<Sock>,
    /// Connections that may have unread bytes (edge-triggered readiness not yet
    /// drained): only these are read, never a scan over all connections.
    ready: Vec<FlowId>,
    ready_next: Vec<FlowId>,
    /// The `Poll` may hold events (its fd was readable).
    pending: bool,
    buf: Box<[u8]>,
    next_sweep: Instant,
    expired: Vec<(FlowId, CloseReason)>,
    /// Destinations whose connect failed, reported to the core next turn.
    failed: Vec<SocketAddr>,
    /// Sources that must start with a PROXY header (everyone else must not).
    proxy_from: Vec<Cidr>,
    /// Outbound connections opened and maybe still connecting: the sweep checks
    /// these for `CONNECT_TIMEOUT` without a scan over every connection.
    connecting: Vec<FlowId>,
    cert_log: CertLog,
}

/// Logs clients refused for their certificate (mutual TLS) with their
/// address, at most one line a second per worker: a client retrying in a loop
/// must not flood the log (the counter has them all).
#[derive(Default)]
struct CertLog {
    next: Option<Instant>,
    suppressed: u64,
}

impl CertLog {
    fn log(&mut self, now: Instant, peer: SocketAddr, error: &rustls::Error) {
        if self.next.is_some_and(|t| now < t) {
            self.suppressed += 1;
            return;
        }
        self.next = Some(now + Duration::from_secs(1));
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(%peer, %error, suppressed, "TLS client refused: no client certificate signed by tls.client_ca");
    }
}

impl Streams {
    pub fn new(
        listener: Option<StdTcpListener>,
        limits: Limits,
        proxy_from: Vec<Cidr>,
        tls: Option<(StdTcpListener, TlsServer)>,
        tls_client: Option<TlsClient>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let listener = match listener {
            Some(l) => {
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, LISTENER, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        let tls_listener = match tls {
            Some((l, server)) => {
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, TLS_LISTENER, Interest::READABLE)?;
                Some((l, server))
            }
            None => None,
        };
        Ok(Streams {
            tls_accept_pending: tls_listener.is_some(),
            tls_listener,
            tls_client,
            plain: Vec::new(),
            tls_out: Vec::new(),
            poll,
            events: Events::with_capacity(256),
            accept_pending: listener.is_some(),
            listener,
            flows: Flows::new(limits),
            ready: Vec::new(),
            ready_next: Vec::new(),
            pending: true,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            next_sweep: Instant::now() + SWEEP_EVERY,
            expired: Vec::new(),
            failed: Vec::new(),
            connecting: Vec::new(),
            proxy_from,
            cert_log: CertLog::default(),
        })
    }

    /// The fd the driver watches for readability: the streams' own epoll.
    pub fn fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// The fd became readable.
    pub fn wake(&mut self) {
        self.pending = true;
    }

    /// Work is waiting: the driver must not sleep.
    pub fn busy(&self) -> bool {
        self.pending
            || self.accept_pending
            || self.tls_accept_pending
            || !self.ready.is_empty()
            || !self.failed.is_empty()
    }

    /// One turn: readiness, accepts, reads (messages to the core), failed
    /// connects, timeouts.
    pub fn turn<C: Core>(&mut self, now: Instant, shell: &mut Shell<C>, out: &mut Outbox) {
        if self.pending {
            self.poll_events(now, shell);
        }
        if self.accept_pending {
            self.accept(now, false, shell);
        }
        if self.tls_accept_pending {
            self.accept(now, true, shell);
        }
        let mut ready = std::mem::take(&mut self.ready);
        for id in ready.drain(..) {
            if let Some(conn) = self.flows.get_mut(id) {
                conn.io.queued = false;
            }
            self.read(now, id, shell, out);
        }
        self.ready = ready;
        std::mem::swap(&mut self.ready, &mut self.ready_next);
        for dst in std::mem::take(&mut self.failed) {
            shell.core.on_connect_failed(now, dst, out);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.sweep(now, shell);
        }
        shell.counters.tcp.open = self.flows.len() as u64;
    }

    fn poll_events<C: Core>(&mut self, now: Instant, shell: &mut Shell<C>) {
        self.pending = false;
        if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::debug!(error = %e, "tcp poll failed");
            }
            self.pending = true;
            return;
        }
        // A full batch may have left events behind.
        self.pending = self.events.iter().count() >= self.events.capacity();
        // Taken out so the handlers may borrow `self`; put back below.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for e in events.iter() {
            let token = e.token();
            let readable = e.is_readable() || e.is_read_closed();
            let writable = e.is_writable();
            let error = e.is_error() || e.is_write_closed();
            if token == LISTENER {
                self.accept_pending = true;
                continue;
            }
            if token == TLS_LISTENER {
                self.tls_accept_pending = true;
                continue;
            }
            let Some(id) = self.flows.at(token.0) else {
                continue;
            };
            if writable || error {
                self.on_writable(now, id, shell);
            }
            if readable || error {
                self.mark_ready(id);
            }
        }
        self.events = events;
    }

    fn mark_ready(&mut self, id: FlowId) {
        if let Some(conn) = self.flows.get_mut(id) {
            if !std::mem::replace(&mut conn.io.queued, true) {
                self.ready.push(id);
            }
        }
    }

    /// Accepts from the TCP listener, or the TLS one (`tls`).
    fn accept<C: Core>(&mut self, now: Instant, tls: bool, shell: &mut Shell<C>) {
        for _ in 0..ACCEPTS_PER_TURN {
            let listener = match tls {
                false => self.listener.as_ref(),
                true => self.tls_listener.as_ref().map(|(l, _)| l),
            };
            let accepted = match listener {
                Some(l) => l.accept(),
                None => Err(io::ErrorKind::WouldBlock.into()),
            };
            let (stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // WouldBlock: drained. EMFILE and friends: retried at the next
                    // sweep (or the next connection's readiness) rather than
                    // spinning on it every turn.
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!(error = %e, "tcp accept failed");
                    }
                    match tls {
                        false => self.accept_pending = false,
                        true => self.tls_accept_pending = false,
                    }
                    return;
                }
            };
            // PROXY headers are for the plain TCP listener only.
            let proxied = !tls && crate::route::trust::contains(&self.proxy_from, peer.ip());
            if self.flows.check_inbound(peer, proxied).is_err() {
                // Dropping the stream closes it at once.
                shell.counters.tcp.refused += 1;
                continue;
            }
            let _ = stream.set_nodelay(true);
            let mut sock = Sock::new(stream, None);
            if let Some((_, server)) = self.tls_listener.as_ref().filter(|_| tls) {
                match server.session() {
                    Ok(session) => sock.tls = Some(Box::new(session)),
                    Err(e) => {
                        tracing::debug!(error = %e, "tls session setup failed");
                        shell.counters.tcp.refused += 1;
                        continue;
                    }
                }
            }
            let Ok(id) = self.flows.accept(now, peer, sock, proxied) else {
                shell.counters.tcp.refused += 1;
                continue;
            };
            if tls {
                if let Some(conn) = self.flows.get_mut(id) {
                    conn.preamble = None;
                    conn.handshaking = true;
                }
                shell.counters.tcp.tls_accepted += 1;
                shell.counters.tcp.tls_open += 1;
            }
            if let Some(conn) = self.flows.get_mut(id) {
                let r = self.poll.registry().register(
                    &mut conn.io.stream,
                    Token(id.index()),
                    Interest::READABLE | Interest::WRITABLE,
                );
                if r.is_err() {
                    self.close(id, CloseReason::Error, shell);
                    continue;
                }
            }
            shell.counters.tcp.accepted += 1;
            // Bytes may have arrived before registration.
            self.mark_ready(id);
        }
    }

    /// Reads what connection `id` has (up to a per-turn budget) and delivers
    /// complete messages to the core.
    fn read<C: Core>(&mut self, now: Instant, id: FlowId, shell: &mut Shell<C>, out: &mut Outbox) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.flows.get_mut(id) else {
                return;
            };
            if conn.io.connecting.is_some() {
                return;
            }
            let n = match conn.io.stream.read(&mut self.buf) {
                Ok(0) => return self.close(id, CloseReason::Peer, shell),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let reason = match e.kind() {
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                            CloseReason::Peer
                        }
                        _ => CloseReason::Error,
                    };
                    return self.close(id, reason, shell);
                }
            };
            conn.touch(now);
            let mut data = self.buf.get(..n).unwrap_or_default();
            if let Some(tls) = conn.io.tls.as_mut() {
                self.plain.clear();
                let fed = tls.feed(data, &mut self.plain);
                if conn.handshaking && !tls.handshaking() && conn.outbound {
                    shell.counters.tcp.tls_connected += 1;
                }
                conn.handshaking = tls.handshaking();
                // Handshake records, or the alert telling the peer why not.
                self.tls_out.clear();
                tls.output(&mut self.tls_out);
                let sent = queue_raw(&mut conn.io, &self.tls_out);
                if let Err(e) = fed {
                    tracing::debug!(peer = %conn.peer, error = %e.error, "tls failed");
                    if conn.outbound && (e.handshake || e.refused_by_peer()) {
                        shell.counters.tcp.tls_out_handshake_failures += 1;
                        if !conn.handshaking {
                            // Refused our client certificate (TLS 1.3): what
                            // waits on the connection fails over as after a
                            // failed connect (`close` does that for a
                            // connection still handshaking).
                            self.failed.push(conn.peer);
                        }
                    } else if e.handshake {
                        shell.counters.tcp.tls_handshake_failures += 1;
                        if e.peer_certificate() {
                            // Only with [tls] client_ca: no server session
                            // verifies a certificate otherwise.
                            shell.counters.tcp.tls_client_cert_failures += 1;
                            self.cert_log.log(now, conn.peer, &e.error);
                        }
                    }
                    return self.close(id, CloseReason::Tls, shell);
                }
                if let Err(reason) = sent {
                    return self.close(id, reason, shell);
                }
                data = &self.plain;
            }
            let Some(mut preamble) = conn.preamble.take() else {
                if let Err(reason) = frame(now, conn, data, &mut self.tls_out, shell, out) {
                    return self.close(id, reason, shell);
                }
                continue;
            };
            let (source, rest) = match preamble.feed(data) {
                Ok(Step::Wait) => {
                    conn.preamble = Some(preamble);
                    continue;
                }
                Ok(Step::Done { source, rest }) => (source, rest),
                Err(e) => {
                    tracing::debug!(peer = %conn.peer, error = %e, "tcp connection refused");
                    return self.close(id, CloseReason::ProxyHeader, shell);
                }
            };
            if preamble.required() {
                // The client's address stands for the connection from now on.
                let client = source.unwrap_or(conn.peer);
                if self.flows.readdress(id, client).is_err() {
                    shell.counters.tcp.refused += 1;
                    return self.close(id, CloseReason::Refused, shell);
                }
            }
            let Some(conn) = self.flows.get_mut(id) else {
                return;
            };
            let rest = match &rest {
                Rest::Data(at) => data.get(*at..).unwrap_or_default(),
                Rest::Buffered(bytes) => bytes,
            };
            if let Err(reason) = frame(now, conn, rest, &mut self.tls_out, shell, out) {
                return self.close(id, reason, shell);
            }
        }
        // Budget spent with bytes possibly left: read on next turn.
        if let Some(conn) = self.flows.get_mut(id) {
            conn.io.queued = true;
            self.ready_next.push(id);
        }
    }

    fn on_writable<C: Core>(&mut self, now: Instant, id: FlowId, shell: &mut Shell<C>) {
        let Some(conn) = self.flows.get_mut(id) else {
            return;
        };
        if conn.io.connecting.is_some() {
            let failed = match conn.io.stream.take_error() {
                Ok(Some(_)) | Err(_) => true,
                Ok(None) => match conn.io.stream.peer_addr() {
                    Ok(_) => false,
                    // Not connected yet (a spurious wakeup) or refused.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(_) => true,
                },
            };
            if failed {
                return self.close(id, CloseReason::ConnectFailed, shell);
            }
            conn.io.connecting = None;
            let _ = conn.io.stream.set_nodelay(true);
            shell.counters.tcp.connected += 1;
            conn.touch(now);
            // Reads may have been skipped while connecting.
            self.mark_ready(id);
        }
        let Some(conn) = self.flows.get_mut(id) else {
            return;
        };
        if flush(&mut conn.io).is_err() {
            self.close(id, CloseReason::Error, shell);
        }
    }

    /// Sends `data` for the core: `socket` is [`SOCK_TCP`] (existing connection to
    /// `dst` only), [`SOCK_TCP_OUT`] or [`SOCK_TLS_OUT`] (pooled or new
    /// connection to `dst`).
    pub fn send<C: Core>(
        &mut self,
        now: Instant,
        socket: u8,
        dst: SocketAddr,
        data: &[u8],
        shell: &mut Shell<C>,
    ) {
        let id = match self.flows.find(dst) {
            Some(id) => id,
            None if socket == SOCK_TCP_OUT || socket == SOCK_TLS_OUT => {
                match self.connect(now, dst, socket == SOCK_TLS_OUT, shell) {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::debug!(%dst, error = %e, "tcp connect failed");
                        shell.counters.tcp.closed[CloseReason::ConnectFailed.index()] += 1;
                        self.failed.push(dst);
                        return;
                    }
                }
            }
            None => {
                shell.counters.tcp.no_connection += 1;
                // Reported as a failed connect: a request sent on a
                // connection that closed (a branch to a phone registered
                // over it) fails at once instead of at its timer.
                self.failed.push(dst);
                return;
            }
        };
        let Some(conn) = self.flows.get_mut(id) else {
            return;
        };
        conn.touch(now);
        match queue(&mut conn.io, data, &mut self.tls_out) {
            Ok(()) => {
                shell.counters.tcp.messages_out += 1;
                if shell.capturing() {
                    let local = conn.io.local(conn.peer);
                    shell.capture_stream(local, conn.peer, data);
                }
            }
            Err(reason) => self.close(id, reason, shell),
        }
    }

    /// Opens a connection to `dst`; with `tls`, its client session is set up
    /// and the ClientHello queued.
    fn connect<C: Core>(
        &mut self,
        now: Instant,
        dst: SocketAddr,
        tls: bool,
        shell: &mut Shell<C>,
    ) -> io::Result<FlowId> {
        let session = match tls {
            false => None,
            true => {
                let Some(client) = &self.tls_client else {
                    return Err(io::Error::other("TLS destination but no [tls] ca"));
                };
                let peer = shell.core.tls_peer(dst);
                let mut session = client.session(&peer).map_err(io::Error::other)?;
                self.tls_out.clear();
                session.output(&mut self.tls_out);
                Some(Box::new(session))
            }
        };
        let stream = TcpStream::connect(dst)?;
        let mut sock = Sock::new(stream, Some(now));
        if let Some(session) = session {
            sock.tls = Some(session);
            // Sent once connected; the handshake must finish within the
            // header timeout, as an inbound one.
            queue_raw(&mut sock, &self.tls_out).map_err(|_| io::Error::other("queue"))?;
            shell.counters.tcp.tls_open += 1;
        }
        let handshaking = sock.tls.is_some();
        let id = self.flows.connect(now, dst, sock);
        if let Some(conn) = self.flows.get_mut(id) {
            conn.handshaking = handshaking;
        }
        let registered = match self.flows.get_mut(id) {
            Some(conn) => self.poll.registry().register(
                &mut conn.io.stream,
                Token(id.index()),
                Interest::READABLE | Interest::WRITABLE,
            ),
            None => Ok(()),
        };
        if let Err(e) = registered {
            if let Some(conn) = self.flows.remove(id) {
                if conn.io.tls.is_some() {
                    shell.counters.tcp.tls_open = shell.counters.tcp.tls_open.saturating_sub(1);
                }
            }
            return Err(e);
        }
        self.connecting.push(id);
        Ok(id)
    }

    /// Closes connections past their header or idle time, and connects that
    /// took too long.
    fn sweep<C: Core>(&mut self, now: Instant, shell: &mut Shell<C>) {
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.flows.expired(now, &mut expired);
        let flows = &self.flows;
        self.connecting.retain(|&id| {
            let Some(since) = flows.get(id).and_then(|c| c.io.connecting) else {
                // Connected or closed since.
                return false;
            };
            if now.saturating_duration_since(since) >= CONNECT_TIMEOUT {
                expired.push((id, CloseReason::ConnectFailed));
                return false;
            }
            true
        });
        for &(id, reason) in &expired {
            self.close(id, reason, shell);
        }
        self.expired = expired;
        // An accept that failed (EMFILE) left connections in the backlog.
        self.accept_pending |= self.listener.is_some();
        self.tls_accept_pending |= self.tls_listener.is_some();
    }

    fn close<C: Core>(&mut self, id: FlowId, reason: CloseReason, shell: &mut Shell<C>) {
        let Some(mut conn) = self.flows.remove(id) else {
            return;
        };
        let reason = match reason {
            // A refused or reset connect shows up as a read or write error.
            CloseReason::Peer | CloseReason::Error if conn.io.connecting.is_some() => {
                CloseReason::ConnectFailed
            }
            r => r,
        };
        // An outbound TLS connection closed before its handshake finished
        // (refused, timed out, closed by the peer) carried nothing either.
        if reason == CloseReason::ConnectFailed || (conn.outbound && conn.handshaking) {
            self.failed.push(conn.peer);
        }
        let _ = self.poll.registry().deregister(&mut conn.io.stream);
        if conn.io.tls.is_some() {
            shell.counters.tcp.tls_open = shell.counters.tcp.tls_open.saturating_sub(1);
        }
        shell.counters.tcp.closed[reason.index()] += 1;
        tracing::debug!(peer = %conn.peer, reason = reason.as_str(), "tcp connection closed");
    }

    /// Closes every connection (worker stopping).
    pub fn shutdown<C: Core>(&mut self, shell: &mut Shell<C>) {
        for id in self.flows.ids() {
            if let Some(mut conn) = self.flows.remove(id) {
                let _ = self.poll.registry().deregister(&mut conn.io.stream);
            }
        }
        shell.counters.tcp.open = 0;
        shell.counters.tcp.tls_open = 0;
    }
}

/// Frames `data` from connection `conn`: messages to the core (as from the
/// connection's peer), pongs queued; `Err` closes the connection.
fn frame<C: Core>(
    now: Instant,
    conn: &mut Conn<Sock>,
    data: &[u8],
    scratch: &mut Vec<u8>,
    shell: &mut Shell<C>,
    out: &mut Outbox,
) -> Result<(), CloseReason> {
    let peer = conn.peer;
    let Conn { framer, io, .. } = conn;
    let socket = if io.tls.is_some() { SOCK_TLS } else { SOCK_TCP };
    let local = shell.capturing().then(|| io.local(peer));
    let mut pings = 0u32;
    let mut messages = 0u64;
    let fed = framer.feed(now, data, |f| match f {
        Frame::Message(m) => {
            messages += 1;
            if let Some(local) = local {
                shell.capture_stream(peer, local, m);
            }
            shell.deliver(now, socket, peer, m, out);
        }
        Frame::Ping => pings += 1,
    });
    shell.counters.tcp.messages_in += messages;
    for _ in 0..pings {
        queue(io, PONG, scratch).map_err(|_| CloseReason::Error)?;
    }
    fed.map_err(|e| match e {
        FrameError::Oversize => CloseReason::Oversize,
        FrameError::MissingContentLength | FrameError::BadContentLength => CloseReason::Framing,
    })
}

/// Sends `data` on the connection: encrypted first on a TLS one (`scratch`
/// holds the records).
fn queue(sock: &mut Sock, data: &[u8], scratch: &mut Vec<u8>) -> Result<(), CloseReason> {
    let Some(tls) = sock.tls.as_mut() else {
        return queue_raw(sock, data);
    };
    if sock.wbuf.len() + data.len() > MAX_BACKLOG {
        return Err(CloseReason::Backlog);
    }
    tls.write(data).map_err(|_| CloseReason::Error)?;
    scratch.clear();
    tls.output(scratch);
    queue_raw(sock, scratch)
}

/// Writes `data` now if nothing is queued, else (or for what the kernel did not
/// take) queues it behind the rest.
fn queue_raw(sock: &mut Sock, data: &[u8]) -> Result<(), CloseReason> {
    if sock.connecting.is_none() && sock.wbuf.is_empty() {
        let mut written = 0;
        while written < data.len() {
            match sock.stream.write(data.get(written..).unwrap_or_default()) {
                Ok(0) => return Err(CloseReason::Error),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(match e.kind() {
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                            CloseReason::Peer
                        }
                        _ => CloseReason::Error,
                    })
                }
            }
        }
        let rest = data.get(written..).unwrap_or_default();
        sock.wbuf.extend_from_slice(rest);
    } else {
        if sock.wbuf.len() + data.len() > MAX_BACKLOG {
            return Err(CloseReason::Backlog);
        }
        sock.wbuf.extend_from_slice(data);
    }
    Ok(())
}

/// Writes as much of the queue as the kernel takes.
fn flush(sock: &mut Sock) -> Result<(), CloseReason> {
    let mut written = 0;
    while written < sock.wbuf.len() {
        match sock
            .stream
            .write(sock.wbuf.get(written..).unwrap_or_default())
        {
            Ok(0) => return Err(CloseReason::Error),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(CloseReason::Error),
        }
    }
    sock.wbuf.drain(..written);
    if sock.wbuf.is_empty() && sock.wbuf.capacity() > 64 * 1024 {
        sock.wbuf = Vec::new();
    }
    Ok(())
}

/// Binds a worker's `SO_REUSEPORT` TCP listener; the error names the address.
pub(crate) fn bind_listener(addr: SocketAddr) -> io::Result<StdTcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on TCP {addr}: {e}"));
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(ctx)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(ctx)?;
    }
    socket.set_reuse_address(true).map_err(ctx)?;
    socket.set_reuse_port(true).map_err(ctx)?;
    socket.set_nonblocking(true).map_err(ctx)?;
    socket.bind(&addr.into()).map_err(ctx)?;
    socket.listen(1024).map_err(ctx)?;
    Ok(socket.into())
}
