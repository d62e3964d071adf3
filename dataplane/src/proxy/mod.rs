//! The routing logic of one worker: initial request → select a destination →
//! relay; response → fail over or forward upstream; in-dialog request → loose
//! route. Sans-IO: the driver in `worker` feeds datagrams and time in and
//! sends what lands in the [`Outbox`].

pub mod branch;
pub mod config;
pub mod events;
pub mod flood;
pub mod media;
mod pool;
pub mod stats;
mod transaction;

#[cfg(test)]
mod lifetime_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use crate::dialog::{DialogKey, DialogState, DialogTable};
use crate::dispatch::hash::hash_bytes;
use crate::dispatch::{DestStats, SelectKey, Selector, SharedTable};
use crate::sip::build::{self, NewVia, ReplyOpts, RequestEdits};
use crate::sip::parse::RequestInfo;
use crate::sip::{parse, HeaderName, Message, Method, Via};
use crate::txn::timer::TimerWheel;
use crate::txn::{KeyHasher, LegacyKeyParts, TxnId, TxnKey, TxnTable};
use crate::worker::{Core, Outbox, SocketId};

use crate::route::{self, parse_ip, Decision};
use branch::{Branch, Minter, Rejected};
pub use config::{Ownership, ProxyConfig, SetRule, UnknownDomain};
use events::{CallEvent, EventSink};
use flood::{FloodGuard, Verdict};
use media::{Done, Media, MediaPolicy, Outcome, SOCK_MEDIA};
use pool::BufPool;
use stats::{bump, count_reply};
pub use stats::{Counters, ProxyStats, Snapshot};
use transaction::{Abandoned, ClientTx, MediaLeg, ProxyTxn, ServerTx, Target};

/// The worker's socket on the shared public port.
pub const SOCK_PUBLIC: SocketId = 0;
/// The worker's private port: its Via and Record-Route point here.
pub const SOCK_PRIVATE: SocketId = 1;
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
    /// "sip:ADVERTISE:PRIVATE_PORT;lr", written into Record-Route.
    record_route: Vec<u8>,
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
    /// Per-source rate limits; `None` when off.
    flood: Option<FloodGuard>,
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
        let (cfg_flood, flood_seed) = (cfg.flood, cfg.key_seed);
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
            minter: Minter::new(cfg.branch_secret, cfg.epoch),
            table,
            cfg,
            stats,
            events: None,
            handed_over: false,
            flood: cfg_flood.map(|l| FloodGuard::new(l, flood_seed, now)),
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
        if self.flood.is_some()
            && !self.handed_over
            && self.over_flood_limit(now, socket, src, msg, out)
        {
            return;
        }
        if self.cfg.balance_by_call_id
            && socket == SOCK_PUBLIC
            && self.workers > 1
            && !self.handed_over
        {
            // Spread calls by Call-ID rather than by the kernel's per-source
            // hash, so one trunk's calls use every worker. Every request of a
            // call (retransmissions, CANCEL, ACK) has the same Call-ID and so
            // the same owner.
            if let Ok(call_id) = msg.call_id() {
                let owner = (hash_bytes(call_id) % self.workers as u64) as usize;
                if owner != self.index {
                    bump(&self.stats.handoffs);
                    out.handoff(owner, socket | HANDED_OVER, src, msg.buf());
                    return;
                }
            }
        }
        bump(&self.stats.requests);
        let method = msg.method().unwrap_or(Method::Other);
        // Parsed once here; the routing decision works from it.
        let info = match msg.validated_request() {
            Ok(info) => info,
            Err(e) => {
                bump(&self.stats.bad_requests);
                // Never answer an ACK (RFC 3261 §17.2.3), not even a broken one.
                if method != Method::Ack {
                    let warning = e.to_string();
                    self.reply(socket, src, msg, 400, None, Some(warning.as_bytes()), out);
                }
                return;
            }
        };
        let via = info.common.via;
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
                self.relay_stateless(now, socket, src, msg, &info, out);
            }
            Method::Cancel => self.handle_cancel(now, socket, src, msg, &via, out),
            _ => {
                if let Some(id) = self.txns.find(&key) {
                    self.absorb_retransmission(now, id, out);
                    return;
                }
                self.new_request(now, socket, src, msg, &info, key, method, out);
            }
        }
    }

    /// The routing decision for a request from `src`. Trust is looked up
    /// only where the policy needs it.
    fn decide(
        &self,
        msg: &Message<'_>,
        info: &RequestInfo<'_>,
        method: Method,
        src: SocketAddr,
    ) -> Decision {
        let table = self.table.load();
        route::decide(
            route::Request {
                msg,
                info,
                method,
                trusted: &|| self.cfg.is_trusted_ip(src.ip()) || table.has_addr(src),
                handed_over: self.handed_over,
            },
            &self.cfg,
            self.index,
            &|ip| self.cfg.is_trusted_ip(ip) || table.has_ip(ip),
        )
    }

    /// The per-source limit, before anything else: true when the request was
    /// refused. Trust is looked up only for a source over its rate.
    fn over_flood_limit(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) -> bool {
        let Some(guard) = self.flood.as_mut() else {
            return false;
        };
        let Verdict::Blocked { started } = guard.check(src.ip(), now) else {
            return false;
        };
        let limits = *guard.limits();
        if self.cfg.is_trusted_ip(src.ip()) || self.table.load().has_addr(src) {
            return false;
        }
        if started {
            bump(&self.stats.flood_blocks);
            tracing::warn!(
                worker = self.index,
                source = %src.ip(),
                rps = limits.per_source_rps,
                block_s = limits.block.as_secs(),
                "source over its request rate: blocked"
            );
        }
        bump(&self.stats.flood_rejects);
        if !limits.drop && msg.method() != Some(Method::Ack) {
            let retry = u32::try_from(limits.block.as_secs()).unwrap_or(u32::MAX);
            self.reply(
                socket,
                src,
                msg,
                503,
                Some(retry),
                Some(b"Too many requests"),
                out,
            );
        }
        true
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
        info: &RequestInfo<'_>,
        key: TxnKey,
        method: Method,
        out: &mut Outbox,
    ) {
        let via = &info.common.via;
        let in_dialog = info.common.to.tag.is_some();
        let mut candidates: SmallVec<[u16; 16]> = SmallVec::new();
        let mut set_table = None;
        let mut anchor = false;
        let decision = self.decide(msg, info, method, src);
        let mut strict_route = false;
        let (target, pop_routes) = match decision {
            Decision::Reply { code, warning } => {
                match code {
                    400 => bump(&self.stats.bad_requests),
                    482 | 483 => bump(&self.stats.loops),
                    403 | 404 => bump(&self.stats.relay_denied),
                    _ => {}
                }
                let warning = warning.map(str::as_bytes);
                self.reply(socket, src, msg, code, None, warning, out);
                return;
            }
            Decision::Options => {
                self.reply_options(socket, src, msg, out);
                return;
            }
            Decision::Handoff(w) => {
                bump(&self.stats.handoffs);
                out.handoff(w, socket | HANDED_OVER, src, msg.buf());
                return;
            }
            Decision::Relay {
                to,
                pop_routes,
                strict,
            } => {
                strict_route = strict;
                (
                    Target {
                        addr: to,
                        dest: None,
                    },
                    pop_routes,
                )
            }
            Decision::Dispatch {
                set: set_id,
                media: rule_media,
                pop_routes,
            } => {
                if method == Method::Invite && self.txns.len() >= self.cfg.overload_transactions {
                    bump(&self.stats.overload_rejects);
                    let retry = self.cfg.retry_after_s;
                    self.reply(socket, src, msg, 503, Some(retry), Some(b"Overloaded"), out);
                    return;
                }
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
                let key = SelectKey {
                    call_id: info.common.call_id,
                    from_uri: info.common.from.uri,
                    to_uri: info.common.to.uri,
                    ruri: msg.request_uri().unwrap_or(b""),
                    auth_user: (self.cfg.algorithm == crate::dispatch::Algorithm::HashAuthUser)
                        .then(|| crate::sip::auth::credentials_username(msg))
                        .flatten(),
                };
                let set_index = set.index();
                self.selector
                    .select(set, self.cfg.algorithm, &key, now, &mut candidates);
                let Some(&first) = candidates.first() else {
                    bump(&self.stats.no_destination);
                    if method == Method::Invite {
                        self.emit_failed(now, msg, 503, None);
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
                let target = Target {
                    addr: dest.addr,
                    dest: Some(dest.stats.clone()),
                };
                set_table = Some((table.clone(), set_index));
                (target, pop_routes)
            }
        };

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
        if in_dialog && method != Method::Bye && method != Method::Ack {
            self.dialog_refreshed(now, msg);
        }
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
            strict_route,
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
            abandoned: SmallVec::new(),
            holds_call: false,
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
        if method == Method::Invite && !in_dialog {
            // Counted now, not at the 2xx: call-load selection and `maxload`
            // must see the calls that are still ringing.
            if let Some(txn) = self.txns.get_mut(id) {
                if let Some(d) = &txn.target.dest {
                    d.call_started();
                    txn.holds_call = true;
                }
            }
        }
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
        let branch = self.minter.seal(&Branch {
            worker: self.index as u8,
            slot: id.slot(),
            generation: id.generation(),
            attempt,
            epoch: self.minter.epoch(),
        });
        let received_ip = txn.received.map(|(ip, _)| ip_bytes(ip));
        let edits = RequestEdits {
            via: NewVia {
                host: self.cfg.advertise.as_bytes(),
                port: self.private_port(),
                branch: &branch,
            },
            request_uri: if txn.strict_route {
                route::last_route_uri(&req)
            } else {
                None
            },
            pop_routes: txn.pop_routes,
            drop_last_route: txn.strict_route,
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
    /// its route set, under the same policy as every other request.
    fn relay_stateless(
        &mut self,
        _now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        info: &RequestInfo<'_>,
        out: &mut Outbox,
    ) {
        let via = &info.common.via;
        let decision = self.decide(msg, info, Method::Ack, src);
        let (dst, pop_routes, strict) = match decision {
            Decision::Relay {
                to,
                pop_routes,
                strict,
            } => (to, pop_routes, strict),
            Decision::Handoff(w) => {
                bump(&self.stats.handoffs);
                out.handoff(w, socket | HANDED_OVER, src, msg.buf());
                return;
            }
            // An ACK is never answered: what has nowhere to go is dropped.
            _ => {
                bump(&self.stats.unmatched_acks);
                return;
            }
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
            request_uri: if strict {
                route::last_route_uri(msg)
            } else {
                None
            },
            pop_routes,
            drop_last_route: strict,
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
        let b = match self.minter.open(via.branch.unwrap_or(b"")) {
            Ok(b) if b.epoch == self.minter.epoch() => b,
            Err(Rejected::Forged) => {
                // sipvane's form but not its seal: a guess or a tamper. It
                // must change nothing (no failover, no health mark).
                bump(&self.stats.forged_responses);
                return;
            }
            // Not a Via this process wrote: nothing to do with it.
            _ => {
                bump(&self.stats.stray_responses);
                return;
            }
        };
        let owner = usize::from(b.worker);
        if owner != self.index {
            if owner < self.workers && !self.handed_over {
                bump(&self.stats.handoffs);
                out.handoff(owner, socket | HANDED_OVER, src, msg.buf());
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

        let abandoned = txn.abandoned.iter().position(|a| a.attempt == b.attempt);
        if cseq_method == Method::Cancel {
            let cancel = match abandoned {
                Some(i) => txn.abandoned[i].cancel.as_mut(),
                None => txn.cancel.as_mut(),
            };
            if let Some(c) = cancel {
                c.on_response(code, now);
            }
            self.reschedule(id);
            return;
        }
        if let Some(i) = abandoned {
            self.abandoned_response(now, id, i, msg, code, src, out);
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
                            code,
                            reply: events::Reply::of(msg),
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

    /// A response from an attempt given up without a final: CANCEL it once
    /// it rings (RFC 3261 §9.1: not before), relay a 2xx (§16.7), ACK any
    /// other final.
    #[allow(clippy::too_many_arguments)]
    fn abandoned_response(
        &mut self,
        now: Instant,
        id: TxnId,
        i: usize,
        msg: &Message<'_>,
        code: u16,
        src: SocketAddr,
        out: &mut Outbox,
    ) {
        let Some(txn) = self.txns.get(id) else { return };
        let Some(a) = txn.abandoned.get(i) else {
            return;
        };
        let (attempt, addr, cancelled) = (a.attempt, a.addr, a.cancel.is_some());
        match code {
            100..=199 if !cancelled => {
                let mut fwd = self.pool.get();
                let mut built = false;
                if self.write_forward(id, attempt, &mut fwd) {
                    if let Ok(inv) = parse(&fwd) {
                        self.scratch.clear();
                        built = build::cancel_for(&inv, &mut self.scratch).is_ok();
                    }
                }
                self.pool.put(fwd);
                if built {
                    out.send(SOCK_PRIVATE, addr, &self.scratch);
                    bump(&self.stats.tx_datagrams);
                    bump(&self.stats.abandoned_cancels);
                    let timers = self.cfg.timers;
                    if let Some(a) = self.txns.get_mut(id).and_then(|t| t.abandoned.get_mut(i)) {
                        a.cancel = Some(ClientTx::new(Method::Cancel, now, &timers));
                    }
                }
            }
            100..=199 => {}
            200..=299 => {
                self.relay_response(now, id, msg, code, out);
                self.forget_abandoned(id, attempt);
            }
            _ => {
                self.ack_old_attempt(id, attempt, msg, src, out);
                self.forget_abandoned(id, attempt);
            }
        }
        self.reschedule(id);
    }

    fn forget_abandoned(&mut self, id: TxnId, attempt: u8) {
        if let Some(txn) = self.txns.get_mut(id) {
            txn.abandoned.retain(|a| a.attempt != attempt);
        }
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
            if txn.holds_call {
                if let Some(old) = &txn.target.dest {
                    old.call_ended();
                }
                dest.stats.call_started();
            }
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
        txn.last_response.clear();
        let built = match parse(&txn.request) {
            Ok(req) => {
                let tag = local_tag(&self.minter, &req);
                let opts = ReplyOpts {
                    to_tag: Some(&tag),
                    retry_after: retry,
                    warning,
                    server: Some(self.cfg.server_header.as_bytes()),
                    ..ReplyOpts::default()
                };
                build::reply(
                    &req,
                    code,
                    build::reason_phrase(code),
                    &opts,
                    &mut txn.last_response,
                )
                .is_ok()
            }
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
        }
        if let (false, Some(sink)) = (txn.final_sent, &self.events) {
            let dest = txn.target.dest.is_some().then_some(txn.target.addr);
            let (m, c) = (txn.method, txn.cancelled);
            if let Some(ev) = events::on_final(now, m, code, c, dest, &txn.last_response) {
                sink.push(ev);
            }
        }
        if code >= 300 && std::mem::take(&mut txn.holds_call) {
            if let Some(d) = &txn.target.dest {
                d.call_ended();
            }
        }
        txn.final_sent = true;
        txn.server.on_final_sent(code, now);
        // What a finished transaction still needs is its last response; the
        // request copies go back to the pool now rather than at Timer J/L.
        // An abandoned attempt that rings late needs the request to be
        // rebuilt for its CANCEL (or its final's ACK): kept until then.
        if code >= 200 && txn.abandoned.is_empty() {
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
        let session_expires = session_expires(resp);
        // The INVITE's call slot passes to the dialog.
        if let Some(txn) = self.txns.get_mut(id) {
            if !std::mem::take(&mut txn.holds_call) {
                if let Some(d) = &dest {
                    d.call_started();
                }
            }
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
            session_expires,
        };
        match self.dialogs.insert(key, DialogState::Confirmed, data, now) {
            Ok(d) => {
                bump(&self.stats.dialogs_created);
                if let Some(at) = self.session_deadline(now, session_expires) {
                    self.dialogs.set_expiry(d, at);
                }
            }
            Err(_) => {
                if let Some(d) = &dest {
                    d.call_ended();
                }
                bump(&self.stats.dialogs_full);
            }
        }
        true
    }

    /// In-dialog traffic keeps a dialog alive: its expiry moves to
    /// `dialog_timeout` (or its session interval) from now.
    fn dialog_refreshed(&mut self, now: Instant, msg: &Message<'_>) {
        let Some((key, ..)) = self.dialog_key(msg) else {
            return;
        };
        let Some(id) = self.dialogs.find(&key) else {
            return;
        };
        let se = self.dialogs.get(id).map_or(0, |d| d.data.session_expires);
        match self.session_deadline(now, se) {
            Some(at) => {
                self.dialogs.set_expiry(id, at);
            }
            None => {
                self.dialogs.touch(id, now);
            }
        }
    }

    /// When a dialog with session interval `se` (RFC 4028) expires if not
    /// refreshed: the interval plus 32 s of grace for the refresh to arrive,
    /// never later than `dialog_timeout`; `None` without an interval.
    fn session_deadline(&self, now: Instant, se: u32) -> Option<Instant> {
        (se > 0).then(|| {
            let interval = std::time::Duration::from_secs(u64::from(se) + 32);
            now + interval.min(self.cfg.dialog_timeout)
        })
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

    /// A call failed with sipvane's own reply to `req` (which carries the
    /// local To-tag and the code's standard phrase).
    fn emit_failed(&self, now: Instant, req: &Message<'_>, code: u16, dest: Option<SocketAddr>) {
        if let Some(sink) = &self.events {
            sink.push(CallEvent::Failed {
                at: now,
                call_id: events::text(req.call_id().unwrap_or(b"")),
                code,
                dest,
                reply: events::Reply {
                    from_tag: events::text(req.from().ok().and_then(|f| f.tag).unwrap_or(b"")),
                    to_tag: events::text(&local_tag(&self.minter, req)),
                    reason: events::text(build::reason_phrase(code)),
                },
                cancelled: false,
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
        if !txn.abandoned.is_empty() {
            self.abandoned_timers(now, id, out);
        }
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        let client_event = txn.client.as_mut().map(|c| c.on_timer(now));
        match client_event {
            Some(ClientTimer::Retransmit) => {
                out.send(SOCK_PRIVATE, txn.target.addr, &txn.forwarded);
                bump(&self.stats.tx_datagrams);
            }
            Some(ClientTimer::Timeout { proceeding }) => {
                bump(&self.stats.timeouts);
                if !proceeding && txn.method == Method::Invite {
                    // Silent so far; if it rings later it must be cancelled.
                    let until = now + 64 * self.cfg.timers.t1;
                    txn.abandoned.push(Abandoned {
                        attempt: txn.attempt,
                        addr: txn.target.addr,
                        until,
                        cancel: None,
                    });
                }
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

    /// Retransmits the CANCELs of abandoned attempts and forgets those
    /// watched long enough.
    fn abandoned_timers(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        txn.abandoned.retain(|a| a.until > now);
        let mut resend: SmallVec<[(u8, SocketAddr); 2]> = SmallVec::new();
        for a in txn.abandoned.iter_mut() {
            if let Some(c) = a.cancel.as_mut() {
                if c.on_timer(now) == transaction::ClientTimer::Retransmit {
                    resend.push((a.attempt, a.addr));
                }
            }
        }
        for (attempt, addr) in resend {
            let mut fwd = self.pool.get();
            if self.write_forward(id, attempt, &mut fwd) {
                if let Ok(inv) = parse(&fwd) {
                    self.scratch.clear();
                    if build::cancel_for(&inv, &mut self.scratch).is_ok() {
                        out.send(SOCK_PRIVATE, addr, &self.scratch);
                        bump(&self.stats.tx_datagrams);
                    }
                }
            }
            self.pool.put(fwd);
        }
    }

    fn recycle(&mut self, txn: ProxyTxn) {
        if txn.holds_call {
            if let Some(d) = &txn.target.dest {
                d.call_ended();
            }
        }
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
        let tag = local_tag(&self.minter, req);
        let opts = ReplyOpts {
            to_tag: Some(&tag),
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
        let tag = local_tag(&self.minter, req);
        let opts = ReplyOpts {
            to_tag: Some(&tag),
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
        self.handed_over = socket & HANDED_OVER != 0;
        let socket = socket & !HANDED_OVER;
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
mod events_tests;
#[cfg(test)]
mod media_tests;
