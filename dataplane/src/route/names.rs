//! Host names in the Request-URI, Route and Contact of relayed requests.
//!
//! Workers never resolve: a request whose next hop is a name is parked on
//! its worker while the control thread's RFC 3263 resolver answers (see
//! `proxy::parked`). This module holds what both sides share, all without
//! locks: the [`NameBridge`] (bounded queues of questions to the control
//! thread and of answers back to each worker) and the worker's own
//! [`NameCache`], which keeps every answer for its TTL so that a name seen
//! before costs one hash lookup and no round trip.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use smallvec::SmallVec;

use crate::sip::Uri;

/// A name as asked: `sip:host[:port][;transport=t]` in lower case. The
/// parts RFC 3263 decides by, nothing else (users and other parameters
/// would only split the cache).
pub type NameKey = SmallVec<[u8; 96]>;

/// The key of `uri`'s host.
pub fn name_key(uri: &Uri<'_>) -> NameKey {
    let mut k = NameKey::new();
    let sips = uri.scheme.eq_ignore_ascii_case(b"sips");
    k.extend_from_slice(if sips { b"sips:" } else { b"sip:" });
    k.extend(uri.host.iter().map(u8::to_ascii_lowercase));
    if let Some(port) = uri.port {
        k.push(b':');
        let mut digits = [0u8; 5];
        let mut n = 0;
        let mut p = port;
        loop {
            digits[n] = b'0' + (p % 10) as u8;
            n += 1;
            p /= 10;
            if p == 0 {
                break;
            }
        }
        k.extend(digits[..n].iter().rev().copied());
    }
    if let Some(t) = uri.param(b"transport").flatten() {
        k.extend_from_slice(b";transport=");
        k.extend(t.iter().map(u8::to_ascii_lowercase));
    }
    k
}

/// What the resolver said about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// The first RFC 3263 target; `tcp`: reached over TCP.
    Found { to: SocketAddr, tcp: bool },
    /// The name (or every record it needs) does not exist, or only names a
    /// transport sipvane does not relay on: 478 (Kamailio's answer).
    NoSuchName,
    /// The DNS server failed or did not answer: 503.
    Failed,
}

/// What a worker knows about a name right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Known(Resolved),
    /// Not cached (or expired): ask the control thread.
    Unknown,
}

/// A question from worker `worker`.
#[derive(Debug)]
pub struct Question {
    pub worker: u16,
    pub name: Box<[u8]>,
}

/// An answer to worker `name`'s question, valid for `ttl`.
#[derive(Debug)]
pub struct Answer {
    pub name: Box<[u8]>,
    pub resolved: Resolved,
    pub ttl: Duration,
}

type Waker = Box<dyn Fn() + Send + Sync>;
type WorkerWaker = Box<dyn Fn(usize) + Send + Sync>;

/// Questions to the control thread and answers back, over bounded
/// lock-free queues; a full queue drops and the caller counts it.
pub struct NameBridge {
    questions: ArrayQueue<Question>,
    answers: Box<[ArrayQueue<Answer>]>,
    /// Wakes the control thread's resolver task (installed when it starts).
    wake_control: OnceLock<Waker>,
    /// Wakes a worker so it reads its answers (the worker pool's injector).
    wake_worker: OnceLock<WorkerWaker>,
}

impl std::fmt::Debug for NameBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameBridge")
            .field("questions", &self.questions.len())
            .finish_non_exhaustive()
    }
}

impl NameBridge {
    /// A bridge for `workers` workers, each with `queue` slots of answers;
    /// `queue` questions in all.
    pub fn new(workers: usize, queue: usize) -> NameBridge {
        NameBridge {
            questions: ArrayQueue::new(queue.max(1)),
            answers: (0..workers.max(1))
                .map(|_| ArrayQueue::new(queue.max(1)))
                .collect(),
            wake_control: OnceLock::new(),
            wake_worker: OnceLock::new(),
        }
    }

    /// Installs how the control thread is woken (once).
    pub fn on_question(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.wake_control.set(Box::new(wake));
    }

    /// Installs how a worker is woken (once).
    pub fn on_answer(&self, wake: impl Fn(usize) + Send + Sync + 'static) {
        let _ = self.wake_worker.set(Box::new(wake));
    }

    /// A worker asks; `false` when the queue is full.
    pub fn ask(&self, worker: usize, name: &[u8]) -> bool {
        let q = Question {
            worker: u16::try_from(worker).unwrap_or(u16::MAX),
            name: name.into(),
        };
        if self.questions.push(q).is_err() {
            return false;
        }
        if let Some(wake) = self.wake_control.get() {
            wake();
        }
        true
    }

    /// The control thread takes the next question.
    pub fn next_question(&self) -> Option<Question> {
        self.questions.pop()
    }

    /// The control thread answers worker `worker`; `false` when the worker
    /// is unknown or its queue is full (its parked requests then time out).
    pub fn answer(&self, worker: usize, answer: Answer) -> bool {
        let Some(q) = self.answers.get(worker) else {
            return false;
        };
        if q.push(answer).is_err() {
            return false;
        }
        if let Some(wake) = self.wake_worker.get() {
            wake(worker);
        }
        true
    }

    /// A worker takes its next answer.
    pub fn next_answer(&self, worker: usize) -> Option<Answer> {
        self.answers.get(worker)?.pop()
    }
}

/// Answers kept by one worker.
const MAX_NAMES: usize = 1024;

/// One worker's answers, each until its TTL runs out.
#[derive(Debug)]
pub struct NameCache {
    map: HashMap<Box<[u8]>, (Resolved, Instant), ahash::RandomState>,
}

impl Default for NameCache {
    fn default() -> Self {
        NameCache {
            map: HashMap::with_hasher(ahash::RandomState::new()),
        }
    }
}

impl NameCache {
    pub fn get(&self, name: &[u8], now: Instant) -> Lookup {
        match self.map.get(name) {
            Some(&(r, expires)) if now < expires => Lookup::Known(r),
            _ => Lookup::Unknown,
        }
    }

    /// Keeps `resolved` for `ttl` from `now`. When full, expired answers go;
    /// if none had expired, all go (bounded memory; names are re-asked).
    pub fn insert(&mut self, name: Box<[u8]>, resolved: Resolved, ttl: Duration, now: Instant) {
        if self.map.len() >= MAX_NAMES && !self.map.contains_key(&name) {
            self.map.retain(|_, (_, exp)| *exp > now);
            if self.map.len() >= MAX_NAMES {
                self.map.clear();
            }
        }
        self.map.insert(name, (resolved, now + ttl));
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

    fn key(s: &str) -> String {
        String::from_utf8(name_key(&Uri::parse(s.as_bytes()).unwrap()).to_vec()).unwrap()
    }

    #[test]
    fn keys_keep_only_what_rfc3263_decides_by() {
        assert_eq!(key("sip:alice@PBX1.Test"), "sip:pbx1.test");
        assert_eq!(key("sip:pbx1.test:5070;lr"), "sip:pbx1.test:5070");
        assert_eq!(key("sip:pbx1.test:0"), "sip:pbx1.test:0");
        assert_eq!(
            key("sips:b@pbx1.test:65535;transport=TCP;x=y"),
            "sips:pbx1.test:65535;transport=tcp"
        );
    }

    #[test]
    fn answers_live_for_their_ttl_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut c = NameCache::default();
        let found = Resolved::Found {
            to: "127.0.0.1:5070".parse().unwrap(),
            tcp: false,
        };
        assert_eq!(c.get(b"sip:a", t0), Lookup::Unknown);
        c.insert((*b"sip:a").into(), found, Duration::from_secs(2), t0);
        assert_eq!(c.get(b"sip:a", t0), Lookup::Known(found));
        assert_eq!(
            c.get(b"sip:a", t0 + Duration::from_secs(2)),
            Lookup::Unknown
        );
        for i in 0..3 * MAX_NAMES {
            let name = format!("sip:n{i}").into_bytes().into_boxed_slice();
            c.insert(name, Resolved::NoSuchName, Duration::from_secs(60), t0);
            assert!(c.len() <= MAX_NAMES);
        }
    }

    #[test]
    fn bridge_queues_are_bounded_and_wake_the_other_side() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let b = NameBridge::new(2, 2);
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        b.on_question(move || {
            w.fetch_add(1, Ordering::Relaxed);
        });
        let w = woken.clone();
        b.on_answer(move |i| {
            w.fetch_add(10 * (i + 1), Ordering::Relaxed);
        });
        assert!(b.ask(1, b"sip:a"));
        assert!(b.ask(0, b"sip:b"));
        assert!(!b.ask(0, b"sip:c"), "full");
        assert_eq!(woken.load(Ordering::Relaxed), 2);
        let q = b.next_question().unwrap();
        assert_eq!((q.worker, &*q.name), (1, &b"sip:a"[..]));
        let answer = |name: &[u8]| Answer {
            name: name.into(),
            resolved: Resolved::Failed,
            ttl: Duration::ZERO,
        };
        assert!(b.answer(1, answer(b"sip:a")));
        assert!(!b.answer(7, answer(b"sip:a")), "no such worker");
        assert_eq!(woken.load(Ordering::Relaxed), 2 + 20);
        assert_eq!(b.next_answer(0).map(|a| a.name), None);
        assert_eq!(b.next_answer(1).unwrap().resolved, Resolved::Failed);
    }
}
