//! Dispatcher destinations from Kamailio's `dispatcher` table in PostgreSQL or
//! MySQL / MariaDB.
//!
//! An operator points sipvane at the database Kamailio already uses and gets the
//! same pools: sipvane reads
//!
//! ```sql
//! SELECT id, setid, destination, flags, priority, attrs, description
//!   FROM dispatcher ORDER BY id
//! ```
//!
//! (the table name is configurable) and validates every row the way Kamailio's
//! `dispatcher.list` parser would. Three layers:
//!
//! - [`fetch`]: one connection, one query, bounded by a timeout (I/O).
//! - [`rows_to_defs`]: validation and conversion to [`RowDef`] (pure).
//! - [`initial_load`] and [`Resync`]: the start-up policy (database, else the
//!   snapshot written by [`super::snapshot`]) and periodic re-reads with
//!   exponential backoff during an outage. The backoff decisions are pure
//!   ([`backoff`], [`Resync::on_fetch`]); only [`Resync::poll`] and
//!   [`Resync::next_change`] touch the network and the clock (tokio's, so tests
//!   can pause it).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

use super::snapshot;

/// Default name of the table, as in Kamailio's `dispatcher` module (`table_name`).
pub const DEFAULT_TABLE: &str = "dispatcher";

/// One row of the `dispatcher` table, as stored. NULL `attrs` / `description`
/// read as the empty string; NULL `flags` / `priority` as 0 (Kamailio's
/// defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbRow {
    /// Primary key; used only to name rows in messages and to order them.
    pub id: i64,
    /// Destination set.
    pub setid: i64,
    /// SIP URI of the destination.
    pub destination: String,
    /// Kamailio flag bits.
    pub flags: i64,
    /// Priority inside the set (higher first).
    pub priority: i64,
    /// `name=value;...` attributes, unparsed.
    pub attrs: String,
    /// Free text.
    pub description: String,
}

/// A validated destination from a database row (or a snapshot line), ready to be
/// turned into the dispatch module's `DestDef` (whose `attrs` it parses from
/// `attrs_raw`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowDef {
    /// Set id.
    pub set: u32,
    /// Destination SIP URI (`sip:` / `sips:`), surrounding blanks removed.
    pub uri: String,
    /// Kamailio flag bits.
    pub flags: u32,
    /// Priority inside the set.
    pub priority: i32,
    /// Attributes exactly as stored, surrounding blanks removed.
    pub attrs_raw: String,
    /// Description; control characters are replaced by spaces.
    pub description: String,
    /// The row's `id` (for a snapshot written by sipvane, the id recorded in it;
    /// for another list file, the line number).
    pub row_id: i64,
}

/// Where [`initial_load`] got the destinations from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read from the database just now.
    Database,
    /// The database was unavailable; read from the snapshot file.
    Snapshot,
}

/// Why reading the `dispatcher` table failed. Messages never contain the
/// password of the URL.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The URL's scheme is not one sipvane reads a table from.
    #[error(
        "unsupported database URL {url_redacted}: expected postgres://, postgresql://, mysql:// or mariadb://"
    )]
    UnsupportedUrl {
        /// The URL with its password replaced by `***`.
        url_redacted: String,
    },
    /// The configured table name is not a plain (optionally schema-qualified) SQL
    /// identifier; it is refused rather than quoted because it is pasted into SQL.
    #[error("invalid dispatcher table name \"{table}\": use letters, digits and _, optionally schema.table")]
    BadTable {
        /// The name as configured.
        table: String,
    },
    /// The URL could not be parsed, the server could not be reached, refused the
    /// login, or did not answer within the timeout.
    #[error("cannot connect to {url_redacted}: {reason}")]
    Connect {
        /// The URL with its password replaced by `***`.
        url_redacted: String,
        /// What went wrong.
        reason: String,
    },
    /// Connected, but the query failed (missing table or column, permissions,
    /// timeout).
    #[error("reading table {table} from {url_redacted} failed: {reason}")]
    Query {
        /// The URL with its password replaced by `***`.
        url_redacted: String,
        /// The table queried.
        table: String,
        /// What went wrong.
        reason: String,
    },
    /// A row holds something sipvane cannot use.
    #[error("dispatcher row id={id}: {problem}")]
    BadRow {
        /// The row's `id` (0 if the id itself was unreadable).
        id: i64,
        /// What is wrong with it.
        problem: String,
    },
}

impl SourceError {
    /// True when the database could not be used at all (as opposed to holding
    /// bad data or being misconfigured in sipvane): the cases where falling back
    /// to the snapshot or keeping the current table is right.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            SourceError::Connect { .. } | SourceError::Query { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Postgres,
    Mysql,
}

impl Backend {
    pub(crate) fn of(url: &str) -> Option<Backend> {
        let (scheme, _) = url.split_once("://")?;
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "mysql" | "mariadb" => Some(Backend::Mysql),
            _ => None,
        }
    }
}

/// True if `url` names a database [`fetch`] can read (by scheme).
/// `url` with a `mariadb://` scheme spelled `mysql://`, the only one sqlx knows.
pub(crate) fn mysql_url(url: &str) -> String {
    match url.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("mariadb") => format!("mysql://{rest}"),
        _ => url.to_owned(),
    }
}

pub fn is_database_url(url: &str) -> bool {
    Backend::of(url).is_some()
}

/// `url` with the password of its userinfo (and any `password=` query
/// parameter) replaced by `***`, for logs and error messages.
///
/// `postgres://sipvane:s3cret@db:5432/kamailio` → `postgres://sipvane:***@db:5432/kamailio`
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL: it might be anything, including a bare password.
        return "<unparsable URL>".to_owned();
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    out.push_str("://");
    // The last '@' ends the userinfo: an unencoded '@' in a password is common.
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

/// The secrets of `url` (userinfo password and `password=` parameters), raw and
/// percent-decoded, so they can be scrubbed from driver messages that might echo
/// them.
fn secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some((_, rest)) = url.split_once("://") else {
        return out;
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if let Some((_, pw)) = userinfo.split_once(':') {
            out.push(pw.to_owned());
        }
    }
    if let Some((_, query)) = tail.split_once('?') {
        for p in query.split('&') {
            if let Some((k, v)) = p.split_once('=') {
                if k.eq_ignore_ascii_case("password") {
                    out.push(v.to_owned());
                }
            }
        }
    }
    let decoded: Vec<String> = out.iter().map(|s| percent_decode(s)).collect();
    out.extend(decoded);
    // Very short "secrets" would blank out unrelated text; such passwords are
    // not worth protecting at the cost of unreadable messages.
    out.retain(|s| s.len() >= 3);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `msg` with every secret of `url` replaced by `***`.
pub(crate) fn scrub(msg: String, url: &str) -> String {
    let mut msg = msg;
    for s in secrets(url) {
        if msg.contains(&s) {
            msg = msg.replace(&s, "***");
        }
    }
    msg
}

/// Checks `table` is `name` or `schema.name` made of ASCII letters, digits, `_`
/// and `$`, not starting with a digit.
pub fn validate_table_name(table: &str) -> Result<(), SourceError> {
    let ident = |s: &str| {
        let mut bytes = s.bytes();
        matches!(bytes.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
            && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
    };
    let ok = match table.split_once('.') {
        Some((schema, name)) => ident(schema) && ident(name),
        None => ident(table),
    };
    if ok {
        Ok(())
    } else {
        Err(SourceError::BadTable {
            table: table.to_owned(),
        })
    }
}

/// Reads the whole `dispatcher` table at `url`, ordered by `id`.
///
/// `url` is `postgres://`, `postgresql://`, `mysql://` or `mariadb://` (the last
/// is read as `mysql://`), with the drivers' usual parameters
/// (`?sslmode=disable`, `?ssl-mode=disabled`, …; TLS itself is not compiled in).
/// `timeout` bounds the connection and, separately, the query. The connection
/// is closed before returning.
pub async fn fetch(url: &str, table: &str, timeout: Duration) -> Result<Vec<DbRow>, SourceError> {
    let url_redacted = || redact_url(url);
    let Some(backend) = Backend::of(url) else {
        return Err(SourceError::UnsupportedUrl {
            url_redacted: url_redacted(),
        });
    };
    validate_table_name(table)?;
    let connect_err = |reason: String| SourceError::Connect {
        url_redacted: url_redacted(),
        reason: scrub(reason, url),
    };
    let query_err = |reason: String| SourceError::Query {
        url_redacted: url_redacted(),
        table: table.to_owned(),
        reason: scrub(reason, url),
    };
    let timed_out = |what: &str| format!("{what} timed out after {}", fmt_duration(timeout));

    match backend {
        Backend::Postgres => {
            let opts = PgConnectOptions::from_str(url)
                .map_err(|e| connect_err(format!("invalid URL: {e}")))?
                .disable_statement_logging();
            let mut conn = tokio::time::timeout(timeout, PgConnection::connect_with(&opts))
                .await
                .map_err(|_| connect_err(timed_out("connecting")))?
                .map_err(|e| connect_err(e.to_string()))?;
            let sql = format!(
                "SELECT CAST(id AS BIGINT), CAST(setid AS BIGINT), CAST(destination AS TEXT), \
                 CAST(flags AS BIGINT), CAST(priority AS BIGINT), CAST(attrs AS TEXT), \
                 CAST(description AS TEXT) FROM {table} ORDER BY id"
            );
            // Unnamed statements: the connection is thrown away after one query,
            // and named ones break behind pgbouncer in transaction mode.
            let q = sqlx::query(&sql).persistent(false).fetch_all(&mut conn);
            let rows = tokio::time::timeout(timeout, q)
                .await
                .map_err(|_| query_err(timed_out("the query")))?
                .map_err(|e| query_err(e.to_string()))?;
            close(conn.close(), timeout).await;
            rows.iter().map(decode_row).collect()
        }
        Backend::Mysql => {
            let opts = MySqlConnectOptions::from_str(&mysql_url(url))
                .map_err(|e| connect_err(format!("invalid URL: {e}")))?
                .disable_statement_logging();
            let mut conn = tokio::time::timeout(timeout, MySqlConnection::connect_with(&opts))
                .await
                .map_err(|_| connect_err(timed_out("connecting")))?
                .map_err(|e| connect_err(e.to_string()))?;
            // CAST AS SIGNED is MySQL's BIGINT; CAST AS CHAR reads any text or
            // binary column in the connection's character set.
            let sql = format!(
                "SELECT CAST(id AS SIGNED), CAST(setid AS SIGNED), CAST(destination AS CHAR), \
                 CAST(flags AS SIGNED), CAST(priority AS SIGNED), CAST(attrs AS CHAR), \
                 CAST(description AS CHAR) FROM {table} ORDER BY id"
            );
            let q = sqlx::query(&sql).persistent(false).fetch_all(&mut conn);
            let rows = tokio::time::timeout(timeout, q)
                .await
                .map_err(|_| query_err(timed_out("the query")))?
                .map_err(|e| query_err(e.to_string()))?;
            close(conn.close(), timeout).await;
            rows.iter().map(decode_row).collect()
        }
    }
}

/// A polite close, bounded: the rows are already read, so a slow or failed
/// goodbye does not matter.
async fn close<F: Future>(f: F, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, f).await;
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// The columns after `id` of a fetched row, NULLs still visible.
struct RawRow {
    setid: Option<i64>,
    destination: Option<String>,
    flags: Option<i64>,
    priority: Option<i64>,
    attrs: Option<String>,
    description: Option<String>,
}

/// Reads a row of the query above from either driver (the SQL casts every
/// column to BIGINT or text, so one set of Rust types fits both).
fn decode_row<R: Row>(row: &R) -> Result<DbRow, SourceError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let int = |i: usize| row.try_get::<Option<i64>, _>(i).map_err(|e| e.to_string());
    let text = |i: usize| {
        row.try_get::<Option<String>, _>(i)
            .map_err(|e| e.to_string())
    };
    finish_row(int(0), || {
        Ok(RawRow {
            setid: int(1)?,
            destination: text(2)?,
            flags: int(3)?,
            priority: int(4)?,
            attrs: text(5)?,
            description: text(6)?,
        })
    })
}

/// Applies the NULL rules; `rest` decodes the columns after `id` (only once the
/// id is known, so its errors can name the row).
fn finish_row(
    id: Result<Option<i64>, String>,
    rest: impl FnOnce() -> Result<RawRow, String>,
) -> Result<DbRow, SourceError> {
    let bad = |id: i64, problem: String| SourceError::BadRow { id, problem };
    let id = match id {
        Ok(Some(id)) => id,
        Ok(None) => return Err(bad(0, "id is NULL".into())),
        Err(e) => return Err(bad(0, format!("unreadable id: {e}"))),
    };
    let raw = rest().map_err(|e| bad(id, format!("unreadable column: {e}")))?;
    let Some(setid) = raw.setid else {
        return Err(bad(id, "setid is NULL".into()));
    };
    let Some(destination) = raw.destination else {
        return Err(bad(id, "destination is NULL".into()));
    };
    Ok(DbRow {
        id,
        setid,
        destination,
        flags: raw.flags.unwrap_or(0),
        priority: raw.priority.unwrap_or(0),
        attrs: raw.attrs.unwrap_or_default(),
        description: raw.description.unwrap_or_default(),
    })
}

/// Checks that `uri` is a `sip:` / `sips:` URI with a host and no blanks or
/// control characters (it must fit one `dispatcher.list` field).
pub(crate) fn check_uri(uri: &str) -> Result<(), String> {
    let b = uri.as_bytes();
    let rest = if b.len() >= 4 && b[..4].eq_ignore_ascii_case(b"sip:") {
        &uri[4..]
    } else if b.len() >= 5 && b[..5].eq_ignore_ascii_case(b"sips:") {
        &uri[5..]
    } else {
        return Err(format!("destination '{uri}' is not a sip: or sips: URI"));
    };
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "destination '{}' contains blanks or control characters",
            uri.escape_debug()
        ));
    }
    let hostpart = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = hostpart.split([';', '?']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("destination '{uri}' has no host"));
    }
    Ok(())
}

/// Validates one row and converts it; every problem is reported.
fn row_to_def(row: &DbRow) -> Result<RowDef, Vec<String>> {
    let mut problems = Vec::new();
    let set = if row.setid < 0 {
        problems.push(format!("setid {} is negative", row.setid));
        0
    } else {
        u32::try_from(row.setid).unwrap_or_else(|_| {
            problems.push(format!("setid {} is larger than {}", row.setid, u32::MAX));
            0
        })
    };
    let uri = row.destination.trim();
    if let Err(e) = check_uri(uri) {
        problems.push(e);
    }
    let flags = u32::try_from(row.flags).unwrap_or_else(|_| {
        problems.push(format!(
            "flags {} out of range (0..={})",
            row.flags,
            u32::MAX
        ));
        0
    });
    let priority = i32::try_from(row.priority).unwrap_or_else(|_| {
        problems.push(format!(
            "priority {} out of range ({}..={})",
            row.priority,
            i32::MIN,
            i32::MAX
        ));
        0
    });
    let attrs = row.attrs.trim();
    if attrs.chars().any(|c| c.is_control()) {
        problems.push(format!(
            "attrs '{}' contain a control character",
            attrs.escape_debug()
        ));
    }
    // The description is cosmetic: repair it rather than refuse the row.
    let description: String = row
        .description
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if problems.is_empty() {
        Ok(RowDef {
            set,
            uri: uri.to_owned(),
            flags,
            priority,
            attrs_raw: attrs.to_owned(),
            description,
            row_id: row.id,
        })
    } else {
        Err(problems)
    }
}

/// Validates and converts the rows of a `dispatcher` table. On failure, every
/// problem of every row is returned, each as
/// `dispatcher row id=7: setid -1 is negative`.
pub fn rows_to_defs(rows: &[DbRow]) -> Result<Vec<RowDef>, Vec<String>> {
    let mut defs = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    for row in rows {
        match row_to_def(row) {
            Ok(d) => defs.push(d),
            Err(problems) => errors.extend(
                problems
                    .into_iter()
                    .map(|p| format!("dispatcher row id={}: {p}", row.id)),
            ),
        }
    }
    if errors.is_empty() {
        Ok(defs)
    } else {
        Err(errors)
    }
}

/// How a source is named in logs and in the snapshot header:
/// `postgres://sipvane:***@db/kamailio (table dispatcher)`.
pub fn describe_source(url: &str, table: &str) -> String {
    format!("{} (table {table})", redact_url(url))
}

/// Reads the table once and validates it: `Err` holds every message.
async fn fetch_defs(
    url: &str,
    table: &str,
    timeout: Duration,
) -> Result<Vec<RowDef>, FetchFailure> {
    let rows = fetch(url, table, timeout)
        .await
        .map_err(FetchFailure::from)?;
    rows_to_defs(&rows).map_err(FetchFailure::Invalid)
}

/// Why a read produced no usable table.
#[derive(Debug)]
enum FetchFailure {
    /// The database could not be used.
    Unavailable(String),
    /// It answered, but with rows sipvane refuses.
    Invalid(Vec<String>),
}

impl From<SourceError> for FetchFailure {
    fn from(e: SourceError) -> Self {
        if e.is_unavailable() {
            FetchFailure::Unavailable(e.to_string())
        } else {
            FetchFailure::Invalid(vec![e.to_string()])
        }
    }
}

/// Start-up policy for a database source.
///
/// - Database readable and every row valid: its rows, and the snapshot (if a
///   path is given) is rewritten; a failed snapshot write only logs a warning.
/// - Database unavailable (cannot connect, query failed or timed out): the
///   snapshot's rows, with a warning in the log.
/// - Database unavailable and no snapshot (no path, file missing or unreadable):
///   an error saying what failed and that no snapshot exists.
/// - Database readable but rows invalid: an error listing every bad row. The
///   snapshot is *not* used: the operator changed the table and must see that
///   the change is wrong rather than silently run yesterday's pools.
pub async fn initial_load(
    url: &str,
    table: &str,
    snapshot: Option<&Path>,
    timeout: Duration,
) -> Result<(Vec<RowDef>, Origin), String> {
    let source = describe_source(url, table);
    match fetch_defs(url, table, timeout).await {
        Ok(defs) => {
            if let Some(path) = snapshot {
                if let Err(e) = snapshot::write_snapshot(path, &defs, &source) {
                    tracing::warn!(
                        snapshot = %path.display(),
                        error = %e,
                        "could not write the dispatcher snapshot; start-up continues"
                    );
                }
            }
            Ok((defs, Origin::Database))
        }
        Err(FetchFailure::Invalid(errors)) => Err(format!(
            "the dispatcher table {source} has {} problem(s), fix them and restart:\n  {}",
            errors.len(),
            errors.join("\n  ")
        )),
        Err(FetchFailure::Unavailable(error)) => {
            let Some(path) = snapshot else {
                return Err(format!(
                    "cannot load dispatcher destinations: {error}; no snapshot to fall back on \
                     ([dispatcher] snapshot_path is not set)"
                ));
            };
            match snapshot::load_snapshot(path) {
                Ok(defs) => {
                    tracing::warn!(
                        %error,
                        snapshot = %path.display(),
                        destinations = defs.len(),
                        "dispatcher database unavailable at start-up; using the snapshot until it is back"
                    );
                    Ok((defs, Origin::Snapshot))
                }
                Err(e) if !path.exists() => Err(format!(
                    "cannot load dispatcher destinations: {error}; no snapshot to fall back on \
                     ({} does not exist: {e})",
                    path.display()
                )),
                Err(e) => Err(format!(
                    "cannot load dispatcher destinations: {error}; the snapshot cannot be used \
                     either: {e}"
                )),
            }
        }
    }
}

/// Delay before the next attempt after `failures` consecutive failed reads:
/// 1 s, doubling, at most 60 s. `failures == 0` gives zero.
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let secs = 1u64 << (failures - 1).min(6);
    Duration::from_secs(secs.min(60))
}

/// Something that reads the `dispatcher` table: [`DbFetch`] in production, a
/// script in tests.
pub trait Fetch {
    /// Reads the whole table.
    fn fetch(&mut self) -> impl Future<Output = Result<Vec<DbRow>, SourceError>> + Send;
    /// How the source is named in logs and the snapshot header (no password).
    fn describe(&self) -> String;
}

/// [`fetch`] with fixed arguments. Its `Debug` output hides the password.
#[derive(Clone)]
pub struct DbFetch {
    /// Database URL.
    pub url: String,
    /// Table name.
    pub table: String,
    /// Connect timeout and, separately, query timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for DbFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbFetch")
            .field("url", &redact_url(&self.url))
            .field("table", &self.table)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Fetch for DbFetch {
    fn fetch(&mut self) -> impl Future<Output = Result<Vec<DbRow>, SourceError>> + Send {
        fetch(&self.url, &self.table, self.timeout)
    }

    fn describe(&self) -> String {
        describe_source(&self.url, &self.table)
    }
}

/// What one [`Resync::poll`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResyncOutcome {
    /// The table differs from the current one; this is the new one (already
    /// made current).
    Changed(Vec<RowDef>),
    /// Same table as before.
    Unchanged,
    /// Nothing usable was read; the current table stays. `retry_in` is the
    /// backoff before the next attempt.
    Failed {
        /// Why (no password in it).
        error: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
}

/// Periodic re-reads of the `dispatcher` table.
///
/// Healthy: one read every `interval` (none if `interval` is zero: reads happen
/// only when the caller calls [`Resync::poll`]). After a failed read (database
/// unavailable, or rows sipvane refuses) the current table is kept and the read
/// is retried after 1 s, 2 s, 4 s … 60 s until one succeeds. Every successful
/// read rewrites the snapshot, if one is configured.
#[derive(Debug)]
pub struct Resync<F: Fetch = DbFetch> {
    fetcher: F,
    current: Vec<RowDef>,
    interval: Duration,
    failures: u32,
    last_error: Option<String>,
    snapshot: Option<PathBuf>,
}

impl<F: Fetch> Resync<F> {
    /// Starts from `current` (what [`initial_load`] returned). With
    /// `Origin::Snapshot` the first read is due after the first backoff step
    /// (1 s), since the database was just found unavailable.
    pub fn new(fetcher: F, current: Vec<RowDef>, origin: Origin, interval: Duration) -> Self {
        Resync {
            fetcher,
            current,
            interval,
            failures: u32::from(origin == Origin::Snapshot),
            last_error: None,
            snapshot: None,
        }
    }

    /// Rewrite `path` after every successful read.
    pub fn with_snapshot(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot = Some(path.into());
        self
    }

    /// How the source is named in logs (no password).
    pub fn describe(&self) -> String {
        self.fetcher.describe()
    }

    /// The table in use.
    pub fn current(&self) -> &[RowDef] {
        &self.current
    }

    /// Consecutive failed reads (0 when healthy).
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// The error of the last read, if it failed.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Delay before the next read is due: the backoff while failing, else
    /// `interval`; `None` when healthy with `interval` zero (reads on demand only).
    pub fn next_delay(&self) -> Option<Duration> {
        if self.failures > 0 {
            Some(backoff(self.failures))
        } else if self.interval.is_zero() {
            None
        } else {
            Some(self.interval)
        }
    }

    /// Folds the result of a read into the state (pure: no I/O, no clock).
    pub fn on_fetch(&mut self, result: Result<Vec<DbRow>, SourceError>) -> ResyncOutcome {
        let defs = match result {
            Ok(rows) => rows_to_defs(&rows).map_err(|errors| {
                format!(
                    "the dispatcher table has {} problem(s), keeping the current destinations: {}",
                    errors.len(),
                    errors.join("; ")
                )
            }),
            Err(e) => Err(e.to_string()),
        };
        match defs {
            Ok(defs) => {
                self.failures = 0;
                self.last_error = None;
                if defs == self.current {
                    ResyncOutcome::Unchanged
                } else {
                    self.current = defs.clone();
                    ResyncOutcome::Changed(defs)
                }
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                self.last_error = Some(error.clone());
                ResyncOutcome::Failed {
                    error,
                    retry_in: backoff(self.failures),
                }
            }
        }
    }

    /// Reads the table now, updates the state, and rewrites the snapshot after a
    /// successful read.
    pub async fn poll(&mut self) -> ResyncOutcome {
        let result = self.fetcher.fetch().await;
        let outcome = self.on_fetch(result);
        if !matches!(outcome, ResyncOutcome::Failed { .. }) {
            if let Some(path) = &self.snapshot {
                if let Err(e) =
                    snapshot::write_snapshot(path, &self.current, &self.fetcher.describe())
                {
                    tracing::warn!(snapshot = %path.display(), error = %e,
                        "could not write the dispatcher snapshot");
                }
            }
        }
        outcome
    }

    /// Waits for each due read (tokio time) and returns the next table that
    /// differs from the current one. Failures are logged and retried with
    /// backoff; the current table stays in use meanwhile. Never returns when
    /// healthy with `interval` zero.
    pub async fn next_change(&mut self) -> Vec<RowDef> {
        loop {
            match self.next_delay() {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
            let was_failing = self.failures > 0;
            match self.poll().await {
                ResyncOutcome::Changed(defs) => {
                    if was_failing {
                        tracing::info!(source = %self.fetcher.describe(), "dispatcher source is back");
                    }
                    return defs;
                }
                ResyncOutcome::Unchanged => {
                    if was_failing {
                        tracing::info!(source = %self.fetcher.describe(), "dispatcher source is back");
                    }
                }
                ResyncOutcome::Failed { error, retry_in } => tracing::warn!(
                    source = %self.fetcher.describe(),
                    %error,
                    failures = self.failures,
                    retry_in_s = retry_in.as_secs(),
                    "dispatcher source read failed; keeping the current destinations"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    fn row(id: i64, setid: i64, dest: &str) -> DbRow {
        DbRow {
            id,
            setid,
            destination: dest.into(),
            flags: 0,
            priority: 0,
            attrs: String::new(),
            description: String::new(),
        }
    }

    #[test]
    fn redacts_userinfo_password_and_query_password() {
        assert_eq!(
            redact_url("postgres://sipvane:s3cret@db:5432/kamailio"),
            "postgres://sipvane:***@db:5432/kamailio"
        );
        assert_eq!(
            redact_url("mysql://u:p@ss@w0rd@db/k?ssl-mode=disabled"),
            "mysql://u:***@db/k?ssl-mode=disabled"
        );
        assert_eq!(
            redact_url("postgresql://db/k?user=u&password=topsecret&sslmode=disable"),
            "postgresql://db/k?user=u&password=***&sslmode=disable"
        );
        assert_eq!(redact_url("mysql://user@db/k"), "mysql://user@db/k");
        assert_eq!(redact_url("mysql://db"), "mysql://db");
        assert_eq!(redact_url("hunter2"), "<unparsable URL>");
    }

    #[test]
    fn scrub_removes_raw_and_decoded_passwords() {
        let url = "postgres://u:p%40ssw0rd@db/k";
        let msg = scrub("auth failed for p@ssw0rd and p%40ssw0rd".into(), url);
        assert_eq!(msg, "auth failed for *** and ***");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41%zz%"), "A%zz%");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let f = DbFetch {
            url: "mysql://u:hunter22@db/k".into(),
            table: "dispatcher".into(),
            timeout: Duration::from_secs(1),
        };
        let r = Resync::new(f, vec![], Origin::Database, Duration::ZERO);
        let dbg = format!("{r:?}");
        assert!(dbg.contains("mysql://u:***@db/k"), "{dbg}");
        assert!(!dbg.contains("hunter22"), "{dbg}");
    }

    #[test]
    fn table_names() {
        for ok in ["dispatcher", "kamailio.dispatcher", "_d1", "ds$x"] {
            assert!(validate_table_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1d",
            "dispatcher; DROP TABLE x",
            "a.b.c",
            "d-x",
            "\"d\"",
            "a.",
        ] {
            assert!(validate_table_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backend_by_scheme() {
        assert_eq!(Backend::of("postgres://x"), Some(Backend::Postgres));
        assert_eq!(Backend::of("PostgreSQL://x"), Some(Backend::Postgres));
        assert_eq!(Backend::of("mysql://x"), Some(Backend::Mysql));
        assert_eq!(Backend::of("mariadb://x"), Some(Backend::Mysql));
        assert_eq!(Backend::of("redis://x"), None);
        assert_eq!(Backend::of("file:/x"), None);
        assert!(is_database_url("mariadb://h/db"));
    }

    #[tokio::test]
    async fn fetch_refuses_bad_scheme_and_table_without_io() {
        let e = fetch("sqlite://u:pw123@x/y", "dispatcher", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::UnsupportedUrl { .. }), "{e}");
        assert!(!e.to_string().contains("pw123"), "{e}");
        let e = fetch("postgres://h/db", "x;drop", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::BadTable { .. }), "{e}");
        assert!(!e.is_unavailable());
    }

    #[test]
    fn converts_valid_rows() {
        let mut r = row(3, 2, "  sip:10.0.0.1:5060;transport=udp ");
        r.flags = 8;
        r.priority = -5;
        r.attrs = " weight=50;duid=ast1 ".into();
        r.description = "first\tbox\n".into();
        let defs = rows_to_defs(&[r]).unwrap();
        assert_eq!(
            defs,
            vec![RowDef {
                set: 2,
                uri: "sip:10.0.0.1:5060;transport=udp".into(),
                flags: 8,
                priority: -5,
                attrs_raw: "weight=50;duid=ast1".into(),
                description: "first box".into(),
                row_id: 3,
            }]
        );
        assert!(rows_to_defs(&[row(1, 0, "SIPS:a.example")]).is_ok());
        assert_eq!(rows_to_defs(&[]).unwrap(), vec![]);
    }

    #[test]
    fn reports_every_problem_with_row_id() {
        let mut bad = row(7, -1, "http://x");
        bad.flags = -2;
        bad.priority = i64::from(i32::MAX) + 1;
        bad.attrs = "a=1\nb=2".into();
        let rows = [
            row(1, 1, "sip:ok"),
            bad,
            row(9, i64::from(u32::MAX) + 1, "sip:"),
            row(10, 1, "sip:a b"),
            row(11, 1, "sip:user@;x"),
        ];
        let errs = rows_to_defs(&rows).unwrap_err();
        assert_eq!(
            errs,
            vec![
                "dispatcher row id=7: setid -1 is negative",
                "dispatcher row id=7: destination 'http://x' is not a sip: or sips: URI",
                "dispatcher row id=7: flags -2 out of range (0..=4294967295)",
                "dispatcher row id=7: priority 2147483648 out of range (-2147483648..=2147483647)",
                "dispatcher row id=7: attrs 'a=1\\nb=2' contain a control character",
                "dispatcher row id=9: setid 4294967296 is larger than 4294967295",
                "dispatcher row id=9: destination 'sip:' has no host",
                "dispatcher row id=10: destination 'sip:a b' contains blanks or control characters",
                "dispatcher row id=11: destination 'sip:user@;x' has no host",
            ]
        );
    }

    #[test]
    fn null_rules() {
        let ok = finish_row(Ok(Some(4)), || {
            Ok(RawRow {
                setid: Some(1),
                destination: Some("sip:a".into()),
                flags: None,
                priority: None,
                attrs: None,
                description: None,
            })
        })
        .unwrap();
        assert_eq!(ok, row(4, 1, "sip:a"));
        let e = finish_row(Ok(Some(5)), || {
            Ok(RawRow {
                setid: Some(1),
                destination: None,
                flags: None,
                priority: None,
                attrs: None,
                description: None,
            })
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "dispatcher row id=5: destination is NULL");
        let e = finish_row(Ok(None), || unreachable!()).unwrap_err();
        assert_eq!(e.to_string(), "dispatcher row id=0: id is NULL");
        let e = finish_row(Ok(Some(6)), || Err("mismatched types".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "dispatcher row id=6: unreadable column: mismatched types"
        );
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        let secs: Vec<u64> = (0..10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
    }

    /// Scripted reads; records the (paused) tokio time of each.
    struct Script {
        results: VecDeque<Result<Vec<DbRow>, SourceError>>,
        calls: Arc<Mutex<Vec<tokio::time::Instant>>>,
    }

    impl Fetch for Script {
        fn fetch(&mut self) -> impl Future<Output = Result<Vec<DbRow>, SourceError>> + Send {
            self.calls.lock().unwrap().push(tokio::time::Instant::now());
            let r = self.results.pop_front().unwrap_or_else(|| {
                Err(SourceError::Connect {
                    url_redacted: "test://".into(),
                    reason: "script exhausted".into(),
                })
            });
            std::future::ready(r)
        }
        fn describe(&self) -> String {
            "script".into()
        }
    }

    fn down() -> Result<Vec<DbRow>, SourceError> {
        Err(SourceError::Connect {
            url_redacted: "postgres://u:***@h/db".into(),
            reason: "connection refused".into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn resync_backs_off_keeps_table_and_reports_change() {
        let a = vec![row(1, 1, "sip:a")];
        let b = vec![row(1, 1, "sip:a"), row(2, 1, "sip:b")];
        let calls = Arc::new(Mutex::new(Vec::new()));
        let script = Script {
            results: VecDeque::from(vec![
                Ok(a.clone()),
                down(),
                down(),
                down(),
                Ok(vec![row(1, -1, "sip:a")]), // bad data counts as a failure
                Ok(a.clone()),
                Ok(b.clone()),
            ]),
            calls: calls.clone(),
        };
        let start = tokio::time::Instant::now();
        let mut r = Resync::new(
            script,
            rows_to_defs(&a).unwrap(),
            Origin::Database,
            Duration::from_secs(30),
        );
        assert_eq!(r.next_delay(), Some(Duration::from_secs(30)));
        let changed = r.next_change().await;
        assert_eq!(changed, rows_to_defs(&b).unwrap());
        assert_eq!(r.current(), &changed[..]);
        assert_eq!(r.consecutive_failures(), 0);
        assert_eq!(r.last_error(), None);
        let at: Vec<u64> = calls
            .lock()
            .unwrap()
            .iter()
            .map(|t| (*t - start).as_secs())
            .collect();
        // 30: unchanged; 60: down; +1, +2: down; +4: bad rows; +8: same as
        // before (healthy again); +30: changed.
        assert_eq!(at, [30, 60, 61, 63, 67, 75, 105]);
    }

    #[tokio::test]
    async fn resync_on_fetch_states() {
        let a = vec![row(1, 1, "sip:a")];
        let script = Script {
            results: VecDeque::new(),
            calls: Arc::default(),
        };
        let mut r = Resync::new(script, vec![], Origin::Snapshot, Duration::ZERO);
        assert_eq!(r.next_delay(), Some(Duration::from_secs(1)));
        match r.on_fetch(down()) {
            ResyncOutcome::Failed { error, retry_in } => {
                assert_eq!(retry_in, Duration::from_secs(2));
                assert!(error.contains("connection refused"), "{error}");
                assert_eq!(r.last_error(), Some(error.as_str()));
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(r.consecutive_failures(), 2);
        assert_eq!(
            r.on_fetch(Ok(a.clone())),
            ResyncOutcome::Changed(rows_to_defs(&a).unwrap())
        );
        assert_eq!(r.on_fetch(Ok(a)), ResyncOutcome::Unchanged);
        // Healthy with interval zero: on demand only.
        assert_eq!(r.next_delay(), None);
        match r.on_fetch(Ok(vec![row(3, 1, "tel:1")])) {
            ResyncOutcome::Failed { error, .. } => {
                assert!(error.contains("dispatcher row id=3"), "{error}")
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(r.current().len(), 1);
        // poll() goes through the fetcher (exhausted script: a failure).
        assert!(matches!(r.poll().await, ResyncOutcome::Failed { .. }));
        assert_eq!(r.consecutive_failures(), 2);
    }
}
