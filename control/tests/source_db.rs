//! Database dispatcher sources against real servers: a private PostgreSQL and a
//! private MariaDB holding Kamailio's `dispatcher` table, created with
//! Kamailio's own DDL. One test per server runs every scenario in sequence so
//! each server starts once.

#[path = "support/db.rs"]
mod db_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use control::source::db::{
    fetch, initial_load, rows_to_defs, DbFetch, DbRow, Origin, Resync, ResyncOutcome, RowDef,
    SourceError,
};
use control::source::snapshot::load_snapshot;
use db_support::{runtime, MariaDb, Postgres, MYSQL_DDL, PG_DDL};

/// The account sipvane reads with: SELECT only. Its password needs
/// percent-encoding in a URL (`!` → `%21`).
const USER: &str = "sipvane";
const PASSWORD: &str = "S3cr3t-Pw!";
const PASSWORD_IN_URL: &str = "S3cr3t-Pw%21";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Rows as an operator would have them; id 10 is inserted before id 4 so the
/// result order proves `ORDER BY id`.
const INSERTS: &[&str] = &[
    "INSERT INTO dispatcher (id, setid, destination, flags, priority, attrs, description) VALUES
        (1, 1, 'sip:10.0.0.1:5060', 0, 10, 'weight=50;duid=ast1;maxload=500', 'Asterisk één'),
        (2, 1, 'sip:10.0.0.2:5060', 8, 5, 'weight=50;duid=ast2;maxload=500', ''),
        (3, 2, 'sips:fs.example.com:5061;transport=tls', 0, 0, 'rweight=25', 'FreeSWITCH'),
        (10, 3, 'sip:backup.example.com', 0, -1, 'duid=b', 'backup')",
    // Older or hand-made tables allow NULL attrs/description.
    "INSERT INTO dispatcher (id, setid, destination, flags, priority, attrs, description) VALUES
        (4, 2, 'sip:10.0.0.4', 2, 0, NULL, NULL)",
];

fn row(id: i64, setid: i64, dest: &str, flags: i64, prio: i64, attrs: &str, desc: &str) -> DbRow {
    DbRow {
        id,
        setid,
        destination: dest.into(),
        flags,
        priority: prio,
        attrs: attrs.into(),
        description: desc.into(),
    }
}

fn expected_rows() -> Vec<DbRow> {
    vec![
        row(
            1,
            1,
            "sip:10.0.0.1:5060",
            0,
            10,
            "weight=50;duid=ast1;maxload=500",
            "Asterisk één",
        ),
        row(
            2,
            1,
            "sip:10.0.0.2:5060",
            8,
            5,
            "weight=50;duid=ast2;maxload=500",
            "",
        ),
        row(
            3,
            2,
            "sips:fs.example.com:5061;transport=tls",
            0,
            0,
            "rweight=25",
            "FreeSWITCH",
        ),
        row(4, 2, "sip:10.0.0.4", 2, 0, "", ""),
        row(10, 3, "sip:backup.example.com", 0, -1, "duid=b", "backup"),
    ]
}

/// After `CHANGES`.
fn changed_rows() -> Vec<DbRow> {
    vec![
        row(
            1,
            1,
            "sip:10.0.0.1:5060",
            0,
            10,
            "weight=60;duid=ast1;maxload=500",
            "Asterisk één",
        ),
        row(
            3,
            2,
            "sips:fs.example.com:5061;transport=tls",
            0,
            0,
            "rweight=25",
            "FreeSWITCH",
        ),
        row(4, 2, "sip:10.0.0.4", 2, 0, "", ""),
        row(
            5,
            1,
            "sip:10.0.0.5:5060",
            0,
            10,
            "weight=40;duid=ast5",
            "new box",
        ),
        row(10, 3, "sip:backup.example.com", 0, -1, "duid=b", "backup"),
    ]
}

const CHANGES: &[&str] = &[
    "UPDATE dispatcher SET attrs = 'weight=60;duid=ast1;maxload=500' WHERE id = 1",
    "DELETE FROM dispatcher WHERE id = 2",
    "INSERT INTO dispatcher (id, setid, destination, flags, priority, attrs, description) VALUES
        (5, 1, 'sip:10.0.0.5:5060', 0, 10, 'weight=40;duid=ast5', 'new box')",
];

fn defs(rows: &[DbRow]) -> Vec<RowDef> {
    rows_to_defs(rows).expect("valid rows")
}

/// One private server of either kind.
enum Server {
    Pg(Postgres),
    Maria(MariaDb),
}

impl Server {
    fn url(&self, password: &str) -> String {
        match self {
            Server::Pg(s) => s.url(USER, password, "kamailio"),
            Server::Maria(s) => s.url("mysql", USER, password, "kamailio"),
        }
    }

    /// The same database under the other scheme spelling.
    fn alt_url(&self) -> String {
        match self {
            Server::Pg(s) => {
                s.url(USER, PASSWORD_IN_URL, "kamailio")
                    .replacen("postgres://", "postgresql://", 1)
            }
            Server::Maria(s) => s.url("mariadb", USER, PASSWORD_IN_URL, "kamailio"),
        }
    }

    async fn exec(&self, statements: &[&str]) {
        match self {
            Server::Pg(s) => s.exec("kamailio", statements).await,
            Server::Maria(s) => s.exec("kamailio", statements).await,
        }
    }

    fn stop(&mut self) {
        match self {
            Server::Pg(s) => s.stop(),
            Server::Maria(s) => s.stop(),
        }
    }
}

fn scratch(tag: &str) -> PathBuf {
    db_support::remove_stale(&format!("source-db-{tag}"));
    let dir = std::env::temp_dir().join(format!("sipvane-source-db-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn assert_no_password(msg: &str) {
    for secret in [PASSWORD, PASSWORD_IN_URL, "S3cr3t", "wr0ng-Secret"] {
        assert!(!msg.contains(secret), "message leaks the password: {msg}");
    }
}

#[test]
fn postgres_dispatcher_table() {
    runtime().block_on(async {
        let pg = Postgres::start().await;
        pg.exec(
            "postgres",
            &[
                &format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"),
                "CREATE DATABASE kamailio",
            ],
        )
        .await;
        pg.exec("kamailio", PG_DDL).await;
        pg.exec(
            "kamailio",
            &["ALTER TABLE dispatcher ALTER COLUMN attrs DROP NOT NULL, \
               ALTER COLUMN description DROP NOT NULL"],
        )
        .await;
        pg.exec("kamailio", INSERTS).await;
        let second: Vec<String> = PG_DDL[1..2]
            .iter()
            .map(|s| s.replace("dispatcher", "dispatcher_b"))
            .collect();
        pg.exec(
            "kamailio",
            &[
                &second[0],
                "INSERT INTO dispatcher_b (setid, destination) VALUES (7, 'sip:b.example')",
            ],
        )
        .await;
        // sipvane needs nothing but SELECT.
        pg.exec(
            "kamailio",
            &[&format!(
                "GRANT SELECT ON dispatcher, dispatcher_b TO {USER}"
            )],
        )
        .await;
        scenarios(Server::Pg(pg), "pg").await;
    });
}

#[test]
fn mariadb_dispatcher_table() {
    runtime().block_on(async {
        let my = MariaDb::start().await;
        my.exec(
            "",
            &[
                "CREATE DATABASE kamailio",
                &format!("CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'"),
                &format!("GRANT SELECT ON kamailio.* TO '{USER}'@'%'"),
            ],
        )
        .await;
        my.exec("kamailio", MYSQL_DDL).await;
        my.exec(
            "kamailio",
            &[
                "ALTER TABLE dispatcher MODIFY attrs VARCHAR(128) NULL DEFAULT '', \
               MODIFY description VARCHAR(64) NULL DEFAULT ''",
            ],
        )
        .await;
        my.exec("kamailio", INSERTS).await;
        let second = MYSQL_DDL[1].replace("`dispatcher`", "`dispatcher_b`");
        my.exec(
            "kamailio",
            &[
                &second,
                "INSERT INTO dispatcher_b (setid, destination) VALUES (7, 'sip:b.example')",
            ],
        )
        .await;
        scenarios(Server::Maria(my), "maria").await;
    });
}

async fn scenarios(mut srv: Server, tag: &str) {
    let dir = scratch(tag);
    let url = srv.url(PASSWORD_IN_URL);
    let snap = dir.join("dispatcher.snapshot");

    // Read the table as Kamailio's module would.
    let rows = fetch(&url, "dispatcher", TIMEOUT).await.expect("fetch");
    assert_eq!(rows, expected_rows());
    let rows_alt = fetch(&srv.alt_url(), "dispatcher", TIMEOUT)
        .await
        .expect("fetch via the other scheme");
    assert_eq!(rows_alt, expected_rows());
    let b = fetch(&url, "dispatcher_b", TIMEOUT)
        .await
        .expect("fetch dispatcher_b");
    assert_eq!(b, vec![row(1, 7, "sip:b.example", 0, 0, "", "")]);

    let first = defs(&rows);
    assert_eq!(
        first[0],
        RowDef {
            set: 1,
            uri: "sip:10.0.0.1:5060".into(),
            flags: 0,
            priority: 10,
            attrs_raw: "weight=50;duid=ast1;maxload=500".into(),
            description: "Asterisk één".into(),
            row_id: 1,
        }
    );

    // Start-up with the database up: its rows, and a snapshot.
    let (loaded, origin) = initial_load(&url, "dispatcher", Some(&snap), TIMEOUT)
        .await
        .expect("initial_load");
    assert_eq!(origin, Origin::Database);
    assert_eq!(loaded, first);
    assert_eq!(load_snapshot(&snap).expect("snapshot"), first);
    let text = std::fs::read_to_string(&snap).expect("snapshot text");
    assert!(text.contains(&format!("{USER}:***@127.0.0.1")), "{text}");
    assert!(
        text.contains("1 sip:10.0.0.1:5060 0 10 weight=50;duid=ast1;maxload=500\n"),
        "{text}"
    );
    assert_no_password(&text);

    // Resync: unchanged, then changed.
    let fetcher = DbFetch {
        url: url.clone(),
        table: "dispatcher".into(),
        timeout: TIMEOUT,
    };
    let mut rs =
        Resync::new(fetcher, loaded, origin, Duration::from_millis(100)).with_snapshot(&snap);
    assert_eq!(rs.poll().await, ResyncOutcome::Unchanged);
    srv.exec(CHANGES).await;
    let changed = defs(&changed_rows());
    assert_eq!(rs.poll().await, ResyncOutcome::Changed(changed.clone()));
    assert_eq!(rs.poll().await, ResyncOutcome::Unchanged);
    assert_eq!(load_snapshot(&snap).expect("snapshot"), changed);

    // The periodic loop (real time, 100 ms interval) sees the next change.
    srv.exec(&["UPDATE dispatcher SET priority = 11 WHERE id = 5"])
        .await;
    let next = tokio::time::timeout(Duration::from_secs(20), rs.next_change())
        .await
        .expect("next_change within 20 s");
    assert_eq!(
        next.iter().find(|d| d.row_id == 5).map(|d| d.priority),
        Some(11)
    );
    srv.exec(&["UPDATE dispatcher SET priority = 10 WHERE id = 5"])
        .await;
    assert_eq!(rs.poll().await, ResyncOutcome::Changed(changed.clone()));

    // A bad row: the current table stays, the error names the row.
    srv.exec(&["INSERT INTO dispatcher (id, setid, destination) VALUES (6, -1, 'sip:x')"])
        .await;
    match rs.poll().await {
        ResyncOutcome::Failed { error, retry_in } => {
            assert!(
                error.contains("dispatcher row id=6: setid -1 is negative"),
                "{error}"
            );
            assert_eq!(retry_in, Duration::from_secs(1));
        }
        o => panic!("expected a failure, got {o:?}"),
    }
    assert_eq!(rs.current(), &changed[..]);
    assert_eq!(load_snapshot(&snap).expect("snapshot"), changed);
    let e = initial_load(&url, "dispatcher", Some(&snap), TIMEOUT)
        .await
        .expect_err("bad rows refuse start-up");
    assert!(
        e.contains("dispatcher row id=6: setid -1 is negative"),
        "{e}"
    );
    assert_no_password(&e);
    srv.exec(&["DELETE FROM dispatcher WHERE id = 6"]).await;
    assert_eq!(rs.poll().await, ResyncOutcome::Unchanged);
    assert_eq!(rs.consecutive_failures(), 0);

    // Wrong password and missing table: clear errors, no password.
    let bad_url = srv.url("wr0ng-Secret");
    let e = fetch(&bad_url, "dispatcher", TIMEOUT)
        .await
        .expect_err("wrong password");
    assert!(matches!(e, SourceError::Connect { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("{USER}:***@127.0.0.1")), "{msg}");
    assert!(
        msg.to_lowercase().contains("denied") || msg.contains("authentication"),
        "{msg}"
    );
    assert_no_password(&msg);
    assert_no_password(&format!("{e:?}"));
    let e = fetch(&url, "no_such_table", TIMEOUT)
        .await
        .expect_err("missing table");
    assert!(matches!(e, SourceError::Query { .. }), "{e:?}");
    assert!(e.to_string().contains("no_such_table"), "{e}");
    assert_no_password(&e.to_string());

    // Database down: fetch fails fast, start-up falls back to the snapshot,
    // resync keeps the current table.
    srv.stop();
    let t0 = Instant::now();
    let e = fetch(&url, "dispatcher", TIMEOUT)
        .await
        .expect_err("server stopped");
    assert!(matches!(e, SourceError::Connect { .. }), "{e:?}");
    assert!(e.is_unavailable());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_no_password(&e.to_string());

    let (fallback, origin) = initial_load(&url, "dispatcher", Some(&snap), TIMEOUT)
        .await
        .expect("snapshot fallback");
    assert_eq!(origin, Origin::Snapshot);
    assert_eq!(fallback, changed);

    match rs.poll().await {
        ResyncOutcome::Failed { error, .. } => {
            assert!(error.contains("cannot connect"), "{error}");
            assert_no_password(&error);
        }
        o => panic!("expected a failure, got {o:?}"),
    }
    assert_eq!(rs.current(), &changed[..]);
    assert_eq!(load_snapshot(&snap).expect("snapshot kept"), changed);

    // No snapshot at all: an error that says what failed and that none exists.
    let e = initial_load(&url, "dispatcher", None, TIMEOUT)
        .await
        .expect_err("no db, no snapshot");
    assert!(e.contains("cannot connect to"), "{e}");
    assert!(e.contains("no snapshot to fall back on"), "{e}");
    assert!(e.contains("snapshot_path is not set"), "{e}");
    assert!(e.contains(&format!("{USER}:***@")), "{e}");
    assert_no_password(&e);
    let missing = dir.join("missing.snapshot");
    let e = initial_load(&url, "dispatcher", Some(&missing), TIMEOUT)
        .await
        .expect_err("no db, missing snapshot");
    assert!(
        e.contains(&format!("{} does not exist", missing.display())),
        "{e}"
    );
    assert_no_password(&e);

    drop(srv);
    cleanup(&dir);
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// A server that accepts TCP connections but never says a word: both drivers
/// must give up after the timeout instead of hanging.
#[test]
fn connect_timeout_and_refused() {
    runtime().block_on(async {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = silent.local_addr().expect("addr").port();
        for scheme in ["postgres", "mysql"] {
            let url = format!("{scheme}://u:{PASSWORD_IN_URL}@127.0.0.1:{port}/db");
            let t0 = Instant::now();
            let e = fetch(&url, "dispatcher", Duration::from_millis(300))
                .await
                .expect_err("silent server");
            let elapsed = t0.elapsed();
            assert!(matches!(e, SourceError::Connect { .. }), "{e:?}");
            assert!(
                e.to_string().contains("connecting timed out after 300 ms"),
                "{e}"
            );
            assert!(
                elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
                "{elapsed:?}"
            );
            assert_no_password(&e.to_string());
        }
        drop(silent);
        let closed = db_support::free_port();
        for scheme in ["postgresql", "mariadb"] {
            let url = format!("{scheme}://u:{PASSWORD_IN_URL}@127.0.0.1:{closed}/db");
            let e = fetch(&url, "dispatcher", Duration::from_secs(5))
                .await
                .expect_err("closed port");
            let msg = e.to_string();
            assert!(matches!(e, SourceError::Connect { .. }), "{e:?}");
            assert!(msg.to_lowercase().contains("refused"), "{msg}");
            assert!(
                msg.contains(&format!("{scheme}://u:***@127.0.0.1:{closed}/db")),
                "{msg}"
            );
            assert_no_password(&msg);
        }
    });
}
