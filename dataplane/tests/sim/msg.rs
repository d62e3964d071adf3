//! What the simulated peers read from and write into SIP messages.

use dataplane::sip::{build, parse, HeaderName, Message};

/// A header value, trimmed, as text.
pub fn header(m: &Message<'_>, name: HeaderName) -> Option<String> {
    m.header(name)
        .map(|v| String::from_utf8_lossy(v).trim().to_owned())
}

pub fn call_id(m: &Message<'_>) -> String {
    String::from_utf8_lossy(m.call_id().unwrap_or(b"")).into_owned()
}

pub fn branch(m: &Message<'_>) -> String {
    m.top_via()
        .ok()
        .and_then(|v| v.branch)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

pub fn to_tag(m: &Message<'_>) -> Option<String> {
    m.to()
        .ok()
        .and_then(|t| t.tag)
        .map(|t| String::from_utf8_lossy(t).into_owned())
}

pub fn from_tag(m: &Message<'_>) -> Option<String> {
    m.from()
        .ok()
        .and_then(|t| t.tag)
        .map(|t| String::from_utf8_lossy(t).into_owned())
}

pub fn cseq(m: &Message<'_>) -> (u32, String) {
    m.cseq()
        .map(|c| (c.seq, String::from_utf8_lossy(c.method_raw).into_owned()))
        .unwrap_or((0, String::new()))
}

/// The URI inside `<...>` of a name-addr (or the value itself).
pub fn uri_of(v: &str) -> String {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => v[a + 1..b].to_owned(),
        _ => v.split(';').next().unwrap_or(v).trim().to_owned(),
    }
}

/// Every Record-Route entry, in order, as `<uri>` strings.
pub fn record_routes(m: &Message<'_>) -> Vec<String> {
    m.values(HeaderName::RecordRoute)
        .map(|v| format!("<{}>", uri_of(&String::from_utf8_lossy(v))))
        .collect()
}

/// A response to `req` (Via, From, To, Call-ID, CSeq copied), with `to_tag`
/// added when the request's To has none, and `extra` header lines.
pub fn reply(req: &Message<'_>, code: u16, to_tag: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let opts = build::ReplyOpts {
        to_tag: Some(to_tag.as_bytes()),
        extra_headers: extra,
        ..build::ReplyOpts::default()
    };
    build::reply(req, code, build::reason_phrase(code), &opts, &mut out).expect("reply builds");
    out
}

/// The hop-by-hop ACK of a non-2xx final (same branch as the INVITE).
pub fn ack_for(invite: &[u8], resp: &Message<'_>) -> Vec<u8> {
    let inv = parse(invite).expect("own INVITE parses");
    let mut out = Vec::new();
    build::ack_for(&inv, resp, &mut out).expect("ACK builds");
    out
}

pub fn cancel_for(invite: &[u8]) -> Vec<u8> {
    let inv = parse(invite).expect("own INVITE parses");
    let mut out = Vec::new();
    build::cancel_for(&inv, &mut out).expect("CANCEL builds");
    out
}

/// An in-dialog request.
#[allow(clippy::too_many_arguments)]
pub fn in_dialog(
    method: &str,
    target: &str,
    routes: &[String],
    me: std::net::SocketAddr,
    branch: &str,
    from: (&str, &str),
    to: (&str, &str),
    call_id: &str,
    cseq: u32,
) -> Vec<u8> {
    let mut m = format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch}\r\nMax-Forwards: 70\r\n"
    );
    for r in routes {
        m.push_str(&format!("Route: {r}\r\n"));
    }
    m.push_str(&format!(
        "From: <{}>;tag={}\r\nTo: <{}>;tag={}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:peer@{me}>\r\nContent-Length: 0\r\n\r\n",
        from.0, from.1, to.0, to.1
    ));
    m.into_bytes()
}

/// The address of a `sip:host:port` URI (brackets and parameters ignored).
pub fn uri_addr(uri: &str) -> std::net::SocketAddr {
    let u = uri_of(uri);
    let hostport = u
        .trim_start_matches("sip:")
        .rsplit('@')
        .next()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("");
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5060")
    };
    hostport.parse().expect("sim URIs are IP:port")
}

/// Where a response to `req` goes: its top Via's sent-by (RFC 3261 §18.2.2).
pub fn via_addr(req: &Message<'_>) -> std::net::SocketAddr {
    let v = req.top_via().expect("requests here carry a Via");
    let host = String::from_utf8_lossy(v.received.unwrap_or(v.host)).into_owned();
    let port = match v.rport {
        Some(Some(p)) => p,
        _ => v.port.unwrap_or(5060),
    };
    format!("{host}:{port}")
        .parse()
        .expect("sim Vias are IP:port")
}
