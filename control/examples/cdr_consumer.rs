//! Reads sipvane call events from a Redis list and turns them into CDR lines, keeping a
//! live count of calls in progress per destination.
//!
//! ```text
//! cargo run -p control --example cdr_consumer -- redis://127.0.0.1:6379 sipvane:events
//! cargo run -p control --example cdr_consumer -- redis://127.0.0.1:6379 sipvane:events --exit-when-empty
//! ```
//!
//! stdout carries CSV, one line per finished call:
//! `call_id,destination,start,answer,end,duration,result` (times in Unix milliseconds,
//! `answer` empty for failed calls, `duration` in seconds). stderr carries the live counts
//! (`ACTIVE ...`, at most once a second when they change) and destination changes
//! (`DST ...`). BLPOP pops each event, so run one consumer per list, or give each its
//! own list.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::time::{Duration, Instant};

use control::events::Event;

/// Calls whose end we never saw (event dropped, consumer started mid-call) are closed
/// with result `unknown` once this much event time has passed since their last event.
const STALE_MS: u64 = 6 * 3600 * 1000;

struct Call {
    destination: String,
    start: u64,
    answer: Option<u64>,
    last: u64,
}

#[derive(Default)]
struct Cdrs {
    calls: HashMap<String, Call>,
    /// Calls in progress (started, not yet ended or failed) per destination.
    active: BTreeMap<String, u64>,
    /// Latest event time seen: the clock for expiring stale calls.
    now: u64,
    changed: bool,
}

impl Cdrs {
    fn apply(&mut self, ev: Event, out: &mut impl Write) -> io::Result<()> {
        self.now = self.now.max(ev.ts());
        match ev {
            Event::CallStart(s) => {
                let dst = s.destination.to_string();
                if let Some(old) = self.calls.insert(
                    s.call_id.to_string(),
                    Call {
                        destination: dst.clone(),
                        start: s.ts,
                        answer: None,
                        last: s.ts,
                    },
                ) {
                    // A repeated call_start (at-least-once delivery) must not count twice.
                    self.dec(&old.destination);
                }
                self.inc(&dst);
            }
            Event::CallAnswered(a) => {
                let dst = a.destination.to_string();
                match self.calls.get_mut(&*a.call_id) {
                    Some(c) => {
                        c.answer = Some(a.ts);
                        c.last = a.ts;
                        if c.destination != dst {
                            // Failover: the call now loads the destination that answered.
                            let old = std::mem::replace(&mut c.destination, dst.clone());
                            self.dec(&old);
                            self.inc(&dst);
                        }
                    }
                    None => {
                        self.calls.insert(
                            a.call_id.to_string(),
                            Call {
                                destination: dst.clone(),
                                start: a.ts.saturating_sub(a.setup_ms),
                                answer: Some(a.ts),
                                last: a.ts,
                            },
                        );
                        self.inc(&dst);
                    }
                }
            }
            Event::CallEnd(e) => {
                let (dst, start, answer) = match self.calls.remove(&*e.call_id) {
                    Some(c) => {
                        self.dec(&c.destination);
                        (c.destination, Some(c.start), c.answer)
                    }
                    None => (e.destination.to_string(), None, None),
                };
                let answer = answer.or(Some(e.ts.saturating_sub((e.duration_s * 1000.0) as u64)));
                cdr(
                    out,
                    &e.call_id,
                    &dst,
                    start,
                    answer,
                    e.ts,
                    e.duration_s,
                    e.reason.as_str(),
                )?;
            }
            Event::CallFailed(f) => {
                let (dst, start) = match self.calls.remove(&*f.call_id) {
                    Some(c) => {
                        self.dec(&c.destination);
                        (c.destination, Some(c.start))
                    }
                    None => (
                        f.tried.last().map(|d| d.to_string()).unwrap_or_default(),
                        None,
                    ),
                };
                let result = format!("failed:{} {}", f.code, f.reason);
                cdr(out, &f.call_id, &dst, start, None, f.ts, 0.0, &result)?;
            }
            Event::DstUp(d) => eprintln!("DST up set={} {} ({})", d.set, d.uri, d.reason),
            Event::DstDown(d) => eprintln!("DST down set={} {} ({})", d.set, d.uri, d.reason),
        }
        self.expire(out)
    }

    fn expire(&mut self, out: &mut impl Write) -> io::Result<()> {
        let cutoff = self.now.saturating_sub(STALE_MS);
        let stale: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.last < cutoff)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(c) = self.calls.remove(&id) {
                self.dec(&c.destination);
                cdr(
                    out,
                    &id,
                    &c.destination,
                    Some(c.start),
                    c.answer,
                    c.last,
                    0.0,
                    "unknown",
                )?;
            }
        }
        Ok(())
    }

    fn inc(&mut self, dst: &str) {
        *self.active.entry(dst.to_owned()).or_insert(0) += 1;
        self.changed = true;
    }

    fn dec(&mut self, dst: &str) {
        if let Some(n) = self.active.get_mut(dst) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.active.remove(dst);
            }
        }
        self.changed = true;
    }

    fn print_active(&mut self) {
        if !std::mem::take(&mut self.changed) {
            return;
        }
        let total: u64 = self.active.values().sum();
        let mut line = format!("ACTIVE total={total}");
        for (dst, n) in &self.active {
            line.push_str(&format!(" {dst}={n}"));
        }
        eprintln!("{line}");
    }
}

#[allow(clippy::too_many_arguments)]
fn cdr(
    out: &mut impl Write,
    call_id: &str,
    dst: &str,
    start: Option<u64>,
    answer: Option<u64>,
    end: u64,
    duration_s: f64,
    result: &str,
) -> io::Result<()> {
    let opt = |t: Option<u64>| t.map(|t| t.to_string()).unwrap_or_default();
    writeln!(
        out,
        "{},{},{},{},{},{:.3},{}",
        csv(call_id),
        csv(dst),
        opt(start),
        opt(answer),
        end,
        duration_s,
        csv(result)
    )?;
    out.flush()
}

/// Quotes a CSV field when needed (Call-IDs may contain `"`).
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn main() -> anyhow::Result<()> {
    let mut positional = Vec::new();
    let mut exit_when_empty = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--exit-when-empty" => exit_when_empty = true,
            "-h" | "--help" => {
                println!("usage: cdr_consumer [REDIS_URL] [LIST] [--exit-when-empty]");
                return Ok(());
            }
            _ => positional.push(a),
        }
    }
    let url = positional
        .first()
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let list = positional
        .get(1)
        .cloned()
        .unwrap_or_else(|| "sipvane:events".to_owned());

    let client = redis::Client::open(url.as_str())?;
    let mut conn: Option<redis::Connection> = None;
    let mut backoff = Duration::from_millis(100);
    let mut cdrs = Cdrs::default();
    let mut last_print = Instant::now();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "call_id,destination,start,answer,end,duration,result")?;

    loop {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match client.get_connection_with_timeout(Duration::from_secs(2)) {
                Ok(c) => {
                    backoff = Duration::from_millis(100);
                    conn.insert(c)
                }
                Err(e) => {
                    eprintln!("redis {url}: {e}; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        // One-second BLPOP timeout so the live counts are printed even when idle.
        let popped: redis::RedisResult<Option<(String, String)>> =
            redis::cmd("BLPOP").arg(&list).arg(1).query(c);
        match popped {
            Ok(Some((_, json))) => match serde_json::from_str::<Event>(&json) {
                Ok(ev) => cdrs.apply(ev, &mut out)?,
                Err(e) => eprintln!("skipping unreadable event ({e}): {json}"),
            },
            Ok(None) if exit_when_empty => {
                cdrs.changed = true;
                cdrs.print_active();
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("redis {url}: {e}");
                conn = None;
            }
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            cdrs.print_active();
            last_print = Instant::now();
        }
    }
}
