//! Every selection algorithm: who is chosen, the failover order, and what
//! happens when destinations become unusable or full.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dataplane::dispatch::{
    parse_list, Algorithm, DestState, HealthPolicy, SelectKey, Selector, Set, Table,
};
use smallvec::SmallVec;

fn build(text: &str) -> Table {
    let mut port = 5000u16;
    let mut resolve = |_: &str| -> Result<SocketAddr, String> {
        port += 1;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    };
    Table::build(&parse_list(text).unwrap(), Instant::now(), &mut resolve).unwrap()
}

fn n_dests(n: usize, attrs: impl Fn(usize) -> String) -> Table {
    let text: String = (0..n)
        .map(|i| format!("1 sip:10.0.0.{i}:5060 0 0 {}\n", attrs(i)))
        .collect();
    build(&text)
}

fn pick(sel: &mut Selector, set: &Set, alg: Algorithm, key: &SelectKey, now: Instant) -> Vec<u16> {
    let mut out = SmallVec::new();
    sel.select(set, alg, key, now, &mut out);
    out.to_vec()
}

fn counts(
    sel: &mut Selector,
    set: &Set,
    alg: Algorithm,
    rounds: usize,
    now: Instant,
) -> Vec<usize> {
    let mut c = vec![0; set.len()];
    let mut out = SmallVec::new();
    for i in 0..rounds {
        let cid = format!("call-{i}");
        let key = SelectKey {
            call_id: cid.as_bytes(),
            ..SelectKey::default()
        };
        sel.select(set, alg, &key, now, &mut out);
        c[usize::from(out[0])] += 1;
    }
    c
}

fn key_of<'a>(call_id: &'a [u8], uri: &'a [u8]) -> SelectKey<'a> {
    SelectKey {
        call_id,
        from_uri: uri,
        to_uri: uri,
        ruri: uri,
        auth_user: Some(call_id),
    }
}

#[test]
fn hashes_stick_and_fail_over_to_the_next() {
    let t = n_dests(5, |_| String::new());
    let set = t.set(1).unwrap();
    let now = Instant::now();
    for alg in [
        Algorithm::HashCallId,
        Algorithm::HashFrom,
        Algorithm::HashTo,
        Algorithm::HashRuri,
        Algorithm::HashAuthUser,
    ] {
        for k in 0..50 {
            let cid = format!("cid-{k}@host");
            let uri = format!("sip:user{k}@example.com");
            let key = key_of(cid.as_bytes(), uri.as_bytes());
            // Same key, any worker, any time: same destination.
            let first = pick(&mut Selector::new(0), set, alg, &key, now);
            for w in 1..4 {
                assert_eq!(
                    pick(&mut Selector::new(w), set, alg, &key, now),
                    first,
                    "{alg}"
                );
            }
            // Failover order: the rest of the set after the chosen, wrapping.
            let c = first[0];
            let want: Vec<u16> = (0..5).map(|i| (c + i) % 5).collect();
            assert_eq!(first, want, "{alg}");
            // The chosen dies: the key moves to the next one, and back.
            set.dests()[usize::from(c)]
                .stats
                .set_state(DestState::Probing);
            let moved = pick(&mut Selector::new(0), set, alg, &key, now);
            assert_eq!(moved[0], (c + 1) % 5, "{alg}");
            assert_eq!(moved.len(), 4);
            assert!(!moved.contains(&c));
            set.dests()[usize::from(c)]
                .stats
                .set_state(DestState::Active);
            assert_eq!(pick(&mut Selector::new(0), set, alg, &key, now), first);
        }
    }
}

#[test]
fn uri_hashes_ignore_parameters_and_display_names() {
    let t = n_dests(7, |_| String::new());
    let set = t.set(1).unwrap();
    let now = Instant::now();
    let mut sel = Selector::new(0);
    for u in 0..30 {
        let bare = format!("sip:u{u}@example.com");
        let decorated = format!("\"U\" <sip:u{u}@EXAMPLE.com:5060;transport=udp>;tag=abc{u}");
        for alg in [Algorithm::HashFrom, Algorithm::RendezvousFrom] {
            let a = pick(&mut sel, set, alg, &key_of(b"x", bare.as_bytes()), now);
            let b = pick(&mut sel, set, alg, &key_of(b"y", decorated.as_bytes()), now);
            assert_eq!(a[0], b[0], "{alg} {decorated}");
        }
    }
}

#[test]
fn auth_user_without_username_is_round_robin() {
    let t = n_dests(3, |_| String::new());
    let set = t.set(1).unwrap();
    let mut sel = Selector::new(0);
    let key = SelectKey::default();
    let firsts: Vec<u16> = (0..6)
        .map(|_| pick(&mut sel, set, Algorithm::HashAuthUser, &key, Instant::now())[0])
        .collect();
    assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
}

#[test]
fn round_robin_spreads_evenly_also_around_dead_ones() {
    let t = n_dests(4, |_| String::new());
    let set = t.set(1).unwrap();
    let now = Instant::now();
    let mut sel = Selector::new(3);
    assert_eq!(
        counts(&mut sel, set, Algorithm::RoundRobin, 4000, now),
        vec![1000; 4]
    );
    set.dests()[1].stats.set_state(DestState::Disabled);
    assert_eq!(
        counts(&mut sel, set, Algorithm::RoundRobin, 3000, now),
        vec![1000, 0, 1000, 1000]
    );
    // Failover order after the chosen one.
    let first = pick(
        &mut sel,
        set,
        Algorithm::RoundRobin,
        &SelectKey::default(),
        now,
    );
    assert_eq!(first.len(), 3);
    // Different workers start at different places.
    let a = pick(
        &mut Selector::new(0),
        set,
        Algorithm::RoundRobin,
        &SelectKey::default(),
        now,
    );
    let b = pick(
        &mut Selector::new(2),
        set,
        Algorithm::RoundRobin,
        &SelectKey::default(),
        now,
    );
    assert_ne!(a[0], b[0]);
}

#[test]
fn random_covers_everyone_roughly_evenly() {
    let t = n_dests(4, |_| String::new());
    let set = t.set(1).unwrap();
    let c = counts(
        &mut Selector::new(1),
        set,
        Algorithm::Random,
        8000,
        Instant::now(),
    );
    for x in &c {
        assert!((1700..2300).contains(x), "{c:?}");
    }
    // Seeded by worker: reproducible.
    let a = counts(
        &mut Selector::new(9),
        set,
        Algorithm::Random,
        100,
        Instant::now(),
    );
    let b = counts(
        &mut Selector::new(9),
        set,
        Algorithm::Random,
        100,
        Instant::now(),
    );
    assert_eq!(a, b);
}

#[test]
fn weights_are_honoured_within_one_percent() {
    let w = [50u32, 30, 15, 5];
    let t = n_dests(4, |i| format!("weight={}", w[i]));
    let set = t.set(1).unwrap();
    let now = Instant::now();
    for worker in 0..3 {
        let c = counts(
            &mut Selector::new(worker),
            set,
            Algorithm::Weight,
            10_000,
            now,
        );
        for (i, &x) in c.iter().enumerate() {
            let want = w[i] as usize * 100;
            assert!(x.abs_diff(want) <= 100, "worker {worker}: {c:?}");
        }
    }
    // Exact over any 100 consecutive selections.
    let mut sel = Selector::new(0);
    counts(&mut sel, set, Algorithm::Weight, 37, now);
    assert_eq!(
        counts(&mut sel, set, Algorithm::Weight, 100, now),
        vec![50, 30, 15, 5]
    );
    // A dead one's share goes to its successor in set order (Kamailio).
    set.dests()[1].stats.set_state(DestState::Disabled);
    assert_eq!(
        counts(&mut sel, set, Algorithm::Weight, 100, now),
        vec![50, 0, 45, 5]
    );
}

#[test]
fn relative_weights_rescale_over_usable_destinations() {
    let rw = [1u32, 2, 1];
    let t = n_dests(3, |i| format!("rweight={}", rw[i]));
    let set = t.set(1).unwrap();
    let now = Instant::now();
    let mut sel = Selector::new(0);
    let c = counts(&mut sel, set, Algorithm::RelativeWeight, 10_000, now);
    for (x, want) in c.iter().zip([2500usize, 5000, 2500]) {
        assert!(x.abs_diff(want) <= 100, "{c:?}");
    }
    set.dests()[2].stats.set_state(DestState::Inactive);
    let c = counts(&mut sel, set, Algorithm::RelativeWeight, 9_000, now);
    assert_eq!(c[2], 0);
    assert!(
        c[0].abs_diff(3000) <= 90 && c[1].abs_diff(6000) <= 90,
        "{c:?}"
    );
}

#[test]
fn call_load_picks_least_loaded_and_honours_maxload() {
    let t = n_dests(3, |i| format!("maxload={}", [2, 0, 3][i]));
    let set = t.set(1).unwrap();
    let now = Instant::now();
    let mut sel = Selector::new(0);
    let key = SelectKey::default();
    let d = set.dests();
    d[0].stats.call_started();
    d[1].stats.call_started();
    d[1].stats.call_started();
    // Loads 1, 2, 0.
    assert_eq!(
        pick(&mut sel, set, Algorithm::CallLoad, &key, now),
        vec![2, 0, 1]
    );
    // Simulate calls as the proxy would: select, then call_started.
    for _ in 0..6 {
        let o = pick(&mut sel, set, Algorithm::CallLoad, &key, now);
        d[usize::from(o[0])].stats.call_started();
    }
    let loads: Vec<u32> = d.iter().map(|x| x.stats.active_calls()).collect();
    // dest 0 is capped at 2 and dest 2 at 3; the unlimited one takes the rest.
    assert_eq!(loads, vec![2, 4, 3]);
    // Full destinations are not even failover candidates.
    assert_eq!(pick(&mut sel, set, Algorithm::CallLoad, &key, now), vec![1]);
    // maxload applies to every algorithm.
    assert_eq!(pick(&mut sel, set, Algorithm::Priority, &key, now), vec![1]);
    d[0].stats.call_ended();
    assert_eq!(
        pick(&mut sel, set, Algorithm::CallLoad, &key, now),
        vec![0, 1]
    );
    // Everyone full: nothing to offer (the proxy answers 503).
    let t = n_dests(2, |_| "maxload=1".to_string());
    let set = t.set(1).unwrap();
    for x in set.dests() {
        x.stats.call_started();
    }
    assert!(pick(&mut sel, set, Algorithm::CallLoad, &key, now).is_empty());
    assert!(pick(&mut sel, set, Algorithm::RoundRobin, &key, now).is_empty());
}

#[test]
fn call_load_ties_rotate_between_workers() {
    let t = n_dests(4, |_| String::new());
    let set = t.set(1).unwrap();
    let now = Instant::now();
    let firsts: Vec<u16> = (0..4)
        .map(|w| {
            pick(
                &mut Selector::new(w),
                set,
                Algorithm::CallLoad,
                &SelectKey::default(),
                now,
            )[0]
        })
        .collect();
    let mut uniq = firsts.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert!(uniq.len() > 1, "{firsts:?}");
}

#[test]
fn priority_order_is_serial_forking() {
    let t =
        build("1 sip:low 0 1\n1 sip:high 0 30\n1 sip:mid 0 20\n1 sip:mid2 0 20\n1 sip:neg 0 -5\n");
    let set = t.set(1).unwrap();
    let now = Instant::now();
    let uris = |o: Vec<u16>| -> Vec<String> {
        o.iter().map(|&i| set.get(i).unwrap().uri.clone()).collect()
    };
    let mut sel = Selector::new(0);
    let o = pick(
        &mut sel,
        set,
        Algorithm::Priority,
        &SelectKey::default(),
        now,
    );
    assert_eq!(
        uris(o),
        ["sip:high", "sip:mid", "sip:mid2", "sip:low", "sip:neg"]
    );
    set.dests()[0].stats.set_state(DestState::Disabled);
    set.dests()[3].stats.set_state(DestState::Probing);
    let o = pick(
        &mut sel,
        set,
        Algorithm::Priority,
        &SelectKey::default(),
        now,
    );
    assert_eq!(uris(o), ["sip:mid", "sip:mid2", "sip:neg"]);
}

#[test]
fn latency_prefers_the_fastest_and_shares_near_ties() {
    let t = n_dests(4, |_| String::new());
    let set = t.set(1).unwrap();
    let now = Instant::now();
    let d = set.dests();
    for (i, ms) in [40u64, 5, 90, 20].iter().enumerate() {
        d[i].stats.record_latency(Duration::from_millis(*ms));
    }
    let mut sel = Selector::new(0);
    let key = SelectKey::default();
    assert_eq!(
        pick(&mut sel, set, Algorithm::Latency, &key, now),
        vec![1, 3, 0, 2]
    );
    d[1].stats.set_state(DestState::Disabled);
    assert_eq!(
        pick(&mut sel, set, Algorithm::Latency, &key, now),
        vec![3, 0, 2]
    );
    d[1].stats.set_state(DestState::Active);
    // 5.0 ms and 5.5 ms are a tie: both get traffic.
    // The EWMA of dest 3 converges from 20 ms to 5.5 ms.
    for _ in 0..40 {
        d[3].stats.record_latency(Duration::from_micros(5500));
    }
    assert!(d[3].stats.latency_us().unwrap() < 6000);
    let c = counts(&mut sel, set, Algorithm::Latency, 100, now);
    assert_eq!((c[0], c[2]), (0, 0), "{c:?}");
    assert!(c[1] >= 40 && c[3] >= 40, "{c:?}");
    // Unmeasured destinations are tried first, so they get measured.
    let t2 = n_dests(2, |_| String::new());
    let s2 = t2.set(1).unwrap();
    s2.dests()[0].stats.record_latency(Duration::from_millis(1));
    assert_eq!(pick(&mut sel, s2, Algorithm::Latency, &key, now)[0], 1);
}

#[test]
fn hold_down_expiry_brings_destinations_back_for_every_algorithm() {
    let t0 = Instant::now();
    let t = n_dests(3, |_| "weight=33;rweight=10".to_string());
    let set = t.set(1).unwrap();
    let policy = HealthPolicy::default();
    let d = &set.dests()[0];
    for _ in 0..policy.failure_threshold {
        d.stats.record_failure(t0, &policy);
    }
    let during = t0 + Duration::from_secs(1);
    let after = t0 + policy.hold_down;
    for alg in Algorithm::ALL {
        let mut sel = Selector::new(0);
        for k in 0..30 {
            let cid = format!("k{k}");
            let key = key_of(cid.as_bytes(), b"sip:a@b");
            assert!(
                !pick(&mut sel, set, alg, &key, during).contains(&0),
                "{alg}"
            );
        }
        let mut seen = false;
        for k in 0..30 {
            let cid = format!("k{k}");
            let key = key_of(cid.as_bytes(), b"sip:a@b");
            seen |= pick(&mut sel, set, alg, &key, after).contains(&0);
        }
        assert!(seen, "{alg}");
    }
}

#[test]
fn limit_caps_the_candidate_list() {
    let t = n_dests(40, |_| String::new());
    let set = t.set(1).unwrap();
    let now = Instant::now();
    let key = key_of(b"abc", b"sip:x@y");
    for alg in Algorithm::ALL {
        assert_eq!(
            pick(&mut Selector::new(0), set, alg, &key, now).len(),
            16,
            "{alg}"
        );
        let full = pick(&mut Selector::new(0).with_limit(1000), set, alg, &key, now);
        assert_eq!(full.len(), 40, "{alg}");
        let mut sorted = full.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 40, "{alg}: no duplicates");
        let one = pick(&mut Selector::new(0).with_limit(0), set, alg, &key, now);
        assert_eq!(one.len(), 1, "{alg}: limit 0 acts as 1");
    }
    // Top-k and full ranking agree for the ranked algorithms.
    for alg in [Algorithm::Rendezvous, Algorithm::Latency] {
        let full = pick(&mut Selector::new(0).with_limit(1000), set, alg, &key, now);
        let top = pick(&mut Selector::new(0).with_limit(5), set, alg, &key, now);
        assert_eq!(&full[..5], &top[..], "{alg}");
    }
}

#[test]
fn selected_counter_counts_first_choices() {
    let t = n_dests(2, |_| String::new());
    let set = t.set(1).unwrap();
    counts(
        &mut Selector::new(0),
        set,
        Algorithm::RoundRobin,
        10,
        Instant::now(),
    );
    let total: u64 = set.dests().iter().map(|d| d.stats.selected()).sum();
    assert_eq!(total, 10);
}
