//! Bounded slab + hash index shared by the transaction and dialog tables.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
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

pub(crate) type Index<K> = HashMap<K, u32, BuildHasherDefault<PassThrough>>;

struct Entry<K, V> {
    key: K,
    gen: NonZeroU32,
    value: Option<V>,
}

pub(crate) enum SlabInsertError {
    Full,
    Exists(SlotId),
    NotFound,
}

pub(crate) struct IndexedSlab<K, V> {
    entries: Vec<Entry<K, V>>,
    free: Vec<u32>,
    index: Index<K>,
    max: usize,
    len: usize,
}

impl<K: Copy + Eq + Hash, V> IndexedSlab<K, V> {
    pub(crate) fn with_capacity(max: usize) -> Self {
        let max = max.min(u32::MAX as usize - 1);
        IndexedSlab {
            entries: Vec::with_capacity(max),
            free: Vec::with_capacity(max),
            // Twice the bound keeps the load factor ≤ ~50%, so deletion
            // tombstones are always cleared by an in-place rehash and the
            // index never reallocates.
            index: Index::with_capacity_and_hasher(max.saturating_mul(2), Default::default()),
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
        // hashbrown: buckets = next power of two ≥ capacity·8/7, each holding
        // (K, u32) plus one control byte (+ a group of trailing control bytes).
        let cap = self.index.capacity();
        let buckets = if cap == 0 {
            0
        } else {
            (cap.saturating_mul(8) / 7).max(1).next_power_of_two()
        };
        self.entries.capacity() * std::mem::size_of::<Entry<K, V>>()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + buckets * (std::mem::size_of::<(K, u32)>() + 1)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Result<SlotId, SlabInsertError> {
        if let Some(id) = self.find(&key) {
            return Err(SlabInsertError::Exists(id));
        }
        if self.len >= self.max {
            return Err(SlabInsertError::Full);
        }
        let idx = if let Some(idx) = self.free.pop() {
            let e = &mut self.entries[idx as usize];
            e.key = key;
            e.value = Some(value);
            idx
        } else {
            let idx = self.entries.len() as u32;
            self.entries.push(Entry {
                key,
                gen: NonZeroU32::MIN,
                value: Some(value),
            });
            idx
        };
        self.index.insert(key, idx);
        self.len += 1;
        Ok(SlotId {
            idx,
            gen: self.entries[idx as usize].gen,
        })
    }

    pub(crate) fn find(&self, key: &K) -> Option<SlotId> {
        let idx = *self.index.get(key)?;
        let gen = self.entries.get(idx as usize)?.gen;
        Some(SlotId { idx, gen })
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
        self.index.remove(&key);
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
        self.index.remove(&old);
        self.index.insert(key, id.idx);
        self.entries[id.idx as usize].key = key;
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
