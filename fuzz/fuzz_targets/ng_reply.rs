//! Feeds arbitrary bytes to the RTPEngine ng reply decoder (cookie, bencode
//! dict, accessors) and round-trips whatever bencode decodes. A reply comes
//! from the network, so any panic or unbounded loop here is a bug.
#![no_main]

use dataplane::rtpengine::bencode::{self, Value};
use dataplane::rtpengine::ng::Reply;
use libfuzzer_sys::fuzz_target;

fn walk(v: &Value<'_>, depth: usize) {
    if depth > 64 {
        return;
    }
    let _ = (v.as_int(), v.as_bytes(), v.as_str());
    if let Some(l) = v.as_list() {
        for item in l.iter() {
            walk(&item, depth + 1);
        }
    }
    if let Some(d) = v.as_dict() {
        for (_, item) in d.iter() {
            walk(&item, depth + 1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Reply::parse(data) {
        let _ = (r.is_success(), r.error_reason(), r.warning(), r.sdp());
        let _ = (r.is_overloaded(), r.calls().map(|c| c.len()));
    }
    if let Ok(v) = bencode::decode(data) {
        walk(&v, 0);
        // What decodes re-encodes to something that decodes to the same value.
        let mut out = Vec::with_capacity(data.len());
        v.encode(&mut out);
        let again = bencode::decode(&out).expect("re-encoded bencode must decode");
        assert_eq!(again, v);
    }
});
