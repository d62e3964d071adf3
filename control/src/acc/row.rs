//! The pure half of accounting: worker call events in, Kamailio `acc` /
//! `missed_calls` / `acc_cdrs` rows out. No I/O, no clock (event instants are
//! mapped to wall time by a [`WallClock`] the caller owns).
//!
//! What Kamailio's `acc` module writes, and so what this writes:
//!
//! - `acc`, INVITE: when the call is answered (the 2xx relayed upstream):
//!   `method = INVITE`, the caller's From-tag, the callee's To-tag from the
//!   2xx, Call-ID, the 2xx's code and reason phrase, the time of the answer.
//! - `acc`, BYE: when the BYE transaction gets its final response, with the
//!   BYE's own tags (whoever hung up is the From side) and that response's
//!   code and reason. Only 2xx BYEs unless `log_failed` (Kamailio writes
//!   negative replies to `acc` only with `failed_transaction_flag`).
//! - `missed_calls`, INVITE: when an initial INVITE gets its final negative
//!   response upstream (busy, no answer, cancelled → 487, every destination
//!   failed → 503, none available → 503), with that response's code, reason
//!   and To-tag. With `log_failed` the same row also goes to `acc`.
//! - `acc_cdrs` (with `cdrs`): one row per answered call when it ends (BYE
//!   answered, or dialog timeout): `start_time` = answer, `end_time`, and
//!   `duration` in seconds.
//!
//! Extra columns are filled from what the call's INVITE carried (From, To,
//! Request-URI, the destination chosen). The builder remembers that per
//! Call-ID from the `Start` event until the call's last row is written.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::proxy::events::{CallEvent, Reply};

use crate::events::WallClock;

/// Which table a row goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Kamailio's `acc` (name configurable).
    Acc,
    /// `missed_calls`.
    Missed,
    /// `acc_cdrs`.
    Cdrs,
}

impl Table {
    /// Its code in the journal.
    pub fn code(self) -> u8 {
        match self {
            Table::Acc => 0,
            Table::Missed => 1,
            Table::Cdrs => 2,
        }
    }

    /// The table of a journal code.
    pub fn from_code(c: u8) -> Option<Table> {
        match c {
            0 => Some(Table::Acc),
            1 => Some(Table::Missed),
            2 => Some(Table::Cdrs),
            _ => None,
        }
    }

    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Acc => "acc",
            Table::Missed => "missed_calls",
            Table::Cdrs => "acc_cdrs",
        }
    }
}

/// A column value. Times are Unix milliseconds, written as
/// `YYYY-MM-DD HH:MM:SS` UTC (Kamailio's second resolution).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Text(Box<str>),
    Time(u64),
    Real(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(s) => f.write_str(s),
            Value::Time(ms) => f.write_str(&sql_time(*ms)),
            Value::Real(x) => write!(f, "{x}"),
        }
    }
}

/// One row: its table and its columns in order. Column names are either the
/// schema's or validated configuration names, never anything from the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub table: Table,
    pub cols: Vec<(Arc<str>, Value)>,
}

impl Row {
    /// The value of `column`, if the row has it.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.cols
            .iter()
            .find(|(c, _)| &**c == column)
            .map(|(_, v)| v)
    }
}

/// Where an extra column's value comes from. Names follow the meaning, with
/// Kamailio's pseudo-variables accepted as aliases (`$fU`, `$rU`, `$du`…).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// User part of the From URI (`$fU`).
    FromUser,
    /// Host of the From URI (`$fd`).
    FromDomain,
    /// The From URI (`$fu`).
    FromUri,
    /// User part of the To URI (`$tU`).
    ToUser,
    /// Host of the To URI (`$td`).
    ToDomain,
    /// The To URI (`$tu`).
    ToUri,
    /// User part of the Request-URI as received (`$rU`).
    RuriUser,
    /// Host of the Request-URI (`$rd`).
    RuriDomain,
    /// The Request-URI (`$ru`).
    Ruri,
    /// The destination chosen (the one that answered, or the last tried):
    /// `sip:IP:PORT` (`$du`).
    DstUri,
    /// Dispatcher set id.
    Set,
    /// Call-ID (`$ci`).
    Callid,
    /// Seconds from answer to end (CDR rows; empty elsewhere).
    Duration,
}

/// Every source name and alias [`Source::parse`] accepts, for messages.
pub const SOURCE_NAMES: &str =
    "from_user ($fU), from_domain ($fd), from_uri ($fu), to_user ($tU), \
     to_domain ($td), to_uri ($tu), ruri_user ($rU), ruri_domain ($rd), ruri ($ru), dst_uri ($du), \
     set, callid ($ci), duration";

impl Source {
    /// A source by name or Kamailio alias.
    pub fn parse(s: &str) -> Option<Source> {
        Some(match s {
            "from_user" | "$fU" => Source::FromUser,
            "from_domain" | "$fd" => Source::FromDomain,
            "from_uri" | "$fu" => Source::FromUri,
            "to_user" | "$tU" => Source::ToUser,
            "to_domain" | "$td" => Source::ToDomain,
            "to_uri" | "$tu" => Source::ToUri,
            "ruri_user" | "$rU" => Source::RuriUser,
            "ruri_domain" | "$rd" => Source::RuriDomain,
            "ruri" | "$ru" => Source::Ruri,
            "dst_uri" | "$du" => Source::DstUri,
            "set" => Source::Set,
            "callid" | "$ci" => Source::Callid,
            "duration" => Source::Duration,
            _ => return None,
        })
    }
}

/// The columns of `acc` and `missed_calls` in Kamailio's schema.
pub const ACC_COLUMNS: [&str; 7] = [
    "method",
    "from_tag",
    "to_tag",
    "callid",
    "sip_code",
    "sip_reason",
    "time",
];
/// The columns of `acc_cdrs`.
pub const CDR_COLUMNS: [&str; 3] = ["start_time", "end_time", "duration"];

/// True for a column name that may be pasted into SQL: ASCII letters,
/// digits and `_`, not starting with a digit, at most 64 bytes.
pub fn is_column_name(s: &str) -> bool {
    let mut b = s.bytes();
    s.len() <= 64
        && matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// What the builder is told by the configuration.
#[derive(Clone, Debug, Default)]
pub struct BuildConfig {
    /// Failed transactions also go to `acc` (Kamailio's
    /// `failed_transaction_flag` with `db_flag`).
    pub log_failed: bool,
    /// Write `acc_cdrs` rows.
    pub cdrs: bool,
    /// Extra columns of `acc` and `missed_calls`: (column, source).
    pub extra: Vec<(String, Source)>,
    /// Extra columns of `acc_cdrs`.
    pub cdr_extra: Vec<(String, Source)>,
    /// Calls remembered for extra columns at most (beyond: rows without extras).
    pub max_calls: usize,
    /// A remembered call is forgotten after this long without its last row
    /// (its BYE event was lost, say).
    pub call_ttl: Duration,
}

/// What the INVITE said, kept until the call's last row.
#[derive(Clone, Debug)]
struct CallInfo {
    from: Box<str>,
    to: Box<str>,
    ruri: Box<str>,
    set: u32,
    dest: Option<SocketAddr>,
    seen: Instant,
    answered: Option<Instant>,
}

/// Turns call events into rows. One per process, on the control thread.
pub struct Builder {
    cfg: BuildConfig,
    clock: WallClock,
    calls: HashMap<Box<str>, CallInfo>,
    names: Names,
    extra: Vec<(Arc<str>, Source)>,
    cdr_extra: Vec<(Arc<str>, Source)>,
    /// Starts not remembered because `max_calls` was reached.
    pub overflow: u64,
    /// When a full table was last swept (at most once per `PRUNE_FULL`).
    swept: Option<Instant>,
}

/// How often a full call table may be swept for stale calls: a sweep is
/// linear in the table, and a table full of live calls stays full.
const PRUNE_FULL: Duration = Duration::from_secs(10);

struct Names {
    acc: [Arc<str>; 7],
    cdr: [Arc<str>; 3],
}

impl Builder {
    pub fn new(cfg: BuildConfig, clock: WallClock) -> Builder {
        let arc = |v: &[(String, Source)]| -> Vec<(Arc<str>, Source)> {
            v.iter().map(|(c, s)| (Arc::from(c.as_str()), *s)).collect()
        };
        Builder {
            extra: arc(&cfg.extra),
            cdr_extra: arc(&cfg.cdr_extra),
            names: Names {
                acc: ACC_COLUMNS.map(Arc::from),
                cdr: CDR_COLUMNS.map(Arc::from),
            },
            calls: HashMap::new(),
            clock,
            cfg,
            overflow: 0,
            swept: None,
        }
    }

    /// Calls remembered now.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// The rows `ev` produces, appended to `out`.
    pub fn on_event(&mut self, ev: &CallEvent, out: &mut Vec<Row>) {
        match ev {
            CallEvent::Start {
                at,
                call_id,
                from,
                to,
                ruri,
                set,
                dest,
                ..
            } => {
                let full = self.calls.len() >= self.cfg.max_calls.max(1);
                if full
                    && self
                        .swept
                        .is_none_or(|t| at.saturating_duration_since(t) >= PRUNE_FULL)
                {
                    self.swept = Some(*at);
                    self.prune(*at);
                }
                if self.calls.len() >= self.cfg.max_calls.max(1) {
                    self.overflow += 1;
                    return;
                }
                self.calls.insert(
                    call_id.clone(),
                    CallInfo {
                        from: from.clone(),
                        to: to.clone(),
                        ruri: ruri.clone(),
                        set: *set,
                        dest: Some(*dest),
                        seen: *at,
                        answered: None,
                    },
                );
            }
            CallEvent::Answered {
                at,
                call_id,
                dest,
                code,
                reply,
                ..
            } => {
                if let Some(c) = self.calls.get_mut(call_id) {
                    c.dest = Some(*dest);
                    c.answered = Some(*at);
                    c.seen = *at;
                }
                out.push(self.txn_row(Table::Acc, "INVITE", *at, call_id, *code, reply));
            }
            CallEvent::Failed {
                at,
                call_id,
                code,
                dest,
                reply,
                ..
            } => {
                if let (Some(c), Some(d)) = (self.calls.get_mut(call_id), dest) {
                    c.dest = Some(*d);
                }
                out.push(self.txn_row(Table::Missed, "INVITE", *at, call_id, *code, reply));
                if self.cfg.log_failed {
                    out.push(self.txn_row(Table::Acc, "INVITE", *at, call_id, *code, reply));
                }
                self.calls.remove(call_id);
            }
            CallEvent::Bye {
                at,
                call_id,
                code,
                reply,
            } => {
                if *code < 300 || self.cfg.log_failed {
                    out.push(self.txn_row(Table::Acc, "BYE", *at, call_id, *code, reply));
                }
                self.end(*at, call_id, out);
            }
            CallEvent::End {
                at,
                call_id,
                timeout: true,
                ..
            } => self.end(*at, call_id, out),
            CallEvent::End { .. } => {
                // The BYE was relayed; its transaction's outcome (`Bye`)
                // writes the rows.
            }
        }
    }

    /// Forgets calls not heard of for `call_ttl`.
    pub fn prune(&mut self, now: Instant) {
        let ttl = self.cfg.call_ttl;
        self.calls
            .retain(|_, c| now.saturating_duration_since(c.seen) < ttl);
    }

    fn end(&mut self, at: Instant, call_id: &str, out: &mut Vec<Row>) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        let (true, Some(answered)) = (self.cfg.cdrs, call.answered) else {
            return;
        };
        let duration = at.saturating_duration_since(answered);
        let n = &self.names.cdr;
        let mut cols = vec![
            (n[0].clone(), Value::Time(self.clock.unix_ms(answered))),
            (n[1].clone(), Value::Time(self.clock.unix_ms(at))),
            (n[2].clone(), Value::Real(duration_secs(duration))),
        ];
        for (col, src) in &self.cdr_extra {
            cols.push((
                col.clone(),
                Value::Text(extra_value(*src, call_id, Some(&call), Some(duration))),
            ));
        }
        out.push(Row {
            table: Table::Cdrs,
            cols,
        });
    }

    fn txn_row(
        &self,
        table: Table,
        method: &str,
        at: Instant,
        call_id: &str,
        code: u16,
        reply: &Reply,
    ) -> Row {
        let n = &self.names.acc;
        let mut cols = Vec::with_capacity(7 + self.extra.len());
        // Cut to Kamailio's column sizes, so that an overlong tag or
        // Call-ID from the wire cannot get the row refused.
        cols.extend([
            (n[0].clone(), Value::Text(clip(method, 16))),
            (n[1].clone(), Value::Text(clip(&reply.from_tag, 128))),
            (n[2].clone(), Value::Text(clip(&reply.to_tag, 128))),
            (n[3].clone(), Value::Text(clip(call_id, 255))),
            (n[4].clone(), Value::Text(clip(&code.to_string(), 3))),
            (n[5].clone(), Value::Text(clip(&reply.reason, 128))),
            (n[6].clone(), Value::Time(self.clock.unix_ms(at))),
        ]);
        let call = self.calls.get(call_id);
        for (col, src) in &self.extra {
            cols.push((
                col.clone(),
                Value::Text(extra_value(*src, call_id, call, None)),
            ));
        }
        Row { table, cols }
    }
}

/// At most `max` characters of `s` (VARCHAR(n) counts characters).
fn clip(s: &str, max: usize) -> Box<str> {
    match s.char_indices().nth(max) {
        Some((end, _)) => s[..end].into(),
        None => s.into(),
    }
}

/// Seconds with millisecond resolution.
fn duration_secs(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

fn extra_value(
    src: Source,
    call_id: &str,
    call: Option<&CallInfo>,
    duration: Option<Duration>,
) -> Box<str> {
    let uri_part = |uri: &str, user: bool| -> Box<str> {
        match dataplane::sip::uri::Uri::parse(uri.as_bytes()) {
            Ok(u) if user => String::from_utf8_lossy(u.user.unwrap_or(b"")).into(),
            Ok(u) => String::from_utf8_lossy(u.host).into(),
            Err(_) => "".into(),
        }
    };
    match (src, call) {
        (Source::Callid, _) => call_id.into(),
        (Source::Duration, _) => {
            duration.map_or_else(|| "".into(), |d| format!("{:.3}", duration_secs(d)).into())
        }
        (_, None) => "".into(),
        (Source::FromUser, Some(c)) => uri_part(&c.from, true),
        (Source::FromDomain, Some(c)) => uri_part(&c.from, false),
        (Source::FromUri, Some(c)) => c.from.clone(),
        (Source::ToUser, Some(c)) => uri_part(&c.to, true),
        (Source::ToDomain, Some(c)) => uri_part(&c.to, false),
        (Source::ToUri, Some(c)) => c.to.clone(),
        (Source::RuriUser, Some(c)) => uri_part(&c.ruri, true),
        (Source::RuriDomain, Some(c)) => uri_part(&c.ruri, false),
        (Source::Ruri, Some(c)) => c.ruri.clone(),
        (Source::DstUri, Some(c)) => c
            .dest
            .map_or_else(|| "".into(), |d| format!("sip:{d}").into()),
        (Source::Set, Some(c)) => c.set.to_string().into(),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC, seconds truncated).
pub fn sql_time(unix_ms: u64) -> String {
    let (y, m, d, hh, mm, ss) = crate::utc::fields(unix_ms / 1000);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0_MS: u64 = 1_764_849_600_000; // 2025-12-04 12:00:00 UTC

    fn builder(cfg: BuildConfig) -> (Builder, Instant) {
        let t0 = Instant::now();
        (Builder::new(cfg, WallClock::from_parts(t0, T0_MS)), t0)
    }

    fn cfg() -> BuildConfig {
        BuildConfig {
            max_calls: 100,
            call_ttl: Duration::from_secs(3600),
            ..BuildConfig::default()
        }
    }

    fn reply(f: &str, t: &str, r: &str) -> Reply {
        Reply {
            from_tag: f.into(),
            to_tag: t.into(),
            reason: r.into(),
        }
    }

    fn start(at: Instant, call: &str) -> CallEvent {
        CallEvent::Start {
            at,
            call_id: call.into(),
            from: "sip:alice@a.example".into(),
            to: "sip:bob@b.example".into(),
            ruri: "sip:1000@sbc.example:5060;user=phone".into(),
            set: 7,
            dest: "10.0.0.1:5060".parse().unwrap(),
            worker: 0,
        }
    }

    fn text(r: &Row, c: &str) -> String {
        r.get(c).map(|v| v.to_string()).unwrap_or_default()
    }

    #[test]
    fn answered_call_gives_invite_and_bye_rows() {
        let mut c = cfg();
        c.extra = vec![
            ("src_user".into(), Source::FromUser),
            ("dst_user".into(), Source::parse("$rU").unwrap()),
            ("dst_uri".into(), Source::DstUri),
        ];
        let (mut b, t0) = builder(c);
        let mut out = Vec::new();
        b.on_event(&start(t0, "c1"), &mut out);
        assert!(out.is_empty());
        let t1 = t0 + Duration::from_millis(1500);
        b.on_event(
            &CallEvent::Answered {
                at: t1,
                call_id: "c1".into(),
                dest: "10.0.0.2:5060".parse().unwrap(),
                setup: Duration::from_millis(1500),
                code: 200,
                reply: reply("ft", "tt", "OK"),
            },
            &mut out,
        );
        b.on_event(
            &CallEvent::End {
                at: t1,
                call_id: "c1".into(),
                dest: None,
                duration: Duration::ZERO,
                timeout: false,
            },
            &mut out,
        );
        b.on_event(
            &CallEvent::Bye {
                at: t0 + Duration::from_secs(62),
                call_id: "c1".into(),
                code: 200,
                reply: reply("tt", "ft", "OK"),
            },
            &mut out,
        );
        assert_eq!(out.len(), 2, "{out:?}");
        let (inv, bye) = (&out[0], &out[1]);
        assert_eq!((inv.table, bye.table), (Table::Acc, Table::Acc));
        let cols: Vec<&str> = inv.cols.iter().map(|(c, _)| &**c).collect();
        assert_eq!(
            cols,
            [
                "method",
                "from_tag",
                "to_tag",
                "callid",
                "sip_code",
                "sip_reason",
                "time",
                "src_user",
                "dst_user",
                "dst_uri"
            ]
        );
        let vals: Vec<String> = inv.cols.iter().map(|(_, v)| v.to_string()).collect();
        assert_eq!(
            vals,
            [
                "INVITE",
                "ft",
                "tt",
                "c1",
                "200",
                "OK",
                "2025-12-04 12:00:01",
                "alice",
                "1000",
                "sip:10.0.0.2:5060"
            ]
        );
        assert_eq!(text(bye, "method"), "BYE");
        assert_eq!(
            (text(bye, "from_tag"), text(bye, "to_tag")),
            ("tt".into(), "ft".into())
        );
        assert_eq!(text(bye, "time"), "2025-12-04 12:01:02");
        // The BYE row keeps the call's extras; then the call is forgotten.
        assert_eq!(text(bye, "dst_uri"), "sip:10.0.0.2:5060");
        assert_eq!(b.calls(), 0);
    }

    #[test]
    fn failed_and_cancelled_calls_are_missed_calls() {
        let (mut b, t0) = builder(BuildConfig {
            extra: vec![("dst_uri".into(), Source::DstUri)],
            ..cfg()
        });
        let mut out = Vec::new();
        for (call, code, reason, cancelled) in [
            ("busy", 486, "Busy Here", false),
            ("cxl", 487, "Request Terminated", true),
            ("all", 503, "Service Unavailable", false),
        ] {
            b.on_event(&start(t0, call), &mut out);
            b.on_event(
                &CallEvent::Failed {
                    at: t0,
                    call_id: call.into(),
                    code,
                    dest: Some("10.0.0.3:5060".parse().unwrap()),
                    reply: reply("f", "t", reason),
                    cancelled,
                },
                &mut out,
            );
        }
        // None chosen at all: no Start, no destination.
        b.on_event(
            &CallEvent::Failed {
                at: t0,
                call_id: "none".into(),
                code: 503,
                dest: None,
                reply: reply("f", "local", "Service Unavailable"),
                cancelled: false,
            },
            &mut out,
        );
        let got: Vec<(Table, String, String, String)> = out
            .iter()
            .map(|r| {
                (
                    r.table,
                    text(r, "callid"),
                    text(r, "sip_code"),
                    text(r, "dst_uri"),
                )
            })
            .collect();
        let d = "sip:10.0.0.3:5060".to_string();
        assert_eq!(
            got,
            [
                (Table::Missed, "busy".into(), "486".into(), d.clone()),
                (Table::Missed, "cxl".into(), "487".into(), d.clone()),
                (Table::Missed, "all".into(), "503".into(), d),
                (Table::Missed, "none".into(), "503".into(), "".into()),
            ]
        );
        assert_eq!(text(&out[1], "sip_reason"), "Request Terminated");
        assert_eq!(b.calls(), 0);
    }

    #[test]
    fn log_failed_also_writes_acc_and_failed_byes() {
        let (mut b, t0) = builder(BuildConfig {
            log_failed: true,
            ..cfg()
        });
        let mut out = Vec::new();
        let failed = CallEvent::Failed {
            at: t0,
            call_id: "x".into(),
            code: 486,
            dest: None,
            reply: reply("f", "t", "Busy Here"),
            cancelled: false,
        };
        b.on_event(&failed, &mut out);
        b.on_event(
            &CallEvent::Bye {
                at: t0,
                call_id: "y".into(),
                code: 481,
                reply: reply("f", "t", "Call Does Not Exist"),
            },
            &mut out,
        );
        let tables: Vec<Table> = out.iter().map(|r| r.table).collect();
        assert_eq!(tables, [Table::Missed, Table::Acc, Table::Acc]);

        // Without it, a 481 to a BYE is not accounted.
        let (mut b, t0) = builder(cfg());
        out.clear();
        b.on_event(
            &CallEvent::Bye {
                at: t0,
                call_id: "y".into(),
                code: 481,
                reply: reply("f", "t", "Call Does Not Exist"),
            },
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn cdr_rows_on_bye_and_on_timeout() {
        let (mut b, t0) = builder(BuildConfig {
            cdrs: true,
            cdr_extra: vec![
                ("callid".into(), Source::Callid),
                ("src_user".into(), Source::FromUser),
            ],
            ..cfg()
        });
        let mut out = Vec::new();
        for call in ["a", "b"] {
            b.on_event(&start(t0, call), &mut out);
            b.on_event(
                &CallEvent::Answered {
                    at: t0 + Duration::from_secs(2),
                    call_id: call.into(),
                    dest: "10.0.0.2:5060".parse().unwrap(),
                    setup: Duration::ZERO,
                    code: 200,
                    reply: reply("f", "t", "OK"),
                },
                &mut out,
            );
        }
        b.on_event(
            &CallEvent::Bye {
                at: t0 + Duration::from_millis(12_250),
                call_id: "a".into(),
                code: 200,
                reply: reply("f", "t", "OK"),
            },
            &mut out,
        );
        b.on_event(
            &CallEvent::End {
                at: t0 + Duration::from_secs(3602),
                call_id: "b".into(),
                dest: None,
                duration: Duration::ZERO,
                timeout: true,
            },
            &mut out,
        );
        let cdrs: Vec<&Row> = out.iter().filter(|r| r.table == Table::Cdrs).collect();
        assert_eq!(cdrs.len(), 2);
        assert_eq!(text(cdrs[0], "start_time"), "2025-12-04 12:00:02");
        assert_eq!(text(cdrs[0], "end_time"), "2025-12-04 12:00:12");
        assert_eq!(cdrs[0].get("duration"), Some(&Value::Real(10.25)));
        assert_eq!(text(cdrs[0], "callid"), "a");
        assert_eq!(text(cdrs[0], "src_user"), "alice");
        assert_eq!(cdrs[1].get("duration"), Some(&Value::Real(3600.0)));
    }

    #[test]
    fn remembered_calls_are_bounded_and_expire() {
        let (mut b, t0) = builder(BuildConfig {
            max_calls: 2,
            call_ttl: Duration::from_secs(10),
            ..cfg()
        });
        let mut out = Vec::new();
        for c in ["1", "2", "3"] {
            b.on_event(&start(t0, c), &mut out);
        }
        assert_eq!((b.calls(), b.overflow), (2, 1));
        // Later, the stale ones make room.
        b.on_event(&start(t0 + Duration::from_secs(11), "4"), &mut out);
        assert_eq!((b.calls(), b.overflow), (1, 1));
    }

    #[test]
    fn values_are_cut_to_the_schema() {
        let (b, t0) = builder(cfg());
        let long = "é".repeat(300);
        let r = b.txn_row(
            Table::Acc,
            "INVITE",
            t0,
            &long,
            200,
            &reply(&long, "t", &long),
        );
        assert_eq!(text(&r, "callid").chars().count(), 255);
        assert_eq!(text(&r, "from_tag").chars().count(), 128);
        assert_eq!(text(&r, "sip_reason").chars().count(), 128);
        assert_eq!(text(&r, "to_tag"), "t");
        assert_eq!(&*clip("abc", 3), "abc");
    }

    #[test]
    fn times_and_names() {
        assert_eq!(sql_time(0), "1970-01-01 00:00:00");
        assert_eq!(sql_time(951_782_400_999), "2000-02-29 00:00:00");
        assert_eq!(sql_time(4_102_444_799_000), "2099-12-31 23:59:59");
        assert!(is_column_name("src_user"));
        assert!(!is_column_name("1x"));
        assert!(!is_column_name("a;drop"));
        assert!(!is_column_name(""));
        assert_eq!(Source::parse("$du"), Some(Source::DstUri));
        assert_eq!(Source::parse("nope"), None);
        for t in [Table::Acc, Table::Missed, Table::Cdrs] {
            assert_eq!(Table::from_code(t.code()), Some(t));
        }
    }
}
