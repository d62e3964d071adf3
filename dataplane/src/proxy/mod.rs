//! The routing logic of one worker: initial request → select a destination →
//! relay; response → fail over or forward upstream; in-dialog request → loose
//! route. Sans-IO: the driver in `worker` feeds datagrams and time in and
//! sends what lands in the [`Outbox`].
//!
//! One [`Worker`], its methods by concept: `requests` (flood limits, the
//! routing decision of [`crate::route`], new transactions, forwarding),
//! `responses` (branch matching, failover, relaying upstream), `cancel`
//! (the caller's and abandoned attempts'), `fork` (requests to a registered
//! user's bindings), `dialogs`, `anchoring` (the
//! RTPEngine glue), `timers`, `replies`; `branch` mints the identifiers,
//! `transaction` holds a proxied request's state.

mod anchoring;
pub mod branch;
mod cancel;
pub mod config;
mod dialogs;
pub mod events;
pub mod flood;
mod flow_token;
mod fork;
pub mod media;
mod natping;
mod overload;
mod parked;
mod pool;
pub mod predecessor;
mod registrar;
mod replies;
mod requests;
mod responses;
mod rr;
pub mod stats;
mod timers;
mod transaction;

#[cfg(test)]
mod fork_tests;
#[cfg(test)]
mod lifetime_tests;
#[cfg(test)]
mod parked_tests;
#[cfg(test)]
mod path_tests;
#[cfg(test)]
mod registrar_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod stream_phone_tests;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use crate::dialog::{DialogKey, DialogState, DialogTable};
use crate::dispatch::{DestStats, SelectKey, Selector, SharedTable};
use crate::sip::build::{self, NewVia, ReplyOpts, RequestEdits};
use crate::sip::parse::{DialogInfo, RequestInfo};
use crate::sip::{parse, HeaderName, Message, Method, Via};
use crate::txn::timer::TimerWheel;
use crate::txn::{KeyHasher, LegacyKeyParts, TxnId, TxnKey, TxnTable};
use crate::worker::{Core, Outbox, SocketId, SOCK_TCP, SOCK_TCP_OUT, SOCK_TLS, SOCK_TLS_OUT};

use crate::route::{self, parse_ip, Decision};
use branch::{Branch, Minter, Rejected};
pub use config::{Ownership, ProxyConfig, SetRule, UnknownDomain};
use events::{CallEvent, EventSink};
use flood::Verdict;
use media::{Done, Media, MediaPolicy, Outcome, SOCK_MEDIA};
pub use parked::{NameSettings, SOCK_NAMES};
use pool::BufPool;
use registrar::{Caller, StatelessAnswer};
use rr::Leg;
use stats::{bump, count_reply};
pub use stats::{Counters, ProxyStats, Snapshot};
use transaction::{
    Abandoned, BindingTarget, ClientTx, Located, MediaLeg, MtuSwitch, ProxyTxn, ServerTx, Target,
    Upstream,
};

/// The worker's socket on the shared public port.
pub const SOCK_PUBLIC: SocketId = 0;
/// The worker's private port: its Via and Record-Route point here.
pub const SOCK_PRIVATE: SocketId = 1;
/// A copy of an in-dialog request another worker relayed, for the
/// dialog's bookkeeping on the worker holding it (`dialogs.rs`).
pub const SOCK_DIALOG_NOTE: SocketId = 0x61;
/// Set on the socket id of a datagram one worker hands to another; the
/// receiver strips it and never hands that datagram on again (no ping-pong
/// when workers disagree about an owner).
pub const HANDED_OVER: SocketId = 0x80;

/// What a dialog remembers: whose active-call count it holds, for call
/// events where it went and its Call-ID (kept only while events are on),
/// and the RTPEngine session to delete when it ends.
struct DialogData {
    dest: Option<Arc<DestStats>>,
    addr: SocketAddr,
    call_id: Option<Box<str>>,
    media: Option<DialogMedia>,
    /// RFC 4028 session interval (s) the dialog's 2xx set; 0: none.
    session_expires: u32,
}

/// An anchored dialog's engine and the ids `delete` needs, inline: most
/// Call-IDs and tags fit, longer ones spill to the heap.
struct DialogMedia {
    engine: u8,
    /// Call-ID followed by the offerer's From-tag.
    ids: SmallVec<[u8; 80]>,
    call_id_len: u16,
}

impl DialogMedia {
    fn new(engine: usize, call_id: &[u8], from_tag: &[u8]) -> Option<DialogMedia> {
        let mut ids = SmallVec::new();
        ids.extend_from_slice(call_id);
        ids.extend_from_slice(from_tag);
        Some(DialogMedia {
            engine: u8::try_from(engine).ok()?,
            ids,
            call_id_len: u16::try_from(call_id.len()).ok()?,
        })
    }

    fn call_id(&self) -> &[u8] {
        self.ids.get(..usize::from(self.call_id_len)).unwrap_or(&[])
    }

    fn offerer_tag(&self) -> &[u8] {
        self.ids.get(usize::from(self.call_id_len)..).unwrap_or(&[])
    }
}

/// One worker's proxy: its transactions, dialogs and selection state.
pub struct Worker {
    index: usize,
    workers: usize,
    cfg: Arc<ProxyConfig>,
    table: SharedTable,
    selector: Selector,
    txns: TxnTable<ProxyTxn>,
    timers: TimerWheel<TxnId>,
    dialogs: DialogTable<DialogData>,
    /// Keys transactions and dialogs; seeded per process so peers cannot aim
    /// hash collisions at the tables.
    hasher: KeyHasher,
    pool: BufPool,
    scratch: Vec<u8>,
    expired: Vec<TxnId>,
    /// The Record-Route entries naming this worker for each transport
    /// (`rr` module).
    record_route: rr::Entries,
    /// Seals branches and makes the To-tags of sipvane's own replies.
    minter: Minter,
    stats: Arc<ProxyStats>,
    /// Where call events go; `None` (the default) builds none.
    events: Option<Arc<EventSink>>,
    /// RTPEngine client; `None` when anchoring is off.
    media: Option<Media>,
    media_failed: Vec<Done<'static>>,
    /// Whether the datagram being handled was handed over by another worker.
    handed_over: bool,
    /// Whether the message being handled came over one of this worker's TCP
    /// connections (never handed to another worker: replies leave on it).
    from_stream: bool,
    /// Whether that connection runs TLS.
    from_tls: bool,
    /// HEP capture, handed to the driver when it starts; `None` when off.
    hep: Option<crate::hep::Tap>,
    /// Nonce counts of the nonces this worker issued (replay protection).
    nonce_counts: crate::registrar::nonce::NonceCounts,
    /// The registrar's answers without a transaction (challenges, REGISTER
    /// answers; UDP), repeated for retransmissions.
    answered: crate::registrar::answered::Answered<TxnKey, StatelessAnswer>,
    /// NAT keep-alive pings of its share of the NATed bindings; `None`
    /// when off.
    natping: Option<crate::registrar::natping::NatPing>,
    /// Host names of next hops: cache, parked requests; `None` when the
    /// configuration has no resolver.
    names: Option<parked::Names>,
    /// A parked request is being routed again.
    resuming: bool,
    /// Wall clock for RFC 7339 `oc-seq`.
    oc_clock: overload::SeqClock,
    /// The receive queue has stood for `shed_backlog`: new INVITEs are shed.
    backlogged: bool,
}

impl Worker {
    pub fn new(
        index: usize,
        cfg: Arc<ProxyConfig>,
        table: SharedTable,
        stats: Arc<ProxyStats>,
        now: Instant,
    ) -> Worker {
        let private_port = cfg.private_ports.get(index).copied().unwrap_or(0);
        let cfg_max_nonces = cfg.registrar.as_ref().map_or(1, |r| r.config.max_nonces);
        let record_route = rr::Entries::new(&cfg, private_port);
        let natping = Worker::new_nat_ping(&cfg, index, now);
        let names = cfg.names.clone();
        let media = cfg
            .media
            .as_ref()
            .and_then(|m| match Media::new(m.clone(), index) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "media anchoring off");
                    None
                }
            });
        Worker {
            media,
            media_failed: Vec::with_capacity(64),
            index,
            workers: cfg.private_ports.len().max(1),
            selector: Selector::new(index),
            txns: TxnTable::with_capacity(cfg.max_transactions),
            timers: TimerWheel::new(now),
            dialogs: DialogTable::with_lifetime(now, cfg.max_dialogs, cfg.dialog_timeout),
            hasher: KeyHasher::new(cfg.key_seed),
            pool: BufPool::new(4096, 2048),
            scratch: Vec::with_capacity(4096),
            expired: Vec::with_capacity(256),
            record_route,
            minter: Minter::new(cfg.branch_secret, cfg.epoch),
            table,
            cfg,
            stats,
            events: None,
            handed_over: false,
            from_stream: false,
            from_tls: false,
            hep: None,
            nonce_counts: crate::registrar::nonce::NonceCounts::new(cfg_max_nonces),
            answered: crate::registrar::answered::Answered::new(
                crate::registrar::answered::ANSWER_TTL,
                crate::registrar::answered::MAX_ANSWERS,
            ),
            natping,
            names: names.map(parked::Names::new),
            resuming: false,
            oc_clock: overload::SeqClock::new(now),
            backlogged: false,
        }
    }

    /// Captures every SIP datagram this worker receives and sends to HEP.
    pub fn with_hep(mut self, tap: crate::hep::Tap) -> Worker {
        self.hep = Some(tap);
        self
    }

    /// Reports call events to `sink` from now on.
    pub fn with_events(mut self, sink: Arc<EventSink>) -> Worker {
        self.events = Some(sink);
        self
    }

    pub fn stats(&self) -> &Arc<ProxyStats> {
        &self.stats
    }

    /// Open transactions and tracked dialogs, for /status.
    pub fn occupancy(&self) -> (usize, usize) {
        (self.txns.len(), self.dialogs.len())
    }

    fn private_port(&self) -> u16 {
        self.cfg.private_ports.get(self.index).copied().unwrap_or(0)
    }
}

impl Core for Worker {
    fn take_hep_tap(&mut self) -> Option<crate::hep::Tap> {
        self.hep.take()
    }

    fn on_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        data: &[u8],
        out: &mut Outbox,
    ) {
        if socket == SOCK_NAMES {
            self.take_answers(now, out);
            return;
        }
        bump(&self.stats.rx_datagrams);
        self.oc_clock.now = now;
        self.handed_over = socket & HANDED_OVER != 0;
        let socket = socket & !HANDED_OVER;
        // A TLS connection is a stream connection like a TCP one to
        // everything but the Via and Record-Route facing its peer.
        self.from_tls = socket == SOCK_TLS;
        let socket = if self.from_tls { SOCK_TCP } else { socket };
        self.from_stream = socket == SOCK_TCP && !self.handed_over;
        if socket == SOCK_DIALOG_NOTE {
            if self.handed_over {
                self.dialog_note(now, data, out);
            }
            return;
        }
        if socket == SOCK_MEDIA {
            if let Some(media) = self.media.as_mut() {
                if let Some(done) = media.on_datagram(now, src, data, out) {
                    self.media_done(now, done, out);
                }
            }
            return;
        }
        // Keepalive pings (CRLF / CRLFCRLF, RFC 5626 §3.5.1) are not SIP messages.
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        let msg = match parse(data) {
            Ok(m) => m,
            Err(_) => {
                bump(&self.stats.parse_errors);
                return;
            }
        };
        if msg.is_request() {
            self.handle_request(now, socket, src, &msg, out);
        } else {
            self.handle_response(now, socket, src, &msg, out);
        }
    }

    fn on_timer(&mut self, now: Instant, out: &mut Outbox) {
        self.oc_clock.now = now;
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.timers.expire(now, &mut expired);
        for &id in &expired {
            self.txn_timer(now, id, out);
        }
        self.expired = expired;
        while let Some((_, d)) = self.dialogs.poll_expired(now) {
            self.emit_end(now, &d, true);
            if let Some(dest) = d.data.dest {
                dest.call_ended();
            }
            if let Some(m) = &d.data.media {
                self.delete_dialog_media(now, m, out);
            }
            bump(&self.stats.dialogs_expired);
        }
        if self.natping.is_some() {
            self.nat_ping_round(now, out);
        }
        if self.names.is_some() {
            // Answers whose wakeup was lost are read here at the latest.
            self.take_answers(now, out);
            self.expire_parked(now, out);
        }
        if let Some(media) = self.media.as_mut() {
            if media.next_deadline().is_some_and(|d| d <= now) {
                let mut failed = std::mem::take(&mut self.media_failed);
                failed.clear();
                media.on_timer(now, out, &mut failed);
                for done in failed.drain(..) {
                    self.media_done(now, done, out);
                }
                self.media_failed = failed;
            }
        }
    }

    fn handover(&mut self, _now: Instant) -> Vec<u8> {
        self.handover_report()
    }

    fn open_work(&self) -> usize {
        self.txns.len()
    }

    fn on_backlog(&mut self, now: Instant, since: Option<Instant>) {
        self.backlogged = match (self.cfg.shed_backlog, since) {
            (Some(after), Some(since)) => now.saturating_duration_since(since) >= after,
            _ => false,
        };
    }

    fn on_connect_failed(&mut self, now: Instant, dst: SocketAddr, out: &mut Outbox) {
        self.connect_failed(now, dst, out);
    }

    fn tls_peer(&self, dst: SocketAddr) -> crate::transport::tls::TlsPeer {
        self.tls_peer_of(dst)
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.timers.next_deadline(),
            self.dialogs.next_deadline(),
            self.media.as_ref().and_then(Media::next_deadline),
            self.natping.as_ref().map(|p| p.next_deadline()),
            self.names.as_ref().and_then(parked::Names::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl Worker {
    /// Who a new TLS connection to `dst` is to: the TLS destination at that
    /// address (its URI's host name, or its IP address matched against IP
    /// SANs); any other next hop (an in-dialog request to a TLS Contact) by
    /// its IP address. Runs once per connection opened, so a scan is fine.
    fn tls_peer_of(&self, dst: SocketAddr) -> crate::transport::tls::TlsPeer {
        let table = self.table.load();
        let dest = table
            .iter()
            .map(|(_, d)| d)
            .find(|d| d.tls && d.addr == dst);
        let name = dest
            .and_then(|d| crate::sip::Uri::parse(d.uri.as_bytes()).ok())
            .filter(|u| parse_ip(u.host).is_none())
            .map(|u| String::from_utf8_lossy(u.host).into_owned());
        crate::transport::tls::TlsPeer {
            name: name.unwrap_or_else(|| dst.ip().to_string()),
            verify: true,
        }
    }
}

/// The To-tag of a reply sipvane makes to `req` itself.
fn local_tag(minter: &Minter, req: &Message<'_>) -> [u8; 16] {
    let from_tag = req.from().ok().and_then(|f| f.tag).unwrap_or(b"");
    let branch = req.top_via().ok().and_then(|v| v.branch).unwrap_or(b"");
    minter.to_tag(req.call_id().unwrap_or(b""), from_tag, branch)
}

/// The `Session-Expires` (compact `x`) delta-seconds of a message, 0 when
/// absent or malformed (RFC 4028 §4).
fn session_expires(msg: &Message<'_>) -> u32 {
    let Some(v) = msg
        .header_by_name(b"Session-Expires")
        .or_else(|| msg.header_by_name(b"x"))
    else {
        return 0;
    };
    let delta = v.split(|&c| c == b';').next().unwrap_or(b"").trim_ascii();
    std::str::from_utf8(delta)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// Whether a request carries an SDP body worth anchoring.
fn has_sdp(msg: &Message<'_>) -> bool {
    if msg.body().is_empty() {
        return false;
    }
    match msg.content_type() {
        Some(ct) => {
            let ct = ct.trim_ascii();
            ct.len() >= 15 && ct[..15].eq_ignore_ascii_case(b"application/sdp")
        }
        // No Content-Type: RFC 3261 requires one with a body; anchor what
        // looks like SDP.
        None => msg.body().starts_with(b"v=0"),
    }
}

/// The server transaction key of a request (RFC 3261 §17.2.3), with the
/// RFC 2543 fallback for peers whose branch lacks the magic cookie.
fn server_key(
    h: &KeyHasher,
    msg: &Message<'_>,
    via: &Via<'_>,
    method: Method,
    method_raw: &[u8],
) -> TxnKey {
    if let Some(key) = via
        .branch
        .and_then(|b| TxnKey::server(h, b, via.host, via.port, method, method_raw))
    {
        return key;
    }
    TxnKey::legacy(
        h,
        &LegacyKeyParts {
            call_id: msg.call_id().unwrap_or(b""),
            from_tag: msg.from().ok().and_then(|f| f.tag),
            cseq: msg.cseq().map(|c| c.seq).unwrap_or(0),
            top_via: msg.values(HeaderName::Via).next().unwrap_or(b""),
            request_uri: msg.request_uri().unwrap_or(b""),
            method,
            method_raw,
        },
    )
}

fn method_raw<'a>(msg: &Message<'a>) -> &'a [u8] {
    match msg.start_line() {
        crate::sip::StartLine::Request { method_raw, .. } => method_raw,
        crate::sip::StartLine::Response { .. } => b"",
    }
}

/// RFC 3581 / RFC 3261 §18.2.1: remember where the request really came from
/// when the Via does not say so already.
fn annotate_received(via: &Via<'_>, src: SocketAddr) -> Option<(IpAddr, u16)> {
    let same_host = parse_ip(via.host) == Some(src.ip());
    if via.rport.is_some() || !same_host {
        Some((src.ip(), src.port()))
    } else {
        None
    }
}

/// The socket a request to a next hop leaves from: the worker's private UDP
/// port, or its TCP connection pool.
fn target_socket(tcp: bool) -> SocketId {
    if tcp {
        SOCK_TCP_OUT
    } else {
        SOCK_PRIVATE
    }
}

/// The socket a request to a dispatcher destination leaves from: its
/// transport's connection pool, or the private UDP port.
fn dest_socket(dest: &crate::dispatch::Destination) -> SocketId {
    if dest.tls {
        SOCK_TLS_OUT
    } else {
        target_socket(dest.tcp)
    }
}

/// The socket a relayed request leaves from: TLS, TCP or UDP as its next
/// hop's URI says.
fn relay_socket(tcp: bool, tls: bool) -> SocketId {
    if tls {
        SOCK_TLS_OUT
    } else {
        target_socket(tcp)
    }
}

/// Whether `socket` is an outbound connection pool (a reliable transport:
/// no retransmissions, RFC 3261 §17.1.1.2).
fn stream_out(socket: SocketId) -> bool {
    socket == SOCK_TCP_OUT || socket == SOCK_TLS_OUT
}

/// The socket a hop-by-hop message answering something from `socket` leaves
/// from: the same TCP connection, else the private UDP port.
fn reply_socket(socket: SocketId) -> SocketId {
    if socket == SOCK_TCP {
        SOCK_TCP
    } else {
        SOCK_PRIVATE
    }
}

/// An IP address as text, on the stack. IPv4 (every request of a typical
/// trunk) is written digit by digit: `fmt` machinery cost ~1 300
/// instructions per address, a tenth of a whole request's forwarding.
fn ip_bytes(ip: IpAddr) -> SmallVec<[u8; 48]> {
    use std::io::Write;
    let mut v = SmallVec::new();
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    v.push(b'.');
                }
                if octet >= 100 {
                    v.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    v.push(b'0' + octet / 10 % 10);
                }
                v.push(b'0' + octet % 10);
            }
        }
        // Writing to a SmallVec cannot fail.
        IpAddr::V6(_) => {
            let _ = write!(v, "{ip}");
        }
    }
    v
}

/// "z9hG4bKsa" + a hash of the incoming branch and Call-ID.
fn stateless_branch(branch: &[u8], call_id: &[u8]) -> SmallVec<[u8; 48]> {
    use std::hash::{BuildHasher, Hasher};
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    h.write(branch);
    h.write(call_id);
    let mut v = SmallVec::new();
    v.extend_from_slice(b"z9hG4bKsa");
    // Hex by hand: `write!` cost more than the hash.
    let n = h.finish();
    for shift in (0..16).rev() {
        v.push(b"0123456789abcdef"[(n >> (shift * 4)) as usize & 0xf]);
    }
    v
}

#[cfg(test)]
mod events_tests;
#[cfg(test)]
mod media_tests;
