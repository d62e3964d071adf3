//! The destination table: immutable snapshots of sets and destinations,
//! published by the control thread with an atomic pointer swap and read by the
//! workers without locks. Only the per-destination [`DestStats`] change
//! between snapshots, through atomics.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::hash::{hash_bytes, SplitMix64};
use super::list::{Attrs, DestDef, ListError, FLAG_DISABLED, FLAG_INACTIVE, FLAG_PROBING};
use super::maglev::Maglev;

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

/// One destination of one set in one snapshot. Dialogs keep an
/// `Arc<Destination>` (or just its `Arc<DestStats>`), which stays valid after
/// a reload; the stats are shared with the destination's successor.
#[derive(Debug)]
pub struct Destination {
    /// Set id it belongs to.
    pub set: u32,
    /// SIP URI as configured.
    pub uri: String,
    /// Resolved next-hop address.
    pub addr: SocketAddr,
    /// Reached over TCP (`;transport=tcp` in the URI).
    pub tcp: bool,
    /// Reached over TLS (`;transport=tls` or a `sips:` URI).
    pub tls: bool,
    /// Kamailio flags as configured.
    pub flags: u32,
    /// Priority as configured (higher first).
    pub priority: i32,
    /// Parsed attributes.
    pub attrs: Attrs,
    /// Attributes as configured.
    pub attrs_raw: String,
    /// Description as configured.
    pub description: String,
    /// Live state, shared across reloads.
    pub stats: Arc<DestStats>,
    /// Stable identity hash of (set, URI) for consistent hashing: it must not
    /// depend on the position in the set, or removing one destination would
    /// remap keys of others.
    pub(crate) id_hash: u64,
}

impl Destination {
    /// See [`DestStats::is_usable`].
    #[inline]
    pub fn is_usable(&self, now: Instant) -> bool {
        self.stats.is_usable(now)
    }

    /// Usable and below `maxload`: may take a new call now.
    #[inline]
    pub fn is_available(&self, now: Instant) -> bool {
        self.is_usable(now)
            && (self.attrs.maxload == 0 || self.stats.active_calls() < self.attrs.maxload)
    }
}

/// A destination set with data precomputed for the algorithms.
#[derive(Debug)]
pub struct Set {
    /// Set id.
    pub id: u32,
    pub(crate) index: usize,
    pub(crate) dests: Vec<Arc<Destination>>,
    /// Algorithm 9: shuffled slots, each a destination index; a worker walks
    /// them cyclically, so every 100 consecutive picks match the weights.
    pub(crate) weight_slots: Box<[u16]>,
    /// Algorithm 11: effective relative weights (0 = excluded).
    pub(crate) rweights: Box<[u32]>,
    /// Consistent hashing (`rendezvous`, `rendezvous-from`): the lookup
    /// table, built here so a call costs one slot and a short walk.
    pub(crate) maglev: Maglev,
}

impl Set {
    /// Position of this set in [`Table::sets`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// Destinations, ordered by priority (highest first), then file order.
    pub fn dests(&self) -> &[Arc<Destination>] {
        &self.dests
    }

    /// Number of destinations.
    pub fn len(&self) -> usize {
        self.dests.len()
    }

    /// Whether the set has no destinations (never true for a built table).
    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }

    /// Destination by index (as written by `Selector::select`).
    #[inline]
    pub fn get(&self, i: u16) -> Option<&Arc<Destination>> {
        self.dests.get(usize::from(i))
    }

    /// Index of the destination with `uri`.
    pub fn position(&self, uri: &str) -> Option<u16> {
        self.dests
            .iter()
            .position(|d| d.uri == uri)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// The algorithm 9 slot table (for diagnostics and tests).
    pub fn weight_slots(&self) -> &[u16] {
        &self.weight_slots
    }
}

/// Identifies a destination within one table snapshot only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DestId {
    /// Index into [`Table::sets`].
    pub set_index: u32,
    /// Index into [`Set::dests`].
    pub dest_index: u16,
}

/// One immutable snapshot of all destination sets.
#[derive(Debug)]
pub struct Table {
    sets: Vec<Set>,
    epoch: Instant,
    /// Every destination's address, for the trust checks of the relay
    /// policy (a destination's own requests are trusted).
    addrs: HashSet<SocketAddr>,
    /// Every destination's IP.
    ips: HashSet<IpAddr>,
}

/// The table as shared between the control thread (writer) and workers
/// (lock-free readers): `table.load()` on the hot path, `store` to publish.
pub type SharedTable = Arc<ArcSwap<Table>>;

/// Wraps a table for sharing.
pub fn shared(table: Table) -> SharedTable {
    Arc::new(ArcSwap::from_pointee(table))
}

/// Most destinations a set may hold (indexes are `u16`).
pub const MAX_SET_SIZE: usize = u16::MAX as usize;

impl Table {
    /// A table without sets.
    pub fn empty(epoch: Instant) -> Self {
        Self {
            sets: Vec::new(),
            epoch,
            addrs: HashSet::new(),
            ips: HashSet::new(),
        }
    }

    /// Builds a table from definitions. `resolve` maps a destination URI to
    /// its next-hop address (the caller owns URI parsing and DNS). Every
    /// problem is reported with the definition's line.
    pub fn build(
        defs: &[DestDef],
        epoch: Instant,
        resolve: &mut dyn FnMut(&str) -> Result<SocketAddr, String>,
    ) -> Result<Table, Vec<ListError>> {
        Self::build_inner(defs, epoch, resolve, None)
    }

    /// Builds the successor of `old` (hot reload). A destination that
    /// persists (same set id and URI; the n-th duplicate matches the n-th)
    /// keeps its `Arc<DestStats>`, so active calls, latency and health state
    /// survive. If its flags changed, the state the new flags imply is applied.
    /// New destinations start fresh.
    pub fn rebuild(
        old: &Table,
        defs: &[DestDef],
        resolve: &mut dyn FnMut(&str) -> Result<SocketAddr, String>,
    ) -> Result<Table, Vec<ListError>> {
        Self::build_inner(defs, old.epoch, resolve, Some(old))
    }

    fn build_inner(
        defs: &[DestDef],
        epoch: Instant,
        resolve: &mut dyn FnMut(&str) -> Result<SocketAddr, String>,
        old: Option<&Table>,
    ) -> Result<Table, Vec<ListError>> {
        let mut previous: HashMap<(u32, &str, usize), (&Arc<DestStats>, u32)> = HashMap::new();
        if let Some(old) = old {
            let mut seen: HashMap<(u32, &str), usize> = HashMap::new();
            for set in &old.sets {
                for d in &set.dests {
                    let n = seen.entry((set.id, d.uri.as_str())).or_default();
                    previous.insert((set.id, d.uri.as_str(), *n), (&d.stats, d.flags));
                    *n += 1;
                }
            }
        }

        let mut errors = Vec::new();
        // Stable sort keeps file order for equal (set, priority).
        let mut order: Vec<&DestDef> = defs.iter().collect();
        order.sort_by(|a, b| a.set.cmp(&b.set).then(b.priority.cmp(&a.priority)));

        let mut sets: Vec<Set> = Vec::new();
        let mut occurrence: HashMap<(u32, &str), usize> = HashMap::new();
        for def in order {
            let addr = match resolve(&def.uri) {
                Ok(a) => a,
                Err(e) => {
                    errors.push(ListError::new(
                        def.line,
                        format!("cannot resolve destination '{}': {e}", def.uri),
                    ));
                    continue;
                }
            };
            let n = occurrence.entry((def.set, def.uri.as_str())).or_default();
            let stats = match previous.get(&(def.set, def.uri.as_str(), *n)) {
                Some((stats, flags)) => {
                    if *flags != def.flags {
                        stats.set_state(DestState::from_kamailio_flags(def.flags));
                    }
                    Arc::clone(stats)
                }
                None => Arc::new(DestStats::new(
                    epoch,
                    DestState::from_kamailio_flags(def.flags),
                )),
            };
            *n += 1;
            let mut id_key = Vec::with_capacity(def.uri.len() + 12);
            id_key.extend_from_slice(&def.set.to_be_bytes());
            id_key.extend_from_slice(def.uri.as_bytes());
            id_key.extend_from_slice(&(*n as u64).to_be_bytes());
            let dest = Arc::new(Destination {
                set: def.set,
                uri: def.uri.clone(),
                addr,
                tcp: crate::sip::Uri::parse(def.uri.as_bytes())
                    .is_ok_and(|u| crate::route::uri_tcp(&u)),
                tls: crate::sip::Uri::parse(def.uri.as_bytes())
                    .is_ok_and(|u| crate::route::uri_secure(&u)),
                flags: def.flags,
                priority: def.priority,
                attrs: def.attrs.clone(),
                attrs_raw: def.attrs_raw.clone(),
                description: def.description.clone(),
                stats,
                id_hash: hash_bytes(&id_key),
            });
            match sets.last_mut() {
                Some(s) if s.id == def.set => {
                    if s.dests.len() >= MAX_SET_SIZE {
                        errors.push(ListError::new(
                            def.line,
                            format!("set {} has more than {MAX_SET_SIZE} destinations", def.set),
                        ));
                        continue;
                    }
                    s.dests.push(dest);
                }
                _ => sets.push(Set {
                    id: def.set,
                    index: sets.len(),
                    dests: vec![dest],
                    weight_slots: Box::new([]),
                    rweights: Box::new([]),
                    maglev: Maglev::default(),
                }),
            }
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.line);
            return Err(errors);
        }
        for s in &mut sets {
            s.precompute();
        }
        let addrs: HashSet<SocketAddr> = sets
            .iter()
            .flat_map(|s| s.dests.iter().map(|d| d.addr))
            .collect();
        let ips = addrs.iter().map(SocketAddr::ip).collect();
        Ok(Table {
            sets,
            epoch,
            addrs,
            ips,
        })
    }

    /// Whether `addr` is a destination's address (IP and port).
    pub fn has_addr(&self, addr: SocketAddr) -> bool {
        self.addrs.contains(&addr)
    }

    /// Whether `ip` is a destination's IP.
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip)
    }

    /// The epoch all hold-down times are measured from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// All sets, ordered by id.
    pub fn sets(&self) -> &[Set] {
        &self.sets
    }

    /// Set by id.
    #[inline]
    pub fn set(&self, id: u32) -> Option<&Set> {
        self.sets
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .and_then(|i| self.sets.get(i))
    }

    /// Destination by snapshot-local id.
    pub fn get(&self, id: DestId) -> Option<&Arc<Destination>> {
        self.sets
            .get(id.set_index as usize)
            .and_then(|s| s.get(id.dest_index))
    }

    /// First destination with `uri` in set `set_id` (for `set_state`).
    pub fn find(&self, set_id: u32, uri: &str) -> Option<(DestId, &Arc<Destination>)> {
        let set = self.set(set_id)?;
        let i = set.position(uri)?;
        let d = set.get(i)?;
        Some((
            DestId {
                set_index: set.index as u32,
                dest_index: i,
            },
            d,
        ))
    }

    /// Every destination with its id, set by set.
    pub fn iter(&self) -> impl Iterator<Item = (DestId, &Arc<Destination>)> + '_ {
        self.sets.iter().flat_map(|s| {
            s.dests.iter().enumerate().map(move |(i, d)| {
                (
                    DestId {
                        set_index: s.index as u32,
                        dest_index: i as u16,
                    },
                    d,
                )
            })
        })
    }

    /// Total number of destinations.
    pub fn dest_count(&self) -> usize {
        self.sets.iter().map(|s| s.dests.len()).sum()
    }
}

impl Set {
    fn precompute(&mut self) {
        let n = self.dests.len();
        // Deterministic per set, so every node of a cluster and every restart
        // spreads weighted traffic in the same pattern.
        let mut rng = SplitMix64(0x5eed_0000_0000_0000 ^ u64::from(self.id));
        let mut slots: Vec<u16> = Vec::with_capacity(100.max(n));
        if self.dests.iter().all(|d| d.attrs.weight == 0) {
            slots.extend((0..n).map(|i| i as u16));
        } else {
            // Kamailio's rule: weights are percentages filled in set order;
            // what would push the total past 100 is cut, and a shortfall goes
            // to the last destination.
            for (i, d) in self.dests.iter().enumerate() {
                let room = 100 - slots.len();
                let w = (d.attrs.weight as usize).min(room);
                slots.resize(slots.len() + w, i as u16);
            }
            let last = (n - 1) as u16;
            slots.resize(100, last);
        }
        // Fisher-Yates.
        for j in (1..slots.len()).rev() {
            let k = rng.below(j as u64 + 1) as usize;
            slots.swap(j, k);
        }
        self.weight_slots = slots.into_boxed_slice();

        let all_zero = self.dests.iter().all(|d| d.attrs.rweight == 0);
        self.rweights = self
            .dests
            .iter()
            .map(|d| if all_zero { 1 } else { d.attrs.rweight })
            .collect();

        let w: Vec<f64> = self
            .dests
            .iter()
            .map(|d| {
                let a = &d.attrs;
                f64::from(if a.rweight > 0 {
                    a.rweight
                } else if a.weight > 0 {
                    a.weight
                } else {
                    1
                })
            })
            .collect();
        let ids: Vec<u64> = self.dests.iter().map(|d| d.id_hash).collect();
        let equal = w.iter().all(|&x| x == w[0]);
        self.maglev = Maglev::build(&ids, (!equal).then_some(w.as_slice()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::list::parse_list;

    fn resolver() -> impl FnMut(&str) -> Result<SocketAddr, String> {
        let mut port = 5060u16;
        move |uri: &str| {
            if uri.contains("unresolvable") {
                return Err("no such host".into());
            }
            port += 1;
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        }
    }

    fn table(text: &str, epoch: Instant) -> Table {
        Table::build(&parse_list(text).unwrap(), epoch, &mut resolver()).unwrap()
    }

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

    #[test]
    fn build_orders_by_set_then_priority() {
        let t = table(
            "2 sip:b1 0 5\n1 sip:a1 0 0\n1 sip:a2 0 10\n1 sip:a3 0 0\n2 sip:b2 0 9\n",
            Instant::now(),
        );
        let ids: Vec<u32> = t.sets().iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![1, 2]);
        let uris: Vec<&str> = t
            .set(1)
            .unwrap()
            .dests()
            .iter()
            .map(|d| d.uri.as_str())
            .collect();
        assert_eq!(uris, vec!["sip:a2", "sip:a1", "sip:a3"]);
        assert_eq!(t.set(2).unwrap().dests()[0].uri, "sip:b2");
        assert!(t.set(3).is_none());
        let (id, d) = t.find(2, "sip:b1").unwrap();
        assert_eq!(
            id,
            DestId {
                set_index: 1,
                dest_index: 1
            }
        );
        assert!(Arc::ptr_eq(t.get(id).unwrap(), d));
        assert_eq!(t.iter().count(), 5);
        assert_eq!(t.dest_count(), 5);
        assert_eq!(t.set(1).unwrap().index(), 0);
    }

    #[test]
    fn build_reports_resolution_errors_with_lines() {
        let defs =
            parse_list("1 sip:ok\n1 sip:unresolvable.example\n2 sip:unresolvable2\n").unwrap();
        let errs = Table::build(&defs, Instant::now(), &mut resolver()).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(
            errs[0].to_string(),
            "line 2: cannot resolve destination 'sip:unresolvable.example': no such host"
        );
        assert_eq!(errs[1].line, 3);
    }

    #[test]
    fn weight_slots_follow_kamailio() {
        let t = table(
            "1 sip:a 0 0 weight=50\n1 sip:b 0 0 weight=30\n1 sip:c 0 0 weight=10\n\
             2 sip:x 0 0 weight=80\n2 sip:y 0 0 weight=80\n\
             3 sip:p\n3 sip:q\n3 sip:r\n",
            Instant::now(),
        );
        let count = |set: u32, i: u16| {
            t.set(set)
                .unwrap()
                .weight_slots()
                .iter()
                .filter(|&&s| s == i)
                .count()
        };
        // Shortfall (10) goes to the last destination.
        assert_eq!((count(1, 0), count(1, 1), count(1, 2)), (50, 30, 20));
        // Over 100: the excess is cut.
        assert_eq!((count(2, 0), count(2, 1)), (80, 20));
        // No weights at all: equal shares.
        assert_eq!(t.set(3).unwrap().weight_slots().len(), 3);
        assert_eq!((count(3, 0), count(3, 1), count(3, 2)), (1, 1, 1));
        // Shuffled, not in blocks.
        let s = t.set(1).unwrap().weight_slots();
        assert!(s[..50].iter().any(|&x| x != 0));
    }

    #[test]
    fn rebuild_keeps_stats_of_persisting_destinations() {
        let t0 = Instant::now();
        let t = table("1 sip:a\n1 sip:b\n1 sip:b\n2 sip:a 0\n", t0);
        let a1 = Arc::clone(&t.find(1, "sip:a").unwrap().1.stats);
        a1.call_started();
        a1.record_latency(Duration::from_millis(3));
        let b = t.set(1).unwrap().dests()[1].stats.clone();
        b.set_state(DestState::Probing);
        let b_dup = t.set(1).unwrap().dests()[2].stats.clone();
        let a2 = t.find(2, "sip:a").unwrap().1.stats.clone();
        a2.call_started();

        let defs = parse_list("1 sip:c\n1 sip:b 0 5\n1 sip:a\n2 sip:a 4\n").unwrap();
        let t2 = Table::rebuild(&t, &defs, &mut resolver()).unwrap();
        assert_eq!(t2.epoch(), t0);
        let s1 = t2.set(1).unwrap();
        let by_uri = |u: &str| Arc::clone(&s1.get(s1.position(u).unwrap()).unwrap().stats);
        assert!(Arc::ptr_eq(&by_uri("sip:a"), &a1));
        assert_eq!(by_uri("sip:a").active_calls(), 1);
        assert_eq!(by_uri("sip:a").latency_us(), Some(3000));
        assert!(
            Arc::ptr_eq(&by_uri("sip:b"), &b),
            "first duplicate matches first"
        );
        assert_eq!(by_uri("sip:b").state(), DestState::Probing, "state kept");
        assert!(!Arc::ptr_eq(&by_uri("sip:b"), &b_dup));
        assert_eq!(by_uri("sip:c").active_calls(), 0);
        assert_eq!(by_uri("sip:c").state(), DestState::Active);
        // Set 2's sip:a is another destination; its flags changed to disabled.
        let a2_new = &t2.find(2, "sip:a").unwrap().1.stats;
        assert!(Arc::ptr_eq(a2_new, &a2));
        assert_eq!(a2_new.active_calls(), 1);
        assert_eq!(a2_new.state(), DestState::Disabled);
    }

    #[test]
    fn shared_table_swaps() {
        let t0 = Instant::now();
        let shared = shared(table("1 sip:a\n", t0));
        let reader = Arc::clone(&shared);
        assert_eq!(reader.load().dest_count(), 1);
        let next = Table::rebuild(
            &shared.load(),
            &parse_list("1 sip:a\n1 sip:b\n").unwrap(),
            &mut resolver(),
        )
        .unwrap();
        shared.store(Arc::new(next));
        assert_eq!(reader.load().dest_count(), 2);
    }
}
