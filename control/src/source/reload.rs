//! Hot reload of the destination table: the one place that re-reads the
//! dispatcher source and swaps a new table in.
//!
//! The control thread owns a [`Reloader`]; anything that wants a reload (the
//! management API, the periodic resync, a signal) asks through a cloneable
//! [`ReloadHandle`] and gets a [`ReloadReport`] back. Reloads are serialised on
//! the control thread, so two requests never build tables from each other's
//! half-published state.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::dispatch::list::{DestDef, ListError};
use dataplane::dispatch::{SharedTable, Table};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::db::{DbFetch, Resync, ResyncOutcome, RowDef};
use super::file;
use super::resolve::{self, Expanded};
use crate::config::{DispatcherConfig, DispatcherSource};
use crate::dns::Resolver;

/// How soon a failed re-resolution is tried again (the table in service is
/// kept meanwhile).
const RE_RESOLVE_RETRY: Duration = Duration::from_secs(5);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Where the destinations came from (a path or a redacted database URL).
    pub source: String,
    pub sets: usize,
    pub destinations: usize,
    /// Destinations (set, URI) present now and not before.
    pub added: usize,
    /// Destinations present before and gone now; calls already routed to them
    /// keep their address and finish.
    pub removed: usize,
}

/// Asks the control thread for a reload. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<oneshot::Sender<Result<ReloadReport, String>>>,
}

impl ReloadHandle {
    /// Reloads now and waits for the outcome. On error the table in service
    /// is unchanged and the message says why (one line per problem).
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .await
            .map_err(|_| "sipvane is shutting down".to_string())?;
        rx.await
            .map_err(|_| "sipvane is shutting down".to_string())?
    }
}

/// Where a reload reads from.
pub enum ReloadSource {
    /// No source configured: a reload is an error.
    None,
    /// A `dispatcher.list` file; re-read on demand, and every `interval` when
    /// one is set (published only when the text changed).
    File {
        path: PathBuf,
        interval: Option<Duration>,
    },
    /// Kamailio's `dispatcher` table; re-read on demand and by the resync
    /// schedule (`reload_interval`, backoff during an outage).
    Database(Box<Resync<DbFetch>>),
}

/// Owns the right to publish a new table.
pub struct Reloader {
    source: ReloadSource,
    table: SharedTable,
    rx: mpsc::Receiver<oneshot::Sender<Result<ReloadReport, String>>>,
    /// The file text last looked at by the periodic check.
    last_text: Option<String>,
    dns: Arc<Resolver>,
    /// The definitions in service, as read and as resolved; re-resolved
    /// when `resolved.refresh` comes.
    defs: Vec<DestDef>,
    resolved: Expanded,
    /// TLS certificates re-read on every requested reload (SIGHUP, `ctl reload`).
    tls: Option<TlsReload>,
}

/// Where the TLS listener's certificate and key come from, and the server
/// configuration the workers' new handshakes use.
pub struct TlsReload {
    pub server: dataplane::transport::tls::TlsServer,
    /// `[tls]` as loaded at start (the files are re-read, not the configuration).
    pub config: crate::config::TlsConfig,
}

impl TlsReload {
    /// Re-reads the files; new handshakes use them from now on, established
    /// connections keep theirs. On error the certificate in service stays.
    fn reload(&self) {
        match self.config.load() {
            Ok(cfg) => {
                self.server.replace(cfg);
                tracing::info!(certificate = %self.config.certificate, "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded, the previous one stays");
            }
        }
    }
}

enum Wake {
    Request(Option<oneshot::Sender<Result<ReloadReport, String>>>),
    Changed(Result<Vec<DestDef>, String>),
    Refresh,
}

/// What the start-up load produced (see [`initial_load`]).
pub struct Loaded {
    pub table: Table,
    pub source: ReloadSource,
    /// The definitions as read and as resolved.
    pub defs: Vec<DestDef>,
    pub resolved: Expanded,
}

impl Reloader {
    /// The reloader of `table`, which was built from `defs` resolved as
    /// `resolved` (names are resolved again before their answers expire).
    pub fn new(
        source: ReloadSource,
        table: SharedTable,
        dns: Arc<Resolver>,
        defs: Vec<DestDef>,
        resolved: Expanded,
    ) -> (Reloader, ReloadHandle) {
        let (tx, rx) = mpsc::channel(16);
        let reloader = Reloader {
            source,
            table,
            rx,
            last_text: None,
            dns,
            defs,
            resolved,
            tls: None,
        };
        (reloader, ReloadHandle { tx })
    }

    /// Also reloads TLS certificates on every requested reload.
    pub fn with_tls(mut self, tls: Option<TlsReload>) -> Self {
        self.tls = tls;
        self
    }

    /// Serves reload requests and the periodic schedule until every handle is
    /// dropped.
    pub async fn run(mut self) {
        loop {
            let refresh = self.resolved.refresh;
            let wake = tokio::select! {
                r = self.rx.recv() => Wake::Request(r),
                c = periodic_change(&mut self.source, &mut self.last_text) => Wake::Changed(c),
                _ = sleep_until(refresh) => Wake::Refresh,
            };
            match wake {
                Wake::Request(None) => break,
                Wake::Request(Some(reply)) => {
                    if let Some(tls) = &self.tls {
                        tls.reload();
                    }
                    let outcome = self.reload_now().await;
                    log_outcome(&outcome);
                    let _ = reply.send(outcome);
                }
                Wake::Changed(Ok(defs)) => {
                    let outcome = self.publish(&defs).await;
                    log_outcome(&outcome);
                }
                Wake::Refresh => self.re_resolve().await,
                Wake::Changed(Err(e)) => {
                    log_outcome(&Err(e));
                }
            }
        }
    }

    /// Re-reads the source and publishes the result, keeping per-destination
    /// state (active calls, health) for destinations that persist.
    pub async fn reload_now(&mut self) -> Result<ReloadReport, String> {
        let defs = match &mut self.source {
            ReloadSource::None => return Err("no dispatcher source is configured".into()),
            ReloadSource::File { path, .. } => {
                let text = file::read(path)?;
                self.last_text = Some(text.clone());
                file::parse(path, &text)?
            }
            ReloadSource::Database(resync) => match resync.poll().await {
                ResyncOutcome::Changed(_) | ResyncOutcome::Unchanged => {
                    row_defs_to_dest_defs(resync.current())?
                }
                ResyncOutcome::Failed { error, .. } => return Err(error),
            },
        };
        self.publish(&defs).await
    }

    /// Resolves `defs`, builds the successor table and publishes it.
    async fn publish(&mut self, defs: &[DestDef]) -> Result<ReloadReport, String> {
        let resolved = resolve::expand(defs, &self.dns)
            .await
            .map_err(|e| self.problems(&e))?;
        let report = self.publish_resolved(&resolved)?;
        self.defs = defs.to_vec();
        self.resolved = resolved;
        Ok(report)
    }

    fn publish_resolved(&self, resolved: &Expanded) -> Result<ReloadReport, String> {
        let old = self.table.load_full();
        let new =
            resolve::build(resolved, old.epoch(), Some(&old)).map_err(|e| self.problems(&e))?;
        let report = diff(&old, &new, self.describe());
        self.table.store(Arc::new(new));
        Ok(report)
    }

    /// Resolves the definitions in service again (their answers are due for
    /// refresh) and republishes the table when an answer changed, as a reload
    /// does: destinations that persist keep their state and calls. A name
    /// that no longer resolves keeps the table in service.
    async fn re_resolve(&mut self) {
        let resolved = match resolve::expand(&self.defs, &self.dns).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    error = %self.problems(&e),
                    "dispatcher destinations did not resolve; keeping the current table"
                );
                self.resolved.refresh = Some(Instant::now() + RE_RESOLVE_RETRY);
                return;
            }
        };
        if resolved.defs == self.resolved.defs && resolved.addrs == self.resolved.addrs {
            self.resolved.refresh = resolved.refresh;
            return;
        }
        match self.publish_resolved(&resolved) {
            Ok(r) => tracing::info!(
                source = %r.source, sets = r.sets, destinations = r.destinations,
                added = r.added, removed = r.removed,
                "dispatcher destinations re-resolved: DNS answers changed"
            ),
            Err(e) => tracing::warn!(error = %e, "re-resolved table not published"),
        }
        self.resolved = resolved;
    }

    /// Build problems, one line each, named as the source names them.
    fn problems(&self, errs: &[ListError]) -> String {
        errs.iter()
            .map(|e| match &self.source {
                ReloadSource::Database(_) => format!(
                    "{}: dispatcher row id={}: {}",
                    self.describe(),
                    e.line,
                    e.message
                ),
                _ => format!("{}:{}: {}", self.describe(), e.line, e.message),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn describe(&self) -> String {
        match &self.source {
            ReloadSource::None => "none".into(),
            ReloadSource::File { path, .. } => path.display().to_string(),
            ReloadSource::Database(r) => r.describe(),
        }
    }
}

/// Loads the destinations at start-up and returns the table with the source
/// that reloads it. A database that is down falls back to the snapshot (see
/// [`super::db::initial_load`]); every error is one message for the operator.
pub async fn initial_load(
    cfg: &DispatcherConfig,
    epoch: Instant,
    dns: &Resolver,
) -> Result<Loaded, String> {
    let source = cfg.resolved_source()?;
    let url = match source {
        None => {
            return Ok(Loaded {
                table: Table::empty(epoch),
                source: ReloadSource::None,
                defs: Vec::new(),
                resolved: Expanded::default(),
            })
        }
        Some(DispatcherSource::File(path)) => {
            let (table, defs, resolved) = file::load(&path, epoch, dns)
                .await
                .map_err(|e| e.join("\n"))?;
            let interval = cfg.reload_interval();
            return Ok(Loaded {
                table,
                source: ReloadSource::File { path, interval },
                defs,
                resolved,
            });
        }
        Some(DispatcherSource::Postgres(url) | DispatcherSource::Mysql(url)) => url,
    };
    let timeout = Duration::from_millis(cfg.db_timeout_ms);
    let snapshot = (!cfg.snapshot_path.is_empty()).then(|| PathBuf::from(&cfg.snapshot_path));
    let (rows, origin) =
        super::db::initial_load(&url, &cfg.db_table, snapshot.as_deref(), timeout).await?;
    let defs = row_defs_to_dest_defs(&rows)?;
    let describe = super::db::describe_source(&url, &cfg.db_table);
    let problems = |errs: Vec<ListError>| {
        errs.iter()
            .map(|e| format!("{describe}: dispatcher row id={}: {}", e.line, e.message))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let resolved = resolve::expand(&defs, dns).await.map_err(problems)?;
    let table = resolve::build(&resolved, epoch, None).map_err(problems)?;
    let fetch = DbFetch {
        url,
        table: cfg.db_table.clone(),
        timeout,
    };
    let mut resync = Resync::new(
        fetch,
        rows,
        origin,
        cfg.reload_interval().unwrap_or(Duration::ZERO),
    );
    if let Some(path) = snapshot {
        resync = resync.with_snapshot(path);
    }
    tracing::info!(source = %describe, ?origin, destinations = defs.len(), "dispatcher loaded");
    Ok(Loaded {
        table,
        source: ReloadSource::Database(Box::new(resync)),
        defs,
        resolved,
    })
}

fn log_outcome(outcome: &Result<ReloadReport, String>) {
    match outcome {
        Ok(r) => tracing::info!(
            source = %r.source, sets = r.sets, destinations = r.destinations,
            added = r.added, removed = r.removed, "dispatcher reloaded"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "dispatcher reload failed; keeping the current table")
        }
    }
}

/// Waits for the next scheduled change of the source. Pending forever when
/// nothing is scheduled.
async fn periodic_change(
    source: &mut ReloadSource,
    last_text: &mut Option<String>,
) -> Result<Vec<DestDef>, String> {
    match source {
        ReloadSource::File {
            path,
            interval: Some(every),
        } => loop {
            tokio::time::sleep(*every).await;
            let text = file::read(path)?;
            if last_text.as_deref() == Some(text.as_str()) {
                continue;
            }
            // Remembered even when it does not parse, so a broken file is
            // reported once rather than every interval.
            *last_text = Some(text.clone());
            return file::parse(path, &text);
        },
        ReloadSource::Database(resync) => {
            let rows = resync.next_change().await;
            row_defs_to_dest_defs(&rows)
        }
        ReloadSource::None | ReloadSource::File { interval: None, .. } => {
            std::future::pending().await
        }
    }
}

/// Waits until `at`; forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Database rows (already validated by the source) as dispatcher definitions.
pub fn row_defs_to_dest_defs(rows: &[RowDef]) -> Result<Vec<DestDef>, String> {
    let mut errors = Vec::new();
    let defs: Vec<DestDef> = rows
        .iter()
        .filter_map(|r| {
            DestDef::from_row(
                usize::try_from(r.row_id).unwrap_or(0),
                i64::from(r.set),
                &r.uri,
                i64::from(r.flags),
                i64::from(r.priority),
                &r.attrs_raw,
                &r.description,
            )
            .map_err(|e| errors.push(format!("dispatcher row id={}: {}", r.row_id, e.message)))
            .ok()
        })
        .collect();
    if errors.is_empty() {
        Ok(defs)
    } else {
        Err(errors.join("\n"))
    }
}

fn diff(old: &Table, new: &Table, source: String) -> ReloadReport {
    let keys = |t: &Table| -> HashSet<(u32, String)> {
        t.iter().map(|(_, d)| (d.set, d.uri.clone())).collect()
    };
    let (before, after) = (keys(old), keys(new));
    ReloadReport {
        source,
        sets: new.sets().len(),
        destinations: new.iter().count(),
        added: after.difference(&before).count(),
        removed: before.difference(&after).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn list(dir: &std::path::Path, text: &str) -> PathBuf {
        let p = dir.join("dispatcher.list");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[tokio::test]
    async fn reload_swaps_and_reports_and_keeps_the_table_on_error() {
        let dir = std::env::temp_dir().join(format!("sipvane-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = list(&dir, "1 sip:127.0.0.1:5080\n1 sip:127.0.0.1:5081\n");
        // IP literals only: the resolver never sends a query.
        let dns = Arc::new(Resolver::new(&crate::dns::tests::no_server()).unwrap());
        let (table, defs, resolved) = file::load(&path, Instant::now(), &dns).await.unwrap();
        let table = dataplane::dispatch::shared(table);
        let kept = table
            .load()
            .find(1, "sip:127.0.0.1:5080")
            .unwrap()
            .1
            .stats
            .clone();
        kept.call_started();
        let (reloader, handle) = Reloader::new(
            ReloadSource::File {
                path: path.clone(),
                interval: None,
            },
            table.clone(),
            dns,
            defs,
            resolved,
        );
        let task = tokio::spawn(reloader.run());

        list(&dir, "1 sip:127.0.0.1:5080\n2 sip:127.0.0.1:5082\n");
        let r = handle.reload().await.unwrap();
        assert_eq!((r.sets, r.destinations, r.added, r.removed), (2, 2, 1, 1));
        let now = table.load();
        let (_, d) = now.find(1, "sip:127.0.0.1:5080").unwrap();
        assert_eq!(
            d.stats.active_calls(),
            1,
            "a persisting destination keeps its state"
        );

        list(&dir, "1 sip:127.0.0.1:5080 nonsense\n");
        let e = handle.reload().await.unwrap_err();
        assert!(e.contains("dispatcher.list:1:"), "{e}");
        assert_eq!(
            table.load().iter().count(),
            2,
            "a failed reload keeps the table"
        );

        drop(handle);
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }
}
