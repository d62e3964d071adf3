//! The responder: a backend that answers calls as fast as it can.
//!
//! One thread per `--threads`, each with its own socket on the listen
//! address (`SO_REUSEPORT`). Stateless except for delayed answers:
//! INVITE → 100, 180, then the final (`--reply`, now or after
//! `--delay-ms`); ACK absorbed; BYE, OPTIONS, REGISTER → 200; CANCEL → 200
//! and 487 for the pending INVITE; anything else → 501. Responses go to
//! the datagram's source (what `rport` asks and what proxies expect).
//! Bounded: it exits on SIGTERM/SIGINT or after `max_run`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dataplane::sip::{parse, Message, Method};

use crate::msg;

#[derive(Debug, Clone)]
pub struct UasConfig {
    pub listen: SocketAddr,
    /// Final answer to INVITE (200, 486, 503, ...).
    pub reply: u16,
    /// Delay of the final answer to INVITE.
    pub delay: Duration,
    pub threads: usize,
    /// Send 180 before the final answer.
    pub ringing: bool,
    /// Upper bound on the run time.
    pub max_run: Duration,
}

/// Counters printed when the responder stops.
#[derive(Debug, Default)]
pub struct UasStats {
    pub invite: AtomicU64,
    pub ack: AtomicU64,
    pub bye: AtomicU64,
    pub cancel: AtomicU64,
    pub options: AtomicU64,
    pub other: AtomicU64,
    pub malformed: AtomicU64,
}

impl UasStats {
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "sipvane-bench uas: invite={} ack={} bye={} cancel={} options={} other={} malformed={}",
            g(&self.invite),
            g(&self.ack),
            g(&self.bye),
            g(&self.cancel),
            g(&self.options),
            g(&self.other),
            g(&self.malformed)
        )
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Runs until SIGTERM/SIGINT or `max_run`, then prints the counters.
pub fn run(cfg: &UasConfig) -> Result<()> {
    // SAFETY: the handler only stores to an atomic, which is signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let stats = Arc::new(UasStats::default());
    let mut sockets = Vec::new();
    for _ in 0..cfg.threads.max(1) {
        let s = crate::net::udp_socket(cfg.listen, true)?;
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
        sockets.push(s);
    }
    eprintln!(
        "sipvane-bench uas: listening on {} ({} thread(s), reply {}, delay {} ms)",
        cfg.listen,
        sockets.len(),
        cfg.reply,
        cfg.delay.as_millis()
    );
    let deadline = Instant::now() + cfg.max_run;
    let mut handles = Vec::new();
    for (i, s) in sockets.into_iter().enumerate() {
        let cfg = cfg.clone();
        let stats = Arc::clone(&stats);
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-uas{i}"))
                .spawn(move || serve(&s, &cfg, &stats, deadline))
                .context("spawn responder thread")?,
        );
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("responder thread panicked"))?;
    }
    println!("{}", stats.line());
    Ok(())
}

/// A final answer waiting for its time.
struct Pending {
    due: Instant,
    to: SocketAddr,
    call_id: Vec<u8>,
    /// The INVITE, to build the answer from.
    invite: Vec<u8>,
    cancelled: bool,
}

fn serve(sock: &std::net::UdpSocket, cfg: &UasConfig, stats: &UasStats, deadline: Instant) {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(2048);
    let contact = msg::hostport(cfg.listen);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    while !STOP.load(Ordering::Relaxed) && Instant::now() < deadline {
        // Due answers first; the delay is constant so the queue is in order.
        let now = Instant::now();
        while pending.front().is_some_and(|p| p.due <= now) {
            if let Some(p) = pending.pop_front() {
                if !p.cancelled {
                    if let Ok(m) = parse(&p.invite) {
                        final_answer(sock, &m, p.to, cfg, &contact, &mut out);
                    }
                }
            }
        }
        let (n, src) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue, // timeout (to check STOP and the queue) or ICMP noise
        };
        let Ok(m) = parse(&buf[..n]) else {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if !m.is_request() {
            continue; // responses (to nothing we sent): ignore
        }
        let tag = msg::to_tag(m.call_id().unwrap_or_default());
        let mut reply = |code: u16, m: &Message, sdp: bool| {
            out.clear();
            msg::uas_response(&mut out, m, code, &tag, &contact, sdp);
            let _ = sock.send_to(&out, src);
        };
        match m.method() {
            Some(Method::Invite) => {
                stats.invite.fetch_add(1, Ordering::Relaxed);
                reply(100, &m, false);
                if cfg.ringing && cfg.reply < 300 {
                    reply(180, &m, false);
                }
                if cfg.delay.is_zero() {
                    final_answer(sock, &m, src, cfg, &contact, &mut out);
                } else {
                    let call_id = m.call_id().unwrap_or_default();
                    // A retransmitted INVITE is answered by the pending entry.
                    if !pending.iter().any(|p| p.call_id == call_id) {
                        pending.push_back(Pending {
                            due: Instant::now() + cfg.delay,
                            to: src,
                            call_id: call_id.to_vec(),
                            invite: buf[..n].to_vec(),
                            cancelled: false,
                        });
                    }
                }
            }
            Some(Method::Ack) => {
                stats.ack.fetch_add(1, Ordering::Relaxed);
            }
            Some(Method::Bye) => {
                stats.bye.fetch_add(1, Ordering::Relaxed);
                reply(200, &m, false);
            }
            Some(Method::Options) => {
                stats.options.fetch_add(1, Ordering::Relaxed);
                reply(200, &m, false);
            }
            Some(Method::Register) => {
                stats.other.fetch_add(1, Ordering::Relaxed);
                reply(200, &m, false);
            }
            Some(Method::Cancel) => {
                stats.cancel.fetch_add(1, Ordering::Relaxed);
                reply(200, &m, false);
                let call_id = m.call_id().unwrap_or_default();
                if let Some(p) = pending
                    .iter_mut()
                    .find(|p| !p.cancelled && p.call_id == call_id)
                {
                    p.cancelled = true;
                    if let Ok(inv) = parse(&p.invite) {
                        out.clear();
                        msg::uas_response(&mut out, &inv, 487, &tag, &contact, false);
                        let _ = sock.send_to(&out, p.to);
                    }
                }
            }
            _ => {
                stats.other.fetch_add(1, Ordering::Relaxed);
                reply(501, &m, false);
            }
        }
    }
}

fn final_answer(
    sock: &std::net::UdpSocket,
    m: &Message,
    to: SocketAddr,
    cfg: &UasConfig,
    contact: &str,
    out: &mut Vec<u8>,
) {
    let tag = msg::to_tag(m.call_id().unwrap_or_default());
    out.clear();
    msg::uas_response(out, m, cfg.reply, &tag, contact, cfg.reply < 300);
    let _ = sock.send_to(out, to);
}
