//! Rendezvous hashing: removing one of N destinations remaps only the keys
//! that destination owned (~1/N); mod-N hashing remaps most keys.

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

fn check_removal(n: usize, removed: usize, keys: &[String], weighted: bool, alg: Algorithm) {
    let all = uris(n);
    let attrs = |i: usize| {
        if weighted {
            format!("rweight={}", 1 + (i * 37) % 100)
        } else {
            String::new()
        }
    };
    let before_t = build(&all, attrs);
    let before = owners(&before_t, alg, keys);
    let kept: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != removed)
        .map(|(_, u)| u.clone())
        .collect();
    let after_t = build(&kept, |j| attrs(if j < removed { j } else { j + 1 }));
    let after = owners(&after_t, alg, keys);
    for (k, (b, a)) in keys.iter().zip(before.iter().zip(&after)) {
        if *b == all[removed] {
            assert_ne!(a, b, "key {k} still on the removed destination");
        } else {
            assert_eq!(
                a, b,
                "key {k} moved although its destination stayed (n={n}, removed={removed})"
            );
        }
    }
    // Taking it out of service (instead of out of the file) is the same.
    before_t.set(1).unwrap().dests()[removed]
        .stats
        .set_state(DestState::Probing);
    assert_eq!(owners(&before_t, alg, keys), after);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn removing_one_destination_moves_only_its_keys(
        n in 2usize..50,
        removed_seed in any::<usize>(),
        keys in prop::collection::vec("[a-zA-Z0-9@.-]{1,40}", 1..80),
        weighted in any::<bool>(),
        from in any::<bool>(),
    ) {
        let alg = if from { Algorithm::RendezvousFrom } else { Algorithm::Rendezvous };
        check_removal(n, removed_seed % n, &keys, weighted, alg);
    }
}

#[test]
fn weights_becoming_equal_after_a_removal_keep_keys() {
    // [50, 50, 100] minus the 100 leaves equal weights (the unweighted fast
    // path); the keys of the two that stay must not move.
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
    let mut moved_back = 0;
    for (x, y) in b.iter().zip(&a) {
        if *x == all[2] {
            moved_back += 1;
        } else {
            assert_eq!(x, y);
        }
    }
    assert!(moved_back > 2000, "{moved_back}");
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
