//! The answers the registrar gives without a transaction (challenges,
//! 403s, the answers to REGISTER), kept for the request's retransmissions
//! (RFC 3261 §17.2.2: a server transaction answers a retransmitted request
//! with its last response).
//!
//! Without this a retransmission (the phone's, or SIPp's after 500 ms when
//! the answer was late or lost) was handled anew: a retransmitted
//! REGISTER without credentials got a second 401 with another nonce, which
//! a client that had already answered the first sees as an unexpected 401
//! (SIPp fails the call: the 1-in-10 000 failure of the registrar load
//! test); a retransmitted REGISTER with credentials found its nonce count
//! used up by the original and got `401 stale=true` instead of its 200.
//! Checking it again would be wrong anyway (the nonce count is what stops
//! a captured request from being replayed); the stored answer changes
//! nothing and is what a transaction would send.
//!
//! Bounded in time (Timer J, 64×T1) and in entries (the oldest go first):
//! past either bound a retransmission is handled anew, as before.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long an answer is kept: Timer J of an unreliable transport (64×T1).
pub const ANSWER_TTL: Duration = Duration::from_secs(32);
/// Answers kept per worker at most (~600 bytes each).
pub const MAX_ANSWERS: usize = 8192;

/// Answers `V` by transaction key `K`, each for `ttl`, at most `max`.
pub struct Answered<K, V> {
    map: HashMap<K, (Instant, V)>,
    /// Keys in insertion order with their expiry (= insertion order of
    /// expiry, as the lifetime is fixed).
    order: VecDeque<(Instant, K)>,
    ttl: Duration,
    max: usize,
}

impl<K: Hash + Eq + Copy, V> Answered<K, V> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Answered {
            map: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            max: max.max(1),
        }
    }

    /// The answer stored for `key`, unless it has expired.
    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.map
            .get(key)
            .filter(|(expires, _)| *expires > now)
            .map(|(_, v)| v)
    }

    /// Stores the answer for `key` (replacing one stored before), after
    /// forgetting expired answers and, when full, the oldest.
    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        while let Some(&(expires, k)) = self.order.front() {
            if expires > now && self.map.len() < self.max {
                break;
            }
            self.order.pop_front();
            // Only the entry this queue slot stands for (not a newer one
            // stored under the same key).
            if self.map.get(&k).is_some_and(|(e, _)| *e == expires) {
                self.map.remove(&k);
            }
        }
        let expires = now + self.ttl;
        self.map.insert(key, (expires, value));
        self.order.push_back((expires, key));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_for_their_lifetime() {
        let t0 = Instant::now();
        let mut a = Answered::new(Duration::from_secs(32), 8);
        a.insert(1u64, "200", t0);
        assert_eq!(a.get(&1, t0 + Duration::from_secs(31)), Some(&"200"));
        assert_eq!(a.get(&2, t0), None);
        assert_eq!(a.get(&1, t0 + Duration::from_secs(32)), None);
        // Forgotten when something is stored after their lifetime.
        a.insert(2, "200", t0 + Duration::from_secs(40));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn bounded_oldest_first() {
        let t0 = Instant::now();
        let mut a = Answered::new(Duration::from_secs(32), 3);
        for k in 0..5u64 {
            a.insert(k, k, t0 + Duration::from_millis(k));
        }
        assert_eq!(a.len(), 3);
        assert_eq!(a.get(&1, t0), None);
        assert_eq!(a.get(&2, t0), Some(&2));
        assert_eq!(a.get(&4, t0), Some(&4));
    }

    #[test]
    fn a_replaced_answer_outlives_its_first_slot() {
        let t0 = Instant::now();
        let mut a = Answered::new(Duration::from_secs(10), 8);
        a.insert(1u64, "first", t0);
        a.insert(1, "second", t0 + Duration::from_secs(5));
        // The first slot expires; the second answer stays.
        a.insert(2, "other", t0 + Duration::from_secs(11));
        assert_eq!(a.get(&1, t0 + Duration::from_secs(11)), Some(&"second"));
    }
}
