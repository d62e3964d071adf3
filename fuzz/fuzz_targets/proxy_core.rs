//! Structure-aware fuzzing of the sans-IO proxy core (one `Worker` with media
//! anchoring on): the input is a program of operations — requests from
//! callers, destinations or a stranger built from small pools of Call-IDs,
//! tags and branches (so they collide with live transactions and dialogs),
//! responses from the destinations to what the proxy actually sent them
//! (their branches carry its seal, which no fuzzer could guess), RTPEngine ng
//! replies to its real cookies, replays and byte-mutations of anything that
//! crossed the wire, raw bytes, and time advancing.
//!
//! Invariants, after every operation: no panic; open transactions never
//! exceed `max_transactions` and equal `transactions_created -
//! transactions_ended`; tracked dialogs never exceed `max_dialogs`; the timer
//! loop makes progress. At the end, after every timer has run to a time past
//! every lifetime (fr_inv_timer, Timer H, wt_timer, dialog_timeout): no
//! transaction and no dialog is left (nothing outlives its timers) and no
//! destination holds a call slot.
//!
//! The destination table is built once (its Maglev lookup table would cost
//! more than the rest of a run) and shared by all runs; each run starts a day
//! of virtual time after the previous one ended, so a destination a previous
//! run took out of service (hold-down) is back. Its failure streak may carry
//! over, so a crash input may need the inputs before it to replay exactly.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dataplane::dispatch::{parse_list, shared, SharedTable, Table};
use dataplane::proxy::media::{MediaConfig, MediaPolicy, MediaShared, SOCK_MEDIA};
use dataplane::proxy::config::OverloadControl;
use dataplane::proxy::{ProxyConfig, ProxyStats, Worker, HANDED_OVER, SOCK_PRIVATE, SOCK_PUBLIC};
use dataplane::rtpengine::NgFlags;
use dataplane::sip::build::{self, ReplyOpts};
use dataplane::sip::{parse, Uri};
use dataplane::worker::{Core, Outbox};
use libfuzzer_sys::fuzz_target;

const MAX_TRANSACTIONS: usize = 64;
const MAX_DIALOGS: usize = 32;
const HISTORY: usize = 48;

const CALLERS: [&str; 3] = ["127.0.0.1:40000", "127.0.0.1:40001", "[::1]:40002"];
const DESTS: [&str; 3] = ["127.0.0.1:5070", "127.0.0.1:5071", "127.0.0.1:5072"];
const ENGINE: &str = "127.0.0.1:22222";
const STRANGER: &str = "192.0.2.9:5060";

const METHODS: [&str; 10] = [
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE", "UPDATE", "PRACK", "INFO",
];
const CODES: [u16; 16] = [
    100, 180, 183, 200, 202, 301, 404, 407, 408, 480, 486, 487, 500, 503, 603, 699,
];
const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\n";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// Reads the program: each operation takes the bytes it needs; a short
/// input simply ends the program.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

struct World {
    t0: Instant,
    now: Instant,
    worker: Worker,
    stats: Arc<ProxyStats>,
    out: Outbox,
    /// Requests the proxy sent to destinations: (destination, bytes).
    to_dests: Vec<(SocketAddr, Vec<u8>)>,
    /// ng requests the proxy sent to the engine.
    to_engine: Vec<Vec<u8>>,
    /// Every datagram that crossed the wire, for replays.
    wire: Vec<Vec<u8>>,
}

fn push_bounded<T>(v: &mut Vec<T>, x: T) {
    if v.len() == HISTORY {
        v.remove(0);
    }
    v.push(x);
}

/// The shared destination table and the virtual time the next run starts at.
fn table() -> &'static (SharedTable, Mutex<Instant>) {
    static TABLE: OnceLock<(SharedTable, Mutex<Instant>)> = OnceLock::new();
    TABLE.get_or_init(|| {
        let t0 = Instant::now();
        let list: String = DESTS.iter().map(|d| format!("1 sip:{d}\n")).collect();
        let defs = parse_list(&list).expect("list");
        let table = Table::build(&defs, t0, &mut |uri: &str| {
            let u = Uri::parse(uri.as_bytes()).map_err(|e| e.to_string())?;
            dataplane::route::uri_addr(&u).ok_or_else(|| "not an IP".to_string())
        })
        .expect("table");
        (shared(table), Mutex::new(t0))
    })
}

impl World {
    fn new() -> World {
        let (table, next) = table();
        let t0 = *next.lock().expect("lock");
        let media = MediaConfig {
            engines: vec![(addr(ENGINE), 1)],
            offer_flags: NgFlags::parse("replace-origin").expect("flags"),
            answer_flags: NgFlags::parse("replace-origin").expect("flags"),
            timeout: Duration::from_millis(500),
            retries: 1,
            on_failure: MediaPolicy::Reject,
            ..MediaConfig::default()
        };
        let mut cfg = ProxyConfig {
            max_transactions: MAX_TRANSACTIONS,
            overload_transactions: MAX_TRANSACTIONS * 3 / 4,
            overload_control: Some(OverloadControl {
                start_transactions: MAX_TRANSACTIONS / 4,
                validity_ms: 500,
            }),
            max_dialogs: MAX_DIALOGS,
            dialog_timeout: Duration::from_secs(300),
            media: Some(Arc::new(MediaShared::new(media, 1, 7))),
            ..ProxyConfig::default()
        };
        cfg.timers.fr_inv_timer = Duration::from_secs(30);
        let stats = Arc::new(ProxyStats::default());
        let worker = Worker::new(0, Arc::new(cfg), table.clone(), stats.clone(), t0);
        World {
            t0,
            now: t0,
            worker,
            stats,
            out: Outbox::new(),
            to_dests: Vec::new(),
            to_engine: Vec::new(),
            wire: Vec::new(),
        }
    }

    fn deliver(&mut self, socket: u8, from: SocketAddr, data: &[u8]) {
        push_bounded(&mut self.wire, data.to_vec());
        self.worker
            .on_datagram(self.now, socket, from, data, &mut self.out);
        self.collect();
    }

    /// Takes what the proxy sent into the histories and checks the bounds.
    fn collect(&mut self) {
        let sent: Vec<(u8, SocketAddr, Vec<u8>)> = self
            .out
            .iter()
            .map(|(s, d, b)| (s, d, b.to_vec()))
            .collect();
        self.out.clear();
        for (socket, to, data) in sent {
            if socket == SOCK_MEDIA {
                push_bounded(&mut self.to_engine, data.clone());
            } else if DESTS.iter().any(|d| addr(d) == to) && !data.starts_with(b"SIP/2.0") {
                push_bounded(&mut self.to_dests, (to, data.clone()));
            }
            push_bounded(&mut self.wire, data);
        }
        let (txns, dialogs) = self.worker.occupancy();
        assert!(txns <= MAX_TRANSACTIONS, "{txns} transactions");
        assert!(dialogs <= MAX_DIALOGS, "{dialogs} dialogs");
        let s = self.stats.snapshot();
        assert_eq!(
            s.transactions_created - s.transactions_ended,
            txns as u64,
            "transaction counters disagree with the table"
        );
    }

    /// Runs every timer due up to `until`.
    fn advance(&mut self, until: Instant) {
        let mut turns = 0u32;
        while let Some(d) = self.worker.next_deadline() {
            if d > until {
                break;
            }
            self.now = self.now.max(d);
            self.worker.on_timer(self.now, &mut self.out);
            self.collect();
            turns += 1;
            assert!(turns < 1_000_000, "the timer loop makes no progress");
        }
        self.now = self.now.max(until);
    }
}

fn source(b: u8) -> SocketAddr {
    match b % 8 {
        0..=2 => addr(CALLERS[usize::from(b % 8)]),
        3..=5 => addr(DESTS[usize::from(b % 8 - 3)]),
        6 => addr(ENGINE),
        _ => addr(STRANGER),
    }
}

fn host(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.to_string(),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

/// A request from the pools: Call-ID, tags and branch collide on purpose.
fn request(c: &mut Cursor) -> Option<(u8, SocketAddr, Vec<u8>)> {
    let (a, b, d, e) = (c.byte()?, c.byte()?, c.byte()?, c.byte()?);
    let from = source(a);
    let method = METHODS[usize::from(b) % METHODS.len()];
    let call = d % 6;
    let branch = d / 6 % 8;
    let cseq = e % 4 + 1;
    let to_tag = match e / 4 % 4 {
        0 => String::new(),
        t => format!(";tag=d{t}"),
    };
    let route = if e & 0x10 != 0 {
        "Route: <sip:127.0.0.1:5061;lr>\r\n"
    } else {
        ""
    };
    let ruri = if e & 0x20 != 0 {
        format!("sip:a@{}", host(addr(CALLERS[usize::from(call % 3)])))
    } else {
        "sip:100@127.0.0.1:5060".to_string()
    };
    let body = if e & 0x40 != 0 { SDP } else { "" };
    let ctype = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    let socket = match a / 8 % 4 {
        0 | 1 => SOCK_PUBLIC,
        2 => SOCK_PRIVATE,
        _ => SOCK_PUBLIC | HANDED_OVER,
    };
    // Half the calls' callers offer RFC 7339 overload control.
    let oc = if call % 2 == 0 { ";oc;oc-algo=\"loss\"" } else { "" };
    let msg = format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKfz{branch};rport{oc}\r\n\
         {route}Max-Forwards: {}\r\nFrom: <sip:a@127.0.0.1>;tag=f{call}\r\nTo: <sip:100@127.0.0.1>{to_tag}\r\n\
         Call-ID: c{call}@fuzz\r\nCSeq: {cseq} {method}\r\nContact: <sip:a@{}>\r\n{ctype}\
         Content-Length: {}\r\n\r\n{body}",
        host(from),
        if e & 0x80 != 0 { 0 } else { 70 },
        host(from),
        body.len(),
    );
    Some((socket, from, msg.into_bytes()))
}

/// A destination's response to a request the proxy sent it.
fn response(w: &World, c: &mut Cursor) -> Option<(SocketAddr, Vec<u8>)> {
    let (a, b, t) = (c.byte()?, c.byte()?, c.byte()?);
    if w.to_dests.is_empty() {
        return None;
    }
    let (to, req) = &w.to_dests[usize::from(a) % w.to_dests.len()];
    let req = parse(req).ok()?;
    let code = CODES[usize::from(b) % CODES.len()];
    let tag = format!("d{}", t % 4);
    let opts = ReplyOpts {
        to_tag: Some(tag.as_bytes()),
        ..ReplyOpts::default()
    };
    let mut out = Vec::new();
    build::reply(&req, code, build::reason_phrase(code), &opts, &mut out).ok()?;
    if t & 0x10 != 0 && (180..300).contains(&code) {
        // An SDP answer (the media answer path).
        let end = b"Content-Length: 0\r\n\r\n";
        if out.ends_with(end) {
            out.truncate(out.len() - end.len());
            out.extend_from_slice(
                format!(
                    "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
                    SDP.len()
                )
                .as_bytes(),
            );
        }
    }
    if t & 0x20 != 0 {
        // Record-Route the destination adds, as a PBX may.
        if let Some(p) = out.windows(2).position(|x| x == b"\r\n") {
            out.splice(
                p + 2..p + 2,
                b"Record-Route: <sip:127.0.0.1:5070;lr>\r\n".iter().copied(),
            );
        }
    }
    let from = if t & 0x40 != 0 {
        addr(DESTS[usize::from(t) % DESTS.len()])
    } else {
        *to
    };
    Some((from, out))
}

/// RTPEngine's reply to one of the proxy's ng requests (by its cookie).
fn engine_reply(w: &World, c: &mut Cursor) -> Option<Vec<u8>> {
    let (a, b) = (c.byte()?, c.byte()?);
    if w.to_engine.is_empty() {
        return None;
    }
    let req = &w.to_engine[usize::from(a) % w.to_engine.len()];
    let cookie = req.split(|&x| x == b' ').next()?;
    let dict = match b % 5 {
        0 | 1 => format!("d6:result2:ok3:sdp{}:{SDP}e", SDP.len()),
        2 => "d6:result4:ponge".to_string(),
        3 => "d6:result5:error12:error-reason9:overloade".to_string(),
        _ => "d6:result2:oke".to_string(),
    };
    let mut out = cookie.to_vec();
    out.push(b' ');
    out.extend_from_slice(dict.as_bytes());
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let mut w = World::new();
    let mut c = Cursor(data);
    while let Some(op) = c.byte() {
        match op % 8 {
            0 | 1 => {
                let Some((socket, from, msg)) = request(&mut c) else {
                    break;
                };
                w.deliver(socket, from, &msg);
            }
            2 | 3 => {
                let Some((from, msg)) = response(&w, &mut c) else {
                    continue;
                };
                w.deliver(SOCK_PRIVATE, from, &msg);
            }
            4 => {
                let Some(msg) = engine_reply(&w, &mut c) else {
                    continue;
                };
                w.deliver(SOCK_MEDIA, addr(ENGINE), &msg);
            }
            5 => {
                // Replay something that crossed the wire, maybe with one byte
                // changed, from anyone to any socket.
                let (Some(a), Some(b), Some(pos), Some(val)) =
                    (c.byte(), c.byte(), c.u16(), c.byte())
                else {
                    break;
                };
                if w.wire.is_empty() {
                    continue;
                }
                let mut msg = w.wire[usize::from(a) % w.wire.len()].clone();
                if b & 0x80 != 0 && !msg.is_empty() {
                    let p = usize::from(pos) % msg.len();
                    msg[p] = val;
                }
                let socket = [SOCK_PUBLIC, SOCK_PRIVATE, SOCK_MEDIA][usize::from(b % 3)];
                w.deliver(socket, source(b / 3), &msg);
            }
            6 => {
                let (Some(a), Some(n)) = (c.byte(), c.byte()) else {
                    break;
                };
                let raw = c.bytes(usize::from(n)).to_vec();
                w.deliver(a % 3, source(a / 3), &raw);
            }
            _ => {
                let Some(ms) = c.u16() else { break };
                // Up to ~33 s per step, or ~11 min when the top bit is set
                // (past dialog_timeout). Longer steps found nothing more and
                // made a run slow: an engine marked down is pinged every 5 s.
                let ms = if ms & 0x8000 != 0 {
                    u64::from(ms & 0x7fff) * 20
                } else {
                    u64::from(ms & 0x7fff)
                };
                let until = w.now + Duration::from_millis(ms);
                w.advance(until);
            }
        }
    }
    // Past every lifetime: fr_inv_timer (30 s), Timer H (32 s), wt_timer,
    // the CANCEL wait, dialog_timeout (300 s).
    let end = w.now + Duration::from_secs(400);
    w.advance(end);
    let (txns, dialogs) = w.worker.occupancy();
    assert_eq!(
        (txns, dialogs),
        (0, 0),
        "left after every timer ran ({:?} of virtual time)",
        w.now - w.t0
    );
    let (table, next) = table();
    for (_, d) in table.load().iter() {
        assert_eq!(
            d.stats.active_calls(),
            0,
            "a call slot of {} leaked",
            d.addr
        );
    }
    *next.lock().expect("lock") = w.now + Duration::from_secs(86_400);
});
