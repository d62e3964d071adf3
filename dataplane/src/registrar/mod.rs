//! The registrar role (docs/registrar.md): digest authentication against
//! Kamailio's `subscriber` table, REGISTER processing, the location table
//! every worker reads, and the lookup of registered users.
//!
//! - [`digest`]: credentials, responses and challenges (RFC 7616 / 8760).
//! - [`nonce`]: stateless HMAC nonces and per-worker nonce-count tracking.
//! - [`auth`]: the check a worker runs on a request, with its outcome.
//! - [`answered`]: answers to authenticated REGISTERs, for their retransmissions.
//! - [`register`]: what a REGISTER changes and what its 200 lists (pure).
//! - [`path`]: Path (RFC 3327): the route set of bindings behind an edge proxy.
//! - [`location`]: the shared table (one writer, snapshot readers).
//!
//! The control thread owns the database: it fills [`Registrar::credentials`]
//! from `subscriber` (kept across database outages), applies the workers'
//! [`Registrar::updates`] to [`Registrar::location`], expires bindings and
//! writes them back to `location`.

pub mod answered;
pub mod auth;
pub mod digest;
pub mod location;
pub mod natping;
pub mod nonce;
pub mod path;
pub mod register;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;

pub use digest::Algorithm;
pub use location::{Binding, Bindings, Location, Op, Stream, Update};
pub use nonce::NonceKey;

/// The registrar's settings, validated by the control plane.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// Domains users register in; the first is the realm for requests that
    /// name none of them (e.g. an IP address).
    pub domains: Vec<String>,
    /// Request-URI users starting with one of these are looked up in location.
    pub prefixes: Vec<String>,
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_contacts: usize,
    /// Branches a request to a registered user is forked to at most (its
    /// best bindings; Kamailio tm's `max_branches`).
    pub max_branches: usize,
    /// Seconds between OPTIONS pings of NATed bindings; 0: none.
    pub nat_ping_interval_s: u32,
    /// Pings in a row a NATed binding may leave unanswered before it is
    /// removed.
    pub nat_ping_max_misses: u32,
    /// Offered in challenges, in this order.
    pub algorithms: Vec<Algorithm>,
    /// Seconds a nonce may be used.
    pub nonce_ttl_s: u32,
    pub nonce_key: NonceKey,
    /// Live nonces each worker tracks for replay protection.
    pub max_nonces: usize,
    /// Seeds the `ruid` of new bindings (per process).
    pub ruid_seed: u64,
    /// Wall-clock base: `started` was Unix time `started_unix`. Bindings
    /// expire in Unix seconds (as `location.expires` does); the core
    /// derives them from the `now` it is given.
    pub started: Instant,
    pub started_unix: u64,
    /// Challenge INVITEs (and other initial requests) from untrusted sources
    /// with 407 and require the From user to be the authenticated one.
    pub auth_calls: bool,
}

impl RegistrarConfig {
    /// Seconds since `started` (nonce time).
    pub fn secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.started).as_secs()).unwrap_or(u32::MAX)
    }

    /// Unix seconds at `now`.
    pub fn unix(&self, now: Instant) -> u64 {
        self.started_unix + now.saturating_duration_since(self.started).as_secs()
    }

    /// The registrar domain a URI host stands for: itself when configured,
    /// the first domain when `local` (an address of this proxy), else none.
    pub fn domain_of(&self, host: &[u8], local: bool) -> Option<&str> {
        let i = self.domain_index(host, local)?;
        self.domains.get(i).map(String::as_str)
    }

    /// [`Self::domain_of`] as an index into `domains`.
    pub fn domain_index(&self, host: &[u8], local: bool) -> Option<usize> {
        self.domains
            .iter()
            .position(|d| host.eq_ignore_ascii_case(d.as_bytes()))
            .or_else(|| (local && !self.domains.is_empty()).then_some(0))
    }

    /// Whether a Request-URI user is one looked up in location.
    pub fn is_local_user(&self, user: &[u8]) -> bool {
        self.prefixes.iter().any(|p| user.starts_with(p.as_bytes()))
    }
}

/// The secrets of one account, as hex HA1 values; empty: not available.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secret {
    /// MD5(user:realm:password): `subscriber.ha1`, or computed from `password`.
    pub ha1: Box<str>,
    /// MD5(user@domain:realm:password): `subscriber.ha1b`, for clients whose
    /// digest username carries the domain.
    pub ha1b: Box<str>,
    /// SHA-256(user:realm:password), only computable from `password`.
    pub ha1_sha256: Box<str>,
}

/// Accounts by `user@domain` (domain lowercased).
pub type CredentialTable = HashMap<Box<str>, Secret>;

/// `user@domain` as the tables key it.
pub fn aor_key(user: &[u8], domain: &str) -> Box<str> {
    let mut s = String::with_capacity(user.len() + 1 + domain.len());
    s.push_str(&String::from_utf8_lossy(user));
    s.push('@');
    s.push_str(&domain.to_ascii_lowercase());
    s.into()
}

/// Counters of the registrar, shared by the workers and the control thread.
#[derive(Debug, Default)]
pub struct RegistrarStats {
    /// REGISTERs answered 200.
    pub registers_ok: AtomicU64,
    /// Requests challenged (401 / 407).
    pub challenges: AtomicU64,
    /// Credentials refused (403: wrong password, unknown user, user mismatch).
    pub auth_failures: AtomicU64,
    /// REGISTERs refused for another reason (400, 423, 503 too many contacts).
    pub registers_refused: AtomicU64,
    /// Updates lost because the queue to the control thread was full.
    pub updates_dropped: AtomicU64,
    /// Requests to registered users sent to a binding.
    pub lookups_found: AtomicU64,
    /// Requests to `prefixes` users with no live binding (404).
    pub lookups_missing: AtomicU64,
    /// OPTIONS keep-alives sent to NATed bindings.
    pub nat_pings: AtomicU64,
    /// NATed bindings removed for leaving their pings unanswered.
    pub nat_ping_removals: AtomicU64,
}

impl RegistrarStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Everything the registrar shares between workers and the control thread.
#[derive(Debug)]
pub struct Registrar {
    pub config: RegistrarConfig,
    pub location: Location,
    pub credentials: ArcSwap<CredentialTable>,
    /// Workers → control thread.
    pub updates: ArrayQueue<Update>,
    pub stats: RegistrarStats,
}

impl Registrar {
    pub fn new(config: RegistrarConfig, queue: usize) -> Registrar {
        Registrar {
            location: Location::new(config.max_contacts),
            config,
            credentials: ArcSwap::default(),
            updates: ArrayQueue::new(queue.max(1)),
            stats: RegistrarStats::default(),
        }
    }

    pub fn shared(config: RegistrarConfig, queue: usize) -> Arc<Registrar> {
        Arc::new(Registrar::new(config, queue))
    }

    /// Live bindings of an AOR at `now`, best first (highest q, then the
    /// most recently registered).
    pub fn live_bindings(&self, aor: &str, now: Instant) -> Vec<Binding> {
        let now_unix = self.config.unix(now);
        let mut v: Vec<Binding> = self
            .location
            .lookup(aor)
            .map(|b| b.iter().filter(|b| b.expires > now_unix).cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| {
            b.q.cmp(&a.q)
                .then_with(|| b.last_modified.cmp(&a.last_modified))
        });
        v
    }

    /// Queues updates for the control thread; false (and counted) when the
    /// queue has no room for all of them (then none is queued, unless
    /// another worker filled it in between).
    pub fn submit(&self, updates: Vec<Update>) -> bool {
        if self.updates.capacity() - self.updates.len() < updates.len() {
            bump(&self.stats.updates_dropped);
            return false;
        }
        for u in updates {
            if self.updates.push(u).is_err() {
                bump(&self.stats.updates_dropped);
                return false;
            }
        }
        true
    }
}

/// A default configuration for tests: domain `example.com`, prefixes 6/7/8.
pub fn test_config(started: Instant) -> RegistrarConfig {
    RegistrarConfig {
        domains: vec!["example.com".into()],
        prefixes: vec!["6".into(), "7".into(), "8".into()],
        min_expires: 60,
        max_expires: 3600,
        default_expires: 3600,
        max_contacts: 3,
        max_branches: 4,
        nat_ping_interval_s: 0,
        nat_ping_max_misses: 3,
        algorithms: vec![Algorithm::Md5],
        nonce_ttl_s: 300,
        nonce_key: NonceKey::new([9; 32]),
        max_nonces: 1024,
        ruid_seed: 1,
        started,
        started_unix: 1_800_000_000,
        auth_calls: false,
    }
}

/// How long a REGISTER's own changes may take to be visible to other
/// workers at most, with the control thread's publish interval.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(5);
