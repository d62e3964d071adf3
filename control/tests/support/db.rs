//! Private PostgreSQL and MariaDB servers for tests: a fresh data directory
//! under the system temp dir, loopback only, a free port, real password
//! authentication. Each server is stopped (and its data removed) on `Drop`, and
//! dies with the test binary if that is killed (parent-death signal).
//!
//! The servers are the distribution's binaries (`make deps` installs them); a
//! missing binary fails the test with a message saying so, never skips it.
//!
//! Running as root: PostgreSQL refuses to run as root, so `initdb` and
//! `postgres` are started with the uid/gid of the `postgres` system user (set in
//! the child before exec, so the child's pid is the server's pid). MariaDB runs
//! as root when told `--user=root`.

#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::{ConnectOptions, Connection, Executor};

/// How long a server gets to come up (the machine may be busy compiling).
const START_TIMEOUT: Duration = Duration::from_secs(90);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh, empty directory under the system temp dir. Directories a killed
/// test run left behind (their pid is gone) are removed first.
fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    remove_stale(tag);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "sipvane-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Removes `sipvane-{tag}-{pid}-…` directories whose process no longer exists.
pub fn remove_stale(tag: &str) {
    let prefix = format!("sipvane-{tag}-");
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn find_in(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    dirs.iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Kills the child with SIGKILL if the spawning thread (the test) dies.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    // Closures run after the uid switch, which would otherwise clear the setting.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

fn run(cmd: &mut Command, what: &str, log: &Path) {
    let out = fs::File::create(log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !status.success() {
        panic!("{what} failed ({status}):\n{}", tail(log));
    }
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// Sends `sig`, waits up to 15 s for the exit, then SIGKILLs.
fn stop_child(child: &mut Child, sig: libc::c_int) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
    unsafe {
        libc::kill(pid, sig);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Retries connecting with `try_connect` until it works, the child exits, or
/// the start timeout passes.
async fn wait_ready<F, Fut>(child: &mut Child, log: &Path, what: &str, mut try_connect: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let err = match try_connect().await {
            Ok(()) => return,
            Err(e) => e,
        };
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up ({status}):\n{}", tail(log));
        }
        if Instant::now() > deadline {
            panic!(
                "{what} not ready after {START_TIMEOUT:?} (last error: {err}):\n{}",
                tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A private PostgreSQL server.
pub struct Postgres {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    server: PathBuf,
    data: PathBuf,
    ids: Option<(u32, u32)>,
}

/// Superuser of the private PostgreSQL server.
pub const PG_ADMIN: &str = "sipvane_admin";
/// Its password.
pub const PG_ADMIN_PASSWORD: &str = "admin-Pw-1";

impl Postgres {
    /// initdb + start; ready for connections when it returns.
    pub async fn start() -> Postgres {
        let bin = pg_bin_dir();
        let initdb = bin.join("initdb");
        let postgres = bin.join("postgres");
        if !initdb.is_file() || !postgres.is_file() {
            panic!(
                "PostgreSQL server binaries (initdb, postgres) not found in {}: run `make deps`",
                bin.display()
            );
        }
        let dir = scratch_dir("pg");
        let ids = if is_root() {
            let ids = system_user("postgres").unwrap_or_else(|| {
                panic!("running as root but there is no `postgres` system user: run `make deps`")
            });
            chown(&dir, Some(ids.0), Some(ids.1)).expect("chown the PostgreSQL scratch dir");
            Some(ids)
        } else {
            None
        };
        let as_server_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = ids {
                cmd.uid(uid).gid(gid);
            }
            cmd.env("HOME", &dir).current_dir(&dir);
        };
        let pwfile = dir.join("pw");
        fs::write(&pwfile, PG_ADMIN_PASSWORD).expect("write pwfile");
        if let Some((uid, gid)) = ids {
            chown(&pwfile, Some(uid), Some(gid)).expect("chown pwfile");
        }
        let data = dir.join("data");
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-U",
                PG_ADMIN,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            // No fsync: the data is thrown away, and it saves seconds.
            .args(["--no-sync", "-E", "UTF8", "--locale=C"]);
        as_server_user(&mut cmd);
        run(&mut cmd, "initdb", &dir.join("initdb.log"));

        let port = free_port();
        let child = Self::serve(&postgres, &dir, &data, port, ids).await;
        Postgres {
            port,
            dir,
            child: Some(child),
            server: postgres,
            data,
            ids,
        }
    }

    /// Starts the server on `data` and waits until it accepts connections.
    async fn serve(
        postgres: &Path,
        dir: &Path,
        data: &Path,
        port: u16,
        ids: Option<(u32, u32)>,
    ) -> Child {
        let as_server_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = ids {
                cmd.uid(uid).gid(gid);
            }
            cmd.env("HOME", dir).current_dir(dir);
        };
        let log = dir.join("postgres.log");
        let out = fs::File::create(&log).expect("create postgres.log");
        if let Some((uid, gid)) = ids {
            chown(&log, Some(uid), Some(gid)).expect("chown postgres.log");
        }
        let err = out.try_clone().expect("clone log");
        let mut cmd = Command::new(postgres);
        cmd.arg("-D")
            .arg(data)
            .arg("-p")
            .arg(port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "synchronous_commit=off", "-c", "max_connections=20"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        as_server_user(&mut cmd);
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", postgres.display()));
        let admin = Self::url_for(port, PG_ADMIN, PG_ADMIN_PASSWORD, "postgres");
        wait_ready(&mut child, &log, "postgres", || {
            let admin = admin.clone();
            async move {
                let opts = sqlx::postgres::PgConnectOptions::from_str(&admin)
                    .map_err(|e| e.to_string())?
                    .disable_statement_logging();
                let c = sqlx::PgConnection::connect_with(&opts)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = c.close().await;
                Ok(())
            }
        })
        .await;
        child
    }

    /// Starts a server [`stop`](Self::stop)ped earlier again, on the same
    /// data and port (the end of a database outage in a test).
    pub async fn resume(&mut self) {
        if self.child.is_none() {
            let child = Self::serve(&self.server, &self.dir, &self.data, self.port, self.ids).await;
            self.child = Some(child);
        }
    }

    /// `postgres://user:password@127.0.0.1:port/db`.
    pub fn url_for(port: u16, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{port}/{db}")
    }

    /// URL of this server for `user` / `password` / `db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        Self::url_for(self.port, user, password, db)
    }

    /// Superuser URL for database `db`.
    pub fn admin_url(&self, db: &str) -> String {
        self.url(PG_ADMIN, PG_ADMIN_PASSWORD, db)
    }

    /// Runs each statement on `db` as the superuser.
    pub async fn exec(&self, db: &str, statements: &[&str]) {
        exec_pg(&self.admin_url(db), statements).await;
    }

    /// Fast shutdown (SIGINT), then SIGKILL if it lingers. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, libc::SIGINT);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs statements on a PostgreSQL URL, panicking with the statement on error.
pub async fn exec_pg(url: &str, statements: &[&str]) {
    let opts = sqlx::postgres::PgConnectOptions::from_str(url)
        .expect("test URL")
        .disable_statement_logging();
    let mut c = sqlx::PgConnection::connect_with(&opts)
        .await
        .unwrap_or_else(|e| panic!("connect for setup: {e}"));
    for s in statements {
        c.execute(*s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let _ = c.close().await;
}

/// `/usr/lib/postgresql/<highest version>/bin`, else the directory of `initdb`
/// on PATH, else the Debian location for the message.
fn pg_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    find_in(&[], "initdb")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// (uid, gid) of a system user, from /etc/passwd.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        if f.next()? != name {
            return None;
        }
        let _pw = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// A private MariaDB server.
pub struct MariaDb {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    server: PathBuf,
    data: PathBuf,
    root: bool,
}

impl MariaDb {
    /// mariadb-install-db + start; ready for connections when it returns. The
    /// `root` account has no password and is reachable from 127.0.0.1 only.
    pub async fn start() -> MariaDb {
        let server = find_in(&[], "mariadbd")
            .or_else(|| find_in(&[], "mysqld"))
            .unwrap_or_else(|| panic!("MariaDB server (mariadbd) not found: run `make deps`"));
        let install = find_in(&[], "mariadb-install-db")
            .or_else(|| find_in(&[], "mysql_install_db"))
            .unwrap_or_else(|| panic!("mariadb-install-db not found: run `make deps`"));
        let dir = scratch_dir("mariadb");
        let data = dir.join("data");
        let root = is_root();
        let mut cmd = Command::new(&install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]);
        if root {
            cmd.arg("--user=root");
        }
        cmd.current_dir(&dir);
        run(&mut cmd, "mariadb-install-db", &dir.join("install.log"));

        let port = free_port();
        let child = Self::serve(&server, &dir, &data, port, root).await;
        MariaDb {
            port,
            dir,
            child: Some(child),
            server,
            data,
            root,
        }
    }

    /// Starts the server on `data` and waits until it accepts connections.
    async fn serve(server: &Path, dir: &Path, data: &Path, port: u16, root: bool) -> Child {
        let log = dir.join("mariadbd.log");
        let mut cmd = Command::new(server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
            ])
            .args(["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M"])
            .args([
                "--innodb-flush-log-at-trx-commit=0",
                "--skip-performance-schema",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir(dir);
        if root {
            cmd.arg("--user=root");
        }
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
        let admin = format!("mysql://root@127.0.0.1:{port}/mysql");
        wait_ready(&mut child, &log, "mariadbd", || {
            let admin = admin.clone();
            async move {
                let opts = sqlx::mysql::MySqlConnectOptions::from_str(&admin)
                    .map_err(|e| e.to_string())?
                    .disable_statement_logging();
                let c = sqlx::MySqlConnection::connect_with(&opts)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = c.close().await;
                Ok(())
            }
        })
        .await;
        child
    }

    /// Starts a server [`stop`](Self::stop)ped earlier again, on the same
    /// data and port (the end of a database outage in a test).
    pub async fn resume(&mut self) {
        if self.child.is_none() {
            let child =
                Self::serve(&self.server, &self.dir, &self.data, self.port, self.root).await;
            self.child = Some(child);
        }
    }

    /// `scheme://user:password@127.0.0.1:port/db`.
    pub fn url(&self, scheme: &str, user: &str, password: &str, db: &str) -> String {
        format!("{scheme}://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs each statement as root (database `db`, or none if empty).
    pub async fn exec(&self, db: &str, statements: &[&str]) {
        let url = format!("mysql://root@127.0.0.1:{}/{db}", self.port);
        exec_mysql(&url, statements).await;
    }

    /// Graceful shutdown (SIGTERM), then SIGKILL if it lingers. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, libc::SIGTERM);
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs statements on a MySQL URL, panicking with the statement on error.
pub async fn exec_mysql(url: &str, statements: &[&str]) {
    let opts = sqlx::mysql::MySqlConnectOptions::from_str(url)
        .expect("test URL")
        .disable_statement_logging();
    let mut c = sqlx::MySqlConnection::connect_with(&opts)
        .await
        .unwrap_or_else(|e| panic!("connect for setup: {e}"));
    for s in statements {
        c.execute(*s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let _ = c.close().await;
}

// Kamailio's utils/kamctl/postgres/{standard,dispatcher}-create.sql.
pub const PG_DDL: &[&str] = &[
    "CREATE TABLE version (
        table_name VARCHAR(32) NOT NULL,
        table_version INTEGER DEFAULT 0 NOT NULL,
        CONSTRAINT version_table_name_idx UNIQUE (table_name)
    )",
    "CREATE TABLE dispatcher (
        id SERIAL PRIMARY KEY NOT NULL,
        setid INTEGER DEFAULT 0 NOT NULL,
        destination VARCHAR(192) DEFAULT '' NOT NULL,
        flags INTEGER DEFAULT 0 NOT NULL,
        priority INTEGER DEFAULT 0 NOT NULL,
        attrs VARCHAR(128) DEFAULT '' NOT NULL,
        description VARCHAR(64) DEFAULT '' NOT NULL
    )",
    "INSERT INTO version (table_name, table_version) values ('dispatcher','4')",
];

// Kamailio's utils/kamctl/mysql/{standard,dispatcher}-create.sql.
pub const MYSQL_DDL: &[&str] = &[
    "CREATE TABLE `version` (
        `table_name` VARCHAR(32) NOT NULL,
        `table_version` INT UNSIGNED DEFAULT 0 NOT NULL,
        CONSTRAINT table_name_idx UNIQUE (`table_name`)
    )",
    "CREATE TABLE `dispatcher` (
        `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
        `setid` INT DEFAULT 0 NOT NULL,
        `destination` VARCHAR(192) DEFAULT '' NOT NULL,
        `flags` INT DEFAULT 0 NOT NULL,
        `priority` INT DEFAULT 0 NOT NULL,
        `attrs` VARCHAR(128) DEFAULT '' NOT NULL,
        `description` VARCHAR(64) DEFAULT '' NOT NULL
    )",
    "INSERT INTO version (table_name, table_version) values ('dispatcher','4')",
];

/// The current-thread runtime the database helpers run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A private PostgreSQL or MariaDB server holding a `kamailio` database
/// made from Kamailio's own schema files, as the database tests use it.
pub enum KamailioDb {
    Pg(Postgres),
    My(MariaDb),
}

impl KamailioDb {
    /// `postgres` or `mysql`: the directory of the schema files.
    pub fn kind(&self) -> &'static str {
        match self {
            KamailioDb::Pg(_) => "postgres",
            KamailioDb::My(_) => "mysql",
        }
    }

    /// What sipvane connects with (database `kamailio`).
    pub fn url(&self) -> String {
        match self {
            KamailioDb::Pg(p) => p.admin_url("kamailio"),
            KamailioDb::My(m) => format!("mysql://root@127.0.0.1:{}/kamailio", m.port),
        }
    }

    pub async fn exec(&self, db: &str, statements: &[&str]) {
        match self {
            KamailioDb::Pg(p) => p.exec(db, statements).await,
            KamailioDb::My(m) => m.exec(db, statements).await,
        }
    }

    pub fn stop(&mut self) {
        match self {
            KamailioDb::Pg(p) => p.stop(),
            KamailioDb::My(m) => m.stop(),
        }
    }

    pub async fn resume(&mut self) {
        match self {
            KamailioDb::Pg(p) => p.resume().await,
            KamailioDb::My(m) => m.resume().await,
        }
    }

    /// Creates database `kamailio` from the schema `files` under
    /// `/usr/share/kamailio/<kind>/` (Debian's kamailio-postgres-modules /
    /// kamailio-mysql-modules), then runs `extra`.
    /// A private PostgreSQL with Kamailio's `standard`, `auth_db` and
    /// `usrloc` tables and one account, 6001@example.com (password
    /// `pw-6001`): what the registrar tests start from.
    pub fn pg_with_one_user(rt: &tokio::runtime::Runtime) -> KamailioDb {
        let db = KamailioDb::Pg(rt.block_on(Postgres::start()));
        rt.block_on(
            db.create_schema(
                &[
                    "standard-create.sql",
                    "auth_db-create.sql",
                    "usrloc-create.sql",
                ],
                &[
                    "INSERT INTO subscriber (username, domain, password) VALUES \
               ('6001', 'example.com', 'pw-6001')"
                        .to_owned(),
                ],
            ),
        );
        db
    }

    pub async fn create_schema(&self, files: &[&str], extra: &[String]) {
        let admin_db = match self {
            KamailioDb::Pg(_) => "postgres",
            KamailioDb::My(_) => "",
        };
        self.exec(admin_db, &["CREATE DATABASE kamailio"]).await;
        let mut statements = Vec::new();
        for file in files {
            let path = Path::new("/usr/share/kamailio")
                .join(self.kind())
                .join(file);
            let sql = fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; install kamailio-postgres-modules and kamailio-mysql-modules (make deps)",
                    path.display()
                )
            });
            statements.extend(
                sql.split(';')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
        statements.extend(extra.iter().cloned());
        let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
        self.exec("kamailio", &refs).await;
    }

    /// The SQL type to CAST a column to for reading it as text.
    pub fn text_type(&self) -> &'static str {
        match self {
            KamailioDb::Pg(_) => "TEXT",
            KamailioDb::My(_) => "CHAR",
        }
    }

    /// The first `cols` columns of every row `sql` returns, as text.
    pub async fn query(&self, sql: &str, cols: usize) -> Vec<Vec<String>> {
        use sqlx::Row;
        let url = self.url();
        match self {
            KamailioDb::Pg(_) => {
                let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
                    .unwrap()
                    .disable_statement_logging();
                let mut c = sqlx::PgConnection::connect_with(&opts).await.unwrap();
                let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
                let _ = c.close().await;
                rows.iter()
                    .map(|r| (0..cols).map(|i| r.get::<String, _>(i)).collect())
                    .collect()
            }
            KamailioDb::My(_) => {
                let opts = sqlx::mysql::MySqlConnectOptions::from_str(&url)
                    .unwrap()
                    .disable_statement_logging();
                let mut c = sqlx::MySqlConnection::connect_with(&opts).await.unwrap();
                let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
                let _ = c.close().await;
                rows.iter()
                    .map(|r| (0..cols).map(|i| r.get::<String, _>(i)).collect())
                    .collect()
            }
        }
    }
}
