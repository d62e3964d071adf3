//! Destination selection: every Kamailio `dispatcher` algorithm by number and
//! name, plus consistent hashing (`rendezvous`, `rendezvous-from`: a Maglev
//! table, see [`super::maglev`]).
//!
//! [`Selector::select`] writes an ordered candidate list: the chosen
//! destination first, then the failover order. Only destinations that are
//! usable now and below their `maxload` are listed. The failover order is
//! Kamailio's (the rest of the set in set order after the chosen one,
//! wrapping), except for consistent hashing (the key's walk through the
//! Maglev table: where the key would go if the ones before disappeared) and
//! latency (ascending latency).

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use smallvec::SmallVec;

use super::hash::{hash_bytes, hash_uri, mix64, SplitMix64};
use super::table::Set;

/// A selection algorithm. The discriminant is Kamailio's number where it has
/// one; the rendezvous variants are sipvane's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// 0: hash over the Call-ID.
    HashCallId = 0,
    /// 1: hash over the From URI (user@host).
    HashFrom = 1,
    /// 2: hash over the To URI (user@host).
    HashTo = 2,
    /// 3: hash over the Request-URI (user@host).
    HashRuri = 3,
    /// 4: round-robin.
    RoundRobin = 4,
    /// 5: hash over the authorization username; round-robin without one.
    HashAuthUser = 5,
    /// 6: random.
    Random = 6,
    /// 8: first by priority (serial forking in priority order).
    Priority = 8,
    /// 9: `weight` attribute as a percentage of calls.
    Weight = 9,
    /// 10: least active calls, honouring `maxload`.
    CallLoad = 10,
    /// 11: `rweight` relative to the currently usable destinations.
    RelativeWeight = 11,
    /// 13: lowest latency EWMA first.
    Latency = 13,
    /// Consistent hashing on the Call-ID (named after the rendezvous hashing
    /// it used to be; a Maglev table since, O(1) per call).
    Rendezvous,
    /// Consistent hashing on the From URI (user@host).
    RendezvousFrom,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 14] = [
        Algorithm::HashCallId,
        Algorithm::HashFrom,
        Algorithm::HashTo,
        Algorithm::HashRuri,
        Algorithm::RoundRobin,
        Algorithm::HashAuthUser,
        Algorithm::Random,
        Algorithm::Priority,
        Algorithm::Weight,
        Algorithm::CallLoad,
        Algorithm::RelativeWeight,
        Algorithm::Latency,
        Algorithm::Rendezvous,
        Algorithm::RendezvousFrom,
    ];

    /// Canonical name (accepted by `FromStr`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HashCallId => "hash-callid",
            Algorithm::HashFrom => "hash-from",
            Algorithm::HashTo => "hash-to",
            Algorithm::HashRuri => "hash-ruri",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::HashAuthUser => "hash-auth-user",
            Algorithm::Random => "random",
            Algorithm::Priority => "priority",
            Algorithm::Weight => "weight",
            Algorithm::CallLoad => "call-load",
            Algorithm::RelativeWeight => "relative-weight",
            Algorithm::Latency => "latency",
            Algorithm::Rendezvous => "rendezvous",
            Algorithm::RendezvousFrom => "rendezvous-from",
        }
    }

    /// Kamailio's algorithm number, if it has one.
    pub fn kamailio_number(self) -> Option<u32> {
        match self {
            Algorithm::Rendezvous | Algorithm::RendezvousFrom => None,
            a => Some(a as u32),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error of [`Algorithm::from_str`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AlgorithmParseError {
    /// A Kamailio algorithm sipvane does not implement.
    #[error("dispatcher algorithm {0} ({1}) is not supported")]
    Unsupported(u32, &'static str),
    /// Neither a known number nor a known name.
    #[error("unknown dispatcher algorithm '{0}' (expected 0-6, 8-11, 13 or a name such as round-robin, weight, rendezvous)")]
    Unknown(String),
}

impl FromStr for Algorithm {
    type Err = AlgorithmParseError;

    /// Accepts Kamailio numbers ("4") and names ("round-robin", "rr"),
    /// case-insensitively, with `_` or `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return match t.parse::<u32>() {
                Ok(0) => Ok(Algorithm::HashCallId),
                Ok(1) => Ok(Algorithm::HashFrom),
                Ok(2) => Ok(Algorithm::HashTo),
                Ok(3) => Ok(Algorithm::HashRuri),
                Ok(4) => Ok(Algorithm::RoundRobin),
                Ok(5) => Ok(Algorithm::HashAuthUser),
                Ok(6) => Ok(Algorithm::Random),
                Ok(7) => Err(AlgorithmParseError::Unsupported(
                    7,
                    "hash over pseudo-variables",
                )),
                Ok(8) => Ok(Algorithm::Priority),
                Ok(9) => Ok(Algorithm::Weight),
                Ok(10) => Ok(Algorithm::CallLoad),
                Ok(11) => Ok(Algorithm::RelativeWeight),
                Ok(12) => Err(AlgorithmParseError::Unsupported(12, "parallel forking")),
                Ok(13) => Ok(Algorithm::Latency),
                _ => Err(AlgorithmParseError::Unknown(s.to_string())),
            };
        }
        let norm: String = t
            .chars()
            .map(|c| {
                if c == '_' {
                    '-'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        Ok(match norm.as_str() {
            "hash-callid" | "hash-call-id" => Algorithm::HashCallId,
            "hash-from" => Algorithm::HashFrom,
            "hash-to" => Algorithm::HashTo,
            "hash-ruri" | "hash-r-uri" => Algorithm::HashRuri,
            "round-robin" | "rr" => Algorithm::RoundRobin,
            "hash-auth-user" | "hash-authuser" => Algorithm::HashAuthUser,
            "random" => Algorithm::Random,
            "priority" | "serial" => Algorithm::Priority,
            "weight" => Algorithm::Weight,
            "call-load" => Algorithm::CallLoad,
            "relative-weight" | "rweight" => Algorithm::RelativeWeight,
            "latency" => Algorithm::Latency,
            "rendezvous" | "hrw" => Algorithm::Rendezvous,
            "rendezvous-from" => Algorithm::RendezvousFrom,
            _ => return Err(AlgorithmParseError::Unknown(s.to_string())),
        })
    }
}

/// The parts of a request the hashing algorithms look at, borrowed from the
/// caller's parsed message. URIs may be bare or in name-addr form; only
/// user@host[:port] is hashed.
#[derive(Clone, Copy, Debug, Default)]
pub struct SelectKey<'a> {
    /// Call-ID header value.
    pub call_id: &'a [u8],
    /// From URI.
    pub from_uri: &'a [u8],
    /// To URI.
    pub to_uri: &'a [u8],
    /// Request-URI.
    pub ruri: &'a [u8],
    /// Username of the (Proxy-)Authorization header, if any.
    pub auth_user: Option<&'a [u8]>,
}

/// Default number of candidates written by `select` (the inline capacity
/// of the output SmallVec, so it never spills).
pub const DEFAULT_LIMIT: usize = 16;

/// Latencies within this many µs of the best (or 1/8 of it, if larger) count
/// as equally good and share traffic, so the fastest destination is not
/// flooded because of measurement noise.
pub const LATENCY_TIE_US: u64 = 1000;

#[derive(Clone, Copy, Debug)]
struct Cursor {
    rr: u64,
    weight: u64,
    seq: u64,
}

/// Per-worker selection state: round-robin and weight cursors per set and a
/// PRNG. Not shared, so no atomics on the cursor path.
#[derive(Debug)]
pub struct Selector {
    rng: SplitMix64,
    worker: u64,
    limit: usize,
    cursors: Vec<Cursor>,
    scratch: Vec<(u64, u16)>,
    /// Consistent hashing's bitset of destinations met.
    seen: Vec<u64>,
}

/// φ⁻¹·2⁶⁴: successive multiples are the golden-ratio low-discrepancy
/// sequence, which spreads relative-weight picks more evenly than random.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Selector {
    /// Selector for worker `worker`. Workers start their cursors at different
    /// offsets so they do not all pick the same destination at the same time.
    pub fn new(worker: usize) -> Self {
        let worker = worker as u64;
        Self {
            rng: SplitMix64(mix64(worker ^ 0x5e1e_c70a)),
            worker,
            limit: DEFAULT_LIMIT,
            cursors: Vec::new(),
            scratch: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Sets the maximum number of candidates written (at least 1).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.set_limit(limit);
        self
    }

    /// Sets the maximum number of candidates written (at least 1).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }

    /// The candidate limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn cursor(&mut self, set_index: usize) -> &mut Cursor {
        if set_index >= self.cursors.len() {
            let w = self.worker;
            // Only on the first selection from a new set: the warm-up
            // allocation, not a per-packet one.
            self.cursors.resize_with(set_index + 1, || Cursor {
                rr: w,
                weight: w.wrapping_mul(37),
                seq: w.wrapping_mul(0x0100_0000_01b3),
            });
        }
        // Just resized to cover `set_index`.
        &mut self.cursors[set_index]
    }

    /// Writes the ordered candidates (indexes into `set.dests()`) into `out`
    /// (cleared first): `out[0]` is the chosen destination, the rest the
    /// failover order, at most [`Selector::limit`] entries. Empty when no
    /// destination is available. Does not allocate once warm.
    pub fn select(
        &mut self,
        set: &Set,
        alg: Algorithm,
        key: &SelectKey,
        now: Instant,
        out: &mut SmallVec<[u16; 16]>,
    ) {
        out.clear();
        let n = set.dests.len() as u64;
        if n == 0 {
            return;
        }
        let limit = self.limit;
        match alg {
            Algorithm::HashCallId => fill_from(set, hash_bytes(key.call_id) % n, now, limit, out),
            Algorithm::HashFrom => fill_from(set, hash_uri(key.from_uri) % n, now, limit, out),
            Algorithm::HashTo => fill_from(set, hash_uri(key.to_uri) % n, now, limit, out),
            Algorithm::HashRuri => fill_from(set, hash_uri(key.ruri) % n, now, limit, out),
            Algorithm::HashAuthUser => match key.auth_user {
                Some(u) if !u.is_empty() => fill_from(set, hash_bytes(u) % n, now, limit, out),
                _ => self.round_robin(set, now, out),
            },
            Algorithm::RoundRobin => self.round_robin(set, now, out),
            Algorithm::Random => {
                let start = self.rng.below(n);
                fill_from(set, start, now, limit, out);
            }
            Algorithm::Priority => fill_from(set, 0, now, limit, out),
            Algorithm::Weight => {
                let slots = &set.weight_slots;
                let c = self.cursor(set.index);
                let pos = c.weight % slots.len().max(1) as u64;
                c.weight = c.weight.wrapping_add(1);
                let start = slots.get(pos as usize).map_or(0, |&s| u64::from(s));
                fill_from(set, start, now, limit, out);
            }
            Algorithm::CallLoad => self.call_load(set, now, out),
            Algorithm::RelativeWeight => self.relative_weight(set, now, out),
            Algorithm::Latency => self.latency(set, now, out),
            Algorithm::Rendezvous => self.consistent(set, hash_bytes(key.call_id), now, out),
            Algorithm::RendezvousFrom => self.consistent(set, hash_uri(key.from_uri), now, out),
        }
        if let Some(d) = out.first().and_then(|&i| set.get(i)) {
            d.stats.record_selected();
        }
    }

    fn round_robin(&mut self, set: &Set, now: Instant, out: &mut SmallVec<[u16; 16]>) {
        let n = set.dests.len() as u64;
        let limit = self.limit;
        let c = self.cursor(set.index);
        fill_from(set, c.rr % n, now, limit, out);
        // Continue after the one actually chosen, so a dead destination
        // does not double the share of its successor.
        if let Some(&first) = out.first() {
            c.rr = u64::from(first) + 1;
        } else {
            c.rr = c.rr.wrapping_add(1);
        }
    }

    fn call_load(&mut self, set: &Set, now: Instant, out: &mut SmallVec<[u16; 16]>) {
        let n = set.dests.len() as u64;
        let limit = self.limit;
        let c = self.cursor(set.index);
        // Ties go to the first in a per-worker rotating order, so idle
        // destinations do not all see their first calls on one of them.
        let start = c.seq % n;
        c.seq = c.seq.wrapping_add(1);
        let mut best: Option<(u32, u64)> = None;
        for_each_from(set, start, |i, d| {
            if d.is_available(now) {
                let load = d.stats.active_calls();
                match best {
                    Some((b, _)) if load >= b => {}
                    _ => best = Some((load, i)),
                }
            }
            true
        });
        if let Some((_, i)) = best {
            fill_from(set, i, now, limit, out);
        }
    }

    fn relative_weight(&mut self, set: &Set, now: Instant, out: &mut SmallVec<[u16; 16]>) {
        let limit = self.limit;
        let weights = &set.rweights;
        let mut total: u64 = 0;
        for (d, &w) in set.dests.iter().zip(weights.iter()) {
            if w > 0 && d.is_available(now) {
                total += u64::from(w);
            }
        }
        if total == 0 {
            // Only destinations without rweight are left: they still serve,
            // in round-robin.
            return self.round_robin(set, now, out);
        }
        let c = self.cursor(set.index);
        let v = c.seq.wrapping_mul(GOLDEN);
        c.seq = c.seq.wrapping_add(1);
        let mut target = ((u128::from(v) * u128::from(total)) >> 64) as u64;
        let mut chosen = 0u64;
        for (i, (d, &w)) in set.dests.iter().zip(weights.iter()).enumerate() {
            if w > 0 && d.is_available(now) {
                let w = u64::from(w);
                if target < w {
                    chosen = i as u64;
                    break;
                }
                target -= w;
            }
        }
        fill_from(set, chosen, now, limit, out);
    }

    fn latency(&mut self, set: &Set, now: Instant, out: &mut SmallVec<[u16; 16]>) {
        let limit = self.limit;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let all = limit >= set.dests.len();
        for (i, d) in set.dests.iter().enumerate() {
            if d.is_available(now) {
                let item = (u64::from(d.stats.latency_key()), i as u16);
                push_ranked(&mut scratch, all, limit, item);
            }
        }
        if all {
            scratch.sort_unstable();
        }
        if let Some(&(best, _)) = scratch.first() {
            let tie = best + LATENCY_TIE_US.max(best / 8);
            let ties = scratch.iter().take_while(|&&(l, _)| l <= tie).count();
            let c = self.cursor(set.index);
            if ties > 1 {
                let r = (c.seq % ties as u64) as usize;
                if let Some(group) = scratch.get_mut(..ties) {
                    group.rotate_left(r);
                }
            }
            c.seq = c.seq.wrapping_add(1);
        }
        out.extend(scratch.iter().take(limit).map(|&(_, i)| i));
        self.scratch = scratch;
    }

    /// Consistent hashing: the key's slot of the set's Maglev table, then the
    /// distinct destinations met walking on (wrapping) — the failover order,
    /// and where the key goes when the ones before are out of service.
    fn consistent(&mut self, set: &Set, key: u64, now: Instant, out: &mut SmallVec<[u16; 16]>) {
        let n = set.dests.len();
        let slots = set.maglev.slots();
        if slots.is_empty() {
            return;
        }
        let limit = self.limit.min(n);
        // Destinations already met (bitset), so the walk stops once every one
        // was seen even when most are out of service.
        self.seen.clear();
        self.seen.resize(n.div_ceil(64), 0);
        let mut met = 0usize;
        let start = set.maglev.slot(key);
        let (head, tail) = slots.split_at(start);
        for &i in tail.iter().chain(head) {
            let (word, bit) = (usize::from(i) / 64, 1u64 << (i % 64));
            let Some(w) = self.seen.get_mut(word) else {
                continue;
            };
            if *w & bit != 0 {
                continue;
            }
            *w |= bit;
            met += 1;
            if set
                .dests
                .get(usize::from(i))
                .is_some_and(|d| d.is_available(now))
            {
                out.push(i);
                if out.len() >= limit {
                    break;
                }
            }
            if met == n {
                break;
            }
        }
    }
}

/// Whether `item` would enter a top-`limit` list `v` (sorted ascending).
#[inline]
fn beats_worst(v: &[(u64, u16)], limit: usize, item: (u64, u16)) -> bool {
    v.len() < limit || v.last().is_some_and(|last| item < *last)
}

/// Adds `item` to `v`: unsorted when every candidate is kept (`all`, sorted
/// once at the end), else kept sorted and cut to `limit` (top-k), so the cost
/// stays O(n) for big sets with a small limit.
#[inline]
fn push_ranked(v: &mut Vec<(u64, u16)>, all: bool, limit: usize, item: (u64, u16)) {
    if all {
        v.push(item);
        return;
    }
    if !beats_worst(v, limit, item) {
        return;
    }
    if v.len() >= limit {
        v.pop();
    }
    let pos = v.partition_point(|x| *x < item);
    v.insert(pos, item);
}

/// Calls `f(index, dest)` for every destination starting at `start`
/// (wrapping) until `f` returns false.
#[inline]
fn for_each_from(
    set: &Set,
    start: u64,
    mut f: impl FnMut(u64, &super::table::Destination) -> bool,
) {
    let start = (start as usize).min(set.dests.len());
    let (head, tail) = set.dests.split_at(start);
    let it = tail
        .iter()
        .enumerate()
        .map(|(k, d)| (start + k, d))
        .chain(head.iter().enumerate());
    for (i, d) in it {
        if !f(i as u64, d) {
            break;
        }
    }
}

/// Kamailio's failover order: available destinations from `start` on, in set
/// order, wrapping, at most `limit`.
#[inline]
fn fill_from(set: &Set, start: u64, now: Instant, limit: usize, out: &mut SmallVec<[u16; 16]>) {
    for_each_from(set, start, |i, d| {
        if d.is_available(now) {
            out.push(i as u16);
        }
        out.len() < limit
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_and_numbers() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>().unwrap(), a);
            assert_eq!(a.to_string(), a.name());
            if let Some(n) = a.kamailio_number() {
                assert_eq!(n.to_string().parse::<Algorithm>().unwrap(), a);
            }
        }
        assert_eq!("rr".parse::<Algorithm>().unwrap(), Algorithm::RoundRobin);
        assert_eq!(
            "Round_Robin".parse::<Algorithm>().unwrap(),
            Algorithm::RoundRobin
        );
        assert_eq!("serial".parse::<Algorithm>().unwrap(), Algorithm::Priority);
        assert_eq!(" 10 ".parse::<Algorithm>().unwrap(), Algorithm::CallLoad);
        assert_eq!(Algorithm::Latency.kamailio_number(), Some(13));
        assert_eq!(Algorithm::Rendezvous.kamailio_number(), None);
        assert!(matches!(
            "7".parse::<Algorithm>(),
            Err(AlgorithmParseError::Unsupported(7, _))
        ));
        assert!(matches!(
            "12".parse::<Algorithm>(),
            Err(AlgorithmParseError::Unsupported(12, _))
        ));
        for bad in ["14", "", "fastest", "-1", "99999999999999999999"] {
            assert!(
                matches!(
                    bad.parse::<Algorithm>(),
                    Err(AlgorithmParseError::Unknown(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn push_ranked_keeps_top_k() {
        let mut v = Vec::new();
        for (k, i) in [(5u64, 0u16), (1, 1), (9, 2), (3, 3), (2, 4), (8, 5)] {
            push_ranked(&mut v, false, 3, (k, i));
        }
        assert_eq!(v, vec![(1, 1), (2, 4), (3, 3)]);
    }
}
