//! The call generator: thread-per-core UAC over mio (epoll).
//!
//! Each thread owns a few UDP sockets (many source ports, so a proxy's
//! `SO_REUSEPORT` hash spreads them over its workers), a slab of call slots
//! (`concurrency / threads`) and its own latency histogram; threads share
//! nothing but progress counters. A call: INVITE (Timer A retransmissions
//! until a provisional), 100/180/200, ACK and BYE along the Record-Route
//! set, 200 for the BYE. Bounded: no call starts after `calls` or
//! `duration`, and the thread stops at `duration + timeout + 1 s` at the
//! latest, counting what is left as `unfinished`.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dataplane::sip::{parse, Method};
use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use crate::msg::{self, CallRef, Dialog};

/// What to run.
#[derive(Debug, Clone)]
pub struct UacConfig {
    pub target: SocketAddr,
    /// Offered calls per second over all threads.
    pub rate: f64,
    pub calls: u64,
    pub concurrency: usize,
    pub duration: Duration,
    pub threads: usize,
    pub sockets_per_thread: usize,
    /// Request-URI user part (what a dispatcher may route on).
    pub user: String,
    /// Time between the 200 and the BYE.
    pub hold: Duration,
    /// A transaction without a final answer after this fails as a timeout.
    pub timeout: Duration,
}

/// Live counters a progress line reads.
#[derive(Debug, Default)]
pub struct Progress {
    pub started: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub stop: AtomicBool,
}

/// What one run produced (merged over threads).
#[derive(Debug)]
pub struct UacReport {
    pub started: u64,
    pub ok: u64,
    /// Failure reason → count (`503`, `timeout`, `bye-timeout`, ...).
    pub failed: BTreeMap<String, u64>,
    /// INVITE sent → 200 received, microseconds.
    pub setup_us: Histogram<u64>,
    /// From the first INVITE to the last call's end.
    pub elapsed: Duration,
    /// Time during which calls were started (for the achieved rate).
    pub offered_for: Duration,
    pub retransmissions: u64,
    pub send_errors: u64,
    pub stray: u64,
}

impl UacReport {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Completed calls per second over the time calls were offered.
    pub fn achieved_cps(&self) -> f64 {
        let s = self.offered_for.as_secs_f64().max(1e-3);
        self.ok as f64 / s
    }

    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.setup_us.is_empty() {
            0
        } else {
            self.setup_us.value_at_quantile(p)
        }
    }

    fn merge(&mut self, o: UacReport) {
        self.started += o.started;
        self.ok += o.ok;
        for (k, v) in o.failed {
            *self.failed.entry(k).or_default() += v;
        }
        let _ = self.setup_us.add(&o.setup_us);
        self.elapsed = self.elapsed.max(o.elapsed);
        self.offered_for = self.offered_for.max(o.offered_for);
        self.retransmissions += o.retransmissions;
        self.send_errors += o.send_errors;
        self.stray += o.stray;
    }

    /// A multi-line human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "calls: started {} ok {} failed {} in {:.2} s; achieved {:.0} cps\n",
            self.started,
            self.ok,
            self.failed_total(),
            self.elapsed.as_secs_f64(),
            self.achieved_cps()
        );
        for (k, v) in &self.failed {
            s += &format!("  failed {k}: {v}\n");
        }
        s += &format!(
            "setup latency (INVITE -> 200): p50 {} us  p90 {} us  p99 {} us  p99.9 {} us  max {} us\n",
            self.percentile_us(0.5),
            self.percentile_us(0.9),
            self.percentile_us(0.99),
            self.percentile_us(0.999),
            self.setup_us.max()
        );
        s += &format!(
            "retransmissions {}  send errors {}  stray messages {}\n",
            self.retransmissions, self.send_errors, self.stray
        );
        s
    }
}

fn histogram() -> Histogram<u64> {
    // 1 us .. 10 min, 3 significant digits; cannot fail for these bounds.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// Runs the generator to completion; `progress` is updated as it goes.
pub fn run(cfg: &UacConfig, progress: &Arc<Progress>) -> Result<UacReport> {
    let threads = cfg.threads.max(1);
    let mut handles = Vec::with_capacity(threads);
    let start = Instant::now();
    // Unique per run (clock and pid), so Call-IDs and branches never repeat
    // between runs against the same proxy.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
    let run_id = nanos ^ std::process::id().rotate_left(16);
    for t in 0..threads {
        let mut w = ThreadRun::new(cfg, run_id, t, threads)?;
        let progress = Arc::clone(progress);
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-uac{t}"))
                .spawn(move || w.run(start, &progress))
                .context("spawn generator thread")?,
        );
    }
    let mut total = UacReport {
        started: 0,
        ok: 0,
        failed: BTreeMap::new(),
        setup_us: histogram(),
        elapsed: Duration::ZERO,
        offered_for: Duration::ZERO,
        retransmissions: 0,
        send_errors: 0,
        stray: 0,
    };
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
        total.merge(r);
    }
    Ok(total)
}

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    /// INVITE sent, nothing heard: retransmit.
    Calling,
    /// Provisional heard: wait for the final answer.
    Proceeding,
    /// Answered; BYE goes out at `next`.
    Holding,
    /// BYE sent: retransmit until its 200.
    Closing,
}

struct Call {
    phase: Phase,
    generation: u32,
    socket: usize,
    started: Instant,
    /// Next retransmission or the BYE time.
    next: Instant,
    interval: Duration,
    /// Transaction deadline.
    deadline: Instant,
    /// The request to retransmit (INVITE, then BYE).
    req: Vec<u8>,
    dialog: Dialog,
}

struct ThreadRun {
    run: u32,
    id: u32,
    cfg: UacConfig,
    calls: u64,
    rate: f64,
    sockets: Vec<UdpSocket>,
    locals: Vec<String>,
    target: String,
    slots: Vec<Call>,
    free: Vec<u32>,
    active: usize,
    report: UacReport,
    scratch: Vec<u8>,
}

impl ThreadRun {
    fn new(cfg: &UacConfig, run: u32, id: usize, threads: usize) -> Result<ThreadRun> {
        let share =
            |total: u64| total / threads as u64 + u64::from((id as u64) < total % threads as u64);
        let conc = (cfg.concurrency / threads + usize::from(id < cfg.concurrency % threads)).max(1);
        // The address the kernel would send from, so Via and Contact name
        // a reachable address (127.0.0.1 / ::1 for a loopback target).
        let local_ip = crate::net::source_ip_for(cfg.target)?;
        let mut sockets = Vec::new();
        let mut locals = Vec::new();
        for _ in 0..cfg.sockets_per_thread.max(1) {
            let s = crate::net::udp_socket(SocketAddr::new(local_ip, 0), false)?;
            locals.push(msg::hostport(s.local_addr()?));
            sockets.push(UdpSocket::from_std(s));
        }
        let now = Instant::now();
        let slots = (0..conc)
            .map(|_| Call {
                phase: Phase::Free,
                generation: 0,
                socket: 0,
                started: now,
                next: now,
                interval: T1,
                deadline: now,
                req: Vec::with_capacity(1024),
                dialog: Dialog::default(),
            })
            .collect();
        Ok(ThreadRun {
            run,
            id: id as u32,
            calls: share(cfg.calls),
            rate: cfg.rate / threads as f64,
            cfg: cfg.clone(),
            sockets,
            locals,
            target: msg::hostport(cfg.target),
            slots,
            free: (0..conc as u32).rev().collect(),
            active: 0,
            report: UacReport {
                started: 0,
                ok: 0,
                failed: BTreeMap::new(),
                setup_us: histogram(),
                elapsed: Duration::ZERO,
                offered_for: Duration::ZERO,
                retransmissions: 0,
                send_errors: 0,
                stray: 0,
            },
            scratch: Vec::with_capacity(2048),
        })
    }

    fn run(&mut self, start: Instant, progress: &Progress) -> Result<UacReport> {
        let mut poll = Poll::new()?;
        for (i, s) in self.sockets.iter_mut().enumerate() {
            poll.registry().register(s, Token(i), Interest::READABLE)?;
        }
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; 65536];
        let offer_end = start + self.cfg.duration;
        let hard_end = offer_end + self.cfg.timeout + Duration::from_secs(1);
        let mut last_offer = start;
        let mut next_scan = start;
        let (mut seen_ok, mut seen_failed, mut seen_started) = (0u64, 0u64, 0u64);
        loop {
            let now = Instant::now();
            // A little grace past the offering window: the last calls fall
            // due exactly at its end.
            let offering = self.report.started < self.calls
                && now < offer_end + Duration::from_millis(50)
                && !progress.stop.load(Ordering::Relaxed);
            if offering {
                // Paced: the number due by now, in bursts of at most 256 so a
                // late thread catches up without starving its receive path.
                let t = (now.min(offer_end) - start).as_secs_f64();
                let due = (t * self.rate).ceil() as u64;
                let due = due.min(self.calls);
                let mut burst = 0;
                while self.report.started < due && burst < 256 && !self.free.is_empty() {
                    self.start_call(now);
                    burst += 1;
                }
                last_offer = now;
            } else if self.active == 0 || now >= hard_end {
                break;
            }
            if now >= next_scan {
                self.timers(now);
                next_scan = now + Duration::from_millis(5);
                let (ok, failed, started) = (
                    self.report.ok,
                    self.report.failed_total(),
                    self.report.started,
                );
                progress.ok.fetch_add(ok - seen_ok, Ordering::Relaxed);
                progress
                    .failed
                    .fetch_add(failed - seen_failed, Ordering::Relaxed);
                progress
                    .started
                    .fetch_add(started - seen_started, Ordering::Relaxed);
                (seen_ok, seen_failed, seen_started) = (ok, failed, started);
            }
            let wait = if offering {
                Duration::from_micros(500)
            } else {
                Duration::from_millis(5)
            };
            match poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            for ev in events.iter() {
                let i = ev.token().0;
                // Bounded per wake-up: a flood on one socket cannot stall the
                // pacing of new calls.
                for _ in 0..1024 {
                    match self.sockets[i].recv_from(&mut buf) {
                        Ok((n, _)) => {
                            let now = Instant::now();
                            self.on_message(&buf[..n], now);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        // ICMP port unreachable surfaces as ECONNREFUSED on
                        // some kernels; the call's timer reports it.
                        Err(_) => break,
                    }
                }
            }
        }
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if self.slots[slot].phase != Phase::Free {
                self.finish(slot, Some("unfinished"), now);
            }
        }
        progress
            .ok
            .fetch_add(self.report.ok - seen_ok, Ordering::Relaxed);
        progress
            .failed
            .fetch_add(self.report.failed_total() - seen_failed, Ordering::Relaxed);
        progress
            .started
            .fetch_add(self.report.started - seen_started, Ordering::Relaxed);
        self.report.elapsed = now - start;
        self.report.offered_for = (last_offer.min(offer_end) - start).max(Duration::from_millis(1));
        let mut r = UacReport {
            started: 0,
            ok: 0,
            failed: BTreeMap::new(),
            setup_us: histogram(),
            elapsed: Duration::ZERO,
            offered_for: Duration::ZERO,
            retransmissions: 0,
            send_errors: 0,
            stray: 0,
        };
        std::mem::swap(&mut r, &mut self.report);
        Ok(r)
    }

    fn send(&mut self, slot: usize) {
        let c = &self.slots[slot];
        // The INVITE goes to the target; in-dialog requests to the dialog's
        // next hop (the first Record-Route, e.g. a proxy worker's own port).
        let to = match c.phase {
            Phase::Calling | Phase::Proceeding => self.cfg.target,
            _ => c.dialog.next_hop.unwrap_or(self.cfg.target),
        };
        match self.sockets[c.socket].send_to(&c.req, to) {
            Ok(_) => {}
            // A full socket buffer or a refused port: the retransmission
            // timer tries again, so count and go on.
            Err(_) => self.report.send_errors += 1,
        }
    }

    fn send_scratch(&mut self, socket: usize, to: SocketAddr) {
        if self.sockets[socket].send_to(&self.scratch, to).is_err() {
            self.report.send_errors += 1;
        }
    }

    fn call_ref(&self, slot: usize) -> CallRef {
        CallRef {
            run: self.run,
            thread: self.id,
            slot: slot as u32,
            generation: self.slots[slot].generation,
        }
    }

    fn start_call(&mut self, now: Instant) {
        let Some(slot) = self.free.pop() else { return };
        let slot = slot as usize;
        let socket = (self.report.started as usize) % self.sockets.len();
        {
            let c = &mut self.slots[slot];
            c.generation = c.generation.wrapping_add(1);
            c.phase = Phase::Calling;
            c.socket = socket;
            c.started = now;
            c.interval = T1;
            c.next = now + T1;
            c.deadline = now + self.cfg.timeout;
        }
        let cref = self.call_ref(slot);
        let mut req = std::mem::take(&mut self.slots[slot].req);
        req.clear();
        msg::invite(
            &mut req,
            cref,
            &self.locals[socket],
            &self.target,
            &self.cfg.user,
        );
        self.slots[slot].req = req;
        self.report.started += 1;
        self.active += 1;
        self.send(slot);
    }

    fn finish(&mut self, slot: usize, failure: Option<&str>, _now: Instant) {
        match failure {
            None => self.report.ok += 1,
            Some(reason) => match self.report.failed.get_mut(reason) {
                Some(n) => *n += 1,
                None => {
                    self.report.failed.insert(reason.to_string(), 1);
                }
            },
        }
        self.slots[slot].phase = Phase::Free;
        self.free.push(slot as u32);
        self.active -= 1;
    }

    fn timers(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let c = &self.slots[slot];
            match c.phase {
                Phase::Free => {}
                Phase::Calling | Phase::Closing | Phase::Proceeding if now >= c.deadline => {
                    let reason = if c.phase == Phase::Closing {
                        "bye-timeout"
                    } else {
                        "timeout"
                    };
                    self.finish(slot, Some(reason), now);
                }
                Phase::Calling | Phase::Closing if now >= c.next => {
                    let c = &mut self.slots[slot];
                    // INVITE doubles without cap (Timer A); BYE caps at T2 (Timer E).
                    c.interval = if c.phase == Phase::Closing {
                        (c.interval * 2).min(T2)
                    } else {
                        c.interval * 2
                    };
                    c.next = now + c.interval;
                    self.report.retransmissions += 1;
                    self.send(slot);
                }
                Phase::Holding if now >= c.next => self.send_bye(slot, now),
                _ => {}
            }
        }
    }

    fn send_bye(&mut self, slot: usize, now: Instant) {
        let cref = self.call_ref(slot);
        let socket = self.slots[slot].socket;
        let c = &mut self.slots[slot];
        c.req.clear();
        c.dialog
            .request(&mut c.req, "BYE", 2, cref, &self.locals[socket]);
        c.phase = Phase::Closing;
        c.interval = T1;
        c.next = now + T1;
        c.deadline = now + self.cfg.timeout;
        self.send(slot);
    }

    fn on_message(&mut self, data: &[u8], now: Instant) {
        let Ok(m) = parse(data) else {
            self.report.stray += 1;
            return;
        };
        let (Some(code), Ok(cid), Ok(cseq)) = (m.status(), m.call_id(), m.cseq()) else {
            // Requests to the UAC (none expected) and broken responses.
            self.report.stray += 1;
            return;
        };
        let Some(cref) = CallRef::parse(cid) else {
            self.report.stray += 1;
            return;
        };
        let slot = cref.slot as usize;
        let known = cref.run == self.run
            && cref.thread == self.id
            && slot < self.slots.len()
            && self.slots[slot].generation == cref.generation
            && self.slots[slot].phase != Phase::Free;
        let socket = if slot < self.slots.len() {
            self.slots[slot].socket
        } else {
            0
        };
        match (cseq.method, known) {
            (Method::Invite, true) => {
                let phase = self.slots[slot].phase;
                match code {
                    100..=199 => {
                        if phase == Phase::Calling {
                            self.slots[slot].phase = Phase::Proceeding;
                        }
                    }
                    200..=299 => {
                        if matches!(phase, Phase::Calling | Phase::Proceeding) {
                            let us = (now - self.slots[slot].started).as_micros() as u64;
                            let _ = self.report.setup_us.record(us.max(1));
                            let fallback = format!("sip:{}@{}", self.cfg.user, self.target);
                            self.slots[slot]
                                .dialog
                                .fill_from_2xx(&m, fallback.as_bytes());
                        }
                        // ACK every 2xx, retransmissions included (our ACK
                        // may have been lost).
                        self.scratch.clear();
                        self.slots[slot].dialog.request(
                            &mut self.scratch,
                            "ACK",
                            1,
                            cref,
                            &self.locals[socket],
                        );
                        let hop = self.slots[slot].dialog.next_hop.unwrap_or(self.cfg.target);
                        self.send_scratch(socket, hop);
                        if matches!(phase, Phase::Calling | Phase::Proceeding) {
                            if self.cfg.hold.is_zero() {
                                self.send_bye(slot, now);
                            } else {
                                let c = &mut self.slots[slot];
                                c.phase = Phase::Holding;
                                c.next = now + self.cfg.hold;
                            }
                        }
                    }
                    _ => {
                        self.scratch.clear();
                        msg::ack_non2xx(
                            &mut self.scratch,
                            cref,
                            &self.locals[socket],
                            &self.target,
                            &self.cfg.user,
                            &m,
                        );
                        self.send_scratch(socket, self.cfg.target);
                        if matches!(phase, Phase::Calling | Phase::Proceeding) {
                            self.finish(slot, Some(reason_key(code)), now);
                        }
                    }
                }
            }
            (Method::Bye, true) if self.slots[slot].phase == Phase::Closing => match code {
                100..=199 => {}
                200..=299 => self.finish(slot, None, now),
                _ => self.finish(slot, Some(bye_reason_key(code)), now),
            },
            (Method::Invite, false) if code >= 200 => {
                // A late final answer (retransmission after the call ended):
                // acknowledge it so the other side stops retransmitting.
                if code < 300 {
                    self.report.stray += 1;
                } else {
                    self.scratch.clear();
                    msg::ack_non2xx(
                        &mut self.scratch,
                        cref,
                        &self.locals[socket],
                        &self.target,
                        &self.cfg.user,
                        &m,
                    );
                    self.send_scratch(socket.min(self.sockets.len() - 1), self.cfg.target);
                }
            }
            _ => self.report.stray += 1,
        }
    }
}

fn reason_key(code: u16) -> &'static str {
    // The codes a dispatcher benchmark meets by name, the rest by class.
    const NAMED: [(u16, &str); 11] = [
        (403, "403"),
        (404, "404"),
        (408, "408"),
        (480, "480"),
        (486, "486"),
        (487, "487"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
        (483, "483"),
    ];
    if let Some((_, k)) = NAMED.iter().find(|(c, _)| *c == code) {
        return k;
    }
    match code {
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "6xx",
    }
}

fn bye_reason_key(code: u16) -> &'static str {
    match code {
        400..=499 => "bye-4xx",
        500..=599 => "bye-5xx",
        _ => "bye-other",
    }
}
