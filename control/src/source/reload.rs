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

use dataplane::dispatch::{SharedTable, Table};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::file;

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
            .map_err(|_| "siphon is shutting down".to_string())?;
        rx.await
            .map_err(|_| "siphon is shutting down".to_string())?
    }
}

/// Where a reload reads from.
#[derive(Debug, Clone)]
pub enum ReloadSource {
    /// No source configured: a reload is an error.
    None,
    File(PathBuf),
}

/// Owns the right to publish a new table.
pub struct Reloader {
    source: ReloadSource,
    table: SharedTable,
    rx: mpsc::Receiver<oneshot::Sender<Result<ReloadReport, String>>>,
}

impl Reloader {
    pub fn new(source: ReloadSource, table: SharedTable) -> (Reloader, ReloadHandle) {
        let (tx, rx) = mpsc::channel(16);
        (Reloader { source, table, rx }, ReloadHandle { tx })
    }

    /// Serves reload requests until every handle is dropped.
    pub async fn run(mut self) {
        while let Some(reply) = self.rx.recv().await {
            let outcome = self.reload_now();
            match &outcome {
                Ok(r) => tracing::info!(
                    source = %r.source, sets = r.sets, destinations = r.destinations,
                    added = r.added, removed = r.removed, "dispatcher reloaded"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "dispatcher reload failed; keeping the current table")
                }
            }
            let _ = reply.send(outcome);
        }
    }

    /// Re-reads the source and publishes the result, keeping per-destination
    /// state (active calls, health) for destinations that persist.
    pub fn reload_now(&mut self) -> Result<ReloadReport, String> {
        let old = self.table.load_full();
        let (new, source) = match &self.source {
            ReloadSource::None => return Err("no dispatcher source is configured".into()),
            ReloadSource::File(path) => (
                file::load(path, old.epoch(), Some(&old)).map_err(|e| e.join("\n"))?,
                path.display().to_string(),
            ),
        };
        let report = diff(&old, &new, source);
        self.table.store(std::sync::Arc::new(new));
        Ok(report)
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
        let dir = std::env::temp_dir().join(format!("siphon-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = list(&dir, "1 sip:127.0.0.1:5080\n1 sip:127.0.0.1:5081\n");
        let table = dataplane::dispatch::shared(file::load(&path, Instant::now(), None).unwrap());
        let kept = table
            .load()
            .find(1, "sip:127.0.0.1:5080")
            .unwrap()
            .1
            .stats
            .clone();
        kept.call_started();
        let (reloader, handle) = Reloader::new(ReloadSource::File(path.clone()), table.clone());
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
