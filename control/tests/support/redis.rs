//! A throwaway `redis-server` for integration tests: free port, temporary directory,
//! killed on drop, restartable on the same port (to test reconnects).
//!
//! Include with `#[path = "support/redis.rs"] mod redis_support;`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a fresh server gets to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running (or deliberately stopped) redis-server owned by one test.
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

/// The `redis-server` binary: `$SIPVANE_REDIS_SERVER` if it exists, else the first on
/// `PATH`, else the usual install locations. Panics (failing the test, never skipping it) when absent.
pub fn redis_server_bin() -> PathBuf {
    let explicit = std::env::var_os("SIPVANE_REDIS_SERVER").map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("redis-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    explicit
        .into_iter()
        .chain(on_path)
        .chain(["/usr/bin/redis-server", "/usr/local/bin/redis-server"].map(PathBuf::from))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("redis-server not found: run `make deps`"))
}

fn free_port() -> u16 {
    // The port is free when we look; a race with another process is possible but rare,
    // and `start` retries on a fresh port if the server cannot bind.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free TCP port")
}

fn temp_dir(port: u16) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sipvane-redis-{}-{}-{}",
        std::process::id(),
        port,
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("cannot create redis temp dir");
    dir
}

impl RedisServer {
    /// Starts an in-memory server (no RDB, no AOF) on a free port and waits for PING.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Like [`start`](Self::start) but with `appendfsync always`, so whatever the server
    /// acknowledged survives a kill and is there again after [`restart`](Self::restart).
    pub fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        let bin = redis_server_bin();
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut s = RedisServer {
                bin: bin.clone(),
                port,
                dir: temp_dir(port),
                persistent,
                child: None,
            };
            match s.try_launch() {
                Ok(()) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    /// TCP port the server listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's working directory (log file, AOF).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILLs the server (no clean shutdown) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.try_launch() {
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A blocking client connection, for checking what the code under test wrote.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("cannot connect to test redis on {}: {e}", self.port))
    }

    fn try_launch(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let log = self.dir.join("redis.log");
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.is_running() {
                self.child = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("exited early; log:\n{log}"));
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!("no PING answer within {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING")
            .query::<String>(&mut c)
            .is_ok_and(|r| r == "PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
