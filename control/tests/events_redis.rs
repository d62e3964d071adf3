//! The event exporter against a real redis-server: delivery, order, batching, outages,
//! and the two places events may be dropped (queue full, buffer full).

#[path = "support/redis.rs"]
mod redis_support;

use std::borrow::Cow;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use control::events::{
    CallAnswered, CallEnd, CallFailed, CallStart, DstChange, EndReason, Event, EventQueue,
    Exporter, ExporterConfig, ExporterStats, StatsSnapshot,
};
use redis::Commands;
use redis_support::RedisServer;

const LIST: &str = "sipvane:events";
/// Upper bound of every wait: generous for a loaded 2-core machine, never a fixed sleep.
const WAIT: Duration = Duration::from_secs(15);

fn cfg(url: &str) -> ExporterConfig {
    ExporterConfig {
        redis_url: url.to_owned(),
        list: LIST.to_owned(),
        flush_interval: Duration::from_millis(5),
        io_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(2),
        ..ExporterConfig::default()
    }
}

/// An exporter on its own thread with a current-thread runtime, like the control thread.
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<ExporterStats>,
}

fn spawn(cfg: ExporterConfig, queue: &EventQueue) -> Running {
    let exporter = Exporter::new(cfg, queue.clone()).expect("valid exporter config");
    let stats = exporter.stats();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(exporter.run(async {
            let _ = stop_rx.await;
        }));
        let _ = done_tx.send(());
    });
    Running {
        stop: Some(stop_tx),
        done,
        thread: Some(thread),
        stats,
    }
}

impl Running {
    /// Requests shutdown and waits (bounded) for `run` to return.
    fn stop(mut self) -> StatsSnapshot {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.done
            .recv_timeout(WAIT)
            .expect("exporter did not stop in time");
        if let Some(t) = self.thread.take() {
            t.join().expect("exporter thread panicked");
        }
        self.stats.snapshot()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool, state: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; {}",
            state()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_stats(stats: &ExporterStats, what: &str, cond: impl Fn(&StatsSnapshot) -> bool) {
    wait_until(
        what,
        || cond(&stats.snapshot()),
        || format!("{:?}", stats.snapshot()),
    );
}

fn wait_len(server: &RedisServer, n: usize) {
    let mut c = server.connection();
    wait_until(
        &format!("LLEN {LIST} == {n}"),
        || c.llen::<_, usize>(LIST).unwrap_or(0) >= n,
        String::new,
    );
    let len: usize = c.llen(LIST).expect("LLEN");
    assert_eq!(len, n, "more events in the list than expected");
}

fn read_all(server: &RedisServer) -> Vec<String> {
    server.connection().lrange(LIST, 0, -1).expect("LRANGE")
}

fn parse(items: &[String]) -> Vec<Event> {
    items
        .iter()
        .map(|s| serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON {s:?}: {e}")))
        .collect()
}

/// A small event whose `ts` carries its sequence number, to check order and loss.
fn seq(i: u64) -> Event {
    Event::CallAnswered(CallAnswered {
        call_id: format!("call-{i}").into(),
        destination: "sip:10.0.0.1:5060".into(),
        setup_ms: 100,
        ts: i,
    })
}

fn seqs(items: &[String]) -> Vec<u64> {
    parse(items).iter().map(Event::ts).collect()
}

fn all_kinds() -> Vec<Event> {
    vec![
        Event::CallStart(Box::new(CallStart {
            call_id: "a84b4c76e66710@pc33".into(),
            from: "sip:alice@atlanta.example".into(),
            to: "sip:bob@biloxi.example".into(),
            ruri: "sip:bob@biloxi.example".into(),
            set: 1,
            destination: "sip:10.0.0.11:5060".into(),
            worker: 2,
            ts: 1_700_000_000_000,
        })),
        Event::CallAnswered(CallAnswered {
            call_id: "a84b4c76e66710@pc33".into(),
            destination: "sip:10.0.0.11:5060".into(),
            setup_ms: 1840,
            ts: 1_700_000_001_840,
        }),
        Event::CallEnd(CallEnd {
            call_id: "a84b4c76e66710@pc33".into(),
            destination: "sip:10.0.0.11:5060".into(),
            duration_s: 62.5,
            reason: EndReason::Bye,
            ts: 1_700_000_064_340,
        }),
        Event::CallFailed(Box::new(CallFailed {
            call_id: "f81d4fae-7dec@host".into(),
            code: 503,
            reason: Cow::Borrowed("Service Unavailable"),
            tried: vec!["sip:10.0.0.11:5060".into(), "sip:10.0.0.12:5060".into()],
            ts: 1_700_000_070_000,
        })),
        Event::DstDown(DstChange {
            set: 1,
            uri: "sip:10.0.0.12:5060".into(),
            reason: Cow::Borrowed("probe timeout"),
            ts: 1_700_000_080_000,
        }),
        Event::DstUp(DstChange {
            set: 1,
            uri: "sip:10.0.0.12:5060".into(),
            reason: Cow::Borrowed("probe ok"),
            ts: 1_700_000_090_000,
        }),
    ]
}

#[test]
fn events_are_read_back_in_order_as_json() {
    let server = RedisServer::start();
    let queue = EventQueue::new(1024);
    let run = spawn(cfg(&server.url()), &queue);
    let sent = all_kinds();
    for ev in &sent {
        queue.push(ev.clone());
    }
    wait_len(&server, sent.len());
    let items = read_all(&server);

    let json: Vec<serde_json::Value> = items
        .iter()
        .map(|s| serde_json::from_str(s).expect("valid JSON"))
        .collect();
    let kinds: Vec<&str> = json.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "call_start",
            "call_answered",
            "call_end",
            "call_failed",
            "dst_down",
            "dst_up"
        ]
    );
    let start = &json[0];
    assert_eq!(start["call_id"], "a84b4c76e66710@pc33");
    assert_eq!(start["from"], "sip:alice@atlanta.example");
    assert_eq!(start["to"], "sip:bob@biloxi.example");
    assert_eq!(start["ruri"], "sip:bob@biloxi.example");
    assert_eq!(start["set"], 1);
    assert_eq!(start["destination"], "sip:10.0.0.11:5060");
    assert_eq!(start["worker"], 2);
    assert_eq!(start["ts"], 1_700_000_000_000u64);
    assert_eq!(json[1]["setup_ms"], 1840);
    assert_eq!(json[2]["duration_s"], 62.5);
    assert_eq!(json[2]["reason"], "bye");
    assert_eq!(json[3]["code"], 503);
    assert_eq!(
        json[3]["tried"],
        serde_json::json!(["sip:10.0.0.11:5060", "sip:10.0.0.12:5060"])
    );
    assert_eq!(json[4]["uri"], "sip:10.0.0.12:5060");
    assert_eq!(json[4]["reason"], "probe timeout");
    assert_eq!(parse(&items), sent);

    let s = run.stop();
    assert_eq!(s.sent, 6);
    assert_eq!(s.buffered, 0);
    assert_eq!(s.redis_errors, 0);
    assert_eq!(s.unsent_at_shutdown, 0);
}

#[test]
fn a_backlog_goes_out_in_full_batches_and_few_round_trips() {
    let server = RedisServer::start();
    let queue = EventQueue::new(4096);
    // Queued before the exporter starts, so the whole backlog is in its first drain.
    for i in 0..1000 {
        queue.push(seq(i));
    }
    let run = spawn(cfg(&server.url()), &queue);
    wait_stats(&run.stats, "1000 sent", |s| s.sent == 1000);
    let s = run.stop();
    // 1000 / 256 → 4 RPUSH commands, all in one pipelined round trip.
    assert_eq!(s.batches, 4, "{s:?}");
    assert_eq!(s.round_trips, 1, "{s:?}");
    assert_eq!(seqs(&read_all(&server)), (0..1000).collect::<Vec<_>>());
}

#[test]
fn small_batches_are_pipelined() {
    let server = RedisServer::start();
    let queue = EventQueue::new(4096);
    for i in 0..1000 {
        queue.push(seq(i));
    }
    let config = ExporterConfig {
        batch: 10,
        pipeline_depth: 8,
        ..cfg(&server.url())
    };
    let run = spawn(config, &queue);
    wait_stats(&run.stats, "1000 sent", |s| s.sent == 1000);
    let s = run.stop();
    assert_eq!(s.batches, 100, "{s:?}");
    // 80 events per round trip: 12 full ones and one of 40.
    assert_eq!(s.round_trips, 13, "{s:?}");
    assert_eq!(seqs(&read_all(&server)), (0..1000).collect::<Vec<_>>());
}

#[test]
fn redis_down_at_start_then_everything_is_delivered_in_order() {
    let mut server = RedisServer::start();
    server.kill();
    let queue = EventQueue::new(4096);
    let run = spawn(cfg(&server.url()), &queue);
    for i in 0..500 {
        queue.push(seq(i));
    }
    wait_stats(&run.stats, "500 buffered after failed connects", |s| {
        s.buffered == 500 && s.redis_errors >= 2 && !s.connected
    });
    assert_eq!(run.stats.sent(), 0);
    server.restart();
    wait_len(&server, 500);
    assert_eq!(seqs(&read_all(&server)), (0..500).collect::<Vec<_>>());
    let s = run.stop();
    assert_eq!(s.sent, 500);
    assert_eq!(s.reconnects, 1, "{s:?}");
    assert_eq!(s.dropped_buffer_full + s.dropped_queue_full, 0);
}

#[test]
fn redis_killed_and_restarted_loses_nothing() {
    let mut server = RedisServer::start();
    let queue = EventQueue::new(4096);
    let run = spawn(cfg(&server.url()), &queue);
    for i in 0..200 {
        queue.push(seq(i));
    }
    wait_stats(&run.stats, "first 200 sent", |s| s.sent == 200);
    // An in-memory server forgets everything when killed: take what it holds first.
    let mut got = seqs(&read_all(&server));
    assert!(run.stats.connected());

    server.kill();
    for i in 200..500 {
        queue.push(seq(i));
    }
    wait_stats(&run.stats, "the write failure noticed", |s| {
        s.redis_errors >= 1 && s.buffered == 300 && !s.connected
    });
    server.restart();
    wait_len(&server, 300);
    got.extend(seqs(&read_all(&server)));
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    let s = run.stop();
    assert_eq!(s.sent, 500);
    assert!(s.reconnects >= 1, "{s:?}");
    assert_eq!(s.dropped_buffer_full + s.dropped_queue_full, 0);
}

#[test]
fn redis_killed_under_live_traffic_delivers_every_event_in_order() {
    // With `appendfsync always` whatever Redis acknowledged survives the kill, so the
    // final list must hold every event. A write that Redis applied but whose reply the
    // kill swallowed is sent again (at-least-once), so duplicates may appear, but only
    // as a repeated run: the first occurrences must be exactly 0..N in order.
    const N: u64 = 3000;
    let mut server = RedisServer::start_persistent();
    let queue = EventQueue::new(8192);
    let run = spawn(cfg(&server.url()), &queue);
    let producer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                queue.push(seq(i));
                if i % 10 == 0 {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        })
    };
    wait_stats(&run.stats, "some events sent", |s| s.sent >= 300);
    server.kill();
    wait_stats(&run.stats, "the outage noticed", |s| {
        s.redis_errors >= 1 && !s.connected
    });
    server.restart();
    producer.join().expect("producer");
    wait_stats(&run.stats, "everything sent", |s| {
        s.buffered == 0 && s.queued == 0 && s.sent >= N
    });
    let got = seqs(&read_all(&server));
    let mut seen = std::collections::HashSet::new();
    let first: Vec<u64> = got.iter().copied().filter(|i| seen.insert(*i)).collect();
    assert_eq!(first, (0..N).collect::<Vec<_>>());
    let s = run.stop();
    assert!(s.reconnects >= 1, "{s:?}");
    assert_eq!(s.dropped_buffer_full + s.dropped_queue_full, 0, "{s:?}");
}

#[test]
fn buffer_overflow_drops_the_oldest_and_counts() {
    let mut server = RedisServer::start();
    server.kill();
    let queue = EventQueue::new(4096);
    let config = ExporterConfig {
        buffer: 100,
        ..cfg(&server.url())
    };
    let run = spawn(config, &queue);
    for i in 0..250 {
        queue.push(seq(i));
    }
    wait_stats(&run.stats, "150 dropped from the buffer", |s| {
        s.dropped_buffer_full == 150 && s.buffered == 100
    });
    server.restart();
    wait_len(&server, 100);
    assert_eq!(seqs(&read_all(&server)), (150..250).collect::<Vec<_>>());
    let s = run.stop();
    assert_eq!(s.sent, 100);
    assert_eq!(s.dropped_buffer_full, 150);
    assert_eq!(s.dropped_queue_full, 0);
}

#[test]
fn full_queue_drops_and_counts() {
    let server = RedisServer::start();
    let queue = EventQueue::new(16);
    for i in 0..20 {
        queue.push(seq(i));
    }
    assert_eq!(queue.dropped(), 4);
    let run = spawn(cfg(&server.url()), &queue);
    wait_len(&server, 16);
    assert_eq!(seqs(&read_all(&server)), (0..16).collect::<Vec<_>>());
    let s = run.stop();
    assert_eq!(s.dropped_queue_full, 4);
    assert_eq!(s.sent, 16);
}

#[test]
fn server_error_keeps_events_until_the_write_succeeds() {
    let server = RedisServer::start();
    let mut c = server.connection();
    // RPUSH onto a string key fails with WRONGTYPE on every try.
    let _: () = c.set(LIST, "not a list").expect("SET");
    let queue = EventQueue::new(1024);
    let run = spawn(cfg(&server.url()), &queue);
    for i in 0..10 {
        queue.push(seq(i));
    }
    wait_stats(&run.stats, "repeated write errors", |s| {
        s.redis_errors >= 2 && s.buffered == 10
    });
    assert_eq!(run.stats.sent(), 0);
    let _: () = c.del(LIST).expect("DEL");
    wait_len(&server, 10);
    assert_eq!(seqs(&read_all(&server)), (0..10).collect::<Vec<_>>());
    let s = run.stop();
    assert_eq!(s.sent, 10);
}

#[test]
fn shutdown_flushes_what_is_pending() {
    let server = RedisServer::start();
    let queue = EventQueue::new(1024);
    let config = ExporterConfig {
        // Idle drains are effectively off: only the shutdown flush can deliver.
        flush_interval: Duration::from_secs(3600),
        ..cfg(&server.url())
    };
    let run = spawn(config, &queue);
    wait_stats(&run.stats, "connected", |s| s.connected);
    for i in 0..50 {
        queue.push(seq(i));
    }
    let s = run.stop();
    assert_eq!(s.sent, 50, "{s:?}");
    assert_eq!(s.unsent_at_shutdown, 0);
    assert_eq!(seqs(&read_all(&server)), (0..50).collect::<Vec<_>>());
}
