//! A worker's link to a TCP collector (`[hep] collector = "tcp:…"`).
//!
//! HEP3 over TCP is the packets back to back (each carries its own length). The
//! worker never waits for the collector: captures are appended to a bounded
//! buffer ([`StreamQueue`]) and written with non-blocking writes once per worker
//! turn ([`TcpLink::poll`]), so a turn costs one `write` however many messages it
//! captured. A full buffer drops the capture (counted); a lost connection is
//! re-opened with exponential backoff ([`Backoff`]) while captures keep queueing
//! up to the bound. The queue and the backoff are pure; [`TcpLink`] is the
//! syscalls around them.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::proxy::stats::{bump, ProxyStats};

/// Default bytes of captures a worker holds for its collector at most (`[hep]
/// queue_bytes`; about 4 000 typical SIP messages): enough to ride out a
/// collector restart at a few thousand messages per second, small enough to
/// never matter for memory.
pub const QUEUE_BYTES: usize = 4 << 20;
/// First reconnect delay; doubles per failed attempt up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connect that has not completed by then has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle, established connection is checked for a close by the
/// collector (a read), so that a dead collector shows before the next capture.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often a connect in progress is checked (two syscalls): a busy worker
/// turns far more often than that, and an unreachable collector would
/// otherwise cost those syscalls on every turn until the connect times out.
const CONNECTING_CHECK_EVERY: Duration = Duration::from_millis(10);

/// A bounded queue of whole HEP3 packets on their way into a byte stream.
///
/// Packets are only ever dropped whole: one that does not fit is refused, and
/// when a connection breaks in the middle of a packet that packet is skipped so
/// the next connection starts on a packet boundary (a collector would otherwise
/// lose its framing).
#[derive(Debug)]
pub struct StreamQueue {
    buf: Vec<u8>,
    /// Start of the first packet not completely written.
    head: usize,
    /// First byte not yet written (`head <= written <= buf.len()`).
    written: usize,
    cap: usize,
}

impl StreamQueue {
    /// A queue holding at most `cap` bytes of unwritten packets.
    pub fn new(cap: usize) -> StreamQueue {
        StreamQueue {
            buf: Vec::new(),
            head: 0,
            written: 0,
            cap,
        }
    }

    /// Appends one HEP3 packet (as [`encode`](super::encode) writes it: its
    /// length at bytes 4..6). `false`, and nothing queued, when it does not fit.
    pub fn push(&mut self, packet: &[u8]) -> bool {
        debug_assert!(packet.len() >= 6 && usize::from(be16(&packet[4..6])) == packet.len());
        if packet.len() < 6 || self.buf.len() - self.head + packet.len() > self.cap {
            return false;
        }
        if self.buf.len() + packet.len() > self.cap {
            // Written packets still at the front: move the rest down.
            self.buf.drain(..self.head);
            self.written -= self.head;
            self.head = 0;
        }
        let need = self.buf.len() + packet.len();
        if need > self.buf.capacity() {
            // Grow as a Vec would, but never past the bound.
            let target = (self.buf.capacity() * 2).clamp(need, self.cap);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(packet);
        true
    }

    /// The bytes still to write.
    pub fn unwritten(&self) -> &[u8] {
        self.buf.get(self.written..).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.written == self.buf.len()
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.buf.len() - self.written
    }

    /// `n` more bytes were written; returns how many packets that completed.
    pub fn wrote(&mut self, n: usize) -> u64 {
        self.written = (self.written + n).min(self.buf.len());
        let mut done = 0;
        while let Some(len) = self.packet_len(self.head) {
            if self.head + len > self.written {
                break;
            }
            self.head += len;
            done += 1;
        }
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
            self.written = 0;
        }
        done
    }

    /// The connection broke: a packet written in part is given up (returns 1,
    /// else 0) so that the next connection starts at a packet boundary.
    pub fn restart(&mut self) -> u64 {
        if self.written == self.head {
            return 0;
        }
        if let Some(len) = self.packet_len(self.head) {
            self.written = self.head + len;
        }
        self.wrote(0);
        1
    }

    /// Length of the packet starting at `at`, if one does.
    fn packet_len(&self, at: usize) -> Option<usize> {
        let len = usize::from(be16(self.buf.get(at + 4..at + 6)?));
        // Only `encode`'s packets are pushed; a bad length must still advance.
        Some(len.max(6).min(self.buf.len() - at))
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Reconnect timing: exponential from [`BACKOFF_MIN`] to [`BACKOFF_MAX`],
/// back to the start once a connection is established.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    delay: Duration,
    next: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: BACKOFF_MIN,
            next: None,
        }
    }
}

impl Backoff {
    /// May a connection be attempted at `now`?
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    /// An attempt failed (or a connection was lost) at `now`.
    pub fn failed(&mut self, now: Instant) {
        self.next = Some(now + self.delay);
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
    }

    /// A connection was established.
    pub fn connected(&mut self) {
        *self = Backoff::default();
    }
}

enum State {
    Down,
    Connecting {
        stream: TcpStream,
        since: Instant,
        checked: Option<Instant>,
    },
    Up {
        stream: TcpStream,
        checked: Instant,
    },
}

/// One worker's connection to a TCP collector, with its queue.
pub struct TcpLink {
    addr: SocketAddr,
    state: State,
    queue: StreamQueue,
    backoff: Backoff,
}

impl TcpLink {
    /// A link that connects on the first [`poll`](TcpLink::poll) and holds at
    /// most `queue_bytes` of captures.
    pub fn new(addr: SocketAddr, queue_bytes: usize) -> TcpLink {
        TcpLink {
            addr,
            state: State::Down,
            queue: StreamQueue::new(queue_bytes),
            backoff: Backoff::default(),
        }
    }

    /// Queues one packet; `false` (dropped) when the queue is full.
    pub fn push(&mut self, packet: &[u8]) -> bool {
        self.queue.push(packet)
    }

    /// Drives the link, never blocking: connects when down and due, completes a
    /// connect in progress, writes what is queued, notices a closed connection.
    /// Call once per worker turn.
    pub fn poll(&mut self, now: Instant, stats: &ProxyStats) {
        if matches!(self.state, State::Down) && self.backoff.due(now) {
            self.connect(now, stats);
        }
        if let State::Connecting {
            stream,
            since,
            checked,
        } = &mut self.state
        {
            if checked.is_some_and(|t| now.saturating_duration_since(t) < CONNECTING_CHECK_EVERY) {
                return;
            }
            *checked = Some(now);
            match connect_result(stream) {
                Some(Ok(())) => {
                    let _ = stream.set_nodelay(true);
                    if let State::Connecting { stream, .. } =
                        std::mem::replace(&mut self.state, State::Down)
                    {
                        self.state = State::Up {
                            stream,
                            checked: now,
                        };
                    }
                    self.backoff.connected();
                    bump(&stats.hep_connects);
                    tracing::debug!(collector = %self.addr, "HEP collector connected");
                }
                Some(Err(e)) => return self.connect_failed(now, &e, stats),
                None if now.saturating_duration_since(*since) >= CONNECT_TIMEOUT => {
                    let e = io::Error::from(io::ErrorKind::TimedOut);
                    return self.connect_failed(now, &e, stats);
                }
                None => return,
            }
        }
        let State::Up { stream, checked } = &mut self.state else {
            return;
        };
        let mut result = Ok(());
        if !self.queue.is_empty() {
            result = write_queue(stream, &mut self.queue, stats);
        } else if now.saturating_duration_since(*checked) >= CHECK_EVERY {
            *checked = now;
            result = check_open(stream);
        }
        if let Err(e) = result {
            tracing::debug!(collector = %self.addr, error = %e, "HEP collector connection lost");
            self.state = State::Down;
            bump(&stats.hep_disconnects);
            for _ in 0..self.queue.restart() {
                bump(&stats.hep_dropped);
            }
            self.backoff.failed(now);
        }
    }

    fn connect(&mut self, now: Instant, stats: &ProxyStats) {
        match start_connect(self.addr) {
            Ok(stream) => {
                self.state = State::Connecting {
                    stream,
                    since: now,
                    checked: None,
                }
            }
            Err(e) => self.connect_failed(now, &e, stats),
        }
    }

    fn connect_failed(&mut self, now: Instant, e: &io::Error, stats: &ProxyStats) {
        tracing::debug!(collector = %self.addr, error = %e, "HEP collector connect failed");
        self.state = State::Down;
        bump(&stats.hep_connect_failures);
        self.backoff.failed(now);
    }

    /// Bytes waiting for the collector.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// A non-blocking connect in progress (or already done, on loopback).
fn start_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// `None` while the connect is in progress.
fn connect_result(stream: &TcpStream) -> Option<io::Result<()>> {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Some(Err(e)),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Some(Ok(())),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
        Err(e) => Some(Err(e)),
    }
}

/// Writes as much of the queue as the kernel takes, counting the packets that
/// went out whole.
fn write_queue(
    stream: &mut TcpStream,
    queue: &mut StreamQueue,
    stats: &ProxyStats,
) -> io::Result<()> {
    while !queue.is_empty() {
        match stream.write(queue.unwritten()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                for _ in 0..queue.wrote(n) {
                    bump(&stats.hep_sent);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An idle connection the collector closed reads as end of stream (anything it
/// sends is read and ignored).
fn check_open(stream: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A packet of `n` bytes with a HEP3 header carrying its length.
    fn packet(n: usize, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; n];
        p[..4].copy_from_slice(b"HEP3");
        p[4..6].copy_from_slice(&(n as u16).to_be_bytes());
        p
    }

    #[test]
    fn queue_is_bounded_and_counts_whole_packets() {
        let mut q = StreamQueue::new(100);
        assert!(q.push(&packet(40, 1)));
        assert!(q.push(&packet(40, 2)));
        assert!(!q.push(&packet(40, 3)), "over the bound");
        assert_eq!(q.len(), 80);
        assert_eq!(q.wrote(30), 0);
        assert_eq!(q.wrote(20), 1);
        // 30 bytes left unwritten: 40 more fit again (written bytes are reclaimed).
        assert!(q.push(&packet(40, 4)));
        assert!(q.buf.capacity() <= 100);
        assert_eq!(&q.unwritten()[..30], &packet(40, 2)[10..]);
        assert_eq!(q.wrote(70), 2);
        assert!(q.is_empty());
        assert_eq!(q.buf.len(), 0, "an empty queue starts over at the front");
    }

    #[test]
    fn restart_skips_a_partly_written_packet() {
        let mut q = StreamQueue::new(1000);
        q.push(&packet(40, 1));
        q.push(&packet(50, 2));
        assert_eq!(q.restart(), 0, "nothing written: nothing lost");
        q.wrote(10);
        assert_eq!(q.restart(), 1);
        assert_eq!(q.unwritten(), &packet(50, 2)[..]);
        assert_eq!(q.wrote(50), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let t = Instant::now();
        let mut b = Backoff::default();
        assert!(b.due(t));
        b.failed(t);
        assert!(!b.due(t + BACKOFF_MIN / 2));
        assert!(b.due(t + BACKOFF_MIN));
        for _ in 0..20 {
            b.failed(t);
        }
        assert!(!b.due(t + BACKOFF_MAX - Duration::from_millis(1)));
        assert!(b.due(t + BACKOFF_MAX));
        b.connected();
        assert!(b.due(t));
    }

    /// Polls until `done` or a few seconds pass.
    fn poll_until(link: &mut TcpLink, stats: &ProxyStats, done: impl Fn(&TcpLink) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(link) && Instant::now() < deadline {
            link.poll(Instant::now(), stats);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn link_connects_writes_and_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = ProxyStats::default();
        let mut link = TcpLink::new(addr, QUEUE_BYTES);
        assert!(link.push(&packet(100, 7)));
        poll_until(&mut link, &stats, |l| l.queued() == 0);
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = vec![0u8; 100];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(got, packet(100, 7));
        let s = stats.snapshot();
        assert_eq!((s.hep_connects, s.hep_sent), (1, 1));

        // The collector goes away: noticed while idle, reconnected later.
        drop(conn);
        drop(listener);
        poll_until(&mut link, &stats, |_| stats.snapshot().hep_disconnects == 1);
        poll_until(&mut link, &stats, |_| {
            stats.snapshot().hep_connect_failures >= 1
        });
        assert!(link.push(&packet(60, 8)), "queued while down");
        let listener = TcpListener::bind(addr).unwrap();
        poll_until(&mut link, &stats, |l| l.queued() == 0);
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = vec![0u8; 60];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(got, packet(60, 8));
        let s = stats.snapshot();
        assert_eq!((s.hep_connects, s.hep_sent, s.hep_dropped), (2, 2, 0));
    }
}
