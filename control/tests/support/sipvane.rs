//! Runs the real `sipvane` binary for a test: a generated config and
//! dispatcher list in a scratch dir, loopback ports only, stopped (SIGTERM)
//! when the handle is dropped.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::net::{
    free_sip_port, free_tcp_port, free_udp_port, localhost, sip_options_ping, wait_for_tcp_listener,
};
use super::process::{ChildGuard, WorkDir};

/// How to start sipvane.
pub struct SipvaneBuilder {
    name: String,
    io: String,
    workers: usize,
    algorithm: String,
    destinations: Vec<String>,
    source: Option<String>,
    proxy_toml: String,
    extra_toml: String,
    mgmt_token: String,
    env: Vec<(String, String)>,
    binary: Option<std::path::PathBuf>,
}

impl SipvaneBuilder {
    /// Runs this binary instead of the one cargo built (e.g. a copy that a
    /// test replaces, as a package upgrade does).
    pub fn binary(mut self, path: &std::path::Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// An environment variable for the sipvane process (e.g. a test hook).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// "uring" or "epoll".
    pub fn io(mut self, io: &str) -> Self {
        self.io = io.to_string();
        self
    }
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    pub fn algorithm(mut self, a: &str) -> Self {
        self.algorithm = a.to_string();
        self
    }
    /// One dispatcher.list line, e.g. `1 sip:127.0.0.1:5070 0 0 weight=50`.
    pub fn destination(mut self, line: impl Into<String>) -> Self {
        self.destinations.push(line.into());
        self
    }
    /// `[dispatcher] source` (e.g. a database URL) instead of the generated
    /// dispatcher.list.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
    /// Extra `[proxy]` keys, e.g. `balance = "callid"`.
    pub fn proxy_toml(mut self, extra: &str) -> Self {
        self.proxy_toml.push_str(extra);
        self.proxy_toml.push('\n');
        self
    }
    /// Extra TOML appended to the config; `[dispatcher]` keys go after the
    /// generated ones, so start with a section header.
    pub fn toml(mut self, extra: &str) -> Self {
        self.extra_toml.push_str(extra);
        self.extra_toml.push('\n');
        self
    }

    /// `[mgmt] token`: the management API then requires this bearer token.
    pub fn mgmt_token(mut self, token: &str) -> Self {
        self.mgmt_token = token.to_string();
        self
    }

    /// Starts sipvane and waits until it answers OPTIONS. Ports are picked
    /// free just before, so another process may grab one in between; sipvane
    /// then exits with "Address already in use" and is started again on
    /// fresh ports (up to 3 times).
    pub fn start(self) -> Sipvane {
        let mut dir = WorkDir::new("sipvane", &self.name);
        let list = dir.file("dispatcher.list");
        std::fs::write(&list, self.destinations.join("\n") + "\n").expect("write dispatcher.list");
        for attempt in 1..=3 {
            let (port, private_base) = free_ports(self.workers);
            let source = match &self.source {
                Some(s) => format!("source = \"{s}\""),
                None => format!("list = \"{}\"", list.display()),
            };
            // Every instance gets its own management port: the default
            // (127.0.0.1:9060) would collide between tests running in parallel.
            let mgmt = localhost(free_tcp_port());
            // Each instance's own hand-over socket: with the shared default,
            // an instance of another test would try to take over this one.
            let handover = dir.file("handover.sock");
            let cfg = format!(
                "[proxy]\nlisten = \"127.0.0.1:{port}\"\nworkers = {}\nio = \"{}\"\nprivate_port_base = {private_base}\n{}\
                 [mgmt]\nlisten = \"{mgmt}\"\ntoken = \"{}\"\nhandover_socket = \"{}\"\n\
                 [dispatcher]\n{source}\nalgorithm = \"{}\"\n{}",
                self.workers,
                self.io,
                self.proxy_toml,
                self.mgmt_token,
                handover.display(),
                self.algorithm,
                self.extra_toml
            );
            let cfg_path = dir.file("sipvane.toml");
            std::fs::write(&cfg_path, &cfg).expect("write sipvane.toml");
            let child = spawn(&dir, &self.env, self.binary.as_deref(), LOG);
            let addr = localhost(port);
            let mut s = Sipvane {
                child,
                dir,
                addr,
                mgmt,
                private_base,
                env: self.env.clone(),
                log_name: LOG.to_string(),
                generation: 0,
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let mut answered = false;
            while std::time::Instant::now() < deadline {
                if !s.child.is_running() {
                    break;
                }
                if sip_options_ping(addr, Duration::from_millis(500)) == Some(200) {
                    answered = true;
                    break;
                }
            }
            if !answered {
                let log = s.log();
                if attempt < 3 && !s.child.is_running() && log.contains("Address already in use") {
                    // Lost a port race: try again on fresh ports.
                    dir = s.into_dir();
                    continue;
                }
                panic!("sipvane did not answer OPTIONS on {addr}\nconfig:\n{cfg}\nlog:\n{log}");
            }
            return s.ready();
        }
        unreachable!("the last attempt returns or panics")
    }
}

impl Sipvane {
    /// The scratch directory back from a sipvane that exited at start.
    fn into_dir(self) -> WorkDir {
        let Sipvane { dir, .. } = self;
        dir
    }

    /// Waits for the management API too, once SIP answers.
    fn ready(self) -> Sipvane {
        let mgmt = self.mgmt;
        let s = self;
        if !wait_for_tcp_listener(mgmt, Duration::from_secs(5)) {
            panic!(
                "sipvane's management API is not listening on {mgmt}\nlog:\n{}",
                s.log()
            );
        }
        s
    }
}

/// A running sipvane.
pub struct Sipvane {
    child: ChildGuard,
    dir: WorkDir,
    addr: SocketAddr,
    mgmt: SocketAddr,
    private_base: u16,
    env: Vec<(String, String)>,
    /// The current process's log file in `dir` (each process of a hand-over
    /// restart writes its own).
    log_name: String,
    /// Hand-over restarts so far.
    generation: u32,
}

/// The first process's log file.
const LOG: &str = "sipvane.log";

/// A process that handed over to its successor and drains.
pub struct Draining {
    child: ChildGuard,
    log: std::path::PathBuf,
}

impl Draining {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the old process's id")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most `timeout`) for the old process to finish its
    /// transactions and exit; asserts it exited 0 and returns its counters.
    pub fn wait_exit(mut self, timeout: Duration) -> Counters {
        let status = self.child.wait_timeout(timeout);
        let log = self.log();
        assert!(
            status.is_some_and(|s| s.success()),
            "the old sipvane did not exit cleanly after the hand-over ({status:?}); log:\n{log}"
        );
        Counters::from_log(&log).unwrap_or_else(|| panic!("no counters line in log:\n{log}"))
    }
}

impl Sipvane {
    /// A restart without dropped calls: starts a new process (`binary`, or
    /// the built one) with the same configuration, which takes the sockets
    /// over from the running one; returns once the new process has taken
    /// over, with the old one, which drains and exits by itself.
    pub fn handover_restart(&mut self, binary: Option<&std::path::Path>) -> Draining {
        self.generation += 1;
        let log_name = format!("sipvane.{}.log", self.generation);
        let child = spawn(&self.dir, &self.env, binary, &log_name);
        let old_log = self.dir.file(&self.log_name);
        let old = std::mem::replace(&mut self.child, child);
        self.log_name = log_name;
        assert!(
            self.wait_for_log("took over the SIP sockets", 1, Duration::from_secs(15)),
            "the new sipvane did not take over; its log:\n{}\nthe old one's:\n{}",
            self.log(),
            std::fs::read_to_string(&old_log).unwrap_or_default()
        );
        Draining {
            child: old,
            log: old_log,
        }
    }

    pub fn builder(name: &str) -> SipvaneBuilder {
        SipvaneBuilder {
            name: name.to_string(),
            io: "auto".into(),
            workers: 2,
            algorithm: "round-robin".into(),
            destinations: Vec::new(),
            source: None,
            proxy_toml: String::new(),
            extra_toml: String::new(),
            mgmt_token: String::new(),
            env: Vec::new(),
            binary: None,
        }
    }

    /// Waits for sipvane to exit on its own; `None` if it still runs after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.child.wait_timeout(timeout)
    }

    /// The process id (panics once it has exited and been reaped).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("sipvane is running")
    }

    /// Resident set size (VmRSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/PID/status:\n{status}"))
    }

    /// The public SIP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Worker `i`'s private address (what its Via and Record-Route name).
    pub fn private_addr(&self, i: u16) -> SocketAddr {
        SocketAddr::new(self.addr.ip(), self.private_base + i)
    }

    /// The management API's address (`http://{mgmt_addr}/status`).
    pub fn mgmt_addr(&self) -> SocketAddr {
        self.mgmt
    }

    /// The current process's log.
    pub fn log(&self) -> String {
        self.dir.read(&self.log_name)
    }

    /// The generated dispatcher.list (rewrite it, then reload).
    pub fn list_path(&self) -> std::path::PathBuf {
        self.dir.file("dispatcher.list")
    }

    /// This instance's scratch directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Sends a signal (e.g. `libc::SIGHUP` to reload).
    pub fn signal(&mut self, sig: i32) {
        self.child.signal(sig);
    }

    /// Waits until the log contains `needle` at least `n` times.
    pub fn wait_for_log(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.log().matches(needle).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Stops sipvane and starts a new process with the same configuration
    /// and ports (a plain restart: nothing is handed over). Returns the old
    /// process's final counters once the new one answers OPTIONS.
    pub fn restart(&mut self) -> Counters {
        let old = self.stop();
        self.child = spawn(&self.dir, &self.env, None, &self.log_name);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while sip_options_ping(self.addr, Duration::from_millis(500)) != Some(200) {
            assert!(
                std::time::Instant::now() < deadline && self.child.is_running(),
                "the restarted sipvane did not answer OPTIONS; log:\n{}",
                self.log()
            );
        }
        old
    }

    /// Stops sipvane with SIGTERM and returns its final counters.
    pub fn stop(&mut self) -> Counters {
        let status = self.child.stop(libc::SIGTERM, Duration::from_secs(10));
        let log = self.log();
        assert!(
            status.is_some_and(|s| s.success()),
            "sipvane did not exit cleanly ({status:?}); log:\n{log}"
        );
        Counters::from_log(&log).unwrap_or_else(|| panic!("no counters line in log:\n{log}"))
    }
}

/// The `sipvane: counters name=value ...` line sipvane prints when it stops.
#[derive(Debug)]
pub struct Counters(pub BTreeMap<String, u64>);

impl Counters {
    fn from_log(log: &str) -> Option<Counters> {
        let line = log
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("sipvane: counters "))?;
        Some(Counters(
            line.split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect(),
        ))
    }

    pub fn get(&self, name: &str) -> u64 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no counter {name:?} in {:?}", self.0))
    }
}

/// Starts `sipvane run -c DIR/sipvane.toml` (`binary`, default the built
/// one), logging to DIR/`log` (truncated).
fn spawn(
    dir: &WorkDir,
    env: &[(String, String)],
    binary: Option<&std::path::Path>,
    log: &str,
) -> ChildGuard {
    let bin = binary.map_or_else(
        || std::path::PathBuf::from(env!("CARGO_BIN_EXE_sipvane")),
        std::path::Path::to_path_buf,
    );
    let cfg_path = dir.file("sipvane.toml");
    let log = std::fs::File::create(dir.file(log)).expect("create the sipvane log");
    let log2 = log.try_clone().expect("clone log handle");
    ChildGuard::spawn(
        Command::new(bin)
            .arg("run")
            .arg("-c")
            .arg(&cfg_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2),
    )
    .expect("spawn sipvane")
}

/// A free public port and a free run of `workers` private ports.
fn free_ports(workers: usize) -> (u16, u16) {
    let public = free_sip_port();
    for _ in 0..100 {
        let base = free_udp_port();
        let free = (0..workers).all(|i| {
            u16::try_from(i)
                .ok()
                .and_then(|i| base.checked_add(i))
                .is_some_and(|p| p != public && UdpSocket::bind(("127.0.0.1", p)).is_ok())
        });
        if free {
            return (public, base);
        }
    }
    panic!("no run of {workers} free UDP ports found");
}

/// The value of `name` in a Prometheus text exposition (panics when absent).
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok())?
        })
        .map_or_else(|| panic!("no {name} in /metrics:\n{text}"), |v| v as u64)
}

/// `GET /metrics` of a running sipvane.
pub fn metrics(sipvane: &Sipvane) -> String {
    api_get(sipvane, "/metrics")
}

/// The body of `GET path` on a running sipvane's management API.
pub fn api_get(sipvane: &Sipvane, path: &str) -> String {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    agent
        .get(&format!("http://{}{path}", sipvane.mgmt_addr()))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {path} body: {e}"))
}
