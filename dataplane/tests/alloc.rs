//! The parser and the request writer must not touch the heap: a counting
//! global allocator proves that parsing a ~700-byte INVITE, calling every
//! accessor a proxy uses and forwarding it into a pre-reserved buffer
//! allocate nothing.

mod common;

use dataplane::sip::build::{
    forward_request, forward_response, reply, NewVia, ReplyOpts, RequestEdits,
};
use dataplane::sip::{parse, HeaderName, NameAddr, Uri, Via};

use common::allocations;

const INVITE: &[u8] = b"INVITE sip:+15551234567@gw.example.net;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-524287-1---8f1c2d3e4a5b6c7d;rport\r\n\
Max-Forwards: 69\r\n\
Record-Route: <sip:203.0.113.10;lr;ftag=as1f2e3d4c>\r\n\
Route: <sip:198.51.100.5;lr>\r\n\
Contact: <sip:alice@203.0.113.10:5060;transport=udp>\r\n\
To: <sip:+15551234567@gw.example.net;user=phone>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=as1f2e3d4c\r\n\
Call-ID: 3c2a1b7f5e9d4c8a@203.0.113.10\r\n\
CSeq: 102 INVITE\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE\r\n\
Supported: replaces, timer\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 176\r\n\
\r\n\
v=0\r\n\
o=- 1234567890 1234567890 IN IP4 203.0.113.10\r\n\
s=Example\r\n\
c=IN IP4 203.0.113.10\r\n\
t=0 0\r\n\
m=audio 10000 RTP/AVP 0 8\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=sendrecv\r\n";

#[test]
fn parse_accessors_and_writers_allocate_nothing() {
    assert!((650..800).contains(&INVITE.len()), "{}", INVITE.len());
    // Warm up anything lazily initialised by the standard library.
    let _ = parse(INVITE).unwrap();

    let (n, checksum) = allocations(|| {
        let m = parse(INVITE).unwrap();
        m.validate_request().unwrap();
        let info = m.validated_request().unwrap();
        let via = m.top_via().unwrap();
        let cseq = m.cseq().unwrap();
        let from = m.from().unwrap();
        let to = m.to().unwrap();
        let ruri = m.ruri().unwrap();
        let mut sum = via.branch.unwrap().len()
            + via.rport.map_or(0, |p| p.map_or(1, usize::from))
            + cseq.seq as usize
            + from.tag.unwrap().len()
            + to.tag.map_or(0, <[u8]>::len)
            + ruri.host.len()
            + ruri.param(b"user").map_or(0, |v| v.map_or(0, <[u8]>::len))
            + m.call_id().unwrap().len()
            + m.max_forwards().unwrap().unwrap() as usize
            + m.content_type().unwrap().len()
            + m.body().len()
            + info.common.call_id.len();
        for r in m
            .values(HeaderName::Route)
            .chain(m.values(HeaderName::RecordRoute))
        {
            let na = NameAddr::parse(r).unwrap();
            sum += usize::from(Uri::parse(na.uri).unwrap().has_lr());
        }
        for v in m.values(HeaderName::Via) {
            sum += Via::parse(v).unwrap().host.len();
        }
        sum += m.values(HeaderName::Allow).count();
        sum
    });
    assert_eq!(n, 0, "parse + accessors allocated {n} times");
    assert!(checksum > 0);

    let m = parse(INVITE).unwrap();
    let resp = parse(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKx;rport, SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-1\r\nTo: <sip:b@c>;tag=1\r\nFrom: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut out = Vec::with_capacity(4096);
    let edits = RequestEdits {
        via: NewVia {
            host: b"192.0.2.1",
            port: 5062,
            tcp: false,
            tls: false,
            branch: b"z9hG4bK-sipvane-0-12345",
        },
        request_uri: Some(b"sip:+15551234567@10.0.0.20:5060"),
        pop_routes: 1,
        drop_last_route: false,
        push_route: None,
        record_route: &[b"sip:192.0.2.1:5062;lr;w=0"],
        received: Some((b"203.0.113.99", 40000)),
        body: None,
    };
    let (n, ()) = allocations(|| {
        forward_request(&m, &edits, &mut out).unwrap();
        out.clear();
        forward_response(&resp, &mut out).unwrap();
        out.clear();
        reply(
            &m,
            503,
            b"Service Unavailable",
            &ReplyOpts {
                retry_after: Some(5),
                ..ReplyOpts::default()
            },
            &mut out,
        )
        .unwrap();
    });
    assert_eq!(n, 0, "writers allocated {n} times");
    assert_eq!(out.capacity(), 4096);

    // The counter works: a Vec that grows is seen.
    let (n, v) = allocations(|| vec![0u8; 16]);
    assert_eq!((n, v.len()), (1, 16));
}

/// HEP capture on the worker path: once warm, capturing a received and a sent
/// message (parse for the Call-ID, encode into the reused buffer, `send`) allocates
/// nothing.
#[test]
fn hep_capture_allocates_nothing_once_warm() {
    use dataplane::hep::{HepConfig, Tap};
    use dataplane::proxy::ProxyStats;
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::Arc;

    let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = Arc::new(HepConfig {
        collector: collector.local_addr().unwrap(),
        transport: dataplane::hep::Transport::Udp,
        queue_bytes: 0,
        agent_id: 1,
        password: Some("pw".into()),
        sample: 1.0,
    });
    let stats = Arc::new(ProxyStats::default());
    let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let peer: SocketAddr = "127.0.0.1:6000".parse().unwrap();
    let mut tap = Tap::new(cfg, vec![local], stats.clone()).unwrap();
    tap.received(0, peer, INVITE);
    tap.sent(0, peer, INVITE);
    let (n, ()) = allocations(|| {
        for _ in 0..50 {
            tap.received(0, peer, INVITE);
            tap.sent(0, peer, INVITE);
        }
    });
    assert_eq!(n, 0, "allocations while capturing");
    let s = stats.snapshot();
    assert_eq!((s.hep_sent, s.hep_dropped), (102, 0));
    drop(collector);
}

/// The same with a TCP collector: once connected and warm, queueing captures
/// and writing them out each turn allocates nothing (the queue keeps its
/// buffer).
#[test]
fn hep_tcp_capture_allocates_nothing_once_warm() {
    use dataplane::hep::{HepConfig, Tap, Transport};
    use dataplane::proxy::ProxyStats;
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = Arc::new(HepConfig {
        collector: listener.local_addr().unwrap(),
        transport: Transport::Tcp,
        queue_bytes: dataplane::hep::tcp::QUEUE_BYTES,
        agent_id: 1,
        password: None,
        sample: 1.0,
    });
    // The collector reads everything until the tap is dropped.
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        conn.read_to_end(&mut sink).unwrap();
        sink.len()
    });
    let stats = Arc::new(ProxyStats::default());
    let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let peer: SocketAddr = "127.0.0.1:6000".parse().unwrap();
    let mut tap = Tap::new(cfg, vec![local], stats.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.snapshot().hep_sent < 20 && Instant::now() < deadline {
        tap.received(0, peer, INVITE);
        tap.stream(peer, local, INVITE);
        tap.poll(Instant::now());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(stats.snapshot().hep_sent >= 20, "connected and sending");
    let (n, ()) = allocations(|| {
        for _ in 0..50 {
            tap.received(0, peer, INVITE);
            tap.stream(peer, local, INVITE);
            tap.poll(Instant::now());
        }
    });
    assert_eq!(n, 0, "allocations while capturing");
    drop(tap);
    let bytes = reader.join().unwrap();
    let s = stats.snapshot();
    assert_eq!(s.hep_dropped, 0);
    assert!(
        bytes > 100 * INVITE.len(),
        "{bytes} bytes reached the collector"
    );
}
