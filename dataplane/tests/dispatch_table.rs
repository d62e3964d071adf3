//! Destination table: health transitions, hold-down, hot reload keeping
//! stats, concurrent readers.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dataplane::dispatch::{
    parse_list, shared, Algorithm, DestState, HealthPolicy, SelectKey, Selector, Table,
};
use smallvec::SmallVec;

fn resolve(uri: &str) -> Result<SocketAddr, String> {
    // sip:10.0.0.N → 10.0.0.N:5060, enough for these tests.
    let host = uri.trim_start_matches("sip:");
    let ip: std::net::Ipv4Addr = host.parse().map_err(|e| format!("{e}"))?;
    Ok(SocketAddr::from((ip, 5060)))
}

fn build(text: &str, epoch: Instant) -> Table {
    Table::build(&parse_list(text).unwrap(), epoch, &mut resolve).unwrap()
}

#[test]
fn resolved_addresses_and_flags() {
    let t = build(
        "1 sip:10.0.0.1\n1 sip:10.0.0.2 4\n1 sip:10.0.0.3 9\n",
        Instant::now(),
    );
    let s = t.set(1).unwrap();
    assert_eq!(s.dests()[0].addr, "10.0.0.1:5060".parse().unwrap());
    let states: Vec<DestState> = s.dests().iter().map(|d| d.stats.state()).collect();
    assert_eq!(
        states,
        vec![DestState::Active, DestState::Disabled, DestState::Probing]
    );
    let errs = Table::build(
        &parse_list("1 sip:10.0.0.1\n2 sip:not-an-ip\n").unwrap(),
        Instant::now(),
        &mut resolve,
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 2);
    assert!(errs[0]
        .message
        .starts_with("cannot resolve destination 'sip:not-an-ip'"));
}

#[test]
fn failures_take_a_destination_out_until_hold_down_expires() {
    let t0 = Instant::now();
    let t = build("1 sip:10.0.0.1\n1 sip:10.0.0.2\n", t0);
    let set = t.set(1).unwrap();
    let policy = HealthPolicy {
        failure_threshold: 2,
        hold_down: Duration::from_secs(10),
    };
    let mut sel = Selector::new(0);
    let mut out = SmallVec::new();
    let key = SelectKey::default();
    let a = &set.dests()[0];
    assert!(!a.stats.record_failure(t0, &policy));
    assert!(a.stats.record_failure(t0, &policy));
    sel.select(
        set,
        Algorithm::Priority,
        &key,
        t0 + Duration::from_secs(9),
        &mut out,
    );
    assert_eq!(out.as_slice(), &[1]);
    sel.select(
        set,
        Algorithm::Priority,
        &key,
        t0 + Duration::from_secs(10),
        &mut out,
    );
    assert_eq!(out.as_slice(), &[0, 1], "retried after the hold-down");
    assert!(a.stats.record_success());
    assert_eq!(a.stats.state(), DestState::Active);
}

#[test]
fn racing_failures_report_down_exactly_once() {
    let t0 = Instant::now();
    let t = build("1 sip:10.0.0.1\n", t0);
    let stats = Arc::clone(&t.set(1).unwrap().dests()[0].stats);
    let policy = HealthPolicy::default();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let stats = Arc::clone(&stats);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                (0..100)
                    .filter(|_| stats.record_failure(t0, &policy))
                    .count()
            })
        })
        .collect();
    let downs: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(downs, 1);
    assert_eq!(stats.failed(), 400);
    assert_eq!(stats.state(), DestState::Inactive);
}

#[test]
fn reload_keeps_calls_and_state_of_persisting_destinations() {
    let t0 = Instant::now();
    let table = shared(build(
        "1 sip:10.0.0.1\n1 sip:10.0.0.2\n1 sip:10.0.0.3\n",
        t0,
    ));
    // A dialog holds its destination across the reload.
    let dialog_dest = Arc::clone(&table.load().set(1).unwrap().dests()[1]);
    dialog_dest.stats.call_started();
    dialog_dest.stats.call_started();
    table.load().set(1).unwrap().dests()[2]
        .stats
        .set_state(DestState::Disabled);

    let next = Table::rebuild(
        &table.load(),
        &parse_list("1 sip:10.0.0.2\n1 sip:10.0.0.3\n1 sip:10.0.0.4\n").unwrap(),
        &mut resolve,
    )
    .unwrap();
    table.store(Arc::new(next));

    let now = table.load();
    let set = now.set(1).unwrap();
    let (_, d2) = now.find(1, "sip:10.0.0.2").unwrap();
    assert_eq!(d2.stats.active_calls(), 2);
    assert_eq!(
        now.find(1, "sip:10.0.0.3").unwrap().1.stats.state(),
        DestState::Disabled
    );
    assert_eq!(
        now.find(1, "sip:10.0.0.4").unwrap().1.stats.active_calls(),
        0
    );
    assert!(now.find(1, "sip:10.0.0.1").is_none());
    // The dialog ends after the reload: the new table sees it.
    dialog_dest.stats.call_ended();
    assert_eq!(d2.stats.active_calls(), 1);
    // Call-load sees the persisted load: the fresh destination wins.
    let mut out = SmallVec::new();
    Selector::new(0).select(
        set,
        Algorithm::CallLoad,
        &SelectKey::default(),
        t0,
        &mut out,
    );
    assert_eq!(set.get(out[0]).unwrap().uri, "sip:10.0.0.4");
}

#[test]
fn readers_see_whole_snapshots_while_the_writer_swaps() {
    let t0 = Instant::now();
    let small = "1 sip:10.0.0.1\n1 sip:10.0.0.2\n";
    let big = "1 sip:10.0.0.1\n1 sip:10.0.0.2\n1 sip:10.0.0.3\n1 sip:10.0.0.4\n";
    let table = shared(build(small, t0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let table = Arc::clone(&table);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sel = Selector::new(1).with_limit(8);
            let mut out = SmallVec::new();
            let mut seen = 0u64;
            loop {
                let t = table.load();
                let set = t.set(1).unwrap();
                sel.select(
                    set,
                    Algorithm::RoundRobin,
                    &SelectKey::default(),
                    t0,
                    &mut out,
                );
                assert!(out.len() == 2 || out.len() == 4);
                assert!(out.iter().all(|&i| set.get(i).is_some()));
                seen += 1;
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break seen;
                }
            }
        })
    };
    for i in 0..200 {
        let text = if i % 2 == 0 { big } else { small };
        let next = Table::rebuild(&table.load(), &parse_list(text).unwrap(), &mut resolve).unwrap();
        table.store(Arc::new(next));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
}
