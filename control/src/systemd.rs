//! systemd integration for `Type=notify` units (`sd_notify(3)`): `READY=1`
//! once the workers and the management API are bound, `WATCHDOG=1` while the
//! workers run their loops, `STOPPING=1` on the way out.
//!
//! Everything here does nothing when `NOTIFY_SOCKET` is unset, i.e. when
//! sipvane was not started by systemd (or not by a `Type=notify` unit).

use std::time::Duration;

use dataplane::worker::{Monitor, WorkerStats};
use sd_notify::NotifyState;
use tracing::{debug, warn};

/// True when a service manager listens for notifications.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// `READY=1` with a one-line `STATUS=`; a process that took over from the
/// service's main process (a restart hand-over) also says `MAINPID=` itself,
/// which the unit's `NotifyAccess=all` accepts.
pub fn ready(status: &str, took_over: bool) {
    let pid = std::process::id();
    match took_over {
        true => send(&[
            NotifyState::MainPid(pid),
            NotifyState::Ready,
            NotifyState::Status(status),
        ]),
        false => send(&[NotifyState::Ready, NotifyState::Status(status)]),
    }
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as
/// `sd_watchdog_enabled(3)` recommends; `None` when the unit has no
/// `WatchdogSec=` (or the variable names another process in `WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    if !enabled() {
        return None;
    }
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| (d / 2).max(Duration::from_millis(1)))
}

/// Control-thread task: sends `WATCHDOG=1` every `every` while every worker
/// runs its loop (the same verdict as `/health`). A stalled worker stops the
/// pings, so systemd restarts the service after `WatchdogSec=`.
pub async fn watchdog(every: Duration, workers: Monitor) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_healthy = true;
    loop {
        tick.tick().await;
        let healthy = ping_due(&workers.stats());
        if healthy {
            send(&[NotifyState::Watchdog]);
        } else if was_healthy {
            warn!("a worker is not running its loop: withholding the systemd watchdog ping");
        }
        was_healthy = healthy;
    }
}

/// Whether this round's `WATCHDOG=1` is sent: every worker ran its loop
/// recently (the `/health` verdict).
fn ping_due(workers: &[WorkerStats]) -> bool {
    crate::api::workers_healthy(workers)
}

fn send(states: &[NotifyState]) {
    if !enabled() {
        return;
    }
    match sd_notify::notify(states) {
        Ok(()) => debug!(?states, "sd_notify"),
        Err(e) => warn!(?states, "sd_notify failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(running: bool, idle_ms: u64) -> WorkerStats {
        WorkerStats {
            running,
            idle: Duration::from_millis(idle_ms),
            ..WorkerStats::default()
        }
    }

    #[test]
    fn watchdog_pings_only_while_every_worker_runs_its_loop() {
        assert!(ping_due(&[worker(true, 0), worker(true, 150)]));
        // One worker stuck for 3 s (the /health limit) or stopped: no ping,
        // so systemd restarts the service after WatchdogSec.
        assert!(!ping_due(&[worker(true, 0), worker(true, 3_000)]));
        assert!(!ping_due(&[worker(true, 0), worker(false, 0)]));
        assert!(!ping_due(&[]));
    }
}
