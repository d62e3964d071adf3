//! The routing logic of one worker: initial request → select a destination →
//! relay; response → fail over or forward upstream; in-dialog request → loose
//! route. Sans-IO: the driver in `worker` feeds datagrams and time in and
//! sends what lands in the [`Outbox`].

pub mod branch;
pub mod config;
pub mod events;
pub mod media;
mod pool;
pub mod stats;
mod transaction;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use crate::dialog::{DialogKey, DialogState, DialogTable};
use crate::dispatch::hash::hash_bytes;
use crate::dispatch::{DestStats, SelectKey, Selector, SharedTable};
use crate::sip::build::{self, NewVia, ReplyOpts, RequestEdits};
use crate::sip::{parse, HeaderName, Message, Method, Uri, Via};
use crate::txn::timer::TimerWheel;
use crate::txn::{KeyHasher, LegacyKeyParts, TxnId, TxnKey, TxnTable};
use crate::worker::{Core, Outbox, SocketId};

use branch::Branch;
pub use config::{Ownership, ProxyConfig, SetRule, UnknownDomain};
use events::{CallEvent, EventSink};
use media::{Done, Media, MediaPolicy, Outcome, SOCK_MEDIA};
use pool::BufPool;
use stats::{bump, count_reply};
pub use stats::{Counters, ProxyStats, Snapshot};
use transaction::{ClientTx, MediaLeg, ProxyTxn, ServerTx, Target};

/// The worker's socket on the shared public port.
pub const SOCK_PUBLIC: SocketId = 0;
/// The worker's private port: its Via and Record-Route point here.
pub const SOCK_PRIVATE: SocketId = 1;

/// What a dialog remembers: whose active-call count it holds, for call
/// events where it went and its Call-ID (kept only while events are on),
/// and the RTPEngine session to delete when it ends.
struct DialogData {
    dest: Option<Arc<DestStats>>,
    addr: SocketAddr,
    call_id: Option<Box<str>>,
    media: Option<DialogMedia>,
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
    /// "sip:ADVERTISE:PRIVATE_PORT;lr", written into Record-Route.
    record_route: Vec<u8>,
    /// The To-tag of replies sipvane generates itself.
    local_tag: Vec<u8>,
    stats: Arc<ProxyStats>,
    /// Where call events go; `None` (the default) builds none.
    events: Option<Arc<EventSink>>,
    /// RTPEngine client; `None` when anchoring is off.
    media: Option<Media>,
    media_failed: Vec<Done<'static>>,
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
        let record_route = format!("sip:{}:{};lr", cfg.advertise, private_port).into_bytes();
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
            local_tag: format!("sph{index:x}").into_bytes(),
            table,
            cfg,
            stats,
            events: None,
        }
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

    // ---------------------------------------------------------------- requests

    fn handle_request(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        if self.cfg.balance_by_call_id && socket == SOCK_PUBLIC && self.workers > 1 {
            // Spread calls by Call-ID rather than by the kernel's per-source
            // hash, so one trunk's calls use every worker. Every request of a
            // call (retransmissions, CANCEL, ACK) has the same Call-ID and so
            // the same owner.
            if let Ok(call_id) = msg.call_id() {
                let owner = (hash_bytes(call_id) % self.workers as u64) as usize;
                if owner != self.index {
                    bump(&self.stats.handoffs);
                    out.handoff(owner, socket, src, msg.buf());
                    return;
                }
            }
        }
        bump(&self.stats.requests);
        let method = msg.method().unwrap_or(Method::Other);
        if let Err(e) = msg.validate_request() {
            bump(&self.stats.bad_requests);
            // Never answer an ACK (RFC 3261 §17.2.3), not even a broken one.
            if method != Method::Ack {
                let warning = e.to_string();
                self.reply(socket, src, msg, 400, None, Some(warning.as_bytes()), out);
            }
            return;
        }
        let Ok(via) = msg.top_via() else { return };
        let key = server_key(&self.hasher, msg, &via, method, method_raw(msg));

        match method {
            Method::Ack => {
                if let Some(id) = self.txns.find(&key) {
                    // Hop-by-hop ACK for a non-2xx final we sent ends Timer G;
                    // a 2xx ACK reusing the INVITE's branch goes on.
                    let route_on = self
                        .txns
                        .get_mut(id)
                        .is_some_and(|txn| txn.server.on_ack(now));
                    self.reschedule(id);
                    if !route_on {
                        bump(&self.stats.retransmissions_absorbed);
                        return;
                    }
                }
                // ACK for a 2xx is end-to-end: relay it along the route set.
                self.relay_stateless(now, socket, src, msg, &via, out);
            }
            Method::Cancel => self.handle_cancel(now, socket, src, msg, &via, out),
            _ => {
                if let Some(id) = self.txns.find(&key) {
                    self.absorb_retransmission(now, id, out);
                    return;
                }
                self.new_request(now, socket, src, msg, &via, key, method, out);
            }
        }
    }

    fn absorb_retransmission(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        bump(&self.stats.retransmissions_absorbed);
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if txn.server.on_request(now) && !txn.last_response.is_empty() {
            out.send(txn.upstream_socket, txn.upstream, &txn.last_response);
            bump(&self.stats.tx_datagrams);
        }
        self.reschedule(id);
    }

    #[allow(clippy::too_many_arguments)]
    fn new_request(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        via: &Via<'_>,
        key: TxnKey,
        method: Method,
        out: &mut Outbox,
    ) {
        // Route set: pop our own entry (loose routing, RFC 3261 §16.4).
        let mut pop_routes = 0;
        let mut next_route: Option<Uri<'_>> = None;
        for (i, entry) in msg.values(HeaderName::Route).enumerate().take(2) {
            let Some(uri) = route_uri(entry) else {
                bump(&self.stats.bad_requests);
                self.reply(socket, src, msg, 400, None, Some(b"Bad Route header"), out);
                return;
            };
            if i == 0 {
                match self.cfg.owner_of(uri.host, uri.port) {
                    Some(Ownership::Worker(w)) if w != self.index && w < self.workers => {
                        // The dialog this request belongs to lives on worker w.
                        bump(&self.stats.handoffs);
                        out.handoff(w, socket, src, msg.buf());
                        return;
                    }
                    Some(_) => {
                        pop_routes = 1;
                        continue;
                    }
                    None => {}
                }
            }
            next_route = Some(uri);
            break;
        }

        match msg.max_forwards() {
            Ok(Some(0)) => {
                if method == Method::Options && next_route.is_none() && self.ruri_is_local(msg) {
                    self.reply_options(socket, src, msg, out);
                } else {
                    bump(&self.stats.loops);
                    self.reply(socket, src, msg, 483, None, None, out);
                }
                return;
            }
            Ok(_) => {}
            Err(e) => {
                bump(&self.stats.bad_requests);
                let warning = e.to_string();
                self.reply(socket, src, msg, 400, None, Some(warning.as_bytes()), out);
                return;
            }
        }

        let in_dialog = msg.to().map(|t| t.tag.is_some()).unwrap_or(false);
        let mut candidates: SmallVec<[u16; 16]> = SmallVec::new();
        let mut set_table = None;
        let mut anchor = false;
        let target: Target;

        if let Some(route) = next_route {
            if self.cfg.owner_of(route.host, route.port).is_some() {
                // Two of our own entries in a row: forwarding would loop.
                self.reply(
                    socket,
                    src,
                    msg,
                    482,
                    None,
                    Some(b"Route points back at sipvane"),
                    out,
                );
                return;
            }
            let Some(addr) = uri_addr(&route) else {
                self.reply(
                    socket,
                    src,
                    msg,
                    503,
                    None,
                    Some(b"Route host is not an IP address"),
                    out,
                );
                return;
            };
            target = Target { addr, dest: None };
        } else if in_dialog {
            let Ok(ruri) = msg.ruri() else {
                self.reply(socket, src, msg, 400, None, Some(b"Bad Request-URI"), out);
                return;
            };
            if self.cfg.owner_of(ruri.host, ruri.port).is_some() {
                // In-dialog, no route set and addressed to sipvane itself (e.g.
                // a UA's clean-up BYE): there is nowhere to take it.
                self.reply(socket, src, msg, 404, None, Some(b"Not here"), out);
                return;
            }
            let Some(addr) = uri_addr(&ruri) else {
                self.reply(
                    socket,
                    src,
                    msg,
                    503,
                    None,
                    Some(b"Request-URI host is not an IP address"),
                    out,
                );
                return;
            };
            target = Target { addr, dest: None };
        } else {
            let Ok(ruri) = msg.ruri() else {
                self.reply(socket, src, msg, 400, None, Some(b"Bad Request-URI"), out);
                return;
            };
            if self.cfg.owner_of(ruri.host, ruri.port).is_some() && method == Method::Options {
                // Keepalive addressed to sipvane itself.
                self.reply_options(socket, src, msg, out);
                return;
            }
            if !self.cfg.serves_domain(ruri.host) {
                if self.cfg.unknown_domain == UnknownDomain::Reject {
                    self.reply(
                        socket,
                        src,
                        msg,
                        404,
                        None,
                        Some(b"Domain not served here"),
                        out,
                    );
                    return;
                }
                let Some(addr) = uri_addr(&ruri) else {
                    self.reply(
                        socket,
                        src,
                        msg,
                        404,
                        None,
                        Some(b"Domain not served here"),
                        out,
                    );
                    return;
                };
                target = Target { addr, dest: None };
            } else {
                if method == Method::Invite && self.txns.len() >= self.cfg.overload_transactions {
                    bump(&self.stats.overload_rejects);
                    let retry = self.cfg.retry_after_s;
                    self.reply(socket, src, msg, 503, Some(retry), Some(b"Overloaded"), out);
                    return;
                }
                let (set_id, rule_media) = self.cfg.route_for(ruri.user.unwrap_or(b""), ruri.host);
                anchor = method == Method::Invite
                    && self.media.as_ref().is_some_and(|m| {
                        rule_media.unwrap_or_else(|| m.shared().anchors_set(set_id))
                    })
                    && has_sdp(msg);
                let table = self.table.load_full();
                let Some(set) = table.set(set_id) else {
                    bump(&self.stats.no_destination);
                    self.reply(
                        socket,
                        src,
                        msg,
                        503,
                        None,
                        Some(b"No such dispatcher set"),
                        out,
                    );
                    return;
                };
                let from_uri = msg.from().map(|f| f.uri).unwrap_or(b"");
                let to_uri = msg.to().map(|t| t.uri).unwrap_or(b"");
                let call_id = msg.call_id().unwrap_or(b"");
                let key = SelectKey {
                    call_id,
                    from_uri,
                    to_uri,
                    ruri: msg.request_uri().unwrap_or(b""),
                    auth_user: None,
                };
                let set_index = set.index();
                self.selector
                    .select(set, self.cfg.algorithm, &key, now, &mut candidates);
                let Some(&first) = candidates.first() else {
                    bump(&self.stats.no_destination);
                    if method == Method::Invite {
                        self.emit_failed(now, msg.call_id().unwrap_or(b""), 503, None);
                    }
                    let retry = self.cfg.retry_after_s;
                    self.reply(
                        socket,
                        src,
                        msg,
                        503,
                        Some(retry),
                        Some(b"No destination available"),
                        out,
                    );
                    return;
                };
                let Some(dest) = set.get(first) else { return };
                target = Target {
                    addr: dest.addr,
                    dest: Some(dest.stats.clone()),
                };
                set_table = Some((table.clone(), set_index));
            }
        }

        if method == Method::Invite && !in_dialog {
            bump(&self.stats.initial_invites);
            if let (Some(sink), Some((table, set_index))) = (&self.events, &set_table) {
                let set = table.sets().get(*set_index).map_or(0, |s| s.id);
                sink.push(CallEvent::Start {
                    at: now,
                    call_id: events::text(msg.call_id().unwrap_or(b"")),
                    from: events::text(msg.from().map(|f| f.uri).unwrap_or(b"")),
                    to: events::text(msg.to().map(|t| t.uri).unwrap_or(b"")),
                    ruri: events::text(msg.request_uri().unwrap_or(b"")),
                    set,
                    dest: target.addr,
                    worker: u16::try_from(self.index).unwrap_or(u16::MAX),
                });
            }
        }
        // A re-INVITE with SDP of an anchored dialog goes to the engine
        // holding its session (the new offer may move either side's media).
        let pinned = if method == Method::Invite && in_dialog && has_sdp(msg) {
            self.dialog_media_engine(msg)
        } else {
            None
        };
        if method == Method::Bye && in_dialog {
            // Like Kamailio's dialog module, the BYE ends the dialog whatever
            // its reply: a BYE to a dead destination still frees its call slot.
            self.dialog_ended(now, msg, out);
        }
        let mut request = self.pool.get();
        request.extend_from_slice(msg.buf());
        let received = annotate_received(via, src);
        let record_route = self.cfg.record_route
            && !in_dialog
            && matches!(method, Method::Invite | Method::Subscribe);
        let txn = ProxyTxn {
            method,
            upstream: src,
            upstream_socket: socket,
            server: ServerTx::new(method, now, &self.cfg.timers),
            request,
            forwarded: self.pool.get(),
            last_response: self.pool.get(),
            client: None,
            cancel: None,
            attempt: 0,
            target,
            candidates,
            next_candidate: 1,
            set: set_table,
            pop_routes,
            record_route,
            received,
            cancelled: false,
            final_sent: false,
            sent_at: now,
            timer: None,
            media: MediaLeg::Off,
            media_sdp: Vec::new(),
            held: Vec::new(),
            queued: Vec::new(),
        };
        let id = match self.txns.insert(key, txn) {
            Ok(id) => id,
            Err(_) => {
                bump(&self.stats.table_full);
                let retry = self.cfg.retry_after_s;
                self.reply(
                    socket,
                    src,
                    msg,
                    503,
                    Some(retry),
                    Some(b"Transaction table full"),
                    out,
                );
                return;
            }
        };
        if method == Method::Invite {
            // 100 Trying stops the caller's retransmissions (RFC 3261 §16.2).
            self.scratch.clear();
            if build::reply(
                msg,
                100,
                b"Trying",
                &ReplyOpts::default(),
                &mut self.scratch,
            )
            .is_ok()
            {
                out.send(socket, src, &self.scratch);
                bump(&self.stats.tx_datagrams);
                count_reply(&self.stats, 100);
                if let Some(txn) = self.txns.get_mut(id) {
                    txn.last_response.clear();
                    txn.last_response.extend_from_slice(&self.scratch);
                    txn.server.on_provisional_sent();
                }
            }
        }
        if (anchor || pinned.is_some()) && self.start_offer(now, id, msg, pinned, out) {
            // The INVITE waits in its transaction for the engine's SDP.
            return;
        }
        self.forward_attempt(now, id, out);
    }

    // ------------------------------------------------------------------- media

    /// Sends the `offer` for a new INVITE. Returns true when the INVITE is
    /// now held (offer in flight) or was answered by the failure policy.
    fn start_offer(
        &mut self,
        now: Instant,
        id: TxnId,
        msg: &Message<'_>,
        pinned: Option<usize>,
        out: &mut Outbox,
    ) -> bool {
        let Some(media) = self.media.as_mut() else {
            return false;
        };
        let call_id = msg.call_id().unwrap_or(b"");
        let from_tag = msg.from().ok().and_then(|f| f.tag).unwrap_or(b"");
        match media.offer(now, id, pinned, call_id, from_tag, msg.body(), out) {
            Ok(engine) => {
                if let Some(txn) = self.txns.get_mut(id) {
                    txn.media = MediaLeg::Offering {
                        engine: engine as u8,
                    };
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "rtpengine offer not sent");
                self.media_unavailable(now, id, out)
            }
        }
    }

    /// No engine took the offer: the configured policy decides. Returns true
    /// when the call was rejected, false when it should be forwarded as is.
    fn media_unavailable(&mut self, now: Instant, id: TxnId, out: &mut Outbox) -> bool {
        let Some(media) = self.media.as_ref() else {
            return false;
        };
        media.count_policy();
        let policy = media.policy();
        if let Some(txn) = self.txns.get_mut(id) {
            txn.media = MediaLeg::Off;
        }
        match policy {
            MediaPolicy::Reject => {
                self.reply_final(now, id, 503, Some(b"Media relay unavailable"), out);
                self.reschedule(id);
                true
            }
            MediaPolicy::Passthrough => false,
        }
    }

    /// An ng request of transaction `done.txn` finished.
    fn media_done(&mut self, now: Instant, done: Done<'_>, out: &mut Outbox) {
        let id = done.txn;
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        match (done.command, txn.media) {
            (crate::rtpengine::Command::Offer, MediaLeg::Offering { engine }) => {
                match done.outcome {
                    Outcome::Sdp(sdp) => {
                        // The engine that answered may be a failover target.
                        let engine = u8::try_from(done.engine).unwrap_or(engine);
                        txn.media = MediaLeg::Anchored {
                            engine,
                            answering: false,
                        };
                        let mut buf = self.pool.get();
                        buf.extend_from_slice(sdp);
                        let old = std::mem::replace(&mut txn.media_sdp, buf);
                        self.pool.put(old);
                        self.forward_attempt(now, id, out);
                    }
                    Outcome::Failed => {
                        if !self.media_unavailable(now, id, out) {
                            self.forward_attempt(now, id, out);
                        }
                    }
                }
            }
            (
                crate::rtpengine::Command::Answer,
                MediaLeg::Anchored {
                    engine,
                    answering: true,
                },
            ) => {
                txn.media = MediaLeg::Anchored {
                    engine,
                    answering: false,
                };
                let held = std::mem::take(&mut txn.held);
                let body = match done.outcome {
                    Outcome::Sdp(sdp) => Some(sdp),
                    // The callee's SDP goes through untouched rather than
                    // losing an answered call.
                    Outcome::Failed => None,
                };
                if let Ok(msg) = parse(&held) {
                    let code = msg.status().unwrap_or(0);
                    self.relay_response_body(now, id, &msg, code, body, out);
                }
                self.pool.put(held);
                // A response that arrived meanwhile gets its own answer.
                let Some(txn) = self.txns.get_mut(id) else {
                    return;
                };
                let queued = std::mem::take(&mut txn.queued);
                if !queued.is_empty() {
                    if let Ok(msg) = parse(&queued) {
                        let code = msg.status().unwrap_or(0);
                        self.relay_response(now, id, &msg, code, out);
                    }
                }
                self.pool.put(queued);
            }
            _ => {}
        }
        self.reschedule(id);
    }

    /// Sends `answer` for a response's SDP and holds the response; false
    /// when it must be relayed as it is.
    fn start_answer(
        &mut self,
        now: Instant,
        id: TxnId,
        engine: usize,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) -> bool {
        let Some(media) = self.media.as_mut() else {
            return false;
        };
        let (Ok(call_id), Ok(from), Ok(to)) = (msg.call_id(), msg.from(), msg.to()) else {
            return false;
        };
        let (Some(from_tag), Some(to_tag)) = (from.tag, to.tag) else {
            return false;
        };
        if media
            .answer(now, id, engine, call_id, from_tag, to_tag, msg.body(), out)
            .is_err()
        {
            return false;
        }
        let mut held = self.pool.get();
        held.extend_from_slice(msg.buf());
        let Some(txn) = self.txns.get_mut(id) else {
            self.pool.put(held);
            return false;
        };
        let old = std::mem::replace(&mut txn.held, held);
        self.pool.put(old);
        if let MediaLeg::Anchored { engine, .. } = txn.media {
            txn.media = MediaLeg::Anchored {
                engine,
                answering: true,
            };
        }
        true
    }

    /// The call of transaction `id` failed or was cancelled: release its
    /// engine session, if it may have one.
    fn end_txn_media(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let Some(media) = self.media.as_mut() else {
            return;
        };
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        let Some(engine) = txn.media.engine() else {
            return;
        };
        txn.media = MediaLeg::Off;
        media.cancel(id);
        if let Ok(req) = parse(&txn.request) {
            if req.to().is_ok_and(|t| t.tag.is_some()) {
                // A failed re-INVITE leaves the call and its session alone.
                return;
            }
            let call_id = req.call_id().unwrap_or(b"");
            let from_tag = req.from().ok().and_then(|f| f.tag).unwrap_or(b"");
            media.delete(now, engine, call_id, from_tag, out);
        }
    }

    /// The engine holding the session of the dialog `msg` belongs to.
    fn dialog_media_engine(&self, msg: &Message<'_>) -> Option<usize> {
        self.media.as_ref()?;
        let (key, ..) = self.dialog_key(msg)?;
        let d = self.dialogs.get(self.dialogs.find(&key)?)?;
        d.data.media.as_ref().map(|m| usize::from(m.engine))
    }

    fn delete_dialog_media(&mut self, now: Instant, m: &DialogMedia, out: &mut Outbox) {
        if let Some(media) = self.media.as_mut() {
            media.delete(
                now,
                usize::from(m.engine),
                m.call_id(),
                m.offerer_tag(),
                out,
            );
        }
    }

    /// Sends the transaction's request to its current target with a fresh
    /// branch and a fresh client transaction.
    fn forward_attempt(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        let mut fwd = std::mem::take(&mut txn.forwarded);
        fwd.clear();
        let attempt = txn.attempt;
        let ok = self.write_forward(id, attempt, &mut fwd);
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        txn.forwarded = fwd;
        if !ok {
            return;
        }
        out.send(SOCK_PRIVATE, txn.target.addr, &txn.forwarded);
        bump(&self.stats.tx_datagrams);
        txn.client = Some(ClientTx::new(txn.method, now, &self.cfg.timers));
        txn.sent_at = now;
        self.reschedule(id);
    }

    /// Writes the request of transaction `id` as forwarded in `attempt`.
    /// Deterministic: the same attempt always yields the same bytes, so an
    /// abandoned attempt's request can be rebuilt to ACK its late final.
    fn write_forward(&self, id: TxnId, attempt: u8, out: &mut Vec<u8>) -> bool {
        let Some(txn) = self.txns.get(id) else {
            return false;
        };
        let Ok(req) = parse(&txn.request) else {
            return false;
        };
        let branch = Branch {
            worker: self.index as u16,
            slot: id.slot(),
            generation: id.generation(),
            attempt,
        }
        .encode();
        let received_ip = txn.received.map(|(ip, _)| ip_bytes(ip));
        let edits = RequestEdits {
            via: NewVia {
                host: self.cfg.advertise.as_bytes(),
                port: self.private_port(),
                branch: &branch,
            },
            request_uri: None,
            pop_routes: txn.pop_routes,
            record_route: txn.record_route.then_some(self.record_route.as_slice()),
            received: match (&received_ip, txn.received) {
                (Some(ip), Some((_, port))) => Some((ip.as_slice(), port)),
                _ => None,
            },
            body: match txn.media {
                MediaLeg::Anchored { .. } if !txn.media_sdp.is_empty() => {
                    Some(txn.media_sdp.as_slice())
                }
                _ => None,
            },
        };
        build::forward_request(&req, &edits, out).is_ok()
    }

    fn handle_cancel(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        via: &Via<'_>,
        out: &mut Outbox,
    ) {
        let invite_key = server_key(&self.hasher, msg, via, Method::Invite, b"INVITE");
        let Some(id) = self.txns.find(&invite_key) else {
            self.reply(socket, src, msg, 481, None, None, out);
            return;
        };
        // The CANCEL itself is answered at once (RFC 3261 §16.10).
        self.reply(socket, src, msg, 200, None, None, out);
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if txn.cancelled || txn.final_sent {
            return;
        }
        txn.cancelled = true;
        bump(&self.stats.calls_cancelled);
        if txn.client.is_none() && matches!(txn.media, MediaLeg::Offering { .. }) {
            // Nothing was forwarded yet: the INVITE ends here.
            self.reply_final(now, id, 487, None, out);
            self.reschedule(id);
            return;
        }
        let send_now = txn.client.as_mut().is_some_and(|c| c.request_cancel(now));
        if send_now {
            self.send_cancel(now, id, out);
        }
        self.reschedule(id);
    }

    /// Sends CANCEL for the current attempt and starts its client transaction.
    fn send_cancel(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        let Ok(fwd) = parse(&txn.forwarded) else {
            return;
        };
        self.scratch.clear();
        if build::cancel_for(&fwd, &mut self.scratch).is_err() {
            return;
        }
        out.send(SOCK_PRIVATE, txn.target.addr, &self.scratch);
        bump(&self.stats.tx_datagrams);
        txn.cancel = Some(ClientTx::new(Method::Cancel, now, &self.cfg.timers));
    }

    /// Relays an end-to-end ACK (or any request we keep no state for) along
    /// its route set.
    fn relay_stateless(
        &mut self,
        _now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        via: &Via<'_>,
        out: &mut Outbox,
    ) {
        let mut pop_routes = 0;
        let mut next: Option<SocketAddr> = None;
        for (i, entry) in msg.values(HeaderName::Route).enumerate().take(2) {
            let Some(uri) = route_uri(entry) else { return };
            if i == 0 {
                match self.cfg.owner_of(uri.host, uri.port) {
                    Some(Ownership::Worker(w)) if w != self.index && w < self.workers => {
                        bump(&self.stats.handoffs);
                        out.handoff(w, socket, src, msg.buf());
                        return;
                    }
                    Some(_) => {
                        pop_routes = 1;
                        continue;
                    }
                    None => {}
                }
            }
            next = uri_addr(&uri);
            break;
        }
        let dst = match next {
            Some(a) => a,
            None => match msg.ruri() {
                // An R-URI naming sipvane itself would loop back here.
                Ok(u) if self.cfg.owner_of(u.host, u.port).is_none() => match uri_addr(&u) {
                    Some(a) => a,
                    None => {
                        bump(&self.stats.unmatched_acks);
                        return;
                    }
                },
                _ => {
                    bump(&self.stats.unmatched_acks);
                    return;
                }
            },
        };
        // A stateless relay derives its branch from the incoming one so a
        // retransmitted ACK gets the same branch (RFC 3261 §16.11).
        let branch = stateless_branch(via.branch.unwrap_or(b""), msg.call_id().unwrap_or(b""));
        let received = annotate_received(via, src);
        let received_ip = received.map(|(ip, _)| ip_bytes(ip));
        let edits = RequestEdits {
            via: NewVia {
                host: self.cfg.advertise.as_bytes(),
                port: self.private_port(),
                branch: &branch,
            },
            request_uri: None,
            pop_routes,
            record_route: None,
            received: match (&received_ip, received) {
                (Some(ip), Some((_, port))) => Some((ip.as_slice(), port)),
                _ => None,
            },
            body: None,
        };
        self.scratch.clear();
        if build::forward_request(msg, &edits, &mut self.scratch).is_ok() {
            out.send(SOCK_PRIVATE, dst, &self.scratch);
            bump(&self.stats.tx_datagrams);
            bump(&self.stats.stateless_forwards);
        }
    }

    // --------------------------------------------------------------- responses

    fn handle_response(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        bump(&self.stats.responses);
        let code = msg.status().unwrap_or(0);
        let Ok(via) = msg.top_via() else {
            bump(&self.stats.stray_responses);
            return;
        };
        let Some(b) = via.branch.and_then(Branch::parse) else {
            // Not a Via sipvane wrote: nothing to do with it.
            bump(&self.stats.stray_responses);
            return;
        };
        let owner = usize::from(b.worker);
        if owner != self.index {
            if owner < self.workers {
                bump(&self.stats.handoffs);
                out.handoff(owner, socket, src, msg.buf());
            } else {
                bump(&self.stats.stray_responses);
            }
            return;
        }
        let cseq_method = msg.cseq().map(|c| c.method).unwrap_or(Method::Other);
        let id = TxnId::from_parts(b.slot, b.generation);
        let Some((id, txn)) = id.and_then(|id| Some((id, self.txns.get_mut(id)?))) else {
            // The transaction is gone; a 2xx to INVITE must still reach the
            // caller (the callee retransmits it until the ACK arrives).
            if cseq_method == Method::Invite && (200..300).contains(&code) {
                self.forward_stateless_response(msg, out);
            } else {
                bump(&self.stats.stray_responses);
            }
            return;
        };

        if cseq_method == Method::Cancel {
            if let Some(c) = txn.cancel.as_mut() {
                c.on_response(code, now);
            }
            self.reschedule(id);
            return;
        }

        if b.attempt != txn.attempt {
            // A response from a destination we already moved away from.
            if txn.method == Method::Invite && (200..300).contains(&code) {
                self.relay_response(now, id, msg, code, out);
            } else if txn.method == Method::Invite && code >= 300 {
                self.ack_old_attempt(id, b.attempt, msg, src, out);
            }
            return;
        }

        let Some(client) = txn.client.as_mut() else {
            return;
        };
        let action = client.on_response(code, now);
        use transaction::ClientEvent as E;
        match action {
            E::Absorb => {
                bump(&self.stats.retransmissions_absorbed);
            }
            E::ResendAck => {
                bump(&self.stats.retransmissions_absorbed);
                self.send_ack(id, msg, out);
            }
            E::Provisional { send_cancel } => {
                if send_cancel {
                    self.send_cancel(now, id, out);
                }
                if code > 100 {
                    self.relay_response(now, id, msg, code, out);
                }
            }
            E::Success => {
                if let Some(txn) = self.txns.get_mut(id) {
                    if let Some(d) = &txn.target.dest {
                        d.record_success();
                        d.record_latency(now.saturating_duration_since(txn.sent_at));
                    }
                }
                // A retransmitted 2xx finds its dialog already there: the
                // call is counted and reported once.
                if txn_method(&self.txns, id) == Some(Method::Invite)
                    && self.dialog_started(now, id, msg)
                {
                    bump(&self.stats.calls_answered);
                    if let (Some(sink), Some(txn)) = (&self.events, self.txns.get(id)) {
                        sink.push(CallEvent::Answered {
                            at: now,
                            call_id: events::text(msg.call_id().unwrap_or(b"")),
                            dest: txn.target.addr,
                            setup: now.saturating_duration_since(txn.sent_at),
                        });
                    }
                }
                self.relay_response(now, id, msg, code, out);
            }
            E::Failure { send_ack } => {
                if send_ack {
                    self.send_ack(id, msg, out);
                }
                if self.cfg.failover_codes.contains(&code) {
                    if let Some(d) = self.txns.get(id).and_then(|t| t.target.dest.clone()) {
                        d.record_failure(now, &self.cfg.health);
                    }
                    if self.try_failover(now, id, out) {
                        return;
                    }
                    if self.dispatched(id) {
                        // Every destination of the set refused: one 503 upstream.
                        self.reply_final(now, id, 503, Some(b"All destinations failed"), out);
                        return;
                    }
                } else if let Some(d) = self.txns.get(id).and_then(|t| t.target.dest.clone()) {
                    // Any other final answer proves the destination alive.
                    d.record_success();
                }
                self.relay_response(now, id, msg, code, out);
            }
        }
        self.reschedule(id);
    }

    fn dispatched(&self, id: TxnId) -> bool {
        self.txns.get(id).is_some_and(|t| t.set.is_some())
    }

    /// Moves the transaction to its next candidate destination, if any is
    /// left and failover is allowed. Returns whether it did.
    fn try_failover(&mut self, now: Instant, id: TxnId, out: &mut Outbox) -> bool {
        let Some(txn) = self.txns.get_mut(id) else {
            return false;
        };
        if txn.cancelled || txn.final_sent {
            return false;
        }
        let Some((table, set_index)) = txn.set.clone() else {
            return false;
        };
        let Some(set) = table.sets().get(set_index) else {
            return false;
        };
        while let Some(&next) = txn.candidates.get(txn.next_candidate) {
            txn.next_candidate += 1;
            let Some(dest) = set.get(next) else { continue };
            if !dest.is_available(now) {
                continue;
            }
            dest.stats.record_selected();
            txn.target = Target {
                addr: dest.addr,
                dest: Some(dest.stats.clone()),
            };
            txn.attempt = txn.attempt.wrapping_add(1);
            bump(&self.stats.failovers);
            self.forward_attempt(now, id, out);
            return true;
        }
        false
    }

    /// Sends a response from the current destination upstream, keeping it
    /// for retransmission when it is a final one.
    fn relay_response(
        &mut self,
        now: Instant,
        id: TxnId,
        msg: &Message<'_>,
        code: u16,
        out: &mut Outbox,
    ) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if let MediaLeg::Anchored { engine, answering } = txn.media {
            let sdp = (101..300).contains(&code) && !msg.body().is_empty();
            if sdp && txn.final_sent {
                // A retransmitted 2xx: resend what the engine made of the first.
                if !txn.last_response.is_empty() {
                    out.send(txn.upstream_socket, txn.upstream, &txn.last_response);
                    bump(&self.stats.tx_datagrams);
                }
                return;
            }
            if sdp && answering {
                // One answer at a time; keep the latest, a final over a provisional.
                let keep = code >= 200
                    || parse(&txn.queued)
                        .ok()
                        .and_then(|q| q.status())
                        .is_none_or(|c| c < 200);
                if keep {
                    txn.queued.clear();
                    txn.queued.extend_from_slice(msg.buf());
                }
                return;
            }
            if sdp && self.start_answer(now, id, usize::from(engine), msg, out) {
                return;
            }
            if code >= 300 && answering {
                // A failure overtakes the held provisional.
                if let Some(m) = self.media.as_mut() {
                    m.cancel(id);
                }
                if let Some(txn) = self.txns.get_mut(id) {
                    txn.media = MediaLeg::Anchored {
                        engine,
                        answering: false,
                    };
                    txn.queued.clear();
                }
            }
        }
        self.relay_response_body(now, id, msg, code, None, out);
    }

    /// Relays a response upstream, with its body replaced when `body` is given.
    fn relay_response_body(
        &mut self,
        now: Instant,
        id: TxnId,
        msg: &Message<'_>,
        code: u16,
        body: Option<&[u8]>,
        out: &mut Outbox,
    ) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if txn.final_sent && !(txn.method == Method::Invite && (200..300).contains(&code)) {
            return;
        }
        txn.last_response.clear();
        if build::forward_response_with_body(msg, body, &mut txn.last_response).is_err() {
            return;
        }
        out.send(txn.upstream_socket, txn.upstream, &txn.last_response);
        bump(&self.stats.tx_datagrams);
        count_reply(&self.stats, code);
        if code >= 200 {
            self.final_sent(now, id, code, out);
        } else {
            txn.server.on_provisional_sent();
        }
    }

    /// Sends a final response sipvane makes itself for the transaction.
    fn reply_final(
        &mut self,
        now: Instant,
        id: TxnId,
        code: u16,
        warning: Option<&[u8]>,
        out: &mut Outbox,
    ) {
        let retry = (code == 503).then_some(self.cfg.retry_after_s);
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if txn.final_sent {
            return;
        }
        let opts = ReplyOpts {
            to_tag: Some(&self.local_tag),
            retry_after: retry,
            warning,
            server: Some(self.cfg.server_header.as_bytes()),
            ..ReplyOpts::default()
        };
        txn.last_response.clear();
        let built = match parse(&txn.request) {
            Ok(req) => build::reply(
                &req,
                code,
                build::reason_phrase(code),
                &opts,
                &mut txn.last_response,
            )
            .is_ok(),
            Err(_) => false,
        };
        if !built {
            return;
        }
        out.send(txn.upstream_socket, txn.upstream, &txn.last_response);
        bump(&self.stats.tx_datagrams);
        count_reply(&self.stats, code);
        self.final_sent(now, id, code, out);
    }

    fn final_sent(&mut self, now: Instant, id: TxnId, code: u16, out: &mut Outbox) {
        if code >= 300 {
            self.end_txn_media(now, id, out);
        }
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if !txn.final_sent && txn.method == Method::Invite && code >= 300 && !txn.cancelled {
            bump(&self.stats.calls_failed);
            if let Some(sink) = &self.events {
                sink.push(CallEvent::Failed {
                    at: now,
                    call_id: parse(&txn.request)
                        .ok()
                        .and_then(|m| m.call_id().ok().map(events::text))
                        .unwrap_or_default(),
                    code,
                    dest: txn.target.dest.is_some().then_some(txn.target.addr),
                });
            }
        }
        txn.final_sent = true;
        txn.server.on_final_sent(code, now);
        // What a finished transaction still needs is its last response; the
        // request copies go back to the pool now rather than at Timer J/L.
        if code >= 200 {
            let request = std::mem::take(&mut txn.request);
            self.pool.put(request);
            if !(txn.method == Method::Invite && code >= 300) {
                // The forwarded INVITE is kept for ACKs of late finals only
                // while the client transaction is alive.
                let fwd = std::mem::take(&mut txn.forwarded);
                self.pool.put(fwd);
            }
            // An INVITE answered 2xx never resends its response itself (the
            // callee retransmits the 2xx, relayed afresh; RFC 6026), so its
            // copy goes back too — halving what a busy worker holds for the
            // wait timer. An anchored call keeps it: a retransmitted 2xx gets
            // the engine's rewrite of the first one.
            if txn.method == Method::Invite
                && (200..300).contains(&code)
                && !matches!(txn.media, MediaLeg::Anchored { .. })
            {
                let resp = std::mem::take(&mut txn.last_response);
                self.pool.put(resp);
            }
        }
    }

    /// The hop-by-hop ACK for a non-2xx final from the current attempt.
    fn send_ack(&mut self, id: TxnId, resp: &Message<'_>, out: &mut Outbox) {
        let Some(txn) = self.txns.get(id) else { return };
        let Ok(fwd) = parse(&txn.forwarded) else {
            return;
        };
        self.scratch.clear();
        if build::ack_for(&fwd, resp, &mut self.scratch).is_ok() {
            out.send(SOCK_PRIVATE, txn.target.addr, &self.scratch);
            bump(&self.stats.tx_datagrams);
        }
    }

    /// ACKs a non-2xx final from an attempt we already abandoned, so that
    /// destination stops retransmitting it. Its request is rebuilt (it is
    /// deterministic per attempt) and the ACK goes where the response came from.
    fn ack_old_attempt(
        &mut self,
        id: TxnId,
        attempt: u8,
        resp: &Message<'_>,
        src: SocketAddr,
        out: &mut Outbox,
    ) {
        let mut old = self.pool.get();
        if self.write_forward(id, attempt, &mut old) {
            if let Ok(fwd) = parse(&old) {
                self.scratch.clear();
                if build::ack_for(&fwd, resp, &mut self.scratch).is_ok() {
                    out.send(SOCK_PRIVATE, src, &self.scratch);
                    bump(&self.stats.tx_datagrams);
                }
            }
        }
        self.pool.put(old);
    }

    fn forward_stateless_response(&mut self, msg: &Message<'_>, out: &mut Outbox) {
        // The next Via tells where the caller is (received/rport if present).
        let Some(second) = msg.values(HeaderName::Via).nth(1) else {
            bump(&self.stats.stray_responses);
            return;
        };
        let Ok(v) = Via::parse(second) else {
            bump(&self.stats.stray_responses);
            return;
        };
        let host = v.received.unwrap_or(v.host);
        let port = match v.rport {
            Some(Some(p)) => p,
            _ => v.port.unwrap_or(5060),
        };
        let Some(ip) = parse_ip(host) else {
            bump(&self.stats.stray_responses);
            return;
        };
        self.scratch.clear();
        if build::forward_response(msg, &mut self.scratch).is_ok() {
            out.send(SOCK_PUBLIC, SocketAddr::new(ip, port), &self.scratch);
            bump(&self.stats.tx_datagrams);
            bump(&self.stats.stateless_forwards);
        }
    }

    // ----------------------------------------------------------------- dialogs

    /// The dialog a request or response belongs to (Call-ID and both tags),
    /// with its Call-ID and From tag; `None` when a header is missing.
    fn dialog_key<'m>(&self, msg: &Message<'m>) -> Option<(DialogKey, &'m [u8], &'m [u8])> {
        let (Ok(call_id), Ok(from), Ok(to)) = (msg.call_id(), msg.from(), msg.to()) else {
            return None;
        };
        let key = DialogKey::new(
            &self.hasher,
            call_id,
            from.tag.unwrap_or(b""),
            to.tag.unwrap_or(b""),
        );
        Some((key, call_id, from.tag.unwrap_or(b"")))
    }

    /// Records the dialog a 2xx creates. True when the 2xx answers the call
    /// (also when the dialog table is full); false for a retransmitted 2xx,
    /// whose dialog exists.
    fn dialog_started(&mut self, now: Instant, id: TxnId, resp: &Message<'_>) -> bool {
        // Validation guarantees Call-ID, From and To in what reaches here.
        let Some((key, call_id, from_tag)) = self.dialog_key(resp) else {
            return true;
        };
        if self.dialogs.find(&key).is_some() {
            return false; // a retransmitted 2xx
        }
        let Some(txn) = self.txns.get(id) else {
            return false;
        };
        let (dest, addr) = (txn.target.dest.clone(), txn.target.addr);
        if let Some(d) = &dest {
            d.call_started();
        }
        let media = self
            .txns
            .get(id)
            .and_then(|t| t.media.engine())
            .and_then(|e| DialogMedia::new(e, call_id, from_tag));
        let data = DialogData {
            dest: dest.clone(),
            addr,
            call_id: self.events.as_ref().map(|_| events::text(call_id)),
            media,
        };
        match self.dialogs.insert(key, DialogState::Confirmed, data, now) {
            Ok(_) => bump(&self.stats.dialogs_created),
            Err(_) => {
                if let Some(d) = &dest {
                    d.call_ended();
                }
                bump(&self.stats.dialogs_full);
            }
        }
        true
    }

    fn dialog_ended(&mut self, now: Instant, msg: &Message<'_>, out: &mut Outbox) {
        let Some((key, ..)) = self.dialog_key(msg) else {
            return;
        };
        let Some(id) = self.dialogs.find(&key) else {
            return;
        };
        if let Some(d) = self.dialogs.remove(id) {
            self.emit_end(now, &d, false);
            if let Some(dest) = d.data.dest {
                dest.call_ended();
            }
            if let Some(m) = &d.data.media {
                self.delete_dialog_media(now, m, out);
            }
            bump(&self.stats.dialogs_ended);
        }
    }

    fn emit_end(&self, now: Instant, d: &crate::dialog::Dialog<DialogData>, timeout: bool) {
        let (Some(sink), Some(call_id)) = (&self.events, &d.data.call_id) else {
            return;
        };
        sink.push(CallEvent::End {
            at: now,
            call_id: call_id.clone(),
            dest: d.data.dest.is_some().then_some(d.data.addr),
            duration: now.saturating_duration_since(d.created()),
            timeout,
        });
    }

    fn emit_failed(&self, now: Instant, call_id: &[u8], code: u16, dest: Option<SocketAddr>) {
        if let Some(sink) = &self.events {
            sink.push(CallEvent::Failed {
                at: now,
                call_id: events::text(call_id),
                code,
                dest,
            });
        }
    }

    // ------------------------------------------------------------------ timers

    /// Keeps exactly one wheel entry per transaction, at its next deadline;
    /// removes the transaction once both sides are done.
    fn reschedule(&mut self, id: TxnId) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if txn.is_finished() {
            if let Some(t) = txn.timer.take() {
                self.timers.cancel(t);
            }
            if let Some(txn) = self.txns.remove(id) {
                self.recycle(txn);
            }
            return;
        }
        let next = txn.next_deadline();
        if let Some(t) = txn.timer.take() {
            self.timers.cancel(t);
        }
        if let Some(at) = next {
            txn.timer = Some(self.timers.insert(at, id));
        }
    }

    fn txn_timer(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        txn.timer = None;
        use transaction::{ClientTimer, ServerTimer};
        match txn.server.on_timer(now) {
            ServerTimer::RetransmitFinal => {
                if !txn.last_response.is_empty() {
                    out.send(txn.upstream_socket, txn.upstream, &txn.last_response);
                    bump(&self.stats.tx_datagrams);
                }
            }
            ServerTimer::None => {}
        }
        if let Some(c) = txn.cancel.as_mut() {
            if c.on_timer(now) == ClientTimer::Retransmit {
                if let Ok(fwd) = parse(&txn.forwarded) {
                    self.scratch.clear();
                    if build::cancel_for(&fwd, &mut self.scratch).is_ok() {
                        out.send(SOCK_PRIVATE, txn.target.addr, &self.scratch);
                        bump(&self.stats.tx_datagrams);
                    }
                }
            }
        }
        let client_event = txn.client.as_mut().map(|c| c.on_timer(now));
        match client_event {
            Some(ClientTimer::Retransmit) => {
                out.send(SOCK_PRIVATE, txn.target.addr, &txn.forwarded);
                bump(&self.stats.tx_datagrams);
            }
            Some(ClientTimer::Timeout { proceeding }) => {
                bump(&self.stats.timeouts);
                if proceeding && txn.method == Method::Invite && txn.cancel.is_none() {
                    // fr_inv_timer: stop the ringing destination.
                    self.send_cancel(now, id, out);
                }
                let Some(txn) = self.txns.get(id) else { return };
                if txn.cancelled {
                    self.reply_final(now, id, 487, None, out);
                } else {
                    if let Some(d) = txn.target.dest.clone() {
                        d.record_failure(now, &self.cfg.health);
                    }
                    if !proceeding && self.try_failover(now, id, out) {
                        // try_failover rescheduled
                        return;
                    }
                    let code = if self.dispatched(id) && !proceeding {
                        503
                    } else {
                        408
                    };
                    self.reply_final(now, id, code, Some(b"Destination did not answer"), out);
                }
            }
            Some(ClientTimer::None) | None => {}
        }
        self.reschedule(id);
    }

    fn recycle(&mut self, txn: ProxyTxn) {
        self.pool.put(txn.request);
        self.pool.put(txn.forwarded);
        self.pool.put(txn.last_response);
        for b in [txn.media_sdp, txn.held, txn.queued] {
            if b.capacity() > 0 {
                self.pool.put(b);
            }
        }
    }

    // ----------------------------------------------------------------- replies

    /// A stateless local reply to `req`, sent back where it came from.
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        socket: SocketId,
        src: SocketAddr,
        req: &Message<'_>,
        code: u16,
        retry_after: Option<u32>,
        warning: Option<&[u8]>,
        out: &mut Outbox,
    ) {
        let opts = ReplyOpts {
            to_tag: Some(&self.local_tag),
            retry_after,
            warning,
            server: Some(self.cfg.server_header.as_bytes()),
            ..ReplyOpts::default()
        };
        self.scratch.clear();
        if build::reply(
            req,
            code,
            build::reason_phrase(code),
            &opts,
            &mut self.scratch,
        )
        .is_ok()
        {
            out.send(socket, src, &self.scratch);
            bump(&self.stats.tx_datagrams);
            count_reply(&self.stats, code);
        }
    }

    fn reply_options(
        &mut self,
        socket: SocketId,
        src: SocketAddr,
        req: &Message<'_>,
        out: &mut Outbox,
    ) {
        let extra: [(&[u8], &[u8]); 2] = [
            (b"Allow", b"INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK, MESSAGE"),
            (b"Accept", b"application/sdp"),
        ];
        let opts = ReplyOpts {
            to_tag: Some(&self.local_tag),
            server: Some(self.cfg.server_header.as_bytes()),
            extra_headers: &extra,
            ..ReplyOpts::default()
        };
        self.scratch.clear();
        if build::reply(req, 200, b"OK", &opts, &mut self.scratch).is_ok() {
            out.send(socket, src, &self.scratch);
            bump(&self.stats.tx_datagrams);
            count_reply(&self.stats, 200);
        }
    }

    fn ruri_is_local(&self, msg: &Message<'_>) -> bool {
        msg.ruri()
            .map(|u| self.cfg.owner_of(u.host, u.port).is_some())
            .unwrap_or(false)
    }
}

impl Core for Worker {
    fn on_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        data: &[u8],
        out: &mut Outbox,
    ) {
        bump(&self.stats.rx_datagrams);
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

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.timers.next_deadline(),
            self.dialogs.next_deadline(),
            self.media.as_ref().and_then(Media::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }
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

fn txn_method(txns: &TxnTable<ProxyTxn>, id: TxnId) -> Option<Method> {
    txns.get(id).map(|t| t.method)
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

/// The URI inside one Route / Record-Route entry ("<sip:h;lr>" or bare).
fn route_uri(entry: &[u8]) -> Option<Uri<'_>> {
    let e = entry.trim_ascii();
    let inner = match memchr::memchr(b'<', e) {
        Some(open) => {
            let rest = &e[open + 1..];
            let close = memchr::memchr(b'>', rest)?;
            &rest[..close]
        }
        None => e,
    };
    Uri::parse(inner).ok()
}

/// The address of an IP-literal URI; sipvane resolves no names on a worker.
fn uri_addr(uri: &Uri<'_>) -> Option<SocketAddr> {
    let ip = parse_ip(uri.host)?;
    let default = if uri.scheme.eq_ignore_ascii_case(b"sips") {
        5061
    } else {
        5060
    };
    Some(SocketAddr::new(ip, uri.port.unwrap_or(default)))
}

fn parse_ip(host: &[u8]) -> Option<IpAddr> {
    let h = match host {
        [b'[', inner @ .., b']'] => inner,
        _ => host,
    };
    std::str::from_utf8(h).ok()?.parse().ok()
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

/// An IP address as text, on the stack.
fn ip_bytes(ip: IpAddr) -> SmallVec<[u8; 48]> {
    use std::io::Write;
    let mut v = SmallVec::new();
    // Writing to a SmallVec cannot fail.
    let _ = write!(v, "{ip}");
    v
}

/// "z9hG4bKsa" + a hash of the incoming branch and Call-ID.
fn stateless_branch(branch: &[u8], call_id: &[u8]) -> SmallVec<[u8; 48]> {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Write;
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    h.write(branch);
    h.write(call_id);
    let mut v = SmallVec::new();
    let _ = write!(v, "z9hG4bKsa{:016x}", h.finish());
    v
}

#[cfg(test)]
mod media_tests;

#[cfg(test)]
mod tests {
    //! The core driven directly: no sockets, synthetic time.
    use super::*;
    use crate::dispatch::{parse_list, shared, Table};
    use std::time::Duration;

    const CALLER: &str = "127.0.0.1:40000";
    const DEST: &str = "127.0.0.1:5070";

    /// A worker over `list` (IP-literal destinations), for these tests and
    /// the media ones.
    pub(super) fn worker(cfg: ProxyConfig, list: &str, now: Instant) -> Worker {
        let defs = parse_list(list).expect("list");
        let table = Table::build(&defs, now, &mut |uri: &str| {
            let u = Uri::parse(uri.as_bytes()).map_err(|e| e.to_string())?;
            uri_addr(&u).ok_or_else(|| "not an IP".to_string())
        })
        .expect("table");
        Worker::new(
            0,
            Arc::new(cfg),
            shared(table),
            Arc::new(ProxyStats::default()),
            now,
        )
    }

    fn invite(branch: &str) -> Vec<u8> {
        format!(
            "INVITE sip:100@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:a@127.0.0.1>;tag=f1\r\n\
             To: <sip:100@127.0.0.1>\r\n\
             Call-ID: {branch}@t\r\n\
             CSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn sent(out: &Outbox) -> Vec<(SocketAddr, String)> {
        out.iter()
            .map(|(_, dst, b)| (dst, String::from_utf8_lossy(b).into_owned()))
            .collect()
    }

    /// A response to the request sipvane forwarded, as the destination sends it.
    fn answer(forwarded: &str, code: u16, to_tag: &str) -> Vec<u8> {
        let msg = parse(forwarded.as_bytes()).expect("forwarded parses");
        let mut out = Vec::new();
        let opts = ReplyOpts {
            to_tag: Some(to_tag.as_bytes()),
            ..ReplyOpts::default()
        };
        build::reply(&msg, code, build::reason_phrase(code), &opts, &mut out).expect("reply");
        out
    }

    #[test]
    fn invite_is_forwarded_answered_and_becomes_a_dialog() {
        let t0 = Instant::now();
        let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0);
        let mut out = Outbox::new();
        w.on_datagram(
            t0,
            SOCK_PUBLIC,
            CALLER.parse().unwrap(),
            &invite("z9hG4bK-a"),
            &mut out,
        );
        let s = sent(&out);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[0].1.starts_with("SIP/2.0 100 "));
        assert_eq!(s[1].0, DEST.parse().unwrap());
        assert!(
            s[1].1.contains("Record-Route: <sip:127.0.0.1:5061;lr>"),
            "{}",
            s[1].1
        );
        assert!(s[1].1.contains("Max-Forwards: 69"));

        let ok = answer(&s[1].1, 200, "t1");
        out.clear();
        w.on_datagram(t0, SOCK_PRIVATE, DEST.parse().unwrap(), &ok, &mut out);
        let s = sent(&out);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, CALLER.parse().unwrap());
        assert!(s[0].1.starts_with("SIP/2.0 200 "));
        assert!(!s[0].1.contains("z9hG4bKsp"), "sipvane's Via must be popped");
        assert_eq!(w.occupancy().1, 1, "one dialog");
        assert_eq!(w.stats().snapshot().calls_answered, 1);

        // The callee retransmits its 2xx until the ACK: relayed again,
        // counted once.
        out.clear();
        w.on_datagram(t0, SOCK_PRIVATE, DEST.parse().unwrap(), &ok, &mut out);
        assert_eq!(sent(&out).len(), 1, "a 2xx retransmission is relayed");
        assert_eq!(w.stats().snapshot().calls_answered, 1);
        assert_eq!(w.occupancy().1, 1);
    }

    #[test]
    fn call_events_start_answered_end_and_failed() {
        let t0 = Instant::now();
        let sink = Arc::new(EventSink::new(16));
        let list = format!("1 sip:{DEST}\n");
        let mut w = worker(ProxyConfig::default(), &list, t0).with_events(sink.clone());
        let caller: SocketAddr = CALLER.parse().unwrap();
        let dest: SocketAddr = DEST.parse().unwrap();
        let mut out = Outbox::new();
        w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-ev"), &mut out);
        let fwd = sent(&out)[1].1.clone();
        let t1 = t0 + Duration::from_millis(250);
        out.clear();
        w.on_datagram(t1, SOCK_PRIVATE, dest, &answer(&fwd, 200, "t9"), &mut out);
        let bye = format!(
            "BYE sip:100@{DEST} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-bye\r\n\
             Route: <sip:127.0.0.1:5061;lr>\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:a@127.0.0.1>;tag=f1\r\n\
             To: <sip:100@127.0.0.1>;tag=t9\r\n\
             Call-ID: z9hG4bK-ev@t\r\n\
             CSeq: 2 BYE\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let t2 = t0 + Duration::from_secs(3);
        out.clear();
        w.on_datagram(t2, SOCK_PRIVATE, caller, bye.as_bytes(), &mut out);

        let got: Vec<CallEvent> = std::iter::from_fn(|| sink.pop()).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            matches!(&got[0], CallEvent::Start { call_id, set: 1, dest: d, ruri, .. }
                if &**call_id == "z9hG4bK-ev@t" && *d == dest && &**ruri == "sip:100@127.0.0.1:5060"),
            "{:?}",
            got[0]
        );
        assert!(
            matches!(&got[1], CallEvent::Answered { setup, dest: d, .. }
                if *setup == Duration::from_millis(250) && *d == dest),
            "{:?}",
            got[1]
        );
        assert!(
            matches!(&got[2], CallEvent::End { duration, timeout: false, dest: Some(d), .. }
                if *duration == Duration::from_millis(2750) && *d == dest),
            "{:?}",
            got[2]
        );

        // A destination answering 486 (not a failover code): the call fails.
        out.clear();
        w.on_datagram(t2, SOCK_PUBLIC, caller, &invite("z9hG4bK-busy"), &mut out);
        let fwd = sent(&out)[1].1.clone();
        out.clear();
        w.on_datagram(t2, SOCK_PRIVATE, dest, &answer(&fwd, 486, "t2"), &mut out);
        let got: Vec<CallEvent> = std::iter::from_fn(|| sink.pop()).collect();
        assert!(
            matches!(&got[..], [CallEvent::Start { .. }, CallEvent::Failed { code: 486, dest: Some(d), call_id, .. }]
                if *d == dest && &**call_id == "z9hG4bK-busy@t"),
            "{got:?}"
        );
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn no_answer_fails_over_then_503_when_none_left() {
        let t0 = Instant::now();
        let list = "1 sip:127.0.0.1:5070\n1 sip:127.0.0.1:5080\n";
        let mut w = worker(ProxyConfig::default(), list, t0);
        let mut out = Outbox::new();
        w.on_datagram(
            t0,
            SOCK_PUBLIC,
            CALLER.parse().unwrap(),
            &invite("z9hG4bK-b"),
            &mut out,
        );
        let first = sent(&out)[1].0;
        // Drive time in 100 ms steps to 5 s: two fr_timer (2 s) expiries.
        let mut dests = vec![first];
        let mut finals = Vec::new();
        for step in 1..=50 {
            let now = t0 + Duration::from_millis(100 * step);
            if w.next_deadline().is_some_and(|d| d <= now) {
                out.clear();
                w.on_timer(now, &mut out);
                for (dst, m) in sent(&out) {
                    if m.starts_with("INVITE ") && !dests.contains(&dst) {
                        dests.push(dst);
                    }
                    if m.starts_with("SIP/2.0 ") {
                        finals.push(m);
                    }
                }
            }
        }
        assert_eq!(dests.len(), 2, "both destinations tried: {dests:?}");
        // The 503 went out at 4 s; Timer G resent it (unchanged) at 4.5 s.
        assert_eq!(finals.len(), 2, "{finals:?}");
        assert!(finals[0].starts_with("SIP/2.0 503 "), "{}", finals[0]);
        assert_eq!(finals[0], finals[1]);
        let st = w.stats().snapshot();
        assert_eq!((st.failovers, st.timeouts, st.calls_failed), (1, 2, 1));

        // The caller's ACK stops the retransmissions.
        let ack = String::from_utf8(invite("z9hG4bK-b"))
            .unwrap()
            .replacen("INVITE sip:", "ACK sip:", 1)
            .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
            .replace(
                "To: <sip:100@127.0.0.1>",
                "To: <sip:100@127.0.0.1>;tag=sph0",
            );
        let t5 = t0 + Duration::from_secs(5);
        out.clear();
        w.on_datagram(
            t5,
            SOCK_PUBLIC,
            CALLER.parse().unwrap(),
            ack.as_bytes(),
            &mut out,
        );
        assert!(out.is_empty(), "an ACK for our 503 is absorbed");
        for step in 1..=100 {
            let now = t5 + Duration::from_millis(100 * step);
            out.clear();
            w.on_timer(now, &mut out);
            assert!(out.is_empty(), "nothing after the ACK: {:?}", sent(&out));
        }
    }

    #[test]
    fn overload_sheds_new_invites_with_retry_after() {
        let t0 = Instant::now();
        let cfg = ProxyConfig {
            overload_transactions: 1,
            retry_after_s: 7,
            ..ProxyConfig::default()
        };
        let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
        let mut out = Outbox::new();
        w.on_datagram(
            t0,
            SOCK_PUBLIC,
            CALLER.parse().unwrap(),
            &invite("z9hG4bK-c1"),
            &mut out,
        );
        out.clear();
        w.on_datagram(
            t0,
            SOCK_PUBLIC,
            CALLER.parse().unwrap(),
            &invite("z9hG4bK-c2"),
            &mut out,
        );
        let s = sent(&out);
        assert_eq!(s.len(), 1, "{s:?}");
        assert!(s[0].1.starts_with("SIP/2.0 503 "));
        assert!(s[0].1.contains("Retry-After: 7"), "{}", s[0].1);
        assert_eq!(w.stats().snapshot().overload_rejects, 1);
    }

    #[test]
    fn no_usable_destination_gets_503() {
        let t0 = Instant::now();
        // Flag 4: administratively disabled.
        let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST} 4\n"), t0);
        let mut out = Outbox::new();
        w.on_datagram(
            t0,
            SOCK_PUBLIC,
            CALLER.parse().unwrap(),
            &invite("z9hG4bK-d"),
            &mut out,
        );
        let s = sent(&out);
        assert_eq!(s.len(), 1, "{s:?}");
        assert!(s[0].1.starts_with("SIP/2.0 503 "));
        assert_eq!(w.stats().snapshot().no_destination, 1);

        // The caller's ACK for that 503 has no transaction to end and
        // nowhere to go: dropped, and counted as such (not as a response).
        let ack = String::from_utf8(invite("z9hG4bK-d"))
            .unwrap()
            .replacen("INVITE sip:", "ACK sip:", 1)
            .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
            .replace(
                "To: <sip:100@127.0.0.1>",
                "To: <sip:100@127.0.0.1>;tag=sph0",
            );
        out.clear();
        w.on_datagram(
            t0,
            SOCK_PUBLIC,
            CALLER.parse().unwrap(),
            ack.as_bytes(),
            &mut out,
        );
        assert!(sent(&out).is_empty());
        let st = w.stats().snapshot();
        assert_eq!((st.unmatched_acks, st.stray_responses), (1, 0));
    }

    #[test]
    fn garbage_is_counted_never_answered() {
        let t0 = Instant::now();
        let mut w = worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0);
        let mut out = Outbox::new();
        for junk in [
            &b"\x00\xff\x10"[..],
            b"INVITE",
            b"SIP/2.0 200\r\n\r\n",
            b"\r\n\r\n",
        ] {
            w.on_datagram(t0, SOCK_PUBLIC, CALLER.parse().unwrap(), junk, &mut out);
        }
        assert!(out.is_empty());
        assert_eq!(w.stats().snapshot().parse_errors, 2);
    }
}
