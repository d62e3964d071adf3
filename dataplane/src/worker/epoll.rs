//! epoll driver (through mio): the portable reference the io_uring driver is
//! tested against.

use std::io;
use std::net::UdpSocket as StdUdpSocket;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::shell::Shell;
use super::stream::Streams;
use super::{is_stream, Core, Io, Outbox, SocketId};

/// Largest UDP payload (IPv6 without jumbograms), so nothing is ever truncated.
const RECV_BUF: usize = 64 * 1024;
/// Datagrams read from one socket per turn before the others (and timers) get a go.
const RECV_BATCH: usize = 256;
/// Flush mid-batch once this many entries are queued, to bound the outbox.
const FLUSH_AT: usize = 64;
/// Token of the worker's `mio::Waker`.
pub(crate) const WAKE: Token = Token(usize::MAX);
/// Token of the TCP side's own epoll fd (see `stream`).
const STREAMS: Token = Token(usize::MAX - 1);

pub(crate) struct Epoll {
    poll: Poll,
    events: Events,
    sockets: Vec<UdpSocket>,
    /// Edge-triggered readiness not yet drained to `WouldBlock`.
    readable: Vec<bool>,
    /// Sockets handed over to a successor: never read again.
    muted: Vec<bool>,
    buf: Box<[u8]>,
    out: Outbox,
    /// TCP listener and connections; `None` without TCP.
    streams: Option<Streams>,
}

impl Epoll {
    /// `poll` already carries the worker's `mio::Waker` (token `WAKE`), created on
    /// the starting thread so that other workers can wake this one from the outset.
    pub fn new(
        sockets: Vec<StdUdpSocket>,
        streams: Option<Streams>,
        poll: Poll,
    ) -> io::Result<Self> {
        let mut socks = Vec::with_capacity(sockets.len());
        for (i, s) in sockets.into_iter().enumerate() {
            let mut s = UdpSocket::from_std(s);
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)?;
            socks.push(s);
        }
        if let Some(st) = &streams {
            poll.registry()
                .register(&mut SourceFd(&st.fd()), STREAMS, Interest::READABLE)?;
        }
        Ok(Epoll {
            streams,
            poll,
            events: Events::with_capacity(256),
            // Sockets may already hold datagrams queued before registration.
            readable: vec![true; socks.len()],
            muted: vec![false; socks.len()],
            sockets: socks,
            buf: vec![0u8; RECV_BUF].into_boxed_slice(),
            out: Outbox::new(),
        })
    }
}

impl Io for Epoll {
    fn run<C: Core>(&mut self, shell: &mut Shell<C>) -> io::Result<()> {
        if let Some(public) = self.sockets.first() {
            shell.watch_backlog(std::os::fd::AsRawFd::as_raw_fd(public));
        }
        while !shell.stopping() {
            let now = Instant::now();
            let busy = self.streams.as_ref().is_some_and(Streams::busy);
            let timeout = if busy || self.readable.iter().any(|r| *r) {
                Duration::ZERO
            } else {
                shell.wait_time(now)
            };
            match self.poll.poll(&mut self.events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in self.events.iter() {
                match ev.token() {
                    // Edge-triggered; the waker needs no draining. Handoffs are
                    // polled every turn anyway.
                    WAKE => {}
                    STREAMS => {
                        if let Some(st) = self.streams.as_mut() {
                            st.wake();
                        }
                    }
                    Token(i) => {
                        if let Some(r) = self.readable.get_mut(i) {
                            *r = !self.muted.get(i).copied().unwrap_or(true);
                        }
                    }
                }
            }

            let now = Instant::now();
            if let Some(k) = shell.handover_requested() {
                // Whatever is still queued in these sockets is the successor's.
                for i in 0..k.min(self.sockets.len()) {
                    let _ = self.poll.registry().deregister(&mut self.sockets[i]);
                    self.muted[i] = true;
                    self.readable[i] = false;
                }
                shell.report_handover(now);
            }
            for i in 0..self.sockets.len() {
                if self.readable[i] {
                    let (socks, streams) = (&self.sockets, self.streams.as_mut());
                    self.readable[i] =
                        !drain_socket(socks, streams, i, &mut self.buf, now, shell, &mut self.out);
                }
            }
            if let Some(st) = self.streams.as_mut() {
                st.turn(now, shell, &mut self.out);
            }
            shell.poll_handoffs(now, &mut self.out);
            shell.poll_timer(now, &mut self.out);
            flush(&self.sockets, self.streams.as_mut(), shell, &mut self.out);
            shell.end_turn(now);
        }
        if let Some(st) = self.streams.as_mut() {
            st.shutdown(shell);
        }
        Ok(())
    }
}

/// Reads up to `RECV_BATCH` datagrams from socket `i`; `true` once it would block.
fn drain_socket<C: Core>(
    sockets: &[UdpSocket],
    mut streams: Option<&mut Streams>,
    i: usize,
    buf: &mut [u8],
    now: Instant,
    shell: &mut Shell<C>,
    out: &mut Outbox,
) -> bool {
    let Some(sock) = sockets.get(i) else {
        return true;
    };
    // `i` < 256 is guaranteed by `start`; the fallback is never taken.
    let id = SocketId::try_from(i).unwrap_or(SocketId::MAX);
    for _ in 0..RECV_BATCH {
        match sock.recv_from(buf) {
            Ok((len, src)) => {
                let data = buf.get(..len).unwrap_or(buf);
                shell.deliver(now, id, src, data, out);
                if out.len() >= FLUSH_AT {
                    flush(sockets, streams.as_deref_mut(), shell, out);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                shell.counters.recv_errors += 1;
                tracing::debug!(socket = i, error = %e, "recv failed");
            }
        }
    }
    false
}

/// Sends every queued datagram (never blocking: `EAGAIN` drops and counts) and
/// routes the handoffs.
fn flush<C: Core>(
    sockets: &[UdpSocket],
    mut streams: Option<&mut Streams>,
    shell: &mut Shell<C>,
    out: &mut Outbox,
) {
    if out.is_empty() {
        return;
    }
    shell.capture_sends(out);
    let now = Instant::now();
    for (socket, dst, data) in out.iter() {
        if is_stream(socket) {
            match streams.as_deref_mut() {
                Some(st) => st.send(now, socket, dst, data, shell),
                None => shell.counters.tcp.no_connection += 1,
            }
            continue;
        }
        let result = match sockets.get(usize::from(socket)) {
            Some(s) => s.send_to(data, dst).map(drop),
            // An id the core made up; `ErrorKind` alone avoids an allocation.
            None => Err(io::ErrorKind::InvalidInput.into()),
        };
        shell.counters.sent(result);
    }
    shell.route_handoffs(out);
    out.clear();
}
