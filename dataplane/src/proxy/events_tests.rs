//! What accounting needs from the call events: the tags and reason phrases of
//! the final responses, the BYE transaction's outcome, and CANCELled calls
//! told apart from failed ones. The core is driven directly, time is synthetic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::events::{CallEvent, EventSink};
use super::tests::worker;
use super::*;

const CALLER: &str = "127.0.0.1:40000";
const DEST: &str = "127.0.0.1:5070";

fn invite(call: &str) -> Vec<u8> {
    format!(
        "INVITE sip:100@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{call}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:a@127.0.0.1>;tag=f-{call}\r\n\
         To: <sip:100@127.0.0.1>\r\n\
         Call-ID: {call}@t\r\n\
         CSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn forwarded(out: &Outbox) -> String {
    let dest: SocketAddr = DEST.parse().unwrap();
    out.iter()
        .find(|(_, d, b)| *d == dest && !b.starts_with(b"SIP/2.0"))
        .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
        .expect("a request to the destination")
}

fn answer(fwd: &str, code: u16, reason: &str, to_tag: &str) -> Vec<u8> {
    let msg = parse(fwd.as_bytes()).expect("forwarded parses");
    let mut out = Vec::new();
    let opts = ReplyOpts {
        to_tag: Some(to_tag.as_bytes()),
        ..ReplyOpts::default()
    };
    build::reply(&msg, code, reason.as_bytes(), &opts, &mut out).expect("reply");
    out
}

fn events(sink: &EventSink) -> Vec<CallEvent> {
    std::iter::from_fn(|| sink.pop()).collect()
}

#[test]
fn answered_and_bye_carry_tags_codes_and_reasons() {
    let t0 = Instant::now();
    let sink = Arc::new(EventSink::new(16));
    let mut w =
        worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0).with_events(sink.clone());
    let caller: SocketAddr = CALLER.parse().unwrap();
    let dest: SocketAddr = DEST.parse().unwrap();
    let mut out = Outbox::new();
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("c1"), &mut out);
    let fwd = forwarded(&out);
    out.clear();
    let ok = answer(&fwd, 200, "Fine Thanks", "callee-1");
    w.on_datagram(t0, SOCK_PRIVATE, dest, &ok, &mut out);
    let bye = format!(
        "BYE sip:100@{DEST} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-bye1\r\n\
         Route: <sip:127.0.0.1:5061;lr>\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:a@127.0.0.1>;tag=f-c1\r\n\
         To: <sip:100@127.0.0.1>;tag=callee-1\r\n\
         Call-ID: c1@t\r\n\
         CSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let t1 = t0 + Duration::from_secs(2);
    out.clear();
    w.on_datagram(t1, SOCK_PRIVATE, caller, bye.as_bytes(), &mut out);
    let fwd_bye = forwarded(&out);
    out.clear();
    let bye_ok = answer(&fwd_bye, 200, "OK", "callee-1");
    w.on_datagram(t1, SOCK_PRIVATE, dest, &bye_ok, &mut out);
    // The callee's retransmission of the BYE's 200 is absorbed: one event.
    w.on_datagram(t1, SOCK_PRIVATE, dest, &bye_ok, &mut out);

    let got = events(&sink);
    assert_eq!(got.len(), 4, "{got:?}");
    match &got[1] {
        CallEvent::Answered { call_id, reply, .. } => {
            assert_eq!(&**call_id, "c1@t");
            assert_eq!(
                (&*reply.from_tag, &*reply.to_tag, &*reply.reason),
                ("f-c1", "callee-1", "Fine Thanks")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&got[2], CallEvent::End { timeout: false, .. }));
    match &got[3] {
        CallEvent::Bye {
            at,
            call_id,
            code,
            reply,
        } => {
            assert_eq!((*at, &**call_id, *code), (t1, "c1@t", 200));
            assert_eq!(
                (&*reply.from_tag, &*reply.to_tag, &*reply.reason),
                ("f-c1", "callee-1", "OK")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn busy_cancelled_and_no_destination_are_failed_events() {
    let t0 = Instant::now();
    let sink = Arc::new(EventSink::new(16));
    let mut w =
        worker(ProxyConfig::default(), &format!("1 sip:{DEST}\n"), t0).with_events(sink.clone());
    let caller: SocketAddr = CALLER.parse().unwrap();
    let dest: SocketAddr = DEST.parse().unwrap();
    let mut out = Outbox::new();

    // Busy: the destination's 486 is relayed.
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("busy"), &mut out);
    let fwd = forwarded(&out);
    out.clear();
    w.on_datagram(
        t0,
        SOCK_PRIVATE,
        dest,
        &answer(&fwd, 486, "Busy Here", "b-tag"),
        &mut out,
    );
    let got = events(&sink);
    assert!(
        matches!(&got[..], [CallEvent::Start { .. }, CallEvent::Failed { code: 486, cancelled: false, reply, dest: Some(d), .. }]
            if &*reply.to_tag == "b-tag" && &*reply.from_tag == "f-busy" && &*reply.reason == "Busy Here" && *d == dest),
        "{got:?}"
    );

    // Cancelled: CANCEL, the destination's 487 relayed, flagged.
    out.clear();
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("cxl"), &mut out);
    let fwd = forwarded(&out);
    out.clear();
    w.on_datagram(
        t0,
        SOCK_PRIVATE,
        dest,
        &answer(&fwd, 180, "Ringing", "r-tag"),
        &mut out,
    );
    let cancel = format!(
        "CANCEL sip:100@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-cxl\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:a@127.0.0.1>;tag=f-cxl\r\n\
         To: <sip:100@127.0.0.1>\r\n\
         Call-ID: cxl@t\r\n\
         CSeq: 1 CANCEL\r\n\
         Content-Length: 0\r\n\r\n"
    );
    out.clear();
    w.on_datagram(t0, SOCK_PUBLIC, caller, cancel.as_bytes(), &mut out);
    out.clear();
    w.on_datagram(
        t0,
        SOCK_PRIVATE,
        dest,
        &answer(&fwd, 487, "Request Terminated", "r-tag"),
        &mut out,
    );
    let got = events(&sink);
    assert!(
        matches!(&got[..], [CallEvent::Start { .. }, CallEvent::Failed { code: 487, cancelled: true, reply, .. }]
            if &*reply.to_tag == "r-tag" && &*reply.reason == "Request Terminated"),
        "{got:?}"
    );
    assert_eq!(
        w.stats().snapshot().calls_failed,
        1,
        "a cancelled call is not a failed one"
    );

    // No usable destination (flag 4: disabled): sipvane's own 503 with its
    // own To-tag.
    let mut w =
        worker(ProxyConfig::default(), &format!("1 sip:{DEST} 4\n"), t0).with_events(sink.clone());
    out.clear();
    w.on_datagram(t0, SOCK_PUBLIC, caller, &invite("none"), &mut out);
    let got = events(&sink);
    assert!(
        matches!(&got[..], [CallEvent::Failed { code: 503, cancelled: false, dest: None, reply, .. }]
            if &*reply.from_tag == "f-none" && !reply.to_tag.is_empty() && &*reply.reason == "Service Unavailable"),
        "{got:?}"
    );
}
