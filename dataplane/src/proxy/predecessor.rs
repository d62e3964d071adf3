//! A restart without dropped calls, as the worker sees it.
//!
//! The process taking over (the successor) shares its predecessor's branch
//! and key secrets with a new epoch, so it can tell which responses answer a
//! request the old process forwarded (their branch opens to the old epoch)
//! and which requests belong to a transaction the old process still holds (a
//! retransmission, the CANCEL or the hop-by-hop ACK of one of its INVITEs:
//! its key is in the set the old process reported when it stopped reading).
//! Both are relayed to the old process, which serves them until its
//! transactions end; everything else is the successor's. In-dialog requests
//! of calls set up before the restart route by Record-Route as any other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// What the successor's workers know of the process they took over from.
#[derive(Debug)]
pub struct Predecessor {
    /// The old process's branch epoch.
    pub epoch: u16,
    /// Its live server-transaction keys and the worker that holds each.
    keys: HashMap<TxnKey, u8, ahash::RandomState>,
    /// Set once the old process has exited: nothing is relayed any more.
    gone: AtomicBool,
}

impl Predecessor {
    /// `reports[w]` is worker `w`'s [`Worker::handover`] report.
    pub fn new(epoch: u16, reports: &[Vec<u8>]) -> Predecessor {
        let mut keys = HashMap::with_hasher(ahash::RandomState::new());
        for (w, report) in reports.iter().enumerate() {
            let Ok(w) = u8::try_from(w) else { break };
            for chunk in report.chunks_exact(16) {
                if let Some(key) = <[u8; 16]>::try_from(chunk).ok().map(TxnKey::from_bytes) {
                    keys.insert(key, w);
                }
            }
        }
        Predecessor {
            epoch,
            keys,
            gone: AtomicBool::new(false),
        }
    }

    /// Transactions the old process reported.
    pub fn transactions(&self) -> usize {
        self.keys.len()
    }

    /// The old process exited: stop relaying to it.
    pub fn set_gone(&self) {
        self.gone.store(true, Ordering::Relaxed);
    }

    /// Whether the old process has exited.
    pub fn is_gone(&self) -> bool {
        !self.active()
    }

    fn active(&self) -> bool {
        !self.gone.load(Ordering::Relaxed)
    }

    /// The old process's worker holding the transaction `key`, while it runs.
    pub(super) fn owner_of(&self, key: &TxnKey) -> Option<u8> {
        if self.keys.is_empty() || !self.active() {
            return None;
        }
        self.keys.get(key).copied()
    }

    /// Whether a branch that opened to `epoch` is the old process's.
    pub(super) fn owns_epoch(&self, epoch: u16) -> bool {
        epoch == self.epoch && self.active()
    }
}

impl Worker {
    /// The restart hand-over report: the keys of every open transaction, 16
    /// bytes each ([`Predecessor::new`] reads them back).
    pub fn handover_report(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.txns.len() * 16);
        for (id, _) in self.txns.iter() {
            if let Some(key) = self.txns.key(id) {
                out.extend_from_slice(&key.to_bytes());
            }
        }
        out
    }

    /// Relays a request of one of the old process's transactions to it;
    /// `true` when it did.
    pub(super) fn relay_to_predecessor(
        &mut self,
        key: &TxnKey,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) -> bool {
        let Some(p) = self.cfg.predecessor.as_ref() else {
            return false;
        };
        let Some(owner) = p.owner_of(key) else {
            return false;
        };
        bump(&self.stats.relayed_to_predecessor);
        out.to_predecessor(owner, socket, src, msg.buf());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{answer, invite, sent, worker, CALLER, DEST};
    use super::*;
    use crate::worker::SocketId;

    /// What an outbox relays to the previous process: (its worker, socket,
    /// first line).
    fn relayed(out: &Outbox) -> Vec<(usize, SocketId, String)> {
        out.handoffs()
            .filter(|h| h.0 & crate::worker::outbox_predecessor_flag() != 0)
            .map(|(t, s, _, b)| {
                let line = String::from_utf8_lossy(b)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                (t & !crate::worker::outbox_predecessor_flag(), s, line)
            })
            .collect()
    }

    /// The old process (epoch 7) forwards an INVITE, then hands over; the
    /// successor (same secrets, epoch 8) relays the 200, a retransmission and
    /// the CANCEL of that INVITE to it, and serves a new INVITE itself.
    #[test]
    fn the_successor_relays_what_belongs_to_the_old_process() {
        let t0 = Instant::now();
        let list = format!("1 sip:{DEST}\n");
        let old_cfg = ProxyConfig {
            epoch: 7,
            ..ProxyConfig::default()
        };
        let mut old = worker(old_cfg.clone(), &list, t0);
        let mut out = Outbox::new();
        let caller: SocketAddr = CALLER.parse().unwrap();
        old.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-old"), &mut out);
        let fwd = sent(&out)[0].1.clone();
        let report = old.handover_report();
        assert_eq!(report.len(), 16, "one open transaction");

        let p = Arc::new(Predecessor::new(7, &[report]));
        let new_cfg = ProxyConfig {
            epoch: 8,
            predecessor: Some(p.clone()),
            ..old_cfg
        };
        let mut new = worker(new_cfg, &list, t0);
        let dest: SocketAddr = DEST.parse().unwrap();
        out.clear();
        new.on_datagram(t0, SOCK_PRIVATE, dest, &answer(&fwd, 200, "t1"), &mut out);
        new.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-old"), &mut out);
        let cancel = String::from_utf8(invite("z9hG4bK-old"))
            .unwrap()
            .replacen("INVITE sip:", "CANCEL sip:", 1)
            .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
        new.on_datagram(t0, SOCK_PUBLIC, caller, cancel.as_bytes(), &mut out);
        assert_eq!(
            relayed(&out),
            vec![
                (0, SOCK_PRIVATE, "SIP/2.0 200 OK".to_owned()),
                (
                    0,
                    SOCK_PUBLIC,
                    "INVITE sip:100@127.0.0.1:5060 SIP/2.0".to_owned()
                ),
                (
                    0,
                    SOCK_PUBLIC,
                    "CANCEL sip:100@127.0.0.1:5060 SIP/2.0".to_owned()
                ),
            ]
        );
        assert!(out.iter().next().is_none(), "nothing answered or forwarded");
        assert_eq!(new.stats().snapshot().relayed_to_predecessor, 3);

        // A new call is the successor's own.
        out.clear();
        new.on_datagram(t0, SOCK_PUBLIC, caller, &invite("z9hG4bK-new"), &mut out);
        assert!(relayed(&out).is_empty());
        assert!(sent(&out)
            .iter()
            .any(|(d, m)| *d == dest && m.starts_with("INVITE ")));

        // Once the old process has exited, its late responses are strays.
        p.set_gone();
        out.clear();
        new.on_datagram(t0, SOCK_PRIVATE, dest, &answer(&fwd, 180, "t1"), &mut out);
        assert!(out.is_empty());
        assert_eq!(new.stats().snapshot().stray_responses, 1);
    }
}
