//! RFC 4475 torture messages that matter to a proxy.
//!
//! The files under `tests/torture/` are the RFC's messages byte for byte
//! (CRLF line ends, the `<hex>` and `<repeat>` notations expanded; every
//! Content-Length in them matches its body). Valid messages must parse and,
//! where a proxy should accept them, pass `validate_request`; invalid ones
//! must be rejected by `parse`, `validate_*` or the accessor concerned with a
//! clean error. Nothing may panic, and whatever is accepted must survive
//! being forwarded and answered.

use dataplane::sip::build::{
    forward_request, forward_response, reply, NewVia, ReplyOpts, RequestEdits,
};
use dataplane::sip::{parse, HeaderName, Message, Method, NameAddr, ParseError, Uri, Via};

macro_rules! case {
    ($name:literal, $expect:expr) => {
        (
            $name,
            &include_bytes!(concat!("torture/", $name, ".dat"))[..],
            $expect,
        )
    };
}

/// What sipvane does with a message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Parses and passes `validate_request` / `validate_response`.
    Valid,
    /// `parse` rejects it.
    Unframeable(ParseError),
    /// Parses, but validation rejects it.
    Invalid(ParseError),
    /// Invalid per RFC 4475, but accepted on purpose; see the comment at
    /// the entry.
    Tolerated,
}

use Expect::*;

fn cases() -> Vec<(&'static str, &'static [u8], Expect)> {
    vec![
        // §3.1.1 valid messages.
        case!("wsinv", Valid),
        case!("intmeth", Valid),
        case!("esc01", Valid),
        case!("escnull", Valid),
        case!("esc02", Valid),
        case!("lwsdisp", Valid),
        case!("longreq", Valid),
        case!("dblreq", Valid),
        case!("semiuri", Valid),
        case!("transports", Valid),
        case!("mpart01", Valid),
        case!("unreason", Valid),
        case!("noreason", Valid),
        // §3.1.2 invalid messages.
        case!("badinv01", Invalid(ParseError::BadVia)),
        case!("clerr", Unframeable(ParseError::BodyTruncated)),
        case!("ncl", Unframeable(ParseError::BadContentLength)),
        case!("scalar02", Invalid(ParseError::BadCSeq)),
        case!("scalarlg", Invalid(ParseError::BadCSeq)),
        case!("quotbal", Invalid(ParseError::BadTo)),
        case!("ltgtruri", Invalid(ParseError::BadUri)),
        case!("lwsruri", Unframeable(ParseError::BadRequestLine)),
        case!("lwsstart", Unframeable(ParseError::BadRequestLine)),
        case!("trws", Unframeable(ParseError::BadRequestLine)),
        case!("escruri", Invalid(ParseError::HeadersInRequestUri)),
        // RFC 4475 §3.1.2.12 lets an element that does not use the Date
        // header ignore a non-GMT zone; a proxy never reads Date, so it
        // forwards the request untouched.
        case!("baddate", Tolerated),
        // §3.1.2.13 allows a 400, but the bad value is in Contact, which a
        // proxy does not interpret: the request is relayed and the
        // registrar rejects it. `NameAddr::parse` of that Contact fails
        // (checked below), so a component that reads it sees the error.
        case!("regbadct", Tolerated),
        case!("badaspec", Invalid(ParseError::BadTo)),
        case!("baddn", Invalid(ParseError::BadFrom)),
        case!("badvers", Invalid(ParseError::UnsupportedVersion)),
        case!("mismatch01", Invalid(ParseError::CSeqMethodMismatch)),
        case!("mismatch02", Invalid(ParseError::CSeqMethodMismatch)),
        case!("bigcode", Unframeable(ParseError::BadStatusLine)),
        // §3.2.1: a branch that is only the magic cookie. The RFC allows a
        // 400 or falling back to RFC 2543 matching; we reject it because
        // the transaction layer keys on the branch.
        case!("badbranch", Invalid(ParseError::BadBranch)),
        // §3.3.1: To, From and Call-ID missing; a proxy answers 400.
        case!("insuf", Invalid(ParseError::Missing(HeaderName::From))),
        // §3.3.2: unknown Request-URI scheme; the proxy answers 416.
        case!("unkscm", Invalid(ParseError::UnsupportedScheme)),
    ]
}

fn validate(m: &Message) -> Result<(), ParseError> {
    if m.is_request() {
        m.validate_request()
    } else {
        m.validate_response()
    }
}

/// Every accessor a proxy may call, on any message: must never panic.
fn touch_everything(m: &Message) {
    let _ = (m.top_via(), m.call_id(), m.cseq(), m.from(), m.to());
    let _ = (m.max_forwards(), m.content_type(), m.body(), m.ruri());
    for name in [
        HeaderName::Via,
        HeaderName::Route,
        HeaderName::RecordRoute,
        HeaderName::Contact,
    ] {
        for v in m.values(name) {
            let _ = NameAddr::parse(v);
            let _ = Via::parse(v);
        }
    }
}

fn edits() -> RequestEdits<'static> {
    RequestEdits {
        via: NewVia {
            host: b"192.0.2.200",
            port: 5061,
            tcp: false,
            tls: false,
            branch: b"z9hG4bKsipvane1",
        },
        request_uri: None,
        pop_routes: 0,
        drop_last_route: false,
        push_route: None,
        record_route: &[b"sip:192.0.2.200:5061;lr"],
        received: Some((b"198.51.100.1", 5060)),
        body: None,
    }
}

#[test]
fn every_case_meets_its_expectation() {
    assert_eq!(cases().len(), 35);
    for (name, bytes, expect) in cases() {
        let parsed = parse(bytes);
        if let Unframeable(e) = expect {
            assert_eq!(parsed.err(), Some(e), "{name}");
            continue;
        }
        let m = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
        touch_everything(&m);
        match expect {
            Valid | Tolerated => assert_eq!(validate(&m), Ok(()), "{name}"),
            Invalid(e) => assert_eq!(validate(&m), Err(e), "{name}"),
            Unframeable(_) => unreachable!(),
        }
    }
}

#[test]
fn accepted_requests_forward_and_answer_cleanly() {
    for (name, bytes, expect) in cases() {
        let Ok(m) = parse(bytes) else { continue };
        let mut out = Vec::with_capacity(8192);
        if m.is_request() {
            // A 400/416/505 is always writable, whatever is wrong.
            reply(&m, 400, b"Bad Request", &ReplyOpts::default(), &mut out)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parse(&out).map(|r| r.status()), Ok(Some(400)), "{name}");
            if matches!(expect, Valid | Tolerated) {
                out.clear();
                forward_request(&m, &edits(), &mut out).unwrap_or_else(|e| panic!("{name}: {e}"));
                let f =
                    parse(&out).unwrap_or_else(|e| panic!("{name}: forwarded unparseable: {e}"));
                f.validate_request()
                    .unwrap_or_else(|e| panic!("{name}: forwarded invalid: {e}"));
                assert_eq!(
                    f.values(HeaderName::Via).count(),
                    m.values(HeaderName::Via).count() + 1,
                    "{name}"
                );
                assert_eq!(f.body(), m.body(), "{name}");
                let second = Via::parse(f.values(HeaderName::Via).nth(1).unwrap()).unwrap();
                assert_eq!(second.received, Some(&b"198.51.100.1"[..]), "{name}");
            }
        } else if expect == Valid {
            forward_response(&m, &mut out).unwrap_or_else(|e| panic!("{name}: {e}"));
            let f = parse(&out).unwrap();
            assert_eq!(
                f.values(HeaderName::Via).count() + 1,
                m.values(HeaderName::Via).count()
            );
        }
    }
}

fn msg(name: &str) -> Message<'static> {
    let (_, bytes, _) = cases().into_iter().find(|c| c.0 == name).unwrap();
    parse(bytes).unwrap()
}

#[test]
fn wsinv_fields() {
    let m = msg("wsinv");
    let u = m.ruri().unwrap();
    assert_eq!(
        (u.user, u.host),
        (Some(&b"vivekg"[..]), &b"chair-dnrc.example.com"[..])
    );
    assert_eq!(u.param(b"unknownparam"), Some(None));
    let to = m.to().unwrap();
    assert_eq!(to.uri, b"sip:vivekg@chair-dnrc.example.com");
    assert_eq!(to.tag, Some(&b"1918181833n"[..]));
    let from = m.from().unwrap();
    assert_eq!(from.display, Some(&br#"J Rosenberg \\\""#[..]));
    assert_eq!(from.uri, b"sip:jdrosen@example.com");
    assert_eq!(from.tag, Some(&b"98asjd8"[..]));
    assert_eq!(m.max_forwards(), Ok(Some(68)));
    assert_eq!(m.call_id(), Ok(&b"wsinv.ndaksdj@192.0.2.1"[..]));
    let c = m.cseq().unwrap();
    assert_eq!((c.seq, c.method), (9, Method::Invite));
    let vias: Vec<Via> = m
        .values(HeaderName::Via)
        .map(|v| Via::parse(v).unwrap())
        .collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(
        (vias[0].transport, vias[0].host),
        (&b"UDP"[..], &b"192.0.2.2"[..])
    );
    assert_eq!(vias[0].branch, Some(&b"390skdjuw"[..]));
    assert_eq!(
        (vias[1].transport, vias[1].host),
        (&b"TCP"[..], &b"spindle.example.com"[..])
    );
    assert_eq!(vias[1].branch, Some(&b"z9hG4bK9ikj8"[..]));
    assert_eq!(vias[2].host, b"192.168.255.111");
    assert_eq!(vias[2].branch, Some(&b"z9hG4bK30239"[..]));
    assert_eq!(m.header(HeaderName::Subject), Some(&b""[..]));
    assert_eq!(
        m.header_by_name(b"NewFangledHeader"),
        Some(&b"newfangled value\r\n continued newfangled value"[..])
    );
    assert_eq!(
        m.header_by_name(b"UnknownHeaderWithUnusualValue"),
        Some(&b";;,,;;,;"[..])
    );
    let routes: Vec<&[u8]> = m.values(HeaderName::Route).collect();
    assert_eq!(
        routes,
        vec![&b"<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"[..]]
    );
    let r = NameAddr::parse(routes[0]).unwrap();
    assert!(Uri::parse(r.uri).unwrap().has_lr());
    let contact = NameAddr::parse(m.header(HeaderName::Contact).unwrap()).unwrap();
    assert_eq!(contact.display, Some(&br#"Quoted string \"\""#[..]));
    assert_eq!(
        dataplane::sip::param(contact.params, b"q"),
        Some(Some(&b"0.33"[..]))
    );
    assert_eq!(
        dataplane::sip::param(contact.params, b"newparam"),
        Some(Some(&b"newvalue"[..]))
    );
    assert_eq!(m.content_length(), Some(150));
    assert!(m.body().starts_with(b"v=0\r\n") && m.body().ends_with(b"a=rtpmap:31 LPC\r\n"));
}

#[test]
fn intmeth_fields() {
    let m = msg("intmeth");
    assert_eq!(m.method(), Some(Method::Other));
    assert_eq!(
        m.method_raw(),
        Some(&b"!interesting-Method0123456789_*+`.%indeed'~"[..])
    );
    let u = m.ruri().unwrap();
    assert_eq!(
        u.user,
        Some(&b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"[..])
    );
    assert_eq!(
        u.password,
        Some(&b"&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"[..])
    );
    assert_eq!(u.host, b"example.com");
    assert_eq!(
        m.top_via().unwrap().branch,
        Some(&b"z9hG4bK-.!%66*_+`'~"[..])
    );
    assert_eq!(
        m.to().unwrap().display,
        Some(&b"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7F"[..])
    );
    let from = m.from().unwrap();
    assert_eq!(from.display, Some(&b"token1~` token2'+_ token3*%!.-"[..]));
    assert_eq!(from.tag, Some(&b"_token~1'+`*%!-."[..]));
    assert_eq!(
        m.call_id(),
        Ok(&b"intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"[..])
    );
    assert_eq!(m.cseq().unwrap().seq, 139122385);
    assert_eq!(m.max_forwards(), Ok(Some(255)));
    assert_eq!(
        m.header_by_name(b"extensionHeader-!.%*+_`'~"),
        Some(&b"\xEF\xBB\xBF\xE5\xA4\xA7\xE5\x81\x9C\xE9\x9B\xBB"[..])
    );
}

#[test]
fn escaping_cases_keep_escapes() {
    let m = msg("esc01");
    assert_eq!(
        m.ruri().unwrap().user,
        Some(&b"sips%3Auser%40example.com"[..])
    );
    assert_eq!(m.ruri().unwrap().host, b"example.net");
    assert_eq!(m.call_id(), Ok(&b"esc01.239409asdfakjkn23onasd0-3234"[..]));
    let c = NameAddr::parse(m.header(HeaderName::Contact).unwrap()).unwrap();
    let cu = Uri::parse(c.uri).unwrap();
    assert_eq!(cu.user, Some(&b"cal%6Cer"[..]));
    assert_eq!(cu.param(b"n%61me"), Some(Some(&b"v%61lue%25%34%31"[..])));

    let m = msg("escnull");
    assert_eq!(
        Uri::parse(m.to().unwrap().uri).unwrap().user,
        Some(&b"null-%00-null"[..])
    );
    assert_eq!(m.values(HeaderName::Contact).count(), 2);

    // % is not an escape in a method or a header name.
    let m = msg("esc02");
    assert_eq!(m.method(), Some(Method::Other));
    assert_eq!(m.cseq().unwrap().method_raw, b"RE%47IST%45R");
    assert_eq!(m.values(HeaderName::Contact).count(), 2);
    assert_eq!(
        m.header_by_name(b"C%6Fntact"),
        Some(&b"<sip:alias2@host2.example.com>"[..])
    );
    assert_eq!(m.to().unwrap().display, Some(&b"%Z%45"[..]));

    let m = msg("semiuri");
    let u = m.ruri().unwrap();
    assert_eq!(
        (u.user, u.host),
        (Some(&b"user;par=u%40example.net"[..]), &b"example.com"[..])
    );
}

#[test]
fn lwsdisp_longreq_dblreq_transports() {
    let m = msg("lwsdisp");
    assert_eq!(m.from().unwrap().display, Some(&b"caller"[..]));

    let m = msg("longreq");
    assert_eq!(m.values(HeaderName::Via).count(), 34);
    let to = m.to().unwrap();
    assert_eq!(Uri::parse(to.uri).unwrap().port, Some(6000));
    let from = m.from().unwrap();
    assert_eq!(from.tag.unwrap().len(), 2 + 150 + 3);
    assert_eq!(from.uri, &b"sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallername@example.net"[..]);
    let last = Via::parse(m.values(HeaderName::Via).last().unwrap()).unwrap();
    assert_eq!(last.received, Some(&b"192.0.2.5"[..]));
    assert_eq!(m.top_via().unwrap().host, b"sip33.example.com");

    // Trailing octets after Content-Length: 0 are noise (RFC 3261 §18.3).
    let m = msg("dblreq");
    assert_eq!(m.method(), Some(Method::Register));
    assert_eq!(m.body(), b"");
    let mut out = Vec::new();
    forward_request(&m, &edits(), &mut out).unwrap();
    assert!(!out.windows(6).any(|w| w == b"INVITE"));

    let m = msg("transports");
    let t: Vec<Vec<u8>> = m
        .values(HeaderName::Via)
        .map(|v| Via::parse(v).unwrap().transport.to_vec())
        .collect();
    assert_eq!(t, [&b"UDP"[..], b"SCTP", b"TLS", b"UNKNOWN", b"TCP"]);
}

#[test]
fn mpart01_body_is_framed_by_content_length() {
    let m = msg("mpart01");
    assert_eq!(m.method(), Some(Method::Message));
    assert_eq!(m.body().len(), 553);
    assert!(m.body().contains(&0));
    assert!(m.body().ends_with(b"--7a9cbec02ceef655--\r\n"));
    let v = m.top_via().unwrap();
    assert_eq!(
        (v.host, v.port, v.rport),
        (&b"127.0.0.1"[..], Some(5070), Some(None))
    );
}

#[test]
fn unusual_status_lines() {
    let m = msg("unreason");
    assert_eq!(m.status(), Some(200));
    assert!(m
        .reason()
        .unwrap()
        .starts_with(b"= 2**3 * 5**2 \xD0\xBD\xD0\xBE"));
    let m = msg("noreason");
    assert_eq!((m.status(), m.reason()), (Some(100), Some(&b""[..])));
}

#[test]
fn tolerated_cases_fail_in_the_accessor_that_reads_them() {
    let m = msg("regbadct");
    assert_eq!(
        NameAddr::parse(m.header(HeaderName::Contact).unwrap()),
        Err(ParseError::BadNameAddr)
    );
    let m = msg("badinv01");
    assert_eq!(
        NameAddr::parse(m.header(HeaderName::Contact).unwrap()),
        Err(ParseError::BadNameAddr)
    );
    let m = msg("scalar02");
    assert_eq!(m.max_forwards(), Err(ParseError::BadMaxForwards));
    let m = msg("baddate");
    assert_eq!(
        m.header_by_name(b"Date"),
        Some(&b"Fri, 01 Jan 2010 16:00:00 EST"[..])
    );
}
