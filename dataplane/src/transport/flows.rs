//! A worker's stream connections ("flows", RFC 5626): a slab addressed by
//! generation-checked tokens, per-source counts, the outbound pool by destination,
//! and the timeouts that close idle and slowloris connections.
//!
//! A [`FlowId`] names one connection for its lifetime only: when the slot is reused
//! its generation changes, so a token kept by a transaction (or written into a
//! Record-Route) for a connection that has since closed finds nothing instead of a
//! stranger's connection.
//!
//! Sans-IO: `T` is whatever the driver keeps per connection (its socket); the table
//! never does I/O and is fed `now`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use super::framer::Framer;
use super::proxy_protocol::Preamble;

/// Limits of one worker's stream connections (`[tcp]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message (header + body) in bytes.
    pub max_message: usize,
    /// A header must be complete this long after its first byte (slowloris).
    pub header_timeout: Duration,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// Inbound connections one source IP may hold on this worker.
    pub max_per_source: u32,
    /// Inbound connections this worker holds at most.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 65_535,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_per_source: 256,
            max_connections: 16_384,
        }
    }
}

/// Names one connection: slot index and the slot's generation when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowId {
    index: u32,
    generation: u32,
}

impl FlowId {
    /// Packs the token into 64 bits (to carry it in a message or a transaction).
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// The inverse of [`to_u64`](FlowId::to_u64). Any value is accepted: a forged or
    /// stale one simply finds no connection.
    pub fn from_u64(v: u64) -> FlowId {
        FlowId {
            index: v as u32,
            generation: (v >> 32) as u32,
        }
    }

    /// The slot index (stable while the connection lives; used as a driver token).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The worker holds `max_connections` inbound connections.
    #[error("too many connections")]
    Full,
    /// The source holds `max_per_source` inbound connections.
    #[error("too many connections from this source")]
    PerSource,
}

/// Why a connection closed (one metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed it (or reset it).
    Peer,
    /// A read or write failed.
    Error,
    /// The stream could not be framed (no or bad Content-Length).
    Framing,
    /// A message over `max_message`.
    Oversize,
    /// A header (or PROXY header) not completed within `header_timeout`.
    Slowloris,
    /// No traffic for `idle_timeout`.
    Idle,
    /// An outbound connect failed.
    ConnectFailed,
    /// Sending queued more than the connection may buffer.
    Backlog,
    /// A missing or malformed PROXY header from `proxy_protocol_from`, or one
    /// from anyone else.
    ProxyHeader,
    /// The client named by a PROXY header holds `max_per_source` connections.
    Refused,
    /// A TLS handshake or record failed (also counted as `tls_handshake_failures`
    /// when it was the handshake).
    Tls,
}

impl CloseReason {
    /// Every reason, in metric order.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::Peer,
        CloseReason::Error,
        CloseReason::Framing,
        CloseReason::Oversize,
        CloseReason::Slowloris,
        CloseReason::Idle,
        CloseReason::ConnectFailed,
        CloseReason::Backlog,
        CloseReason::ProxyHeader,
        CloseReason::Refused,
        CloseReason::Tls,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::Error => "error",
            CloseReason::Framing => "framing",
            CloseReason::Oversize => "oversize",
            CloseReason::Slowloris => "slowloris",
            CloseReason::Idle => "idle",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::Backlog => "backlog",
            CloseReason::ProxyHeader => "proxy_header",
            CloseReason::Refused => "refused",
            CloseReason::Tls => "tls",
        }
    }

    /// Position in [`ALL`](CloseReason::ALL).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One connection.
#[derive(Debug)]
pub struct Conn<T> {
    /// The peer's address: the client's once a PROXY header named it.
    pub peer: SocketAddr,
    /// We connected to the peer (a pooled outbound connection).
    pub outbound: bool,
    /// The stream framing state.
    pub framer: Framer,
    /// The driver's part (socket, write queue, ...).
    pub io: T,
    /// Inbound connections until their first SIP byte: the PROXY header expected
    /// (from `proxy_protocol_from`) or refused (from anyone else).
    pub preamble: Option<Preamble>,
    /// A TLS handshake not finished yet: it must finish within `header_timeout`.
    pub handshaking: bool,
    last_activity: Instant,
    opened: Instant,
    /// Counted in `per_source` (a connection from a PROXY sender is counted under
    /// its client's address once the header named it).
    counted: bool,
}

impl<T> Conn<T> {
    /// Records traffic in either direction (resets the idle clock).
    pub fn touch(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// Why this connection should be closed at `now`, if it should.
    pub fn expired(&self, now: Instant, limits: &Limits) -> Option<CloseReason> {
        // A PROXY header expected or begun is a header too.
        let preamble = self
            .preamble
            .as_ref()
            .is_some_and(|p| p.required() || p.pending() > 0);
        if (preamble || self.handshaking)
            && now.saturating_duration_since(self.opened) >= limits.header_timeout
        {
            return Some(CloseReason::Slowloris);
        }
        if self
            .framer
            .header_since()
            .is_some_and(|t| now.saturating_duration_since(t) >= limits.header_timeout)
        {
            return Some(CloseReason::Slowloris);
        }
        if now.saturating_duration_since(self.last_activity) >= limits.idle_timeout {
            return Some(CloseReason::Idle);
        }
        None
    }
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    conn: Option<Conn<T>>,
}

/// One worker's connections.
#[derive(Debug)]
pub struct Flows<T> {
    limits: Limits,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// Inbound connections per source IP (entries removed at zero: bounded by
    /// `max_connections`).
    per_source: AHashMap<IpAddr, u32>,
    /// Outbound connections by destination: the per-worker pool.
    pool: AHashMap<SocketAddr, FlowId>,
    /// Inbound connections by peer address (unique: the kernel allows one
    /// connection per address pair), so replies find the request's connection.
    by_peer: AHashMap<SocketAddr, FlowId>,
    inbound: usize,
}

impl<T> Flows<T> {
    /// An empty table with `limits`.
    pub fn new(limits: Limits) -> Self {
        Flows {
            limits,
            slots: Vec::new(),
            free: Vec::new(),
            per_source: AHashMap::new(),
            pool: AHashMap::new(),
            by_peer: AHashMap::new(),
            inbound: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Open connections (inbound + outbound).
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// `true` when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Open inbound connections.
    pub fn inbound(&self) -> usize {
        self.inbound
    }

    /// Whether an inbound connection from `peer` would be admitted now (checked
    /// before the driver accepts, or right after to close it at once). `proxied`:
    /// `peer` sends a PROXY header (`proxy_protocol_from`), so the per-source limit
    /// applies to the client it names, not to the balancer carrying everyone.
    pub fn check_inbound(&self, peer: SocketAddr, proxied: bool) -> Result<(), Refused> {
        if self.inbound >= self.limits.max_connections {
            return Err(Refused::Full);
        }
        if !proxied {
            self.check_source(peer)?;
        }
        Ok(())
    }

    fn check_source(&self, peer: SocketAddr) -> Result<(), Refused> {
        let held = self.per_source.get(&peer.ip()).copied().unwrap_or(0);
        if held >= self.limits.max_per_source {
            return Err(Refused::PerSource);
        }
        Ok(())
    }

    /// Admits an accepted connection from `peer` (`proxied`: see
    /// [`check_inbound`](Flows::check_inbound); the connection must then start with
    /// a PROXY header, anyone else's must not).
    pub fn accept(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        io: T,
        proxied: bool,
    ) -> Result<FlowId, Refused> {
        self.check_inbound(peer, proxied)?;
        if !proxied {
            *self.per_source.entry(peer.ip()).or_insert(0) += 1;
        }
        self.inbound += 1;
        let id = self.insert(now, peer, false, io);
        if let Some(conn) = self.get_mut(id) {
            conn.counted = !proxied;
            conn.preamble = Some(Preamble::new(proxied));
        }
        self.by_peer.insert(peer, id);
        Ok(id)
    }

    /// The PROXY header of connection `id` named `client` (or named none:
    /// `client` is then the balancer's own address): from now on it is the
    /// connection's peer, replies to it find this connection, and it counts
    /// against `client`'s per-source limit.
    pub fn readdress(&mut self, id: FlowId, client: SocketAddr) -> Result<(), Refused> {
        let Some(conn) = self.get(id) else {
            return Ok(());
        };
        if conn.outbound || conn.counted {
            return Ok(());
        }
        let old = conn.peer;
        self.check_source(client)?;
        *self.per_source.entry(client.ip()).or_insert(0) += 1;
        if self.by_peer.get(&old) == Some(&id) {
            self.by_peer.remove(&old);
        }
        self.by_peer.insert(client, id);
        if let Some(conn) = self.get_mut(id) {
            conn.peer = client;
            conn.counted = true;
        }
        Ok(())
    }

    /// The connection a message for `peer` goes over: the inbound one from that
    /// address, else the pooled outbound one to it.
    pub fn find(&self, peer: SocketAddr) -> Option<FlowId> {
        self.by_peer
            .get(&peer)
            .or_else(|| self.pool.get(&peer))
            .copied()
    }

    /// Adds an outbound connection to `dst` (being connected) to the pool; a
    /// previous pooled connection to `dst` stays open but is no longer chosen.
    pub fn connect(&mut self, now: Instant, dst: SocketAddr, io: T) -> FlowId {
        let id = self.insert(now, dst, true, io);
        self.pool.insert(dst, id);
        id
    }

    /// The pooled outbound connection to `dst`, if one is open.
    pub fn pooled(&self, dst: SocketAddr) -> Option<FlowId> {
        self.pool.get(&dst).copied()
    }

    fn insert(&mut self, now: Instant, peer: SocketAddr, outbound: bool, io: T) -> FlowId {
        let conn = Conn {
            peer,
            outbound,
            framer: Framer::new(self.limits.max_message),
            io,
            preamble: None,
            handshaking: false,
            last_activity: now,
            opened: now,
            counted: false,
        };
        if let Some(index) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                slot.conn = Some(conn);
                return FlowId {
                    index,
                    generation: slot.generation,
                };
            }
        }
        // More than u32::MAX slots cannot be reached: every slot holds a socket.
        let index = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(Slot {
            generation: 0,
            conn: Some(conn),
        });
        FlowId {
            index,
            generation: 0,
        }
    }

    /// The connection `id` names, if it is still open.
    pub fn get(&self, id: FlowId) -> Option<&Conn<T>> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_ref()
    }

    /// The connection `id` names, if it is still open.
    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut Conn<T>> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_mut()
    }

    /// The id of whatever connection occupies slot `index` (drivers get readiness
    /// by slot index).
    pub fn at(&self, index: usize) -> Option<FlowId> {
        let slot = self.slots.get(index)?;
        slot.conn.as_ref()?;
        Some(FlowId {
            index: u32::try_from(index).ok()?,
            generation: slot.generation,
        })
    }

    /// Closes `id`: returns its connection (the driver drops its socket) and makes
    /// the token stale.
    pub fn remove(&mut self, id: FlowId) -> Option<Conn<T>> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let conn = slot.conn.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        if conn.outbound {
            if self.pool.get(&conn.peer) == Some(&id) {
                self.pool.remove(&conn.peer);
            }
        } else {
            self.inbound -= 1;
            if self.by_peer.get(&conn.peer) == Some(&id) {
                self.by_peer.remove(&conn.peer);
            }
            let ip = conn.peer.ip();
            if let Some(n) = self.per_source.get_mut(&ip).filter(|_| conn.counted) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&ip);
                }
            }
        }
        Some(conn)
    }

    /// Every connection that should close at `now`, with the reason. A full scan:
    /// drivers call it about once a second, not per loop turn.
    pub fn expired(&self, now: Instant, into: &mut Vec<(FlowId, CloseReason)>) {
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(conn) = &slot.conn else { continue };
            if let Some(reason) = conn.expired(now, &self.limits) {
                into.push((
                    FlowId {
                        index: i as u32,
                        generation: slot.generation,
                    },
                    reason,
                ));
            }
        }
    }

    /// Every open connection's id (for shutdown).
    pub fn ids(&self) -> Vec<FlowId> {
        (0..self.slots.len()).filter_map(|i| self.at(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, ip], port))
    }

    fn limits() -> Limits {
        Limits {
            max_per_source: 2,
            max_connections: 3,
            ..Limits::default()
        }
    }

    #[test]
    fn stale_tokens_never_reach_a_reused_slot() {
        let now = Instant::now();
        let mut t = Flows::new(limits());
        let a = t.accept(now, addr(1, 1000), "a", false).unwrap();
        assert_eq!(t.get(a).map(|c| c.io), Some("a"));
        assert_eq!(t.remove(a).map(|c| c.io), Some("a"));
        let b = t.accept(now, addr(2, 1000), "b", false).unwrap();
        assert_eq!(a.index(), b.index(), "the slot is reused");
        assert!(t.get(a).is_none());
        assert!(t.get_mut(a).is_none());
        assert!(t.remove(a).is_none());
        assert_eq!(t.get(b).map(|c| c.io), Some("b"));
        assert_eq!(FlowId::from_u64(b.to_u64()), b);
        assert!(t.get(FlowId::from_u64(u64::MAX)).is_none());
        assert_eq!(t.at(b.index()), Some(b));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn per_source_and_total_limits() {
        let now = Instant::now();
        let mut t = Flows::new(limits());
        let a1 = t.accept(now, addr(1, 1), (), false).unwrap();
        t.accept(now, addr(1, 2), (), false).unwrap();
        assert_eq!(
            t.accept(now, addr(1, 3), (), false),
            Err(Refused::PerSource)
        );
        t.accept(now, addr(2, 1), (), false).unwrap();
        assert_eq!(t.accept(now, addr(3, 1), (), false), Err(Refused::Full));
        // Outbound connections do not count against inbound limits.
        let out = t.connect(now, addr(9, 5060), ());
        assert_eq!(t.len(), 4);
        assert_eq!(t.find(addr(9, 5060)), Some(out));
        assert_eq!(t.find(addr(1, 1)), Some(a1));
        assert_eq!(t.find(addr(1, 9)), None);
        assert_eq!(t.inbound(), 3);
        t.remove(a1);
        assert_eq!(t.find(addr(1, 1)), None);
        assert_eq!(t.check_inbound(addr(1, 3), false), Ok(()));
        t.accept(now, addr(1, 3), (), false).unwrap();
        assert_eq!(t.per_source.get(&addr(1, 0).ip()), Some(&2));
        for id in t.ids() {
            t.remove(id);
        }
        assert!(t.is_empty());
        assert!(t.per_source.is_empty(), "no entry is left at zero");
        assert_eq!(t.inbound(), 0);
    }

    #[test]
    fn proxied_connections_count_under_their_client() {
        let now = Instant::now();
        let mut t = Flows::new(limits());
        let lb = addr(7, 1);
        // The balancer's own address is not limited per source...
        let a = t.accept(now, lb, (), true).unwrap();
        let b = t.accept(now, addr(7, 2), (), true).unwrap();
        assert!(t.get(a).unwrap().preamble.as_ref().unwrap().required());
        assert!(t.per_source.is_empty());
        // ...its clients are, once their headers named them.
        t.readdress(a, addr(1, 1)).unwrap();
        t.readdress(b, addr(1, 2)).unwrap();
        assert_eq!(t.find(addr(1, 1)), Some(a));
        assert_eq!(t.find(lb), None);
        assert_eq!(t.get(a).unwrap().peer, addr(1, 1));
        let c = t.accept(now, addr(7, 3), (), true).unwrap();
        assert_eq!(t.readdress(c, addr(1, 3)), Err(Refused::PerSource));
        assert_eq!(t.accept(now, addr(7, 4), (), true), Err(Refused::Full));
        t.remove(c);
        t.remove(a);
        assert_eq!(t.per_source.get(&addr(1, 0).ip()), Some(&1));
        t.remove(b);
        assert!(t.per_source.is_empty());
        assert_eq!(t.inbound(), 0);
    }

    #[test]
    fn a_missing_proxy_header_is_slowloris() {
        let t0 = Instant::now();
        let lim = Limits {
            header_timeout: Duration::from_secs(10),
            ..Limits::default()
        };
        let mut t = Flows::new(lim);
        let proxied = t.accept(t0, addr(7, 1), (), true).unwrap();
        let quiet = t.accept(t0, addr(1, 1), (), false).unwrap();
        let mut out = Vec::new();
        t.expired(t0 + Duration::from_secs(10), &mut out);
        assert_eq!(out, vec![(proxied, CloseReason::Slowloris)]);
        assert!(t.get(quiet).is_some());
    }

    #[test]
    fn pool_finds_the_latest_outbound_connection() {
        let now = Instant::now();
        let mut t = Flows::new(limits());
        let dst = addr(9, 5060);
        assert_eq!(t.pooled(dst), None);
        let old = t.connect(now, dst, 1);
        let new = t.connect(now, dst, 2);
        assert_eq!(t.pooled(dst), Some(new));
        // Closing the superseded one leaves the pool entry alone.
        t.remove(old);
        assert_eq!(t.pooled(dst), Some(new));
        t.remove(new);
        assert_eq!(t.pooled(dst), None);
    }

    #[test]
    fn slowloris_and_idle_connections_expire() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let lim = Limits {
            header_timeout: s(10),
            idle_timeout: s(60),
            ..Limits::default()
        };
        let mut t = Flows::new(lim);
        let slow = t.accept(t0, addr(1, 1), (), false).unwrap();
        let idle = t.accept(t0, addr(1, 2), (), false).unwrap();
        let busy = t.accept(t0, addr(1, 3), (), false).unwrap();
        // The slow one starts a header and trickles bytes (each resets only the idle clock).
        let c = t.get_mut(slow).unwrap();
        c.framer.feed(t0, b"INVITE sip:", |_| {}).unwrap();
        for i in 1..10 {
            let c = t.get_mut(slow).unwrap();
            c.touch(t0 + s(i));
            c.framer.feed(t0 + s(i), b"x", |_| {}).unwrap();
        }
        let mut out = Vec::new();
        t.expired(t0 + s(9), &mut out);
        assert!(out.is_empty());
        t.expired(t0 + s(10), &mut out);
        assert_eq!(out, vec![(slow, CloseReason::Slowloris)]);
        out.clear();
        t.get_mut(busy).unwrap().touch(t0 + s(30));
        t.expired(t0 + s(60), &mut out);
        assert!(out.contains(&(idle, CloseReason::Idle)));
        assert!(!out.iter().any(|(id, _)| *id == busy));
    }

    #[test]
    fn close_reason_labels_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(seen.insert(r.as_str()));
        }
    }
}
