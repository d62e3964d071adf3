//! Feeds arbitrary bytes to a connection's PROXY protocol preamble and then the
//! stream framer, once whole and once in chunks whose sizes come from the input's
//! first byte (whose top bit also says whether a PROXY header is required, as from
//! `proxy_protocol_from`, or forbidden): both must name the same client, deliver
//! the same messages and pings and agree on failing. Every message must carry its
//! own length (header up to CRLFCRLF plus Content-Length) and fit `max_message`;
//! the preamble never holds more than `MAX_HEADER` bytes. Any panic is a bug.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use dataplane::transport::proxy_protocol::{Preamble, Rest, Step, MAX_HEADER};
use dataplane::transport::{content_length, Frame, Framer};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 2048;

/// What a connection yielded: the client the PROXY header named, the messages
/// (empty for a ping), and whether it failed.
type Outcome = (Option<SocketAddr>, Vec<Vec<u8>>, bool);

fn run(required: bool, chunks: &mut dyn Iterator<Item = &[u8]>) -> Outcome {
    let now = Instant::now();
    let mut pre = Some(Preamble::new(required));
    let mut client = None;
    let mut f = Framer::new(MAX);
    let mut got = Vec::new();
    for c in chunks {
        let owned;
        let data: &[u8] = match pre.as_mut() {
            None => c,
            Some(p) => match p.feed(c) {
                Err(_) => return (client, got, true),
                Ok(Step::Wait) => {
                    assert!(p.pending() <= MAX_HEADER);
                    continue;
                }
                Ok(Step::Done { source, rest }) => {
                    pre = None;
                    client = source;
                    match rest {
                        Rest::Data(at) => &c[at..],
                        Rest::Buffered(b) => {
                            owned = b;
                            &owned
                        }
                    }
                }
            },
        };
        let r = f.feed(now, data, |fr| match fr {
            Frame::Message(m) => got.push(m.to_vec()),
            Frame::Ping => got.push(Vec::new()),
        });
        if r.is_err() {
            return (client, got, true);
        }
        assert!(f.pending() <= MAX);
    }
    (client, got, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, data)) = data.split_first() else { return };
    let required = seed & 0x80 != 0;
    let step = usize::from(seed % 64) + 1;
    let whole = run(required, &mut std::iter::once(data));
    let chunked = run(required, &mut data.chunks(step));
    assert_eq!(whole, chunked);
    for m in whole.1.iter().filter(|m| !m.is_empty()) {
        assert!(m.len() <= MAX);
        let end = memchr_find(m).expect("a message has a header end");
        let cl = content_length(&m[..end]).expect("a delivered message has a Content-Length");
        assert_eq!(end + 4 + cl, m.len());
    }
});

fn memchr_find(m: &[u8]) -> Option<usize> {
    m.windows(4).position(|w| w == b"\r\n\r\n")
}
