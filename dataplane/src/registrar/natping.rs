//! NAT keep-alive (Kamailio nathelper's `natping_interval` with
//! `sipping_from`): every `nat_ping_interval_s` each NATed binding (one with
//! a `received` address) gets an OPTIONS from the public socket, which keeps
//! its NAT's mapping open; a binding that leaves `nat_ping_max_misses`
//! pings in a row unanswered is removed (Kamailio's `natping_disable_flag`
//! / `keepalive` module behaviour), so calls stop going to a phone that is
//! gone.
//!
//! Pure: the worker feeds it the bindings it watches and the replies that
//! came back, and sends the pings it returns. Each ping carries a random id
//! in its Via branch; only a reply naming an id of the round counts, so a
//! forged reply would have to guess 64 bits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The Via branch prefix of a ping; `WORKER-ID` follows.
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bK-svnp-";

/// A binding to ping: `(aor, contact)` names it.
type Key = (Box<str>, Box<str>);

/// One ping to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    pub id: u64,
    pub to: SocketAddr,
    pub aor: Box<str>,
    pub contact: Box<str>,
}

/// The pinging state of one worker.
#[derive(Debug)]
pub struct NatPing {
    interval: Duration,
    max_misses: u32,
    next_round: Instant,
    /// Pings of the current round not answered yet.
    outstanding: HashMap<u64, Key>,
    /// Pings in a row a binding left unanswered (only bindings that
    /// missed one; forgotten with the binding).
    misses: HashMap<Key, u32>,
    rng: u64,
}

impl NatPing {
    /// Pings every `interval` (first round one interval after `now`);
    /// `seed` makes the ids unpredictable.
    pub fn new(interval: Duration, max_misses: u32, now: Instant, seed: u64) -> NatPing {
        NatPing {
            interval,
            max_misses: max_misses.max(1),
            next_round: now + interval,
            outstanding: HashMap::new(),
            misses: HashMap::new(),
            rng: seed | 1,
        }
    }

    pub fn next_deadline(&self) -> Instant {
        self.next_round
    }

    fn next_id(&mut self) -> u64 {
        // xorshift64*: ids need to be unguessable from outside the process
        // only within one round; the seed comes from the OS.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Starts a round when due: the pings of the last round that got no
    /// answer count as misses; `bindings` (`aor`, `contact`, address) are
    /// the NATed bindings watched now. Returns the pings to send and the
    /// bindings to remove (they reached `max_misses`).
    pub fn round(
        &mut self,
        now: Instant,
        bindings: impl IntoIterator<Item = (Box<str>, Box<str>, SocketAddr)>,
    ) -> (Vec<Ping>, Vec<Key>) {
        if now < self.next_round {
            return (Vec::new(), Vec::new());
        }
        self.next_round = now + self.interval;
        let mut misses = std::mem::take(&mut self.misses);
        for (_, key) in self.outstanding.drain() {
            *misses.entry(key).or_insert(0) += 1;
        }
        let (mut pings, mut gone) = (Vec::new(), Vec::new());
        for (aor, contact, to) in bindings {
            let key = (aor, contact);
            let missed = misses.remove(&key).unwrap_or(0);
            if missed >= self.max_misses {
                gone.push(key);
                continue;
            }
            if missed > 0 {
                self.misses.insert(key.clone(), missed);
            }
            let id = self.next_id();
            pings.push(Ping {
                id,
                to,
                aor: key.0.clone(),
                contact: key.1.clone(),
            });
            self.outstanding.insert(id, key);
        }
        (pings, gone)
    }

    /// A reply to ping `id` arrived: its binding is alive. False when `id`
    /// is not a ping of this round (late, repeated or forged).
    pub fn answered(&mut self, id: u64) -> bool {
        match self.outstanding.remove(&id) {
            Some(key) => {
                self.misses.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// The worker and ping id in a ping's Via branch.
pub fn parse_branch(branch: &[u8]) -> Option<(usize, u64)> {
    let rest = branch.strip_prefix(BRANCH_PREFIX)?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (worker, id) = rest.split_once('-')?;
    Some((worker.parse().ok()?, u64::from_str_radix(id, 16).ok()?))
}

/// The Via branch of ping `id` sent by `worker`.
pub fn branch(worker: usize, id: u64) -> String {
    format!(
        "{}{worker}-{id:016x}",
        String::from_utf8_lossy(BRANCH_PREFIX)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(aor: &str, port: u16) -> (Box<str>, Box<str>, SocketAddr) {
        let to: SocketAddr = format!("192.0.2.1:{port}").parse().unwrap();
        (aor.into(), format!("sip:{aor}").into(), to)
    }

    #[test]
    fn answered_bindings_stay_silent_ones_go_after_max_misses() {
        let t0 = Instant::now();
        let mut p = NatPing::new(Duration::from_secs(10), 2, t0, 42);
        assert_eq!(p.round(t0, [b("a", 1)]).0.len(), 0, "not due yet");
        let mut t = t0;
        for round in 0..4 {
            t += Duration::from_secs(10);
            let (pings, gone) = p.round(t, [b("a", 1), b("s", 2)]);
            let silent_gone = gone.iter().any(|k| &*k.0 == "s");
            assert_eq!(silent_gone, round == 2, "round {round}: {gone:?}");
            assert!(!gone.iter().any(|k| &*k.0 == "a"));
            for ping in &pings {
                if &*ping.aor == "a" {
                    assert!(p.answered(ping.id));
                    assert!(!p.answered(ping.id), "once");
                }
            }
            if round == 2 {
                assert!(pings.iter().all(|x| &*x.aor == "a"), "removed: not pinged");
            }
        }
        assert!(!p.answered(12345), "not a ping of the round");
    }

    #[test]
    fn an_answer_resets_the_streak_and_removed_bindings_are_forgotten() {
        let t0 = Instant::now();
        let mut p = NatPing::new(Duration::from_secs(1), 2, t0, 7);
        let t1 = t0 + Duration::from_secs(1);
        p.round(t1, [b("a", 1)]);
        let t2 = t1 + Duration::from_secs(1);
        let (pings, gone) = p.round(t2, [b("a", 1)]);
        assert!(gone.is_empty());
        assert!(p.answered(pings[0].id), "one miss, then an answer");
        let t3 = t2 + Duration::from_secs(1);
        let (pings, gone) = p.round(t3, [b("a", 1)]);
        assert!(gone.is_empty() && pings.len() == 1);
        // Unregistered meanwhile: nothing kept for it.
        let t4 = t3 + Duration::from_secs(1);
        p.round(t4, []);
        assert!(p.misses.is_empty() && p.outstanding.is_empty());
    }

    #[test]
    fn branches_round_trip() {
        assert_eq!(parse_branch(branch(3, 0xabc).as_bytes()), Some((3, 0xabc)));
        assert_eq!(parse_branch(b"z9hG4bK-svnp-x-1"), None);
        assert_eq!(parse_branch(b"z9hG4bK-other"), None);
    }
}
