//! sipvane-bench: SIP load generator (`uac`), backend responder (`uas`) and
//! the sipvane-vs-Kamailio comparison (`compare`). See docs/benchmarks.md.

mod compare;
mod msg;
mod net;
mod plot;
mod procstat;
mod sipp;
mod tls_uac;
mod uac;
mod uas;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sipvane-bench",
    version,
    about = "SIP load generator and proxy benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Place calls: INVITE, 100/180/200, ACK, BYE, 200 (following Record-Route).
    Uac(UacArgs),
    /// Answer calls as a backend (OPTIONS too, for health probes).
    Uas(UasArgs),
    /// Run sipvane and Kamailio under the same ladder of offered loads.
    Compare(Box<compare::CompareArgs>),
    /// Print the table (and write the SVG) of a saved `compare --json` result.
    Plot {
        json: PathBuf,
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Place calls over TLS (rustls), one trunk connection per thread.
    TlsUac(Box<tls_uac::TlsUacArgs>),
    /// Send OPTIONS until answered; print the status code (exit 0 on 200).
    Ping {
        /// host:port
        target: String,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

#[derive(Args)]
struct UacArgs {
    /// Where to send (host:port).
    target: String,
    /// Offered calls per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Calls to place (default: rate × duration).
    #[arg(long)]
    calls: Option<u64>,
    /// Calls in progress at most.
    #[arg(long, default_value_t = 10_000)]
    concurrency: usize,
    /// Stop starting calls after this long.
    #[arg(long, default_value_t = 10_000)]
    duration_ms: u64,
    /// Generator threads (default: one per online CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Source sockets per thread (each a different source port).
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Request-URI user part.
    #[arg(long, default_value = "bench")]
    user: String,
    /// Time between the 200 and the BYE.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Fail a transaction without a final answer after this long.
    #[arg(long, default_value_t = 8_000)]
    timeout_ms: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct UasArgs {
    /// Address to answer on.
    #[arg(long, default_value = "127.0.0.1:5070")]
    listen: SocketAddr,
    /// Final answer to INVITE.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..700))]
    reply: u16,
    /// Delay before the final answer.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Responder threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Do not send 180 Ringing.
    #[arg(long)]
    no_ringing: bool,
    /// Exit after this many seconds at the latest.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Uac(a) => run_uac(&a),
        Cmd::Uas(a) => uas::run(&uas::UasConfig {
            listen: a.listen,
            reply: a.reply,
            delay: Duration::from_millis(a.delay_ms),
            threads: a.threads,
            ringing: !a.no_ringing,
            max_run: Duration::from_secs(a.max_seconds),
        }),
        Cmd::Compare(a) => compare::run(&a),
        Cmd::TlsUac(a) => tls_uac::run(&a),
        Cmd::Plot { json, svg } => compare::replot(&json, svg.as_deref()),
        Cmd::Ping { target, timeout_ms } => resolve(&target).and_then(|t| {
            match compare::options_ping(t, Duration::from_millis(timeout_ms)) {
                Some(code) => {
                    println!("{code}");
                    if code == 200 {
                        Ok(())
                    } else {
                        bail!("{target} answered {code}")
                    }
                }
                None => bail!("no answer from {target}"),
            }
        }),
    };
    if let Err(e) = r {
        eprintln!("sipvane-bench: {e:#}");
        std::process::exit(1);
    }
}

pub fn resolve(target: &str) -> Result<SocketAddr> {
    target
        .to_socket_addrs()
        .with_context(|| format!("bad target {target:?} (want host:port)"))?
        .next()
        .with_context(|| format!("{target:?} resolves to nothing"))
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run_uac(a: &UacArgs) -> Result<()> {
    if a.rate.is_nan() || a.rate <= 0.0 {
        bail!("--rate must be > 0");
    }
    let calls = a
        .calls
        .unwrap_or_else(|| (a.rate * a.duration_ms as f64 / 1000.0).ceil() as u64);
    let cfg = uac::UacConfig {
        target: resolve(&a.target)?,
        rate: a.rate,
        calls,
        concurrency: a.concurrency.max(1),
        duration: Duration::from_millis(a.duration_ms),
        threads: a.threads.unwrap_or_else(online_cpus).max(1),
        sockets_per_thread: a.sockets.max(1),
        user: a.user.clone(),
        hold: Duration::from_millis(a.hold_ms),
        timeout: Duration::from_millis(a.timeout_ms),
    };
    let report = run_with_progress(&cfg, !a.quiet)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report_json(&report))?);
    } else {
        print!("{}", report.summary());
    }
    Ok(())
}

/// Runs the generator; prints a progress line per second on long runs.
pub fn run_with_progress(cfg: &uac::UacConfig, show: bool) -> Result<uac::UacReport> {
    let progress = Arc::new(uac::Progress::default());
    let p2 = Arc::clone(&progress);
    let cfg2 = cfg.clone();
    let worker = std::thread::spawn(move || uac::run(&cfg2, &p2));
    let start = Instant::now();
    let mut last = (0u64, start);
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if show && now - last.1 >= Duration::from_secs(1) && cfg.duration >= Duration::from_secs(3)
        {
            let ok = progress.ok.load(Ordering::Relaxed);
            let rate = (ok - last.0) as f64 / (now - last.1).as_secs_f64();
            eprintln!(
                "[{:5.1} s] started {} ok {} failed {} ({:.0} cps)",
                (now - start).as_secs_f64(),
                progress.started.load(Ordering::Relaxed),
                ok,
                progress.failed.load(Ordering::Relaxed),
                rate
            );
            last = (ok, now);
        }
    }
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))?
}

pub fn report_json(r: &uac::UacReport) -> serde_json::Value {
    serde_json::json!({
        "started": r.started,
        "ok": r.ok,
        "failed": r.failed_total(),
        "failed_by_reason": r.failed,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "achieved_cps": r.achieved_cps(),
        "setup_us": {
            "p50": r.percentile_us(0.5),
            "p90": r.percentile_us(0.9),
            "p99": r.percentile_us(0.99),
            "p999": r.percentile_us(0.999),
            "max": r.setup_us.max(),
        },
        "retransmissions": r.retransmissions,
        "send_errors": r.send_errors,
        "stray": r.stray,
    })
}

/// The directory of this executable (where `cargo build` also put sipvane).
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(|p| p.to_path_buf())
}
