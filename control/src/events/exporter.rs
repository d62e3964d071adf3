//! The control-thread side: drains the [`EventQueue`] and RPUSHes JSON to a Redis list,
//! riding out Redis outages with a bounded buffer and reconnect backoff.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::{sleep_until, timeout, Instant, MissedTickBehavior};

use super::queue::EventQueue;
use crate::config::EventsConfig;

/// Settings of an [`Exporter`]. The first four are the `[events]` config keys; the rest
/// have defaults that suit production and are lowered by tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExporterConfig {
    /// `redis://[user:pass@]host[:port][/db]`.
    pub redis_url: String,
    /// List the events are RPUSHed to.
    pub list: String,
    /// Events per RPUSH command (at least 1).
    pub batch: usize,
    /// Events held while Redis is slow or down (at least 1); beyond it the oldest are
    /// dropped and counted.
    pub buffer: usize,
    /// RPUSH commands sent per round trip when a backlog builds up (at least 1).
    pub pipeline_depth: usize,
    /// How often the queue is drained when idle (non-zero): the added latency of an event.
    pub flush_interval: Duration,
    /// Bound on connecting and on each round trip; past it the connection counts as failed.
    pub io_timeout: Duration,
    /// First reconnect delay after a failure; doubles per failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long [`Exporter::run`] keeps delivering after shutdown is requested.
    pub shutdown_grace: Duration,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig {
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            list: "sipvane:events".to_owned(),
            batch: 256,
            buffer: 100_000,
            pipeline_depth: 8,
            flush_interval: Duration::from_millis(10),
            io_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

impl From<&EventsConfig> for ExporterConfig {
    fn from(c: &EventsConfig) -> Self {
        ExporterConfig {
            redis_url: c.redis_url.clone(),
            list: c.list.clone(),
            batch: c.batch as usize,
            buffer: c.buffer as usize,
            ..ExporterConfig::default()
        }
    }
}

/// Why an [`Exporter`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// `redis_url` does not parse (an empty URL means "events off" and is the caller's
    /// business: it should not build an exporter then).
    #[error("[events] redis_url {url:?} is invalid: {source}")]
    Url {
        /// The URL as configured.
        url: String,
        /// The parser's complaint.
        #[source]
        source: redis::RedisError,
    },
    /// A count or interval that must be positive is 0.
    #[error("[events] {0} must be at least 1")]
    Zero(&'static str),
}

/// Live counters of the exporter, shared through an `Arc` with the metrics endpoint.
#[derive(Debug)]
pub struct ExporterStats {
    queue: EventQueue,
    sent: AtomicU64,
    batches: AtomicU64,
    round_trips: AtomicU64,
    dropped_buffer_full: AtomicU64,
    redis_errors: AtomicU64,
    reconnects: AtomicU64,
    buffered: AtomicU64,
    unsent_at_shutdown: AtomicU64,
    connected: AtomicBool,
}

/// A consistent-enough copy of [`ExporterStats`] (each field read atomically on its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Events acknowledged by Redis.
    pub sent: u64,
    /// RPUSH commands acknowledged.
    pub batches: u64,
    /// Successful pipelined round trips.
    pub round_trips: u64,
    /// Events a worker dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Events dropped (oldest first) because the buffer was full.
    pub dropped_buffer_full: u64,
    /// Failed connection attempts and failed writes.
    pub redis_errors: u64,
    /// Connections established after a failure.
    pub reconnects: u64,
    /// Events held by the exporter now, awaiting delivery (including those in flight).
    pub buffered: u64,
    /// Events still in the queue now.
    pub queued: u64,
    /// Events that could not be delivered before `run` returned.
    pub unsent_at_shutdown: u64,
    /// Whether a Redis connection is currently up.
    pub connected: bool,
}

impl ExporterStats {
    fn new(queue: EventQueue) -> Self {
        ExporterStats {
            queue,
            sent: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            dropped_buffer_full: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            unsent_at_shutdown: AtomicU64::new(0),
            connected: AtomicBool::new(false),
        }
    }

    /// Events acknowledged by Redis.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    /// RPUSH commands acknowledged.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    /// Successful pipelined round trips.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }
    /// Events a worker dropped because the queue was full.
    pub fn dropped_queue_full(&self) -> u64 {
        self.queue.dropped()
    }
    /// Events dropped (oldest first) because the buffer was full.
    pub fn dropped_buffer_full(&self) -> u64 {
        self.dropped_buffer_full.load(Ordering::Relaxed)
    }
    /// Failed connection attempts and failed writes.
    pub fn redis_errors(&self) -> u64 {
        self.redis_errors.load(Ordering::Relaxed)
    }
    /// Connections established after a failure.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
    /// Events held by the exporter now (including those in flight).
    pub fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }
    /// Events still in the queue now.
    pub fn queued(&self) -> u64 {
        self.queue.len() as u64
    }
    /// Events that could not be delivered before `run` returned.
    pub fn unsent_at_shutdown(&self) -> u64 {
        self.unsent_at_shutdown.load(Ordering::Relaxed)
    }
    /// Whether a Redis connection is currently up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// All counters at once.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            sent: self.sent(),
            batches: self.batches(),
            round_trips: self.round_trips(),
            dropped_queue_full: self.dropped_queue_full(),
            dropped_buffer_full: self.dropped_buffer_full(),
            redis_errors: self.redis_errors(),
            reconnects: self.reconnects(),
            buffered: self.buffered(),
            queued: self.queued(),
            unsent_at_shutdown: self.unsent_at_shutdown(),
            connected: self.connected(),
        }
    }

    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Moves events from the [`EventQueue`] to Redis. Build it with [`Exporter::new`], keep
/// [`Exporter::stats`] for metrics, and spawn [`Exporter::run`] on the control runtime.
pub struct Exporter {
    cfg: ExporterConfig,
    list: Arc<str>,
    client: redis::Client,
    queue: EventQueue,
    stats: Arc<ExporterStats>,
    /// JSON of events not yet handed to a write, oldest first.
    buf: VecDeque<String>,
    /// Events owned by the write in progress; they count against `cfg.buffer`.
    in_flight: usize,
}

type Op = Pin<Box<dyn Future<Output = OpDone> + Send>>;

/// Outcome of the single I/O operation the exporter has in progress at a time.
enum OpDone {
    Connected(Result<MultiplexedConnection, String>),
    /// `items` come back so a failed write can put them back in the buffer.
    Wrote {
        items: Vec<String>,
        batches: usize,
        result: Result<(), String>,
    },
}

enum Wake {
    Shutdown,
    Deadline,
    Op(OpDone),
    Timer,
}

impl Exporter {
    /// Validates `cfg` (no connection is made here) and ties the exporter to `queue`.
    pub fn new(cfg: ExporterConfig, queue: EventQueue) -> Result<Exporter, ExporterError> {
        for (name, v) in [
            ("batch", cfg.batch),
            ("buffer", cfg.buffer),
            ("pipeline_depth", cfg.pipeline_depth),
        ] {
            if v == 0 {
                return Err(ExporterError::Zero(name));
            }
        }
        if cfg.flush_interval.is_zero() {
            return Err(ExporterError::Zero("flush_interval"));
        }
        let client =
            redis::Client::open(cfg.redis_url.as_str()).map_err(|source| ExporterError::Url {
                url: cfg.redis_url.clone(),
                source,
            })?;
        Ok(Exporter {
            list: cfg.list.as_str().into(),
            client,
            stats: Arc::new(ExporterStats::new(queue.clone())),
            queue,
            buf: VecDeque::new(),
            in_flight: 0,
            cfg,
        })
    }

    /// The counters, for metrics; they stay readable after `run` returns.
    pub fn stats(&self) -> Arc<ExporterStats> {
        Arc::clone(&self.stats)
    }

    /// Delivers events until `shutdown` completes, then for at most
    /// `cfg.shutdown_grace` more to flush what is buffered. Never blocks the workers: the
    /// queue is drained into the buffer even while a connect or a write is pending.
    ///
    /// Exactly one connect or write is in progress at a time and writes go out in buffer
    /// order, which is what keeps the list in event order across reconnects.
    pub async fn run(mut self, shutdown: impl Future) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(self.cfg.flush_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut conn: Option<MultiplexedConnection> = None;
        let mut op: Option<Op> = None;
        let mut retry_at = Instant::now();
        let mut backoff = self.cfg.backoff_min;
        // Set after a failure, cleared when a connection is up: tells a reconnect from the
        // first connect, and a new outage (worth a warning) from one that goes on.
        let mut failing = false;
        let mut deadline: Option<Instant> = None;

        loop {
            self.drain_queue();
            let now = Instant::now();
            if op.is_none() {
                match &conn {
                    Some(c) if self.has_pending() => op = Some(self.start_write(c.clone())),
                    // Connect eagerly when idle so the first events do not wait for it.
                    None if now >= retry_at && (deadline.is_none() || self.has_pending()) => {
                        op = Some(self.start_connect())
                    }
                    _ => {}
                }
            }
            if let Some(d) = deadline {
                let hopeless = conn.is_none() && retry_at >= d;
                if op.is_none() && (!self.has_pending() || hopeless) {
                    break;
                }
            }
            let waiting_retry = op.is_none() && conn.is_none();
            let wake = {
                let op_done = async {
                    match op.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = &mut shutdown, if deadline.is_none() => Wake::Shutdown,
                    _ = sleep_until(deadline.unwrap_or(now)), if deadline.is_some() => Wake::Deadline,
                    done = op_done => Wake::Op(done),
                    _ = sleep_until(retry_at), if waiting_retry => Wake::Timer,
                    _ = tick.tick() => Wake::Timer,
                }
            };
            match wake {
                Wake::Shutdown => {
                    tracing::debug!(pending = self.pending(), "event exporter: flushing");
                    deadline = Some(Instant::now() + self.cfg.shutdown_grace);
                }
                Wake::Deadline => break,
                Wake::Timer => {}
                Wake::Op(done) => {
                    op = None;
                    match done {
                        OpDone::Connected(Ok(c)) => {
                            if failing {
                                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(
                                    buffered = self.pending(),
                                    "event exporter: Redis reachable again"
                                );
                            }
                            failing = false;
                            conn = Some(c);
                            self.stats.connected.store(true, Ordering::Relaxed);
                        }
                        OpDone::Connected(Err(e)) => {
                            self.note_failure(&e, "connect", &mut failing);
                            retry_at = Instant::now() + backoff;
                            backoff = backoff.saturating_mul(2).min(self.cfg.backoff_max);
                        }
                        OpDone::Wrote {
                            items,
                            batches,
                            result: Ok(()),
                        } => {
                            self.in_flight = 0;
                            ExporterStats::add(&self.stats.sent, items.len());
                            ExporterStats::add(&self.stats.batches, batches);
                            ExporterStats::add(&self.stats.round_trips, 1);
                            backoff = self.cfg.backoff_min;
                            self.publish_buffered();
                        }
                        OpDone::Wrote {
                            items,
                            result: Err(e),
                            ..
                        } => {
                            self.note_failure(&e, "write", &mut failing);
                            self.requeue(items);
                            conn = None;
                            self.stats.connected.store(false, Ordering::Relaxed);
                            retry_at = Instant::now() + backoff;
                            backoff = backoff.saturating_mul(2).min(self.cfg.backoff_max);
                        }
                    }
                }
            }
        }

        // A write cut off by the deadline may or may not have landed; it counts as unsent.
        let unsent = self.pending() + self.queue.len();
        self.stats
            .unsent_at_shutdown
            .store(unsent as u64, Ordering::Relaxed);
        self.stats.connected.store(false, Ordering::Relaxed);
        if unsent > 0 {
            tracing::warn!(unsent, "event exporter stopped with undelivered events");
        }
    }

    /// Events held (buffered or in flight).
    fn pending(&self) -> usize {
        self.buf.len() + self.in_flight
    }

    /// Whether anything is waiting to be written (in-flight events are not).
    fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    fn publish_buffered(&self) {
        self.stats
            .buffered
            .store(self.pending() as u64, Ordering::Relaxed);
    }

    fn note_failure(&self, err: &str, what: &str, failing: &mut bool) {
        self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        // One warning per outage; the retries of an ongoing one would flood the log.
        if *failing {
            tracing::debug!(error = err, "event exporter: Redis {what} failed again");
        } else {
            tracing::warn!(
                error = err,
                buffered = self.pending(),
                "event exporter: Redis {what} failed; buffering events"
            );
        }
        *failing = true;
    }

    /// Moves everything the workers queued into the buffer, dropping the oldest buffered
    /// events when it is full.
    fn drain_queue(&mut self) {
        // Bounded so that producers outpacing serialisation cannot starve the writes.
        for _ in 0..self.queue.capacity() {
            let Some(ev) = self.queue.pop() else { break };
            let json = match serde_json::to_string(&ev) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, kind = ev.kind(), "event not serialisable");
                    continue;
                }
            };
            if self.pending() >= self.cfg.buffer {
                self.stats
                    .dropped_buffer_full
                    .fetch_add(1, Ordering::Relaxed);
                // In-flight events are already on the wire, so the oldest droppable one is
                // the head of `buf`; with nothing there the newcomer goes instead.
                if self.buf.pop_front().is_none() {
                    continue;
                }
            }
            self.buf.push_back(json);
        }
        self.publish_buffered();
    }

    /// Puts the events of a failed write back at the head, trimming to the bound.
    fn requeue(&mut self, items: Vec<String>) {
        self.in_flight = 0;
        for s in items.into_iter().rev() {
            self.buf.push_front(s);
        }
        while self.buf.len() > self.cfg.buffer {
            self.buf.pop_front();
            self.stats
                .dropped_buffer_full
                .fetch_add(1, Ordering::Relaxed);
        }
        self.publish_buffered();
    }

    fn start_connect(&self) -> Op {
        let client = self.client.clone();
        let limit = self.cfg.io_timeout;
        Box::pin(async move {
            let r = match timeout(limit, client.get_multiplexed_async_connection()).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no connection within {limit:?}")),
            };
            OpDone::Connected(r)
        })
    }

    /// Takes up to `pipeline_depth` batches from the head of the buffer and sends them as
    /// one pipeline of RPUSH commands: one round trip however large the backlog.
    fn start_write(&mut self, mut conn: MultiplexedConnection) -> Op {
        let n = self
            .buf
            .len()
            .min(self.cfg.batch.saturating_mul(self.cfg.pipeline_depth));
        let items: Vec<String> = self.buf.drain(..n).collect();
        self.in_flight = n;
        let list = Arc::clone(&self.list);
        let batch = self.cfg.batch;
        let limit = self.cfg.io_timeout;
        Box::pin(async move {
            let mut pipe = redis::pipe();
            let mut batches = 0;
            for chunk in items.chunks(batch) {
                pipe.cmd("RPUSH").arg(&*list);
                for s in chunk {
                    pipe.arg(s.as_str());
                }
                pipe.ignore();
                batches += 1;
            }
            let result = match timeout(limit, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no reply within {limit:?}")),
            };
            drop(pipe);
            OpDone::Wrote {
                items,
                batches,
                result,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_events_section() {
        let ev = EventsConfig {
            redis_url: "redis://10.0.0.5:6380/2".into(),
            list: "cdr".into(),
            batch: 64,
            buffer: 500,
        };
        let c = ExporterConfig::from(&ev);
        assert_eq!(c.redis_url, "redis://10.0.0.5:6380/2");
        assert_eq!(c.list, "cdr");
        assert_eq!(c.batch, 64);
        assert_eq!(c.buffer, 500);
        assert_eq!(c.backoff_min, Duration::from_millis(100));
        assert_eq!(c.backoff_max, Duration::from_secs(5));
        let d = ExporterConfig::from(&EventsConfig::default());
        assert_eq!(
            (d.list.as_str(), d.batch, d.buffer),
            ("sipvane:events", 256, 100_000)
        );
    }

    #[test]
    fn new_rejects_bad_config() {
        let q = EventQueue::new(8);
        let bad_url = ExporterConfig {
            redis_url: "http://nope".into(),
            ..ExporterConfig::default()
        };
        assert!(matches!(
            Exporter::new(bad_url, q.clone()),
            Err(ExporterError::Url { .. })
        ));
        let zero = ExporterConfig {
            batch: 0,
            ..ExporterConfig::default()
        };
        assert!(matches!(
            Exporter::new(zero, q.clone()),
            Err(ExporterError::Zero("batch"))
        ));
        assert!(Exporter::new(ExporterConfig::default(), q.clone()).is_ok());
        let unix = ExporterConfig {
            redis_url: "redis+unix:///run/redis/redis.sock".into(),
            ..ExporterConfig::default()
        };
        assert!(Exporter::new(unix, q).is_ok());
    }

    fn exporter(buffer: usize) -> (Exporter, EventQueue) {
        let q = EventQueue::new(64);
        let cfg = ExporterConfig {
            buffer,
            ..ExporterConfig::default()
        };
        (Exporter::new(cfg, q.clone()).unwrap(), q)
    }

    fn ev(i: u64) -> crate::events::Event {
        crate::events::Event::DstUp(crate::events::DstChange {
            set: 1,
            uri: "sip:d".into(),
            reason: "t".into(),
            ts: i,
        })
    }

    fn ts_of(s: &str) -> u64 {
        serde_json::from_str::<crate::events::Event>(s)
            .unwrap()
            .ts()
    }

    #[test]
    fn buffer_drops_oldest_but_not_in_flight() {
        let (mut x, q) = exporter(4);
        for i in 0..6 {
            q.push(ev(i));
        }
        x.drain_queue();
        let held: Vec<u64> = x.buf.iter().map(|s| ts_of(s)).collect();
        assert_eq!(held, vec![2, 3, 4, 5]);
        assert_eq!(x.stats.dropped_buffer_full(), 2);
        assert_eq!(x.stats.buffered(), 4);

        // Two of them on the wire: only the other two can make room.
        let items: Vec<String> = x.buf.drain(..2).collect();
        x.in_flight = 2;
        for i in 6..10 {
            q.push(ev(i));
        }
        x.drain_queue();
        let held: Vec<u64> = x.buf.iter().map(|s| ts_of(s)).collect();
        // 6 and 7 push out 4 and 5, then 8 and 9 push out 6 and 7.
        assert_eq!(held, vec![8, 9]);
        assert_eq!(x.stats.dropped_buffer_full(), 6);

        // The write fails: its events return to the head, then the bound trims oldest.
        x.requeue(items);
        let held: Vec<u64> = x.buf.iter().map(|s| ts_of(s)).collect();
        assert_eq!(held, vec![2, 3, 8, 9]);
        assert_eq!(x.stats.dropped_buffer_full(), 6);
        assert_eq!(x.in_flight, 0);
    }

    #[test]
    fn everything_in_flight_drops_newcomer() {
        let (mut x, q) = exporter(2);
        q.push(ev(0));
        q.push(ev(1));
        x.drain_queue();
        let items: Vec<String> = x.buf.drain(..).collect();
        x.in_flight = items.len();
        q.push(ev(2));
        x.drain_queue();
        assert!(x.buf.is_empty());
        assert_eq!(x.stats.dropped_buffer_full(), 1);
        assert_eq!(x.stats.buffered(), 2);
    }

    #[test]
    fn run_future_is_send() {
        // The integrator may `tokio::spawn` it; that needs Send.
        fn assert_send<T: Send>(_: &T) {}
        let (x, _q) = exporter(8);
        let fut = x.run(async {});
        assert_send(&fut);
    }

    #[test]
    fn shutdown_with_redis_unreachable_is_bounded() {
        // Port 1 on loopback refuses at once: the exporter must give up within the grace.
        let q = EventQueue::new(64);
        let cfg = ExporterConfig {
            redis_url: "redis://127.0.0.1:1".into(),
            shutdown_grace: Duration::from_millis(300),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(50),
            ..ExporterConfig::default()
        };
        let x = Exporter::new(cfg, q.clone()).unwrap();
        let stats = x.stats();
        for i in 0..5 {
            q.push(ev(i));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        rt.block_on(x.run(async { tokio::time::sleep(Duration::from_millis(100)).await }));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        let s = stats.snapshot();
        assert_eq!(s.unsent_at_shutdown, 5);
        assert_eq!(s.sent, 0);
        assert!(s.redis_errors >= 1);
        assert!(!s.connected);
    }
}
