//! The pieces together, the way a worker drives them: a transaction table of
//! machines, one timer-wheel entry per transaction kept in step with
//! `next_deadline()` by `ArmedTimer`, and a loop that sleeps until the wheel's
//! next deadline.

use std::time::{Duration, Instant};

use dataplane::sip::Method;
use dataplane::txn::{
    ArmedTimer, ClientAction, ClientInvite, ClientNonInvite, KeyHasher, Reliability,
};
use dataplane::txn::{TimerConfig, TimerWheel, TxnId, TxnKey, TxnTable};

enum Machine {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

impl Machine {
    fn on_timer(&mut self, now: Instant) -> ClientAction {
        match self {
            Machine::Invite(m) => m.on_timer(now),
            Machine::NonInvite(m) => m.on_timer(now),
        }
    }
    fn on_response(&mut self, now: Instant, code: u16) -> ClientAction {
        match self {
            Machine::Invite(m) => m.on_response(now, code),
            Machine::NonInvite(m) => m.on_response(now, code),
        }
    }
    fn next_deadline(&self) -> Option<Instant> {
        match self {
            Machine::Invite(m) => m.next_deadline(),
            Machine::NonInvite(m) => m.next_deadline(),
        }
    }
    fn is_terminated(&self) -> bool {
        match self {
            Machine::Invite(m) => m.is_terminated(),
            Machine::NonInvite(m) => m.is_terminated(),
        }
    }
}

struct Txn {
    name: &'static str,
    m: Machine,
    timer: ArmedTimer,
}

struct Worker {
    table: TxnTable<Txn>,
    wheel: TimerWheel<TxnId>,
    log: Vec<(&'static str, u64, ClientAction)>,
    base: Instant,
}

impl Worker {
    fn new(base: Instant) -> Self {
        Worker {
            table: TxnTable::with_capacity(64),
            wheel: TimerWheel::with_capacity(base, 64),
            log: Vec::new(),
            base,
        }
    }

    fn start(&mut self, key: TxnKey, name: &'static str, m: Machine) -> TxnId {
        let id = self
            .table
            .insert(
                key,
                Txn {
                    name,
                    m,
                    timer: ArmedTimer::new(),
                },
            )
            .unwrap();
        self.sync(id);
        id
    }

    /// After any event: drop a terminated transaction, else re-arm its timer.
    fn sync(&mut self, id: TxnId) {
        let Some(t) = self.table.get_mut(id) else {
            return;
        };
        if t.m.is_terminated() {
            t.timer.disarm(&mut self.wheel);
            self.table.remove(id);
        } else {
            let want = t.m.next_deadline();
            t.timer.sync(&mut self.wheel, want, || id);
        }
    }

    fn response(&mut self, now: Instant, key: &TxnKey, code: u16) -> Option<ClientAction> {
        let id = self.table.find(key)?;
        let t = self.table.get_mut(id)?;
        let a = t.m.on_response(now, code);
        self.log
            .push((t.name, (now - self.base).as_millis() as u64, a));
        self.sync(id);
        Some(a)
    }

    /// Runs the timer loop up to `until`, returning how many wake-ups it took.
    fn run_until(&mut self, until: Instant) -> usize {
        let mut wakeups = 0;
        while let Some(d) = self.wheel.next_deadline() {
            if d > until {
                break;
            }
            wakeups += 1;
            while let Some(id) = self.wheel.poll(d) {
                let Some(t) = self.table.get_mut(id) else {
                    continue;
                };
                t.timer.fired();
                let a = t.m.on_timer(d);
                if a != ClientAction::None {
                    self.log
                        .push((t.name, (d - self.base).as_millis() as u64, a));
                }
                self.sync(id);
            }
        }
        wakeups
    }
}

#[test]
fn worker_loop_drives_retransmissions_and_timeouts_exactly() {
    let h = KeyHasher::default();
    let cfg = TimerConfig::default();
    let base = Instant::now();
    let mut w = Worker::new(base);
    let k_inv = TxnKey::client(&h, b"z9hG4bK-inv", Method::Invite, b"INVITE");
    let k_ans = TxnKey::client(&h, b"z9hG4bK-ans", Method::Invite, b"INVITE");
    let k_opt = TxnKey::client(&h, b"z9hG4bK-opt", Method::Options, b"OPTIONS");
    w.start(
        k_inv,
        "dead",
        Machine::Invite(ClientInvite::new(base, &cfg, Reliability::Unreliable)),
    );
    w.start(
        k_ans,
        "ringing",
        Machine::Invite(ClientInvite::new(base, &cfg, Reliability::Unreliable)),
    );
    w.start(
        k_opt,
        "options",
        Machine::NonInvite(ClientNonInvite::new(base, &cfg, Reliability::Unreliable)),
    );
    assert_eq!(w.table.len(), 3);

    assert_eq!(
        w.response(base + ms(100), &k_ans, 180),
        Some(ClientAction::PassUp)
    );
    assert_eq!(
        w.response(base + ms(200), &k_opt, 200),
        Some(ClientAction::PassUp)
    );
    let mut wakeups = w.run_until(base + Duration::from_secs(121));
    assert_eq!(
        w.response(base + Duration::from_secs(121), &k_ans, 487),
        Some(ClientAction::SendAck)
    );
    wakeups += w.run_until(base + Duration::from_secs(300));

    let mut log = w.log.clone();
    log.sort_by_key(|&(n, t, _)| (t, n));
    assert_eq!(
        log,
        vec![
            ("ringing", 100, ClientAction::PassUp),
            ("options", 200, ClientAction::PassUp),
            ("dead", 500, ClientAction::Retransmit),
            ("dead", 1500, ClientAction::Retransmit),
            ("dead", 2000, ClientAction::Timeout),
            ("options", 5200, ClientAction::Terminated),
            ("ringing", 120_100, ClientAction::TimeoutSendCancel),
            ("ringing", 121_000, ClientAction::SendAck),
            ("ringing", 126_000, ClientAction::Terminated),
        ]
    );
    assert!(w.table.is_empty(), "every transaction was dropped");
    assert!(w.wheel.is_empty(), "and left no timer behind");
    assert!(
        wakeups < 30,
        "conservative wheel deadlines cost few extra wake-ups: {wakeups}"
    );
    assert_eq!(
        w.response(base + Duration::from_secs(400), &k_inv, 200),
        None,
        "gone: forwarded statelessly"
    );
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
