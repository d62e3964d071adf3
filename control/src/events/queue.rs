//! The worker-facing side: a bounded lock-free queue that never blocks its producers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use super::model::Event;

/// Default capacity of an [`EventQueue`]: about a second of events at 20k calls/s, and
/// 4 MiB of slots (64 bytes each) allocated up front.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;

/// Handle the workers push events through. Cloning is cheap (an `Arc`); every clone feeds
/// the same queue, which the [`Exporter`](super::Exporter) drains.
#[derive(Clone, Debug)]
pub struct EventQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: ArrayQueue<Event>,
    dropped: AtomicU64,
}

impl EventQueue {
    /// A queue holding at most `capacity` events (at least 1). The slots are allocated now.
    pub fn new(capacity: usize) -> Self {
        EventQueue {
            inner: Arc::new(Inner {
                queue: ArrayQueue::new(capacity.max(1)),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Enqueues `ev` without ever blocking or allocating. When the queue is full the event
    /// is dropped (the newest, because older ones are already promised to Redis) and
    /// [`dropped`](Self::dropped) is incremented: the data plane never waits for the exporter.
    #[inline]
    pub fn push(&self, ev: Event) {
        if self.inner.queue.push(ev).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the oldest queued event. Used by the exporter.
    pub fn pop(&self) -> Option<Event> {
        self.inner.queue.pop()
    }

    /// Events dropped because the queue was full, since creation.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Events waiting in the queue now.
    pub fn len(&self) -> usize {
        self.inner.queue.len()
    }

    /// True when no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.inner.queue.is_empty()
    }

    /// Maximum number of events the queue holds.
    pub fn capacity(&self) -> usize {
        self.inner.queue.capacity()
    }
}

impl Default for EventQueue {
    fn default() -> Self {
        EventQueue::new(DEFAULT_QUEUE_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::model::{CallAnswered, Event};

    fn ev(i: u64) -> Event {
        Event::CallAnswered(CallAnswered {
            call_id: format!("c{i}").into(),
            destination: "sip:d".into(),
            setup_ms: 1,
            ts: i,
        })
    }

    #[test]
    fn full_queue_drops_newest_and_counts() {
        let q = EventQueue::new(4);
        for i in 0..10 {
            q.push(ev(i));
        }
        assert_eq!(q.len(), 4);
        assert_eq!(q.dropped(), 6);
        let kept: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|e| e.ts()).collect();
        assert_eq!(kept, vec![0, 1, 2, 3]);
        assert!(q.is_empty());
        q.push(ev(11));
        assert_eq!(q.len(), 1);
        assert_eq!(q.dropped(), 6);
    }

    #[test]
    fn zero_capacity_is_clamped() {
        let q = EventQueue::new(0);
        assert_eq!(q.capacity(), 1);
        q.push(ev(1));
        q.push(ev(2));
        assert_eq!(q.dropped(), 1);
    }

    #[test]
    fn clones_share_one_queue_across_threads() {
        let q = EventQueue::new(10_000);
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        q.push(ev(t * 1000 + i));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(q.len(), 4000);
        assert_eq!(q.dropped(), 0);
        // Per producer, order is preserved.
        let mut last = [None::<u64>; 4];
        while let Some(e) = q.pop() {
            let t = (e.ts() / 1000) as usize;
            if let Some(p) = last[t] {
                assert!(p < e.ts());
            }
            last[t] = Some(e.ts());
        }
    }
}
