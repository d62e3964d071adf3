//! `Selector::select` must not allocate once warm (per-packet hot path).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dataplane::dispatch::{parse_list, Algorithm, SelectKey, Selector, Table};
use smallvec::SmallVec;

use common::allocs;

#[test]
fn select_does_not_allocate_when_warm() {
    let text: String = (0..300)
        .map(|i| {
            format!(
                "{} sip:10.0.{}.{}:5060 0 {} weight={};rweight={};maxload=1000\n",
                1 + i % 3,
                i / 250,
                i % 250,
                i % 7,
                1 + i % 3,
                1 + i % 50
            )
        })
        .collect();
    let mut resolve =
        |_: &str| -> Result<SocketAddr, String> { Ok(SocketAddr::from(([127, 0, 0, 1], 5060))) };
    let t0 = Instant::now();
    let table = Table::build(&parse_list(&text).unwrap(), t0, &mut resolve).unwrap();
    for (i, d) in table.iter() {
        d.stats
            .record_latency(Duration::from_micros(100 + u64::from(i.dest_index) * 13));
    }
    let call_ids: Vec<String> = (0..200).map(|i| format!("{i}-abcdef@host")).collect();
    for limit in [16, 1000] {
        let mut sel = Selector::new(1).with_limit(limit);
        let mut out: SmallVec<[u16; 16]> = SmallVec::new();
        let run = |sel: &mut Selector, out: &mut SmallVec<[u16; 16]>| {
            for set in table.sets() {
                for alg in Algorithm::ALL {
                    for cid in &call_ids {
                        let key = SelectKey {
                            call_id: cid.as_bytes(),
                            from_uri: b"\"A\" <sip:alice@example.com>;tag=1",
                            to_uri: b"sip:bob@example.com",
                            ruri: b"sip:bob@example.com;user=phone",
                            auth_user: Some(b"alice"),
                        };
                        sel.select(set, alg, &key, t0, out);
                        assert!(!out.is_empty());
                    }
                }
            }
        };
        let warm_start = allocs();
        run(&mut sel, &mut out); // warm-up: cursors, scratch, spilled SmallVec
                                 // Proves the counter sees this thread's allocations at all.
        assert!(allocs() > warm_start, "warm-up should allocate cursors");
        let before = allocs();
        run(&mut sel, &mut out);
        assert_eq!(allocs() - before, 0, "limit {limit}: select allocated");
    }
}
