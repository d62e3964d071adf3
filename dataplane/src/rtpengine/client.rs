//! Per-worker ng client state, sans-IO.
//!
//! The client owns what one worker needs to talk to a set of RTPEngines:
//! the engines with their weights and health ([`EngineSet`]), the requests
//! awaiting a reply keyed by cookie, and their retransmission timers. It
//! writes datagrams into caller buffers and never touches a socket or the
//! clock: the driver sends what comes out, feeds replies to
//! [`Client::on_reply`] and calls [`Client::on_timer`] at
//! [`Client::next_deadline`].
//!
//! Behaviour follows Kamailio's `rtpengine` module where it has one:
//! - a new call's `offer` goes to the engine chosen by hash(Call-ID) over
//!   the engines that are up, weighted; if that engine does not answer after
//!   all retransmissions (or answers `load limit`, `Parallel session limit
//!   reached`, `Ran out of ports`) the request moves to the next engine in
//!   that hash order, with a fresh cookie;
//! - everything else about a call (`answer`, `delete`, `query`, a re-INVITE's
//!   `offer`) must reach the engine holding the session, so it is *pinned* to
//!   the engine index the caller kept from the first offer's completion and
//!   never fails over;
//! - an engine that lets `fail_threshold` requests in a row time out is
//!   marked down and gets no new calls; every `recheck_interval` the client
//!   pings it, and any valid reply from it marks it up again.
//!
//! Retransmissions reuse the cookie: RTPEngine answers a repeated cookie
//! from its reply cache, so a retransmitted `offer` never creates a second
//! session.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::ng::{
    split_cookie, write_request, Command, Cookie, CookieGen, NgError, NgFlags, Reply, Request,
};

/// Most engines one set may hold (failover tracks tried engines in a `u64`).
pub const MAX_ENGINES: usize = 64;

/// Client tuning. Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Worker index; part of every cookie.
    pub worker: u16,
    /// Differs per process start (see [`CookieGen`]); part of every cookie.
    pub instance: u32,
    /// Wait for a reply before retransmitting (Kamailio's `rtpengine_tout_ms`).
    pub timeout: Duration,
    /// Retransmissions to one engine before giving up on it (Kamailio's
    /// `rtpengine_retr`); the engine gets `1 + retries` sends in all.
    pub retries: u32,
    /// Most engines one request may try, the first included (Kamailio's
    /// `queried_nodes_limit`).
    pub max_engines_per_request: u32,
    /// Consecutive given-up requests that mark an engine down.
    pub fail_threshold: u32,
    /// How often a down engine is pinged; `None` leaves it down until
    /// [`EngineSet::mark_up`] or a reply to a pinned request.
    pub recheck_interval: Option<Duration>,
    /// Most requests outstanding at once; more are refused.
    pub max_pending: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            worker: 0,
            instance: 0,
            // 3 × 500 ms per engine keeps one engine's failure inside the
            // caller's INVITE retransmission window instead of Kamailio's
            // 5 × 1 s, which blocks its worker meanwhile.
            timeout: Duration::from_millis(500),
            retries: 2,
            max_engines_per_request: MAX_ENGINES as u32,
            fail_threshold: 1,
            recheck_interval: Some(Duration::from_secs(10)),
            max_pending: 4096,
        }
    }
}

/// One RTPEngine of a set.
#[derive(Clone, Debug)]
struct Engine {
    addr: SocketAddr,
    weight: u32,
    seed: u64,
    up: bool,
    failures: u32,
    next_recheck: Option<Instant>,
    probing: bool,
}

/// The engines a worker may use, with weights and health.
#[derive(Clone, Debug, Default)]
pub struct EngineSet {
    engines: Vec<Engine>,
}

impl EngineSet {
    /// A set of `(address, weight)`; all start up. Weight 0 keeps an engine
    /// out of new calls while pinned requests may still reach it. More than
    /// [`MAX_ENGINES`] is refused with [`NgError::BadEngine`].
    pub fn new(engines: &[(SocketAddr, u32)]) -> Result<Self, NgError> {
        if engines.len() > MAX_ENGINES {
            return Err(NgError::BadEngine(engines.len()));
        }
        Ok(EngineSet {
            engines: engines
                .iter()
                .map(|&(addr, weight)| Engine {
                    addr,
                    weight,
                    seed: addr_seed(addr),
                    up: true,
                    failures: 0,
                    next_recheck: None,
                    probing: false,
                })
                .collect(),
        })
    }

    /// Number of engines.
    pub fn len(&self) -> usize {
        self.engines.len()
    }

    /// True when the set has no engines.
    pub fn is_empty(&self) -> bool {
        self.engines.is_empty()
    }

    /// Address of engine `idx`.
    pub fn addr(&self, idx: usize) -> Option<SocketAddr> {
        self.engines.get(idx).map(|e| e.addr)
    }

    /// Weight of engine `idx`.
    pub fn weight(&self, idx: usize) -> Option<u32> {
        self.engines.get(idx).map(|e| e.weight)
    }

    /// Whether engine `idx` is up (false for unknown indexes).
    pub fn is_up(&self, idx: usize) -> bool {
        self.engines.get(idx).is_some_and(|e| e.up)
    }

    /// Index of the engine at `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.engines.iter().position(|e| e.addr == addr)
    }

    /// The engine for a call: highest weighted-rendezvous score of
    /// hash(Call-ID) among engines that are up, have weight and are not in
    /// `exclude` (bit `i` = engine `i`). Removing an engine moves only its
    /// own calls, and the runner-up is the natural failover target.
    pub fn choose(&self, call_hash: u64, exclude: u64) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, e) in self.engines.iter().enumerate() {
            if !e.up || e.weight == 0 || exclude & (1u64 << i) != 0 {
                continue;
            }
            let h = splitmix64(call_hash ^ e.seed);
            // Uniform in (0, 1); -ln(u) is then Exp(1), and weight / Exp(1)
            // gives each engine a win probability proportional to weight.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = f64::from(e.weight) / -u.ln();
            match best {
                Some((_, s)) if s >= score => {}
                _ => best = Some((i, score)),
            }
        }
        best.map(|(i, _)| i)
    }

    /// Marks engine `idx` up (e.g. from a control-thread health check).
    /// Returns true when that changed its state.
    pub fn mark_up(&mut self, idx: usize) -> bool {
        match self.engines.get_mut(idx) {
            Some(e) => {
                e.failures = 0;
                e.next_recheck = None;
                !std::mem::replace(&mut e.up, true)
            }
            None => false,
        }
    }

    /// Marks engine `idx` down; it is pinged again from
    /// `now + recheck_interval` when the client has one. Returns true when
    /// that changed its state.
    pub fn mark_down(&mut self, idx: usize, now: Instant, recheck: Option<Duration>) -> bool {
        match self.engines.get_mut(idx) {
            Some(e) => {
                e.next_recheck = recheck.map(|d| now + d);
                std::mem::replace(&mut e.up, false)
            }
            None => false,
        }
    }
}

/// FNV-1a: stable across builds and processes, so every worker (and every
/// restart) maps a Call-ID to the same engine.
pub fn hash_call_id(call_id: &[u8]) -> u64 {
    call_id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Seeds an engine's score from its address, not its position, so
/// reordering the configured list does not move calls.
fn addr_seed(addr: SocketAddr) -> u64 {
    let mut h = match addr.ip() {
        std::net::IpAddr::V4(ip) => hash_call_id(&ip.octets()),
        std::net::IpAddr::V6(ip) => hash_call_id(&ip.octets()),
    };
    h ^= u64::from(addr.port());
    splitmix64(h)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Where a request was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Engine index in the set.
    pub engine: usize,
    /// Its address: send the datagram here.
    pub addr: SocketAddr,
    /// The request's cookie.
    pub cookie: Cookie,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NgOutcome<'a> {
    /// `result` `ok` or `pong`; the reply borrows the received datagram.
    Ok(Reply<'a>),
    /// Any other result (`error` with `error-reason`, or `load limit` when no
    /// engine was left to try).
    Error(Reply<'a>),
    /// The engine answered with something that is not an ng reply.
    Invalid(NgError),
    /// No reply after every send to every engine tried.
    Timeout,
}

/// A finished request, handed back with the caller's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion<'a> {
    /// The token given when sending.
    pub token: u64,
    /// The engine that answered (or was tried last). For a first `offer` the
    /// caller keeps this and pins the call's later requests to it.
    pub engine: usize,
    /// The command.
    pub command: Command,
    /// The result.
    pub outcome: NgOutcome<'a>,
}

/// An engine's health changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthChange {
    /// Engine index.
    pub engine: usize,
    /// Its new state.
    pub up: bool,
}

/// What timers and replies produce besides a direct completion: datagrams
/// to send, requests that gave up, health changes. Reused across calls (the
/// caller clears it), so it stops allocating once warm.
#[derive(Debug, Default)]
pub struct Output {
    data: Vec<u8>,
    transmits: Vec<(SocketAddr, usize, usize)>,
    completions: Vec<Completion<'static>>,
    health: Vec<HealthChange>,
}

impl Output {
    /// An empty output.
    pub fn new() -> Self {
        Output::default()
    }

    /// Empties it, keeping capacity.
    pub fn clear(&mut self) {
        self.data.clear();
        self.transmits.clear();
        self.completions.clear();
        self.health.clear();
    }

    /// True when there is nothing to act on.
    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty() && self.completions.is_empty() && self.health.is_empty()
    }

    /// Datagrams to send, in order.
    pub fn transmits(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.transmits
            .iter()
            .map(|&(a, s, e)| (a, self.data.get(s..e).unwrap_or_default()))
    }

    /// Requests that finished without a reply ([`NgOutcome::Timeout`]).
    pub fn completions(&self) -> &[Completion<'static>] {
        &self.completions
    }

    /// Engines that went up or down.
    pub fn health(&self) -> &[HealthChange] {
        &self.health
    }

    fn transmit(&mut self, addr: SocketAddr, data: &[u8]) {
        let s = self.data.len();
        self.data.extend_from_slice(data);
        self.transmits.push((addr, s, self.data.len()));
    }
}

#[derive(Debug)]
struct Pending {
    token: u64,
    command: Command,
    engine: usize,
    deadline: Instant,
    sends: u32,
    may_fail_over: bool,
    internal: bool,
    call_hash: u64,
    tried: u64,
    cookie_len: usize,
    buf: Vec<u8>,
}

/// Per-worker ng client. See the module docs.
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    engines: EngineSet,
    cookies: CookieGen,
    pending: HashMap<u64, Pending, ahash::RandomState>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    spare: Vec<Vec<u8>>,
}

impl Client {
    /// A client for `engines` with `cfg`.
    pub fn new(cfg: ClientConfig, engines: EngineSet) -> Self {
        Client {
            cookies: CookieGen::new(cfg.instance, cfg.worker),
            pending: HashMap::with_capacity_and_hasher(
                cfg.max_pending.min(1024),
                ahash::RandomState::new(),
            ),
            timers: BinaryHeap::new(),
            spare: Vec::new(),
            cfg,
            engines,
        }
    }

    /// The engine set (health, addresses).
    pub fn engines(&self) -> &EngineSet {
        &self.engines
    }

    /// The engine set, e.g. to apply health learned elsewhere.
    pub fn engines_mut(&mut self) -> &mut EngineSet {
        &mut self.engines
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Requests awaiting a reply (internal health pings included).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Sends `req`. With `engine: None` the engine is chosen by hash of the
    /// Call-ID over the engines that are up, and the request fails over;
    /// with `Some(i)` it goes to engine `i` whatever its health, and does
    /// not. Appends the datagram to `out`; send it to the returned address.
    /// `token` comes back in the [`Completion`].
    pub fn send(
        &mut self,
        now: Instant,
        engine: Option<usize>,
        req: &Request<'_>,
        token: u64,
        out: &mut Vec<u8>,
    ) -> Result<Sent, NgError> {
        self.start(now, engine, req, token, false, out)
    }

    /// `offer` for a new call, engine chosen by hash(Call-ID), with failover.
    #[allow(clippy::too_many_arguments)]
    pub fn send_offer(
        &mut self,
        now: Instant,
        call_id: &[u8],
        from_tag: &[u8],
        sdp: &[u8],
        flags: &NgFlags,
        token: u64,
        out: &mut Vec<u8>,
    ) -> Result<Sent, NgError> {
        let req = Request::offer(call_id, from_tag, sdp, flags);
        self.send(now, None, &req, token, out)
    }

    /// `answer`, pinned to the engine that took the call's offer.
    #[allow(clippy::too_many_arguments)]
    pub fn send_answer(
        &mut self,
        now: Instant,
        engine: usize,
        call_id: &[u8],
        from_tag: &[u8],
        to_tag: &[u8],
        sdp: &[u8],
        flags: &NgFlags,
        token: u64,
        out: &mut Vec<u8>,
    ) -> Result<Sent, NgError> {
        let req = Request::answer(call_id, from_tag, to_tag, sdp, flags);
        self.send(now, Some(engine), &req, token, out)
    }

    /// `delete`, pinned to the engine holding the call.
    #[allow(clippy::too_many_arguments)]
    pub fn send_delete(
        &mut self,
        now: Instant,
        engine: usize,
        call_id: &[u8],
        from_tag: &[u8],
        to_tag: Option<&[u8]>,
        flags: Option<&NgFlags>,
        token: u64,
        out: &mut Vec<u8>,
    ) -> Result<Sent, NgError> {
        let req = Request::delete(call_id, from_tag, to_tag, flags);
        self.send(now, Some(engine), &req, token, out)
    }

    /// `query`, pinned to the engine holding the call.
    pub fn send_query(
        &mut self,
        now: Instant,
        engine: usize,
        call_id: &[u8],
        token: u64,
        out: &mut Vec<u8>,
    ) -> Result<Sent, NgError> {
        self.send(now, Some(engine), &Request::query(call_id), token, out)
    }

    /// `ping` to engine `engine`; a reply marks it up.
    pub fn send_ping(
        &mut self,
        now: Instant,
        engine: usize,
        token: u64,
        out: &mut Vec<u8>,
    ) -> Result<Sent, NgError> {
        self.send(now, Some(engine), &Request::ping(), token, out)
    }

    /// Forgets every request sent with `token` (its transaction is gone);
    /// late replies to them are then ignored. Returns how many there were.
    pub fn cancel(&mut self, token: u64) -> usize {
        let seqs: smallvec::SmallVec<[u64; 4]> = self
            .pending
            .iter()
            .filter(|(_, p)| p.token == token && !p.internal)
            .map(|(&s, _)| s)
            .collect();
        for s in &seqs {
            if let Some(p) = self.pending.remove(s) {
                self.recycle(p.buf);
            }
        }
        self.prune_timers();
        seqs.len()
    }

    fn start(
        &mut self,
        now: Instant,
        engine: Option<usize>,
        req: &Request<'_>,
        token: u64,
        internal: bool,
        out: &mut Vec<u8>,
    ) -> Result<Sent, NgError> {
        if self.pending.len() >= self.cfg.max_pending {
            return Err(NgError::TooManyPending(self.pending.len()));
        }
        let call_hash = hash_call_id(req.call_id);
        let idx = match engine {
            Some(i) if i < self.engines.len() => i,
            Some(i) => return Err(NgError::BadEngine(i)),
            None => self.engines.choose(call_hash, 0).ok_or(NgError::NoEngine)?,
        };
        let addr = self.engines.addr(idx).ok_or(NgError::BadEngine(idx))?;
        let (seq, cookie) = self.cookies.next_cookie();
        let mut buf = self.spare.pop().unwrap_or_default();
        if let Err(e) = write_request(cookie.as_bytes(), req, &mut buf) {
            self.recycle(buf);
            return Err(e);
        }
        out.extend_from_slice(&buf);
        let deadline = now + self.cfg.timeout;
        self.pending.insert(
            seq,
            Pending {
                token,
                command: req.command,
                engine: idx,
                deadline,
                sends: 1,
                may_fail_over: engine.is_none(),
                internal,
                call_hash,
                tried: 1u64 << idx,
                cookie_len: cookie.as_bytes().len(),
                buf,
            },
        );
        self.timers.push(Reverse((deadline, seq)));
        Ok(Sent {
            engine: idx,
            addr,
            cookie,
        })
    }

    /// Handles a datagram received on the ng socket. Returns the finished
    /// request, borrowing `data` for the reply, or `None` when the datagram
    /// is not a reply to a pending request from its engine, belongs to an
    /// internal health ping, or moved the request to another engine (the
    /// retry is then in `out`).
    pub fn on_reply<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &'a [u8],
        out: &mut Output,
    ) -> Option<Completion<'a>> {
        let (cookie, _) = split_cookie(data).ok()?;
        let seq = self.cookies.seq_of(cookie)?;
        let p = self.pending.get(&seq)?;
        if self.engines.addr(p.engine) != Some(src) {
            return None;
        }
        let engine = p.engine;
        // Any well-formed reply proves the engine alive.
        let parsed = Reply::parse(data);
        if parsed.is_ok() {
            self.engine_ok(engine, out);
        }
        let p = self.pending.remove(&seq)?;
        if let Ok(reply) = &parsed {
            if reply.is_overloaded() && p.may_fail_over {
                match self.fail_over(now, p, out) {
                    Ok(()) => {
                        self.prune_timers();
                        return None;
                    }
                    Err(p) => return self.finish(p, NgOutcome::Error(*reply)),
                }
            }
        }
        let outcome = match parsed {
            Ok(r) if r.is_success() => NgOutcome::Ok(r),
            Ok(r) => NgOutcome::Error(r),
            Err(e) => NgOutcome::Invalid(e),
        };
        self.finish(p, outcome)
    }

    fn finish<'a>(&mut self, p: Pending, outcome: NgOutcome<'a>) -> Option<Completion<'a>> {
        let c = Completion {
            token: p.token,
            engine: p.engine,
            command: p.command,
            outcome,
        };
        let internal = p.internal;
        if internal {
            if let Some(e) = self.engines.engines.get_mut(p.engine) {
                e.probing = false;
            }
        }
        self.recycle(p.buf);
        self.prune_timers();
        (!internal).then_some(c)
    }

    /// Moves `p` to the next engine in its hash order with a fresh cookie,
    /// or hands it back when no engine is left to try.
    fn fail_over(&mut self, now: Instant, mut p: Pending, out: &mut Output) -> Result<(), Pending> {
        if p.tried.count_ones() >= self.cfg.max_engines_per_request {
            return Err(p);
        }
        let Some(next) = self.engines.choose(p.call_hash, p.tried) else {
            return Err(p);
        };
        let Some(addr) = self.engines.addr(next) else {
            return Err(p);
        };
        let (seq, cookie) = self.cookies.next_cookie();
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.extend_from_slice(cookie.as_bytes());
        buf.extend_from_slice(p.buf.get(p.cookie_len..).unwrap_or_default());
        let old = std::mem::replace(&mut p.buf, buf);
        self.recycle(old);
        p.cookie_len = cookie.as_bytes().len();
        p.engine = next;
        p.tried |= 1u64 << next;
        p.sends = 1;
        p.deadline = now + self.cfg.timeout;
        out.transmit(addr, &p.buf);
        self.timers.push(Reverse((p.deadline, seq)));
        self.pending.insert(seq, p);
        Ok(())
    }

    /// Retransmits, gives up, fails over and pings down engines as due.
    pub fn on_timer(&mut self, now: Instant, out: &mut Output) {
        while let Some(&Reverse((deadline, seq))) = self.timers.peek() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            let live = self
                .pending
                .get(&seq)
                .is_some_and(|p| p.deadline == deadline);
            if !live {
                continue;
            }
            let Some(mut p) = self.pending.remove(&seq) else {
                continue;
            };
            if p.sends <= self.cfg.retries {
                p.sends += 1;
                p.deadline = now + self.cfg.timeout;
                if let Some(addr) = self.engines.addr(p.engine) {
                    out.transmit(addr, &p.buf);
                }
                self.timers.push(Reverse((p.deadline, seq)));
                self.pending.insert(seq, p);
                continue;
            }
            self.engine_failed(p.engine, now, out);
            let p = if p.may_fail_over {
                match self.fail_over(now, p, out) {
                    Ok(()) => continue,
                    Err(p) => p,
                }
            } else {
                p
            };
            if let Some(c) = self.finish(p, NgOutcome::Timeout) {
                out.completions.push(c);
            }
        }
        self.recheck(now, out);
        self.prune_timers();
    }

    /// Pings down engines whose recheck time has come.
    fn recheck(&mut self, now: Instant, out: &mut Output) {
        for idx in 0..self.engines.len() {
            let due =
                self.engines.engines.get(idx).is_some_and(|e| {
                    !e.up && !e.probing && e.next_recheck.is_some_and(|t| t <= now)
                });
            if !due || self.pending.len() >= self.cfg.max_pending {
                continue;
            }
            let start = out.data.len();
            let sent = self.start(now, Some(idx), &Request::ping(), 0, true, &mut out.data);
            if let Some(e) = self.engines.engines.get_mut(idx) {
                e.next_recheck = self.cfg.recheck_interval.map(|d| now + d);
                e.probing = sent.is_ok();
            }
            if let Ok(s) = sent {
                out.transmits.push((s.addr, start, out.data.len()));
            }
        }
    }

    fn engine_ok(&mut self, idx: usize, out: &mut Output) {
        if self.engines.mark_up(idx) {
            out.health.push(HealthChange {
                engine: idx,
                up: true,
            });
        }
    }

    fn engine_failed(&mut self, idx: usize, now: Instant, out: &mut Output) {
        let threshold = self.cfg.fail_threshold.max(1);
        let recheck = self.cfg.recheck_interval;
        let Some(e) = self.engines.engines.get_mut(idx) else {
            return;
        };
        e.failures = e.failures.saturating_add(1);
        if e.up && e.failures >= threshold && self.engines.mark_down(idx, now, recheck) {
            out.health.push(HealthChange {
                engine: idx,
                up: false,
            });
        }
    }

    /// Earliest time [`Client::on_timer`] has work: a retransmission, a
    /// give-up or a recheck ping.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        let recheck = self
            .engines
            .engines
            .iter()
            .filter(|e| !e.up && !e.probing)
            .filter_map(|e| e.next_recheck)
            .min();
        match (timer, recheck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drops timer entries of requests that finished or moved, so
    /// `next_deadline` does not report them.
    fn prune_timers(&mut self) {
        while let Some(&Reverse((deadline, seq))) = self.timers.peek() {
            if self
                .pending
                .get(&seq)
                .is_some_and(|p| p.deadline == deadline)
            {
                break;
            }
            self.timers.pop();
        }
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < self.cfg.max_pending.min(1024) {
            buf.clear();
            self.spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtpengine::ng::NgResult;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn client(n: u16, cfg: ClientConfig) -> Client {
        let set: Vec<_> = (0..n).map(|i| (addr(2000 + i), 1)).collect();
        Client::new(cfg, EngineSet::new(&set).unwrap())
    }

    fn cookie_of(dgram: &[u8]) -> Vec<u8> {
        split_cookie(dgram).unwrap().0.to_vec()
    }

    fn reply(cookie: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = cookie.to_vec();
        v.push(b' ');
        v.extend_from_slice(body);
        v
    }

    const OK_SDP: &[u8] = b"d3:sdp3:v=06:result2:oke";

    #[test]
    fn offer_reply_completes_with_the_sdp() {
        let t0 = Instant::now();
        let mut c = client(2, ClientConfig::default());
        let flags = NgFlags::parse("replace-origin ICE=remove").unwrap();
        let mut buf = Vec::new();
        let sent = c
            .send_offer(t0, b"call-1", b"ft", b"v=0", &flags, 42, &mut buf)
            .unwrap();
        assert_eq!(sent.addr, c.engines().addr(sent.engine).unwrap());
        assert_eq!(cookie_of(&buf), sent.cookie.as_bytes());
        assert_eq!(c.pending(), 1);
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_millis(500)));

        let mut out = Output::new();
        let r = reply(sent.cookie.as_bytes(), OK_SDP);
        // From the wrong address: ignored.
        let other = addr(2000 + (1 - sent.engine as u16));
        assert_eq!(c.on_reply(t0, other, &r, &mut out), None);
        let done = c.on_reply(t0, sent.addr, &r, &mut out).unwrap();
        assert_eq!(done.token, 42);
        assert_eq!(done.engine, sent.engine);
        assert_eq!(done.command, Command::Offer);
        let NgOutcome::Ok(rep) = done.outcome else {
            panic!("{done:?}")
        };
        assert_eq!(rep.sdp(), Some(&b"v=0"[..]));
        assert_eq!(c.pending(), 0);
        assert_eq!(c.next_deadline(), None);
        assert!(out.is_empty());
        // A duplicate reply is no longer matched.
        assert_eq!(c.on_reply(t0, sent.addr, &r, &mut out), None);
    }

    #[test]
    fn junk_and_foreign_cookies_are_ignored() {
        let t0 = Instant::now();
        let mut c = client(1, ClientConfig::default());
        let mut buf = Vec::new();
        let sent = c.send_ping(t0, 0, 1, &mut buf).unwrap();
        let mut out = Output::new();
        for junk in [
            &b""[..],
            b"garbage",
            b"00000000_1_0 d6:result4:ponge",
            b"00000000_0_999 d6:result4:ponge",
        ] {
            assert_eq!(c.on_reply(t0, sent.addr, junk, &mut out), None);
        }
        assert_eq!(c.pending(), 1);
        // Our cookie with an undecodable payload completes as Invalid.
        let bad = reply(sent.cookie.as_bytes(), b"d6:result");
        let done = c.on_reply(t0, sent.addr, &bad, &mut out).unwrap();
        assert!(matches!(
            done.outcome,
            NgOutcome::Invalid(NgError::Decode(_))
        ));
    }

    #[test]
    fn error_reply_is_an_error_outcome() {
        let t0 = Instant::now();
        let mut c = client(2, ClientConfig::default());
        let mut buf = Vec::new();
        let sent = c.send_query(t0, 1, b"nope", 9, &mut buf).unwrap();
        assert_eq!(sent.engine, 1);
        let r = reply(
            sent.cookie.as_bytes(),
            b"d6:result5:error12:error-reason15:Unknown call-ide",
        );
        let mut out = Output::new();
        let done = c.on_reply(t0, sent.addr, &r, &mut out).unwrap();
        let NgOutcome::Error(rep) = done.outcome else {
            panic!()
        };
        assert_eq!(rep.result, NgResult::Error);
        assert_eq!(rep.error_reason(), Some(&b"Unknown call-id"[..]));
    }

    #[test]
    fn retransmits_then_fails_over_with_a_new_cookie() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = client(3, ClientConfig::default());
        let f = NgFlags::default();
        let mut buf = Vec::new();
        let first = c
            .send_offer(t0, b"call-x", b"ft", b"v=0", &f, 7, &mut buf)
            .unwrap();
        let mut out = Output::new();

        // Nothing due before the timeout.
        c.on_timer(t0 + ms(499), &mut out);
        assert!(out.is_empty());
        // Two retransmissions of the very same bytes.
        for k in 1..=2u32 {
            out.clear();
            c.on_timer(t0 + ms(500) * k, &mut out);
            let tx: Vec<_> = out.transmits().collect();
            assert_eq!(tx, vec![(first.addr, &buf[..])], "retransmission {k}");
        }
        // Then give up on that engine: it goes down and the offer moves on.
        out.clear();
        c.on_timer(t0 + ms(1500), &mut out);
        assert_eq!(
            out.health(),
            [HealthChange {
                engine: first.engine,
                up: false
            }]
        );
        let tx: Vec<_> = out.transmits().map(|(a, d)| (a, d.to_vec())).collect();
        assert_eq!(tx.len(), 1);
        let (addr2, dgram2) = &tx[0];
        assert_ne!(*addr2, first.addr);
        let cookie2 = cookie_of(dgram2);
        assert_ne!(cookie2, first.cookie.as_bytes());
        // Same payload after the cookie.
        assert_eq!(
            &dgram2[cookie2.len()..],
            &buf[first.cookie.as_bytes().len()..]
        );
        assert!(out.completions().is_empty());
        assert!(!c.engines().is_up(first.engine));

        // A late answer from the first engine is ignored.
        let mut out2 = Output::new();
        let late = reply(first.cookie.as_bytes(), OK_SDP);
        assert_eq!(
            c.on_reply(t0 + ms(1600), first.addr, &late, &mut out2),
            None
        );

        let r = reply(&cookie2, OK_SDP);
        let done = c.on_reply(t0 + ms(1600), *addr2, &r, &mut out2).unwrap();
        assert_eq!(c.engines().index_of(*addr2), Some(done.engine));
        assert_eq!(done.token, 7);
        assert!(matches!(done.outcome, NgOutcome::Ok(_)));
    }

    #[test]
    fn pinned_requests_time_out_without_failover() {
        let t0 = Instant::now();
        let mut c = client(2, ClientConfig::default());
        let f = NgFlags::default();
        let mut buf = Vec::new();
        c.send_answer(t0, 0, b"c", b"ft", b"tt", b"v=0", &f, 5, &mut buf)
            .unwrap();
        let mut out = Output::new();
        let mut now = t0;
        let mut sends = 1;
        while out.completions().is_empty() {
            now = c.next_deadline().unwrap();
            out.clear();
            c.on_timer(now, &mut out);
            sends += out.transmits().count();
        }
        assert_eq!(sends, 3, "1 + retries");
        assert_eq!(now - t0, Duration::from_millis(1500));
        assert_eq!(
            out.completions(),
            [Completion {
                token: 5,
                engine: 0,
                command: Command::Answer,
                outcome: NgOutcome::Timeout
            }]
        );
        assert_eq!(out.transmits().count(), 0);
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn offer_times_out_when_every_engine_is_silent() {
        let t0 = Instant::now();
        let cfg = ClientConfig {
            retries: 0,
            timeout: Duration::from_millis(100),
            recheck_interval: None,
            ..ClientConfig::default()
        };
        let mut c = client(3, cfg);
        let mut buf = Vec::new();
        let f = NgFlags::default();
        c.send_offer(t0, b"c", b"ft", b"v=0", &f, 1, &mut buf)
            .unwrap();
        let mut out = Output::new();
        let mut addrs = vec![];
        let mut downs = 0;
        while let Some(t) = c.next_deadline() {
            out.clear();
            c.on_timer(t, &mut out);
            addrs.extend(out.transmits().map(|(a, _)| a));
            downs += out.health().len();
            if !out.completions().is_empty() {
                assert_eq!(out.completions()[0].outcome, NgOutcome::Timeout);
                break;
            }
        }
        assert_eq!(addrs.len(), 2, "the two other engines were tried");
        assert_eq!(downs, 3);
        assert!((0..3).all(|i| !c.engines().is_up(i)));
        // Nothing left up: new offers are refused at once.
        assert_eq!(
            c.send_offer(t0, b"d", b"ft", b"v=0", &f, 2, &mut buf),
            Err(NgError::NoEngine)
        );
        assert_eq!(c.next_deadline(), None, "no rechecks configured");
    }

    #[test]
    fn max_engines_per_request_limits_failover() {
        let t0 = Instant::now();
        let cfg = ClientConfig {
            retries: 0,
            max_engines_per_request: 2,
            ..ClientConfig::default()
        };
        let mut c = client(4, cfg);
        let mut buf = Vec::new();
        c.send_offer(t0, b"c", b"ft", b"v=0", &NgFlags::default(), 1, &mut buf)
            .unwrap();
        let mut out = Output::new();
        let mut sends = 1;
        loop {
            let t = c.next_deadline().unwrap();
            out.clear();
            c.on_timer(t, &mut out);
            sends += out.transmits().count();
            if !out.completions().is_empty() {
                break;
            }
        }
        assert_eq!(sends, 2);
    }

    #[test]
    fn load_limit_moves_the_offer_and_errors_when_none_left() {
        let t0 = Instant::now();
        let mut c = client(2, ClientConfig::default());
        let mut buf = Vec::new();
        let f = NgFlags::default();
        let s1 = c
            .send_offer(t0, b"c", b"ft", b"v=0", &f, 3, &mut buf)
            .unwrap();
        let mut out = Output::new();
        let busy = reply(s1.cookie.as_bytes(), b"d6:result10:load limite");
        assert_eq!(c.on_reply(t0, s1.addr, &busy, &mut out), None);
        let (a2, d2) = out
            .transmits()
            .next()
            .map(|(a, d)| (a, d.to_vec()))
            .unwrap();
        assert_ne!(a2, s1.addr);
        // Overload is not ill health.
        assert!(c.engines().is_up(s1.engine));
        assert!(out.health().is_empty());
        let busy2 = reply(
            &cookie_of(&d2),
            b"d6:result5:error12:error-reason30:Parallel session limit reachede",
        );
        out.clear();
        let done = c.on_reply(t0, a2, &busy2, &mut out).unwrap();
        let NgOutcome::Error(r) = done.outcome else {
            panic!()
        };
        assert!(r.is_overloaded());
        assert!(out.transmits().next().is_none());
        assert_eq!(c.pending(), 0);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn down_engines_are_pinged_and_come_back() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let cfg = ClientConfig {
            retries: 0,
            recheck_interval: Some(s(10)),
            ..ClientConfig::default()
        };
        let mut c = client(1, cfg);
        let mut buf = Vec::new();
        c.send_ping(t0, 0, 1, &mut buf).unwrap();
        let mut out = Output::new();
        c.on_timer(t0 + s(1), &mut out);
        assert_eq!(out.completions()[0].outcome, NgOutcome::Timeout);
        assert!(!c.engines().is_up(0));
        assert_eq!(c.next_deadline(), Some(t0 + s(11)));

        // Recheck ping; it times out too and the next one is scheduled.
        out.clear();
        c.on_timer(t0 + s(11), &mut out);
        assert_eq!(out.transmits().count(), 1);
        assert!(out.completions().is_empty());
        let t = c.next_deadline().unwrap();
        assert_eq!(t, t0 + s(11) + Duration::from_millis(500));
        out.clear();
        c.on_timer(t, &mut out);
        assert!(out.completions().is_empty(), "internal pings stay internal");
        assert!(out.transmits().next().is_none());
        assert_eq!(c.next_deadline(), Some(t0 + s(21)));

        // The next one gets a pong: the engine is up again.
        out.clear();
        c.on_timer(t0 + s(21), &mut out);
        let (a, d) = out
            .transmits()
            .next()
            .map(|(a, d)| (a, d.to_vec()))
            .unwrap();
        let pong = reply(&cookie_of(&d), b"d6:result4:ponge");
        let mut out2 = Output::new();
        assert_eq!(c.on_reply(t0 + s(21), a, &pong, &mut out2), None);
        assert_eq!(
            out2.health(),
            [HealthChange {
                engine: 0,
                up: true
            }]
        );
        assert!(c.engines().is_up(0));
        assert_eq!(c.next_deadline(), None);
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn fail_threshold_counts_consecutive_give_ups() {
        let t0 = Instant::now();
        let cfg = ClientConfig {
            retries: 0,
            fail_threshold: 2,
            ..ClientConfig::default()
        };
        let mut c = client(1, cfg);
        let mut buf = Vec::new();
        let mut out = Output::new();
        c.send_query(t0, 0, b"a", 1, &mut buf).unwrap();
        c.on_timer(t0 + Duration::from_secs(1), &mut out);
        assert!(c.engines().is_up(0));
        // A reply in between resets the count.
        let s = c.send_ping(t0, 0, 2, &mut buf).unwrap();
        let pong = reply(s.cookie.as_bytes(), b"d6:result4:ponge");
        c.on_reply(t0, s.addr, &pong, &mut out).unwrap();
        c.send_query(t0, 0, b"a", 3, &mut buf).unwrap();
        c.on_timer(t0 + Duration::from_secs(2), &mut out);
        assert!(c.engines().is_up(0));
        c.send_query(t0, 0, b"a", 4, &mut buf).unwrap();
        c.on_timer(t0 + Duration::from_secs(3), &mut out);
        assert!(!c.engines().is_up(0));
        // Pinned requests still go to a down engine.
        assert!(c.send_query(t0, 0, b"a", 5, &mut buf).is_ok());
    }

    #[test]
    fn hashing_is_stable_weighted_and_moves_only_the_removed_engines_calls() {
        let a = addr(1);
        let b = addr(2);
        let cc = addr(3);
        let set = EngineSet::new(&[(a, 1), (b, 3), (cc, 0)]).unwrap();
        let n = 20_000u32;
        let mut counts = [0u32; 3];
        for i in 0..n {
            let h = hash_call_id(format!("call-{i}@x").as_bytes());
            counts[set.choose(h, 0).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "weight 0 gets no calls");
        let share = f64::from(counts[1]) / f64::from(n);
        assert!((0.72..0.78).contains(&share), "weight 3 of 4: {share}");

        // Same choice whatever the order of the list.
        let set2 = EngineSet::new(&[(b, 3), (a, 1)]).unwrap();
        for i in 0..1000u32 {
            let h = hash_call_id(format!("k{i}").as_bytes());
            assert_eq!(
                set.addr(set.choose(h, 0).unwrap()),
                set2.addr(set2.choose(h, 0).unwrap())
            );
        }

        // Taking one engine down remaps only its calls.
        let even = EngineSet::new(&[(a, 1), (b, 1), (cc, 1)]).unwrap();
        let mut less = even.clone();
        less.mark_down(1, Instant::now(), None);
        for i in 0..5000u32 {
            let h = hash_call_id(format!("m{i}").as_bytes());
            let before = even.choose(h, 0).unwrap();
            let after = less.choose(h, 0).unwrap();
            if before != 1 {
                assert_eq!(before, after);
            } else {
                // ... and they go where failover would have sent them.
                assert_eq!(Some(after), even.choose(h, 1 << 1));
            }
        }
        assert_eq!(hash_call_id(b""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn limits_and_bad_input() {
        let t0 = Instant::now();
        let cfg = ClientConfig {
            max_pending: 2,
            ..ClientConfig::default()
        };
        let mut c = client(1, cfg);
        let mut buf = Vec::new();
        c.send_ping(t0, 0, 1, &mut buf).unwrap();
        c.send_ping(t0, 0, 2, &mut buf).unwrap();
        assert_eq!(
            c.send_ping(t0, 0, 3, &mut buf),
            Err(NgError::TooManyPending(2))
        );
        assert_eq!(c.cancel(1), 1);
        assert_eq!(c.send_ping(t0, 5, 3, &mut buf), Err(NgError::BadEngine(5)));
        let before = buf.len();
        assert_eq!(
            c.send_query(t0, 0, b"", 3, &mut buf),
            Err(NgError::MissingField("call-id"))
        );
        assert_eq!(buf.len(), before);
        assert_eq!(c.pending(), 1);
        let many: Vec<_> = (0..65).map(|i| (addr(i), 1)).collect();
        assert!(EngineSet::new(&many).is_err());
        let mut empty = Client::new(ClientConfig::default(), EngineSet::default());
        assert_eq!(
            empty.send_offer(t0, b"c", b"f", b"v", &NgFlags::default(), 0, &mut buf),
            Err(NgError::NoEngine)
        );
    }

    #[test]
    fn cancelled_requests_ignore_late_replies_and_clear_timers() {
        let t0 = Instant::now();
        let mut c = client(1, ClientConfig::default());
        let mut buf = Vec::new();
        let s = c.send_query(t0, 0, b"a", 77, &mut buf).unwrap();
        assert_eq!(c.cancel(77), 1);
        assert_eq!(c.next_deadline(), None);
        let mut out = Output::new();
        let r = reply(s.cookie.as_bytes(), b"d6:result2:oke");
        assert_eq!(c.on_reply(t0, s.addr, &r, &mut out), None);
    }
}
