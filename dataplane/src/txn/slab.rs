//! Bounded slab + hash index shared by the transaction and dialog tables.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::num::NonZeroU32;

/// Generation-checked slot handle.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct SlotId {
    pub(crate) idx: u32,
    pub(crate) gen: NonZeroU32,
}

/// Keys are already keyed 128-bit hashes; their `Hash` impl writes one u64,
/// which this hasher passes through unchanged.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if a key type hashes raw bytes; fold them (FNV-1a) so
        // the table still works rather than degenerating.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Chain link meaning "no entry": links and heads hold slot index + 1, so a
/// fresh (zeroed) head array is all empty and costs no memory until used.
const END: u32 = 0;

struct Entry<K, V> {
    key: K,
    gen: NonZeroU32,
    /// Next entry (index + 1) in this entry's bucket chain, `END` at its end.
    next: u32,
    value: Option<V>,
}

pub(crate) enum SlabInsertError {
    Full,
    Exists(SlotId),
    NotFound,
}

/// Slots in a `Vec` with a free list, found by key through a chained hash
/// index: one `u32` head per bucket (`max` rounded up to a power of two) and
/// the links in the entries themselves.
///
/// Why chains rather than an open-addressing map: a map reserved for `max`
/// keys (twice that, to keep its load factor low) is 24 bytes a bucket, and
/// the keys are random, so every insert dirties a random page of it: with
/// 20 000 calls a worker's transaction and dialog maps (2 × 24 MiB reserved
/// for the default bounds) were almost entirely resident, ~2.4 KB per call.
/// The heads are 4 bytes a bucket (1 MiB for 262 144 slots, zeroed lazily
/// by the kernel), the links live in slots that are touched anyway, and the
/// index never reallocates nor needs tombstones.
pub(crate) struct IndexedSlab<K, V> {
    entries: Vec<Entry<K, V>>,
    free: Vec<u32>,
    heads: Box<[u32]>,
    /// log2 of the number of buckets.
    bits: u32,
    max: usize,
    len: usize,
}

impl<K: Copy + Eq + Hash, V> IndexedSlab<K, V> {
    pub(crate) fn with_capacity(max: usize) -> Self {
        let max = max.min(u32::MAX as usize - 1);
        // One bucket per slot at most: chains stay ~1 entry long when full.
        let buckets = max.max(1).next_power_of_two();
        IndexedSlab {
            entries: Vec::with_capacity(max),
            free: Vec::with_capacity(max),
            heads: vec![END; buckets].into_boxed_slice(),
            bits: buckets.trailing_zeros(),
            max,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn capacity(&self) -> usize {
        self.max
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry<K, V>>()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + self.heads.len() * std::mem::size_of::<u32>()
    }

    /// The bucket of `key`. Keys are keyed hashes already (their `Hash`
    /// writes 64 bits, passed through); the multiply spreads any other key
    /// type's bits to the top, which the shift keeps.
    fn bucket(&self, key: &K) -> usize {
        if self.bits == 0 {
            return 0;
        }
        let h = BuildHasherDefault::<PassThrough>::default().hash_one(key);
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Result<SlotId, SlabInsertError> {
        if let Some(id) = self.find(&key) {
            return Err(SlabInsertError::Exists(id));
        }
        if self.len >= self.max {
            return Err(SlabInsertError::Full);
        }
        let b = self.bucket(&key);
        let head = self.heads[b];
        let idx = if let Some(idx) = self.free.pop() {
            let e = &mut self.entries[idx as usize];
            e.key = key;
            e.next = head;
            e.value = Some(value);
            idx
        } else {
            let idx = self.entries.len() as u32;
            self.entries.push(Entry {
                key,
                gen: NonZeroU32::MIN,
                next: head,
                value: Some(value),
            });
            idx
        };
        self.heads[b] = idx + 1;
        self.len += 1;
        Ok(SlotId {
            idx,
            gen: self.entries[idx as usize].gen,
        })
    }

    pub(crate) fn find(&self, key: &K) -> Option<SlotId> {
        let mut link = self.heads[self.bucket(key)];
        while link != END {
            let idx = link - 1;
            let e = &self.entries[idx as usize];
            if e.key == *key {
                return Some(SlotId { idx, gen: e.gen });
            }
            link = e.next;
        }
        None
    }

    /// Takes slot `idx` (holding `key`) out of its bucket's chain.
    fn unlink(&mut self, key: &K, idx: u32) {
        let b = self.bucket(key);
        let next = self.entries[idx as usize].next;
        if self.heads[b] == idx + 1 {
            self.heads[b] = next;
            return;
        }
        let mut link = self.heads[b];
        while link != END {
            let e = &mut self.entries[link as usize - 1];
            if e.next == idx + 1 {
                e.next = next;
                return;
            }
            link = e.next;
        }
    }

    fn entry(&self, id: SlotId) -> Option<&Entry<K, V>> {
        self.entries
            .get(id.idx as usize)
            .filter(|e| e.gen == id.gen && e.value.is_some())
    }

    pub(crate) fn get(&self, id: SlotId) -> Option<&V> {
        self.entry(id)?.value.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: SlotId) -> Option<&mut V> {
        self.entries
            .get_mut(id.idx as usize)
            .filter(|e| e.gen == id.gen)?
            .value
            .as_mut()
    }

    pub(crate) fn key(&self, id: SlotId) -> Option<&K> {
        Some(&self.entry(id)?.key)
    }

    pub(crate) fn remove(&mut self, id: SlotId) -> Option<(K, V)> {
        let e = self
            .entries
            .get_mut(id.idx as usize)
            .filter(|e| e.gen == id.gen)?;
        let value = e.value.take()?;
        let key = e.key;
        e.gen = e.gen.checked_add(1).unwrap_or(NonZeroU32::MIN);
        self.unlink(&key, id.idx);
        self.entries[id.idx as usize].next = END;
        self.free.push(id.idx);
        self.len -= 1;
        Some((key, value))
    }

    /// Moves an entry to a new key, keeping its id.
    pub(crate) fn rekey(&mut self, id: SlotId, key: K) -> Result<(), SlabInsertError> {
        let old = *self.key(id).ok_or(SlabInsertError::NotFound)?;
        if old == key {
            return Ok(());
        }
        if let Some(other) = self.find(&key) {
            return Err(SlabInsertError::Exists(other));
        }
        self.unlink(&old, id.idx);
        let b = self.bucket(&key);
        let e = &mut self.entries[id.idx as usize];
        e.key = key;
        e.next = self.heads[b];
        self.heads[b] = id.idx + 1;
        Ok(())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (SlotId, &K, &V)> + '_ {
        self.entries.iter().enumerate().filter_map(|(i, e)| {
            let v = e.value.as_ref()?;
            Some((
                SlotId {
                    idx: i as u32,
                    gen: e.gen,
                },
                &e.key,
                v,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts, removals and rekeys against a `HashMap`, in a table
    /// small enough that every bucket chains several entries.
    #[test]
    fn chains_agree_with_a_map_under_churn() {
        let mut slab: IndexedSlab<u64, u64> = IndexedSlab::with_capacity(8);
        let mut model: HashMap<u64, SlotId> = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // 24 distinct keys for 8 slots: inserts often find the table full
            // or the key present.
            let key = x % 24;
            match x >> 62 {
                0 | 1 => match slab.insert(key, step) {
                    Ok(id) => assert!(model.insert(key, id).is_none(), "{key} inserted twice"),
                    Err(SlabInsertError::Exists(id)) => assert_eq!(model.get(&key), Some(&id)),
                    Err(SlabInsertError::Full) => assert_eq!(model.len(), 8),
                    Err(SlabInsertError::NotFound) => unreachable!(),
                },
                2 => {
                    if let Some(id) = model.remove(&key) {
                        assert_eq!(slab.remove(id).map(|(k, _)| k), Some(key));
                        assert!(slab.remove(id).is_none(), "stale id removed twice");
                    }
                }
                _ => {
                    let to = (x >> 8) % 24;
                    if let Some(&id) = model.get(&key) {
                        match slab.rekey(id, to) {
                            Ok(()) => {
                                model.remove(&key);
                                model.insert(to, id);
                            }
                            Err(SlabInsertError::Exists(other)) => {
                                assert_eq!(model.get(&to), Some(&other))
                            }
                            Err(_) => unreachable!(),
                        }
                    }
                }
            }
            assert_eq!(slab.len(), model.len());
            for k in 0..24 {
                assert_eq!(
                    slab.find(&k),
                    model.get(&k).copied(),
                    "key {k} at step {step}"
                );
            }
        }
    }

    #[test]
    fn one_slot_table() {
        let mut slab: IndexedSlab<u64, ()> = IndexedSlab::with_capacity(1);
        let a = slab.insert(1, ()).ok().unwrap();
        assert!(matches!(slab.insert(2, ()), Err(SlabInsertError::Full)));
        assert_eq!(slab.find(&1), Some(a));
        slab.remove(a);
        assert_eq!(slab.find(&1), None);
        let b = slab.insert(2, ()).ok().unwrap();
        assert_eq!(slab.find(&2), Some(b));
        assert_ne!(a, b, "the slot's generation moved on");
    }
}
