//! Private Redis / PostgreSQL / MariaDB / RTPEngine instances for one test,
//! started through `scripts/services.sh` on loopback with free ports and a
//! directory of their own, and stopped when the handle is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::net::{free_tcp_port, free_udp_port};
use super::process::repo_root;

/// The services `scripts/services.sh` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// redis-server; `url()` is `redis://127.0.0.1:PORT`.
    Redis,
    /// PostgreSQL; `url()` is `postgres://sipvane:sipvane@127.0.0.1:PORT/sipvane`.
    Postgres,
    /// MariaDB; `url()` is `mysql://sipvane:sipvane@127.0.0.1:PORT/sipvane`.
    Mariadb,
    /// RTPEngine (userspace); `url()` is `udp:127.0.0.1:PORT` (the ng socket).
    Rtpengine,
}

impl ServiceKind {
    fn name(self) -> &'static str {
        match self {
            ServiceKind::Redis => "redis",
            ServiceKind::Postgres => "postgres",
            ServiceKind::Mariadb => "mariadb",
            ServiceKind::Rtpengine => "rtpengine",
        }
    }

    fn url_key(self) -> &'static str {
        match self {
            ServiceKind::Redis => "SIPVANE_TEST_REDIS_URL",
            ServiceKind::Postgres => "SIPVANE_TEST_PG_URL",
            ServiceKind::Mariadb => "SIPVANE_TEST_MYSQL_URL",
            ServiceKind::Rtpengine => "SIPVANE_TEST_RTPENGINE",
        }
    }
}

/// A running private service instance; stopped (and its directory removed)
/// on drop.
#[derive(Debug)]
pub struct Service {
    kind: ServiceKind,
    dir: PathBuf,
    port: u16,
    env: BTreeMap<String, String>,
    /// RTPEngine's media port range.
    media_ports: Option<(u16, u16)>,
    /// The port settings it was started with, for `restart`.
    start_env: Vec<(&'static str, String)>,
}

fn script() -> PathBuf {
    repo_root().join("scripts").join("services.sh")
}

impl Service {
    /// Starts `kind` on a free loopback port and waits until it answers.
    /// Panics (with the service's log) when it cannot start, e.g. because
    /// the package is missing: run `make deps`.
    pub fn start(kind: ServiceKind) -> Service {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("services")
            .join(format!("{}-{}-{n}", kind.name(), std::process::id()));
        let mut media_ports = None;
        let (port, start_env) = match kind {
            ServiceKind::Redis => {
                let p = free_tcp_port();
                (p, vec![("SIPVANE_TEST_REDIS_PORT", p.to_string())])
            }
            ServiceKind::Postgres => {
                let p = free_tcp_port();
                (p, vec![("SIPVANE_TEST_PG_PORT", p.to_string())])
            }
            ServiceKind::Mariadb => {
                let p = free_tcp_port();
                (p, vec![("SIPVANE_TEST_MYSQL_PORT", p.to_string())])
            }
            ServiceKind::Rtpengine => {
                let p = free_udp_port();
                // A media port window of its own (rtpengine skips ports in use anyway).
                let min = 30000 + (std::process::id() + n * 7) % 20 * 100;
                media_ports = u16::try_from(min).ok().map(|m| (m, m + 99));
                let env = vec![
                    ("SIPVANE_TEST_RTPENGINE_PORT", p.to_string()),
                    ("SIPVANE_TEST_RTP_PORT_MIN", min.to_string()),
                    ("SIPVANE_TEST_RTP_PORT_MAX", (min + 99).to_string()),
                ];
                (p, env)
            }
        };
        let mut svc = Service {
            kind,
            dir,
            port,
            env: BTreeMap::new(),
            media_ports,
            start_env,
        };
        svc.launch();
        svc
    }

    /// `services.sh start` with this service's ports; panics when it does not start.
    fn launch(&mut self) {
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("start")
            .arg(self.kind.name())
            .arg(&self.dir);
        cmd.envs(self.start_env.iter().map(|(k, v)| (k, v)));
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        self.env = stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(
            out.status.success() && self.env.contains_key(self.kind.url_key()),
            "{} did not start ({}):\n{}{}",
            self.kind.name(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the service with SIGKILL (a crash: no clean shutdown) and waits
    /// until it is gone.
    pub fn kill(&self) {
        let pid: libc::pid_t = std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", self.dir.display()));
        // SAFETY: a plain syscall on a process this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Gone, or a zombie (reaped late by whoever adopted it): either way
        // its sockets are closed.
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} survived SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Starts a killed service again on the same ports, with empty state (its
    /// directory is made afresh: an RTPEngine has forgotten its sessions, a
    /// database its data). Only after [`kill`](Self::kill).
    pub fn restart(&mut self) {
        self.launch();
    }

    /// Which service this is.
    pub fn kind(&self) -> ServiceKind {
        self.kind
    }

    /// Connection URL (see [`ServiceKind`]).
    pub fn url(&self) -> &str {
        self.env
            .get(self.kind.url_key())
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Its port on 127.0.0.1 (TCP; UDP for RTPEngine's ng socket).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// RTPEngine's media port range (inclusive); `None` for other services.
    pub fn media_ports(&self) -> Option<(u16, u16)> {
        self.media_ports
    }

    /// The KEY=VALUE settings `services.sh start` printed.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Its directory (data, logs, pid).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.kind.name())
            .arg(&self.dir)
            .status();
    }
}
