//! Human-readable text for `sipvane ctl`: pure functions of the API's replies.

use std::fmt::Write;

use crate::api::model::{Dialogs, Dispatcher, ErrorStats, Health, Registrations, Status};

/// Left-aligned columns separated by two spaces; numeric columns right-aligned.
fn table(header: &[&str], rows: &[Vec<String>], numeric: &[bool]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut parts = Vec::with_capacity(cells.len());
        for (i, c) in cells.iter().enumerate() {
            let w = width.get(i).copied().unwrap_or(0);
            if numeric.get(i).copied().unwrap_or(false) {
                parts.push(format!("{c:>w$}"));
            } else {
                parts.push(format!("{c:<w$}"));
            }
        }
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    let head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    line(&mut out, &head);
    for r in rows {
        line(&mut out, r);
    }
    out
}

fn latency(us: Option<u32>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us >= 10_000 => format!("{} ms", us / 1000),
        Some(us) => format!("{:.1} ms", f64::from(us) / 1000.0),
    }
}

/// `sipvane ctl dispatcher list`.
pub fn dispatcher(d: &Dispatcher) -> String {
    if d.sets.is_empty() {
        return "no destinations (no dispatcher source, or an empty one)\n".into();
    }
    let rows: Vec<Vec<String>> = d
        .sets
        .iter()
        .flat_map(|s| {
            s.destinations.iter().map(move |x| {
                vec![
                    s.id.to_string(),
                    x.uri.clone(),
                    x.state.clone(),
                    x.active_calls.to_string(),
                    x.selected.to_string(),
                    x.failed.to_string(),
                    latency(x.latency_us),
                    x.priority.to_string(),
                    x.flags.to_string(),
                    if x.attrs.is_empty() {
                        "-".into()
                    } else {
                        x.attrs.clone()
                    },
                ]
            })
        })
        .collect();
    table(
        &[
            "SET", "URI", "STATE", "ACTIVE", "SELECTED", "FAILED", "LATENCY", "PRIO", "FLAGS",
            "ATTRS",
        ],
        &rows,
        &[
            true, false, false, true, true, true, true, true, true, false,
        ],
    )
}

fn uptime(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// The first lines of `stats` and `top`.
fn summary(s: &Status, out: &mut String) {
    let _ = writeln!(
        out,
        "sipvane {}  up {}  listen {}  io {}  workers {}",
        s.version,
        uptime(s.uptime_s),
        s.listen,
        s.io,
        s.workers
    );
    let _ = writeln!(
        out,
        "calls/s {:.1}  answered/s {:.1}  failed/s {:.1}  active dialogs {}  active calls {}",
        s.calls_per_s, s.answered_per_s, s.failed_per_s, s.active_dialogs, s.active_calls
    );
}

fn failures(e: &ErrorStats, out: &mut String) {
    let d = &e.drops;
    let drops = d.handoff_queue_full + d.send_errors + d.recv_errors + d.truncated + d.events;
    let _ = writeln!(
        out,
        "failovers {}  timeouts {}  no destination {}  overload {}  4xx {}  5xx {}  6xx {}  parse errors {}  drops {}",
        e.failovers,
        e.timeouts,
        e.no_destination,
        e.overload_rejects,
        e.replies_4xx,
        e.replies_5xx,
        e.replies_6xx,
        e.parse_errors,
        drops
    );
}

/// `sipvane ctl stats`.
pub fn stats(s: &Status, e: &ErrorStats) -> String {
    let mut out = String::new();
    summary(s, &mut out);
    let _ = writeln!(
        out,
        "calls total {}  answered {}  failed {}  destinations {} in {} set(s)",
        s.calls_total, s.answered_total, s.failed_total, s.destinations, s.sets
    );
    failures(e, &mut out);
    let _ = writeln!(
        out,
        "bad requests {}  stray responses {}  loops {}  dialogs not tracked {}  table full {}",
        e.bad_requests, e.stray_responses, e.loops, e.dialogs_full, e.table_full
    );
    let rows: Vec<Vec<String>> = s
        .worker_detail
        .iter()
        .map(|w| {
            vec![
                w.index.to_string(),
                if w.alive { "yes" } else { "NO" }.into(),
                w.datagrams_in.to_string(),
                w.datagrams_out.to_string(),
                w.initial_invites.to_string(),
                w.active_dialogs.to_string(),
                w.handoff_queue.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &["WORKER", "ALIVE", "RX", "TX", "CALLS", "DIALOGS", "QUEUE"],
        &rows,
        &[true, false, true, true, true, true, true],
    ));
    out
}

/// `sipvane ctl dialogs`.
pub fn dialogs(d: &Dialogs) -> String {
    let per: Vec<String> = d.per_worker.iter().map(u64::to_string).collect();
    format!(
        "active dialogs {}  (created {}, ended {}, expired {}, not tracked {}; per worker {})\n",
        d.active,
        d.created,
        d.ended,
        d.expired,
        d.not_tracked,
        per.join("/")
    )
}

/// `sipvane ctl ul show`.
pub fn registrations(r: &Registrations) -> String {
    let rows: Vec<Vec<String>> = r
        .users
        .iter()
        .flat_map(|u| {
            u.bindings.iter().map(|b| {
                vec![
                    u.aor.clone(),
                    b.contact.clone(),
                    b.received.clone().unwrap_or_else(|| "-".into()),
                    b.expires_in.to_string(),
                    format!("{:.3}", b.q),
                    b.user_agent.clone(),
                ]
            })
        })
        .collect();
    let mut out = table(
        &["AOR", "CONTACT", "RECEIVED", "EXPIRES", "Q", "USER-AGENT"],
        &rows,
        &[false, false, false, true, true, false],
    );
    let _ = writeln!(out, "{} users, {} bindings", r.aors, r.bindings);
    out
}

/// `sipvane ctl ping`.
pub fn health(h: &Health) -> String {
    if h.problems.is_empty() && h.status == "ok" {
        format!("ok: {}/{} workers alive\n", h.alive, h.workers)
    } else {
        format!(
            "unhealthy: {}/{} workers alive: {}\n",
            h.alive,
            h.workers,
            h.problems.join("; ")
        )
    }
}

/// One frame of `sipvane ctl top`.
pub fn top(s: &Status, d: &Dispatcher, e: &ErrorStats) -> String {
    let mut out = String::new();
    summary(s, &mut out);
    failures(e, &mut out);
    out.push('\n');
    let rows: Vec<Vec<String>> = d
        .sets
        .iter()
        .flat_map(|set| {
            set.destinations.iter().map(move |x| {
                vec![
                    set.id.to_string(),
                    x.uri.clone(),
                    x.state.clone(),
                    x.active_calls.to_string(),
                    x.selected.to_string(),
                    x.failed.to_string(),
                    latency(x.latency_us),
                ]
            })
        })
        .collect();
    out.push_str(&table(
        &[
            "SET", "URI", "STATE", "ACTIVE", "SELECTED", "FAILED", "LATENCY",
        ],
        &rows,
        &[true, false, false, true, true, true, true],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = table(
            &["A", "LONG"],
            &[
                vec!["1".into(), "x".into()],
                vec!["100".into(), "yy".into()],
            ],
            &[true, false],
        );
        assert_eq!(t, "  A  LONG\n  1  x\n100  yy\n");
    }

    #[test]
    fn small_formats() {
        assert_eq!(latency(None), "-");
        assert_eq!(latency(Some(1500)), "1.5 ms");
        assert_eq!(latency(Some(25_000)), "25 ms");
        assert_eq!(uptime(59), "59s");
        assert_eq!(uptime(61), "1m01s");
        assert_eq!(uptime(3 * 3600 + 120), "3h02m");
        assert_eq!(uptime(2 * 86_400 + 3600), "2d01h");
    }
}
