//! `/health`, `/status`, `/dialogs` and `/errors/stats`: sums of the
//! per-worker counters taken at request time, and rates from their deltas.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dataplane::proxy::Snapshot;
use dataplane::worker::WorkerStats;
use serde::{Deserialize, Serialize};

use super::model::{Dialogs, Drops, ErrorStats, Health, Status, WorkerStatus};
use super::{error, ApiState};
use crate::run::Running;

/// A worker whose loop has not turned for this long is reported dead. Loops
/// turn at least every 100 ms, so this only trips on a stuck or dead worker.
const STALL: Duration = Duration::from_secs(3);

/// Per-second rates over the last sampling interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub calls_per_s: f64,
    pub answered_per_s: f64,
    pub failed_per_s: f64,
}

/// Turns successive counter totals into [`Rates`].
#[derive(Debug, Default)]
pub(super) struct Sampler {
    last: Option<(Instant, Snapshot)>,
    rates: Rates,
}

impl Sampler {
    pub fn sample(&mut self, now: Instant, total: &Snapshot) {
        if let Some((then, prev)) = &self.last {
            let dt = now.saturating_duration_since(*then).as_secs_f64();
            if dt > 0.0 {
                let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
                self.rates = Rates {
                    calls_per_s: rate(total.initial_invites, prev.initial_invites),
                    answered_per_s: rate(total.calls_answered, prev.calls_answered),
                    failed_per_s: rate(total.calls_failed, prev.calls_failed),
                };
            }
        }
        self.last = Some((now, *total));
    }

    pub fn rates(&self) -> Rates {
        self.rates
    }
}

/// Every worker's proxy counters summed.
pub(super) fn totals(running: &Running) -> Snapshot {
    let mut total = Snapshot::default();
    for s in &running.stats {
        total.add(&s.snapshot());
    }
    total
}

/// Dialogs a worker tracks now. Each counter is published on its own, so a
/// reader may see an end before its creation: never go below zero.
fn active_dialogs(s: &Snapshot) -> u64 {
    s.dialogs_created
        .saturating_sub(s.dialogs_ended)
        .saturating_sub(s.dialogs_expired)
}

/// Transactions a worker holds now; like [`active_dialogs`], never below zero.
pub(super) fn open_transactions(s: &Snapshot) -> u64 {
    s.transactions_created.saturating_sub(s.transactions_ended)
}

pub(super) fn alive(w: &WorkerStats) -> bool {
    w.running && w.idle < STALL
}

/// Health verdict from the workers' heartbeats.
pub(super) fn health_of(workers: &[WorkerStats]) -> Health {
    let problems: Vec<String> = workers
        .iter()
        .enumerate()
        .filter(|(_, w)| !alive(w))
        .map(|(i, w)| {
            if w.running {
                format!(
                    "worker {i} has not run its loop for {} ms",
                    w.idle.as_millis()
                )
            } else {
                format!("worker {i} is not running")
            }
        })
        .collect();
    Health {
        status: if problems.is_empty() && !workers.is_empty() {
            "ok"
        } else {
            "unhealthy"
        }
        .into(),
        workers: workers.len(),
        alive: workers.len() - problems.len(),
        problems,
    }
}

pub(super) async fn health(State(st): State<Arc<ApiState>>) -> Response {
    let h = health_of(&st.running.workers.stats());
    let code = if h.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(h)).into_response()
}

pub(super) async fn status(State(st): State<Arc<ApiState>>) -> Json<Status> {
    let r = &st.running;
    let per: Vec<Snapshot> = r.stats.iter().map(|s| s.snapshot()).collect();
    let mut total = Snapshot::default();
    for s in &per {
        total.add(s);
    }
    let rates = st.rates();
    let table = r.table.load();
    let workers = r.workers.stats();
    let queues = r.workers.queue_depths();
    let worker_detail = workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let p = per.get(i).copied().unwrap_or_default();
            WorkerStatus {
                index: i,
                alive: alive(w),
                idle_ms: u64::try_from(w.idle.as_millis()).unwrap_or(u64::MAX),
                datagrams_in: w.datagrams_in,
                datagrams_out: w.datagrams_out,
                initial_invites: p.initial_invites,
                active_dialogs: active_dialogs(&p),
                transactions: open_transactions(&p),
                handoff_queue: queues.get(i).copied().unwrap_or(0),
                handoffs_out: w.handoffs_out,
                handoffs_in: w.handoffs_in,
                tcp_connections: w.tcp.open,
                tls_connections: w.tcp.tls_open,
            }
        })
        .collect();
    Json(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: r.epoch.elapsed().as_secs(),
        listen: r.listen.to_string(),
        io: r.driver.to_string(),
        workers: workers.len(),
        calls_per_s: rates.calls_per_s,
        answered_per_s: rates.answered_per_s,
        failed_per_s: rates.failed_per_s,
        calls_total: total.initial_invites,
        answered_total: total.calls_answered,
        failed_total: total.calls_failed,
        active_dialogs: per.iter().map(active_dialogs).sum(),
        active_calls: table
            .iter()
            .map(|(_, d)| u64::from(d.stats.active_calls()))
            .sum(),
        sets: table.sets().len(),
        destinations: table.dest_count(),
        worker_detail,
        rtpengine: engines(r),
    })
}

/// `?list=1` asks for the dialogs themselves, which live in tables private
/// to each worker (no locks): only counts can be read from outside.
pub(super) async fn dialogs(
    State(st): State<Arc<ApiState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("list").is_some_and(|v| v != "0" && v != "false") {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "listing dialogs is not available: each worker's dialog table is private to it; only counts are served",
        );
    }
    let per: Vec<Snapshot> = st.running.stats.iter().map(|s| s.snapshot()).collect();
    let mut t = Snapshot::default();
    for s in &per {
        t.add(s);
    }
    Json(Dialogs {
        active: per.iter().map(active_dialogs).sum(),
        created: t.dialogs_created,
        ended: t.dialogs_ended,
        expired: t.dialogs_expired,
        not_tracked: t.dialogs_full,
        per_worker: per.iter().map(active_dialogs).collect(),
    })
    .into_response()
}

pub(super) async fn errors(State(st): State<Arc<ApiState>>) -> Json<ErrorStats> {
    let t = totals(&st.running);
    let mut drops = Drops {
        handoff_queue_full: 0,
        send_errors: 0,
        send_would_block: 0,
        recv_errors: 0,
        truncated: 0,
        events: st.running.events.as_ref().map_or(0, |q| q.dropped())
            + st.running
                .event_sinks
                .iter()
                .map(|s| s.dropped())
                .sum::<u64>(),
    };
    for w in st.running.workers.stats() {
        drops.handoff_queue_full += w.handoff_drops;
        drops.send_errors += w.send_errors;
        drops.send_would_block += w.send_would_block;
        drops.recv_errors += w.recv_errors;
        drops.truncated += w.truncated;
    }
    Json(ErrorStats {
        parse_errors: t.parse_errors,
        bad_requests: t.bad_requests,
        replies_4xx: t.replies_4xx,
        replies_5xx: t.replies_5xx,
        replies_6xx: t.replies_6xx,
        calls_failed: t.calls_failed,
        failovers: t.failovers,
        timeouts: t.timeouts,
        no_destination: t.no_destination,
        overload_rejects: t.overload_rejects,
        table_full: t.table_full,
        stray_responses: t.stray_responses,
        loops: t.loops,
        dialogs_full: t.dialogs_full,
        drops,
    })
}

/// Every configured RTPEngine with its health and counters.
pub(super) fn engines(r: &Running) -> Vec<super::model::EngineStatus> {
    let Some(m) = &r.media else {
        return Vec::new();
    };
    m.config
        .engines
        .iter()
        .enumerate()
        .map(|(i, &(addr, weight))| {
            let t = m.engine_totals(i);
            super::model::EngineStatus {
                address: addr.to_string(),
                weight,
                up: m.health.is_up(i),
                offers: t.offers,
                answers: t.answers,
                deletes: t.deletes,
                timeouts: t.timeouts,
                errors: t.errors,
            }
        })
        .collect()
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
    fn health_needs_every_worker_alive() {
        let ok = health_of(&[worker(true, 5), worker(true, 90)]);
        assert_eq!((ok.status.as_str(), ok.alive, ok.workers), ("ok", 2, 2));
        let dead = health_of(&[worker(true, 5), worker(false, 5)]);
        assert_eq!(dead.status, "unhealthy");
        assert_eq!(dead.problems, vec!["worker 1 is not running"]);
        let stuck = health_of(&[worker(true, 4000)]);
        assert_eq!(stuck.alive, 0);
        assert!(
            stuck.problems[0].contains("4000 ms"),
            "{:?}",
            stuck.problems
        );
        assert_eq!(health_of(&[]).status, "unhealthy");
    }

    #[test]
    fn rates_come_from_deltas() {
        let t0 = Instant::now();
        let mut s = Sampler::default();
        let mut c = Snapshot {
            initial_invites: 100,
            ..Snapshot::default()
        };
        s.sample(t0, &c);
        assert_eq!(s.rates().calls_per_s, 0.0, "one sample is no rate");
        c.initial_invites = 150;
        c.calls_answered = 20;
        s.sample(t0 + Duration::from_millis(500), &c);
        assert_eq!(s.rates().calls_per_s, 100.0);
        assert_eq!(s.rates().answered_per_s, 40.0);
        // A counter that went backwards (cannot, but never panic) reads 0.
        c.initial_invites = 10;
        s.sample(t0 + Duration::from_secs(1), &c);
        assert_eq!(s.rates().calls_per_s, 0.0);
    }
}
