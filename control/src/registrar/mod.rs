//! The registrar's control-thread side (issue 13, docs/registrar.md): the
//! only writer of the location table and the owner of the database.
//!
//! - Credentials: `subscriber` is read at start and every
//!   `credentials_refresh_s`, turned into HA1 secrets and published for the
//!   workers. A failed read keeps the last table (a database outage does not
//!   lock anyone out) and is logged and counted.
//! - Location: the workers' updates are drained every
//!   [`PUBLISH_INTERVAL`](dataplane::registrar::PUBLISH_INTERVAL) and
//!   applied (one publish per drain); bindings past their expiry are removed
//!   every second; every AOR that changed is written back to `location`
//!   within `write_back_ms` (usrloc `db_mode` 2: write-back). A failed write
//!   keeps the AORs dirty and retries. At start the table is reloaded from
//!   `location`.

pub mod store;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Result};
use dataplane::registrar::digest::ha1;
use dataplane::registrar::{
    aor_key, Algorithm, CredentialTable, NonceKey, Registrar, RegistrarConfig, Secret,
    PUBLISH_INTERVAL,
};
use tracing::{info, warn};

use crate::config::Config;
use store::{Store, Subscriber};

/// Updates waiting between the workers and the control thread at most.
const UPDATE_QUEUE: usize = 65_536;
/// Live nonces each worker tracks.
const MAX_NONCES: usize = 65_536;
/// How often expired bindings are removed.
const EXPIRE_INTERVAL: Duration = Duration::from_secs(1);

/// What the control thread reports about the registrar's database.
#[derive(Debug, Default)]
pub struct DbStatus {
    /// The last credentials read or location write succeeded.
    pub up: AtomicBool,
    /// Accounts in the published credentials table.
    pub accounts: AtomicU64,
    pub credential_loads: AtomicU64,
    pub credential_failures: AtomicU64,
    /// AORs written back to `location`.
    pub aors_written: AtomicU64,
    pub write_failures: AtomicU64,
    /// AORs changed but not yet written.
    pub dirty: AtomicU64,
}

/// The shared registrar for `cfg`, `None` when `[registrar] db_url` is empty.
pub fn shared(cfg: &Config) -> Result<Option<Arc<Registrar>>> {
    let r = &cfg.registrar;
    if r.db_url.is_empty() {
        return Ok(None);
    }
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).map_err(|e| anyhow!("the OS random source failed: {e}"))?;
    let mut seed = [0u8; 8];
    getrandom::getrandom(&mut seed).map_err(|e| anyhow!("the OS random source failed: {e}"))?;
    let started_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let config = RegistrarConfig {
        domains: r.domain.clone(),
        prefixes: r.prefixes.clone(),
        min_expires: r.min_expires,
        max_expires: r.max_expires,
        default_expires: r.default_expires,
        max_contacts: r.max_contacts as usize,
        max_branches: r.max_branches as usize,
        nat_ping_interval_s: r.nat_ping_interval_s,
        nat_ping_max_misses: r.nat_ping_max_misses,
        // Validation has refused unknown names.
        algorithms: r
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::parse(a.as_bytes()))
            .collect(),
        nonce_ttl_s: r.nonce_expires_s,
        nonce_key: NonceKey::new(key),
        max_nonces: MAX_NONCES,
        ruid_seed: u64::from_le_bytes(seed),
        started: Instant::now(),
        started_unix,
        auth_calls: r.authenticate_calls,
    };
    Ok(Some(Registrar::shared(config, UPDATE_QUEUE)))
}

/// HA1 secrets of the accounts in `rows` for the registrar's realms. An
/// account's realm is its `domain` (or the first registrar domain when the
/// column is empty). `ha1` / `ha1b` are used as stored; `password`, when
/// filled, also yields the SHA-256 secret (and the MD5 ones when their
/// columns are empty, like Kamailio's `calculate_ha1`).
pub fn credential_table(rows: &[Subscriber], domains: &[String]) -> CredentialTable {
    let mut t = CredentialTable::with_capacity(rows.len());
    let first = domains.first().map(String::as_str).unwrap_or("");
    for r in rows {
        let realm = if r.domain.is_empty() {
            first
        } else {
            r.domain.as_str()
        };
        let (u, realm_b, pw) = (
            r.username.as_bytes(),
            realm.as_bytes(),
            r.password.as_bytes(),
        );
        let from_pw = |alg, user: &[u8]| -> Box<str> {
            if pw.is_empty() {
                "".into()
            } else {
                ha1(alg, user, realm_b, pw).into()
            }
        };
        let user_at = format!("{}@{realm}", r.username);
        let secret = Secret {
            ha1: match r.ha1.trim() {
                "" => from_pw(Algorithm::Md5, u),
                h => h.to_ascii_lowercase().into(),
            },
            ha1b: match r.ha1b.trim() {
                "" => from_pw(Algorithm::Md5, user_at.as_bytes()),
                h => h.to_ascii_lowercase().into(),
            },
            ha1_sha256: from_pw(Algorithm::Sha256, u),
        };
        t.insert(aor_key(u, realm), secret);
    }
    t
}

/// The registrar's control-thread task.
pub struct Service {
    registrar: Arc<Registrar>,
    store: Store,
    refresh: Duration,
    write_back: Duration,
    status: Arc<DbStatus>,
    dirty: BTreeSet<Box<str>>,
}

impl Service {
    /// Builds the service and loads credentials and bindings (bounded by the
    /// database timeout; a database that is down leaves both empty, logged,
    /// and the service retries).
    pub async fn start(cfg: &Config, registrar: Arc<Registrar>) -> Result<Service> {
        let r = &cfg.registrar;
        let store = Store::new(
            &r.db_url,
            Duration::from_millis(r.timeout_ms),
            &r.subscriber_table,
            &r.location_table,
            r.max_subscribers,
        )
        .ok_or_else(|| anyhow!("registrar.db_url: unsupported database URL"))?;
        let mut s = Service {
            registrar,
            store,
            refresh: Duration::from_secs(u64::from(r.credentials_refresh_s)),
            write_back: Duration::from_millis(r.write_back_ms),
            status: Arc::new(DbStatus::default()),
            dirty: BTreeSet::new(),
        };
        s.load_credentials().await;
        s.reload_location().await;
        Ok(s)
    }

    pub fn status(&self) -> Arc<DbStatus> {
        self.status.clone()
    }

    fn now_unix(&self) -> u64 {
        self.registrar.config.unix(Instant::now())
    }

    async fn load_credentials(&mut self) {
        let st = &self.status;
        match self.store.subscribers().await {
            Ok(rows) => {
                let table = credential_table(&rows, &self.registrar.config.domains);
                st.accounts.store(table.len() as u64, Ordering::Relaxed);
                st.credential_loads.fetch_add(1, Ordering::Relaxed);
                st.up.store(true, Ordering::Relaxed);
                self.registrar.credentials.store(Arc::new(table));
            }
            Err(e) => {
                st.credential_failures.fetch_add(1, Ordering::Relaxed);
                st.up.store(false, Ordering::Relaxed);
                warn!(error = %e, accounts = st.accounts.load(Ordering::Relaxed),
                    "registrar: reading subscriber failed; the cached credentials stay in use");
            }
        }
    }

    async fn reload_location(&mut self) {
        let now = self.now_unix();
        match self.store.location(now).await {
            Ok(rows) => {
                let n = rows.len();
                let first = self
                    .registrar
                    .config
                    .domains
                    .first()
                    .cloned()
                    .unwrap_or_default();
                self.registrar.location.replace(rows.into_iter().map(|r| {
                    let domain = if r.domain.is_empty() {
                        &first
                    } else {
                        &r.domain
                    };
                    (aor_key(r.username.as_bytes(), domain), r.binding)
                }));
                info!(bindings = n, "registrar: location reloaded");
            }
            Err(e) => {
                warn!(error = %e, "registrar: reading location failed; starting with no bindings")
            }
        }
    }

    /// Applies what the workers queued and publishes it.
    fn drain(&mut self) {
        let q = &self.registrar.updates;
        if q.is_empty() {
            return;
        }
        let updates: Vec<_> = std::iter::from_fn(|| q.pop()).take(q.capacity()).collect();
        for aor in self.registrar.location.apply(updates) {
            self.dirty.insert(aor);
        }
        self.status
            .dirty
            .store(self.dirty.len() as u64, Ordering::Relaxed);
    }

    fn expire(&mut self) {
        for aor in self.registrar.location.expire(self.now_unix()) {
            self.dirty.insert(aor);
        }
        self.status
            .dirty
            .store(self.dirty.len() as u64, Ordering::Relaxed);
    }

    /// Writes every dirty AOR as the table has it now.
    async fn write_back(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let aors: Vec<_> = self
            .dirty
            .iter()
            .map(|a| (a.clone(), self.registrar.location.lookup(a)))
            .collect();
        let st = &self.status;
        match self.store.write(&aors).await {
            Ok(()) => {
                st.aors_written
                    .fetch_add(aors.len() as u64, Ordering::Relaxed);
                st.up.store(true, Ordering::Relaxed);
                for (a, _) in &aors {
                    self.dirty.remove(a);
                }
            }
            Err(e) => {
                st.write_failures.fetch_add(1, Ordering::Relaxed);
                st.up.store(false, Ordering::Relaxed);
                warn!(error = %e, pending = aors.len(), "registrar: writing location failed; will retry");
            }
        }
        st.dirty.store(self.dirty.len() as u64, Ordering::Relaxed);
    }

    /// Runs until `shutdown` resolves, then writes what is pending once.
    pub async fn run(mut self, shutdown: impl Future) {
        let mut publish = tokio::time::interval(PUBLISH_INTERVAL);
        let mut expire = tokio::time::interval(EXPIRE_INTERVAL);
        let mut write = tokio::time::interval(self.write_back);
        let mut refresh = tokio::time::interval(self.refresh);
        for t in [&mut publish, &mut expire, &mut write, &mut refresh] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // The first tick of an interval is immediate; credentials were just read.
        refresh.tick().await;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = publish.tick() => self.drain(),
                _ = expire.tick() => self.expire(),
                _ = write.tick() => self.write_back().await,
                _ = refresh.tick() => self.load_credentials().await,
            }
        }
        self.drain();
        self.write_back().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_from_columns_or_password() {
        let rows = vec![
            Subscriber {
                username: "6001".into(),
                domain: "example.com".into(),
                password: "pw".into(),
                ha1: String::new(),
                ha1b: String::new(),
            },
            Subscriber {
                username: "6002".into(),
                domain: "".into(),
                password: String::new(),
                ha1: "ABCDEF".into(),
                ha1b: "012345".into(),
            },
        ];
        let t = credential_table(&rows, &["example.com".into()]);
        let a = &t["6001@example.com"];
        assert_eq!(&*a.ha1, ha1(Algorithm::Md5, b"6001", b"example.com", b"pw"));
        assert_eq!(
            &*a.ha1b,
            ha1(Algorithm::Md5, b"6001@example.com", b"example.com", b"pw")
        );
        assert_eq!(
            &*a.ha1_sha256,
            ha1(Algorithm::Sha256, b"6001", b"example.com", b"pw")
        );
        let b = &t["6002@example.com"];
        assert_eq!(
            (&*b.ha1, &*b.ha1b, &*b.ha1_sha256),
            ("abcdef", "012345", "")
        );
    }
}
