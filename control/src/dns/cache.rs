//! The answer cache (pure: every call is fed `now`). Positive answers live for
//! their bounded TTL, negative ones (the name or record does not exist) for
//! `negative_ttl_s`. An entry is *due* for refresh at three quarters of its
//! life, so a resolver that asks again then replaces it before it expires,
//! and a failed refresh keeps serving it until it does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::rfc3263::{refresh_after, Naptr, Srv};

/// Record types sipvane asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Naptr,
    Srv,
    /// A and AAAA together.
    Ip,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Naptr => "NAPTR",
            Kind::Srv => "SRV",
            Kind::Ip => "A/AAAA",
        }
    }
}

/// The records of one answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Records {
    Naptr(Vec<Naptr>),
    Srv(Vec<Srv>),
    Ip(Vec<IpAddr>),
}

/// One cached answer; `records: None` is a negative answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub records: Option<Records>,
    pub expires: Instant,
    pub refresh: Instant,
}

/// What the cache holds for a question at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached<'a> {
    /// Valid and not yet due for refresh.
    Fresh(&'a Entry),
    /// Valid until `expires`, but due for refresh.
    Due(&'a Entry),
    /// Nothing, or expired.
    Missing,
}

/// Bounded cache keyed by (record type, lower-case name).
#[derive(Debug)]
pub struct Cache {
    map: HashMap<(Kind, String), Entry>,
    max_entries: usize,
}

impl Cache {
    /// A cache that holds at most `max_entries` answers (at least one).
    pub fn new(max_entries: usize) -> Cache {
        Cache {
            map: HashMap::new(),
            max_entries: max_entries.max(1),
        }
    }

    pub fn get(&self, kind: Kind, name: &str, now: Instant) -> Cached<'_> {
        match self.map.get(&(kind, name.to_ascii_lowercase())) {
            Some(e) if now >= e.expires => Cached::Missing,
            Some(e) if now >= e.refresh => Cached::Due(e),
            Some(e) => Cached::Fresh(e),
            None => Cached::Missing,
        }
    }

    /// Stores an answer valid for `ttl` from `now` and returns it. When the
    /// cache is full, expired entries go first, then those expiring soonest.
    pub fn insert(
        &mut self,
        kind: Kind,
        name: &str,
        records: Option<Records>,
        ttl: Duration,
        now: Instant,
    ) -> Entry {
        let key = (kind, name.to_ascii_lowercase());
        if !self.map.contains_key(&key) && self.map.len() >= self.max_entries {
            self.map.retain(|_, e| e.expires > now);
            while self.map.len() >= self.max_entries {
                let soonest = self
                    .map
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone());
                match soonest {
                    Some(k) => self.map.remove(&k),
                    None => break,
                };
            }
        }
        let entry = Entry {
            records,
            expires: now + ttl,
            refresh: now + refresh_after(ttl),
        };
        self.map.insert(key, entry.clone());
        entry
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(s: &str) -> Option<Records> {
        Some(Records::Ip(vec![s.parse().unwrap()]))
    }

    #[test]
    fn entries_are_fresh_then_due_then_gone() {
        let t0 = Instant::now();
        let mut c = Cache::new(8);
        let ttl = Duration::from_secs(60);
        c.insert(Kind::Ip, "PBX.example", ips("10.0.0.1"), ttl, t0);
        assert!(matches!(
            c.get(Kind::Ip, "pbx.example", t0),
            Cached::Fresh(_)
        ));
        assert_eq!(c.get(Kind::Srv, "pbx.example", t0), Cached::Missing);
        let due = t0 + Duration::from_secs(45);
        assert!(
            matches!(c.get(Kind::Ip, "pbx.example", due), Cached::Due(e) if e.records == ips("10.0.0.1"))
        );
        assert_eq!(c.get(Kind::Ip, "pbx.example", t0 + ttl), Cached::Missing);
        // A refresh replaces the answer.
        c.insert(Kind::Ip, "pbx.example", ips("10.0.0.2"), ttl, due);
        assert!(
            matches!(c.get(Kind::Ip, "pbx.example", t0 + ttl), Cached::Fresh(e) if e.records == ips("10.0.0.2"))
        );
    }

    #[test]
    fn negative_answers_are_cached() {
        let t0 = Instant::now();
        let mut c = Cache::new(8);
        c.insert(Kind::Srv, "_sip._udp.x", None, Duration::from_secs(30), t0);
        assert!(
            matches!(c.get(Kind::Srv, "_sip._udp.x", t0), Cached::Fresh(e) if e.records.is_none())
        );
    }

    #[test]
    fn a_full_cache_drops_expired_then_soonest_to_expire() {
        let t0 = Instant::now();
        let mut c = Cache::new(2);
        let s = Duration::from_secs;
        c.insert(Kind::Ip, "a", ips("10.0.0.1"), s(10), t0);
        c.insert(Kind::Ip, "b", ips("10.0.0.2"), s(100), t0);
        c.insert(Kind::Ip, "c", ips("10.0.0.3"), s(50), t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(Kind::Ip, "a", t0), Cached::Missing);
        c.insert(Kind::Ip, "d", ips("10.0.0.4"), s(500), t0 + s(60));
        assert_eq!(c.len(), 2, "c expired and made room");
        assert!(matches!(c.get(Kind::Ip, "b", t0 + s(60)), Cached::Fresh(_)));
        // Replacing an existing key never evicts another.
        c.insert(Kind::Ip, "d", ips("10.0.0.5"), s(500), t0 + s(60));
        assert_eq!(c.len(), 2);
    }
}
