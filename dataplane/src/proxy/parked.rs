//! Requests whose next hop is a host name the worker does not know yet. The
//! worker never blocks: such a request is parked (a bounded number per
//! worker, for a bounded time), the name is asked of the control thread over
//! the [`NameBridge`], and the request is routed again when the answer comes
//! back, from the worker's [`NameCache`] (which keeps answers for their TTL:
//! the next request to the same name does no round trip). Over the bound →
//! 503 + Retry-After; no answer in time → 503; both counted.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::*;
use crate::route::names::{name_key, NameBridge, NameCache, NameKey};
use crate::route::{Lookup, Resolved};
use crate::sip::Uri;

/// Injected by the control thread to wake a worker with answers waiting.
pub const SOCK_NAMES: SocketId = 0x60;

/// What the proxy needs to resolve names: the bridge to the control thread
/// and the bounds.
#[derive(Debug, Clone)]
pub struct NameSettings {
    pub bridge: Arc<NameBridge>,
    /// Requests parked per worker at most.
    pub max_parked: usize,
    /// Longest a request waits for its answer.
    pub max_wait: Duration,
}

/// One parked request, as received.
struct Parked {
    name: Box<[u8]>,
    data: Box<[u8]>,
    socket: SocketId,
    src: SocketAddr,
    handed_over: bool,
    from_stream: bool,
    deadline: Instant,
}

/// One worker's names: its cache, its parked requests, its open questions.
pub(super) struct Names {
    settings: NameSettings,
    cache: NameCache,
    /// In arrival order, hence in deadline order (one `max_wait` for all).
    parked: VecDeque<Parked>,
    /// Names asked and not answered yet, with when to give up on them.
    asked: HashMap<Box<[u8]>, Instant, ahash::RandomState>,
    /// The name the last routing decision needed and did not know.
    missing: RefCell<Option<NameKey>>,
}

impl Names {
    pub(super) fn new(settings: NameSettings) -> Names {
        Names {
            settings,
            cache: NameCache::default(),
            parked: VecDeque::new(),
            asked: HashMap::with_hasher(ahash::RandomState::new()),
            missing: RefCell::new(None),
        }
    }

    /// What the routing decision gets for `uri`; an unknown name is noted
    /// for [`Worker::park`].
    pub(super) fn lookup(&self, uri: &Uri<'_>, now: Instant) -> Lookup {
        let key = name_key(uri);
        let found = self.cache.get(&key, now);
        if found == Lookup::Unknown {
            *self.missing.borrow_mut() = Some(key);
        }
        found
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.parked.front().map(|p| p.deadline)
    }
}

impl Worker {
    /// What the routing decision gets for a next hop named by a host name.
    pub(super) fn lookup_name(&self, uri: &Uri<'_>, now: Instant) -> Lookup {
        match &self.names {
            Some(n) => n.lookup(uri, now),
            // No resolver configured (cores built without one, in tests).
            None => Lookup::Known(Resolved::Failed),
        }
    }

    /// Parks `msg` (its decision was [`Decision::Resolve`]) and asks for the
    /// name it needs, unless that question is already open.
    pub(super) fn park(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        let (index, handed_over, from_stream) = (self.index, self.handed_over, self.from_stream);
        let refused = match self.names.as_mut() {
            None => true,
            Some(n) => match n.missing.take() {
                // A resumed request that needs a name again (its answer was
                // already dropped from a full cache): not parked twice.
                _ if self.resuming => true,
                None => true,
                Some(name) => {
                    if n.parked
                        .iter()
                        .any(|p| p.src == src && *p.data == *msg.buf())
                    {
                        // A retransmission of a request already waiting.
                        bump(&self.stats.retransmissions_absorbed);
                        return;
                    }
                    let open = n.asked.get(&name[..]).is_some_and(|&until| until > now);
                    if n.parked.len() >= n.settings.max_parked
                        || (!open && !n.settings.bridge.ask(index, &name))
                    {
                        true
                    } else {
                        let deadline = now + n.settings.max_wait;
                        if !open {
                            n.asked.insert(name[..].into(), deadline);
                        }
                        n.parked.push_back(Parked {
                            name: name[..].into(),
                            data: msg.buf().into(),
                            socket,
                            src,
                            handed_over,
                            from_stream,
                            deadline,
                        });
                        bump(&self.stats.dns_parked);
                        false
                    }
                }
            },
        };
        if refused {
            bump(&self.stats.dns_refused);
            if msg.method() != Some(Method::Ack) {
                let retry = self.cfg.retry_after_s;
                let why = b"Too many requests waiting for DNS";
                self.reply(socket, src, msg, 503, Some(retry), Some(why), out);
            }
        }
    }

    /// Takes the control thread's answers and routes the requests that
    /// waited for them.
    pub(super) fn take_answers(&mut self, now: Instant, out: &mut Outbox) {
        let Some(n) = self.names.as_mut() else {
            return;
        };
        let bridge = n.settings.bridge.clone();
        while let Some(a) = bridge.next_answer(self.index) {
            let Some(n) = self.names.as_mut() else {
                return;
            };
            // At least a second: the requests resumed below must find it.
            n.cache.insert(
                a.name.clone(),
                a.resolved,
                a.ttl.max(Duration::from_secs(1)),
                now,
            );
            n.asked.remove(&a.name);
            let mut ready = Vec::new();
            let mut i = 0;
            while i < n.parked.len() {
                if n.parked[i].name == a.name {
                    ready.extend(n.parked.remove(i));
                } else {
                    i += 1;
                }
            }
            for p in ready {
                bump(&self.stats.dns_resumed);
                self.resume(now, p, out);
            }
        }
    }

    /// Routes a parked request again, as it was when it arrived.
    fn resume(&mut self, now: Instant, p: Parked, out: &mut Outbox) {
        let Ok(msg) = parse(&p.data) else { return };
        let saved = (self.handed_over, self.from_stream);
        (self.handed_over, self.from_stream, self.resuming) = (p.handed_over, p.from_stream, true);
        self.route_request(now, p.socket, p.src, &msg, out);
        (self.handed_over, self.from_stream) = saved;
        self.resuming = false;
    }

    /// Answers 503 to requests that waited `max_wait` in vain.
    pub(super) fn expire_parked(&mut self, now: Instant, out: &mut Outbox) {
        loop {
            let Some(n) = self.names.as_mut() else {
                return;
            };
            if n.parked.front().is_none_or(|p| p.deadline > now) {
                n.asked.retain(|_, until| *until > now);
                return;
            }
            let Some(p) = n.parked.pop_front() else {
                return;
            };
            bump(&self.stats.dns_timeouts);
            let Ok(msg) = parse(&p.data) else { continue };
            if msg.method() != Some(Method::Ack) {
                let why = b"DNS lookup timed out";
                self.reply(p.socket, p.src, &msg, 503, None, Some(why), out);
            }
        }
    }
}
