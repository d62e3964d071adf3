//! Once warm, a call through the proxy core (INVITE/SDP, 200/SDP, ACK, BYE)
//! allocates nothing, anchored (offer → INVITE, answer → 200, delete) or
//! not. A counting global allocator tallies only what happens inside the
//! core's calls.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::dispatch::{parse_list, shared, Table};
use dataplane::proxy::media::{MediaConfig, MediaShared, SOCK_MEDIA};
use dataplane::proxy::{ProxyConfig, ProxyStats, Worker, SOCK_PRIVATE, SOCK_PUBLIC};
use dataplane::rtpengine::ng::split_cookie;
use dataplane::sip::build::{self, ReplyOpts};
use dataplane::sip::parse;
use dataplane::worker::{Core, Outbox, SocketId};

const CALLER: &str = "127.0.0.1:40000";
const DEST: &str = "127.0.0.1:5070";
const ENGINE: &str = "127.0.0.1:22222";
const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\n";
const ENGINE_SDP: &str = "v=0\r\no=- 1 1 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The core plus an allocation tally of its calls only.
struct Harness {
    w: Worker,
    out: Outbox,
    allocs: u64,
    now: Instant,
}

impl Harness {
    fn feed(
        &mut self,
        socket: SocketId,
        src: &str,
        data: &[u8],
    ) -> Vec<(SocketId, SocketAddr, Vec<u8>)> {
        self.out.clear();
        let before = common::allocs();
        self.w
            .on_datagram(self.now, socket, addr(src), data, &mut self.out);
        self.allocs += common::allocs() - before;
        self.out
            .iter()
            .map(|(s, d, b)| (s, d, b.to_vec()))
            .collect()
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        if self.w.next_deadline().is_some_and(|d| d <= self.now) {
            self.out.clear();
            let before = common::allocs();
            self.w.on_timer(self.now, &mut self.out);
            self.allocs += common::allocs() - before;
        }
    }
}

fn ng_reply(req: &[u8], sdp: Option<&str>) -> Vec<u8> {
    let (cookie, _) = split_cookie(req).unwrap();
    let mut v = cookie.to_vec();
    v.extend_from_slice(b" d");
    if let Some(sdp) = sdp {
        v.extend_from_slice(format!("3:sdp{}:{sdp}", sdp.len()).as_bytes());
    }
    v.extend_from_slice(b"6:result2:oke");
    v
}

fn one_call(h: &mut Harness, n: u32) {
    let call_id = format!("call-{n}@test");
    let invite = format!(
        "INVITE sip:100@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=f{n}\r\nTo: <sip:100@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
    let sent = h.feed(SOCK_PUBLIC, CALLER, invite.as_bytes());
    let fwd = match sent.iter().find(|(s, _, _)| *s == SOCK_MEDIA) {
        Some((_, _, offer)) => {
            let r = ng_reply(offer, Some(ENGINE_SDP));
            h.feed(SOCK_MEDIA, ENGINE, &r).remove(0).2
        }
        None => {
            sent.into_iter()
                .find(|(_, d, _)| *d == addr(DEST))
                .unwrap()
                .2
        }
    };
    let fwd_msg = parse(&fwd).unwrap();
    let mut ok = Vec::new();
    let opts = ReplyOpts {
        to_tag: Some(b"t1"),
        ..ReplyOpts::default()
    };
    build::reply(&fwd_msg, 200, b"OK", &opts, &mut ok).unwrap();
    let ok = String::from_utf8(ok).unwrap();
    let head = ok.strip_suffix("Content-Length: 0\r\n\r\n").unwrap();
    let ok = format!(
        "{head}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
    let sent = h.feed(SOCK_PRIVATE, DEST, ok.as_bytes());
    if let Some((_, _, answer)) = sent.iter().find(|(s, _, _)| *s == SOCK_MEDIA) {
        let r = ng_reply(answer, Some(ENGINE_SDP));
        h.feed(SOCK_MEDIA, ENGINE, &r);
    }
    let in_dialog = |method: &str, cseq: u32, branch: &str| {
        format!(
            "{method} sip:100@{DEST} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{branch}{n}\r\n\
             Max-Forwards: 70\r\nRoute: <sip:127.0.0.1:5061;lr>\r\nFrom: <sip:a@127.0.0.1>;tag=f{n}\r\n\
             To: <sip:100@127.0.0.1>;tag=t1\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    h.feed(SOCK_PUBLIC, CALLER, in_dialog("ACK", 1, "ack").as_bytes());
    let sent = h.feed(SOCK_PUBLIC, CALLER, in_dialog("BYE", 2, "bye").as_bytes());
    if let Some((_, _, delete)) = sent.iter().find(|(s, _, _)| *s == SOCK_MEDIA) {
        let r = ng_reply(delete, None);
        h.feed(SOCK_MEDIA, ENGINE, &r);
    }
    if let Some((_, _, bye)) = sent.iter().find(|(_, d, _)| *d == addr(DEST)) {
        let bye = parse(bye).unwrap();
        let mut r = Vec::new();
        build::reply(&bye, 200, b"OK", &ReplyOpts::default(), &mut r).unwrap();
        h.feed(SOCK_PRIVATE, DEST, &r);
    }
    h.tick(Duration::from_millis(20));
}

/// Allocations of `measured` calls after `warm` calls.
fn allocations(anchored: bool) -> u64 {
    let t0 = Instant::now();
    let defs = parse_list(&format!("1 sip:{DEST}\n")).unwrap();
    let table = Table::build(&defs, t0, &mut |_: &str| Ok(addr(DEST))).unwrap();
    let media = anchored.then(|| {
        Arc::new(MediaShared::new(
            MediaConfig {
                engines: vec![(addr(ENGINE), 1)],
                ..MediaConfig::default()
            },
            1,
            1,
        ))
    });
    let cfg = ProxyConfig {
        media,
        max_transactions: 16384,
        overload_transactions: 16384,
        max_dialogs: 4096,
        ..ProxyConfig::default()
    };
    let w = Worker::new(
        0,
        Arc::new(cfg),
        shared(table),
        Arc::new(ProxyStats::default()),
        t0,
    );
    let mut h = Harness {
        w,
        out: Outbox::new(),
        allocs: 0,
        now: t0,
    };
    // Warm: long enough for finished transactions to be reaped (Timer J/K
    // ≤ 32 s) so the tables reach their steady size.
    for n in 0..8000 {
        one_call(&mut h, n);
    }
    h.allocs = 0;
    for n in 8000..9000 {
        one_call(&mut h, n);
    }
    h.allocs
}

#[test]
fn warm_calls_allocate_nothing_anchored_or_not() {
    let plain = allocations(false);
    let anchored = allocations(true);
    assert_eq!(
        (plain, anchored),
        (0, 0),
        "allocations over 1000 warm calls (plain, anchored)"
    );
}
