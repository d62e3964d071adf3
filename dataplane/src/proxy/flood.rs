//! Per-source flood limits (`[security.flood]`): a token bucket per source
//! IP, checked before a request creates any state. A source that empties its
//! bucket is blocked for `block` and everything it sends meanwhile is refused
//! cheaply.
//!
//! Memory is fixed at start: a direct-mapped table of `max_sources` slots
//! indexed by a keyed hash of the IP (so a peer cannot aim collisions). A new
//! source takes over a slot whose occupant is idle; a blocked occupant keeps
//! its slot, so rotating source addresses cannot unblock anyone.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    /// Requests per second (and burst) one source may send to one worker.
    pub per_source_rps: u32,
    /// How long a source over its rate is refused.
    pub block: Duration,
    /// Drop a blocked source's requests instead of answering 503.
    pub drop: bool,
    /// Slots in the table (rounded up to a power of two).
    pub max_sources: usize,
}

/// What a request from a source gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over the limit; `started` on the request that started the block.
    Blocked {
        started: bool,
    },
}

/// One request costs this many units; a source earns `per_source_rps` units
/// a millisecond, up to one second's worth.
const UNIT: u64 = 1000;

#[derive(Clone, Copy)]
struct Slot {
    ip: Option<IpAddr>,
    tokens: u64,
    /// Milliseconds since `base` of the last refill.
    at_ms: u64,
    blocked_until_ms: u64,
}

const EMPTY: Slot = Slot {
    ip: None,
    tokens: 0,
    at_ms: 0,
    blocked_until_ms: 0,
};

pub struct FloodGuard {
    limits: FloodLimits,
    slots: Box<[Slot]>,
    hasher: ahash::RandomState,
    base: Instant,
}

impl FloodGuard {
    pub fn new(limits: FloodLimits, seed: [u64; 4], now: Instant) -> FloodGuard {
        let n = limits.max_sources.clamp(1, 1 << 24).next_power_of_two();
        FloodGuard {
            limits,
            slots: vec![EMPTY; n].into_boxed_slice(),
            hasher: ahash::RandomState::with_seeds(seed[0], seed[1], seed[2], seed[3]),
            base: now,
        }
    }

    pub fn limits(&self) -> &FloodLimits {
        &self.limits
    }

    /// Accounts one request from `ip` at `now`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        let ms =
            u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX);
        let rate = u64::from(self.limits.per_source_rps);
        let cap = rate * UNIT;
        let i = (self.hasher.hash_one(ip) as usize) & (self.slots.len() - 1);
        let slot = &mut self.slots[i];
        if slot.ip != Some(ip) {
            let idle = slot.blocked_until_ms <= ms
                && slot.tokens + ms.saturating_sub(slot.at_ms) * rate >= cap;
            if slot.ip.is_some() && !idle {
                // The slot belongs to a busy or blocked source: this one goes
                // untracked for now rather than freeing the other.
                return Verdict::Pass;
            }
            *slot = Slot {
                ip: Some(ip),
                tokens: cap,
                at_ms: ms,
                blocked_until_ms: 0,
            };
        }
        if slot.blocked_until_ms > ms {
            return Verdict::Blocked { started: false };
        }
        slot.tokens = (slot.tokens + ms.saturating_sub(slot.at_ms) * rate).min(cap);
        slot.at_ms = ms;
        if slot.tokens >= UNIT {
            slot.tokens -= UNIT;
            return Verdict::Pass;
        }
        let block = u64::try_from(self.limits.block.as_millis()).unwrap_or(u64::MAX);
        slot.blocked_until_ms = ms.saturating_add(block);
        // The bucket starts full again when the block ends.
        slot.tokens = cap;
        slot.at_ms = slot.blocked_until_ms;
        Verdict::Blocked { started: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(rps: u32, block_s: u64, now: Instant) -> FloodGuard {
        FloodGuard::new(
            FloodLimits {
                per_source_rps: rps,
                block: Duration::from_secs(block_s),
                drop: false,
                max_sources: 16,
            },
            [1, 2, 3, 4],
            now,
        )
    }

    #[test]
    fn a_source_over_its_rate_is_blocked_for_block_then_passes_again() {
        let t0 = Instant::now();
        let mut g = guard(10, 5, t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(g.check(ip, t0), Verdict::Pass);
        }
        assert_eq!(g.check(ip, t0), Verdict::Blocked { started: true });
        assert_eq!(
            g.check(ip, t0 + Duration::from_secs(1)),
            Verdict::Blocked { started: false }
        );
        assert_eq!(
            g.check(ip, t0 + Duration::from_millis(4999)),
            Verdict::Blocked { started: false }
        );
        assert_eq!(g.check(ip, t0 + Duration::from_secs(5)), Verdict::Pass);
        // Another source was never affected.
        assert_eq!(g.check("192.0.2.2".parse().unwrap(), t0), Verdict::Pass);
    }

    #[test]
    fn a_steady_source_under_its_rate_is_never_blocked() {
        let t0 = Instant::now();
        let mut g = guard(100, 5, t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // 90 requests a second for 10 s.
        for i in 0..900u64 {
            let now = t0 + Duration::from_micros(i * 11_111);
            assert_eq!(g.check(ip, now), Verdict::Pass, "request {i}");
        }
    }

    #[test]
    fn memory_is_fixed_and_rotating_sources_cannot_free_a_blocked_one() {
        let t0 = Instant::now();
        let mut g = guard(1, 60, t0);
        let bad: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(g.check(bad, t0), Verdict::Pass);
        assert_eq!(g.check(bad, t0), Verdict::Blocked { started: true });
        for i in 0..100_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = g.check(ip, t0);
        }
        assert_eq!(g.slots.len(), 16);
        assert_eq!(g.check(bad, t0), Verdict::Blocked { started: false });
    }
}
