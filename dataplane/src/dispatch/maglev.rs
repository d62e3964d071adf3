//! Consistent hashing in O(1) per call: a Maglev lookup table (Eisenbud et al.,
//! "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016).
//!
//! Rendezvous hashing scores every destination for every call, which is O(n):
//! with 2 000 destinations that is 2 000 hashes per INVITE. Here each
//! destination instead claims slots of a table along its own pseudo-random
//! permutation, taking turns in proportion to its weight, once, when the
//! control thread builds the set. A call's key then picks one slot; the
//! failover order is the distinct destinations met walking on from there.
//!
//! What stays of consistent hashing:
//! - a destination that goes out of service (probing, inactive, disabled, over
//!   `maxload`) moves only its own keys, each to the next destination of its
//!   walk — exactly, since the table does not change;
//! - a rebuild without one destination (removed from the list) moves its keys
//!   and very few others (Maglev's near-minimal disruption: with ≥ 100 slots
//!   per destination, under 1 % of the others' keys in the tests below and in
//!   `dataplane/tests/dispatch_rendezvous.rs`), where mod-N hashing moves
//!   most — unless the rebuild changes the table size (crossing 655 or
//!   10 485 destinations), which remaps like a new table.
//!
//! Each destination's permutation depends only on its identity hash (set and
//! URI), never on its position, so reordering the list changes nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::hash::mix64;

/// Table sizes: the smallest that gives every destination ≥ 100 slots
/// (Maglev's M ≥ 100·N, which keeps each share within 1 % of its weight's).
/// Few and far apart on purpose: a rebuild only keeps keys in place when the
/// size stays the same, so a pool that loses or gains a destination must not
/// change size unless it crosses 655 or 10 485 destinations.
const SIZES: [usize; 3] = [1 << 16, 1 << 20, 1 << 23];

/// The table size for `n` destinations.
fn table_size(n: usize) -> usize {
    SIZES
        .into_iter()
        .find(|&m| m >= n * 100)
        .unwrap_or(SIZES[SIZES.len() - 1])
}

/// The table: each slot holds the index (into the set's destinations) that
/// owns it. Empty for an empty set.
#[derive(Debug, Default)]
pub struct Maglev {
    slots: Box<[u16]>,
}

impl Maglev {
    /// Builds the table for destinations with identity hashes `ids` and
    /// weights (`None`: all equal; each weight must be > 0). Runs on the
    /// control thread: about M log M steps.
    pub fn build(ids: &[u64], weights: Option<&[f64]>) -> Self {
        let n = ids.len();
        if n == 0 || n > usize::from(u16::MAX) {
            return Maglev::default();
        }
        let m = table_size(n) as u64;
        let weight = |i: usize| {
            weights
                .and_then(|w| w.get(i).copied())
                .filter(|w| w.is_finite() && *w > 0.0)
                .unwrap_or(1.0)
        };
        // Destination i's permutation of the slots: offset + j·skip (mod m),
        // a full cycle because m is a power of two and skip is odd.
        let perm: Vec<(u64, u64)> = ids
            .iter()
            .map(|&id| {
                let offset = mix64(id ^ 0x6d61_676c_6576_0001) & (m - 1);
                let skip = (mix64(id ^ 0x6d61_676c_6576_0002) & (m - 1)) | 1;
                (offset, skip)
            })
            .collect();
        let mut taken = vec![0u64; n];
        let mut slots = vec![u16::MAX; m as usize];
        // Turns in order of virtual time k / weight (the k-th turn of each
        // destination), ties by identity hash: equal weights take turns
        // round-robin as in the paper, and a destination of twice the weight
        // gets twice the turns.
        let mut turns: BinaryHeap<Reverse<(u64, u64, usize)>> = (0..n)
            .map(|i| Reverse((virtual_time(1, weight(i)), ids[i], i)))
            .collect();
        let mut turn = vec![1u64; n];
        let mut filled = 0u64;
        while filled < m {
            let Some(Reverse((_, id, i))) = turns.pop() else {
                break;
            };
            let (offset, skip) = perm[i];
            // Each destination walks its own permutation: at most m steps in
            // total for it, so the whole fill is bounded.
            while taken[i] < m {
                let c = (offset.wrapping_add(taken[i].wrapping_mul(skip)) & (m - 1)) as usize;
                taken[i] += 1;
                if slots[c] == u16::MAX {
                    slots[c] = i as u16;
                    filled += 1;
                    break;
                }
            }
            turn[i] += 1;
            turns.push(Reverse((virtual_time(turn[i], weight(i)), id, i)));
        }
        Maglev {
            slots: slots.into_boxed_slice(),
        }
    }

    /// The slots, each a destination index.
    #[inline]
    pub fn slots(&self) -> &[u16] {
        &self.slots
    }

    /// The slot a key starts from (multiply-shift: no division per call).
    #[inline]
    pub fn slot(&self, key: u64) -> usize {
        ((u128::from(mix64(key)) * self.slots.len() as u128) >> 64) as usize
    }
}

/// The k-th turn of a destination of weight `w`, as an integer that orders
/// like k / w (positive finite floats order like their bits).
#[inline]
fn virtual_time(k: u64, w: f64) -> u64 {
    (k as f64 / w).to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<u64> {
        (0..n as u64).map(|i| mix64(i + 1000)).collect()
    }

    #[test]
    fn sizes_leave_room_for_100_slots_each() {
        assert_eq!(table_size(1), 1 << 16);
        assert_eq!(table_size(655), 1 << 16);
        assert_eq!(table_size(656), 1 << 20);
        assert_eq!(table_size(2000), 1 << 20);
        assert_eq!(table_size(65_535), 1 << 23);
    }

    #[test]
    fn every_slot_is_owned_and_shares_follow_weights() {
        for n in [1usize, 2, 3, 17, 2000] {
            let t = Maglev::build(&ids(n), None);
            let mut count = vec![0usize; n];
            for &s in t.slots() {
                count[usize::from(s)] += 1;
            }
            let (lo, hi) = (count.iter().min().unwrap(), count.iter().max().unwrap());
            // Equal weights: turns alternate, so shares differ by at most one slot.
            assert!(hi - lo <= 1, "n={n}: {lo}..{hi}");
        }
        let w = [1.0, 2.0, 7.0];
        let t = Maglev::build(&ids(3), Some(&w));
        let m = t.slots().len() as f64;
        for (i, wi) in w.iter().enumerate() {
            let share = t.slots().iter().filter(|&&s| usize::from(s) == i).count() as f64 / m;
            assert!((share - wi / 10.0).abs() < 0.005, "{i}: {share}");
        }
    }

    #[test]
    fn a_rebuild_without_one_destination_keeps_almost_every_other_slot() {
        for n in [2usize, 10, 100, 2000] {
            let all = ids(n);
            let removed = n / 2;
            let kept: Vec<u64> = all
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != removed)
                .map(|(_, &id)| id)
                .collect();
            let (a, b) = (Maglev::build(&all, None), Maglev::build(&kept, None));
            let (mut others, mut moved) = (0u32, 0u32);
            for k in 0..20_000u64 {
                let before = usize::from(a.slots()[a.slot(k)]);
                if before == removed {
                    continue;
                }
                let after = usize::from(b.slots()[b.slot(k)]);
                let after = if after >= removed { after + 1 } else { after };
                others += 1;
                moved += u32::from(after != before);
            }
            let frac = f64::from(moved) / f64::from(others);
            assert!(frac < 0.01, "n={n}: {frac} of the other keys moved");
        }
    }
}
