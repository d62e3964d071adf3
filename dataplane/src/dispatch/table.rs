//! The destination table: immutable snapshots of sets and destinations,
//! published by the control thread with an atomic pointer swap and read by the
//! workers without locks. Only the per-destination [`DestStats`] change
//! between snapshots, through atomics.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use super::hash::{hash_bytes, SplitMix64};
use super::health::{DestState, DestStats};
use super::list::{Attrs, DestDef, ListError};
use super::maglev::Maglev;

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
    use std::time::Duration;

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
