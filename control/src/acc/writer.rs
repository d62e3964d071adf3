//! The I/O half: rows from the [`RowQueue`] into PostgreSQL or MariaDB in
//! batched transactions, through the on-disk [`Journal`] while the database
//! is unavailable.
//!
//! # Nothing twice, nothing lost
//!
//! Kamailio's `acc` tables have no column a retried INSERT could be checked
//! against, and a commit whose acknowledgement is lost (the connection drops
//! during COMMIT, the timeout fires) leaves the writer not knowing whether
//! its rows are in. So every row gets a position when it is built: a
//! `stream` (random per process start) and a gapless `seq` within it. Every
//! transaction that inserts rows also records, in one small table of
//! sipvane's own (`spool_table`, default `sipvane_acc_spool`:
//! `stream BIGINT PRIMARY KEY, seq BIGINT`), the next `seq` of each stream it
//! wrote — in the same transaction, so the rows and the mark commit or vanish
//! together. Rows whose fate is unknown go to the journal, and a replayed row
//! whose `seq` is below its stream's mark is skipped (counted as
//! `already_written`). Restarting sipvane mid-replay, killing it between a
//! commit and the journal update, or losing a COMMIT acknowledgement
//! therefore writes nothing twice; the journal is appended before rows leave
//! memory on shutdown, so nothing is lost either. The one window left: rows
//! still in memory when the process is killed (not stopped), at most one
//! flush interval's worth.
//!
//! The spool table is created (`CREATE TABLE IF NOT EXISTS`) on every new
//! connection; a user without CREATE rights needs it created beforehand
//! (DDL in docs/accounting.md).
//!
//! # Order
//!
//! While the journal holds anything, new rows are appended behind it, so rows
//! reach the database in the order they were built. A journal full to
//! `spool_max_bytes` refuses further rows (dropped and counted) rather than
//! lose older ones.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::queue::ArrayQueue;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::time::{sleep_until, timeout, Instant};

use super::journal::{Journal, Record};
use super::row::{sql_time, Row, Table, Value};
use crate::source::db::{redact_url, scrub, validate_table_name, Backend};

/// Rows built on the control thread and waiting for the writer. Bounded: a
/// full queue drops (and counts) the newest row.
#[derive(Debug)]
pub struct RowQueue {
    q: ArrayQueue<Row>,
    pushed: AtomicU64,
    dropped: AtomicU64,
}

impl RowQueue {
    pub fn new(capacity: usize) -> RowQueue {
        RowQueue {
            q: ArrayQueue::new(capacity.max(1)),
            pushed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues a row, or drops and counts it when full.
    pub fn push(&self, row: Row) {
        self.pushed.fetch_add(1, Ordering::Relaxed);
        if self.q.push(row).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn pop(&self) -> Option<Row> {
        self.q.pop()
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

/// The table names rows go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableNames {
    pub acc: String,
    pub missed: String,
    pub cdrs: String,
}

impl TableNames {
    fn of(&self, t: Table) -> &str {
        match t {
            Table::Acc => &self.acc,
            Table::Missed => &self.missed,
            Table::Cdrs => &self.cdrs,
        }
    }
}

impl Default for TableNames {
    fn default() -> Self {
        TableNames {
            acc: "acc".into(),
            missed: "missed_calls".into(),
            cdrs: "acc_cdrs".into(),
        }
    }
}

/// Settings of a [`Writer`].
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// `postgres://…` or `mysql://…`.
    pub db_url: String,
    pub tables: TableNames,
    /// sipvane's progress table (see the module docs).
    pub spool_table: String,
    /// Rows per transaction (≥ 1).
    pub batch: usize,
    /// Rows held in memory before they go to the journal even with the
    /// database up (≥ 1).
    pub buffer: usize,
    /// How often queued rows are collected.
    pub flush_interval: Duration,
    /// Bound on connecting and on each transaction.
    pub io_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The journal file.
    pub spool_path: PathBuf,
    pub spool_max_bytes: u64,
    /// How long `run` keeps writing after shutdown is requested before it
    /// spools what is left.
    pub shutdown_grace: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            db_url: String::new(),
            tables: TableNames::default(),
            spool_table: "sipvane_acc_spool".into(),
            batch: 200,
            buffer: 10_000,
            flush_interval: Duration::from_millis(100),
            io_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            spool_path: PathBuf::from("/var/lib/sipvane/acc.spool"),
            spool_max_bytes: 256 << 20,
            shutdown_grace: Duration::from_secs(3),
        }
    }
}

/// Why a [`Writer`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AccError {
    #[error("[acc] db_url {0} is not postgres://, postgresql://, mysql:// or mariadb://")]
    Url(String),
    #[error("[acc] {0}")]
    Table(String),
    #[error("[acc] {0} must be at least 1")]
    Zero(&'static str),
    #[error("[acc] cannot open the spool {path}: {source}")]
    Spool {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters of the writer, shared with `/metrics`.
        #[derive(Debug, Default)]
        pub struct AccStats {
            queue: Option<Arc<RowQueue>>,
            $($(#[$doc])* $name: AtomicU64,)*
            connected: AtomicBool,
        }
        impl AccStats {
            $($(#[$doc])* pub fn $name(&self) -> u64 { self.$name.load(Ordering::Relaxed) })*
        }
    };
}

counters! {
    /// Rows committed to the database (directly or from the journal).
    written,
    /// Rows appended to the journal.
    spooled,
    /// Journal rows committed to the database (part of `written`).
    replayed,
    /// Journal rows skipped because the database already had them.
    already_written,
    /// Rows refused because the journal was at `spool_max_bytes`.
    dropped_spool_full,
    /// Journal rows lost to a corrupt or cut journal.
    dropped_corrupt,
    /// Rows the database rejected for their content (SQLSTATE class 22/23).
    dropped_rejected,
    /// Bytes cut off a damaged journal when it was opened.
    spool_truncated_bytes,
    /// Committed transactions.
    transactions,
    /// Failed connects and transactions.
    db_errors,
    /// Size of the journal now.
    spool_bytes,
    /// Rows in the journal now.
    spool_rows,
    /// Rows held in memory now.
    pending,
}

impl AccStats {
    /// Rows built from call events (including those then dropped).
    pub fn rows(&self) -> u64 {
        self.queue
            .as_ref()
            .map_or(0, |q| q.pushed.load(Ordering::Relaxed))
    }
    /// Rows dropped because the queue to the writer was full.
    pub fn dropped_queue_full(&self) -> u64 {
        self.queue
            .as_ref()
            .map_or(0, |q| q.dropped.load(Ordering::Relaxed))
    }
    /// Rows queued for the writer now.
    pub fn queued(&self) -> u64 {
        self.queue.as_ref().map_or(0, |q| q.len() as u64)
    }
    /// Whether a database connection is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    fn set(c: &AtomicU64, n: u64) {
        c.store(n, Ordering::Relaxed);
    }
}

enum Conn {
    Pg(PgConnection),
    My(MySqlConnection),
}

/// How a transaction failed.
#[derive(Debug)]
enum Failure {
    /// The database refused the content of a row (too long, bad value…).
    Rejected(String),
    /// Anything else: connection, timeout, missing table, permissions.
    Down(String),
}

impl Failure {
    fn of(e: sqlx::Error, url: &str) -> Failure {
        let rejected = match &e {
            sqlx::Error::Database(d) => d
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
            _ => false,
        };
        let msg = scrub(e.to_string(), url);
        if rejected {
            Failure::Rejected(msg)
        } else {
            Failure::Down(msg)
        }
    }
}

/// Writes accounting rows. Build with [`Writer::new`], keep
/// [`Writer::stats`], spawn [`Writer::run`] on the control runtime.
pub struct Writer {
    cfg: WriterConfig,
    backend: Backend,
    queue: Arc<RowQueue>,
    stats: Arc<AccStats>,
    journal: Journal,
    stream: u64,
    next_seq: u64,
    /// Rows not yet committed nor spooled, oldest first.
    mem: VecDeque<Record>,
    conn: Option<Conn>,
    /// Known next `seq` per stream in the database; cleared after any failure.
    marks: HashMap<u64, u64>,
    /// The last attempt failed: rows go to the journal until one succeeds.
    failing: bool,
    retry_at: Instant,
    backoff: Duration,
    /// Write the next batch one row per transaction (after a rejection).
    isolate: bool,
}

impl Writer {
    /// Checks `cfg` and opens (or recovers) the journal; no connection yet.
    pub fn new(cfg: WriterConfig, queue: Arc<RowQueue>) -> Result<Writer, AccError> {
        let backend =
            Backend::of(&cfg.db_url).ok_or_else(|| AccError::Url(redact_url(&cfg.db_url)))?;
        for t in [
            &cfg.tables.acc,
            &cfg.tables.missed,
            &cfg.tables.cdrs,
            &cfg.spool_table,
        ] {
            validate_table_name(t).map_err(|e| AccError::Table(e.to_string()))?;
        }
        for (name, v) in [("batch", cfg.batch), ("buffer", cfg.buffer)] {
            if v == 0 {
                return Err(AccError::Zero(name));
            }
        }
        let (journal, report) =
            Journal::open(&cfg.spool_path, cfg.spool_max_bytes).map_err(|source| {
                AccError::Spool {
                    path: cfg.spool_path.display().to_string(),
                    source,
                }
            })?;
        let stats = AccStats {
            queue: Some(queue.clone()),
            ..AccStats::default()
        };
        AccStats::set(&stats.spool_truncated_bytes, report.truncated_bytes);
        if report.truncated_bytes > 0 {
            tracing::warn!(
                path = %cfg.spool_path.display(),
                bytes = report.truncated_bytes,
                "accounting spool: cut off a damaged tail"
            );
        }
        if report.records > 0 {
            tracing::info!(
                path = %cfg.spool_path.display(),
                rows = report.records,
                "accounting spool: rows from an earlier run will be replayed"
            );
        }
        let stream = loop {
            let s = random_u64();
            if s != 0 {
                break s;
            }
        };
        let w = Writer {
            backend,
            queue,
            stats: Arc::new(stats),
            journal,
            stream,
            next_seq: 0,
            mem: VecDeque::new(),
            conn: None,
            marks: HashMap::new(),
            failing: false,
            retry_at: Instant::now(),
            backoff: cfg.backoff_min,
            isolate: false,
            cfg,
        };
        w.publish();
        Ok(w)
    }

    /// The counters, for metrics; readable after `run` returns.
    pub fn stats(&self) -> Arc<AccStats> {
        Arc::clone(&self.stats)
    }

    /// Writes until `shutdown` completes, then for at most `shutdown_grace`
    /// more; whatever is still in memory then goes to the journal.
    pub async fn run(mut self, shutdown: impl Future) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut wake = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = sleep_until(wake) => {}
            }
            let more = self.step().await;
            wake = if more {
                Instant::now()
            } else {
                Instant::now() + self.cfg.flush_interval
            };
            if more {
                tokio::task::yield_now().await;
            }
        }
        let grace = self.cfg.shutdown_grace;
        let deadline = Instant::now() + grace;
        let _ = timeout(grace, async {
            // Bounded: each step either writes a batch or backs off.
            for _ in 0..100_000 {
                self.take_queue();
                if self.mem.is_empty() && self.journal.is_empty() {
                    break;
                }
                if self.failing && self.retry_at >= deadline {
                    break;
                }
                if !self.step().await {
                    sleep_until(self.retry_at.min(deadline)).await;
                }
            }
        })
        .await;
        self.take_queue();
        let left = self.mem.len();
        self.spool_mem();
        if let Some(c) = self.conn.take() {
            let _ = timeout(Duration::from_secs(1), close(c)).await;
        }
        self.stats.connected.store(false, Ordering::Relaxed);
        self.publish();
        if left > 0 {
            tracing::info!(
                rows = left,
                "accounting: rows not written before shutdown are in the spool"
            );
        }
    }

    /// One round: collect, spool if needed, then one database attempt.
    /// Returns true when there is more to do right away.
    async fn step(&mut self) -> bool {
        self.take_queue();
        if self.failing || !self.journal.is_empty() || self.mem.len() > self.cfg.buffer {
            self.spool_mem();
        }
        self.publish();
        if self.mem.is_empty() && self.journal.is_empty() {
            return false;
        }
        if Instant::now() < self.retry_at {
            return false;
        }
        if self.conn.is_none() {
            if let Err(e) = self.connect().await {
                self.failed(&e, "connect");
                return false;
            }
        }
        let ok = if !self.journal.is_empty() {
            self.replay_batch().await
        } else {
            self.direct_batch().await
        };
        self.publish();
        ok && (!self.mem.is_empty() || !self.journal.is_empty())
    }

    fn take_queue(&mut self) {
        while let Some(row) = self.queue.pop() {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.mem.push_back(Record {
                stream: self.stream,
                seq,
                row,
            });
        }
    }

    /// Moves every row held in memory to the journal, in order.
    fn spool_mem(&mut self) {
        if self.mem.is_empty() {
            return;
        }
        let recs: Vec<Record> = self.mem.drain(..).collect();
        let appended = match self.journal.append(&recs) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, path = %self.journal.path().display(),
                    "accounting spool: cannot append");
                0
            }
        };
        if appended > 0 {
            if let Err(e) = self.journal.sync() {
                tracing::warn!(error = %e, "accounting spool: sync failed");
            }
        }
        AccStats::add(&self.stats.spooled, appended as u64);
        let dropped = (recs.len() - appended) as u64;
        if dropped > 0 {
            AccStats::add(&self.stats.dropped_spool_full, dropped);
            tracing::warn!(
                dropped,
                max_bytes = self.cfg.spool_max_bytes,
                "accounting spool full: rows dropped"
            );
        }
    }

    fn publish(&self) {
        AccStats::set(&self.stats.spool_bytes, self.journal.bytes());
        AccStats::set(&self.stats.spool_rows, self.journal.waiting());
        AccStats::set(&self.stats.pending, self.mem.len() as u64);
    }

    fn failed(&mut self, err: &str, what: &str) {
        AccStats::add(&self.stats.db_errors, 1);
        if self.failing {
            tracing::debug!(error = err, "accounting: database {what} failed again");
        } else {
            tracing::warn!(
                error = err,
                "accounting: database {what} failed; spooling rows"
            );
        }
        self.failing = true;
        self.marks.clear();
        self.conn = None;
        self.stats.connected.store(false, Ordering::Relaxed);
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = self.backoff.saturating_mul(2).min(self.cfg.backoff_max);
    }

    fn succeeded(&mut self) {
        if self.failing {
            tracing::info!(
                spooled = self.journal.waiting(),
                "accounting: database reachable again"
            );
        }
        self.failing = false;
        self.backoff = self.cfg.backoff_min;
    }

    async fn connect(&mut self) -> Result<(), String> {
        let url = self.cfg.db_url.clone();
        let limit = self.cfg.io_timeout;
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {} (stream BIGINT NOT NULL PRIMARY KEY, seq BIGINT NOT NULL)",
            self.cfg.spool_table
        );
        let fut = async {
            match self.backend {
                Backend::Postgres => {
                    let opts = PgConnectOptions::from_str(&url)
                        .map_err(|e| e.to_string())?
                        .disable_statement_logging();
                    let mut c = PgConnection::connect_with(&opts)
                        .await
                        .map_err(|e| e.to_string())?;
                    sqlx::query(&ddl)
                        .persistent(false)
                        .execute(&mut c)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Conn::Pg(c))
                }
                Backend::Mysql => {
                    let opts = MySqlConnectOptions::from_str(&crate::source::db::mysql_url(&url))
                        .map_err(|e| e.to_string())?
                        .disable_statement_logging();
                    let mut c = MySqlConnection::connect_with(&opts)
                        .await
                        .map_err(|e| e.to_string())?;
                    sqlx::query(&ddl)
                        .persistent(false)
                        .execute(&mut c)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Conn::My(c))
                }
            }
        };
        let conn = match timeout(limit, fut).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(scrub(e, &self.cfg.db_url)),
            Err(_) => return Err(format!("no connection within {limit:?}")),
        };
        self.conn = Some(conn);
        self.stats.connected.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Writes up to `batch` rows from memory. Returns whether it succeeded.
    async fn direct_batch(&mut self) -> bool {
        let n = if self.isolate {
            1
        } else {
            self.mem.len().min(self.cfg.batch)
        };
        let recs: Vec<Record> = self.mem.iter().take(n).cloned().collect();
        match self.commit(&recs).await {
            Ok(()) => {
                self.mem.drain(..n);
                AccStats::add(&self.stats.written, n as u64);
                self.after_commit(&recs);
                true
            }
            Err(Failure::Rejected(e)) if n == 1 => {
                self.mem.pop_front();
                self.rejected(&e);
                true
            }
            Err(Failure::Rejected(e)) => {
                tracing::debug!(error = %e, "accounting: batch rejected; retrying row by row");
                self.isolate = true;
                true
            }
            Err(Failure::Down(e)) => {
                self.failed(&e, "write");
                // Whether the COMMIT landed is unknown: the journal's replay
                // asks the database (the stream mark) before writing again.
                self.spool_mem();
                false
            }
        }
    }

    /// Writes up to `batch` rows from the journal, skipping those the
    /// database already has.
    async fn replay_batch(&mut self) -> bool {
        let max = if self.isolate { 1 } else { self.cfg.batch };
        let peeked = match self.journal.peek(max) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "accounting spool: cannot read");
                self.retry_at = Instant::now() + self.cfg.backoff_max;
                return false;
            }
        };
        if peeked.lost > 0 {
            AccStats::add(&self.stats.dropped_corrupt, peeked.lost);
            tracing::error!(
                lost = peeked.lost,
                "accounting spool: damaged record; the rest of the spool is lost"
            );
        }
        let Some(&(_, end)) = peeked.records.last() else {
            return true;
        };
        let n = peeked.records.len() as u64;
        let mut streams: Vec<u64> = peeked.records.iter().map(|(r, _)| r.stream).collect();
        streams.sort_unstable();
        streams.dedup();
        for s in streams {
            if !self.marks.contains_key(&s) {
                match self.read_mark(s).await {
                    Ok(m) => {
                        self.marks.insert(s, m);
                    }
                    Err(Failure::Down(e) | Failure::Rejected(e)) => {
                        self.failed(&e, "read");
                        return false;
                    }
                }
            }
        }
        let todo: Vec<Record> = peeked
            .records
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| r.seq >= self.marks.get(&r.stream).copied().unwrap_or(0))
            .collect();
        let skipped = n - todo.len() as u64;
        let result = if todo.is_empty() {
            Ok(())
        } else {
            self.commit(&todo).await
        };
        match result {
            Ok(()) => {
                AccStats::add(&self.stats.written, todo.len() as u64);
                AccStats::add(&self.stats.replayed, todo.len() as u64);
                AccStats::add(&self.stats.already_written, skipped);
                self.after_commit(&todo);
            }
            Err(Failure::Rejected(e)) if todo.len() == 1 => {
                AccStats::add(&self.stats.already_written, skipped);
                self.rejected(&e);
            }
            Err(Failure::Rejected(e)) => {
                tracing::debug!(error = %e, "accounting: batch rejected; retrying row by row");
                self.isolate = true;
                return true;
            }
            Err(Failure::Down(e)) => {
                self.failed(&e, "replay");
                return false;
            }
        }
        if let Err(e) = self.journal.consumed(end, n) {
            tracing::error!(error = %e, "accounting spool: cannot update");
        }
        true
    }

    fn after_commit(&mut self, recs: &[Record]) {
        if !recs.is_empty() {
            AccStats::add(&self.stats.transactions, 1);
        }
        for r in recs {
            let m = self.marks.entry(r.stream).or_insert(0);
            *m = (*m).max(r.seq + 1);
        }
        self.isolate = false;
        self.succeeded();
    }

    fn rejected(&mut self, e: &str) {
        AccStats::add(&self.stats.dropped_rejected, 1);
        tracing::error!(
            error = e,
            "accounting: the database rejected a row; dropped"
        );
        self.succeeded();
    }

    async fn read_mark(&mut self, stream: u64) -> Result<u64, Failure> {
        let sql_pg = format!("SELECT seq FROM {} WHERE stream = $1", self.cfg.spool_table);
        let sql_my = format!("SELECT seq FROM {} WHERE stream = ?", self.cfg.spool_table);
        let url = self.cfg.db_url.clone();
        let limit = self.cfg.io_timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Down("not connected".into()));
        };
        let fut = async {
            let v: Option<i64> = match conn {
                Conn::Pg(c) => sqlx::query_scalar(&sql_pg)
                    .persistent(false)
                    .bind(stream as i64)
                    .fetch_optional(c)
                    .await
                    .map_err(|e| Failure::of(e, &url))?,
                Conn::My(c) => sqlx::query_scalar(&sql_my)
                    .persistent(false)
                    .bind(stream as i64)
                    .fetch_optional(c)
                    .await
                    .map_err(|e| Failure::of(e, &url))?,
            };
            Ok(v.map_or(0, |v| v.max(0) as u64))
        };
        match timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Down(format!("no answer within {limit:?}"))),
        }
    }

    /// One transaction: the rows, in order, and the stream marks.
    async fn commit(&mut self, recs: &[Record]) -> Result<(), Failure> {
        let pg = matches!(self.backend, Backend::Postgres);
        let statements = insert_statements(recs, &self.cfg.tables, pg);
        let mut marks: Vec<(u64, u64)> = Vec::new();
        for r in recs {
            match marks.iter_mut().find(|(s, _)| *s == r.stream) {
                Some(m) => m.1 = m.1.max(r.seq + 1),
                None => marks.push((r.stream, r.seq + 1)),
            }
        }
        let mark_sql = if pg {
            format!(
                "INSERT INTO {} AS m (stream, seq) VALUES ($1, $2) \
                 ON CONFLICT (stream) DO UPDATE SET seq = GREATEST(m.seq, EXCLUDED.seq)",
                self.cfg.spool_table
            )
        } else {
            format!(
                "INSERT INTO {} (stream, seq) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE seq = GREATEST(seq, VALUES(seq))",
                self.cfg.spool_table
            )
        };
        let url = self.cfg.db_url.clone();
        let limit = self.cfg.io_timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Down("not connected".into()));
        };
        macro_rules! run_txn {
            ($c:expr) => {{
                let mut tx = $c.begin().await.map_err(|e| Failure::of(e, &url))?;
                for (sql, vals) in &statements {
                    let mut q = sqlx::query(sql).persistent(false);
                    for v in vals {
                        q = match v {
                            Value::Text(s) => q.bind(&**s),
                            Value::Time(ms) => q.bind(sql_time(*ms)),
                            Value::Real(x) => q.bind(*x),
                        };
                    }
                    q.execute(&mut *tx)
                        .await
                        .map_err(|e| Failure::of(e, &url))?;
                }
                for (stream, seq) in &marks {
                    sqlx::query(&mark_sql)
                        .persistent(false)
                        .bind(*stream as i64)
                        .bind(*seq as i64)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| Failure::of(e, &url))?;
                }
                tx.commit().await.map_err(|e| Failure::of(e, &url))
            }};
        }
        let fut = async {
            match conn {
                Conn::Pg(c) => run_txn!(c),
                Conn::My(c) => run_txn!(c),
            }
        };
        match timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Down(format!("no answer within {limit:?}"))),
        }
    }
}

async fn close(c: Conn) {
    let _ = match c {
        Conn::Pg(c) => c.close().await,
        Conn::My(c) => c.close().await,
    };
}

/// Multi-row INSERTs for `recs`, in order: one statement per run of rows
/// with the same table and columns. Column names are quoted (`"time"`,
/// `` `time` ``); they were validated as plain identifiers.
pub fn insert_statements<'r>(
    recs: &'r [Record],
    tables: &TableNames,
    pg: bool,
) -> Vec<(String, Vec<&'r Value>)> {
    let mut out: Vec<(String, Vec<&Value>)> = Vec::new();
    let mut i = 0;
    while i < recs.len() {
        let first = &recs[i].row;
        let same = |r: &Row| {
            r.table == first.table
                && r.cols.len() == first.cols.len()
                && r.cols.iter().zip(&first.cols).all(|(a, b)| a.0 == b.0)
        };
        let mut j = i;
        while j < recs.len() && same(&recs[j].row) {
            j += 1;
        }
        let q = |c: &str| {
            if pg {
                format!("\"{c}\"")
            } else {
                format!("`{c}`")
            }
        };
        let cols: Vec<String> = first.cols.iter().map(|(c, _)| q(c)).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ",
            tables.of(first.table),
            cols.join(", ")
        );
        let mut vals = Vec::new();
        let mut n = 0;
        for (k, rec) in recs[i..j].iter().enumerate() {
            if k > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for (m, (_, v)) in rec.row.cols.iter().enumerate() {
                if m > 0 {
                    sql.push_str(", ");
                }
                n += 1;
                match (pg, v) {
                    (true, Value::Time(_)) => sql.push_str(&format!("CAST(${n} AS TIMESTAMP)")),
                    (true, _) => sql.push_str(&format!("${n}")),
                    (false, _) => sql.push('?'),
                }
                vals.push(v);
            }
            sql.push(')');
        }
        out.push((sql, vals));
        i = j;
    }
    out
}

fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id()))
}

#[cfg(test)]
mod tests;
