use super::super::header::Via;
use super::super::parse::parse;
use super::*;

const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKz\r\n\
Via: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bKb\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
Route: <sip:p3.example.com;lr>\r\n\
Max-Forwards: 10\r\n\
From: Alice <sip:alice@example.com>;tag=f1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: abc@10.0.0.1\r\n\
CSeq: 7 INVITE\r\n\
Content-Length: 3\r\n\
\r\n\
xyz";

fn edits() -> RequestEdits<'static> {
    RequestEdits {
        via: NewVia {
            host: b"192.0.2.1",
            port: 5062,
            tcp: false,
            tls: false,
            branch: b"z9hG4bKnew",
        },
        request_uri: None,
        pop_routes: 0,
        drop_last_route: false,
        push_route: None,
        record_route: &[],
        received: None,
        body: None,
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

#[test]
fn rewrite_request_replaces_the_contact() {
    let raw =
        b"INVITE sip:6001@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
            Contact: \"A\" <sip:a@192.168.1.2:5060;ob>;expires=60\r\nContent-Length: 0\r\n\r\n";
    let msg = crate::sip::parse(raw).unwrap();
    let mut out = Vec::new();
    let rw = Rewrite {
        contact: Some(b"sip:a@203.0.113.5:4000;ob"),
        consumed_realm: None,
    };
    rewrite_request(&msg, &rw, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "INVITE sip:6001@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             Contact: \"A\" <sip:a@203.0.113.5:4000;ob>;expires=60\r\nContent-Length: 0\r\n\r\n"
    );
    let mut same = Vec::new();
    rewrite_request(&msg, &Rewrite::default(), &mut same);
    assert_eq!(same, raw.to_vec());
}

#[test]
fn rewrite_request_consumes_only_our_credentials() {
    let raw = b"INVITE sip:6001@example.com SIP/2.0\r\n\
            Proxy-Authorization: Digest username=\"6002\", realm=\"other.net\", nonce=\"1\"\r\n\
            Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
            Proxy-Authorization: Digest username=\"6002\", realm=\"Example.COM\",\r\n nonce=\"2\"\r\n\
            Authorization: Digest username=\"6002\", realm=\"example.com\", nonce=\"3\"\r\n\
            Contact: <sip:6002@192.168.1.2>\r\nContent-Length: 0\r\n\r\n";
    let msg = crate::sip::parse(raw).unwrap();
    let mut out = Vec::new();
    let rw = Rewrite {
        contact: Some(b"sip:6002@203.0.113.5:4000"),
        consumed_realm: Some(b"example.com"),
    };
    rewrite_request(&msg, &rw, &mut out);
    // The other proxy's credentials and the UAS's Authorization stay.
    assert_eq!(
        text(&out),
        "INVITE sip:6001@example.com SIP/2.0\r\n\
             Proxy-Authorization: Digest username=\"6002\", realm=\"other.net\", nonce=\"1\"\r\n\
             Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             Authorization: Digest username=\"6002\", realm=\"example.com\", nonce=\"3\"\r\n\
             Contact: <sip:6002@203.0.113.5:4000>\r\nContent-Length: 0\r\n\r\n"
    );
    assert!(crate::sip::parse(&out).is_ok());
}

#[test]
fn forward_minimal() {
    let m = parse(INVITE).unwrap();
    let mut out = Vec::new();
    forward_request(&m, &edits(), &mut out).unwrap();
    let f = parse(&out).unwrap();
    assert_eq!(f.values(HeaderName::Via).count(), 4);
    assert_eq!(f.top_via().unwrap().branch, Some(&b"z9hG4bKnew"[..]));
    assert_eq!(f.max_forwards(), Ok(Some(9)));
    assert_eq!(f.values(HeaderName::Route).count(), 3);
    assert_eq!(f.body(), b"xyz");
    assert!(text(&out).contains("\r\nFrom: Alice <sip:alice@example.com>;tag=f1\r\n"));
    assert!(text(&out).starts_with("INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKnew;rport\r\n"));
}

/// Runs of untouched lines are copied whole; lines ending in a bare LF
/// (and folded ones) come out CRLF-terminated, as line by line did.
#[test]
fn forward_copies_runs_and_normalises_bare_lf() {
    let raw = b"INVITE sip:bob@example.com SIP/2.0\r\n\
            Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
            From: <sip:a@example.com>;tag=1\n\
            To: <sip:bob@example.com>\r\n\
            Subject: long\r\n  and folded\n\
            Call-ID: c@h\r\n\
            CSeq: 1 INVITE\r\n\
            Max-Forwards: 5\r\n\
            X-After: 1\n\
            Content-Length: 0\r\n\r\n";
    let m = parse(raw).unwrap();
    let mut out = Vec::new();
    forward_request(&m, &edits(), &mut out).unwrap();
    assert_eq!(
        text(&out),
        "INVITE sip:bob@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKnew;rport\r\n\
             Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             From: <sip:a@example.com>;tag=1\r\n\
             To: <sip:bob@example.com>\r\n\
             Subject: long\r\n  and folded\r\n\
             Call-ID: c@h\r\n\
             CSeq: 1 INVITE\r\n\
             Max-Forwards: 4\r\n\
             X-After: 1\r\n\
             Content-Length: 0\r\n\r\n"
    );
}

#[test]
fn strict_routing_drops_the_last_route_entry() {
    let m = parse(INVITE).unwrap();
    let all: Vec<&[u8]> = m.values(HeaderName::Route).collect();
    for pop in 0..all.len() {
        let mut out = Vec::new();
        let e = RequestEdits {
            pop_routes: pop,
            drop_last_route: true,
            ..edits()
        };
        forward_request(&m, &e, &mut out).unwrap();
        let f = parse(&out).unwrap();
        assert_eq!(
            f.values(HeaderName::Route).collect::<Vec<_>>(),
            all[pop..all.len() - 1].to_vec(),
            "pop {pop}"
        );
    }
}

#[test]
fn forward_with_every_edit() {
    let m = parse(INVITE).unwrap();
    let mut out = Vec::new();
    let e = RequestEdits {
        request_uri: Some(b"sip:bob@10.1.1.1:5080"),
        pop_routes: 1,
        drop_last_route: false,
        record_route: &[b"sip:192.0.2.1:5062;lr"],
        received: Some((b"203.0.113.7", 40000)),
        body: Some(b"new body"),
        ..edits()
    };
    forward_request(&m, &e, &mut out).unwrap();
    let s = text(&out);
    let f = parse(&out).unwrap();
    assert_eq!(f.request_uri(), Some(&b"sip:bob@10.1.1.1:5080"[..]));
    assert_eq!(
        f.values(HeaderName::Route).collect::<Vec<_>>(),
        vec![&b"<sip:p2.example.com;lr>"[..], b"<sip:p3.example.com;lr>"]
    );
    assert_eq!(
        f.header(HeaderName::RecordRoute),
        Some(&b"<sip:192.0.2.1:5062;lr>"[..])
    );
    assert!(s.contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;received=203.0.113.7;rport=40000, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKz\r\n"), "{s}");
    let vias: Vec<_> = f.values(HeaderName::Via).collect();
    let second = Via::parse(vias[1]).unwrap();
    assert_eq!(second.received, Some(&b"203.0.113.7"[..]));
    assert_eq!(second.rport, Some(Some(40000)));
    assert_eq!(f.body(), b"new body");
    assert_eq!(f.content_length(), Some(8));

    // Popping the whole first line, then part of the second.
    let mut out = Vec::new();
    forward_request(
        &m,
        &RequestEdits {
            pop_routes: 2,
            ..edits()
        },
        &mut out,
    )
    .unwrap();
    let f = parse(&out).unwrap();
    assert_eq!(
        f.values(HeaderName::Route).collect::<Vec<_>>(),
        vec![&b"<sip:p3.example.com;lr>"[..]]
    );
    let mut out = Vec::new();
    forward_request(
        &m,
        &RequestEdits {
            pop_routes: 3,
            ..edits()
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(parse(&out).unwrap().values(HeaderName::Route).count(), 0);
    let mut out = b"keep".to_vec();
    assert_eq!(
        forward_request(
            &m,
            &RequestEdits {
                pop_routes: 4,
                ..edits()
            },
            &mut out
        ),
        Err(BuildError::RouteUnderflow)
    );
    assert_eq!(out, b"keep");
}

#[test]
fn max_forwards_rules() {
    let zero = std::str::from_utf8(INVITE)
        .unwrap()
        .replace("Max-Forwards: 10", "Max-Forwards: 0");
    let m = parse(zero.as_bytes()).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        forward_request(&m, &edits(), &mut out),
        Err(BuildError::TooManyHops)
    );
    assert!(out.is_empty());

    let none = std::str::from_utf8(INVITE)
        .unwrap()
        .replace("Max-Forwards: 10\r\n", "");
    let m = parse(none.as_bytes()).unwrap();
    forward_request(&m, &edits(), &mut out).unwrap();
    assert_eq!(parse(&out).unwrap().max_forwards(), Ok(Some(70)));
}

#[test]
fn annotate_replaces_bare_rport_and_old_received() {
    let m = parse(b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h ; rport ; received=1.1.1.1 ;branch=z9hG4bKq\r\nl: 0\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let e = RequestEdits {
        received: Some((b"2.2.2.2", 9)),
        ..edits()
    };
    forward_request(&m, &e, &mut out).unwrap();
    assert!(
        text(&out).contains("\r\nv: SIP/2.0/UDP h;branch=z9hG4bKq;received=2.2.2.2;rport=9\r\n"),
        "{}",
        text(&out)
    );
}

#[test]
fn forward_response_pops_top_entry() {
    let resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP c;branch=z9hG4bK3\r\nTo: <sip:x@y>;tag=9\r\nContent-Length: 2\r\n\r\nok";
    let m = parse(resp).unwrap();
    let mut out = Vec::new();
    forward_response(&m, &mut out).unwrap();
    assert_eq!(
            text(&out),
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP c;branch=z9hG4bK3\r\nTo: <sip:x@y>;tag=9\r\nContent-Length: 2\r\n\r\nok"
        );
    let m2 = parse(&out).unwrap();
    let mut out2 = Vec::new();
    forward_response(&m2, &mut out2).unwrap();
    assert_eq!(parse(&out2).unwrap().values(HeaderName::Via).count(), 1);

    let mut sink = Vec::new();
    let m = parse(INVITE).unwrap();
    assert_eq!(
        forward_response(&m, &mut sink),
        Err(BuildError::NotAResponse)
    );
    let m = parse(b"SIP/2.0 200 OK\r\n\r\n").unwrap();
    assert_eq!(forward_response(&m, &mut sink), Err(BuildError::NoVia));
    assert!(sink.is_empty());
}

#[test]
fn replies() {
    let m = parse(INVITE).unwrap();
    let mut out = Vec::new();
    let extra: &[(&[u8], &[u8])] = &[(b"X-Reason", b"overload")];
    let o = ReplyOpts {
        to_tag: Some(b"t1"),
        retry_after: Some(5),
        warning: Some(b"no \"capacity\"\n"),
        extra_headers: extra,
        server: Some(b"sipvane"),
    };
    reply(&m, 503, reason_phrase(503), &o, &mut out).unwrap();
    assert_eq!(
        text(&out),
        "SIP/2.0 503 Service Unavailable\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKz\r\n\
Via: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bKb\r\n\
From: Alice <sip:alice@example.com>;tag=f1\r\n\
To: <sip:bob@example.com>;tag=t1\r\n\
Call-ID: abc@10.0.0.1\r\n\
CSeq: 7 INVITE\r\n\
Retry-After: 5\r\n\
Warning: 399 sipvane \"no \\\"capacity\\\" \"\r\n\
Server: sipvane\r\n\
X-Reason: overload\r\n\
Content-Length: 0\r\n\r\n"
    );
    parse(&out).unwrap().validate_response().unwrap();

    // 100 Trying gets no tag; a derived tag is stable.
    out.clear();
    reply(&m, 100, b"Trying", &ReplyOpts::default(), &mut out).unwrap();
    assert_eq!(parse(&out).unwrap().to().unwrap().tag, None);
    let mut a = Vec::new();
    let mut b = Vec::new();
    reply(&m, 404, b"Not Found", &ReplyOpts::default(), &mut a).unwrap();
    reply(&m, 404, b"Not Found", &ReplyOpts::default(), &mut b).unwrap();
    assert_eq!(a, b);
    let tag = parse(&a).unwrap().to().unwrap().tag.unwrap().to_vec();
    assert_eq!(tag.len(), 16);

    assert_eq!(
        reply(&m, 99, b"x", &ReplyOpts::default(), &mut out),
        Err(BuildError::BadStatusCode)
    );
    let resp = parse(b"SIP/2.0 200 OK\r\n\r\n").unwrap();
    assert_eq!(
        reply(&resp, 400, b"x", &ReplyOpts::default(), &mut out),
        Err(BuildError::NotARequest)
    );
}

#[test]
fn ack_and_cancel() {
    let m = parse(INVITE).unwrap();
    let resp = parse(b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa\r\nTo: <sip:bob@example.com>;tag=callee\r\nCSeq: 7 INVITE\r\n\r\n").unwrap();
    let mut out = Vec::new();
    ack_for(&m, &resp, &mut out).unwrap();
    assert_eq!(
        text(&out),
        "ACK sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
Route: <sip:p3.example.com;lr>\r\n\
Max-Forwards: 10\r\n\
From: Alice <sip:alice@example.com>;tag=f1\r\n\
To: <sip:bob@example.com>;tag=callee\r\n\
Call-ID: abc@10.0.0.1\r\n\
CSeq: 7 ACK\r\n\
Content-Length: 0\r\n\r\n"
    );
    parse(&out).unwrap().validate_request().unwrap();

    out.clear();
    cancel_for(&m, &mut out).unwrap();
    let c = parse(&out).unwrap();
    c.validate_request().unwrap();
    let mut out = Vec::new();
    assert_eq!(c.method(), Some(Method::Cancel));
    assert_eq!(c.cseq().unwrap().seq, 7);
    assert_eq!(c.values(HeaderName::Via).count(), 1);
    assert_eq!(c.max_forwards(), Ok(Some(70)));
    assert_eq!(
        c.header(HeaderName::To),
        Some(&b"<sip:bob@example.com>"[..])
    );

    let bye = parse(b"BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n").unwrap();
    assert_eq!(cancel_for(&bye, &mut out), Err(BuildError::NotAnInvite));
    assert_eq!(ack_for(&m, &m, &mut out), Err(BuildError::NotAResponse));
}

#[test]
fn reason_phrases() {
    assert_eq!(reason_phrase(200), b"OK");
    assert_eq!(reason_phrase(483), b"Too Many Hops");
    assert_eq!(reason_phrase(499), b"Client Error");
    assert_eq!(reason_phrase(42), b"Unknown");
}

#[test]
fn a_long_warning_is_cut_so_the_reply_parses() {
    let m = parse(INVITE).unwrap();
    let quotes = vec![b'"'; 5000];
    let opts = ReplyOpts {
        warning: Some(&quotes),
        ..ReplyOpts::default()
    };
    let mut out = Vec::new();
    reply(&m, 400, b"Bad Request", &opts, &mut out).unwrap();
    let r = parse(&out).expect("reply parses (fuzzing found HeaderTooLong)");
    let w = r.header_by_name(b"Warning").unwrap();
    assert_eq!(w.len(), "399 sipvane \"\"".len() + 2 * MAX_WARNING);
}

#[test]
fn a_pushed_route_set_goes_in_front_of_the_kept_routes() {
    let m = parse(INVITE).unwrap();
    let path = b"<sip:10.9.9.9:5070;lr>,<sip:edge2.example;lr>";
    let mut out = Vec::new();
    let e = RequestEdits {
        pop_routes: 1,
        push_route: Some(path),
        ..edits()
    };
    forward_request(&m, &e, &mut out).unwrap();
    let f = parse(&out).unwrap();
    assert_eq!(
        f.values(HeaderName::Route).collect::<Vec<_>>(),
        vec![
            &b"<sip:10.9.9.9:5070;lr>"[..],
            b"<sip:edge2.example;lr>",
            b"<sip:p2.example.com;lr>",
            b"<sip:p3.example.com;lr>"
        ],
        "{}",
        text(&out)
    );
    // Every Route popped (the request was routed to us): after the last Via.
    let mut out = Vec::new();
    let e = RequestEdits {
        pop_routes: 3,
        push_route: Some(path),
        ..edits()
    };
    forward_request(&m, &e, &mut out).unwrap();
    let s = text(&out);
    let f = parse(&out).unwrap();
    assert_eq!(f.values(HeaderName::Route).count(), 2);
    assert!(
        s.contains("Via: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bKb\r\nRoute: <sip:10.9.9.9:5070;lr>,<sip:edge2.example;lr>\r\nMax-Forwards: 9\r\n"),
        "{s}"
    );
    assert_eq!(f.body(), b"xyz");
}
