//! The location table: bindings per address of record (AOR), shared by
//! every worker without a lock on the lookup path.
//!
//! The choice (docs/registrar.md): **one writer, snapshot readers**. Workers
//! never change the table; a REGISTER they accept becomes [`Update`]s on a
//! bounded lock-free queue to the control thread, which alone applies them
//! ([`Location::apply`]) and publishes the result. The table is split in
//! [`SHARDS`] shards, each an `ArcSwap` of an immutable map, so a publish
//! copies only the shards that changed (and within them shares every
//! unchanged AOR's bindings by `Arc`), and a lookup is one atomic load and
//! one hash probe. A REGISTER's own 200 lists the bindings as they will be
//! once its updates are applied; another worker sees them after the next
//! publish (milliseconds).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// Shards of the table (a power of two).
pub const SHARDS: usize = 64;

/// One contact registered for an AOR.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The Contact URI as registered (without `<>` and header parameters).
    pub contact: Box<str>,
    /// Where requests for the contact really go when it sits behind a NAT:
    /// the source address of the REGISTER (Kamailio's `received`).
    pub received: Option<SocketAddr>,
    /// The REGISTER's Path header values, as received (RFC 3327); empty: none.
    pub path: Box<str>,
    /// Unix time (s) the binding expires.
    pub expires: u64,
    /// q-value × 1000 (RFC 3261 §20.10); 1000 when absent.
    pub q: u16,
    pub call_id: Box<str>,
    pub cseq: u32,
    pub user_agent: Box<str>,
    /// Kamailio's unique record id (`location.ruid`).
    pub ruid: Box<str>,
    /// Unix time (s) of the REGISTER that last wrote it.
    pub last_modified: u64,
    /// Registered over a TCP or TLS connection: reachable over that
    /// connection only (`received` is its peer).
    pub stream: Option<Stream>,
}

/// The connection a binding was registered over (RFC 5626 style reuse, as
/// Kamailio does with its TCP connection aliases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// The connection runs TLS.
    pub tls: bool,
    /// The worker owning the connection. `None` when not known: a binding
    /// loaded from the database after a restart, whose connection is gone
    /// (the phone re-registers on a new one).
    pub worker: Option<u16>,
}

impl Binding {
    /// Where a request for this binding is sent: the REGISTER's source when
    /// it was recorded (NAT, or a Path hop that may not be used), else the
    /// first Path hop, else the Contact's own address (IP literals only;
    /// workers resolve no names).
    pub fn target(&self) -> Option<SocketAddr> {
        if self.received.is_some() {
            return self.received;
        }
        if !self.path.is_empty() {
            return super::path::first_hop(&self.path);
        }
        let uri = crate::sip::Uri::parse(self.contact.as_bytes()).ok()?;
        crate::route::uri_addr(&uri)
    }

    /// Whether the binding sits behind a NAT sipvane handles (pings, the
    /// Contact of its answers): it has a `received` and no Path (behind a
    /// Path the edge handles NAT).
    pub fn nated(&self) -> bool {
        match self.received {
            None => false,
            Some(_) if !self.path.is_empty() => false,
            // Registered over a connection, `received` is always its peer:
            // behind a NAT when the Contact names another address.
            Some(src) if self.stream.is_some() => {
                crate::sip::Uri::parse(self.contact.as_bytes())
                    .ok()
                    .and_then(|u| crate::route::uri_addr(&u))
                    != Some(src)
            }
            Some(_) => true,
        }
    }

    /// The `received` column as Kamailio writes it: `sip:IP:PORT`, with
    /// `;transport=tcp|tls` for a binding registered over a connection.
    pub fn received_uri(&self) -> Option<String> {
        let a = self.received?;
        Some(match self.stream {
            None => format!("sip:{a}"),
            Some(Stream { tls: false, .. }) => format!("sip:{a};transport=tcp"),
            Some(Stream { tls: true, .. }) => format!("sip:{a};transport=tls"),
        })
    }
}

/// The bindings of one AOR (never empty in a published table).
pub type Bindings = Arc<[Binding]>;

/// A change a worker asks the control thread to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// `user@domain`.
    pub aor: Box<str>,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Adds the binding, or replaces the one with the same contact.
    Upsert(Binding),
    /// Removes the binding with this contact.
    Remove(Box<str>),
    /// Removes every binding of the AOR (`Contact: *`).
    Clear,
}

type Shard = HashMap<Box<str>, Bindings>;

/// The shared table.
pub struct Location {
    shards: Box<[ArcSwap<Shard>]>,
    /// The addresses requests for bindings go to: in-dialog requests from
    /// untrusted peers may be relayed to them (`dialog_targets = "known"`).
    targets: ArcSwap<HashSet<IpAddr>>,
    /// Bindings per target address (control thread only).
    target_counts: Mutex<HashMap<IpAddr, usize>>,
    /// Bindings per AOR the control thread keeps at most (the worker checks
    /// first; this catches two workers racing).
    max_contacts: usize,
    hasher: ahash::RandomState,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location")
            .field("max_contacts", &self.max_contacts)
            .finish_non_exhaustive()
    }
}

impl Location {
    pub fn new(max_contacts: usize) -> Location {
        Location {
            shards: (0..SHARDS).map(|_| ArcSwap::default()).collect(),
            targets: ArcSwap::default(),
            target_counts: Mutex::default(),
            max_contacts: max_contacts.max(1),
            // Fixed seeds: the shard of an AOR is not secret, and a peer
            // cannot make one shard long without registering (authenticated).
            hasher: ahash::RandomState::with_seeds(0x10c, 0xa7, 0x10, 0x5),
        }
    }

    fn shard_of(&self, aor: &str) -> usize {
        (self.hasher.hash_one(aor) as usize) & (SHARDS - 1)
    }

    /// The AOR's bindings as last published (expired ones included: the
    /// caller filters by its `now`).
    pub fn lookup(&self, aor: &str) -> Option<Bindings> {
        self.shards[self.shard_of(aor)].load().get(aor).cloned()
    }

    /// Whether some binding's requests go to `ip`.
    pub fn is_target(&self, ip: IpAddr) -> bool {
        self.targets.load().contains(&ip)
    }

    /// Counts `gone` out of and `new` into the target addresses; publishes
    /// the set when an address appeared or disappeared.
    fn retarget<'b>(
        &self,
        gone: impl Iterator<Item = &'b Binding>,
        new: impl Iterator<Item = &'b Binding>,
    ) {
        let Ok(mut counts) = self.target_counts.lock() else {
            return;
        };
        let mut changed = false;
        for ip in gone.filter_map(|b| b.target()).map(|a| a.ip()) {
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                    changed = true;
                }
            }
        }
        for ip in new.filter_map(|b| b.target()).map(|a| a.ip()) {
            let n = counts.entry(ip).or_insert(0);
            changed |= *n == 0;
            *n += 1;
        }
        if changed {
            self.targets
                .store(Arc::new(counts.keys().copied().collect()));
        }
    }

    /// Every AOR and its bindings (for the API and the database), in no
    /// particular order.
    pub fn all(&self) -> Vec<(Box<str>, Bindings)> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            out.extend(s.load().iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    /// AORs and bindings in the table.
    pub fn counts(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(a, b), s| {
            let s = s.load();
            (a + s.len(), b + s.values().map(|v| v.len()).sum::<usize>())
        })
    }

    /// Applies updates (control thread only) and publishes the shards they
    /// touched. Returns the AORs that changed.
    pub fn apply(&self, updates: impl IntoIterator<Item = Update>) -> Vec<Box<str>> {
        let mut staged: HashMap<usize, Shard> = HashMap::new();
        let mut changed: Vec<Box<str>> = Vec::new();
        for u in updates {
            let idx = self.shard_of(&u.aor);
            let shard = staged
                .entry(idx)
                .or_insert_with(|| (**self.shards[idx].load()).clone());
            let mut list: Vec<Binding> = shard.get(&u.aor).map(|b| b.to_vec()).unwrap_or_default();
            let before = list.len();
            let mut touched = true;
            match u.op {
                Op::Upsert(b) => match list.iter().position(|x| x.contact == b.contact) {
                    Some(i) => list[i] = b,
                    None if list.len() < self.max_contacts => list.push(b),
                    None => touched = false,
                },
                Op::Remove(c) => list.retain(|x| x.contact != c),
                Op::Clear => list.clear(),
            }
            touched &= !(before == 0 && list.is_empty());
            if !touched {
                continue;
            }
            if list.is_empty() {
                shard.remove(&u.aor);
            } else {
                shard.insert(u.aor.clone(), list.into());
            }
            if !changed.contains(&u.aor) {
                changed.push(u.aor);
            }
        }
        for aor in &changed {
            let idx = self.shard_of(aor);
            let old = self.shards[idx].load().get(aor).cloned();
            let new = staged.get(&idx).and_then(|s| s.get(aor)).cloned();
            self.retarget(
                old.iter().flat_map(|b| b.iter()),
                new.iter().flat_map(|b| b.iter()),
            );
        }
        for (idx, shard) in staged {
            self.shards[idx].store(Arc::new(shard));
        }
        changed
    }

    /// Replaces the whole table (start-up reload), keeping at most
    /// `max_contacts` bindings per AOR.
    pub fn replace(&self, all: impl IntoIterator<Item = (Box<str>, Binding)>) {
        let mut shards: Vec<HashMap<Box<str>, Vec<Binding>>> = vec![HashMap::new(); SHARDS];
        for (aor, b) in all {
            let list = shards[self.shard_of(&aor)].entry(aor).or_default();
            if list.len() < self.max_contacts {
                list.push(b);
            }
        }
        let old = self.all();
        self.retarget(
            old.iter().flat_map(|(_, b)| b.iter()),
            shards.iter().flat_map(|s| s.values().flatten()),
        );
        for (slot, shard) in self.shards.iter().zip(shards) {
            slot.store(Arc::new(
                shard.into_iter().map(|(k, v)| (k, v.into())).collect(),
            ));
        }
    }

    /// Removes bindings that expired before `now_unix`; returns the AORs
    /// that changed.
    pub fn expire(&self, now_unix: u64) -> Vec<Box<str>> {
        let mut updates = Vec::new();
        for s in self.shards.iter() {
            for (aor, list) in s.load().iter() {
                for b in list.iter().filter(|b| b.expires <= now_unix) {
                    updates.push(Update {
                        aor: aor.clone(),
                        op: Op::Remove(b.contact.clone()),
                    });
                }
            }
        }
        self.apply(updates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn binding(contact: &str, expires: u64) -> Binding {
        Binding {
            contact: contact.into(),
            received: None,
            path: "".into(),
            expires,
            q: 1000,
            call_id: "c".into(),
            cseq: 1,
            user_agent: "".into(),
            ruid: format!("r-{contact}").into(),
            last_modified: 0,
            stream: None,
        }
    }

    fn up(aor: &str, b: Binding) -> Update {
        Update {
            aor: aor.into(),
            op: Op::Upsert(b),
        }
    }

    #[test]
    fn upsert_replace_remove_clear() {
        let l = Location::new(2);
        let changed = l.apply([
            up("a@d", binding("sip:a@1.2.3.4", 100)),
            up("a@d", binding("sip:a@1.2.3.5", 100)),
            up("a@d", binding("sip:a@1.2.3.6", 100)),
            up("b@d", binding("sip:b@1.2.3.4", 100)),
        ]);
        assert_eq!(changed, vec![Box::from("a@d"), Box::from("b@d")]);
        assert_eq!(l.lookup("a@d").unwrap().len(), 2, "max_contacts");
        assert_eq!(l.counts(), (2, 3));
        l.apply([up("a@d", binding("sip:a@1.2.3.4", 200))]);
        let a = l.lookup("a@d").unwrap();
        assert_eq!((a.len(), a[0].expires), (2, 200));
        l.apply([Update {
            aor: "a@d".into(),
            op: Op::Remove("sip:a@1.2.3.4".into()),
        }]);
        assert_eq!(l.lookup("a@d").unwrap().len(), 1);
        l.apply([Update {
            aor: "a@d".into(),
            op: Op::Clear,
        }]);
        assert!(l.lookup("a@d").is_none());
        let none = l.apply([Update {
            aor: "x@d".into(),
            op: Op::Clear,
        }]);
        assert!(none.is_empty(), "nothing to clear is no change");
    }

    #[test]
    fn expiry_and_replace() {
        let l = Location::new(5);
        l.replace([
            ("a@d".into(), binding("sip:a@1.1.1.1", 10)),
            ("a@d".into(), binding("sip:a@1.1.1.2", 20)),
            ("b@d".into(), binding("sip:b@1.1.1.1", 10)),
        ]);
        assert_eq!(l.counts(), (2, 3));
        let mut changed = l.expire(10);
        changed.sort();
        assert_eq!(changed, vec![Box::from("a@d"), Box::from("b@d")]);
        assert_eq!(l.counts(), (1, 1));
        assert!(l.expire(15).is_empty());
    }

    #[test]
    fn readers_keep_their_snapshot() {
        let l = Location::new(5);
        l.apply([up("a@d", binding("sip:a@1.1.1.1", 10))]);
        let held = l.lookup("a@d").unwrap();
        l.apply([Update {
            aor: "a@d".into(),
            op: Op::Clear,
        }]);
        assert_eq!(held.len(), 1);
        assert!(l.lookup("a@d").is_none());
    }

    #[test]
    fn target_addresses_follow_the_bindings() {
        let l = Location::new(5);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        l.replace([("a@d".into(), binding("sip:a@10.0.0.1", 10))]);
        assert!(l.is_target(ip("10.0.0.1")));
        l.apply([
            up("b@d", binding("sip:b@10.0.0.1:5070", 10)),
            up("c@d", binding("sip:c@10.0.0.3", 10)),
        ]);
        assert!(l.is_target(ip("10.0.0.3")));
        l.apply([Update {
            aor: "a@d".into(),
            op: Op::Clear,
        }]);
        assert!(l.is_target(ip("10.0.0.1")), "b still goes there");
        l.expire(10);
        assert!(!l.is_target(ip("10.0.0.1")));
        assert!(!l.is_target(ip("10.0.0.3")));
    }

    #[test]
    fn target_prefers_received() {
        let mut b = binding("sip:a@10.0.0.1:5070", 10);
        assert_eq!(b.target(), Some("10.0.0.1:5070".parse().unwrap()));
        b.received = Some("203.0.113.9:40000".parse().unwrap());
        assert_eq!(b.target(), Some("203.0.113.9:40000".parse().unwrap()));
        assert_eq!(binding("sip:a@host.example", 1).target(), None);
    }
}
