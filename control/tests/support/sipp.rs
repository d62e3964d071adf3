//! Real SIPp peers for integration tests: a UAC that runs to completion under
//! a hard timeout, and a background UAS that can be stopped, killed and
//! restarted on the same port.
//!
//! Results are read back from SIPp's own CSV dumps, written into a per-run
//! directory under `target/tmp/sipp/`:
//! * `-trace_stat -stf stat.csv` (every 200 ms and at exit): calls created,
//!   successful, failed, current;
//! * `-trace_counts` (`<scenario>_<pid>_counts.csv`): per scenario step
//!   counters, e.g. `1_INVITE_Recv`, `5_487_Recv`;
//! * `-trace_error_codes` (UAC): status codes of unexpected responses.
//!
//! A UAS is stopped with SIGINT, on which SIPp writes a final dump at once and
//! exits; SIGKILL (a "crash") leaves the last periodic dump.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::net::{
    assert_loopback, free_udp_port, localhost, wait_for_tcp_listener, wait_for_udp_listener,
};
use super::process::{require_binary, ChildGuard, WorkDir};

/// Panic message when SIPp is missing.
pub const SIPP_HINT: &str = "run `make deps` (or apt-get install sip-tester)";

/// Path of the `sipp` binary; panics with "sipp not found: run `make deps`
/// (or apt-get install sip-tester)" when it is not installed.
pub fn require_sipp() -> PathBuf {
    require_binary("sipp", SIPP_HINT)
}

/// Directory of the scenario files (`<repo>/sipp-scenarios`).
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("sipp-scenarios")
}

/// The scenarios in `sipp-scenarios/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// INVITE/SDP -> [100] [180] 200 -> ACK -> hold -> BYE -> 200, following Record-Route.
    Uac,
    /// As `Uac` with an INVITE of ~1 800 bytes (ICE candidates in the SDP).
    UacLarge,
    /// INVITE (Contact: an unreachable 127.0.0.99:9, as behind a NAT) ->
    /// 200 -> ACK; then the callee's BYE -> 200.
    UacNatBye,
    /// As `UacNatBye` with its own address as Contact.
    UacWaitBye,
    /// INVITE -> 180 -> CANCEL -> 200 + 487 -> ACK.
    UacCancel,
    /// OPTIONS -> 200.
    Options,
    /// REGISTER -> 200.
    Register,
    /// REGISTER -> 401 -> REGISTER with credentials -> 200 (`-key contact`,
    /// `-key expires`, `-au`, `-ap`).
    RegisterAuth,
    /// As `RegisterAuth` through an edge proxy: `Path: <sip:LOCAL_IP:LOCAL_PORT;lr>`
    /// (SIPp's own address) and `Supported: path`.
    RegisterPath,
    /// As `RegisterAuth` for the users of an injection file (`-inf`,
    /// `USER;[authentication username=USER password=PASSWORD]` lines;
    /// `-key contact`, `-key expires`).
    RegisterUsers,
    /// As `RegisterAuth`, but the credentials (a wrong password) get a new 401.
    RegisterWrongPassword,
    /// INVITE -> 404 -> ACK (From a foreign domain).
    Uac404,
    /// INVITE -> 407 -> ACK -> INVITE with credentials -> 200 -> ACK -> BYE
    /// (`-key caller`, `-au`, `-ap`).
    UacAuth,
    /// INVITE -> 100, 180, 200/SDP -> ACK; BYE -> 200; echoes Record-Route.
    Uas,
    /// INVITE -> 180, 200 (with SDP, Record-Route echoed) -> ACK; then it
    /// hangs up: BYE along the route set -> 200.
    UasBye,
    /// INVITE -> 503 -> ACK.
    Uas503,
    /// INVITE -> 486 Busy Here -> ACK.
    Uas486,
    /// Like `Uas` but answers after `UasBuilder::answer_delay`; CANCEL -> 200 + 487.
    UasSlow,
    /// Rings forever; CANCEL -> 200 + 487 -> ACK.
    UasCancel,
    /// Silent for 2.5 s (past fr_timer), then 180; waits for the CANCEL
    /// (10 s, else the call fails) -> 200 + 487 -> ACK. Never answers.
    UasLate,
}

impl Scenario {
    /// File name in `sipp-scenarios/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Scenario::Uac => "uac.xml",
            Scenario::UacLarge => "uac_large.xml",
            Scenario::UacNatBye => "uac_nat_bye.xml",
            Scenario::UacWaitBye => "uac_wait_bye.xml",
            Scenario::UacCancel => "uac_cancel.xml",
            Scenario::Options => "options.xml",
            Scenario::Register => "register.xml",
            Scenario::RegisterAuth => "register_auth.xml",
            Scenario::RegisterPath => "register_path.xml",
            Scenario::RegisterUsers => "register_users.xml",
            Scenario::RegisterWrongPassword => "register_wrong_password.xml",
            Scenario::Uac404 => "uac_404.xml",
            Scenario::UacAuth => "uac_auth.xml",
            Scenario::Uas => "uas.xml",
            Scenario::UasBye => "uas_bye.xml",
            Scenario::Uas503 => "uas_503.xml",
            Scenario::Uas486 => "uas_486.xml",
            Scenario::UasSlow => "uas_slow.xml",
            Scenario::UasCancel => "uas_cancel.xml",
            Scenario::UasLate => "uas_late.xml",
        }
    }

    /// Absolute path of the scenario file.
    pub fn path(self) -> PathBuf {
        scenarios_dir().join(self.file_name())
    }

    /// True for the answering (UAS) scenarios.
    pub fn is_server(self) -> bool {
        matches!(
            self,
            Scenario::Uas
                | Scenario::UasBye
                | Scenario::Uas503
                | Scenario::Uas486
                | Scenario::UasSlow
                | Scenario::UasCancel
                | Scenario::UasLate
        )
    }

    fn stem(self) -> &'static str {
        self.file_name().trim_end_matches(".xml")
    }
}

/// What SIPp reported (cumulative since it started).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SippStats {
    /// `TotalCallCreated`: calls started (UAC) or received (UAS; OPTIONS probes included).
    pub total_calls: u64,
    /// `SuccessfulCall(C)`: calls that ran the scenario to its end.
    pub successful: u64,
    /// `FailedCall(C)`.
    pub failed: u64,
    /// `CurrentCall`: calls in progress at the time of the dump.
    pub current: u64,
    /// Every column of the last `stat.csv` line, by name.
    pub stat: BTreeMap<String, String>,
    /// Per-step message counters from `-trace_counts`, e.g. `"1_INVITE_Recv" -> 50`.
    pub counts: BTreeMap<String, u64>,
    /// Status codes of unexpected responses (UAC), e.g. `503 -> 10`.
    pub unexpected_codes: BTreeMap<u16, u64>,
}

impl SippStats {
    /// Sum of the per-step counters `<n>_<what>_<dir>`, e.g. `count("INVITE", "Recv")`,
    /// `count("487", "Sent")`, `count("200", "Unexp")`.
    pub fn count(&self, what: &str, dir: &str) -> u64 {
        self.counts
            .iter()
            .filter(|(k, _)| {
                let mut parts = k.splitn(2, '_');
                let _step = parts.next();
                parts.next() == Some(&format!("{what}_{dir}"))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// INVITEs received (a UAS's "calls received"; OPTIONS probes excluded).
    pub fn invites_received(&self) -> u64 {
        self.count("INVITE", "Recv")
    }

    /// A named column of the last `stat.csv` line as a number (0 when absent).
    pub fn stat_u64(&self, name: &str) -> u64 {
        self.stat
            .get(name)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Reads the stats in `dir` (missing or partial files give zeros).
    pub fn read(dir: &Path) -> SippStats {
        let mut s = SippStats::default();
        if let Some(stat) = last_csv_row(&dir.join("stat.csv")) {
            s.stat = stat;
            s.total_calls = s.stat_u64("TotalCallCreated");
            s.successful = s.stat_u64("SuccessfulCall(C)");
            s.failed = s.stat_u64("FailedCall(C)");
            s.current = s.stat_u64("CurrentCall");
        }
        if let Some(path) = find_file(dir, "_counts.csv") {
            if let Some(row) = last_csv_row(&path) {
                s.counts = row
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v.trim().parse().ok()?)))
                    .collect();
            }
        }
        if let Some(path) = find_file(dir, "_error_codes.csv") {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            // One line per dump period: "date;elapsed;503,503,".
            for line in text.lines() {
                let codes = line.splitn(3, ';').nth(2).unwrap_or("");
                for c in codes.split(',').filter_map(|c| c.trim().parse().ok()) {
                    *s.unexpected_codes.entry(c).or_insert(0) += 1;
                }
            }
        }
        s
    }
}

fn find_file(dir: &Path, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
}

/// Header and last complete row of a `;`-separated SIPp CSV. SIPp may be
/// writing the file right now, so only newline-terminated rows with as many
/// fields as the header count.
fn last_csv_row(path: &Path) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.split_inclusive('\n');
    let header: Vec<&str> = lines.next()?.trim_end().split(';').collect();
    let row = lines
        .rev()
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim_end().split(';').collect::<Vec<_>>())
        .find(|r| r.len() >= header.len().saturating_sub(1))?;
    Some(
        header
            .iter()
            .zip(row.iter())
            .filter(|(h, _)| !h.is_empty())
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect(),
    )
}

fn loopback_ip(addr: SocketAddr) -> &'static str {
    if addr.is_ipv4() {
        "127.0.0.1"
    } else {
        "::1"
    }
}

fn target_arg(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v) => format!("{}:{}", v.ip(), v.port()),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

/// Arguments every SIPp run gets: loopback only, explicit ports, no stdin,
/// stats and logs in the work dir.
fn base_command(
    scenario: Scenario,
    local: SocketAddr,
    dir: &WorkDir,
    stat_period: &str,
) -> Command {
    let sipp = require_sipp();
    let scenario_file = scenario.path();
    assert!(
        scenario_file.is_file(),
        "scenario {} missing",
        scenario_file.display()
    );
    let ip = loopback_ip(local);
    let mut cmd = Command::new(sipp);
    cmd.current_dir(dir.path())
        .arg("-sf")
        .arg(&scenario_file)
        .args(["-i", ip, "-bind_local", "-p"])
        .arg(local.port().to_string())
        .args(["-mi", ip, "-ci", ip, "-cp"])
        .arg(free_udp_port().to_string())
        .args([
            "-nostdin",
            "-trace_stat",
            "-stf",
            "stat.csv",
            "-fd",
            stat_period,
        ])
        .args(["-trace_counts", "-trace_err", "-error_file", "err.log"])
        .args(["-trace_screen", "-screen_file", "screen.log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if std::env::var_os("SIPVANE_TEST_SIPP_TRACE").is_some_and(|v| v != "0") {
        cmd.args(["-trace_msg", "-message_file", "msg.log"]);
    }
    match std::fs::File::create(dir.file("stderr.log")) {
        Ok(f) => cmd.stderr(f),
        Err(_) => cmd.stderr(Stdio::null()),
    };
    cmd
}

/// The messages SIPp logged as received (`-trace_msg -message_file msg.log`
/// in `dir`) that start with `start`.
pub fn received_messages(dir: &Path, start: &str) -> Vec<String> {
    let log = std::fs::read_to_string(dir.join("msg.log")).unwrap_or_default();
    log.split("----------------------------------------------- ")
        .filter(|b| b.contains("message received"))
        .filter_map(|b| {
            let msg = b.split_once(" bytes :\n")?.1.trim_start();
            msg.starts_with(start).then(|| msg.to_string())
        })
        .collect()
}

/// A client run: builder, then [`Uac::run`] (blocking) or [`Uac::spawn`].
#[derive(Clone, Debug)]
pub struct Uac {
    scenario: Scenario,
    target: SocketAddr,
    calls: u32,
    rate: u32,
    rate_period_ms: Option<u64>,
    hold_ms: u64,
    max_concurrent: Option<u32>,
    service: Option<String>,
    timeout: Duration,
    local_port: Option<u16>,
    args: Vec<OsString>,
    transport: &'static str,
}

impl Uac {
    /// `scenario` (a client one) against `target` (loopback only); defaults:
    /// 1 call, 10 calls/s, no hold, 30 s hard timeout.
    pub fn new(scenario: Scenario, target: SocketAddr) -> Uac {
        assert!(!scenario.is_server(), "{scenario:?} is a UAS scenario");
        assert_loopback(target);
        Uac {
            scenario,
            target,
            calls: 1,
            rate: 10,
            rate_period_ms: None,
            hold_ms: 0,
            max_concurrent: None,
            service: None,
            timeout: Duration::from_secs(30),
            local_port: None,
            args: Vec::new(),
            transport: "u1",
        }
    }

    /// SIPp transport (`-t`): `u1` (UDP, the default), `t1` (one TCP
    /// connection), `tn` (one TCP connection per call).
    pub fn transport(mut self, t: &'static str) -> Self {
        self.transport = t;
        self
    }

    /// Total calls (`-m`); SIPp exits after them. At least 1.
    pub fn calls(mut self, n: u32) -> Self {
        self.calls = n.max(1);
        self
    }

    /// Calls per second (`-r`).
    pub fn rate(mut self, cps: u32) -> Self {
        self.rate = cps.max(1);
        self
    }

    /// `-rp`: the rate is per this many ms instead of per second.
    pub fn rate_period_ms(mut self, ms: u64) -> Self {
        self.rate_period_ms = Some(ms);
        self
    }

    /// Call hold time between ACK and BYE (`-d`).
    pub fn hold(mut self, d: Duration) -> Self {
        self.hold_ms = d.as_millis() as u64;
        self
    }

    /// Maximum simultaneous calls (`-l`).
    pub fn max_concurrent(mut self, n: u32) -> Self {
        self.max_concurrent = Some(n);
        self
    }

    /// User part of the Request-URI (`-s`).
    pub fn service(mut self, user: &str) -> Self {
        self.service = Some(user.to_string());
        self
    }

    /// Hard limit for the whole run: SIPp gets `-timeout` and fails when it
    /// is reached; the harness SIGKILLs it 5 s later if it is still alive.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Source port (default: a free one).
    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = Some(port);
        self
    }

    /// Extra raw SIPp argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Starts SIPp in the background.
    pub fn spawn(self) -> RunningUac {
        let dir = WorkDir::new("sipp", self.scenario.stem());
        let port = self.local_port.unwrap_or_else(free_udp_port);
        let ip: IpAddr = if self.target.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        };
        let local = SocketAddr::new(ip, port);
        let mut cmd = base_command(self.scenario, local, &dir, "1");
        let secs = self.timeout.as_secs_f64().ceil().max(1.0) as u64;
        cmd.arg(target_arg(self.target))
            .args(["-m", &self.calls.to_string(), "-r", &self.rate.to_string()])
            .args(["-d", &self.hold_ms.to_string()])
            .args(["-timeout", &format!("{secs}s"), "-timeout_error"])
            .args(["-t", self.transport])
            .arg("-trace_error_codes");
        if self.transport == "tn" {
            // SIPp refuses to start if its default socket limit exceeds `ulimit -n`.
            cmd.args(["-max_socket", "4096"]);
        }
        if let Some(rp) = self.rate_period_ms {
            cmd.args(["-rp", &rp.to_string()]);
        }
        if let Some(l) = self.max_concurrent {
            cmd.args(["-l", &l.to_string()]);
        }
        if let Some(s) = &self.service {
            cmd.args(["-s", s]);
        }
        cmd.args(&self.args);
        let child = ChildGuard::spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("cannot start sipp ({:?}): {e}", self.scenario));
        RunningUac {
            child,
            dir,
            started: Instant::now(),
            deadline: Instant::now() + Duration::from_secs(secs) + Duration::from_secs(5),
        }
    }

    /// Runs to completion (or to the hard timeout) and returns what happened.
    /// A port picked for it (not one the test fixed) that another test took
    /// between being found free and SIPp binding it is replaced (twice at most).
    pub fn run(mut self) -> SippRun {
        let mut tries = if self.local_port.is_none() { 3 } else { 1 };
        loop {
            let retry = self.clone();
            let run = self.spawn().wait();
            tries -= 1;
            let lost_race =
                run.stats.total_calls == 0 && run.errors().contains("Unable to bind main socket");
            if !lost_race || tries == 0 {
                return run;
            }
            self = retry;
        }
    }
}

/// A UAC started with [`Uac::spawn`]; killed if dropped before it finishes.
#[derive(Debug)]
pub struct RunningUac {
    child: ChildGuard,
    dir: WorkDir,
    started: Instant,
    deadline: Instant,
}

impl RunningUac {
    /// Current counters (periodic dump, at most ~1 s old).
    pub fn stats(&self) -> SippStats {
        SippStats::read(self.dir.path())
    }

    /// SIGKILL, as if the caller's host vanished: its connections are reset.
    pub fn kill(mut self) {
        let _ = self.child.kill();
    }

    /// True once SIPp has exited.
    pub fn is_finished(&mut self) -> bool {
        !self.child.is_running()
    }

    /// Waits for SIPp to exit (SIGKILL after the hard timeout).
    pub fn wait(mut self) -> SippRun {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let status = self.child.wait_timeout(remaining);
        let killed = status.is_none();
        let status = status.or_else(|| self.child.kill());
        let stderr = self.dir.read("stderr.log");
        let errors = self.dir.read("err.log");
        // SIPp's message for the global -timeout (not a per-call receive timeout).
        let global = |s: &str| s.contains(" timed out after ");
        let timed_out = killed || global(&stderr) || global(&errors);
        SippRun {
            exit_code: status.and_then(|s| s.code()),
            timed_out,
            elapsed: self.started.elapsed(),
            stats: SippStats::read(self.dir.path()),
            dir: self.dir,
        }
    }
}

/// The outcome of a finished UAC run.
#[derive(Debug)]
pub struct SippRun {
    /// SIPp's exit code: 0 all calls succeeded, 1 some failed, 255 fatal
    /// (including the global timeout), `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// The hard timeout was reached.
    pub timed_out: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Final counters.
    pub stats: SippStats,
    dir: WorkDir,
}

impl SippRun {
    /// Directory with stat.csv, the counts, err.log, screen.log, stderr.log.
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIPp's error log and stderr, for assertion messages.
    pub fn errors(&self) -> String {
        let mut s = self.dir.read("stderr.log");
        s.push_str(&self.dir.read("err.log"));
        s.chars().take(4000).collect()
    }

    /// Asserts that exactly `n` calls were made and all succeeded.
    pub fn assert_all_succeeded(&self, n: u64) {
        assert!(
            self.exit_code == Some(0)
                && !self.timed_out
                && self.stats.successful == n
                && self.stats.failed == 0
                && self.stats.total_calls == n,
            "expected {n} successful calls, got exit {:?} timed_out {} stats {:?}\n{}",
            self.exit_code,
            self.timed_out,
            self.stats,
            self.errors()
        );
    }
}

/// Options of a background UAS; finish with [`UasBuilder::start`].
#[derive(Clone, Debug)]
pub struct UasBuilder {
    scenario: Scenario,
    addr: Option<SocketAddr>,
    answer_delay: Option<Duration>,
    lifetime: Duration,
    args: Vec<OsString>,
    tcp: bool,
}

impl UasBuilder {
    /// Listen on TCP (`-t t1`) instead of UDP.
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// Listen address (loopback; default `127.0.0.1:<free port>`).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        assert_loopback(addr);
        self.addr = Some(addr);
        self
    }

    /// Listen on `127.0.0.1:port`.
    pub fn port(self, port: u16) -> Self {
        self.addr(localhost(port))
    }

    /// `UasSlow`: time between 180 and 200 (SIPp's `-recv_timeout`).
    pub fn answer_delay(mut self, d: Duration) -> Self {
        self.answer_delay = Some(d);
        self
    }

    /// Safety net: SIPp exits by itself after this long (default 300 s) even
    /// if nothing stops it.
    pub fn lifetime(mut self, d: Duration) -> Self {
        self.lifetime = d;
        self
    }

    /// Log every message (`msg.log` in its work dir), for [`Uas::received`].
    pub fn traced(self) -> Self {
        self.arg("-trace_msg").arg("-message_file").arg("msg.log")
    }

    /// Extra raw SIPp argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Starts it and waits until its socket is bound (panics after 5 s).
    pub fn start(self) -> Uas {
        let addr = self.addr.unwrap_or_else(|| localhost(free_udp_port()));
        let mut uas = Uas {
            cfg: UasBuilder {
                addr: Some(addr),
                ..self
            },
            addr,
            child: None,
            dir: None,
        };
        // The port was free when picked; another process may take it before
        // SIPp binds. A first start that fails that way moves to a fresh port
        // (the test reads the address from `Uas::addr` afterwards).
        for attempt in 1..=3 {
            match uas.try_launch() {
                Ok(()) => return uas,
                Err(e) if attempt < 3 => {
                    eprintln!(
                        "sipp did not start on {} ({e}); trying another port",
                        uas.addr
                    );
                    uas.addr = localhost(free_udp_port());
                    uas.cfg.addr = Some(uas.addr);
                }
                Err(e) => panic!("{e}"),
            }
        }
        uas
    }
}

/// A SIPp UAS running in the background. Dropping it kills SIPp.
#[derive(Debug)]
pub struct Uas {
    cfg: UasBuilder,
    addr: SocketAddr,
    child: Option<ChildGuard>,
    dir: Option<WorkDir>,
}

impl Uas {
    /// Starts `scenario` (a UAS one) on `addr` (loopback) with defaults.
    pub fn start(scenario: Scenario, addr: SocketAddr) -> Uas {
        Uas::builder(scenario).addr(addr).start()
    }

    /// Builder for a UAS with options.
    pub fn builder(scenario: Scenario) -> UasBuilder {
        assert!(scenario.is_server(), "{scenario:?} is not a UAS scenario");
        UasBuilder {
            scenario,
            addr: None,
            answer_delay: None,
            lifetime: Duration::from_secs(300),
            args: Vec::new(),
            tcp: false,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its scenario.
    pub fn scenario(&self) -> Scenario {
        self.cfg.scenario
    }

    fn launch(&mut self) {
        if let Err(e) = self.try_launch() {
            panic!("{e}");
        }
    }

    fn try_launch(&mut self) -> Result<(), String> {
        let dir = WorkDir::new("sipp", self.cfg.scenario.stem());
        let mut cmd = base_command(self.cfg.scenario, self.addr, &dir, "200ms");
        let secs = self.cfg.lifetime.as_secs().max(1);
        // -aa: answer in-dialog INFO/NOTIFY/UPDATE 200 instead of failing the call.
        cmd.arg("-aa").args(["-timeout", &format!("{secs}s")]);
        if self.cfg.tcp {
            cmd.args(["-t", "t1"]);
        }
        if let Some(d) = self.cfg.answer_delay {
            cmd.args(["-recv_timeout", &d.as_millis().max(1).to_string()]);
        }
        cmd.args(&self.cfg.args);
        let mut child = ChildGuard::spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("cannot start sipp ({:?}): {e}", self.cfg.scenario));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if !child.is_running() {
                return Err(format!(
                    "sipp {:?} on {} exited at start: {}{}",
                    self.cfg.scenario,
                    self.addr,
                    dir.read("stderr.log"),
                    dir.read("err.log")
                ));
            }
            let listening = if self.cfg.tcp {
                wait_for_tcp_listener(self.addr, Duration::from_millis(50))
            } else {
                wait_for_udp_listener(self.addr, Duration::from_millis(50))
            };
            if listening {
                // "Bound" only says someone holds the port: make sure SIPp did
                // not just fail to bind it and exit.
                std::thread::sleep(Duration::from_millis(50));
                if child.is_running() {
                    break;
                }
                continue;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "sipp {:?} did not bind {}",
                    self.cfg.scenario, self.addr
                ));
            }
        }
        self.child = Some(child);
        self.dir = Some(dir);
        Ok(())
    }

    /// True while SIPp runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// Counters of the current (or last) instance; while it runs they come
    /// from the periodic dump, at most ~200 ms old.
    pub fn stats(&self) -> SippStats {
        self.dir
            .as_ref()
            .map(|d| SippStats::read(d.path()))
            .unwrap_or_default()
    }

    /// Polls [`Uas::stats`] until `done(stats)` holds or `timeout` passes;
    /// returns the last stats either way (assert on them).
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&SippStats) -> bool) -> SippStats {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if done(&s) || Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `n` INVITEs were received and no call is in progress.
    pub fn wait_for_calls(&self, n: u64, timeout: Duration) -> SippStats {
        self.wait_until(timeout, |s| s.invites_received() >= n && s.current == 0)
    }

    /// Graceful stop: SIGINT (SIPp writes its final counters and exits),
    /// SIGKILL after 3 s. Returns the final counters. Idempotent.
    pub fn stop(&mut self) -> SippStats {
        if let Some(child) = self.child.as_mut() {
            child.stop(libc::SIGINT, Duration::from_secs(3));
        }
        self.stats()
    }

    /// Immediate SIGKILL, as if the destination crashed. Counters stay at the
    /// last periodic dump.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            child.kill();
        }
    }

    /// Stops the current instance (if running) and starts a fresh one on the
    /// same address, with counters from zero. Returns the old instance's
    /// final counters.
    pub fn restart(&mut self) -> SippStats {
        let old = self.stop();
        self.child = None;
        self.dir = None;
        // The old socket is closed once the process is reaped; the port is ours again.
        self.launch();
        old
    }

    /// Log directory of the current instance.
    pub fn log_dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(WorkDir::path)
    }

    /// The messages a [`UasBuilder::traced`] instance received that start
    /// with `start` (e.g. `"INVITE "`), oldest first.
    pub fn received(&self, start: &str) -> Vec<String> {
        self.log_dir()
            .map(|d| received_messages(d, start))
            .unwrap_or_default()
    }

    /// SIPp's error log and stderr of the current instance.
    pub fn errors(&self) -> String {
        self.dir
            .as_ref()
            .map(|d| {
                let mut s = d.read("stderr.log");
                s.push_str(&d.read("err.log"));
                s.chars().take(4000).collect()
            })
            .unwrap_or_default()
    }

    /// OS process id of the running SIPp.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildGuard::id)
    }
}

impl Drop for Uas {
    fn drop(&mut self) {
        // Kill before the work dir goes, so SIPp does not write into a removed dir.
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }
}
