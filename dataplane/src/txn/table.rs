//! Bounded per-worker transaction table: slab storage plus a hash index on
//! [`TxnKey`]. Everything is reserved up front, so inserting and removing never
//! allocates; when the bound is reached `insert` fails and the proxy answers
//! 503 instead of growing without limit.

use std::fmt;

use super::key::TxnKey;
use super::slab::{IndexedSlab, SlabInsertError, SlotId};

/// Handle to a table entry. Generation-checked: once the entry is removed the
/// id never refers to a later entry in the same slot, so a timer that fires
/// for a dead transaction finds nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxnId(pub(crate) SlotId);

impl TxnId {
    /// The slot index, for encoding the id into a Via branch.
    pub fn slot(self) -> u32 {
        self.0.idx
    }

    /// The slot's generation: a late message for a finished transaction
    /// carries an old generation and misses the slot's next tenant.
    pub fn generation(self) -> u32 {
        self.0.gen.get()
    }

    /// Rebuilds an id from [`slot`](Self::slot) and
    /// [`generation`](Self::generation); `None` for generation 0, which no
    /// live id has. The table still checks the generation on every lookup.
    pub fn from_parts(slot: u32, generation: u32) -> Option<TxnId> {
        std::num::NonZeroU32::new(generation).map(|gen| TxnId(SlotId { idx: slot, gen }))
    }
}

impl fmt::Debug for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxnId({}v{})", self.0.idx, self.0.gen)
    }
}

/// Why an insert (or rekey) failed. `I` is the table's id type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError<I: fmt::Debug> {
    /// The table holds its maximum number of entries (answer 503).
    #[error("table full")]
    Full,
    /// An entry with this key already exists (a retransmission: look it up
    /// with `find` first).
    #[error("key already present as {0:?}")]
    Exists(I),
    /// `rekey` was given an id that no longer refers to an entry.
    #[error("no such entry")]
    NotFound,
}

pub(crate) fn map_err<I: fmt::Debug>(
    e: SlabInsertError,
    f: impl FnOnce(SlotId) -> I,
) -> InsertError<I> {
    match e {
        SlabInsertError::Full => InsertError::Full,
        SlabInsertError::Exists(id) => InsertError::Exists(f(id)),
        SlabInsertError::NotFound => InsertError::NotFound,
    }
}

/// Transaction table holding one `V` per [`TxnKey`], at most `capacity`.
pub struct TxnTable<V> {
    slab: IndexedSlab<TxnKey, V>,
}

impl<V> TxnTable<V> {
    /// A table that holds at most `max` transactions, with all memory for
    /// them reserved now.
    pub fn with_capacity(max: usize) -> Self {
        TxnTable {
            slab: IndexedSlab::with_capacity(max),
        }
    }

    /// Adds a transaction under `key`.
    pub fn insert(&mut self, key: TxnKey, value: V) -> Result<TxnId, InsertError<TxnId>> {
        self.slab
            .insert(key, value)
            .map(TxnId)
            .map_err(|e| map_err(e, TxnId))
    }

    /// The transaction matching `key`.
    pub fn find(&self, key: &TxnKey) -> Option<TxnId> {
        self.slab.find(key).map(TxnId)
    }

    /// The transaction with this id, if it still exists.
    pub fn get(&self, id: TxnId) -> Option<&V> {
        self.slab.get(id.0)
    }

    /// Mutable access to the transaction with this id.
    pub fn get_mut(&mut self, id: TxnId) -> Option<&mut V> {
        self.slab.get_mut(id.0)
    }

    /// The key a transaction was inserted under.
    pub fn key(&self, id: TxnId) -> Option<TxnKey> {
        self.slab.key(id.0).copied()
    }

    /// Removes a transaction; `None` if the id is stale.
    pub fn remove(&mut self, id: TxnId) -> Option<V> {
        self.slab.remove(id.0).map(|(_, v)| v)
    }

    /// Number of transactions.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.slab.len() == 0
    }

    /// The bound given to `with_capacity`.
    pub fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// Heap bytes reserved by the table (slab, free list, index).
    pub fn heap_bytes(&self) -> usize {
        self.slab.heap_bytes()
    }

    /// All transactions, in slot order (for status pages and shutdown).
    pub fn iter(&self) -> impl Iterator<Item = (TxnId, &V)> + '_ {
        self.slab.iter().map(|(id, _, v)| (TxnId(id), v))
    }
}

impl<V> fmt::Debug for TxnTable<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxnTable")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Method;
    use crate::txn::KeyHasher;

    fn key(i: u32) -> TxnKey {
        TxnKey::client(
            &KeyHasher::default(),
            format!("z9hG4bK{i}").as_bytes(),
            Method::Invite,
            b"",
        )
    }

    #[test]
    fn insert_find_remove() {
        let mut t = TxnTable::with_capacity(4);
        let a = t.insert(key(1), "a").unwrap();
        let b = t.insert(key(2), "b").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.find(&key(1)), Some(a));
        assert_eq!(t.find(&key(3)), None);
        assert_eq!(t.get(b), Some(&"b"));
        *t.get_mut(b).unwrap() = "B";
        assert_eq!(t.get(b), Some(&"B"));
        assert_eq!(t.key(a), Some(key(1)));
        assert_eq!(t.insert(key(1), "dup"), Err(InsertError::Exists(a)));
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(a), None);
        assert_eq!(t.find(&key(1)), None);
        assert_eq!(t.len(), 1);
        let c = t.insert(key(3), "c").unwrap();
        assert_ne!(a, c, "reused slot has a new generation");
        assert_eq!(t.get(a), None);
        assert_eq!(t.iter().count(), 2);
    }

    #[test]
    fn bounded() {
        let mut t = TxnTable::with_capacity(2);
        t.insert(key(1), 1).unwrap();
        let two = t.insert(key(2), 2).unwrap();
        assert_eq!(t.insert(key(3), 3), Err(InsertError::Full));
        assert_eq!(InsertError::<TxnId>::Full.to_string(), "table full");
        t.remove(two);
        assert!(t.insert(key(3), 3).is_ok());
        assert_eq!(t.capacity(), 2);
    }

    #[test]
    fn churn_keeps_index_consistent() {
        let mut t = TxnTable::with_capacity(1000);
        let mut live = std::collections::VecDeque::new();
        for i in 0..20_000u32 {
            if live.len() == 1000 {
                let (k, id): (u32, TxnId) = live.pop_front().unwrap();
                assert_eq!(t.remove(id), Some(k));
            }
            let id = t.insert(key(i), i).unwrap();
            live.push_back((i, id));
        }
        for &(k, id) in &live {
            assert_eq!(t.find(&key(k)), Some(id));
        }
        assert_eq!(t.len(), 1000);
    }
}
