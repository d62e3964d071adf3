//! Hierarchical hashed timing wheel with 1 ms resolution.
//!
//! Every transaction and dialog of a worker has a timer, so a worker holds
//! hundreds of thousands of them, nearly all of which are cancelled or moved
//! before they fire. The wheel therefore makes insert, cancel and reschedule
//! O(1), keeps entries in a slab with a free list (no allocation once warm) and
//! finds the next deadline from per-level occupancy bitmaps instead of scanning.
//!
//! Layout: 11 levels of 64 slots; level `L` slots span `64^L` ms. 11 × 6 bits
//! covers the whole 64-bit millisecond range, so a deadline hours or years away
//! needs no overflow list: it simply sits in a high level and cascades down as
//! time approaches it (the scheme of the Linux kernel and tokio timers).
//!
//! Time is quantised to whole milliseconds since `start`. Deadlines are rounded
//! *up*, so an item is never released before its deadline and at most ~1 ms
//! after `expire` is called at or past it. [`TimerWheel::next_deadline`] is never
//! later than the moment at which `expire` would release the earliest item (it
//! may be earlier when the earliest item still sits in a coarse level; calling
//! `expire` then merely cascades and returns nothing).

use std::fmt;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

const LEVEL_BITS: u32 = 6;
const SLOTS: usize = 1 << LEVEL_BITS;
const SLOT_MASK: u64 = (SLOTS as u64) - 1;
const LEVELS: usize = 11;
const NIL: u32 = u32::MAX;
/// List holding items whose deadline has already been reached.
const PENDING: u16 = (LEVELS * SLOTS) as u16;
const LIST_COUNT: usize = LEVELS * SLOTS + 1;
/// Marks a slab entry as being on the free list.
const FREE: u16 = u16::MAX;

/// Handle to a scheduled timer. Ids are generation-checked: after the timer has
/// fired or been cancelled, its id never matches a later timer that reuses the
/// same slab slot (until the 32-bit generation wraps).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    idx: u32,
    gen: NonZeroU32,
}

impl fmt::Debug for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimerId({}v{})", self.idx, self.gen)
    }
}

struct Entry<T> {
    item: Option<T>,
    tick: u64,
    prev: u32,
    next: u32,
    gen: NonZeroU32,
    list: u16,
}

/// A hierarchical timing wheel holding items of type `T` until their deadline.
///
/// See the module documentation for the resolution and rounding contract.
/// `now` must never go backwards between calls (it is an [`Instant`]).
pub struct TimerWheel<T> {
    start: Instant,
    /// Last tick processed: every item with `tick <= elapsed` is on `PENDING`.
    elapsed: u64,
    entries: Vec<Entry<T>>,
    free_head: u32,
    heads: Box<[u32]>,
    occupied: [u64; LEVELS],
    len: usize,
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose time origin is `start` (deadlines before `start`
    /// fire at the first `expire`).
    pub fn new(start: Instant) -> Self {
        Self::with_capacity(start, 0)
    }

    /// Like [`TimerWheel::new`], with room for `capacity` timers before the slab grows.
    pub fn with_capacity(start: Instant, capacity: usize) -> Self {
        TimerWheel {
            start,
            elapsed: 0,
            entries: Vec::with_capacity(capacity),
            free_head: NIL,
            heads: vec![NIL; LIST_COUNT].into_boxed_slice(),
            occupied: [0; LEVELS],
            len: 0,
        }
    }

    /// Number of scheduled timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no timer is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Timers the slab holds without reallocating.
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Heap bytes owned by the wheel (slab at its capacity plus slot heads).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry<T>>()
            + self.heads.len() * std::mem::size_of::<u32>()
    }

    /// Schedules `item` to be released by `expire` once `now >= deadline`.
    ///
    /// # Panics
    /// If more than `u32::MAX - 1` timers exist at once (hundreds of GB).
    pub fn insert(&mut self, deadline: Instant, item: T) -> TimerId {
        let tick = self.tick_ceil(deadline);
        let idx = self.alloc(item, tick);
        self.link(idx, tick);
        self.len += 1;
        TimerId {
            idx,
            gen: self.entries[idx as usize].gen,
        }
    }

    /// Removes a scheduled timer and returns its item; `None` if the id is
    /// stale (already fired or cancelled). O(1).
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let idx = self.live(id)?;
        self.unlink(idx);
        self.free(idx)
    }

    /// Moves a scheduled timer to a new deadline, keeping its id. Returns false
    /// if the id is stale. O(1).
    pub fn reschedule(&mut self, id: TimerId, deadline: Instant) -> bool {
        let Some(idx) = self.live(id) else {
            return false;
        };
        let tick = self.tick_ceil(deadline);
        if self.entries[idx as usize].tick == tick {
            // Same deadline (a transaction rescheduled by a message that did
            // not move its timers): already on the right list, or on a
            // coarser one it cascades down from like any other entry.
            return true;
        }
        self.unlink(idx);
        self.entries[idx as usize].tick = tick;
        self.link(idx, tick);
        true
    }

    /// The (rounded-up) deadline of a scheduled timer; `None` if the id is stale.
    pub fn deadline(&self, id: TimerId) -> Option<Instant> {
        let idx = self.live(id)?;
        Some(self.instant_of(self.entries[idx as usize].tick))
    }

    /// True if `id` refers to a timer that is still scheduled.
    pub fn contains(&self, id: TimerId) -> bool {
        self.live(id).is_some()
    }

    /// Releases one item whose deadline is `<= now`, or `None` when no more are
    /// due. Loop on it (`while let Some(x) = wheel.poll(now)`) when handling an
    /// item needs `&mut` access to state that also owns the wheel.
    pub fn poll(&mut self, now: Instant) -> Option<T> {
        let now_tick = self.tick_floor(now);
        loop {
            let head = self.heads[PENDING as usize];
            if head != NIL {
                self.unlink(head);
                return self.free(head);
            }
            match self.next_expiration() {
                Some((level, slot, tick)) if tick <= now_tick => {
                    self.elapsed = tick;
                    self.cascade(level, slot);
                }
                _ => {
                    self.elapsed = self.elapsed.max(now_tick);
                    return None;
                }
            }
        }
    }

    /// Releases every item whose deadline is `<= now` into `out`, in deadline
    /// order (items of the same millisecond in unspecified order). Returns how
    /// many were released.
    pub fn expire(&mut self, now: Instant, out: &mut impl Extend<T>) -> usize {
        let mut n = 0;
        while let Some(item) = self.poll(now) {
            out.extend(Some(item));
            n += 1;
        }
        n
    }

    /// Callback form of [`TimerWheel::expire`].
    pub fn expire_with(&mut self, now: Instant, mut f: impl FnMut(T)) -> usize {
        let mut n = 0;
        while let Some(item) = self.poll(now) {
            f(item);
            n += 1;
        }
        n
    }

    /// When `expire` should next be called: never later than the earliest
    /// release, possibly earlier (see the module docs). `None` when empty.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.heads[PENDING as usize] != NIL {
            return Some(self.instant_of(self.elapsed));
        }
        self.next_expiration()
            .map(|(_, _, tick)| self.instant_of(tick))
    }

    fn tick_ceil(&self, t: Instant) -> u64 {
        let nanos = t.saturating_duration_since(self.start).as_nanos();
        u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    fn tick_floor(&self, t: Instant) -> u64 {
        let ms = t.saturating_duration_since(self.start).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    fn instant_of(&self, tick: u64) -> Instant {
        // Overflow would need a deadline ~584 million years out; answering
        // "now-ish" instead is early, which the contract allows.
        self.start
            .checked_add(Duration::from_millis(tick))
            .unwrap_or(self.start)
    }

    fn live(&self, id: TimerId) -> Option<u32> {
        let e = self.entries.get(id.idx as usize)?;
        (e.gen == id.gen && e.list != FREE).then_some(id.idx)
    }

    fn alloc(&mut self, item: T, tick: u64) -> u32 {
        if self.free_head != NIL {
            let idx = self.free_head;
            let e = &mut self.entries[idx as usize];
            self.free_head = e.next;
            e.item = Some(item);
            e.tick = tick;
            return idx;
        }
        let idx = u32::try_from(self.entries.len())
            .ok()
            .filter(|&i| i != NIL)
            .expect("timer wheel: more than u32::MAX - 1 timers");
        self.entries.push(Entry {
            item: Some(item),
            tick,
            prev: NIL,
            next: NIL,
            gen: NonZeroU32::MIN,
            list: FREE,
        });
        idx
    }

    /// Returns the item and puts the (already unlinked) entry on the free list.
    fn free(&mut self, idx: u32) -> Option<T> {
        let e = &mut self.entries[idx as usize];
        let item = e.item.take();
        e.gen = e.gen.checked_add(1).unwrap_or(NonZeroU32::MIN);
        e.list = FREE;
        e.prev = NIL;
        e.next = self.free_head;
        self.free_head = idx;
        self.len -= 1;
        item
    }

    fn list_for(&self, tick: u64) -> u16 {
        if tick <= self.elapsed {
            return PENDING;
        }
        // The highest bit in which the deadline differs from the current time
        // picks the level: within that level the deadline lies in a later slot
        // of the same block as `elapsed`, so slots never wrap around.
        let masked = (self.elapsed ^ tick) | SLOT_MASK;
        let significant = 63 - masked.leading_zeros();
        let level = (significant / LEVEL_BITS) as usize;
        let slot = ((tick >> (level as u32 * LEVEL_BITS)) & SLOT_MASK) as usize;
        (level * SLOTS + slot) as u16
    }

    fn link(&mut self, idx: u32, tick: u64) {
        let list = self.list_for(tick);
        self.link_to(idx, list);
    }

    fn link_to(&mut self, idx: u32, list: u16) {
        let head = self.heads[list as usize];
        {
            let e = &mut self.entries[idx as usize];
            e.list = list;
            e.prev = NIL;
            e.next = head;
        }
        if head != NIL {
            self.entries[head as usize].prev = idx;
        }
        self.heads[list as usize] = idx;
        if list != PENDING {
            let (level, slot) = (list as usize / SLOTS, list as usize % SLOTS);
            self.occupied[level] |= 1 << slot;
        }
    }

    fn unlink(&mut self, idx: u32) {
        let (list, prev, next) = {
            let e = &self.entries[idx as usize];
            (e.list, e.prev, e.next)
        };
        if prev != NIL {
            self.entries[prev as usize].next = next;
        } else {
            self.heads[list as usize] = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if list != PENDING && self.heads[list as usize] == NIL {
            let (level, slot) = (list as usize / SLOTS, list as usize % SLOTS);
            self.occupied[level] &= !(1 << slot);
        }
    }

    /// Redistributes a slot whose start time has been reached into lower levels
    /// (or onto the pending list).
    fn cascade(&mut self, level: usize, slot: usize) {
        let list = level * SLOTS + slot;
        let mut cur = self.heads[list];
        self.heads[list] = NIL;
        self.occupied[level] &= !(1 << slot);
        while cur != NIL {
            let (next, tick) = {
                let e = &self.entries[cur as usize];
                (e.next, e.tick)
            };
            // Cascading always moves an item strictly down (or onto PENDING).
            // Should that invariant ever break, release the item rather than
            // re-queue it in the same slot and spin forever.
            let to = self.list_for(tick);
            debug_assert_ne!(to as usize, list, "timer wheel: cascade made no progress");
            self.link_to(cur, if to as usize == list { PENDING } else { to });
            cur = next;
        }
    }

    /// (level, slot, start tick of that slot) of the earliest occupied slot.
    /// Any item in a lower level is earlier than every item in a higher one,
    /// so the first occupied level wins.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        for (level, &occ) in self.occupied.iter().enumerate() {
            if occ == 0 {
                continue;
            }
            let shift = level as u32 * LEVEL_BITS;
            let now_slot = ((self.elapsed >> shift) & SLOT_MASK) as u32;
            let slot = ((occ.rotate_right(now_slot).trailing_zeros() + now_slot) as usize) % SLOTS;
            let block_start = if shift + LEVEL_BITS >= 64 {
                0
            } else {
                self.elapsed & !((1u64 << (shift + LEVEL_BITS)) - 1)
            };
            let tick = block_start.wrapping_add((slot as u64) << shift);
            return Some((level, slot, tick.max(self.elapsed)));
        }
        None
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("len", &self.len)
            .field("elapsed_ms", &self.elapsed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base);
        w.insert(base + ms(500), "a");
        w.insert(base + ms(1500), "b");
        let mut out = Vec::new();
        w.expire(base + ms(499), &mut out);
        assert!(out.is_empty());
        assert_eq!(w.next_deadline(), Some(base + ms(500)));
        w.expire(base + ms(500), &mut out);
        assert_eq!(out, vec!["a"]);
        w.expire(base + ms(1499), &mut out);
        assert_eq!(out, vec!["a"]);
        w.expire(base + ms(1500), &mut out);
        assert_eq!(out, vec!["a", "b"]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn sub_millisecond_deadlines_round_up() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base);
        w.insert(base + Duration::from_micros(10_100), 1);
        let mut out = Vec::new();
        w.expire(base + Duration::from_micros(10_900), &mut out);
        assert!(out.is_empty(), "released before its deadline's millisecond");
        assert_eq!(w.next_deadline(), Some(base + ms(11)));
        w.expire(base + ms(11), &mut out);
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn past_deadlines_fire_on_next_expire() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base);
        let mut out = Vec::new();
        w.expire(base + ms(1000), &mut out);
        w.insert(base + ms(10), 7);
        w.insert(base - ms(10), 8);
        assert!(w.next_deadline().is_some_and(|d| d <= base + ms(1000)));
        w.expire(base + ms(1000), &mut out);
        out.sort();
        assert_eq!(out, vec![7, 8]);
    }

    #[test]
    fn cancel_is_generation_checked() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base);
        let a = w.insert(base + ms(5), 'a');
        assert_eq!(w.cancel(a), Some('a'));
        assert_eq!(w.cancel(a), None);
        let b = w.insert(base + ms(5), 'b');
        assert_eq!(a.idx, b.idx, "slot reused");
        assert_ne!(a, b);
        assert_eq!(w.cancel(a), None, "stale id must not cancel the new timer");
        assert!(w.contains(b));
        let mut out = Vec::new();
        w.expire(base + ms(5), &mut out);
        assert_eq!(out, vec!['b']);
        assert_eq!(w.cancel(b), None, "fired id is stale");
        assert!(!w.reschedule(b, base + ms(50)));
    }

    #[test]
    fn hours_away_deadlines_cascade_down_exactly() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base);
        let twelve_h = ms(12 * 3600 * 1000 + 7);
        w.insert(base + twelve_h, "dialog");
        w.insert(base + ms(40 * 24 * 3600 * 1000), "weeks");
        let mut out = Vec::new();
        let mut t = base;
        let mut wakeups = 0;
        // Sleeping until each next_deadline must reach the item in few steps.
        while out.is_empty() {
            let d = w.next_deadline().expect("has timers");
            assert!(d <= base + twelve_h, "next_deadline later than the item");
            t = t.max(d);
            w.expire(t, &mut out);
            wakeups += 1;
            assert!(wakeups < 20);
        }
        assert_eq!(out, vec!["dialog"]);
        assert_eq!(t, base + twelve_h);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn reschedule_moves_both_ways() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base);
        let id = w.insert(base + ms(100_000), 1);
        assert!(w.reschedule(id, base + ms(3)));
        assert_eq!(w.deadline(id), Some(base + ms(3)));
        let mut out = Vec::new();
        w.expire(base + ms(2), &mut out);
        assert!(out.is_empty());
        assert!(w.reschedule(id, base + ms(70_000)));
        w.expire(base + ms(69_999), &mut out);
        assert!(out.is_empty());
        w.expire(base + ms(70_000), &mut out);
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn callback_and_poll_forms_agree() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base);
        for i in 0..100u64 {
            w.insert(base + ms(i * 7), i);
        }
        let mut got = Vec::new();
        assert_eq!(w.expire_with(base + ms(350), |x| got.push(x)), 51);
        assert_eq!(
            got,
            (0..=50).collect::<Vec<_>>(),
            "deadline order across ticks"
        );
        let mut rest = Vec::new();
        while let Some(x) = w.poll(base + ms(10_000)) {
            rest.push(x);
        }
        assert_eq!(rest, (51..100).collect::<Vec<_>>());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            delay_us: u64,
        },
        /// A deadline exactly on a slot boundary of some level.
        InsertAligned {
            level: u32,
            k: u64,
        },
        Cancel {
            pick: usize,
        },
        CancelStale {
            pick: usize,
        },
        Reschedule {
            pick: usize,
            delay_us: u64,
        },
        Advance {
            us: u64,
        },
        /// Jump exactly to the earliest model deadline.
        AdvanceToNext,
    }

    fn delay() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..5_000,                   // same level-0 block
            0u64..300_000,                 // a few levels up
            0u64..50_000_000,              // minutes
            0u64..(13 * 3600 * 1_000_000), // dialog lifetimes
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => delay().prop_map(|delay_us| Op::Insert { delay_us }),
            2 => (0u32..5, 0u64..4).prop_map(|(level, k)| Op::InsertAligned { level, k }),
            1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
            1 => any::<usize>().prop_map(|pick| Op::CancelStale { pick }),
            1 => (any::<usize>(), delay()).prop_map(|(pick, delay_us)| Op::Reschedule { pick, delay_us }),
            3 => prop_oneof![0u64..3_000, 0u64..600_000, 0u64..20_000_000_000]
                .prop_map(|us| Op::Advance { us }),
            2 => Just(Op::AdvanceToNext),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]
        #[test]
        fn matches_btreemap_model(ops in proptest::collection::vec(op(), 1..200)) {
            let base = Instant::now();
            let mut w = TimerWheel::new(base);
            // Model: (ceil-ms tick, serial) -> serial; the wheel's items are serials.
            let mut model: BTreeMap<(u64, u64), u64> = BTreeMap::new();
            let mut ids: HashMap<u64, (TimerId, u64)> = HashMap::new();
            let mut stale: Vec<TimerId> = Vec::new();
            let mut serial = 0u64;
            let mut now = base;
            let mut last_tick = 0u64;
            let ceil = |d: Duration| d.as_nanos().div_ceil(1_000_000) as u64;
            for op in ops {
                match op {
                    Op::Insert { delay_us } => {
                        let deadline = now + Duration::from_micros(delay_us);
                        let id = w.insert(deadline, serial);
                        let tick = ceil(deadline - base);
                        model.insert((tick, serial), serial);
                        ids.insert(serial, (id, tick));
                        serial += 1;
                    }
                    Op::Cancel { pick } => {
                        if ids.is_empty() { continue; }
                        let mut keys: Vec<_> = ids.keys().copied().collect();
                        keys.sort();
                        let s = keys[pick % keys.len()];
                        let (id, tick) = ids.remove(&s).unwrap();
                        prop_assert_eq!(w.cancel(id), Some(s));
                        prop_assert!(model.remove(&(tick, s)).is_some());
                        stale.push(id);
                    }
                    Op::CancelStale { pick } => {
                        if stale.is_empty() { continue; }
                        let id = stale[pick % stale.len()];
                        prop_assert_eq!(w.cancel(id), None);
                        prop_assert!(!w.reschedule(id, now));
                    }
                    Op::Reschedule { pick, delay_us } => {
                        if ids.is_empty() { continue; }
                        let mut keys: Vec<_> = ids.keys().copied().collect();
                        keys.sort();
                        let s = keys[pick % keys.len()];
                        let deadline = now + Duration::from_micros(delay_us);
                        let (id, old) = ids[&s];
                        prop_assert!(w.reschedule(id, deadline));
                        let tick = ceil(deadline - base);
                        model.remove(&(old, s));
                        model.insert((tick, s), s);
                        ids.insert(s, (id, tick));
                    }
                    Op::InsertAligned { level, k } => {
                        let now_tick = (now - base).as_millis() as u64;
                        let shift = 6 * level;
                        let tick = ((now_tick >> shift) + k) << shift;
                        let id = w.insert(base + ms(tick), serial);
                        model.insert((tick, serial), serial);
                        ids.insert(serial, (id, tick));
                        serial += 1;
                    }
                    Op::Advance { .. } | Op::AdvanceToNext => {
                        match op {
                            Op::Advance { us } => now += Duration::from_micros(us),
                            _ => {
                                if let Some(&(tick, _)) = model.keys().next() {
                                    now = now.max(base + ms(tick));
                                }
                            }
                        }
                        let now_tick = (now - base).as_millis() as u64;
                        // next_deadline is never later than the first release
                        // (an item already overdue is due at the last expire).
                        if let Some(&(tick, _)) = model.keys().next() {
                            let nd = w.next_deadline();
                            prop_assert!(nd.is_some());
                            prop_assert!(nd.unwrap() <= base + ms(tick.max(last_tick)));
                        } else {
                            prop_assert_eq!(w.next_deadline(), None);
                        }
                        let mut got = Vec::new();
                        w.expire(now, &mut got);
                        last_tick = now_tick;
                        let due: Vec<(u64, u64)> =
                            model.range(..(now_tick + 1, 0)).map(|(k, _)| *k).collect();
                        let mut want: Vec<u64> = due.iter().map(|&(_, s)| s).collect();
                        for k in &due {
                            model.remove(k);
                        }
                        for s in &want {
                            let (id, _) = ids.remove(s).unwrap();
                            stale.push(id);
                        }
                        got.sort();
                        want.sort();
                        prop_assert_eq!(got, want);
                        // No busy loop: after expire the next wakeup is in the future.
                        if let Some(nd) = w.next_deadline() {
                            prop_assert!(nd > now);
                        }
                    }
                }
                prop_assert_eq!(w.len(), model.len());
            }
        }
    }
}
