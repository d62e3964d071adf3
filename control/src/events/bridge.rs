//! Carries the workers' call events (`dataplane::proxy::events`) to the
//! exporter's queue and to accounting, on the control thread: drains every
//! worker's sink a batch at a time, turns each event into its export form and
//! timestamps it, and hands it to the accounting row builder.

use std::sync::Arc;
use std::time::Duration;

use dataplane::proxy::events::{CallEvent, EventSink};

use super::model::{
    duration_secs, CallAnswered, CallEnd, CallFailed, CallStart, EndReason, Event, WallClock,
};
use super::queue::EventQueue;

/// Most events moved from one sink per round, so one busy worker cannot
/// starve the others' queues.
const BATCH: usize = 1024;

/// The export form of a worker's event; `None` for what the Redis stream
/// does not carry (BYE transactions, and calls the caller cancelled, which
/// are neither failed nor answered there).
pub fn convert(ev: CallEvent, clock: &WallClock) -> Option<Event> {
    let dest = |a: Option<std::net::SocketAddr>| -> Box<str> {
        a.map_or_else(|| "".into(), |a| format!("sip:{a}").into())
    };
    Some(match ev {
        CallEvent::Start {
            at,
            call_id,
            from,
            to,
            ruri,
            set,
            dest: d,
            worker,
        } => Event::CallStart(Box::new(CallStart {
            call_id,
            from,
            to,
            ruri,
            set,
            destination: dest(Some(d)),
            worker,
            ts: clock.unix_ms(at),
        })),
        CallEvent::Answered {
            at,
            call_id,
            dest: d,
            setup,
            ..
        } => Event::CallAnswered(CallAnswered {
            call_id,
            destination: dest(Some(d)),
            setup_ms: setup.as_millis() as u64,
            ts: clock.unix_ms(at),
        }),
        CallEvent::End {
            at,
            call_id,
            dest: d,
            duration,
            timeout,
        } => Event::CallEnd(CallEnd {
            call_id,
            destination: dest(d),
            duration_s: duration_secs(duration),
            reason: if timeout {
                EndReason::Timeout
            } else {
                EndReason::Bye
            },
            ts: clock.unix_ms(at),
        }),
        CallEvent::Failed {
            at,
            call_id,
            code,
            dest: d,
            cancelled: false,
            ..
        } => Event::CallFailed(Box::new(CallFailed {
            call_id,
            code,
            reason: std::str::from_utf8(dataplane::sip::build::reason_phrase(code))
                .unwrap_or("")
                .into(),
            tried: d.map(|a| vec![dest(Some(a))]).unwrap_or_default(),
            ts: clock.unix_ms(at),
        })),
        CallEvent::Failed { .. } | CallEvent::Bye { .. } => return None,
    })
}

/// Where drained events go: the Redis exporter's queue, accounting, or both.
#[derive(Default)]
pub struct Targets {
    pub events: Option<EventQueue>,
    pub acc: Option<crate::acc::Feed>,
}

/// Moves what is queued in `sinks` to `queue` now; returns how many moved.
pub fn drain(sinks: &[Arc<EventSink>], queue: &EventQueue, clock: &WallClock) -> usize {
    let mut t = Targets {
        events: Some(queue.clone()),
        acc: None,
    };
    drain_to(sinks, &mut t, clock)
}

/// Moves what is queued in `sinks` to the targets now; returns how many moved.
pub fn drain_to(sinks: &[Arc<EventSink>], t: &mut Targets, clock: &WallClock) -> usize {
    let mut moved = 0;
    for sink in sinks {
        for _ in 0..BATCH {
            let Some(ev) = sink.pop() else { break };
            if let Some(acc) = t.acc.as_mut() {
                acc.on_event(&ev);
            }
            if let Some(queue) = &t.events {
                if let Some(ev) = convert(ev, clock) {
                    queue.push(ev);
                }
            }
            moved += 1;
        }
    }
    moved
}

/// How often accounting forgets calls whose last event never came.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Drains the sinks every `interval` until `shutdown` completes, then once
/// more (call it after the workers stopped: nothing is left behind).
pub async fn run(
    sinks: Vec<Arc<EventSink>>,
    mut targets: Targets,
    interval: Duration,
    shutdown: impl std::future::Future,
) {
    let clock = WallClock::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pruned = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        while drain_to(&sinks, &mut targets, &clock) > 0 {
            // A backlog: keep going, but let other control tasks run.
            tokio::task::yield_now().await;
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = tokio::time::Instant::now();
            if let Some(acc) = targets.acc.as_mut() {
                acc.prune();
            }
        }
    }
    // Bounded: the workers are stopped, so the sinks only shrink.
    for _ in 0..1024 {
        if drain_to(&sinks, &mut targets, &clock) == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn events_keep_order_and_fields() {
        let t0 = Instant::now();
        let clock = WallClock::from_parts(t0, 1_000_000);
        let sink = Arc::new(EventSink::new(8));
        sink.push(CallEvent::Failed {
            at: t0 + Duration::from_millis(5),
            call_id: "c1".into(),
            code: 503,
            dest: Some("127.0.0.1:5070".parse().unwrap()),
            reply: Default::default(),
            cancelled: false,
        });
        sink.push(CallEvent::End {
            at: t0,
            call_id: "c2".into(),
            dest: None,
            duration: Duration::from_millis(1500),
            timeout: true,
        });
        let queue = EventQueue::new(8);
        assert_eq!(drain(&[sink], &queue, &clock), 2);
        match queue.pop() {
            Some(Event::CallFailed(f)) => {
                assert_eq!((&*f.call_id, f.code, f.ts), ("c1", 503, 1_000_005));
                assert_eq!(f.tried, vec![Box::from("sip:127.0.0.1:5070")]);
                assert_eq!(f.reason, "Service Unavailable");
            }
            other => panic!("{other:?}"),
        }
        match queue.pop() {
            Some(Event::CallEnd(e)) => {
                assert_eq!((e.duration_s, e.reason), (1.5, EndReason::Timeout));
            }
            other => panic!("{other:?}"),
        }
    }
}
