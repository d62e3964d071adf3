//! Per-source flood limits (`[security.flood]`): a rate per source IP,
//! checked before a request creates any state. A source over its rate is
//! blocked for `block` and everything it sends meanwhile is refused cheaply.
//!
//! One table serves every worker: a source whose datagrams the kernel spreads
//! over several workers (many source ports) is held to one rate, not one per
//! worker. Each slot is a single `AtomicU64` updated with compare-and-swap, so
//! the check takes no lock: the rate is GCRA (the "virtual scheduling" form of
//! a token bucket), which needs only one time per source, its theoretical
//! arrival time (TAT). A request at `now` passes while `TAT - now <= tau`,
//! then moves the TAT on by the emission interval `T = 1 s / rps`; with
//! `tau = (rps - 1) T` a source may send `rps` requests back to back, as the
//! bucket it replaces allowed.
//!
//! Memory is fixed at start: a direct-mapped table of `max_sources` slots
//! indexed by a keyed hash of the IP (so a peer cannot aim collisions), with
//! 12 more bits of that hash kept as a tag to tell the occupant apart. A new
//! source takes over a slot whose occupant is idle (TAT passed); a busy or
//! blocked occupant keeps its slot and the newcomer passes untracked, so
//! rotating source addresses cannot unblock anyone.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The limits, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    /// Requests per second (and burst) one source may send, over all
    /// workers together.
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
    /// Over the limit; `started` on the one request (of all workers) that
    /// started the block.
    Blocked {
        started: bool,
    },
}

/// A slot word: `blocked` (1 bit) | tag (12 bits) | time in µs since the
/// guard's base (51 bits, 71 years). The time is the TAT, or while blocked
/// the end of the block; once a block has ended its end is the TAT, so the
/// source starts again with its whole burst. An empty slot (0) reads as an
/// idle source.
const BLOCKED: u64 = 1 << 63;
const TAG_SHIFT: u32 = 51;
const TAG_MASK: u64 = 0xfff << TAG_SHIFT;
const TIME_MASK: u64 = (1 << TAG_SHIFT) - 1;

/// The rate arithmetic of one slot, apart from the shared table: the new
/// word for a request from the source tagged `tag` at `now` (µs), given the
/// slot's word; `None` when the word stays as it is.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// Emission interval, µs (≥ 1).
    interval: u64,
    /// Burst tolerance, µs.
    tolerance: u64,
    /// Block length, µs.
    block: u64,
}

impl Gcra {
    fn new(limits: &FloodLimits) -> Gcra {
        let rps = u64::from(limits.per_source_rps.max(1));
        let interval = (1_000_000 / rps).max(1);
        Gcra {
            interval,
            tolerance: (rps - 1) * interval,
            block: u64::try_from(limits.block.as_micros()).unwrap_or(TIME_MASK),
        }
    }

    fn step(&self, word: u64, tag: u64, now: u64) -> (Verdict, Option<u64>) {
        let time = word & TIME_MASK;
        let blocked = word & BLOCKED != 0 && time > now;
        if word & TAG_MASK != tag {
            if blocked || time > now {
                // A busy or blocked source owns the slot: this one goes
                // untracked for now rather than freeing the other.
                return (Verdict::Pass, None);
            }
            return (
                Verdict::Pass,
                Some(tag | (now + self.interval).min(TIME_MASK)),
            );
        }
        if blocked {
            return (Verdict::Blocked { started: false }, None);
        }
        let tat = time.max(now);
        if tat - now > self.tolerance {
            let until = now.saturating_add(self.block).min(TIME_MASK);
            return (
                Verdict::Blocked { started: true },
                Some(BLOCKED | tag | until),
            );
        }
        (
            Verdict::Pass,
            Some(tag | (tat + self.interval).min(TIME_MASK)),
        )
    }
}

/// The table, shared by every worker (`ProxyConfig::flood`).
pub struct FloodGuard {
    limits: FloodLimits,
    gcra: Gcra,
    slots: Box<[AtomicU64]>,
    hasher: ahash::RandomState,
    base: Instant,
}

impl std::fmt::Debug for FloodGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FloodGuard")
            .field("limits", &self.limits)
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl FloodGuard {
    pub fn new(limits: FloodLimits, seed: [u64; 4], now: Instant) -> FloodGuard {
        let n = limits.max_sources.clamp(1, 1 << 24).next_power_of_two();
        FloodGuard {
            limits,
            gcra: Gcra::new(&limits),
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            hasher: ahash::RandomState::with_seeds(seed[0], seed[1], seed[2], seed[3]),
            base: now,
        }
    }

    pub fn limits(&self) -> &FloodLimits {
        &self.limits
    }

    /// Accounts one request from `ip` at `now`; any worker, concurrently.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Verdict {
        let now = u64::try_from(now.saturating_duration_since(self.base).as_micros())
            .unwrap_or(TIME_MASK)
            .min(TIME_MASK);
        let hash = self.hasher.hash_one(ip);
        let slot = &self.slots[(hash as usize) & (self.slots.len() - 1)];
        let tag = (hash >> 52) << TAG_SHIFT;
        let mut word = slot.load(Ordering::Relaxed);
        loop {
            let (verdict, next) = self.gcra.step(word, tag, now);
            let Some(next) = next else {
                return verdict;
            };
            // Relaxed: the slot is the whole state, nothing else is
            // published with it.
            match slot.compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return verdict,
                Err(current) => word = current,
            }
        }
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
        let g = guard(10, 5, t0);
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
        // The block over, the whole burst is there again.
        for _ in 0..10 {
            assert_eq!(g.check(ip, t0 + Duration::from_secs(5)), Verdict::Pass);
        }
        // Another source was never affected.
        assert_eq!(g.check("192.0.2.2".parse().unwrap(), t0), Verdict::Pass);
    }

    #[test]
    fn a_steady_source_under_its_rate_is_never_blocked() {
        let t0 = Instant::now();
        let g = guard(100, 5, t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // 90 requests a second for 10 s.
        for i in 0..900u64 {
            let now = t0 + Duration::from_micros(i * 11_111);
            assert_eq!(g.check(ip, now), Verdict::Pass, "request {i}");
        }
    }

    #[test]
    fn a_source_just_over_its_rate_is_caught_once_the_burst_is_spent() {
        let t0 = Instant::now();
        let g = guard(100, 5, t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // 110 requests a second: the 100-request burst covers the excess
        // of the first ten seconds or so, then the source is blocked.
        let blocked_at = (0..2_000u64)
            .find(|i| g.check(ip, t0 + Duration::from_micros(i * 9_091)) != Verdict::Pass)
            .expect("never blocked");
        assert!(
            (1_000..1_200).contains(&blocked_at),
            "blocked at {blocked_at}"
        );
    }

    #[test]
    fn memory_is_fixed_and_rotating_sources_cannot_free_a_blocked_one() {
        let t0 = Instant::now();
        let g = guard(1, 60, t0);
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

    #[test]
    fn workers_share_one_rate_and_one_block_start() {
        // Four threads (workers) take requests of one source at the same
        // instant: exactly `rps` pass in all, and exactly one request starts
        // the block (so it is counted and logged once).
        let t0 = Instant::now();
        let g = std::sync::Arc::new(guard(500, 5, t0));
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    let (mut pass, mut started) = (0, 0);
                    for _ in 0..1_000 {
                        match g.check(ip, t0) {
                            Verdict::Pass => pass += 1,
                            Verdict::Blocked { started: true } => started += 1,
                            Verdict::Blocked { started: false } => {}
                        }
                    }
                    (pass, started)
                })
            })
            .collect();
        let (pass, started) = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert_eq!((pass, started), (500, 1));
    }

    #[test]
    fn the_slot_word_keeps_the_time_within_its_bits() {
        let g = Gcra::new(&FloodLimits {
            per_source_rps: u32::MAX,
            block: Duration::MAX,
            drop: true,
            max_sources: 1,
        });
        assert_eq!(g.interval, 1);
        let tag = 0xabc << TAG_SHIFT;
        let (_, next) = g.step(tag | TIME_MASK, tag, TIME_MASK);
        assert_eq!(next.unwrap() & !TIME_MASK, tag, "tag kept, no carry");
    }
}
