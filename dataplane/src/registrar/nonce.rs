//! Stateless nonces and nonce-count replay protection.
//!
//! A nonce is `TTTTTTTT WW SSSSSSSS MAC` in hex: the second it was issued
//! (since the process started), the worker that issued it, that worker's
//! challenge sequence number (so no two challenges share a nonce, and so a
//! nonce count), and HMAC-SHA-256 over them under a per-process key,
//! truncated to 128 bits. Verifying one needs no
//! table: a forged or foreign (other process) nonce fails the MAC, an old
//! one fails the age check and gets `stale=true`, so the client retries
//! with a fresh nonce and the same password.
//!
//! Replay: the worker that issued a nonce remembers, per nonce, the highest
//! nonce-count it accepted ([`NonceCounts`]); a request must bring a higher
//! one. A request whose nonce another worker issued is handed to that worker
//! (the proxy's usual handoff), so the counts need no sharing and no lock.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use std::collections::HashMap;

const TS_HEX: usize = 8;
const WORKER_HEX: usize = 2;
const SEQ_HEX: usize = 8;
const BODY: usize = TS_HEX + WORKER_HEX + SEQ_HEX;
const MAC_BYTES: usize = 16;
/// Length of a nonce sipvane issues.
pub const NONCE_LEN: usize = BODY + MAC_BYTES * 2;

/// The per-process key nonces are sealed with.
#[derive(Clone)]
pub struct NonceKey {
    key: [u8; 32],
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

/// A nonce that passed its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    /// Seconds since the process started, when it was issued.
    pub issued: u32,
    pub worker: u8,
    /// The MAC, a unique name for the nonce.
    pub id: u128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    /// Not one of ours (bad length, bad hex, bad MAC, from the future).
    Invalid,
    /// Ours, but older than the nonce lifetime.
    Stale,
}

impl NonceKey {
    pub fn new(key: [u8; 32]) -> NonceKey {
        NonceKey { key }
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_BYTES] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(body);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    /// A fresh nonce issued at `now_s` by `worker` as its challenge `seq`.
    pub fn mint(&self, now_s: u32, worker: u8, seq: u32) -> [u8; NONCE_LEN] {
        let mut out = [0u8; NONCE_LEN];
        let body = format!("{now_s:08x}{worker:02x}{seq:08x}");
        out[..BODY].copy_from_slice(body.as_bytes());
        let mac = super::digest::hex(&self.mac(body.as_bytes()));
        out[BODY..].copy_from_slice(mac.as_bytes());
        out
    }

    /// Checks a nonce a client returned at `now_s`; `ttl_s` is its lifetime.
    pub fn check(&self, nonce: &[u8], now_s: u32, ttl_s: u32) -> Result<Nonce, NonceError> {
        if nonce.len() != NONCE_LEN {
            return Err(NonceError::Invalid);
        }
        let body = &nonce[..BODY];
        let hex_num = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
        };
        let (Some(issued), Some(worker), Some(_seq)) = (
            hex_num(&body[..TS_HEX]),
            hex_num(&body[TS_HEX..TS_HEX + WORKER_HEX]),
            hex_num(&body[TS_HEX + WORKER_HEX..]),
        ) else {
            return Err(NonceError::Invalid);
        };
        let want = super::digest::hex(&self.mac(body));
        let got = &nonce[BODY..];
        let diff = want
            .bytes()
            .zip(got)
            .fold(0u8, |acc, (a, &b)| acc | (a ^ b.to_ascii_lowercase()));
        if diff != 0 || issued > now_s {
            return Err(NonceError::Invalid);
        }
        if now_s - issued > ttl_s {
            return Err(NonceError::Stale);
        }
        let mut id = [0u8; 16];
        for (i, pair) in got.chunks_exact(2).enumerate() {
            let s = std::str::from_utf8(pair).unwrap_or("00");
            id[i] = u8::from_str_radix(s, 16).unwrap_or(0);
        }
        Ok(Nonce {
            issued,
            worker: u8::try_from(worker).map_err(|_| NonceError::Invalid)?,
            id: u128::from_be_bytes(id),
        })
    }
}

/// The highest nonce-count accepted per live nonce, on one worker, bounded.
pub struct NonceCounts {
    seen: HashMap<u128, (u32, u32)>,
    max: usize,
    /// The sequence number of this worker's next challenge.
    next_seq: u32,
}

impl NonceCounts {
    pub fn new(max: usize) -> NonceCounts {
        NonceCounts {
            seen: HashMap::new(),
            max: max.max(1),
            next_seq: 0,
        }
    }

    /// The sequence number for the next nonce this worker mints.
    pub fn next_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// Accepts `nc` for `nonce` when it is higher than any accepted before.
    /// False for a replay, and when the table is full of live nonces (the
    /// client then gets a fresh challenge rather than an unchecked pass).
    pub fn accept(&mut self, nonce: &Nonce, nc: u32, now_s: u32, ttl_s: u32) -> bool {
        if let Some((last, _)) = self.seen.get_mut(&nonce.id) {
            if nc <= *last {
                return false;
            }
            *last = nc;
            return true;
        }
        if self.seen.len() >= self.max {
            self.seen
                .retain(|_, (_, issued)| now_s.saturating_sub(*issued) <= ttl_s);
            if self.seen.len() >= self.max {
                return false;
            }
        }
        self.seen.insert(nonce.id, (nc, nonce.issued));
        true
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> NonceKey {
        NonceKey::new([7; 32])
    }

    #[test]
    fn mint_then_check() {
        let n = key().mint(100, 3, 7);
        let ok = key().check(&n, 150, 300).unwrap();
        assert_eq!((ok.issued, ok.worker), (100, 3));
        assert_eq!(key().check(&n, 401, 300), Err(NonceError::Stale));
        assert_eq!(key().check(&n, 99, 300), Err(NonceError::Invalid));
        // Another process's key.
        assert_eq!(
            NonceKey::new([8; 32]).check(&n, 150, 300),
            Err(NonceError::Invalid)
        );
    }

    #[test]
    fn every_challenge_gets_its_own_nonce() {
        let mut c = NonceCounts::new(4);
        let (a, b) = (c.next_seq(), c.next_seq());
        assert_ne!(key().mint(5, 0, a), key().mint(5, 0, b));
    }

    #[test]
    fn tampering_is_detected() {
        let n = key().mint(100, 3, 7);
        for i in 0..NONCE_LEN {
            let mut t = n;
            t[i] = if t[i] == b'0' { b'1' } else { b'0' };
            assert_eq!(
                key().check(&t, 150, 300),
                Err(NonceError::Invalid),
                "byte {i}"
            );
        }
        assert_eq!(key().check(&n[1..], 150, 300), Err(NonceError::Invalid));
        assert_eq!(key().check(b"", 150, 300), Err(NonceError::Invalid));
    }

    #[test]
    fn nonce_counts_must_grow() {
        let k = key();
        let n = k.check(&k.mint(10, 0, 1), 10, 300).unwrap();
        let mut c = NonceCounts::new(2);
        assert!(c.accept(&n, 1, 10, 300));
        assert!(!c.accept(&n, 1, 10, 300), "replay");
        assert!(c.accept(&n, 2, 11, 300));
        assert!(!c.accept(&n, 1, 11, 300));
    }

    #[test]
    fn full_table_forgets_expired_nonces_only() {
        let k = key();
        let a = k.check(&k.mint(10, 0, 1), 10, 300).unwrap();
        let b = k.check(&k.mint(11, 0, 2), 11, 300).unwrap();
        let c = k.check(&k.mint(12, 0, 3), 12, 300).unwrap();
        let mut t = NonceCounts::new(2);
        assert!(t.accept(&a, 1, 12, 300));
        assert!(t.accept(&b, 1, 12, 300));
        assert!(!t.accept(&c, 1, 12, 300), "full of live nonces");
        assert!(t.accept(&c, 1, 311, 300), "a has expired and makes room");
        assert_eq!(t.len(), 2, "b is still live");
    }
}
