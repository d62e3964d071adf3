//! Feeds arbitrary bytes to the SIP parser, then every accessor and every
//! writer on whatever parses. Any panic is a bug: the parser must turn all
//! malformed input into errors.
#![no_main]

use dataplane::sip::build::{
    ack_for, cancel_for, forward_request, forward_response, reason_phrase, reply, NewVia, ReplyOpts,
    RequestEdits,
};
use dataplane::sip::{param, parse, parse_ip, split_comma, HeaderName, NameAddr, Uri, Via};
use libfuzzer_sys::fuzz_target;

const LIST_NAMES: [HeaderName; 5] = [
    HeaderName::Via,
    HeaderName::Route,
    HeaderName::RecordRoute,
    HeaderName::Contact,
    HeaderName::Allow,
];

fuzz_target!(|data: &[u8]| {
    let Ok(m) = parse(data) else { return };

    // Framing invariants.
    assert!(m.body().len() <= data.len());
    for h in m.headers() {
        assert!(h.line_start < h.line_end && h.line_end as usize <= data.len());
        assert_eq!(HeaderName::from_bytes(h.raw_name), h.name);
    }
    if let Some(cl) = m.content_length() {
        assert_eq!(m.body().len(), cl as usize);
    }

    // Every accessor.
    let _ = (m.method(), m.method_raw(), m.status(), m.reason(), m.version());
    let _ = (m.request_uri(), m.content_type(), m.body_offset(), m.start_line_range());
    let _ = (m.top_via(), m.call_id(), m.cseq(), m.from(), m.to(), m.max_forwards());
    let _ = (m.validate_request(), m.validate_response());
    if let Ok(info) = m.validated_request() {
        assert_eq!(info.common.via, m.top_via().expect("validated Via"));
        assert_eq!(info.common.cseq, m.cseq().expect("validated CSeq"));
    }
    let _ = m.validated_response();
    if let Ok(u) = m.ruri() {
        let _ = (u.param(b"lr"), u.has_lr(), u.is_sips(), parse_ip(u.host));
    }
    if let Ok(v) = m.top_via() {
        let _ = (v.host_ip(), param(v.params, b"branch"));
    }
    for name in LIST_NAMES {
        for v in m.values(name) {
            let _ = Via::parse(v);
            if let Ok(na) = NameAddr::parse(v) {
                let _ = Uri::parse(na.uri);
                let _ = param(na.params, b"tag");
            }
        }
    }
    for h in m.headers() {
        let _ = split_comma(h.value).count();
        let _ = m.header(h.name);
    }
    let _ = reason_phrase(m.status().unwrap_or(0));

    // Every writer; whatever they produce must parse again.
    let mut out = Vec::with_capacity(data.len() + 512);
    let edits = RequestEdits {
        via: NewVia {
            host: b"192.0.2.1",
            port: 5060,
            tcp: false,
            tls: false,
            branch: b"z9hG4bKfuzz",
        },
        request_uri: None,
        pop_routes: m.values(HeaderName::Route).count().min(2),
        drop_last_route: false,
        push_route: None,
        record_route: &[b"sip:192.0.2.1;lr"],
        received: Some((b"198.51.100.7", 5070)),
        body: None,
    };
    if forward_request(&m, &edits, &mut out).is_ok() {
        let f = parse(&out).expect("forwarded request must parse");
        assert_eq!(f.body(), m.body());
    }
    out.clear();
    if forward_response(&m, &mut out).is_ok() {
        parse(&out).expect("forwarded response must parse");
    }
    out.clear();
    let extra: &[(&[u8], &[u8])] = &[(b"X-Fuzz", b"1")];
    let opts = ReplyOpts {
        to_tag: None,
        retry_after: Some(1),
        warning: Some(m.body()),
        extra_headers: extra,
        server: Some(b"sipvane"),
    };
    if reply(&m, 400, b"Bad Request", &opts, &mut out).is_ok() {
        parse(&out).expect("reply must parse");
    }
    out.clear();
    if cancel_for(&m, &mut out).is_ok() {
        parse(&out).expect("CANCEL must parse");
    }
    out.clear();
    let _ = ack_for(&m, &m, &mut out);
});
