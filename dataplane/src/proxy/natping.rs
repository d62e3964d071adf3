//! NAT keep-alive on a worker: the OPTIONS pings of
//! [`crate::registrar::natping`] leave from the public socket (the one the
//! phone's NAT mapping points at), each worker pinging the users whose AOR
//! hashes to it; replies come back to any worker and are handed to the
//! one that sent the ping; bindings that stopped answering are removed
//! through the control thread like an unREGISTER.

use super::*;
use crate::registrar::location::{Op, Update};
use crate::registrar::natping::{self, NatPing};
use crate::registrar::{self as reg};

impl Worker {
    /// The pinger of this worker, when `nat_ping_interval_s` is set.
    pub(super) fn new_nat_ping(cfg: &ProxyConfig, index: usize, now: Instant) -> Option<NatPing> {
        let r = cfg.registrar.as_ref()?;
        let every = r.config.nat_ping_interval_s;
        (every > 0).then(|| {
            let seed = cfg.branch_secret[0] ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let interval = std::time::Duration::from_secs(u64::from(every));
            NatPing::new(interval, r.config.nat_ping_max_misses, now, seed)
        })
    }

    /// Pings this worker's NATed bindings when a round is due, and removes
    /// those that left too many pings unanswered.
    pub(super) fn nat_ping_round(&mut self, now: Instant, out: &mut Outbox) {
        let Some(registrar) = self.cfg.registrar.clone() else {
            return;
        };
        let Some(pinger) = self.natping.as_mut() else {
            return;
        };
        if now < pinger.next_deadline() {
            return;
        }
        let now_unix = registrar.config.unix(now);
        let (index, workers) = (self.index, self.workers);
        let mut watched = Vec::new();
        for (aor, bindings) in registrar.location.all() {
            if owner(&aor, workers) != index {
                continue;
            }
            // A binding over a connection keeps its NAT open with the
            // phone's own RFC 5626 CRLF keep-alives (answered by the
            // stream layer); an OPTIONS over UDP would not reach it.
            let live = bindings
                .iter()
                .filter(|b| b.expires > now_unix && b.stream.is_none());
            for b in live {
                if let Some(to) = b.received.filter(|_| b.nated()) {
                    watched.push((aor.clone(), b.contact.clone(), to));
                }
            }
        }
        let (pings, gone) = pinger.round(now, watched);
        for ping in pings {
            self.scratch.clear();
            let host = &self.cfg.advertise;
            let port = self.cfg.public_port;
            let branch = natping::branch(index, ping.id);
            let text = format!(
                "OPTIONS {c} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch={branch};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:keepalive@{host}>;tag={id:x}\r\nTo: <{c}>\r\n\
                 Call-ID: {id:x}-np@{host}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                c = ping.contact,
                id = ping.id,
            );
            self.scratch.extend_from_slice(text.as_bytes());
            out.send(SOCK_PUBLIC, ping.to, &self.scratch);
            bump(&self.stats.tx_datagrams);
            reg::bump(&registrar.stats.nat_pings);
        }
        if !gone.is_empty() {
            let n = gone.len();
            let updates = gone
                .into_iter()
                .map(|(aor, contact)| Update {
                    aor,
                    op: Op::Remove(contact),
                })
                .collect();
            // A full queue keeps them: the next round finds them again.
            if registrar.submit(updates) {
                for _ in 0..n {
                    reg::bump(&registrar.stats.nat_ping_removals);
                }
            }
        }
    }

    /// A response whose Via branch is a NAT ping's: handed to the worker
    /// that sent it, or counted as that binding's answer. False when it is
    /// not a ping's.
    pub(super) fn nat_ping_reply(
        &mut self,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        branch: &[u8],
        out: &mut Outbox,
    ) -> bool {
        let Some((worker, id)) = natping::parse_branch(branch) else {
            return false;
        };
        if worker != self.index {
            if worker < self.workers && !self.handed_over {
                bump(&self.stats.handoffs);
                out.handoff(worker, socket | HANDED_OVER, src, msg.buf());
            }
            return true;
        }
        let answered = self.natping.as_mut().is_some_and(|p| p.answered(id));
        if !answered {
            bump(&self.stats.stray_responses);
        }
        true
    }
}

/// The worker that pings the bindings of `aor` (FNV-1a: stable, cheap).
fn owner(aor: &str, workers: usize) -> usize {
    let h = aor.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % workers.max(1) as u64) as usize
}
