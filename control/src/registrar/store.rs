//! The registrar's database: Kamailio's `subscriber` (read) and `location`
//! (read at start, written back) in PostgreSQL or MySQL / MariaDB.
//!
//! One connection, reopened after any failure; every statement bounded by
//! the timeout. Times are written and read as UTC `YYYY-MM-DD HH:MM:SS`
//! (Kamailio writes the server's local time: run the database host in UTC,
//! docs/registrar.md).

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use dataplane::registrar::{Binding, Bindings};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

use crate::source::db::{mysql_url, scrub, Backend};

/// One `subscriber` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub username: String,
    pub domain: String,
    pub password: String,
    pub ha1: String,
    pub ha1b: String,
}

/// One `location` row, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct LocationRow {
    pub username: String,
    /// Empty when Kamailio ran without `use_domain`.
    pub domain: String,
    pub binding: Binding,
}

enum Conn {
    Pg(PgConnection),
    My(MySqlConnection),
}

pub struct Store {
    url: String,
    backend: Backend,
    timeout: Duration,
    subscriber_table: String,
    location_table: String,
    max_subscribers: u32,
    conn: Option<Conn>,
}

/// Runs the same statements on either backend: `$c` is the connection (or
/// transaction), `$ph` turns a 1-based position into a placeholder.
macro_rules! on_backend {
    ($self:ident, |$c:ident, $ph:ident| $body:expr) => {
        match $self.connect().await? {
            Conn::Pg($c) => {
                let $ph = |i: usize| format!("${i}");
                $body
            }
            Conn::My($c) => {
                let $ph = |_: usize| "?".to_owned();
                $body
            }
        }
    };
}

impl Store {
    pub fn new(
        url: &str,
        timeout: Duration,
        subscriber_table: &str,
        location_table: &str,
        max_subscribers: u32,
    ) -> Option<Store> {
        Some(Store {
            url: url.to_owned(),
            backend: Backend::of(url)?,
            timeout,
            subscriber_table: subscriber_table.to_owned(),
            location_table: location_table.to_owned(),
            max_subscribers,
            conn: None,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> String {
        scrub(e.to_string(), &self.url)
    }

    async fn connect(&mut self) -> Result<&mut Conn, String> {
        if self.conn.is_none() {
            let limit = self.timeout;
            let conn = match self.backend {
                Backend::Postgres => {
                    let opts = PgConnectOptions::from_str(&self.url)
                        .map_err(|e| self.err(e))?
                        .disable_statement_logging();
                    let c = tokio::time::timeout(limit, PgConnection::connect_with(&opts))
                        .await
                        .map_err(|_| "connecting timed out".to_owned())?
                        .map_err(|e| self.err(e))?;
                    Conn::Pg(c)
                }
                Backend::Mysql => {
                    let opts = MySqlConnectOptions::from_str(&mysql_url(&self.url))
                        .map_err(|e| self.err(e))?
                        .disable_statement_logging();
                    let c = tokio::time::timeout(limit, MySqlConnection::connect_with(&opts))
                        .await
                        .map_err(|_| "connecting timed out".to_owned())?
                        .map_err(|e| self.err(e))?;
                    Conn::My(c)
                }
            };
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or_else(|| "no connection".to_owned())
    }

    /// Forgets the connection after a failure (the next call reconnects).
    fn failed(&mut self, e: String) -> String {
        self.conn = None;
        e
    }

    fn text(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "TEXT",
            Backend::Mysql => "CHAR",
        }
    }

    /// Every account (at most `max_subscribers`).
    pub async fn subscribers(&mut self) -> Result<Vec<Subscriber>, String> {
        let t = self.text();
        let sql = format!(
            "SELECT CAST(username AS {t}), CAST(COALESCE(domain, '') AS {t}), \
             CAST(password AS {t}), CAST(ha1 AS {t}), CAST(ha1b AS {t}) FROM {} LIMIT {}",
            self.subscriber_table, self.max_subscribers
        );
        let limit = self.timeout;
        let r: Result<Vec<Subscriber>, String> = on_backend!(self, |c, _ph| {
            let rows =
                tokio::time::timeout(limit, sqlx::query(&sql).persistent(false).fetch_all(c))
                    .await
                    .map_err(|_| "query timed out".to_owned())?
                    .map_err(|e| e.to_string());
            rows.map(|rows| {
                rows.iter()
                    .map(|r| Subscriber {
                        username: r.try_get(0).unwrap_or_default(),
                        domain: r.try_get(1).unwrap_or_default(),
                        password: r.try_get(2).unwrap_or_default(),
                        ha1: r.try_get(3).unwrap_or_default(),
                        ha1b: r.try_get(4).unwrap_or_default(),
                    })
                    .collect()
            })
        });
        r.map_err(|e| {
            let e = self.err(e);
            self.failed(e)
        })
    }

    /// The bindings that have not expired at `now_unix`.
    pub async fn location(&mut self, now_unix: u64) -> Result<Vec<LocationRow>, String> {
        let t = self.text();
        let sql = format!(
            "SELECT CAST(username AS {t}), CAST(COALESCE(domain, '') AS {t}), CAST(contact AS {t}), \
             CAST(COALESCE(received, '') AS {t}), CAST(COALESCE(path, '') AS {t}), \
             CAST(expires AS {t}), CAST(q AS {t}), CAST(callid AS {t}), CAST(cseq AS {t}), \
             CAST(user_agent AS {t}), CAST(ruid AS {t}), CAST(last_modified AS {t}) FROM {}",
            self.location_table
        );
        let limit = self.timeout;
        let r: Result<Vec<Vec<String>>, String> = on_backend!(self, |c, _ph| {
            tokio::time::timeout(limit, sqlx::query(&sql).persistent(false).fetch_all(c))
                .await
                .map_err(|_| "query timed out".to_owned())?
                .map_err(|e| e.to_string())
                .map(|rows| {
                    rows.iter()
                        .map(|r| (0..12).map(|i| r.try_get(i).unwrap_or_default()).collect())
                        .collect()
                })
        });
        let rows = r.map_err(|e| {
            let e = self.err(e);
            self.failed(e)
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|v| row_to_binding(&v))
            .filter(|r| r.binding.expires > now_unix)
            .collect())
    }

    /// Makes `location` hold exactly `bindings` for each AOR (`None`: no
    /// binding left), in one transaction: one `DELETE` and one multi-row
    /// `INSERT` per [`WRITE_CHUNK`] AORs rather than a round trip per row,
    /// so a write-back of thousands of re-registrations costs a few
    /// statements (parsing and sending each statement is most of the
    /// client's CPU).
    pub async fn write(&mut self, aors: &[(Box<str>, Option<Bindings>)]) -> Result<(), String> {
        let table = self.location_table.clone();
        let limit = self.timeout;
        let r: Result<(), String> = on_backend!(self, |c, ph| {
            let work = async {
                let mut tx = c.begin().await.map_err(|e| e.to_string())?;
                let time = |i: usize| match ph(1).as_str() {
                    "?" => "CAST(? AS DATETIME)".to_owned(),
                    _ => format!("CAST(${i} AS TIMESTAMP)"),
                };
                for chunk in aors.chunks(WRITE_CHUNK) {
                    let accounts: Vec<(&str, &str)> = chunk
                        .iter()
                        .map(|(aor, _)| aor.rsplit_once('@').unwrap_or((aor, "")))
                        .collect();
                    let delete = format!(
                        "DELETE FROM {table} WHERE (username, domain) IN ({})",
                        (0..accounts.len())
                            .map(|i| format!("({}, {})", ph(2 * i + 1), ph(2 * i + 2)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    let mut q = sqlx::query(&delete).persistent(false);
                    for (user, domain) in &accounts {
                        q = q.bind(*user).bind(*domain);
                    }
                    q.execute(&mut *tx).await.map_err(|e| e.to_string())?;
                    let rows: Vec<(&str, &str, &Binding)> = chunk
                        .iter()
                        .zip(&accounts)
                        .flat_map(|((_, bindings), (user, domain))| {
                            bindings
                                .iter()
                                .flat_map(|b| b.iter())
                                .map(move |b| (*user, *domain, b))
                        })
                        .collect();
                    for rows in rows.chunks(WRITE_CHUNK) {
                        let values = (0..rows.len())
                            .map(|r| {
                                let p = |k: usize| ph(12 * r + k);
                                format!(
                                    "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                                    p(1),
                                    p(2),
                                    p(3),
                                    p(4),
                                    p(5),
                                    p(6),
                                    time(12 * r + 7),
                                    p(8),
                                    p(9),
                                    p(10),
                                    time(12 * r + 11),
                                    p(12)
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ");
                        let insert = format!(
                            "INSERT INTO {table} (ruid, username, domain, contact, received, path, \
                             expires, q, callid, cseq, last_modified, user_agent) VALUES {values}"
                        );
                        let mut q = sqlx::query(&insert).persistent(false);
                        for (user, domain, b) in rows {
                            q = q
                                .bind(b.ruid.as_ref())
                                .bind(*user)
                                .bind(*domain)
                                .bind(b.contact.as_ref())
                                .bind(b.received_uri())
                                .bind((!b.path.is_empty()).then(|| b.path.to_string()))
                                .bind(crate::acc::row::sql_time(b.expires * 1000))
                                .bind(f32::from(b.q) / 1000.0)
                                .bind(b.call_id.as_ref())
                                .bind(i32::try_from(b.cseq).unwrap_or(i32::MAX))
                                .bind(crate::acc::row::sql_time(b.last_modified * 1000))
                                .bind(b.user_agent.as_ref());
                        }
                        q.execute(&mut *tx).await.map_err(|e| e.to_string())?;
                    }
                }
                tx.commit().await.map_err(|e| e.to_string())
            };
            tokio::time::timeout(limit, work)
                .await
                .map_err(|_| "write timed out".to_owned())?
        });
        r.map_err(|e| {
            let e = self.err(e);
            self.failed(e)
        })
    }
}

/// AORs per `DELETE` and rows per `INSERT` of a write-back: 12 bound values
/// a row keeps a statement well under the 65 535 parameters both
/// PostgreSQL and MySQL allow.
const WRITE_CHUNK: usize = 500;

/// A `location` row's text columns as a binding; `None` for a row sipvane
/// cannot use (unparsable expiry, an empty contact, control characters in
/// `path`).
fn row_to_binding(v: &[String]) -> Option<LocationRow> {
    let field = |i: usize| v.get(i).map(String::as_str).unwrap_or("");
    // A path with a line break would add header lines to every call.
    if field(2).is_empty() || !dataplane::registrar::path::sane(field(4)) {
        return None;
    }
    // `;transport=tcp|tls`: registered over a connection, which is gone
    // after a restart (calls to it fail at once until it registers again).
    let (received, stream): (Option<SocketAddr>, _) = match field(3) {
        "" => (None, None),
        r => {
            let uri = dataplane::sip::Uri::parse(r.as_bytes()).ok()?;
            let tls = dataplane::route::uri_secure(&uri);
            let stream = (tls || dataplane::route::uri_tcp(&uri))
                .then_some(dataplane::registrar::Stream { tls, worker: None });
            (dataplane::route::uri_addr(&uri), stream)
        }
    };
    let q = field(6)
        .trim()
        .parse::<f32>()
        .unwrap_or(1.0)
        .clamp(0.0, 1.0);
    Some(LocationRow {
        username: field(0).to_owned(),
        domain: field(1).to_owned(),
        binding: Binding {
            contact: field(2).into(),
            received,
            path: field(4).into(),
            expires: crate::utc::parse_sql_time(field(5))?,
            q: (q * 1000.0).round() as u16,
            call_id: field(7).into(),
            cseq: field(8).trim().parse().unwrap_or(1),
            user_agent: field(9).into(),
            ruid: field(10).into(),
            last_modified: crate::utc::parse_sql_time(field(11)).unwrap_or(0),
            stream,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_bindings() {
        let row: Vec<String> = [
            "6001",
            "example.com",
            "sip:6001@192.168.1.2:5060",
            "sip:203.0.113.5:40000",
            "",
            "2030-01-01 00:00:00",
            "0.5",
            "cid",
            "7",
            "ua",
            "uloc-1",
            "2029-12-31 23:00:00",
        ]
        .map(String::from)
        .to_vec();
        let r = row_to_binding(&row).unwrap();
        assert_eq!(
            r.binding.received,
            Some("203.0.113.5:40000".parse().unwrap())
        );
        assert_eq!(r.binding.stream, None);
        assert_eq!((r.binding.q, r.binding.cseq), (500, 7));
        // Registered over TLS before the restart: known as such, its
        // connection gone (no owner).
        let mut tls = row.clone();
        tls[3] = "sip:203.0.113.5:40000;transport=tls".into();
        let r = row_to_binding(&tls).unwrap();
        assert_eq!(
            r.binding.stream,
            Some(dataplane::registrar::Stream {
                tls: true,
                worker: None
            })
        );
        assert_eq!(
            r.binding.received_uri().as_deref(),
            Some("sip:203.0.113.5:40000;transport=tls")
        );
        assert_eq!(r.binding.expires, 1_893_456_000);
        let mut bad = row.clone();
        bad[5] = "never".into();
        assert!(row_to_binding(&bad).is_none());
        let mut no_contact = row;
        no_contact[2] = String::new();
        assert!(row_to_binding(&no_contact).is_none());
    }
}
