//! Per-worker dialog table: Call-ID + tags → the proxy's per-call state.
//!
//! The proxy record-routes through the worker's private port, so every
//! in-dialog request of a call reaches the worker that created the dialog and
//! this table needs no locking. Each dialog carries a generic payload `D` (the
//! destination's stats handle, the RTPEngine session flag, …), its state, and an
//! expiry driven by an internal [`TimerWheel`]: a dialog nobody hangs up
//! (lost BYE, dead UA) is released after `lifetime` without in-dialog traffic
//! (Kamailio `dialog` `default_timeout`, 12 h).
//!
//! # Memory per dialog
//!
//! With a 32-byte payload, one dialog costs (x86-64, all memory reserved up
//! front by [`DialogTable::new`]):
//!
//! | part | bytes |
//! |---|---|
//! | slab entry (key 16, generation 4, chain link 4, `Dialog<[u8; 32]>` 96) | 120 |
//! | timer-wheel entry | 32 |
//! | free-list slot | 4 |
//! | hash index (one 4-byte chain head per slot, rounded up to a power of two) | 4–8 |
//! | **total** | **≈ 160–164** |
//!
//! `tests/txn_alloc.rs` measures it with a counting allocator for
//! 100 000 dialogs (≈ 161 B) and asserts ≤ 512 B.

use std::fmt;
use std::time::{Duration, Instant};

use crate::txn::key::{write_bytes, KeyHasher};
use crate::txn::slab::{IndexedSlab, SlotId};
use crate::txn::table::map_err;
pub use crate::txn::table::InsertError;
use crate::txn::timer::{TimerId, TimerWheel};

/// Kamailio `dialog` module's `default_timeout`: 43200 s.
pub const DEFAULT_DIALOG_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Identifies a dialog independently of direction: a 128-bit keyed hash of
/// the Call-ID and the *unordered* pair of tags, so a request from the callee
/// (whose From/To tags are swapped) finds the same dialog.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DialogKey {
    lo: u64,
    hi: u64,
}

impl std::hash::Hash for DialogKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.lo);
    }
}

impl DialogKey {
    /// Key of the dialog with this Call-ID and these two tags (in either order).
    /// Call-ID and tags are compared byte for byte.
    pub fn new(h: &KeyHasher, call_id: &[u8], tag_a: &[u8], tag_b: &[u8]) -> DialogKey {
        let (x, y) = if tag_a <= tag_b {
            (tag_a, tag_b)
        } else {
            (tag_b, tag_a)
        };
        let (lo, hi) = h.hash128(|s| {
            s.write_u8(b'D');
            write_bytes(s, call_id);
            write_bytes(s, x);
            write_bytes(s, y);
        });
        DialogKey { lo, hi }
    }

    /// Key of a dialog whose remote tag is not known yet (an INVITE, or a
    /// CANCEL, which carries no To tag): the same as `new` with an empty tag.
    /// When the 1xx/2xx with the To tag arrives, [`DialogTable::rekey`] the
    /// dialog to the full key.
    pub fn early(h: &KeyHasher, call_id: &[u8], from_tag: &[u8]) -> DialogKey {
        DialogKey::new(h, call_id, from_tag, b"")
    }
}

/// Handle to a dialog in a [`DialogTable`] (generation-checked).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DialogId(SlotId);

impl fmt::Debug for DialogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DialogId({}v{})", self.0.idx, self.0.gen)
    }
}

/// Life-cycle of a dialog as the proxy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialogState {
    /// INVITE forwarded; no 2xx yet.
    Early,
    /// 2xx seen: the call is up.
    Confirmed,
    /// BYE (or a final failure) seen; kept briefly for the last in-dialog
    /// transactions. In-dialog traffic no longer extends its expiry.
    Terminating,
}

/// One dialog. `state` and `data` are the proxy's to change; times are
/// maintained by the table.
#[derive(Clone, Debug)]
pub struct Dialog<D> {
    /// Where the dialog is in its life-cycle.
    pub state: DialogState,
    /// The proxy's per-call payload.
    pub data: D,
    created: Instant,
    last_activity: Instant,
    expires_at: Instant,
    /// Always `Some` once inserted (the id is only known after the slab insert).
    timer: Option<TimerId>,
}

impl<D> Dialog<D> {
    /// When the dialog was inserted.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Last insert or `touch`.
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// When the dialog expires unless refreshed.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }
}

/// Bounded dialog table with expiry.
pub struct DialogTable<D> {
    slab: IndexedSlab<DialogKey, Dialog<D>>,
    wheel: TimerWheel<DialogId>,
    lifetime: Duration,
}

impl<D> DialogTable<D> {
    /// A table for at most `capacity` dialogs with the default 12 h lifetime;
    /// `start` is the time origin of its timer wheel. All memory is reserved
    /// now.
    pub fn new(start: Instant, capacity: usize) -> Self {
        Self::with_lifetime(start, capacity, DEFAULT_DIALOG_LIFETIME)
    }

    /// Like [`DialogTable::new`] with a chosen idle lifetime.
    pub fn with_lifetime(start: Instant, capacity: usize, lifetime: Duration) -> Self {
        DialogTable {
            slab: IndexedSlab::with_capacity(capacity),
            wheel: TimerWheel::with_capacity(start, capacity),
            lifetime,
        }
    }

    /// The idle lifetime applied by `insert` and `touch`.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Adds a dialog, expiring `lifetime` from `now` unless refreshed.
    pub fn insert(
        &mut self,
        key: DialogKey,
        state: DialogState,
        data: D,
        now: Instant,
    ) -> Result<DialogId, InsertError<DialogId>> {
        let expires_at = now + self.lifetime;
        let dialog = Dialog {
            state,
            data,
            created: now,
            last_activity: now,
            expires_at,
            timer: None,
        };
        let slot = self
            .slab
            .insert(key, dialog)
            .map_err(|e| map_err(e, DialogId))?;
        let id = DialogId(slot);
        let timer = self.wheel.insert(expires_at, id);
        if let Some(d) = self.slab.get_mut(slot) {
            d.timer = Some(timer);
        }
        Ok(id)
    }

    /// The dialog with this key.
    pub fn find(&self, key: &DialogKey) -> Option<DialogId> {
        self.slab.find(key).map(DialogId)
    }

    /// The dialog with this id, if it still exists.
    pub fn get(&self, id: DialogId) -> Option<&Dialog<D>> {
        self.slab.get(id.0)
    }

    /// Mutable access (state and payload).
    pub fn get_mut(&mut self, id: DialogId) -> Option<&mut Dialog<D>> {
        self.slab.get_mut(id.0)
    }

    /// The key the dialog is stored under.
    pub fn key(&self, id: DialogId) -> Option<DialogKey> {
        self.slab.key(id.0).copied()
    }

    /// Moves a dialog to a new key, e.g. from [`DialogKey::early`] to the full
    /// key once the To tag is known.
    pub fn rekey(&mut self, id: DialogId, key: DialogKey) -> Result<(), InsertError<DialogId>> {
        self.slab.rekey(id.0, key).map_err(|e| map_err(e, DialogId))
    }

    /// In-dialog traffic: records the activity and, unless the dialog is
    /// Terminating, pushes its expiry to `now + lifetime`. O(1); usually does
    /// not touch the wheel (the timer re-arms itself lazily when it fires).
    pub fn touch(&mut self, id: DialogId, now: Instant) -> bool {
        let lifetime = self.lifetime;
        let Some(d) = self.slab.get_mut(id.0) else {
            return false;
        };
        d.last_activity = now;
        if d.state != DialogState::Terminating {
            let at = now + lifetime;
            Self::move_expiry(&mut self.wheel, d, at);
        }
        true
    }

    /// Sets the expiry explicitly (earlier or later), e.g. a short grace
    /// period after BYE, or a bound on an early dialog.
    pub fn set_expiry(&mut self, id: DialogId, at: Instant) -> bool {
        let Some(d) = self.slab.get_mut(id.0) else {
            return false;
        };
        Self::move_expiry(&mut self.wheel, d, at);
        true
    }

    fn move_expiry(wheel: &mut TimerWheel<DialogId>, d: &mut Dialog<D>, at: Instant) {
        d.expires_at = at;
        // Later: leave the armed timer; it re-arms when it fires. Earlier:
        // the timer must move or the dialog would outlive its expiry.
        if let Some(timer) = d.timer {
            if wheel.deadline(timer).is_some_and(|armed| armed > at) {
                wheel.reschedule(timer, at);
            }
        }
    }

    /// Removes a dialog (BYE completed, call failed) and returns it.
    pub fn remove(&mut self, id: DialogId) -> Option<Dialog<D>> {
        let (_, d) = self.slab.remove(id.0)?;
        if let Some(timer) = d.timer {
            self.wheel.cancel(timer);
        }
        Some(d)
    }

    /// Removes and returns one dialog whose expiry is `<= now`.
    pub fn poll_expired(&mut self, now: Instant) -> Option<(DialogKey, Dialog<D>)> {
        while let Some(id) = self.wheel.poll(now) {
            let Some(d) = self.slab.get_mut(id.0) else {
                continue;
            };
            if d.expires_at > now {
                d.timer = Some(self.wheel.insert(d.expires_at, id));
                continue;
            }
            return self.slab.remove(id.0);
        }
        None
    }

    /// Removes every dialog whose expiry is `<= now` into `out`; returns how
    /// many.
    pub fn expire(&mut self, now: Instant, out: &mut impl Extend<(DialogKey, Dialog<D>)>) -> usize {
        let mut n = 0;
        while let Some(x) = self.poll_expired(now) {
            out.extend(Some(x));
            n += 1;
        }
        n
    }

    /// When `expire` should next be called (never late, possibly early).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.wheel.next_deadline()
    }

    /// Number of dialogs.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.slab.len() == 0
    }

    /// The bound given at construction.
    pub fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// Heap bytes reserved by the table (slab, index, timer wheel): the
    /// memory cost of a full table.
    pub fn heap_bytes(&self) -> usize {
        self.slab.heap_bytes() + self.wheel.heap_bytes()
    }

    /// All dialogs, in slot order (status pages, shutdown).
    pub fn iter(&self) -> impl Iterator<Item = (DialogId, &DialogKey, &Dialog<D>)> + '_ {
        self.slab.iter().map(|(id, k, d)| (DialogId(id), k, d))
    }
}

impl<D> fmt::Debug for DialogTable<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialogTable")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> KeyHasher {
        KeyHasher::default()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn key_is_direction_independent() {
        let k = DialogKey::new(&h(), b"call-1@host", b"caller-tag", b"callee-tag");
        assert_eq!(
            k,
            DialogKey::new(&h(), b"call-1@host", b"callee-tag", b"caller-tag")
        );
        assert_ne!(
            k,
            DialogKey::new(&h(), b"call-2@host", b"caller-tag", b"callee-tag")
        );
        assert_ne!(
            k,
            DialogKey::new(&h(), b"call-1@host", b"caller-tag", b"other")
        );
        assert_ne!(
            k,
            DialogKey::new(&h(), b"call-1@host", b"caller-ta", b"gcallee-tag")
        );
        assert_ne!(k, DialogKey::early(&h(), b"call-1@host", b"caller-tag"));
        assert_eq!(
            DialogKey::early(&h(), b"c", b"t"),
            DialogKey::new(&h(), b"c", b"", b"t")
        );
    }

    #[test]
    fn early_to_confirmed_by_rekey() {
        let base = Instant::now();
        let mut t = DialogTable::new(base, 8);
        let early = DialogKey::early(&h(), b"cid", b"ftag");
        let id = t.insert(early, DialogState::Early, 7u32, base).unwrap();
        assert_eq!(t.find(&early), Some(id));
        let full = DialogKey::new(&h(), b"cid", b"ftag", b"ttag");
        t.rekey(id, full).unwrap();
        t.get_mut(id).unwrap().state = DialogState::Confirmed;
        assert_eq!(t.find(&early), None);
        // A BYE from the callee carries the tags swapped.
        assert_eq!(
            t.find(&DialogKey::new(&h(), b"cid", b"ttag", b"ftag")),
            Some(id)
        );
        assert_eq!(t.key(id), Some(full));
        let other = t.insert(early, DialogState::Early, 8, base).unwrap();
        assert_eq!(t.rekey(other, full), Err(InsertError::Exists(id)));
        t.remove(other);
        assert_eq!(t.rekey(other, full), Err(InsertError::NotFound));
    }

    #[test]
    fn bounded_and_duplicate_keys() {
        let base = Instant::now();
        let mut t = DialogTable::new(base, 2);
        let k = |i: u8| DialogKey::new(&h(), &[i], b"a", b"b");
        let a = t.insert(k(1), DialogState::Early, (), base).unwrap();
        assert_eq!(
            t.insert(k(1), DialogState::Early, (), base),
            Err(InsertError::Exists(a))
        );
        t.insert(k(2), DialogState::Early, (), base).unwrap();
        assert_eq!(
            t.insert(k(3), DialogState::Early, (), base),
            Err(InsertError::Full)
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.wheel.len(), 2, "failed inserts leave no timers behind");
        assert!(t.remove(a).is_some());
        assert_eq!(t.wheel.len(), 1, "remove cancels the timer");
        assert!(t.insert(k(3), DialogState::Early, (), base).is_ok());
    }

    #[test]
    fn expires_after_lifetime_and_touch_extends() {
        let base = Instant::now();
        let mut t = DialogTable::new(base, 8);
        let a = t
            .insert(
                DialogKey::new(&h(), b"a", b"1", b"2"),
                DialogState::Confirmed,
                'a',
                base,
            )
            .unwrap();
        let b = t
            .insert(
                DialogKey::new(&h(), b"b", b"1", b"2"),
                DialogState::Confirmed,
                'b',
                base,
            )
            .unwrap();
        assert_eq!(
            t.get(a).unwrap().expires_at(),
            base + DEFAULT_DIALOG_LIFETIME
        );
        // In-dialog traffic on `a` an hour in.
        assert!(t.touch(a, base + secs(3600)));
        assert_eq!(t.get(a).unwrap().last_activity(), base + secs(3600));
        assert_eq!(t.get(a).unwrap().created(), base);
        let mut out = Vec::new();
        t.expire(base + DEFAULT_DIALOG_LIFETIME - secs(1), &mut out);
        assert!(out.is_empty());
        t.expire(base + DEFAULT_DIALOG_LIFETIME, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.data, 'b');
        assert!(t.get(b).is_none());
        assert!(
            t.get(a).is_some(),
            "touched dialog survives, timer re-armed lazily"
        );
        let nd = t.next_deadline().unwrap();
        assert!(nd <= base + DEFAULT_DIALOG_LIFETIME + secs(3600));
        assert!(nd > base + DEFAULT_DIALOG_LIFETIME);
        out.clear();
        t.expire(base + DEFAULT_DIALOG_LIFETIME + secs(3600), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.data, 'a');
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn terminating_grace_is_not_extended_and_earlier_expiry_moves_timer() {
        let base = Instant::now();
        let mut t = DialogTable::new(base, 8);
        let id = t
            .insert(
                DialogKey::new(&h(), b"c", b"1", b"2"),
                DialogState::Confirmed,
                (),
                base,
            )
            .unwrap();
        t.get_mut(id).unwrap().state = DialogState::Terminating;
        assert!(t.set_expiry(id, base + secs(32)));
        assert!(t.next_deadline().is_some_and(|d| d <= base + secs(32)));
        assert!(t.touch(id, base + secs(10)));
        assert_eq!(t.get(id).unwrap().expires_at(), base + secs(32));
        let mut out = Vec::new();
        t.expire(base + secs(31), &mut out);
        assert!(out.is_empty());
        t.expire(base + secs(32), &mut out);
        assert_eq!(out.len(), 1);
        assert!(!t.touch(id, base + secs(33)), "stale id");
        assert!(!t.set_expiry(id, base + secs(33)));
    }
}
