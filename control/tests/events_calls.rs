//! Call events from the workers to a real Redis, through the real `sipvane`
//! binary with SIPp calling: every call's start, answer and end arrive in
//! order, failed calls carry their code, and a Redis restart in the middle
//! loses nothing.

mod support;

#[path = "support/redis.rs"]
mod redis_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::Commands;
use redis_support::RedisServer;
use serde_json::Value;
use support::{free_udp_addr, Scenario, Sipvane, Uac, Uas};

const RUN_LIMIT: Duration = Duration::from_secs(60);
const LIST: &str = "sipvane:test:events";

fn events_toml(redis: &RedisServer) -> String {
    format!(
        "ping_interval_s = 0\n[events]\nredis_url = \"{}\"\nlist = \"{LIST}\"\n",
        redis.url()
    )
}

/// Reads the whole list, waiting (bounded) until it holds at least `n`.
fn read_events(redis: &RedisServer, n: usize) -> Vec<Value> {
    let mut conn = redis.connection();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let raw: Vec<String> = conn.lrange(LIST, 0, -1).expect("LRANGE");
        if raw.len() >= n || Instant::now() > deadline {
            return raw
                .iter()
                .map(|s| serde_json::from_str(s).expect("event is JSON"))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn by_type(events: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(e["type"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    m
}

#[test]
fn calls_are_reported_and_a_redis_restart_loses_nothing() {
    let mut redis = RedisServer::start();
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("events-calls")
        .destination(format!("1 sip:{}", uas.addr()))
        .toml(&events_toml(&redis))
        .start();

    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(20)
        .rate(50)
        .hold(Duration::from_millis(200))
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(20);
    let first = read_events(&redis, 60);
    assert_eq!(
        by_type(&first),
        BTreeMap::from([
            ("call_answered".to_string(), 20),
            ("call_end".to_string(), 20),
            ("call_start".to_string(), 20),
        ]),
        "{first:?}"
    );
    // Per call: start, answered, end, in that order, with the facts filled in.
    let dest = format!("sip:{}", uas.addr());
    let mut seen: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for e in &first {
        let call = e["call_id"].as_str().expect("call_id").to_string();
        let kind = e["type"].as_str().unwrap_or("?");
        seen.entry(call).or_default().push(kind);
        assert_eq!(e["destination"].as_str(), Some(dest.as_str()), "{e}");
        assert!(
            e["ts"].as_u64().is_some_and(|t| t > 1_600_000_000_000),
            "{e}"
        );
        if kind == "call_end" {
            assert_eq!(e["reason"], "bye", "{e}");
            assert!(e["duration_s"].as_f64().is_some_and(|d| d >= 0.15), "{e}");
        }
        if kind == "call_start" {
            assert_eq!(e["set"], 1, "{e}");
        }
    }
    assert_eq!(seen.len(), 20);
    for kinds in seen.values() {
        assert_eq!(kinds, &["call_start", "call_answered", "call_end"]);
    }

    // Redis goes away while calls continue: events wait in sipvane's buffer
    // and arrive, in order, when it is back.
    redis.kill();
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(10)
        .rate(50)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(10);
    redis.restart();
    let after = read_events(&redis, 30);
    assert_eq!(after.len(), 30, "{after:?}");
    assert_eq!(by_type(&after)["call_end"], 10);
    uas.stop();
    sipvane.stop();

    // The shipped consumer (control/examples/cdr_consumer.rs) turns the
    // list into one CDR line per call: the 10 made while Redis was down (the
    // restarted in-memory Redis lost the first 20 calls' events it held).
    let consumer = std::path::Path::new(env!("CARGO_BIN_EXE_sipvane"))
        .with_file_name("examples")
        .join("cdr_consumer");
    assert!(
        consumer.is_file(),
        "{} missing: cargo test builds the examples",
        consumer.display()
    );
    let out = std::process::Command::new(&consumer)
        .args([&redis.url(), LIST, "--exit-when-empty"])
        .output()
        .expect("run cdr_consumer");
    assert!(out.status.success(), "{out:?}");
    let csv = String::from_utf8_lossy(&out.stdout);
    let cdrs: Vec<&str> = csv.lines().filter(|l| l.ends_with(",bye")).collect();
    assert_eq!(cdrs.len(), 10, "{csv}");
    assert!(cdrs.iter().all(|l| l.contains(&dest)), "{csv}");
}

#[test]
fn failed_calls_carry_their_code() {
    let redis = RedisServer::start();
    let mut busy = Uas::start(Scenario::Uas503, free_udp_addr());
    let mut sipvane = Sipvane::builder("events-failed")
        .destination(format!("1 sip:{}", busy.addr()))
        .toml(&events_toml(&redis))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(5)
        .rate(20)
        .timeout(RUN_LIMIT)
        .run();
    assert_eq!(run.stats.failed, 5, "every call fails: {:?}", run.stats);
    // Calls refused before any destination was tried have no call_start.
    let events = read_events(&redis, 8);
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "call_failed")
        .collect();
    assert_eq!(failed.len(), 5, "{events:?}");
    let busy_uri = format!("sip:{}", busy.addr());
    let mut tried_busy = 0;
    for e in &failed {
        // The only destination refused (503 is a failover code) and none is
        // left: sipvane answers 503 itself. After failure_threshold (3)
        // refusals the destination is out of rotation and later calls are
        // refused without trying it (`tried` empty).
        assert_eq!(e["code"], 503, "{e}");
        match e["tried"].as_array().map(Vec::as_slice) {
            Some([t]) => {
                assert_eq!(t.as_str(), Some(busy_uri.as_str()), "{e}");
                tried_busy += 1;
            }
            Some([]) => {}
            _ => panic!("unexpected tried list: {e}"),
        }
    }
    assert_eq!(tried_busy, 3, "{failed:?}");
    busy.stop();
    sipvane.stop();
}
