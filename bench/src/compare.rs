//! `sipvane-bench compare`: the same backends, dispatcher list and ladder of
//! offered loads through sipvane and through Kamailio, with each proxy's CPU
//! per call from /proc.
//!
//! Each proxy is started fresh on loopback, warmed up with a short run at
//! the lowest rate, then taken up the ladder in ascending order (state a
//! step leaves behind, such as transactions waiting for their timers, is
//! part of what the next step meets). CPU is sampled before and after each
//! step, after the generator has seen every call end, so it covers all the
//! work the calls caused and whatever the proxy does on its own meanwhile
//! (timers, probing).

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::{procstat, sipp, uac};

#[derive(Args, Clone)]
pub struct CompareArgs {
    /// Offered loads (calls per second), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [500.0, 1000.0, 2000.0, 4000.0])]
    pub rates: Vec<f64>,
    /// How long calls are offered at each step.
    #[arg(long, default_value_t = 4000)]
    pub step_ms: u64,
    /// Pause after each step before CPU is sampled.
    #[arg(long, default_value_t = 300)]
    pub settle_ms: u64,
    /// Proxies to run, comma-separated: sipvane, kamailio, and the sipvane
    /// variants sipvane-hep (every message captured to a HEP sink of the bench)
    /// and sipvane-acc (accounting rows written to --acc-db-url).
    #[arg(long, value_delimiter = ',', default_values_t = [Proxy::Sipvane, Proxy::Kamailio])]
    pub proxies: Vec<Proxy>,
    /// Memory per active call: after the ladder, each proxy is started afresh
    /// and this many calls are held established at once (0 = skip).
    #[arg(long, default_value_t = 0)]
    pub hold_calls: u64,
    /// Rate at which the held calls are set up.
    #[arg(long, default_value_t = 2000.0)]
    pub hold_rate: f64,
    /// Accounting database of the sipvane-acc run, holding Kamailio's acc
    /// tables (postgres://... or mysql://...).
    #[arg(long)]
    pub acc_db_url: Option<String>,
    /// Load generator.
    #[arg(long, value_enum, default_value_t = Generator::Native)]
    pub generator: Generator,
    /// Transport of the callers' leg (the backends stay on UDP). `tcp` needs
    /// `--generator sipp`: SIPp then places every call over one connection
    /// (`-t t1`, a trunk), and Kamailio listens on TCP as well.
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    pub transport: Transport,
    /// sipvane worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// sipvane I/O driver (auto, uring, epoll).
    #[arg(long, default_value = "auto")]
    pub io: String,
    /// Extra sipvane TOML lines for the [proxy] section, e.g. "max_transactions = 1048576".
    #[arg(long)]
    pub sipvane_toml: Vec<String>,
    /// Kamailio UDP receiver processes (-n).
    #[arg(long, default_value_t = 1)]
    pub children: usize,
    /// Kamailio shared memory in MiB (-m); transactions live there.
    #[arg(long, default_value_t = 1024)]
    pub kamailio_shm_mb: u64,
    /// Generator threads (native generator).
    #[arg(long, default_value_t = 1)]
    pub gen_threads: usize,
    /// Responder threads per backend.
    #[arg(long, default_value_t = 1)]
    pub uas_threads: usize,
    /// Calls in progress at most.
    #[arg(long, default_value_t = 20_000)]
    pub concurrency: usize,
    /// A transaction without a final answer after this fails as a timeout.
    #[arg(long, default_value_t = 4000)]
    pub timeout_ms: u64,
    /// sipvane binary (default: next to sipvane-bench, then $PATH).
    #[arg(long)]
    pub sipvane: Option<PathBuf>,
    /// kamailio binary.
    #[arg(long, default_value = "kamailio")]
    pub kamailio: PathBuf,
    /// Kamailio config (default: the one built into sipvane-bench, bench/kamailio/kamailio.cfg).
    #[arg(long)]
    pub kamailio_cfg: Option<PathBuf>,
    /// SIPp scenario directory (--generator sipp).
    #[arg(long, default_value = "sipp-scenarios")]
    pub sipp_scenarios: PathBuf,
    /// Write the results as JSON to this file ("-" = stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot (CPU per call and p99 latency against offered load).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Scratch directory for configs and logs (default: a fresh one in /tmp).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum Proxy {
    #[serde(rename = "sipvane")]
    Sipvane,
    /// sipvane with `[hep]` capture of every message.
    #[serde(rename = "sipvane+hep")]
    SipvaneHep,
    /// sipvane with `[acc]` rows written to a database.
    #[serde(rename = "sipvane+acc")]
    SipvaneAcc,
    #[serde(rename = "kamailio")]
    Kamailio,
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proxy::Sipvane => "sipvane",
            Proxy::SipvaneHep => "sipvane+hep",
            Proxy::SipvaneAcc => "sipvane+acc",
            Proxy::Kamailio => "kamailio",
        })
    }
}

/// A UDP socket of the bench that HEP packets are sent to and thrown away,
/// counted; drained on its own thread until the sink is dropped.
struct HepSink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl HepSink {
    fn start() -> Result<HepSink> {
        let sock = UdpSocket::bind("127.0.0.1:0").context("bind the HEP sink")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    n += 1;
                }
            }
            n
        });
        Ok(HepSink {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Packets received so far; stops the sink.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for HepSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generator {
    Native,
    Sipp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
}

/// One measured step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub proxy: Proxy,
    pub offered_cps: f64,
    pub achieved_cps: f64,
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    pub failed_by_reason: std::collections::BTreeMap<String, u64>,
    /// Proxy CPU during the step (user + system), and the two parts.
    pub cpu_s: f64,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    /// Proxy CPU per completed call.
    pub cpu_us_per_call: Option<f64>,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Resolution of the latency figures: 1 µs (native), 1000 µs (SIPp).
    pub latency_resolution_us: u64,
    pub mem_kib: u64,
}

/// Memory per active call: `calls` held established at once on a fresh proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldRow {
    pub proxy: Proxy,
    pub calls: u64,
    /// Calls that completed (set up, held, ended by BYE) without failure.
    pub ok: u64,
    /// Memory of the process tree (PSS) before the calls and at its peak
    /// while every call is established.
    pub base_kib: u64,
    pub peak_kib: u64,
    /// (peak − base) ÷ calls, when every call succeeded.
    pub bytes_per_call: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub date_utc: String,
    pub command: String,
    pub machine: String,
    pub generator: String,
    /// sipvane workers and Kamailio receivers of the run (older results: 1).
    #[serde(default = "one")]
    pub workers: usize,
    #[serde(default = "one")]
    pub children: usize,
    /// Transport of the callers' leg (older results: UDP).
    #[serde(default = "udp")]
    pub transport: Transport,
    pub rows: Vec<Row>,
    /// Memory per active call (`--hold-calls`).
    #[serde(default)]
    pub hold: Vec<HoldRow>,
    /// sipvane counters printed at its exit (overload sheds, drops, ...).
    pub sipvane_counters: Option<String>,
}

fn one() -> usize {
    1
}

fn udp() -> Transport {
    Transport::Udp
}

const DEFAULT_KAMAILIO_CFG: &str = include_str!("../kamailio/kamailio.cfg");

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let f = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let f2 = f.try_clone()?;
        // SAFETY: prctl is async-signal-safe and touches no parent memory.
        // The child dies with us even if we are killed, so no proxy or
        // backend outlives a benchmark.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .with_context(|| format!("start {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            child,
            name: name.to_string(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    fn stop(&mut self, grace: Duration) {
        if !self.alive() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "sipvane-bench: {} did not stop on SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free TCP port on loopback: sipvane's management API must not take the
/// default 9060, which another sipvane (a parallel test) may hold.
fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A free port whose successors up to `+ n` are free too.
fn free_port_run(n: u16) -> Result<u16> {
    for _ in 0..100 {
        let base = free_udp_port()?;
        if (1..=n).all(|i| {
            base.checked_add(i)
                .is_some_and(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
        }) {
            return Ok(base);
        }
    }
    bail!("no run of {n} free UDP ports on 127.0.0.1")
}

/// Sends OPTIONS until a final answer or `timeout`; the code answered.
pub fn options_ping(target: SocketAddr, timeout: Duration) -> Option<u16> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    let local = sock.local_addr().ok()?;
    let msg = format!(
        "OPTIONS sip:{t} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKping{p};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:bench@{local}>;tag=p{p}\r\nTo: <sip:{t}>\r\n\
Call-ID: ping{p}@bench\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        t = crate::msg::hostport(target),
        p = local.port()
    );
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    while Instant::now() < end {
        let _ = sock.send_to(msg.as_bytes(), target);
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Some(code) = dataplane::sip::parse(&buf[..n])
                .ok()
                .and_then(|m| m.status())
            {
                if code >= 200 {
                    return Some(code);
                }
            }
        }
    }
    None
}

fn find_sipvane(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = crate::exe_dir()
        .map(|d| d.join("sipvane"))
        .filter(|p| p.is_file())
    {
        return Ok(p);
    }
    which("sipvane").context("no sipvane binary next to sipvane-bench or in $PATH; build it (cargo build --release -p control) or pass --sipvane")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

struct Backends {
    _procs: Vec<Proc>,
    addrs: Vec<SocketAddr>,
}

fn start_backends(a: &CompareArgs, work: &Path) -> Result<Backends> {
    let exe = std::env::current_exe().context("locate sipvane-bench")?;
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..2 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
        let log = work.join(format!("uas{i}.log"));
        procs.push(Proc::spawn(
            &format!("uas{i}"),
            Command::new(&exe)
                .arg("uas")
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--threads")
                .arg(a.uas_threads.to_string())
                .arg("--max-seconds")
                .arg("7200"),
            &log,
        )?);
        if options_ping(addr, Duration::from_secs(5)) != Some(200) {
            bail!(
                "backend {addr} does not answer OPTIONS (log {})",
                log.display()
            );
        }
        addrs.push(addr);
    }
    Ok(Backends {
        _procs: procs,
        addrs,
    })
}

struct Running {
    proc: Proc,
    addr: SocketAddr,
    log: PathBuf,
}

fn start_proxy(
    p: Proxy,
    a: &CompareArgs,
    work: &Path,
    list: &Path,
    hep: Option<SocketAddr>,
) -> Result<Running> {
    let dir = work.join(p.to_string());
    std::fs::create_dir_all(&dir)?;
    let log = dir.join(format!("{p}.log"));
    let (proc, addr) = match p {
        Proxy::Sipvane | Proxy::SipvaneHep | Proxy::SipvaneAcc => {
            let bin = find_sipvane(a.sipvane.as_deref())?;
            let workers = a.workers.max(1);
            let port = free_port_run(workers as u16)?;
            let variant = match p {
                Proxy::SipvaneHep => {
                    let sink = hep.context("no HEP sink")?;
                    format!("[hep]\ncollector = \"udp:{sink}\"\nagent_id = 1\n")
                }
                Proxy::SipvaneAcc => {
                    let url = a.acc_db_url.as_deref().context(
                        "--proxies sipvane-acc needs --acc-db-url (a database with Kamailio's acc tables)",
                    )?;
                    format!(
                        "[acc]\ndb_url = \"{url}\"\nspool_dir = \"{}\"\n",
                        dir.display()
                    )
                }
                _ => String::new(),
            };
            let cfg = format!(
                "[proxy]\nlisten = \"127.0.0.1:{port}\"\nworkers = {workers}\nio = \"{}\"\n\
                 private_port_base = {}\n{}\n[dispatcher]\nlist = \"{}\"\nalgorithm = \"round-robin\"\n\
                 [mgmt]\nlisten = \"127.0.0.1:{}\"\n{variant}",
                a.io,
                port + 1,
                a.sipvane_toml.join("\n"),
                list.display(),
                free_tcp_port()?
            );
            let cfg_path = dir.join("sipvane.toml");
            std::fs::write(&cfg_path, cfg)?;
            let proc = Proc::spawn(
                "sipvane",
                Command::new(bin)
                    .arg("run")
                    .arg("-c")
                    .arg(&cfg_path)
                    .env("RUST_LOG", "warn"),
                &log,
            )?;
            (proc, SocketAddr::from(([127, 0, 0, 1], port)))
        }
        Proxy::Kamailio => {
            let port = free_udp_port()?;
            let cfg_path = match &a.kamailio_cfg {
                Some(p) => p.clone(),
                None => {
                    let p = dir.join("kamailio.cfg");
                    std::fs::write(&p, DEFAULT_KAMAILIO_CFG)?;
                    p
                }
            };
            let proc = Proc::spawn(
                "kamailio",
                Command::new(&a.kamailio)
                    .arg("-f")
                    .arg(&cfg_path)
                    .args(["-DD", "-E", "-x", "tlsf", "-M", "32", "-m"])
                    .arg(a.kamailio_shm_mb.to_string())
                    .arg("-n")
                    .arg(a.children.max(1).to_string())
                    .arg("-l")
                    .arg(format!("udp:127.0.0.1:{port}"))
                    .args(match a.transport {
                        Transport::Udp => vec![],
                        // The same port on TCP; WITH_TCP turns TCP on in the
                        // cfg with as many TCP workers as UDP receivers.
                        Transport::Tcp => vec![
                            "-l".to_string(),
                            format!("tcp:127.0.0.1:{port}"),
                            "-A".to_string(),
                            "WITH_TCP".to_string(),
                            "-A".to_string(),
                            format!("TCP_CHILDREN={}", a.children.max(1)),
                        ],
                    })
                    .arg("-Y")
                    .arg(&dir)
                    .arg("-P")
                    .arg(dir.join("kamailio.pid"))
                    .arg("-w")
                    .arg(&dir)
                    .arg("-A")
                    .arg(format!("DS_LIST=\"{}\"", list.display())),
                &log,
            )?;
            (proc, SocketAddr::from(([127, 0, 0, 1], port)))
        }
    };
    let mut r = Running {
        proc,
        addr,
        log: log.clone(),
    };
    if options_ping(addr, Duration::from_secs(15)) != Some(200) {
        r.proc.stop(Duration::from_secs(5));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        bail!(
            "{p} did not answer OPTIONS on {addr}; last log lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(r)
}

/// Starts `p` afresh, warms it up, waits for the warm-up's transactions to
/// expire, then holds `a.hold_calls` calls established at once and samples
/// the memory of the process tree until they have ended.
fn hold_step(p: Proxy, a: &CompareArgs, work: &Path, list: &Path) -> Result<HoldRow> {
    let sink = match p {
        Proxy::SipvaneHep => Some(HepSink::start()?),
        _ => None,
    };
    let mut r = start_proxy(p, a, work, list, sink.as_ref().map(|s| s.addr))?;
    let warm = load(a, r.addr, 200.0, 500, work)?;
    if warm.ok == 0 {
        bail!("{p}: no call completed in the warm-up:\n{}", warm.summary());
    }
    // Past wait_timer (5 s in both proxies): the warm-up leaves no residue.
    std::thread::sleep(Duration::from_secs(6));
    let pid = r.proc.pid();
    let base = procstat::memory_kib(pid);
    let ramp = Duration::from_secs_f64(a.hold_calls as f64 / a.hold_rate.max(1.0) + 1.0);
    let cfg = uac::UacConfig {
        target: r.addr,
        rate: a.hold_rate,
        calls: a.hold_calls,
        concurrency: a.hold_calls as usize + 16,
        duration: ramp,
        threads: a.gen_threads.max(1),
        sockets_per_thread: 8,
        user: "bench".into(),
        // Every call is up at once from the end of the ramp for 2 s.
        hold: ramp + Duration::from_secs(2),
        // The generator stops at duration + timeout: past the last BYE.
        timeout: ramp + Duration::from_millis(a.timeout_ms) + Duration::from_secs(2),
    };
    let progress = Arc::new(uac::Progress::default());
    let p2 = Arc::clone(&progress);
    let gen = std::thread::spawn(move || uac::run(&cfg, &p2));
    // Sampled while every call is up: from the end of the ramp until the
    // first calls start to hang up (BYE transactions are not call state).
    let started = Instant::now();
    let mut peak = base;
    while !gen.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() < ramp + Duration::from_millis(1500) {
            peak = peak.max(procstat::memory_kib(pid));
        }
    }
    let rep = gen
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))??;
    r.proc.stop(Duration::from_secs(10));
    drop(sink);
    let ok = rep.ok;
    let row = HoldRow {
        proxy: p,
        calls: a.hold_calls,
        ok,
        base_kib: base,
        peak_kib: peak,
        bytes_per_call: (ok == a.hold_calls && ok > 0)
            .then(|| (peak.saturating_sub(base) * 1024) as f64 / ok as f64),
    };
    if !a.quiet {
        eprintln!("{}", hold_row(&row));
    }
    Ok(row)
}

/// Runs one load step against `target`.
fn load(
    a: &CompareArgs,
    target: SocketAddr,
    rate: f64,
    ms: u64,
    work: &Path,
) -> Result<uac::UacReport> {
    let calls = (rate * ms as f64 / 1000.0).ceil().max(1.0) as u64;
    match a.generator {
        Generator::Native => {
            let cfg = uac::UacConfig {
                target,
                rate,
                calls,
                concurrency: a.concurrency,
                duration: Duration::from_millis(ms),
                threads: a.gen_threads.max(1),
                sockets_per_thread: 8,
                user: "bench".into(),
                hold: Duration::ZERO,
                timeout: Duration::from_millis(a.timeout_ms),
            };
            crate::run_with_progress(&cfg, !a.quiet)
        }
        Generator::Sipp => sipp::run(
            &a.sipp_scenarios,
            target,
            a.transport,
            rate,
            calls,
            a.concurrency,
            Duration::from_millis(ms),
            Duration::from_millis(a.timeout_ms),
            work,
        ),
    }
}

pub fn run(a: &CompareArgs) -> Result<()> {
    if a.rates.is_empty() || a.rates.iter().any(|r| r.is_nan() || *r <= 0.0) {
        bail!("--rates must be positive numbers");
    }
    if a.rates.len() > 32 || a.step_ms > 600_000 {
        bail!("at most 32 steps of at most 600 s each");
    }
    if a.transport == Transport::Tcp && a.generator != Generator::Sipp {
        bail!("--transport tcp needs --generator sipp (the native generator speaks UDP only)");
    }
    let work = match &a.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("sipvane-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let mut rates = a.rates.clone();
    rates.sort_by(f64::total_cmp);

    let backends = start_backends(a, &work)?;
    let list = work.join("dispatcher.list");
    let mut text = String::from("# set destination flags priority attrs\n");
    for b in &backends.addrs {
        let _ = writeln!(text, "1 sip:{b} 0 0");
    }
    std::fs::write(&list, text)?;

    let mut rows = Vec::new();
    let mut sipvane_counters = None;
    for &p in &a.proxies {
        let sink = match p {
            Proxy::SipvaneHep => Some(HepSink::start()?),
            _ => None,
        };
        let mut r = start_proxy(p, a, &work, &list, sink.as_ref().map(|s| s.addr))?;
        eprintln!(
            "sipvane-bench: {p} up on {} (pid {}, logs in {})",
            r.addr,
            r.proc.pid(),
            work.display()
        );
        // Warm-up: caches, allocator pools, the destinations' first probes.
        let warm = load(a, r.addr, rates[0].min(1000.0), 1000, &work)?;
        if warm.ok == 0 {
            bail!("{p}: no call completed in the warm-up:\n{}", warm.summary());
        }
        for &rate in &rates {
            if !r.proc.alive() {
                bail!("{p} exited during the run; see {}", r.log.display());
            }
            let (u0, s0) = procstat::cpu_seconds(r.proc.pid());
            let rep = load(a, r.addr, rate, a.step_ms, &work)?;
            std::thread::sleep(Duration::from_millis(a.settle_ms));
            let (u1, s1) = procstat::cpu_seconds(r.proc.pid());
            let (user, sys) = (u1 - u0, s1 - s0);
            let cpu = user + sys;
            let row = Row {
                proxy: p,
                offered_cps: rate,
                achieved_cps: rep.achieved_cps(),
                started: rep.started,
                completed: rep.ok,
                failed: rep.failed_total(),
                failed_by_reason: rep.failed.clone(),
                cpu_s: cpu,
                cpu_user_s: user,
                cpu_sys_s: sys,
                cpu_us_per_call: (rep.ok > 0).then(|| cpu * 1e6 / rep.ok as f64),
                p50_us: rep.percentile_us(0.5),
                p99_us: rep.percentile_us(0.99),
                latency_resolution_us: match a.generator {
                    Generator::Native => 1,
                    Generator::Sipp => 1000,
                },
                mem_kib: procstat::memory_kib(r.proc.pid()),
            };
            if !a.quiet {
                eprintln!("{}", table_row(&row));
            }
            rows.push(row);
        }
        r.proc.stop(Duration::from_secs(10));
        if let Some(sink) = sink {
            let got = sink.finish();
            if got == 0 {
                bail!(
                    "{p}: the HEP sink received nothing; see {}",
                    r.log.display()
                );
            }
            eprintln!("sipvane-bench: {p}: {got} HEP packets captured");
        }
        if p == Proxy::Sipvane {
            // The plain run's counters; the variants' are in their logs.
            sipvane_counters = std::fs::read_to_string(&r.log).ok().and_then(|l| {
                l.lines()
                    .rev()
                    .find_map(|l| l.strip_prefix("sipvane: counters "))
                    .map(str::to_string)
            });
        }
    }
    let mut hold = Vec::new();
    if a.hold_calls > 0 {
        for &p in &a.proxies {
            hold.push(hold_step(p, a, &work, &list)?);
        }
    }
    let results = Results {
        hold,
        date_utc: utc_now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: machine(),
        generator: match a.generator {
            Generator::Native => "sipvane-bench uac".into(),
            Generator::Sipp => "sipp".into(),
        },
        transport: a.transport,
        workers: a.workers.max(1),
        children: a.children.max(1),
        rows,
        sipvane_counters,
    };
    print!("{}", table(&results));
    if let Some(path) = &a.json {
        let s = serde_json::to_string_pretty(&results)?;
        if path.as_os_str() == "-" {
            println!("{s}");
        } else {
            std::fs::write(path, s + "\n").with_context(|| format!("write {}", path.display()))?;
        }
    }
    if let Some(path) = &a.svg {
        crate::plot::write_svg(&results, path)?;
    }
    Ok(())
}

/// One Markdown row of the table.
fn table_row(r: &Row) -> String {
    let failed = if r.failed_by_reason.is_empty() {
        "0".to_string()
    } else {
        let parts: Vec<String> = r
            .failed_by_reason
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!("{} ({})", r.failed, parts.join(", "))
    };
    let sys_share = if r.cpu_s > 0.0 {
        format!("{:.0} %", 100.0 * r.cpu_sys_s / r.cpu_s)
    } else {
        "-".to_string()
    };
    format!(
        "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {:.1} |",
        r.proxy,
        r.offered_cps,
        r.achieved_cps,
        r.completed,
        failed,
        r.cpu_us_per_call
            .map_or("-".to_string(), |c| format!("{c:.1}")),
        sys_share,
        latency(r.p50_us, r.latency_resolution_us),
        latency(r.p99_us, r.latency_resolution_us),
        r.mem_kib as f64 / 1024.0
    )
}

/// The Markdown table printed at the end (and pasted into docs/benchmarks.md).
pub fn table(res: &Results) -> String {
    let mut s = String::new();
    if res.transport == Transport::Tcp {
        let _ = writeln!(
            s,
            "Callers over TCP (one connection, {}), backends over UDP.\n",
            res.generator
        );
    }
    let _ = writeln!(
        s,
        "| proxy    | offered cps | achieved cps | completed | failed | CPU µs/call | of which sys | p50 setup µs | p99 setup µs | memory MiB |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &res.rows {
        let _ = writeln!(s, "{}", table_row(r));
    }
    let ratios: Vec<String> = ratios(res)
        .into_iter()
        .map(|(rate, q)| format!("{rate:.0} cps: {q:.3}"))
        .collect();
    if !ratios.is_empty() {
        let _ = writeln!(s, "\nsipvane/Kamailio CPU per call: {}", ratios.join("; "));
    }
    let sat: Vec<String> = [Proxy::Sipvane, Proxy::Kamailio]
        .into_iter()
        .filter_map(|p| {
            let (cps, capped) = saturation(res, p)?;
            let per = match p {
                Proxy::Kamailio => res.children,
                _ => res.workers,
            };
            let unit = match p {
                Proxy::Kamailio => "receiver",
                _ => "worker",
            };
            let bound = if capped { "" } else { " or more" };
            Some(format!(
                "{p} {:.0}{bound} per {unit} ({cps:.0} with {per})",
                cps / per as f64
            ))
        })
        .collect();
    if !sat.is_empty() {
        let _ = writeln!(
            s,
            "calls/s at saturation (highest step with < 1 % failed): {}",
            sat.join("; ")
        );
    }
    for v in [Proxy::SipvaneHep, Proxy::SipvaneAcc] {
        let costs: Vec<String> = ratios_between(res, v, Proxy::Sipvane)
            .into_iter()
            .map(|(rate, q)| format!("{rate:.0} cps: {q:.3}"))
            .collect();
        if !costs.is_empty() {
            let _ = writeln!(s, "{v}/sipvane CPU per call: {}", costs.join("; "));
        }
    }
    if !res.hold.is_empty() {
        let _ = writeln!(
            s,
            "\n| proxy | calls held | ok | memory before MiB | peak MiB | bytes per active call |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for h in &res.hold {
            let _ = writeln!(s, "{}", hold_row(h));
        }
    }
    if let Some(c) = &res.sipvane_counters {
        let _ = writeln!(s, "sipvane counters at exit: {c}");
    }
    s
}

/// One Markdown row of the memory-per-call table.
fn hold_row(h: &HoldRow) -> String {
    format!(
        "| {} | {} | {} | {:.1} | {:.1} | {} |",
        h.proxy,
        h.calls,
        h.ok,
        h.base_kib as f64 / 1024.0,
        h.peak_kib as f64 / 1024.0,
        h.bytes_per_call
            .map_or("- (calls failed)".to_string(), |b| format!("{b:.0}"))
    )
}

/// A latency figure; below the generator's resolution (SIPp measures whole
/// milliseconds) it is shown as `<resolution`.
fn latency(us: u64, resolution: u64) -> String {
    if us == 0 {
        "-".to_string()
    } else if us < resolution {
        format!("<{resolution}")
    } else {
        us.to_string()
    }
}

/// sipvane CPU per call ÷ Kamailio's, per offered rate both completed calls at.
/// Calls per second `p` achieved at its highest step with under 1 % of the
/// calls failed, and whether a higher step failed more (the figure is then the
/// saturation; otherwise only a lower bound: the ladder stopped first).
pub fn saturation(res: &Results, p: Proxy) -> Option<(f64, bool)> {
    let ok = |r: &Row| r.started > 0 && (r.failed as f64) < 0.01 * r.started as f64;
    let mine: Vec<&Row> = res.rows.iter().filter(|r| r.proxy == p).collect();
    let best = mine
        .iter()
        .filter(|r| ok(r))
        .map(|r| r.achieved_cps)
        .max_by(f64::total_cmp)?;
    let top_ok = mine
        .iter()
        .max_by(|a, b| a.offered_cps.total_cmp(&b.offered_cps))
        .is_some_and(|r| ok(r));
    Some((best, !top_ok))
}

pub fn ratios(res: &Results) -> Vec<(f64, f64)> {
    ratios_between(res, Proxy::Sipvane, Proxy::Kamailio)
}

/// CPU per call of `a` ÷ that of `b`, per offered rate both completed calls at.
fn ratios_between(res: &Results, a: Proxy, b: Proxy) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for s in res.rows.iter().filter(|r| r.proxy == a) {
        let k = res
            .rows
            .iter()
            .find(|r| r.proxy == b && r.offered_cps == s.offered_cps);
        if let (Some(sc), Some(kc)) = (s.cpu_us_per_call, k.and_then(|k| k.cpu_us_per_call)) {
            if kc > 0.0 {
                out.push((s.offered_cps, sc / kc));
            }
        }
    }
    out
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let t = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        t / 3600,
        (t % 3600) / 60
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(String::new(), |k| format!(", {} GiB", k / (1024 * 1024)));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{} CPUs ({cpu}){mem}, Linux {kernel}", crate::online_cpus())
}

/// `sipvane-bench plot`: the table and SVG again from a saved `--json` file.
pub fn replot(json: &Path, svg: Option<&Path>) -> Result<()> {
    let text = std::fs::read_to_string(json).with_context(|| format!("read {}", json.display()))?;
    let res: Results = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a compare result", json.display()))?;
    print!("{}", table(&res));
    if let Some(svg) = svg {
        crate::plot::write_svg(&res, svg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(proxy: Proxy, offered: f64, achieved: f64, started: u64, failed: u64) -> Row {
        Row {
            proxy,
            offered_cps: offered,
            achieved_cps: achieved,
            started,
            completed: started - failed,
            failed,
            failed_by_reason: Default::default(),
            cpu_s: 0.0,
            cpu_user_s: 0.0,
            cpu_sys_s: 0.0,
            cpu_us_per_call: None,
            p50_us: 0,
            p99_us: 0,
            latency_resolution_us: 1,
            mem_kib: 0,
        }
    }

    fn results(rows: Vec<Row>) -> Results {
        Results {
            date_utc: String::new(),
            command: String::new(),
            machine: String::new(),
            generator: String::new(),
            workers: 2,
            children: 1,
            transport: Transport::Udp,
            rows,
            hold: vec![],
            sipvane_counters: None,
        }
    }

    #[test]
    fn saturation_is_the_highest_step_under_one_percent_failed() {
        let res = results(vec![
            row(Proxy::Sipvane, 1000.0, 1000.0, 4000, 0),
            row(Proxy::Sipvane, 5000.0, 5000.0, 20000, 0),
            row(Proxy::Kamailio, 1000.0, 1000.0, 4000, 0),
            row(Proxy::Kamailio, 5000.0, 4990.0, 20000, 199),
            row(Proxy::Kamailio, 10000.0, 8151.0, 40000, 7395),
        ]);
        // The top step failed: Kamailio's figure is its saturation.
        assert_eq!(saturation(&res, Proxy::Kamailio), Some((4990.0, true)));
        // Every step passed: only a lower bound.
        assert_eq!(saturation(&res, Proxy::Sipvane), Some((5000.0, false)));
        assert_eq!(saturation(&res, Proxy::SipvaneHep), None);
        let t = table(&res);
        assert!(
            t.contains("sipvane 2500 or more per worker (5000 with 2); kamailio 4990 per receiver"),
            "{t}"
        );
    }
}
