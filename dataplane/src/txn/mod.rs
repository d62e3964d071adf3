//! Sans-IO SIP transaction layer of a transaction-stateful proxy
//! (RFC 3261 §17 with the RFC 6026 corrections, and Kamailio `tm`'s
//! `fr_timer` / `fr_inv_timer` semantics).
//!
//! The state machines never read a clock, touch a socket or hold message
//! bytes: the proxy feeds them already-extracted facts (status codes, "a
//! retransmission arrived", "an ACK arrived") together with `now`, and acts on
//! the small action enum each call returns. Each machine exposes
//! `next_deadline()`; the proxy keeps one [`timer::TimerWheel`] entry per
//! transaction at that instant (see [`ArmedTimer`]) and calls `on_timer(now)`
//! when it fires. `on_timer` rechecks its own deadlines, so early or spurious
//! calls are harmless no-ops.
//!
//! After every call the proxy should check `is_terminated()` and drop the
//! transaction from its [`TxnTable`] when it is.
//!
//! Timers replaced by Kamailio semantics: the client transactions do not run
//! RFC 3261 Timer B/F (64·T1); they time out on `fr_timer` (no reply at all, or
//! for non-INVITE no final reply) and `fr_inv_timer` (INVITE: no final reply
//! after a provisional), which operators tune and expect. Every "linger after
//! the final to absorb retransmissions" timer — D, I, J, K, L — is Kamailio's
//! `wt_timer` ([`TimerConfig::wait`]), not RFC 3261's 32 s (D, J, L) or T4
//! (I, K): a finished transaction holds its slot for one configured time.

pub mod client;
pub mod fork;
pub mod key;
pub mod server;
pub(crate) mod slab;
pub mod table;
pub mod timer;

use std::time::{Duration, Instant};

pub use client::{
    ClientAction, ClientInvite, ClientInviteState, ClientNonInvite, ClientNonInviteState,
};
pub use key::{is_rfc3261_branch, KeyHasher, LegacyKeyParts, TxnKey, MAGIC_COOKIE};
pub use server::{
    ServerAction, ServerInvite, ServerInviteState, ServerNonInvite, ServerNonInviteState,
    TRYING_DELAY,
};
pub use table::{InsertError, TxnId, TxnTable};
pub use timer::{TimerId, TimerWheel};

/// Transaction timer values (RFC 3261 Appendix A names, Kamailio `tm` names for
/// the final-response timers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate; first retransmission interval (Timers A, E, G) and the
    /// unit of the 64·T1 timers (H, J, L, CANCEL wait). Default 500 ms.
    pub t1: Duration,
    /// Cap of the non-INVITE request and INVITE final response retransmission
    /// interval (Timers E, G). Default 4 s.
    pub t2: Duration,
    /// Kamailio `fr_timer`: how long a client transaction waits for the first
    /// reply (any, including 100) before timing out; for non-INVITE requests,
    /// how long it waits for the final reply (a 1xx does not extend it, as in
    /// Kamailio). Default 2 s.
    pub fr_timer: Duration,
    /// Kamailio `fr_inv_timer`: after an INVITE received a provisional reply,
    /// how long to wait for its final reply. Default 120 s.
    pub fr_inv_timer: Duration,
    /// Kamailio `restart_fr_on_each_reply`: restart `fr_inv_timer` on every
    /// provisional reply (default true, as in Kamailio), not only the first.
    pub restart_fr_inv_on_each_reply: bool,
    /// Kamailio `wt_timer`: how long a finished transaction lingers to
    /// absorb retransmissions — server Timers J (non-INVITE), L (INVITE
    /// answered 2xx) and I (after the ACK of a non-2xx), client Timers D
    /// (INVITE, non-2xx final) and K (non-INVITE) — instead of RFC 3261's
    /// 64·T1 (32 s: J, L, D) and T4 (I, K). A 2xx retransmitted after it is
    /// still relayed, statelessly; a late non-2xx retransmission is answered
    /// by the peer's own timers. Default 5 s, as in Kamailio; bounds how many
    /// finished transactions a busy proxy keeps (a failed call used to hold
    /// its slot 32 s under Timer D).
    pub wait: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            fr_timer: Duration::from_secs(2),
            fr_inv_timer: Duration::from_secs(120),
            restart_fr_inv_on_each_reply: true,
            wait: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// 64·T1 (32 s by default): Timer H and the wait for a final reply after
    /// CANCEL.
    pub fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// Whether the transport the transaction runs over retransmits for us.
/// On reliable transports (TCP, TLS, SCTP) the request/response
/// retransmission timers (A, E, G) are not run and the "absorb late
/// retransmissions" waits (D, I, J, K) are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reliability {
    /// UDP.
    Unreliable,
    /// TCP, TLS, SCTP, WebSocket.
    Reliable,
}

impl Reliability {
    pub(crate) fn is_reliable(self) -> bool {
        self == Reliability::Reliable
    }
}

/// Classification of a status code. Codes outside 100..=699 are `Invalid`;
/// the machines ignore them (the parser should have rejected them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Provisional,
    Success,
    Failure,
    Invalid,
}

pub(crate) fn classify(status: u16) -> Class {
    match status {
        100..=199 => Class::Provisional,
        200..=299 => Class::Success,
        300..=699 => Class::Failure,
        _ => Class::Invalid,
    }
}

/// `a` if set and not after `b`, else `b`.
pub(crate) fn min_deadline(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// A timer interval in 4 bytes (whole milliseconds, saturating at ~49 days)
/// instead of a 16-byte `Duration`: every transaction machine keeps several
/// copies of its timer values, and a busy worker holds hundreds of thousands
/// of machines. Timer values are configured in milliseconds anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ms(u32);

impl Ms {
    pub(crate) fn of(d: Duration) -> Ms {
        Ms(u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
    }

    pub(crate) fn d(self) -> Duration {
        Duration::from_millis(u64::from(self.0))
    }

    /// Twice as long (saturating), for retransmission back-off.
    pub(crate) fn doubled(self) -> Ms {
        Ms(self.0.saturating_mul(2))
    }
}

pub(crate) fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}

/// Keeps one [`TimerWheel`] entry in step with a state machine's
/// `next_deadline()`.
///
/// Call [`ArmedTimer::sync`] after every event handled by the machine, and
/// [`ArmedTimer::fired`] when the wheel released this entry. The wheel entry is
/// only touched when the wanted deadline actually changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArmedTimer {
    id: Option<TimerId>,
    at: Option<Instant>,
}

impl ArmedTimer {
    /// No wheel entry.
    pub const fn new() -> Self {
        ArmedTimer { id: None, at: None }
    }

    /// The deadline currently armed in the wheel.
    pub fn armed_at(&self) -> Option<Instant> {
        self.at
    }

    /// Makes the wheel hold exactly one entry at `want` (none when `None`),
    /// created with `item()`.
    pub fn sync<T>(
        &mut self,
        wheel: &mut TimerWheel<T>,
        want: Option<Instant>,
        item: impl FnOnce() -> T,
    ) {
        if want == self.at && self.id.is_some_and(|id| wheel.contains(id)) {
            return;
        }
        match (self.id, want) {
            (Some(id), Some(at)) if wheel.reschedule(id, at) => {}
            (Some(id), None) => {
                wheel.cancel(id);
                self.id = None;
            }
            (_, Some(at)) => self.id = Some(wheel.insert(at, item())),
            (None, None) => {}
        }
        self.at = want;
    }

    /// Forgets the entry after the wheel released it (so `sync` re-arms).
    pub fn fired(&mut self) {
        self.id = None;
        self.at = None;
    }

    /// Cancels the wheel entry, e.g. when the transaction is dropped.
    pub fn disarm<T>(&mut self, wheel: &mut TimerWheel<T>) {
        if let Some(id) = self.id.take() {
            wheel.cancel(id);
        }
        self.at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_rfc_and_kamailio() {
        let c = TimerConfig::default();
        assert_eq!(c.t1, Duration::from_millis(500));
        assert_eq!(c.t2, Duration::from_secs(4));
        assert_eq!(c.fr_timer, Duration::from_secs(2));
        assert_eq!(c.fr_inv_timer, Duration::from_secs(120));
        assert_eq!(c.t1x64(), Duration::from_secs(32));
        assert_eq!(c.wait, Duration::from_secs(5));
    }

    #[test]
    fn classify_codes() {
        assert_eq!(classify(100), Class::Provisional);
        assert_eq!(classify(199), Class::Provisional);
        assert_eq!(classify(200), Class::Success);
        assert_eq!(classify(487), Class::Failure);
        assert_eq!(classify(699), Class::Failure);
        assert_eq!(classify(99), Class::Invalid);
        assert_eq!(classify(700), Class::Invalid);
        assert_eq!(classify(0), Class::Invalid);
    }

    #[test]
    fn armed_timer_tracks_deadline_changes() {
        let base = Instant::now();
        let mut wheel = TimerWheel::new(base);
        let mut t = ArmedTimer::new();
        let d1 = base + Duration::from_millis(500);
        t.sync(&mut wheel, Some(d1), || 1u32);
        assert_eq!(wheel.len(), 1);
        t.sync(&mut wheel, Some(d1), || 2u32);
        assert_eq!(wheel.len(), 1, "same deadline: untouched");
        let d2 = base + Duration::from_millis(200);
        t.sync(&mut wheel, Some(d2), || 3u32);
        assert_eq!(wheel.len(), 1);
        // The wheel may report a conservative (early) deadline, never a late one.
        assert!(wheel.next_deadline().is_some_and(|d| d <= d2));
        let mut out = Vec::new();
        wheel.expire(d2 - Duration::from_millis(1), &mut out);
        assert!(out.is_empty());
        wheel.expire(d2, &mut out);
        assert_eq!(out, vec![1], "rescheduled, not re-inserted");
        t.fired();
        t.sync(&mut wheel, Some(d1), || 4u32);
        assert_eq!(wheel.len(), 1);
        t.sync(&mut wheel, None, || 5u32);
        assert!(wheel.is_empty());
        t.sync(&mut wheel, Some(d1), || 6u32);
        t.disarm(&mut wheel);
        assert!(wheel.is_empty());
        assert_eq!(t.armed_at(), None);
    }
}
