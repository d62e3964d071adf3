//! `compare --generator sipp`: the same step driven by SIPp
//! (sipp-scenarios/uac.xml) instead of the native generator, read back
//! from SIPp's statistics file (-trace_stat) and per-call response times
//! (-trace_rtt, the INVITE → 200 time, millisecond resolution).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::compare::Transport;
use crate::uac::UacReport;

#[allow(clippy::too_many_arguments)]
pub fn run(
    scenarios: &Path,
    target: SocketAddr,
    transport: Transport,
    rate: f64,
    calls: u64,
    concurrency: usize,
    duration: Duration,
    timeout: Duration,
    work: &Path,
) -> Result<UacReport> {
    let scenario = scenarios.join("uac.xml");
    if !scenario.is_file() {
        bail!(
            "no SIPp scenario at {} (pass --sipp-scenarios)",
            scenario.display()
        );
    }
    let scenario = std::fs::canonicalize(&scenario)?;
    let dir = work.join(format!("sipp-{}", rate as u64));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let stat = dir.join("stat.csv");
    // Whole-run bound: offering time + the call timeout + slack.
    let bound = duration + timeout + Duration::from_secs(5);
    let start = Instant::now();
    let out = Command::new("sipp")
        .current_dir(&dir)
        .arg("-sf")
        .arg(&scenario)
        .arg(target.to_string())
        .args([
            "-i",
            "127.0.0.1",
            "-ci",
            "127.0.0.1",
            "-bind_local",
            "-nostdin",
        ])
        // TCP: every call over one connection, as a trunk sends them.
        .args(match transport {
            Transport::Udp => ["-t", "u1"],
            Transport::Tcp => ["-t", "t1"],
        })
        .args(["-r", &format!("{}", rate.round().max(1.0) as u64)])
        .args(["-m", &calls.to_string(), "-l", &concurrency.to_string()])
        .args(["-recv_timeout", &timeout.as_millis().to_string()])
        .args(["-timeout", &format!("{}s", bound.as_secs())])
        .args(["-trace_stat", "-fd", "1", "-trace_rtt", "-rtt_freq", "1"])
        .arg("-stf")
        .arg(&stat)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("run sipp (apt-get install sip-tester, or scripts/deps.sh)")?;
    let elapsed = start.elapsed();
    let text = std::fs::read_to_string(&stat).with_context(|| {
        format!(
            "sipp wrote no statistics ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap_or_default().split(';').collect();
    let last: Vec<&str> = lines.next_back().unwrap_or_default().split(';').collect();
    let field = |name: &str| -> u64 {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| last.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut failed = BTreeMap::new();
    for h in &header {
        if h.starts_with("Failed") && h.ends_with("(C)") && *h != "FailedCall(C)" {
            let n = field(h);
            if n > 0 {
                failed.insert(h.trim_end_matches("(C)").to_string(), n);
            }
        }
    }
    let ok = field("SuccessfulCall(C)");
    let failed_total = field("FailedCall(C)");
    let listed: u64 = failed.values().sum();
    if failed_total > listed {
        failed.insert("Failed(other)".into(), failed_total - listed);
    }
    let mut setup_us = hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
    for e in std::fs::read_dir(&dir)?.flatten() {
        if e.file_name().to_string_lossy().ends_with("_rtt.csv") {
            let t = std::fs::read_to_string(e.path()).unwrap_or_default();
            for l in t.lines().skip(1) {
                if let Some(ms) = l
                    .split(';')
                    .nth(1)
                    .and_then(|v| v.trim().parse::<f64>().ok())
                {
                    // Whole milliseconds: 0 means "under 1 ms" (see latency_resolution_us).
                    let _ = setup_us.record(((ms * 1000.0) as u64).max(1));
                }
            }
        }
    }
    Ok(UacReport {
        started: field("TotalCallCreated"),
        ok,
        failed,
        setup_us,
        elapsed,
        offered_for: duration.min(elapsed),
        retransmissions: field("Retransmissions(C)"),
        send_errors: 0,
        stray: field("OutOfCallMsgs(C)") + field("DeadCallMsgs(C)"),
    })
}
