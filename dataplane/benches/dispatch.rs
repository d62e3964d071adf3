//! `Selector::select` cost by set size and algorithm.

use std::net::SocketAddr;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use dataplane::dispatch::{parse_list, Algorithm, SelectKey, Selector, Table};
use smallvec::SmallVec;

fn table(n: usize) -> Table {
    let text: String = (0..n)
        .map(|i| {
            format!(
                "1 sip:10.{}.{}.{}:5060 0 0 weight={}\n",
                i / 65536,
                (i / 256) % 256,
                i % 256,
                if i < 100 { 1 } else { 0 }
            )
        })
        .collect();
    let mut resolve =
        |_: &str| -> Result<SocketAddr, String> { Ok(SocketAddr::from(([127, 0, 0, 1], 5060))) };
    Table::build(&parse_list(&text).unwrap(), Instant::now(), &mut resolve).unwrap()
}

fn select(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch_select");
    let call_ids: Vec<String> = (0..1024)
        .map(|i| format!("{i:x}-3c26700b7e1e@192.0.2.4"))
        .collect();
    let now = Instant::now();
    for n in [2usize, 20, 2000] {
        let t = table(n);
        let set = t.set(1).unwrap();
        for alg in [
            Algorithm::HashCallId,
            Algorithm::RoundRobin,
            Algorithm::Weight,
            Algorithm::Rendezvous,
        ] {
            let mut sel = Selector::new(0);
            let mut out: SmallVec<[u16; 16]> = SmallVec::new();
            let mut k = 0usize;
            g.bench_with_input(BenchmarkId::new(alg.name(), n), &n, |b, _| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    let key = SelectKey {
                        call_id: call_ids[k].as_bytes(),
                        from_uri: b"sip:alice@example.com",
                        ..SelectKey::default()
                    };
                    sel.select(set, alg, &key, now, &mut out);
                    black_box(out.first().copied())
                })
            });
        }
    }
    g.finish();
}

/// Building a table (on the control thread, at every publish): the Maglev
/// tables of consistent hashing dominate for big sets.
fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch_build");
    g.sample_size(10);
    for n in [2usize, 2000] {
        g.bench_with_input(BenchmarkId::new("table", n), &n, |b, &n| {
            b.iter(|| black_box(table(n)))
        });
    }
    g.finish();
}

criterion_group!(benches, select, build);
criterion_main!(benches);
