//! Supervision: never a half-dead process.
//!
//! A worker thread whose loop ends while nobody asked it to stop (a panic,
//! a fatal I/O error) has lost its transactions and dialogs; a control-thread
//! task that panics (probing, reload, the management API, media health, the
//! watchdog) or a background task that ends before shutdown (event exporter,
//! accounting writer, the bridge between them and the workers) leaves the
//! service silently degraded. Either way the control thread logs what died,
//! stops the rest in order (events flushed, accounting rows spooled) and
//! `sipvane run` exits non-zero, so systemd (`Restart=on-failure`) starts a
//! fresh process. docs/reliability.md.
//!
//! Test-only hook (documented there): with `SIPVANE_TEST_PANIC=worker` a
//! worker panics on a datagram that starts with [`PANIC_DATAGRAM`]; with
//! `SIPVANE_TEST_PANIC=control` a control-thread task panics on SIGUSR2.
//! Without the variable neither exists.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dataplane::worker::{Core, Monitor, Outbox, SocketId};
use tokio::task::JoinHandle;

/// The environment variable of the test-only panic trigger.
pub const TEST_PANIC_ENV: &str = "SIPVANE_TEST_PANIC";

/// With `SIPVANE_TEST_PANIC=worker`, a datagram starting with this makes the
/// worker that receives it panic.
pub const PANIC_DATAGRAM: &[u8] = b"SIPVANE-TEST-PANIC";

/// How often the control thread looks for dead workers and tasks.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Which part the test-only trigger makes panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestPanic {
    Worker,
    Control,
}

impl TestPanic {
    pub fn from_env() -> Option<TestPanic> {
        match std::env::var(TEST_PANIC_ENV).ok()?.as_str() {
            "worker" => Some(TestPanic::Worker),
            "control" => Some(TestPanic::Control),
            _ => None,
        }
    }
}

/// A worker's core with the test-only trigger; without it, a plain
/// pass-through (one predictable branch per datagram).
pub struct Supervised<C> {
    pub core: C,
    pub panic_on_request: bool,
}

impl<C: Core> Core for Supervised<C> {
    fn on_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        data: &[u8],
        out: &mut Outbox,
    ) {
        if self.panic_on_request && data.starts_with(PANIC_DATAGRAM) {
            panic!("{TEST_PANIC_ENV}=worker: this worker panics on request");
        }
        self.core.on_datagram(now, socket, src, data, out);
    }

    fn on_timer(&mut self, now: Instant, out: &mut Outbox) {
        self.core.on_timer(now, out);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.core.next_deadline()
    }

    fn on_connect_failed(&mut self, now: Instant, dst: SocketAddr, out: &mut Outbox) {
        self.core.on_connect_failed(now, dst, out);
    }

    fn on_backlog(&mut self, now: Instant, since: Option<Instant>) {
        self.core.on_backlog(now, since);
    }

    fn take_hep_tap(&mut self) -> Option<dataplane::hep::Tap> {
        self.core.take_hep_tap()
    }

    fn handover(&mut self, now: Instant) -> Vec<u8> {
        self.core.handover(now)
    }

    fn open_work(&self) -> usize {
        self.core.open_work()
    }

    fn tls_peer(&self, dst: std::net::SocketAddr) -> dataplane::transport::tls::TlsPeer {
        self.core.tls_peer(dst)
    }
}

/// What the control thread watches.
#[derive(Default)]
pub struct Watched {
    /// Long-lived control tasks: a panic is fatal, a plain return (e.g.
    /// probing off because no socket could be bound) is only logged.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Watched {
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Stops every task and waits until each is gone (a restart hand-over:
    /// the management API's listener must be closed here).
    pub async fn abort_all(&mut self) {
        for (_, t) in &self.tasks {
            t.abort();
        }
        for (_, t) in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    /// Something that died, as a sentence for the log and the exit message;
    /// `None` while everything runs. `background` are tasks that only end
    /// at shutdown: ending before it is fatal.
    pub async fn check(
        &mut self,
        workers: &Monitor,
        background: &[(&'static str, bool)],
    ) -> Option<String> {
        let dead = workers.dead_workers();
        if !dead.is_empty() {
            return Some(format!(
                "worker {dead:?} stopped running (its transactions and dialogs are lost)"
            ));
        }
        if let Some((name, _)) = background.iter().find(|(_, finished)| *finished) {
            return Some(format!("the {name} task ended before shutdown"));
        }
        let mut i = 0;
        while i < self.tasks.len() {
            if !self.tasks[i].1.is_finished() {
                i += 1;
                continue;
            }
            let (name, handle) = self.tasks.swap_remove(i);
            match handle.await {
                Err(e) if e.is_panic() => {
                    return Some(format!("the control-thread task {name} panicked"));
                }
                _ => tracing::info!(task = name, "control-thread task ended"),
            }
        }
        None
    }
}

/// The test-only control-thread task that panics on SIGUSR2.
pub async fn panic_on_sigusr2() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
        return;
    };
    usr2.recv().await;
    panic!("{TEST_PANIC_ENV}=control: this control-thread task panics on SIGUSR2");
}
