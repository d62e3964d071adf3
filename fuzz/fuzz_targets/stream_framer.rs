//! Feeds arbitrary bytes to the stream framer, once whole and once in chunks whose
//! sizes come from the input's first byte: both must deliver the same messages and
//! pings and agree on failing. Every message must carry its own length (header up
//! to CRLFCRLF plus Content-Length) and fit `max_message`. Any panic is a bug.
#![no_main]

use std::time::Instant;

use dataplane::transport::{content_length, Frame, Framer};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 2048;

fn run(chunks: &mut dyn Iterator<Item = &[u8]>) -> (Vec<Vec<u8>>, bool) {
    let now = Instant::now();
    let mut f = Framer::new(MAX);
    let mut got = Vec::new();
    for c in chunks {
        let r = f.feed(now, c, |fr| match fr {
            Frame::Message(m) => got.push(m.to_vec()),
            Frame::Ping => got.push(Vec::new()),
        });
        if r.is_err() {
            return (got, true);
        }
        assert!(f.pending() <= MAX);
    }
    (got, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, data)) = data.split_first() else { return };
    let step = usize::from(seed % 64) + 1;
    let whole = run(&mut std::iter::once(data));
    let chunked = run(&mut data.chunks(step));
    assert_eq!(whole, chunked);
    for m in whole.0.iter().filter(|m| !m.is_empty()) {
        assert!(m.len() <= MAX);
        let end = memchr_find(m).expect("a message has a header end");
        let cl = content_length(&m[..end]).expect("a delivered message has a Content-Length");
        assert_eq!(end + 4 + cl, m.len());
    }
});

fn memchr_find(m: &[u8]) -> Option<usize> {
    m.windows(4).position(|w| w == b"\r\n\r\n")
}
