//! Consistent hashing (`rendezvous`, a Maglev table): taking one of N
//! destinations out of service remaps only the keys it owned (~1/N); removing
//! it from the list remaps those and under 1 % of the others; mod-N hashing
//! remaps most keys.

use std::net::SocketAddr;
use std::time::Instant;

use dataplane::dispatch::{parse_list, Algorithm, DestState, SelectKey, Selector, Table};
use proptest::prelude::*;
use smallvec::SmallVec;

fn build(uris: &[String], attrs: impl Fn(usize) -> String) -> Table {
    let text: String = uris
        .iter()
        .enumerate()
        .map(|(i, u)| format!("1 {u} 0 0 {}\n", attrs(i)))
        .collect();
    let mut resolve =
        |_: &str| -> Result<SocketAddr, String> { Ok(SocketAddr::from(([127, 0, 0, 1], 5060))) };
    Table::build(&parse_list(&text).unwrap(), Instant::now(), &mut resolve).unwrap()
}

fn uris(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("sip:media{i}.example.net:5060"))
        .collect()
}

/// URI each key goes to.
fn owners(t: &Table, alg: Algorithm, keys: &[String]) -> Vec<String> {
    let set = t.set(1).unwrap();
    let mut sel = Selector::new(0);
    let mut out = SmallVec::new();
    keys.iter()
        .map(|k| {
            let key = SelectKey {
                call_id: k.as_bytes(),
                from_uri: k.as_bytes(),
                ..SelectKey::default()
            };
            sel.select(set, alg, &key, Instant::now(), &mut out);
            set.get(out[0]).unwrap().uri.clone()
        })
        .collect()
}

fn weighted_attrs(weighted: bool) -> impl Fn(usize) -> String {
    move |i: usize| {
        if weighted {
            format!("rweight={}", 1 + (i * 37) % 100)
        } else {
            String::new()
        }
    }
}

/// Out of service (the table stays): exactly the keys of `removed` move.
fn check_out_of_service(n: usize, removed: usize, keys: &[String], weighted: bool, alg: Algorithm) {
    let all = uris(n);
    let t = build(&all, weighted_attrs(weighted));
    let before = owners(&t, alg, keys);
    t.set(1).unwrap().dests()[removed]
        .stats
        .set_state(DestState::Probing);
    let after = owners(&t, alg, keys);
    for (k, (b, a)) in keys.iter().zip(before.iter().zip(&after)) {
        if *b == all[removed] {
            assert_ne!(a, b, "key {k} still on the destination out of service");
        } else {
            assert_eq!(
                a, b,
                "key {k} moved although its destination stayed (n={n}, removed={removed})"
            );
        }
    }
}

/// Removed from the list (a rebuilt table): the keys of `removed` move, and
/// the share of the others' keys that move; the rebuilt table agrees with
/// the old one with `removed` out of service except for that share.
fn removal_disruption(
    n: usize,
    removed: usize,
    keys: &[String],
    weighted: bool,
    alg: Algorithm,
) -> f64 {
    let all = uris(n);
    let attrs = weighted_attrs(weighted);
    let before_t = build(&all, &attrs);
    let before = owners(&before_t, alg, keys);
    let kept: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != removed)
        .map(|(_, u)| u.clone())
        .collect();
    let after_t = build(&kept, |j| attrs(if j < removed { j } else { j + 1 }));
    let after = owners(&after_t, alg, keys);
    let (mut others, mut moved) = (0usize, 0usize);
    for (k, (b, a)) in keys.iter().zip(before.iter().zip(&after)) {
        if *b == all[removed] {
            assert_ne!(a, b, "key {k} still on the removed destination");
        } else {
            others += 1;
            moved += usize::from(a != b);
        }
    }
    moved as f64 / others.max(1) as f64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn a_destination_out_of_service_moves_only_its_keys(
        n in 2usize..50,
        removed_seed in any::<usize>(),
        keys in prop::collection::vec("[a-zA-Z0-9@.-]{1,40}", 1..80),
        weighted in any::<bool>(),
        from in any::<bool>(),
    ) {
        let alg = if from { Algorithm::RendezvousFrom } else { Algorithm::Rendezvous };
        check_out_of_service(n, removed_seed % n, &keys, weighted, alg);
    }
}

#[test]
fn removing_one_destination_moves_its_keys_and_almost_no_others() {
    let keys: Vec<String> = (0..20_000)
        .map(|i| format!("{i:08x}-call@10.1.2.3"))
        .collect();
    for (n, weighted) in [
        (2, false),
        (3, true),
        (10, false),
        (49, true),
        (2000, false),
    ] {
        for removed in [0, n / 2, n - 1] {
            let f = removal_disruption(n, removed, &keys, weighted, Algorithm::Rendezvous);
            assert!(
                f < 0.01,
                "n={n} weighted={weighted} removed={removed}: {f} of the others moved"
            );
        }
    }
}

#[test]
fn weights_becoming_equal_after_a_removal_keep_keys() {
    // [50, 50, 100] minus the 100 leaves equal weights; the keys of the two
    // that stay must (almost all) not move.
    let keys: Vec<String> = (0..5000).map(|i| format!("k{i}")).collect();
    let all = uris(3);
    let w = [50, 50, 100];
    let b = owners(
        &build(&all, |i| format!("weight={}", w[i])),
        Algorithm::Rendezvous,
        &keys,
    );
    let a = owners(
        &build(&all[..2], |i| format!("weight={}", w[i])),
        Algorithm::Rendezvous,
        &keys,
    );
    let (mut moved_back, mut moved_other) = (0, 0);
    for (x, y) in b.iter().zip(&a) {
        if *x == all[2] {
            moved_back += 1;
        } else if x != y {
            moved_other += 1;
        }
    }
    assert!(moved_back > 2000, "{moved_back}");
    assert!(moved_other < 25, "{moved_other} of ~2500 kept keys moved");
}

#[test]
fn about_one_nth_of_the_keys_move() {
    let keys: Vec<String> = (0..20_000)
        .map(|i| format!("{i:08x}-call@10.1.2.3"))
        .collect();
    let n = 10;
    let all = uris(n);
    let kept: Vec<String> = all.iter().filter(|u| **u != all[4]).cloned().collect();
    let moved = |alg| {
        let b = owners(&build(&all, |_| String::new()), alg, &keys);
        let a = owners(&build(&kept, |_| String::new()), alg, &keys);
        b.iter().zip(&a).filter(|(x, y)| x != y).count() as f64 / keys.len() as f64
    };
    let hrw = moved(Algorithm::Rendezvous);
    assert!((0.08..0.12).contains(&hrw), "rendezvous moved {hrw}");
    // Kamailio's mod-N hash remaps far more.
    let modn = moved(Algorithm::HashCallId);
    assert!(modn > 0.5, "mod-N moved {modn}");
}

#[test]
fn shares_are_even_or_follow_weights() {
    let keys: Vec<String> = (0..20_000).map(|i| format!("key-{i}")).collect();
    let share = |t: &Table| {
        let o = owners(t, Algorithm::Rendezvous, &keys);
        let set = t.set(1).unwrap();
        set.dests()
            .iter()
            .map(|d| o.iter().filter(|u| **u == d.uri).count() as f64 / keys.len() as f64)
            .collect::<Vec<f64>>()
    };
    let even = share(&build(&uris(4), |_| String::new()));
    for s in &even {
        assert!((s - 0.25).abs() < 0.02, "{even:?}");
    }
    let weighted = share(&build(&uris(3), |i| format!("weight={}", [20, 30, 50][i])));
    for (s, w) in weighted.iter().zip([0.2, 0.3, 0.5]) {
        assert!((s - w).abs() < 0.02, "{weighted:?}");
    }
}

#[test]
fn failover_order_is_the_next_best_score() {
    // The second candidate is where the key goes when the first disappears.
    let all = uris(8);
    let t = build(&all, |_| String::new());
    let set = t.set(1).unwrap();
    let mut sel = Selector::new(0);
    let mut out = SmallVec::new();
    for k in 0..200 {
        let cid = format!("c{k}");
        let key = SelectKey {
            call_id: cid.as_bytes(),
            ..SelectKey::default()
        };
        sel.select(set, Algorithm::Rendezvous, &key, Instant::now(), &mut out);
        assert_eq!(out.len(), 8);
        let first = out[0];
        let second = out[1];
        set.dests()[usize::from(first)]
            .stats
            .set_state(DestState::Disabled);
        sel.select(set, Algorithm::Rendezvous, &key, Instant::now(), &mut out);
        assert_eq!(out[0], second);
        set.dests()[usize::from(first)]
            .stats
            .set_state(DestState::Active);
    }
}
