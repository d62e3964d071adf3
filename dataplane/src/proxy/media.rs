//! Media anchoring: one worker's side of the RTPEngine ng conversation.
//!
//! The worker holds an INVITE carrying SDP in its transaction while the
//! `offer` is in flight and forwards it with the SDP the engine returned;
//! 18x/2xx SDP goes through `answer` before it is relayed; `delete` follows a
//! BYE, a failed or cancelled call and a dialog timeout. This module is the
//! sans-IO glue between the proxy core and [`rtpengine::Client`]: it sends
//! ng datagrams from the worker's own media socket ([`SOCK_MEDIA`]) through
//! the [`Outbox`], maps completions back to transactions by token, counts
//! per engine, and applies engine health the control thread publishes
//! ([`EngineHealth`]) without locks.
//!
//! Each worker has its own socket and cookie space (the cookie carries the
//! worker index), so replies come back to the worker that holds the call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::rtpengine::{Client, ClientConfig, Command, EngineSet, NgError, NgFlags, NgOutcome};
use crate::txn::TxnId;
use crate::worker::{Outbox, SocketId};

use super::stats::bump;

/// The worker's socket towards the RTPEngines (present when anchoring is on).
pub const SOCK_MEDIA: SocketId = 2;

/// What to do with a call when no engine takes its `offer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPolicy {
    /// Answer the INVITE with 503.
    Reject,
    /// Forward the INVITE with its SDP untouched (no anchoring).
    Passthrough,
}

/// Media anchoring settings, validated by the control plane.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Engine ng addresses and weights.
    pub engines: Vec<(SocketAddr, u32)>,
    pub offer_flags: NgFlags,
    pub answer_flags: NgFlags,
    /// Dispatcher sets whose calls are anchored; empty: all.
    pub sets: Vec<u32>,
    /// Wait for a reply before retransmitting.
    pub timeout: Duration,
    /// Retransmissions to one engine before moving to the next.
    pub retries: u32,
    pub on_failure: MediaPolicy,
    /// How often a worker pings an engine it marked down itself.
    pub recheck_interval: Option<Duration>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            engines: Vec::new(),
            offer_flags: NgFlags::default(),
            answer_flags: NgFlags::default(),
            sets: Vec::new(),
            timeout: Duration::from_millis(1000),
            retries: 2,
            on_failure: MediaPolicy::Reject,
            recheck_interval: Some(Duration::from_secs(5)),
        }
    }
}

/// Engine health as the control thread's pings see it. Workers read it with
/// relaxed loads and apply only changes (`epoch` moved), so a worker's own
/// verdict (an engine that stopped answering its requests) stands until the
/// control thread sees a transition.
#[derive(Debug)]
pub struct EngineHealth {
    up: Box<[AtomicBool]>,
    epoch: Box<[AtomicU64]>,
}

impl EngineHealth {
    /// `n` engines, all up.
    pub fn new(n: usize) -> Self {
        EngineHealth {
            up: (0..n).map(|_| AtomicBool::new(true)).collect(),
            epoch: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records engine `i`'s state; true when it changed.
    pub fn set(&self, i: usize, up: bool) -> bool {
        let (Some(u), Some(e)) = (self.up.get(i), self.epoch.get(i)) else {
            return false;
        };
        if u.swap(up, Ordering::AcqRel) == up {
            return false;
        }
        e.fetch_add(1, Ordering::Release);
        true
    }

    /// Whether engine `i` answered the last ping round.
    pub fn is_up(&self, i: usize) -> bool {
        self.up.get(i).is_some_and(|u| u.load(Ordering::Acquire))
    }

    fn epoch(&self, i: usize) -> u64 {
        self.epoch.get(i).map_or(0, |e| e.load(Ordering::Acquire))
    }
}

/// One engine's counters in one worker.
#[derive(Debug, Default)]
pub struct EngineCounters {
    /// `offer`s that got SDP back.
    pub offers: AtomicU64,
    /// `answer`s that got SDP back.
    pub answers: AtomicU64,
    /// `delete`s the engine confirmed.
    pub deletes: AtomicU64,
    /// Requests given up after every retransmission.
    pub timeouts: AtomicU64,
    /// Error or unparsable replies.
    pub errors: AtomicU64,
}

/// A plain copy of [`EngineCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineSnapshot {
    pub offers: u64,
    pub answers: u64,
    pub deletes: u64,
    pub timeouts: u64,
    pub errors: u64,
}

impl EngineSnapshot {
    pub fn add(&mut self, o: &EngineSnapshot) {
        self.offers += o.offers;
        self.answers += o.answers;
        self.deletes += o.deletes;
        self.timeouts += o.timeouts;
        self.errors += o.errors;
    }

    /// (name, value) pairs for metrics.
    pub fn fields(&self) -> [(&'static str, u64); 5] {
        [
            ("offers", self.offers),
            ("answers", self.answers),
            ("deletes", self.deletes),
            ("timeouts", self.timeouts),
            ("errors", self.errors),
        ]
    }
}

/// One worker's media counters; written by that worker only.
#[derive(Debug)]
pub struct MediaStats {
    engines: Box<[CachePadded<EngineCounters>]>,
    /// Calls answered 503 because no engine took the offer (`reject`).
    pub rejected: CachePadded<AtomicU64>,
    /// Calls forwarded un-anchored because no engine took the offer
    /// (`passthrough`).
    pub passthrough: CachePadded<AtomicU64>,
}

impl MediaStats {
    pub fn new(engines: usize) -> Self {
        MediaStats {
            engines: (0..engines).map(|_| CachePadded::default()).collect(),
            rejected: CachePadded::default(),
            passthrough: CachePadded::default(),
        }
    }

    /// Counters of engine `i`.
    pub fn engine(&self, i: usize) -> Option<EngineSnapshot> {
        let c = self.engines.get(i)?;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(EngineSnapshot {
            offers: l(&c.offers),
            answers: l(&c.answers),
            deletes: l(&c.deletes),
            timeouts: l(&c.timeouts),
            errors: l(&c.errors),
        })
    }

    pub fn engines(&self) -> usize {
        self.engines.len()
    }
}

/// What the workers and the control thread share about media anchoring.
#[derive(Debug)]
pub struct MediaShared {
    pub config: MediaConfig,
    /// Published by the control thread's pings.
    pub health: EngineHealth,
    /// Per worker, by index.
    pub stats: Vec<Arc<MediaStats>>,
    /// Differs per process start; part of every cookie (see `CookieGen`).
    pub instance: u32,
}

impl MediaShared {
    pub fn new(config: MediaConfig, workers: usize, instance: u32) -> Self {
        let n = config.engines.len();
        MediaShared {
            health: EngineHealth::new(n),
            stats: (0..workers).map(|_| Arc::new(MediaStats::new(n))).collect(),
            config,
            instance,
        }
    }

    /// Whether any call can be anchored (an engine is configured).
    pub fn anchors_any(&self) -> bool {
        !self.config.engines.is_empty()
    }

    /// Whether calls routed to `set` are anchored.
    pub fn anchors_set(&self, set: u32) -> bool {
        !self.config.engines.is_empty()
            && (self.config.sets.is_empty() || self.config.sets.contains(&set))
    }

    /// Counters of engine `i` summed over the workers.
    pub fn engine_totals(&self, i: usize) -> EngineSnapshot {
        let mut t = EngineSnapshot::default();
        for s in &self.stats {
            if let Some(e) = s.engine(i) {
                t.add(&e);
            }
        }
        t
    }

    /// (rejected, passthrough) summed over the workers.
    pub fn policy_totals(&self) -> (u64, u64) {
        self.stats.iter().fold((0, 0), |(r, p), s| {
            (
                r + s.rejected.load(Ordering::Relaxed),
                p + s.passthrough.load(Ordering::Relaxed),
            )
        })
    }
}

/// How an ng request of a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The engine returned this SDP.
    Sdp(&'a [u8]),
    /// Error reply, reply without SDP, garbage, or no reply at all.
    Failed,
}

/// A finished `offer` / `answer` of transaction `txn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done<'a> {
    pub txn: TxnId,
    pub engine: usize,
    pub command: Command,
    pub outcome: Outcome<'a>,
}

/// Deletes and other fire-and-forget requests carry no transaction.
const NO_TXN: u64 = 0;

/// The token of a transaction's ng requests: slot and (non-zero) generation.
pub fn token_of(id: TxnId) -> u64 {
    (u64::from(id.slot()) << 32) | u64::from(id.generation())
}

fn txn_of(token: u64) -> Option<TxnId> {
    TxnId::from_parts((token >> 32) as u32, token as u32)
}

/// One worker's ng client and its bookkeeping. See the module docs.
pub struct Media {
    shared: Arc<MediaShared>,
    stats: Arc<MediaStats>,
    client: Client,
    output: crate::rtpengine::Output,
    buf: Vec<u8>,
    /// Health epochs already applied, per engine.
    seen: Vec<u64>,
    /// Timed-out requests of transactions, collected by `on_timer`.
    timed_out: Vec<(u64, usize, Command)>,
}

impl Media {
    /// Worker `index`'s client for the shared engine set.
    pub fn new(shared: Arc<MediaShared>, index: usize) -> Result<Media, NgError> {
        let cfg = &shared.config;
        let engines = EngineSet::new(&cfg.engines)?;
        let client = Client::new(
            ClientConfig {
                worker: index as u16,
                instance: shared.instance,
                timeout: cfg.timeout,
                retries: cfg.retries,
                recheck_interval: cfg.recheck_interval,
                ..ClientConfig::default()
            },
            engines,
        );
        let stats = shared
            .stats
            .get(index)
            .cloned()
            .unwrap_or_else(|| Arc::new(MediaStats::new(cfg.engines.len())));
        Ok(Media {
            seen: vec![0; cfg.engines.len()],
            shared,
            stats,
            client,
            output: crate::rtpengine::Output::new(),
            buf: Vec::with_capacity(4096),
            timed_out: Vec::with_capacity(64),
        })
    }

    pub fn shared(&self) -> &Arc<MediaShared> {
        &self.shared
    }

    pub fn policy(&self) -> MediaPolicy {
        self.shared.config.on_failure
    }

    /// Counts a call the policy rejected or passed through.
    pub fn count_policy(&self) {
        match self.policy() {
            MediaPolicy::Reject => bump(&self.stats.rejected),
            MediaPolicy::Passthrough => bump(&self.stats.passthrough),
        }
    }

    /// Applies health transitions the control thread published since last time.
    fn sync_health(&mut self, now: Instant) {
        let recheck = self.shared.config.recheck_interval;
        for (i, seen) in self.seen.iter_mut().enumerate() {
            let epoch = self.shared.health.epoch(i);
            if epoch == *seen {
                continue;
            }
            *seen = epoch;
            if self.shared.health.is_up(i) {
                self.client.engines_mut().mark_up(i);
            } else {
                self.client.engines_mut().mark_down(i, now, recheck);
            }
        }
    }

    /// Sends an `offer`: for a new call (`pinned: None`) the engine is chosen
    /// by hash(Call-ID) over the engines that are up, with failover; a
    /// re-INVITE's goes to the engine holding the call. Returns the engine
    /// tried first.
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &mut self,
        now: Instant,
        txn: TxnId,
        pinned: Option<usize>,
        call_id: &[u8],
        from_tag: &[u8],
        sdp: &[u8],
        out: &mut Outbox,
    ) -> Result<usize, NgError> {
        self.sync_health(now);
        self.buf.clear();
        let req = crate::rtpengine::Request::offer(
            call_id,
            from_tag,
            sdp,
            &self.shared.config.offer_flags,
        );
        let sent = self
            .client
            .send(now, pinned, &req, token_of(txn), &mut self.buf)?;
        out.send(SOCK_MEDIA, sent.addr, &self.buf);
        Ok(sent.engine)
    }

    /// Sends the `answer` for a response's SDP, pinned to the call's engine.
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &mut self,
        now: Instant,
        txn: TxnId,
        engine: usize,
        call_id: &[u8],
        from_tag: &[u8],
        to_tag: &[u8],
        sdp: &[u8],
        out: &mut Outbox,
    ) -> Result<(), NgError> {
        self.buf.clear();
        let sent = self.client.send_answer(
            now,
            engine,
            call_id,
            from_tag,
            to_tag,
            sdp,
            &self.shared.config.answer_flags,
            token_of(txn),
            &mut self.buf,
        )?;
        out.send(SOCK_MEDIA, sent.addr, &self.buf);
        Ok(())
    }

    /// Sends `delete` for a call to its engine; the reply is only counted.
    pub fn delete(
        &mut self,
        now: Instant,
        engine: usize,
        call_id: &[u8],
        from_tag: &[u8],
        out: &mut Outbox,
    ) {
        self.buf.clear();
        match self.client.send_delete(
            now,
            engine,
            call_id,
            from_tag,
            None,
            None,
            NO_TXN,
            &mut self.buf,
        ) {
            Ok(sent) => out.send(SOCK_MEDIA, sent.addr, &self.buf),
            Err(_) => {
                if let Some(c) = self.stats.engines.get(engine) {
                    bump(&c.errors);
                }
            }
        }
    }

    /// Forgets the pending requests of `txn` (it ended); late replies are ignored.
    pub fn cancel(&mut self, txn: TxnId) {
        self.client.cancel(token_of(txn));
    }

    /// A datagram on the media socket. Returns the finished request of a
    /// transaction, borrowing `data` for the SDP.
    pub fn on_datagram<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &'a [u8],
        out: &mut Outbox,
    ) -> Option<Done<'a>> {
        self.output.clear();
        let done = self.client.on_reply(now, src, data, &mut self.output);
        self.flush(out);
        let c = done?;
        let outcome = match c.outcome {
            NgOutcome::Ok(r) => {
                self.count_ok(c.engine, c.command);
                match r.sdp() {
                    Some(sdp) if !sdp.is_empty() => Outcome::Sdp(sdp),
                    _ => Outcome::Failed,
                }
            }
            NgOutcome::Error(_) | NgOutcome::Invalid(_) => {
                if let Some(e) = self.stats.engines.get(c.engine) {
                    bump(&e.errors);
                }
                Outcome::Failed
            }
            NgOutcome::Timeout => {
                if let Some(e) = self.stats.engines.get(c.engine) {
                    bump(&e.timeouts);
                }
                Outcome::Failed
            }
        };
        Some(Done {
            txn: txn_of(c.token)?,
            engine: c.engine,
            command: c.command,
            outcome,
        })
    }

    fn count_ok(&self, engine: usize, command: Command) {
        let Some(e) = self.stats.engines.get(engine) else {
            return;
        };
        match command {
            Command::Offer => bump(&e.offers),
            Command::Answer => bump(&e.answers),
            Command::Delete => bump(&e.deletes),
            _ => {}
        }
    }

    /// Retransmits and gives up as due; the transactions whose request gave
    /// up are appended to `failed`.
    pub fn on_timer(&mut self, now: Instant, out: &mut Outbox, failed: &mut Vec<Done<'static>>) {
        self.output.clear();
        self.client.on_timer(now, &mut self.output);
        self.flush(out);
        self.timed_out.clear();
        for c in self.output.completions() {
            if let Some(e) = self.stats.engines.get(c.engine) {
                bump(&e.timeouts);
            }
            if let Some(txn) = txn_of(c.token) {
                failed.push(Done {
                    txn,
                    engine: c.engine,
                    command: c.command,
                    outcome: Outcome::Failed,
                });
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.client.next_deadline()
    }

    fn flush(&mut self, out: &mut Outbox) {
        for (addr, data) in self.output.transmits() {
            out.send(SOCK_MEDIA, addr, data);
        }
        for h in self.output.health() {
            let addr = self.client.engines().addr(h.engine);
            if h.up {
                tracing::info!(engine = ?addr, "rtpengine answers again");
            } else {
                tracing::warn!(engine = ?addr, "rtpengine stopped answering; no new calls to it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_collide_with_deletes() {
        let id = TxnId::from_parts(7, 3).unwrap();
        assert_eq!(txn_of(token_of(id)), Some(id));
        assert_eq!(txn_of(NO_TXN), None);
    }

    #[test]
    fn health_transitions_are_counted_once() {
        let h = EngineHealth::new(2);
        assert!(h.is_up(1));
        assert!(!h.set(1, true));
        assert!(h.set(1, false));
        assert!(!h.set(1, false));
        assert_eq!(h.epoch(1), 1);
        assert!(!h.is_up(1));
        assert!(!h.set(5, false), "unknown engine");
    }
}
