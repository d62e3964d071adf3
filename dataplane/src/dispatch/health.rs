//! A destination's health: its state (active, inactive, probing, disabled,
//! as Kamailio's dispatcher flags), the policy that takes it out after
//! failures and lets it back after a hold-down, and its live counters
//! ([`DestStats`]), shared by every worker through atomics and kept across
//! table reloads.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use super::list::{FLAG_DISABLED, FLAG_INACTIVE, FLAG_PROBING};
/// Health / admin state of a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DestState {
    /// Receives traffic.
    Active = 0,
    /// Down. After a failure-triggered hold-down it is tried again with live
    /// traffic; when set by an operator (or the list flags) it stays down
    /// until something sets it active.
    Inactive = 1,
    /// Administratively disabled: never selected, not probed back.
    Disabled = 2,
    /// Down and waiting for the OPTIONS prober to bring it back: not selected.
    Probing = 3,
}

impl DestState {
    /// Lower-case name used by the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DestState::Active => "active",
            DestState::Inactive => "inactive",
            DestState::Disabled => "disabled",
            DestState::Probing => "probing",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => DestState::Active,
            1 => DestState::Inactive,
            2 => DestState::Disabled,
            _ => DestState::Probing,
        }
    }

    /// Initial state from Kamailio list flags: 4 (disabled) wins; 1
    /// (inactive) together with 8 (probing) means "down, let the prober bring
    /// it back" (Kamailio shows it as `IP`); 1 alone is inactive until an
    /// operator or the prober activates it. 2 (trying) stays active, as in
    /// Kamailio where trying destinations are still selected.
    pub fn from_kamailio_flags(flags: u32) -> Self {
        if flags & FLAG_DISABLED != 0 {
            DestState::Disabled
        } else if flags & FLAG_INACTIVE != 0 {
            if flags & FLAG_PROBING != 0 {
                DestState::Probing
            } else {
                DestState::Inactive
            }
        } else {
            DestState::Active
        }
    }
}

impl fmt::Display for DestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`DestState::from_str`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown destination state '{0}' (expected active, inactive, disabled, probing or a, i, d, p, ip, tp)")]
pub struct StateParseError(pub String);

impl FromStr for DestState {
    type Err = StateParseError;

    /// Accepts the API names and `kamcmd dispatcher.set_state` letters:
    /// `a`/`ap` active, `i` inactive, `d` disabled, `p`/`ip`/`t`/`tp` probing.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let l = s.trim().to_ascii_lowercase();
        Ok(match l.as_str() {
            "active" | "a" | "ap" | "ax" => DestState::Active,
            "inactive" | "i" | "ix" => DestState::Inactive,
            "disabled" | "d" | "dx" | "dp" => DestState::Disabled,
            "probing" | "p" | "ip" | "t" | "tp" | "tx" => DestState::Probing,
            _ => return Err(StateParseError(s.to_string())),
        })
    }
}

/// How call failures turn into inactivity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures (408/500/503/timeout) that make an active
    /// destination inactive. 0 is treated as 1.
    pub failure_threshold: u32,
    /// How long an inactive destination is skipped before live traffic tries
    /// it again.
    pub hold_down: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            hold_down: Duration::from_secs(30),
        }
    }
}

/// `inactive_until` value meaning "until something sets the state".
const HELD: u64 = u64::MAX;

/// Live counters and state of one destination, shared by every worker and
/// kept across table reloads. Cache-line aligned so two destinations never
/// share a line that workers write.
#[repr(align(64))]
#[derive(Debug)]
pub struct DestStats {
    epoch: Instant,
    state: AtomicU8,
    active_calls: AtomicU32,
    consecutive_failures: AtomicU32,
    /// EWMA in µs; 0 = no sample yet (samples are stored as at least 1).
    latency_us: AtomicU32,
    /// Milliseconds since `epoch`; meaningful while `Inactive`.
    inactive_until_ms: AtomicU64,
    selected: AtomicU64,
    failed: AtomicU64,
}

/// A consistent-enough copy of [`DestStats`] for the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Current state.
    pub state: DestState,
    /// Whether `select` would offer it right now (ignoring `maxload`).
    pub usable: bool,
    /// Calls currently established or being set up through it.
    pub active_calls: u32,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Latency EWMA, if measured.
    pub latency_us: Option<u32>,
    /// When live traffic will try it again (failure-triggered inactivity only).
    pub inactive_until: Option<Instant>,
    /// Times chosen as the first candidate.
    pub selected: u64,
    /// Failures recorded in total.
    pub failed: u64,
}

impl DestStats {
    /// Fresh stats in `state`. `epoch` anchors the hold-down clock; any
    /// `Instant` not later than the `now` values that will be passed works.
    pub fn new(epoch: Instant, state: DestState) -> Self {
        let s = Self {
            epoch,
            state: AtomicU8::new(DestState::Active as u8),
            active_calls: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            latency_us: AtomicU32::new(0),
            inactive_until_ms: AtomicU64::new(0),
            selected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        s.set_state(state);
        s
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(HELD - 1)
    }

    /// Current state.
    #[inline]
    pub fn state(&self) -> DestState {
        DestState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Sets the state as an operator or the prober does. `Inactive` set this
    /// way is held until the next `set_state`; `Active` clears the failure
    /// count.
    pub fn set_state(&self, s: DestState) {
        match s {
            DestState::Active => self.consecutive_failures.store(0, Ordering::Relaxed),
            DestState::Inactive => self.inactive_until_ms.store(HELD, Ordering::Relaxed),
            _ => {}
        }
        self.state.store(s as u8, Ordering::Release);
    }

    /// Makes the destination inactive for `hold_down` from `now`, after which
    /// live traffic tries it again (e.g. on a 503 with Retry-After).
    pub fn mark_inactive(&self, now: Instant, hold_down: Duration) {
        let until = self.ms(now + hold_down);
        self.inactive_until_ms.store(until, Ordering::Relaxed);
        self.state
            .store(DestState::Inactive as u8, Ordering::Release);
    }

    /// Whether the destination may be offered now: active, or inactive with
    /// an expired hold-down (a retry: the next success reactivates it, the
    /// next failure re-arms the hold-down). Disabled and probing never.
    #[inline]
    pub fn is_usable(&self, now: Instant) -> bool {
        match self.state() {
            DestState::Active => true,
            DestState::Inactive => {
                let until = self.inactive_until_ms.load(Ordering::Relaxed);
                until != HELD && self.ms(now) >= until
            }
            DestState::Disabled | DestState::Probing => false,
        }
    }

    /// Records a failed attempt (408/500/503/timeout). Returns `true` when
    /// this failure made an active destination inactive, exactly once even
    /// when workers race, so the caller can log and emit `dst-down`.
    pub fn record_failure(&self, now: Instant, policy: &HealthPolicy) -> bool {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let n = self
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let until = self.ms(now + policy.hold_down);
        match self.state() {
            DestState::Active if n >= policy.failure_threshold.max(1) => {
                self.inactive_until_ms.store(until, Ordering::Relaxed);
                self.state
                    .compare_exchange(
                        DestState::Active as u8,
                        DestState::Inactive as u8,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
            }
            DestState::Inactive => {
                // A retry after the hold-down failed: hold it down again,
                // unless an operator holds it indefinitely.
                let _ = self.inactive_until_ms.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |u| (u != HELD).then_some(until),
                );
                false
            }
            _ => false,
        }
    }

    /// Records a successful attempt. Returns `true` when it brought a
    /// failure-inactivated destination back to active (emit `dst-up`).
    pub fn record_success(&self) -> bool {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.state() == DestState::Inactive
            && self.inactive_until_ms.load(Ordering::Relaxed) != HELD
        {
            return self
                .state
                .compare_exchange(
                    DestState::Inactive as u8,
                    DestState::Active as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        }
        false
    }

    /// Adds a latency sample (e.g. INVITE → first response, or OPTIONS RTT)
    /// to the EWMA (weight 1/8, like TCP's SRTT).
    pub fn record_latency(&self, sample: Duration) {
        let s = u32::try_from(sample.as_micros()).unwrap_or(u32::MAX).max(1);
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    s
                } else {
                    let next = (i64::from(old) * 7 + i64::from(s)) / 8;
                    u32::try_from(next).unwrap_or(u32::MAX).max(1)
                })
            });
    }

    /// Latency EWMA in µs, `None` before the first sample.
    #[inline]
    pub fn latency_us(&self) -> Option<u32> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v),
        }
    }

    /// Raw EWMA for ordering (0 when unmeasured, so new destinations get
    /// measured first).
    #[inline]
    pub(crate) fn latency_key(&self) -> u32 {
        self.latency_us.load(Ordering::Relaxed)
    }

    /// A call was set up through this destination.
    #[inline]
    pub fn call_started(&self) {
        self.active_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// A call through this destination ended (never goes below zero).
    #[inline]
    pub fn call_ended(&self) {
        let _ = self
            .active_calls
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Calls currently through this destination.
    #[inline]
    pub fn active_calls(&self) -> u32 {
        self.active_calls.load(Ordering::Relaxed)
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Counts a first-choice selection.
    #[inline]
    pub fn record_selected(&self) {
        self.selected.fetch_add(1, Ordering::Relaxed);
    }

    /// Times chosen as first candidate.
    pub fn selected(&self) -> u64 {
        self.selected.load(Ordering::Relaxed)
    }

    /// Failures recorded in total.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// When a failure-inactivated destination will be retried.
    pub fn inactive_until(&self) -> Option<Instant> {
        if self.state() != DestState::Inactive {
            return None;
        }
        match self.inactive_until_ms.load(Ordering::Relaxed) {
            HELD => None,
            ms => Some(self.epoch + Duration::from_millis(ms)),
        }
    }

    /// Copy for the API.
    pub fn snapshot(&self, now: Instant) -> StatsSnapshot {
        StatsSnapshot {
            state: self.state(),
            usable: self.is_usable(now),
            active_calls: self.active_calls(),
            consecutive_failures: self.consecutive_failures(),
            latency_us: self.latency_us(),
            inactive_until: self.inactive_until(),
            selected: self.selected(),
            failed: self.failed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn flags_map_to_states() {
        assert_eq!(DestState::from_kamailio_flags(0), DestState::Active);
        assert_eq!(DestState::from_kamailio_flags(2), DestState::Active);
        assert_eq!(DestState::from_kamailio_flags(8), DestState::Active);
        assert_eq!(DestState::from_kamailio_flags(1), DestState::Inactive);
        assert_eq!(DestState::from_kamailio_flags(9), DestState::Probing);
        assert_eq!(DestState::from_kamailio_flags(5), DestState::Disabled);
        assert_eq!(DestState::from_kamailio_flags(12), DestState::Disabled);
        assert_eq!("IP".parse::<DestState>().unwrap(), DestState::Probing);
        assert_eq!("active".parse::<DestState>().unwrap(), DestState::Active);
        assert_eq!("d".parse::<DestState>().unwrap(), DestState::Disabled);
        assert!("zz".parse::<DestState>().is_err());
        for s in [
            DestState::Active,
            DestState::Inactive,
            DestState::Disabled,
            DestState::Probing,
        ] {
            assert_eq!(s.as_str().parse::<DestState>().unwrap(), s);
        }
    }

    #[test]
    fn failure_threshold_and_hold_down() {
        let t0 = Instant::now();
        let s = DestStats::new(t0, DestState::Active);
        let p = HealthPolicy::default();
        assert!(!s.record_failure(t0, &p));
        assert!(!s.record_failure(t0, &p));
        assert!(s.is_usable(t0));
        assert!(s.record_failure(t0, &p), "third failure trips");
        assert_eq!(s.state(), DestState::Inactive);
        assert!(!s.is_usable(t0 + Duration::from_secs(29)));
        assert_eq!(s.inactive_until(), Some(t0 + Duration::from_secs(30)));
        let t1 = t0 + Duration::from_secs(30);
        assert!(s.is_usable(t1), "hold-down expired: retry allowed");
        // The retry fails: held down again from t1, no second dst-down.
        assert!(!s.record_failure(t1, &p));
        assert!(!s.is_usable(t1 + Duration::from_secs(29)));
        assert!(s.is_usable(t1 + Duration::from_secs(30)));
        // The next retry succeeds.
        assert!(s.record_success());
        assert_eq!(s.state(), DestState::Active);
        assert_eq!(s.consecutive_failures(), 0);
        assert!(!s.record_success(), "already active: no dst-up");
        assert_eq!(s.failed(), 4);
        // A success resets the streak.
        s.record_failure(t1, &p);
        s.record_failure(t1, &p);
        s.record_success();
        assert!(!s.record_failure(t1, &p));
        assert_eq!(s.state(), DestState::Active);
    }

    #[test]
    fn admin_states() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(1_000_000);
        let s = DestStats::new(t0, DestState::Inactive);
        assert!(!s.is_usable(far), "held inactive never retried");
        assert!(!s.record_success(), "traffic cannot revive a held one");
        assert_eq!(s.inactive_until(), None);
        s.set_state(DestState::Disabled);
        assert!(!s.is_usable(far));
        assert!(!s.record_failure(far, &HealthPolicy::default()));
        s.set_state(DestState::Probing);
        assert!(!s.is_usable(far));
        s.set_state(DestState::Active);
        assert!(s.is_usable(t0));
        s.mark_inactive(t0, Duration::from_secs(5));
        assert!(!s.is_usable(t0 + Duration::from_secs(4)));
        assert!(s.is_usable(t0 + Duration::from_secs(5)));
        // A `now` before the epoch is treated as the epoch.
        let early = DestStats::new(t0 + Duration::from_secs(10), DestState::Active);
        early.mark_inactive(t0, Duration::from_secs(1));
        assert!(early.is_usable(t0 + Duration::from_secs(10)));
        let zero = HealthPolicy {
            failure_threshold: 0,
            hold_down: Duration::from_secs(1),
        };
        let z = DestStats::new(t0, DestState::Active);
        assert!(z.record_failure(t0, &zero), "threshold 0 acts as 1");
    }

    #[test]
    fn calls_and_latency() {
        let t0 = Instant::now();
        let s = DestStats::new(t0, DestState::Active);
        s.call_ended();
        assert_eq!(s.active_calls(), 0, "never below zero");
        s.call_started();
        s.call_started();
        s.call_ended();
        assert_eq!(s.active_calls(), 1);
        assert_eq!(s.latency_us(), None);
        s.record_latency(Duration::from_micros(800));
        assert_eq!(s.latency_us(), Some(800));
        s.record_latency(Duration::from_micros(1600));
        assert_eq!(s.latency_us(), Some(900));
        s.record_latency(Duration::ZERO);
        assert!(s.latency_us().is_some());
        s.record_latency(Duration::from_secs(1 << 40));
        assert!(s.latency_us().unwrap() > 900);
        let snap = s.snapshot(t0);
        assert_eq!(snap.active_calls, 1);
        assert!(snap.usable);
    }
}
