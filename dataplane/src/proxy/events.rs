//! Call events a worker reports for export (Redis, CDRs, accounting): when a
//! call starts, is answered, ends or fails, and when a BYE transaction ends.
//!
//! Each worker owns one [`EventSink`], a bounded lock-free queue the control
//! thread drains. A full queue drops the event and counts it: exporting is
//! never allowed to slow routing down. Workers build events only when a sink
//! is installed, so with export off the hot path does no extra work; with it
//! on, events cost a few small allocations per call (the Call-ID, URIs, tags
//! and reason phrases are copied out of the receive buffer), never any per
//! retransmitted packet.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;

/// Something that happened to a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    /// An initial INVITE was routed to its first destination.
    Start {
        at: Instant,
        call_id: Box<str>,
        from: Box<str>,
        to: Box<str>,
        ruri: Box<str>,
        set: u32,
        dest: SocketAddr,
        worker: u16,
    },
    /// A 2xx to the INVITE was relayed; `setup` runs from the forwarding to
    /// the destination that answered to its answer.
    Answered {
        at: Instant,
        call_id: Box<str>,
        dest: SocketAddr,
        setup: Duration,
        /// The 2xx's code (200, 202…).
        code: u16,
        /// The 2xx's reason phrase and tags (the callee's To-tag).
        reply: Reply,
    },
    /// The dialog ended, by BYE or by the dialog timeout.
    End {
        at: Instant,
        call_id: Box<str>,
        dest: Option<SocketAddr>,
        duration: Duration,
        timeout: bool,
    },
    /// The INVITE got a final error upstream; `cancelled` when the caller
    /// had sent CANCEL (the final is then usually 487).
    Failed {
        at: Instant,
        call_id: Box<str>,
        code: u16,
        /// The last destination tried, if any was.
        dest: Option<SocketAddr>,
        /// Reason phrase and tags of the final response sent upstream.
        reply: Reply,
        cancelled: bool,
    },
    /// A BYE transaction got its final response (relayed or sipvane's own).
    Bye {
        at: Instant,
        call_id: Box<str>,
        code: u16,
        /// Reason phrase and tags of the final response sent upstream.
        reply: Reply,
    },
}

/// What accounting records about a transaction's final response, as
/// Kamailio's `acc` does: the request's From-tag, the response's To-tag and
/// reason phrase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub from_tag: Box<str>,
    pub to_tag: Box<str>,
    pub reason: Box<str>,
}

impl Reply {
    /// Tags and reason phrase of a response.
    pub(crate) fn of(resp: &crate::sip::parse::Message<'_>) -> Reply {
        Reply {
            from_tag: text(resp.from().ok().and_then(|f| f.tag).unwrap_or(b"")),
            to_tag: text(resp.to().ok().and_then(|t| t.tag).unwrap_or(b"")),
            reason: text(resp.reason().unwrap_or(b"")),
        }
    }
}

/// The event for a final response sent upstream for an INVITE (≥ 300: the
/// call failed) or a BYE, from the response's bytes; `None` for anything else.
pub(crate) fn on_final(
    at: Instant,
    method: crate::sip::Method,
    code: u16,
    cancelled: bool,
    dest: Option<SocketAddr>,
    response: &[u8],
) -> Option<CallEvent> {
    use crate::sip::Method;
    let failed = method == Method::Invite && code >= 300;
    if !(failed || (method == Method::Bye && code >= 200)) {
        return None;
    }
    let resp = crate::sip::parse::parse(response).ok()?;
    let call_id = text(resp.call_id().unwrap_or(b""));
    let reply = Reply::of(&resp);
    Some(if failed {
        CallEvent::Failed {
            at,
            call_id,
            code,
            dest,
            reply,
            cancelled,
        }
    } else {
        CallEvent::Bye {
            at,
            call_id,
            code,
            reply,
        }
    })
}

/// One worker's outgoing event queue.
#[derive(Debug)]
pub struct EventSink {
    queue: ArrayQueue<CallEvent>,
    dropped: AtomicU64,
}

impl EventSink {
    /// A queue holding at most `capacity` (≥ 1) events.
    pub fn new(capacity: usize) -> EventSink {
        EventSink {
            queue: ArrayQueue::new(capacity.max(1)),
            dropped: AtomicU64::new(0),
        }
    }

    /// Worker side: queues `ev`, or drops and counts it when full.
    pub fn push(&self, ev: CallEvent) {
        if self.queue.push(ev).is_err() {
            // Only this worker writes the counter; the control thread reads it.
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Control side: the oldest queued event.
    pub fn pop(&self) -> Option<CallEvent> {
        self.queue.pop()
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Bytes from the wire as text for an event.
pub(crate) fn text(bytes: &[u8]) -> Box<str> {
    String::from_utf8_lossy(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_sink_drops_and_counts() {
        let sink = EventSink::new(1);
        let ev = CallEvent::Failed {
            at: Instant::now(),
            call_id: "a".into(),
            code: 503,
            dest: None,
            reply: Reply::default(),
            cancelled: false,
        };
        sink.push(ev.clone());
        sink.push(ev.clone());
        assert_eq!((sink.len(), sink.dropped()), (1, 1));
        assert_eq!(sink.pop(), Some(ev));
        assert!(sink.is_empty());
    }
}
