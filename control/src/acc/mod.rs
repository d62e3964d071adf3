//! Accounting (issue 14): Kamailio's `acc`, `missed_calls` and `acc_cdrs`
//! rows from the workers' call events, written to PostgreSQL or MariaDB by
//! the control thread, spooled to disk while the database is away.
//!
//! - [`row`]: events → rows (pure; what is written and when).
//! - [`journal`]: the on-disk spool (codec and file; pure of the database).
//! - [`writer`]: batched transactions, the spool's replay and the
//!   exactly-once rule (see its module docs).
//!
//! The workers' events reach [`Feed::on_event`] through the events bridge
//! (`events::bridge`), which drains the workers' queues for both Redis and
//! accounting. What is written, exactly, is in docs/accounting.md.

pub mod journal;
pub mod row;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use dataplane::proxy::events::CallEvent;

use crate::config::AccConfig;
use crate::events::WallClock;
pub use row::{BuildConfig, Builder, Row, Source, Table, Value};
pub use writer::{AccError, AccStats, RowQueue, TableNames, Writer, WriterConfig};

/// Name of the spool file in `spool_dir`.
pub const SPOOL_FILE: &str = "acc.spool";

/// Rows waiting between the builder and the writer at most.
const ROW_QUEUE: usize = 65_536;

/// The control-thread side of the events: builds rows and queues them for
/// the [`Writer`].
pub struct Feed {
    builder: Builder,
    queue: Arc<RowQueue>,
    scratch: Vec<Row>,
}

impl Feed {
    pub fn new(builder: Builder, queue: Arc<RowQueue>) -> Feed {
        Feed {
            builder,
            queue,
            scratch: Vec::new(),
        }
    }

    /// Builds the rows of `ev` and queues them.
    pub fn on_event(&mut self, ev: &CallEvent) {
        self.builder.on_event(ev, &mut self.scratch);
        for row in self.scratch.drain(..) {
            self.queue.push(row);
        }
    }

    /// Forgets calls whose last row never came (see [`Builder::prune`]).
    pub fn prune(&mut self) {
        self.builder.prune(std::time::Instant::now());
    }
}

fn sources(m: &std::collections::BTreeMap<String, String>) -> Vec<(String, Source)> {
    // Validation has rejected unknown sources; anything left is skipped.
    m.iter()
        .filter_map(|(c, s)| Some((c.clone(), Source::parse(s)?)))
        .collect()
}

/// The builder's settings from `[acc]`.
pub fn build_config(c: &AccConfig) -> BuildConfig {
    BuildConfig {
        log_failed: c.log_failed,
        cdrs: c.cdrs,
        extra: sources(&c.extra),
        cdr_extra: sources(&c.cdr_extra),
        max_calls: 1 << 20,
        call_ttl: Duration::from_secs(24 * 3600),
    }
}

/// The writer's settings from `[acc]`.
pub fn writer_config(c: &AccConfig) -> WriterConfig {
    WriterConfig {
        db_url: c.db_url.clone(),
        tables: TableNames {
            acc: c.acc_table.clone(),
            missed: c.missed_table.clone(),
            cdrs: c.cdr_table.clone(),
        },
        spool_table: c.spool_table.clone(),
        batch: c.batch as usize,
        buffer: c.buffer as usize,
        flush_interval: Duration::from_millis(c.flush_interval_ms),
        io_timeout: Duration::from_millis(c.timeout_ms),
        spool_path: c.spool_dir.join(SPOOL_FILE),
        spool_max_bytes: c.spool_max_bytes,
        ..WriterConfig::default()
    }
}

/// A feed and its writer for `[acc]`, sharing one row queue; `None` when
/// accounting is off.
pub fn start(c: &AccConfig, clock: WallClock) -> Result<Option<(Feed, Writer)>, AccError> {
    if c.db_url.is_empty() {
        return Ok(None);
    }
    let queue = Arc::new(RowQueue::new(ROW_QUEUE));
    let writer = Writer::new(writer_config(c), queue.clone())?;
    let feed = Feed::new(Builder::new(build_config(c), clock), queue);
    Ok(Some((feed, writer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_acc_section() {
        let mut c = AccConfig {
            db_url: "mysql://u:p@127.0.0.1/kamailio".into(),
            spool_dir: "/tmp/x".into(),
            batch: 50,
            ..AccConfig::default()
        };
        c.extra.insert("src_user".into(), "$fU".into());
        let w = writer_config(&c);
        assert_eq!(w.spool_path, std::path::PathBuf::from("/tmp/x/acc.spool"));
        assert_eq!((w.batch, w.tables.missed.as_str()), (50, "missed_calls"));
        let b = build_config(&c);
        assert_eq!(b.extra, vec![("src_user".to_string(), Source::FromUser)]);
        assert!(start(&AccConfig::default(), WallClock::new())
            .unwrap()
            .is_none());
    }
}
