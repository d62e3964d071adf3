//! Writing the messages a proxy sends: forwarded requests and responses,
//! local replies, hop-by-hop ACK and CANCEL.
//!
//! Every writer appends to a caller-provided `Vec<u8>` (the caller clears
//! and reuses it, so a warm buffer means no allocation). Header lines the
//! proxy does not edit are copied byte for byte from the received message;
//! only their line end is normalised to CRLF. On error nothing is appended.

use smallvec::SmallVec;

use super::chars::{offset_in, trim_lws_end};
use super::error::{BuildError, ParseError};
use super::header::{params, split_comma, CSeq, HeaderName, NameAddr};
use super::method::Method;
use super::parse::{Header, Message, StartLine, FORWARD_HEADROOM, MAX_HEADERS};

/// The Via a proxy pushes: `Via: SIP/2.0/UDP host:port;branch=...;rport`
/// (`SIP/2.0/TCP` when the request leaves over TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewVia<'a> {
    /// Host or IP; an IPv6 address must come with its brackets.
    pub host: &'a [u8],
    pub port: u16,
    /// The next hop is reached over TCP.
    pub tcp: bool,
    /// Full branch, including the `z9hG4bK` magic cookie.
    pub branch: &'a [u8],
}

/// What `forward_request` changes in the request it relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestEdits<'a> {
    pub via: NewVia<'a>,
    /// Replace the Request-URI.
    pub request_uri: Option<&'a [u8]>,
    /// Drop this many leading Route *entries* (they may share one line).
    pub pop_routes: usize,
    /// Drop the last Route entry too (strict routing, RFC 3261 §16.4: it
    /// became the Request-URI).
    pub drop_last_route: bool,
    /// Insert `Record-Route: <URI>` on top; the caller includes `;lr`.
    /// A value already in `<>` is written as is.
    pub record_route: Option<&'a [u8]>,
    /// Annotate the received top Via with `;received=IP;rport=PORT`
    /// (RFC 3261 §18.2.1, RFC 3581), replacing any `received`/`rport` there.
    pub received: Option<(&'a [u8], u16)>,
    /// Replace the body; Content-Length follows.
    pub body: Option<&'a [u8]>,
}

/// Options of a locally generated reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplyOpts<'a> {
    /// To-tag added when the request's To has none and the code is > 100.
    /// `None`: a tag derived deterministically from Call-ID, From-tag, CSeq
    /// and branch, so retransmissions get the same tag (stateless replies).
    pub to_tag: Option<&'a [u8]>,
    /// `Retry-After: N` (with 503 when shedding load).
    pub retry_after: Option<u32>,
    /// `Warning: 399 sipvane "text"`; quotes and backslashes are escaped,
    /// control characters replaced by spaces.
    pub warning: Option<&'a [u8]>,
    /// Additional `(name, value)` header lines, written as given.
    pub extra_headers: &'a [(&'a [u8], &'a [u8])],
    /// `Server: ...`.
    pub server: Option<&'a [u8]>,
}

const CRLF: &[u8] = b"\r\n";

/// Appends the decimal form of `n`.
fn put_num(out: &mut Vec<u8>, n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Copies a header line as received, normalising its final line end.
fn put_line(out: &mut Vec<u8>, buf: &[u8], h: &Header) {
    let (s, e) = (h.line_start as usize, h.line_end as usize);
    let content_end = if buf[e - 1] == b'\n' {
        if e >= 2 && buf[e - 2] == b'\r' {
            e - 2
        } else {
            e - 1
        }
    } else {
        e
    };
    out.extend_from_slice(&buf[s..content_end]);
    out.extend_from_slice(CRLF);
}

/// Header lines copied as received, a run of adjacent CRLF-terminated
/// lines written with one copy: forwarding copies most of a message's
/// headers untouched, and a copy per line cost ~170 instructions each.
/// Whatever is written between lines must be preceded by [`Verbatim::flush`].
struct Verbatim<'b> {
    buf: &'b [u8],
    start: usize,
    end: usize,
}

impl<'b> Verbatim<'b> {
    fn new(buf: &'b [u8]) -> Self {
        Verbatim {
            buf,
            start: 0,
            end: 0,
        }
    }

    fn line(&mut self, out: &mut Vec<u8>, h: &Header) {
        let (s, e) = (h.line_start as usize, h.line_end as usize);
        if e >= s + 2 && &self.buf[e - 2..e] == CRLF {
            if self.end > self.start && s == self.end {
                self.end = e;
            } else {
                self.flush(out);
                (self.start, self.end) = (s, e);
            }
        } else {
            // A bare LF (or no line end): normalised by `put_line`.
            self.flush(out);
            put_line(out, self.buf, h);
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.end > self.start {
            out.extend_from_slice(&self.buf[self.start..self.end]);
        }
        (self.start, self.end) = (0, 0);
    }
}

/// Offset just past the end of the header's value within `buf`.
fn value_end(buf: &[u8], h: &Header) -> usize {
    offset_in(buf, h.value).map_or(h.line_end as usize, |o| o + h.value.len())
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(CRLF);
}

fn put_content_length(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(b"Content-Length: ");
    put_num(out, n as u64);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Runs `f` and undoes whatever it appended if it fails.
fn atomically(
    out: &mut Vec<u8>,
    f: impl FnOnce(&mut Vec<u8>) -> Result<(), BuildError>,
) -> Result<(), BuildError> {
    let mark = out.len();
    let r = f(out);
    if r.is_err() {
        out.truncate(mark);
    }
    r
}

/// What [`rewrite_request`] changes in a message before the proxy keeps it
/// as the copy it forwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrite<'a> {
    /// The new URI of the first Contact (a NATed client's real address).
    pub contact: Option<&'a [u8]>,
    /// Drop the `Proxy-Authorization` lines with credentials for this realm:
    /// the proxy checked them, they are of no use downstream and would hand
    /// the next hop a response it could replay (Kamailio's
    /// `consume_credentials`).
    pub consumed_realm: Option<&'a [u8]>,
}

/// `msg` with the changes of `rw`; every other byte copied. A message
/// without a Contact keeps what it has.
pub fn rewrite_request(msg: &Message, rw: &Rewrite, out: &mut Vec<u8>) {
    let buf = msg.buf();
    let mut pos = 0;
    let contact_uri = rw
        .contact
        .and_then(|_| msg.values(HeaderName::Contact).next())
        .and_then(|v| NameAddr::parse(v).ok())
        .and_then(|na| Some((offset_in(buf, na.uri)?, na.uri.len())));
    for h in msg.headers() {
        let (start, end) = (h.line_start as usize, h.line_end as usize);
        if start < pos {
            continue;
        }
        if let (Some(new), Some((at, len))) = (rw.contact, contact_uri) {
            if (start..end).contains(&at) {
                out.extend_from_slice(&buf[pos..at]);
                out.extend_from_slice(new);
                pos = at + len;
                continue;
            }
        }
        if h.name == HeaderName::ProxyAuthorization
            && rw
                .consumed_realm
                .is_some_and(|realm| credentials_realm_is(h.value, realm))
        {
            out.extend_from_slice(&buf[pos..start]);
            pos = end;
        }
    }
    out.extend_from_slice(&buf[pos..]);
}

/// Whether a credentials value names `realm`.
fn credentials_realm_is(value: &[u8], realm: &[u8]) -> bool {
    super::auth::digest_params(value)
        .into_iter()
        .flatten()
        .any(|(k, v)| k.eq_ignore_ascii_case(b"realm") && v.eq_ignore_ascii_case(realm))
}

/// Writes the request a proxy relays (RFC 3261 §16.6): new top Via, optional
/// Record-Route on top of the existing ones, Request-URI replaced if asked,
/// leading Route entries popped, Max-Forwards decremented (or inserted as
/// 70), the received Via annotated if asked, and a correct Content-Length.
/// Every other header line is copied byte for byte.
///
/// `Err(TooManyHops)` when Max-Forwards is 0 (answer 483).
pub fn forward_request(
    msg: &Message,
    e: &RequestEdits,
    out: &mut Vec<u8>,
) -> Result<(), BuildError> {
    let StartLine::Request {
        method_raw, uri, ..
    } = *msg.start_line()
    else {
        return Err(BuildError::NotARequest);
    };
    if msg.headers().len() > MAX_HEADERS - FORWARD_HEADROOM {
        return Err(ParseError::TooManyHeaders.into());
    }
    let max_forwards = match msg.max_forwards()? {
        Some(0) => return Err(BuildError::TooManyHops),
        Some(n) => Some(n - 1),
        None => None,
    };
    let total_routes = msg.values(HeaderName::Route).count();
    let dropped = e.pop_routes + usize::from(e.drop_last_route);
    if total_routes < dropped {
        return Err(BuildError::RouteUnderflow);
    }
    // Entries [pop_routes, kept_end) stay.
    let kept_end = total_routes - usize::from(e.drop_last_route);
    let buf = msg.buf();
    atomically(out, |out| {
        out.extend_from_slice(method_raw);
        out.push(b' ');
        out.extend_from_slice(e.request_uri.unwrap_or(uri));
        out.extend_from_slice(b" SIP/2.0\r\n");

        out.extend_from_slice(if e.via.tcp {
            b"Via: SIP/2.0/TCP "
        } else {
            b"Via: SIP/2.0/UDP "
        });
        out.extend_from_slice(e.via.host);
        out.push(b':');
        put_num(out, u64::from(e.via.port));
        out.extend_from_slice(b";branch=");
        out.extend_from_slice(e.via.branch);
        out.extend_from_slice(b";rport\r\n");

        if let Some(rr) = e.record_route {
            out.extend_from_slice(b"Record-Route: ");
            if rr.first() == Some(&b'<') {
                out.extend_from_slice(rr);
            } else {
                out.push(b'<');
                out.extend_from_slice(rr);
                out.push(b'>');
            }
            out.extend_from_slice(CRLF);
        }
        if max_forwards.is_none() {
            out.extend_from_slice(b"Max-Forwards: 70\r\n");
        }

        let mut route_index = 0usize;
        let mut via_done = false;
        let mut mf_done = false;
        let mut verbatim = Verbatim::new(buf);
        for h in msg.headers() {
            match h.name {
                HeaderName::Via if !via_done => {
                    via_done = true;
                    match e.received {
                        Some((ip, port)) => {
                            verbatim.flush(out);
                            put_annotated_via(out, buf, h, ip, port)?
                        }
                        None => verbatim.line(out, h),
                    }
                }
                HeaderName::Route => {
                    let first = route_index;
                    let n = split_comma(h.value).count();
                    route_index += n;
                    if first >= e.pop_routes && first + n <= kept_end {
                        // Untouched line.
                        verbatim.line(out, h);
                        continue;
                    }
                    verbatim.flush(out);
                    // The kept entries of this line, from the first to the
                    // end of the last one, copied as written.
                    let kept: SmallVec<[&[u8]; 4]> = split_comma(h.value)
                        .enumerate()
                        .filter(|(i, _)| (e.pop_routes..kept_end).contains(&(first + i)))
                        .map(|(_, v)| v)
                        .collect();
                    if let (Some(a), Some(b)) = (kept.first(), kept.last()) {
                        let start = offset_in(buf, a).ok_or(BuildError::RouteUnderflow)?;
                        let end = offset_in(buf, b).ok_or(BuildError::RouteUnderflow)? + b.len();
                        out.extend_from_slice(b"Route: ");
                        out.extend_from_slice(&buf[start..end]);
                        out.extend_from_slice(CRLF);
                    }
                }
                HeaderName::MaxForwards => {
                    verbatim.flush(out);
                    // Only the first is meaningful; repeats are dropped.
                    if !mf_done {
                        mf_done = true;
                        out.extend_from_slice(b"Max-Forwards: ");
                        put_num(out, u64::from(max_forwards.unwrap_or(70)));
                        out.extend_from_slice(CRLF);
                    }
                }
                HeaderName::ContentLength => verbatim.flush(out),
                _ => verbatim.line(out, h),
            }
        }
        verbatim.flush(out);
        let body = e.body.unwrap_or(msg.body());
        put_content_length(out, body.len());
        out.extend_from_slice(body);
        Ok(())
    })
}

/// Writes the first Via header with its first entry annotated with
/// `;received=IP;rport=PORT`, dropping any `received`/`rport` it carried.
fn put_annotated_via(
    out: &mut Vec<u8>,
    buf: &[u8],
    h: &Header,
    ip: &[u8],
    port: u16,
) -> Result<(), BuildError> {
    let entry = split_comma(h.value).next().ok_or(ParseError::BadVia)?;
    let entry_start = offset_in(buf, entry).ok_or(ParseError::BadVia)?;
    let entry_end = entry_start + entry.len();
    // Sent-protocol and sent-by: everything before the first `;` (a sent-by,
    // even a bracketed IPv6 one, has none). The entry was validated when the
    // request was received (a proxy forwards only validated requests), so
    // it is not parsed again here: that cost ~1 300 instructions a request.
    let head_len = memchr::memchr(b';', entry).unwrap_or(entry.len());
    let via_params = trim_lws_end(&entry[head_len..]);
    out.extend_from_slice(&buf[h.line_start as usize..entry_start]);
    out.extend_from_slice(trim_lws_end(&entry[..head_len]));
    for p in params(via_params) {
        let p = p.map_err(|()| ParseError::BadVia)?;
        if p.name.eq_ignore_ascii_case(b"received") || p.name.eq_ignore_ascii_case(b"rport") {
            continue;
        }
        out.push(b';');
        out.extend_from_slice(p.name);
        if let Some(v) = p.value {
            out.push(b'=');
            out.extend_from_slice(v);
        }
    }
    out.extend_from_slice(b";received=");
    out.extend_from_slice(ip);
    out.extend_from_slice(b";rport=");
    put_num(out, u64::from(port));
    out.extend_from_slice(&buf[entry_end..value_end(buf, h)]);
    out.extend_from_slice(CRLF);
    Ok(())
}

/// Writes a response being relayed upstream: the top Via entry is removed
/// (RFC 3261 §16.7 step 3), everything else is copied, Content-Length is
/// rewritten to the body's length.
pub fn forward_response(msg: &Message, out: &mut Vec<u8>) -> Result<(), BuildError> {
    forward_response_with_body(msg, None, out)
}

/// [`forward_response`] with the body replaced by `body` when given
/// (media anchoring rewrites the SDP); Content-Length follows.
pub fn forward_response_with_body(
    msg: &Message,
    body: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<(), BuildError> {
    if msg.is_request() {
        return Err(BuildError::NotAResponse);
    }
    if msg.header_entry(HeaderName::Via).is_none() {
        return Err(BuildError::NoVia);
    }
    let buf = msg.buf();
    atomically(out, |out| {
        let (s, e) = msg.start_line_range();
        out.extend_from_slice(trim_line_end(&buf[s..e]));
        out.extend_from_slice(CRLF);
        let mut popped = false;
        let mut verbatim = Verbatim::new(buf);
        for h in msg.headers() {
            match h.name {
                HeaderName::Via if !popped => {
                    popped = true;
                    verbatim.flush(out);
                    let mut entries = split_comma(h.value);
                    entries.next();
                    if let Some(second) = entries.next() {
                        let start = offset_in(buf, second).ok_or(BuildError::NoVia)?;
                        out.extend_from_slice(b"Via: ");
                        out.extend_from_slice(&buf[start..value_end(buf, h)]);
                        out.extend_from_slice(CRLF);
                    }
                }
                HeaderName::ContentLength => verbatim.flush(out),
                _ => verbatim.line(out, h),
            }
        }
        verbatim.flush(out);
        let body = body.unwrap_or(msg.body());
        put_content_length(out, body.len());
        out.extend_from_slice(body);
        Ok(())
    })
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let [rest @ .., b'\r' | b'\n'] = l {
        l = rest;
    }
    l
}

/// FNV-1a over the fields that identify a request, for stateless To-tags.
fn derived_tag(req: &Message) -> [u8; 16] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(req.header(HeaderName::CallId).unwrap_or_default());
    eat(req.from().ok().and_then(|f| f.tag).unwrap_or_default());
    eat(req.header(HeaderName::CSeq).unwrap_or_default());
    eat(req
        .top_via()
        .ok()
        .and_then(|v| v.branch)
        .unwrap_or_default());
    let mut tag = [0u8; 16];
    for (i, t) in tag.iter_mut().enumerate() {
        *t = b"0123456789abcdef"[((h >> (60 - 4 * i)) & 0xf) as usize];
    }
    tag
}

/// Writes a local reply to `req` (RFC 3261 §8.2.6): status line, every Via
/// line in order, From, To (with a tag added when it has none and
/// `code > 100`), Call-ID, CSeq, the optional headers of `o`, and
/// `Content-Length: 0`. Headers missing from a malformed request are left
/// out, so even a 400 for it can be written; only Via is required.
pub fn reply(
    req: &Message,
    code: u16,
    reason: &[u8],
    o: &ReplyOpts,
    out: &mut Vec<u8>,
) -> Result<(), BuildError> {
    if !req.is_request() {
        return Err(BuildError::NotARequest);
    }
    if !(100..=699).contains(&code) {
        return Err(BuildError::BadStatusCode);
    }
    if req.header_entry(HeaderName::Via).is_none() {
        return Err(BuildError::NoVia);
    }
    let buf = req.buf();
    atomically(out, |out| {
        out.extend_from_slice(b"SIP/2.0 ");
        put_num(out, u64::from(code));
        out.push(b' ');
        out.extend_from_slice(reason);
        out.extend_from_slice(CRLF);
        for h in req.headers().iter().filter(|h| h.name == HeaderName::Via) {
            put_line(out, buf, h);
        }
        if let Some(h) = req.header_entry(HeaderName::From) {
            put_line(out, buf, h);
        }
        if let Some(h) = req.header_entry(HeaderName::To) {
            let needs_tag =
                code > 100 && matches!(NameAddr::parse(h.value), Ok(NameAddr { tag: None, .. }));
            if needs_tag {
                out.extend_from_slice(&buf[h.line_start as usize..value_end(buf, h)]);
                out.extend_from_slice(b";tag=");
                match o.to_tag {
                    Some(t) => out.extend_from_slice(t),
                    None => out.extend_from_slice(&derived_tag(req)),
                }
                out.extend_from_slice(CRLF);
            } else {
                put_line(out, buf, h);
            }
        }
        for name in [HeaderName::CallId, HeaderName::CSeq] {
            if let Some(h) = req.header_entry(name) {
                put_line(out, buf, h);
            }
        }
        if let Some(secs) = o.retry_after {
            out.extend_from_slice(b"Retry-After: ");
            put_num(out, u64::from(secs));
            out.extend_from_slice(CRLF);
        }
        if let Some(text) = o.warning {
            out.extend_from_slice(b"Warning: 399 sipvane \"");
            for &b in text {
                match b {
                    b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                    0..=0x1f | 0x7f => out.push(b' '),
                    _ => out.push(b),
                }
            }
            out.extend_from_slice(b"\"\r\n");
        }
        if let Some(s) = o.server {
            put_header(out, b"Server", s);
        }
        for (name, value) in o.extra_headers {
            put_header(out, name, value);
        }
        put_content_length(out, 0);
        Ok(())
    })
}

/// Parts shared by ACK and CANCEL: they reuse the INVITE's Request-URI, top
/// Via entry, Route set, From and Call-ID, with the INVITE's CSeq number.
fn invite_parts<'a>(invite: &Message<'a>) -> Result<(&'a [u8], &'a [u8], CSeq<'a>), BuildError> {
    let StartLine::Request { method, uri, .. } = *invite.start_line() else {
        return Err(BuildError::NotARequest);
    };
    if method != Method::Invite {
        return Err(BuildError::NotAnInvite);
    }
    let via = invite.header(HeaderName::Via).ok_or(BuildError::NoVia)?;
    let top = split_comma(via).next().ok_or(BuildError::NoVia)?;
    for name in [HeaderName::From, HeaderName::CallId] {
        if invite.header_entry(name).is_none() {
            return Err(ParseError::Missing(name).into());
        }
    }
    Ok((uri, top, invite.cseq()?))
}

/// An ACK or CANCEL derived from a forwarded INVITE.
struct HopRequest<'x> {
    method: &'x [u8],
    uri: &'x [u8],
    top_via: &'x [u8],
    seq: u32,
    /// The To header line to copy and the buffer it lives in.
    to: (&'x [u8], &'x Header<'x>),
    /// Max-Forwards line to copy; `None` writes 70.
    max_forwards: Option<&'x Header<'x>>,
}

fn put_hop_request(out: &mut Vec<u8>, invite: &Message, r: &HopRequest) {
    let buf = invite.buf();
    out.extend_from_slice(r.method);
    out.push(b' ');
    out.extend_from_slice(r.uri);
    out.extend_from_slice(b" SIP/2.0\r\n");
    put_header(out, b"Via", r.top_via);
    for h in invite
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::Route)
    {
        put_line(out, buf, h);
    }
    match r.max_forwards {
        Some(h) => put_line(out, buf, h),
        None => out.extend_from_slice(b"Max-Forwards: 70\r\n"),
    }
    if let Some(h) = invite.header_entry(HeaderName::From) {
        put_line(out, buf, h);
    }
    put_line(out, r.to.0, r.to.1);
    if let Some(h) = invite.header_entry(HeaderName::CallId) {
        put_line(out, buf, h);
    }
    out.extend_from_slice(b"CSeq: ");
    put_num(out, u64::from(r.seq));
    out.push(b' ');
    out.extend_from_slice(r.method);
    out.extend_from_slice(CRLF);
    put_content_length(out, 0);
}

/// Writes the hop-by-hop ACK for a non-2xx final response to an INVITE this
/// proxy forwarded (RFC 3261 §17.1.1.3): the INVITE's Request-URI, its top
/// Via only, its Route set, From, Call-ID and CSeq number; To from the
/// response (it carries the tag).
pub fn ack_for(
    forwarded_invite: &Message,
    response: &Message,
    out: &mut Vec<u8>,
) -> Result<(), BuildError> {
    let (uri, top_via, cseq) = invite_parts(forwarded_invite)?;
    if response.is_request() {
        return Err(BuildError::NotAResponse);
    }
    let to = response
        .header_entry(HeaderName::To)
        .ok_or(ParseError::Missing(HeaderName::To))?;
    atomically(out, |out| {
        let r = HopRequest {
            method: b"ACK",
            uri,
            top_via,
            seq: cseq.seq,
            to: (response.buf(), to),
            max_forwards: forwarded_invite.header_entry(HeaderName::MaxForwards),
        };
        put_hop_request(out, forwarded_invite, &r);
        Ok(())
    })
}

/// Writes a CANCEL for an INVITE this proxy forwarded (RFC 3261 §9.1):
/// same Request-URI, top Via entry, Route set, From, To, Call-ID and CSeq
/// number, method CANCEL, `Max-Forwards: 70`.
pub fn cancel_for(forwarded_invite: &Message, out: &mut Vec<u8>) -> Result<(), BuildError> {
    let (uri, top_via, cseq) = invite_parts(forwarded_invite)?;
    let to = forwarded_invite
        .header_entry(HeaderName::To)
        .ok_or(ParseError::Missing(HeaderName::To))?;
    atomically(out, |out| {
        let r = HopRequest {
            method: b"CANCEL",
            uri,
            top_via,
            seq: cseq.seq,
            to: (forwarded_invite.buf(), to),
            max_forwards: None,
        };
        put_hop_request(out, forwarded_invite, &r);
        Ok(())
    })
}

/// Standard reason phrase of a status code (RFC 3261 §21 and extensions);
/// a generic phrase of the class for unknown codes.
pub fn reason_phrase(code: u16) -> &'static [u8] {
    known_reason(code).unwrap_or(match code {
        100..=199 => b"Provisional",
        200..=299 => b"Success",
        300..=399 => b"Redirection",
        400..=499 => b"Client Error",
        500..=599 => b"Server Error",
        600..=699 => b"Global Failure",
        _ => b"Unknown",
    })
}

fn known_reason(code: u16) -> Option<&'static [u8]> {
    Some(match code {
        100 => b"Trying",
        180 => b"Ringing",
        181 => b"Call Is Being Forwarded",
        182 => b"Queued",
        183 => b"Session Progress",
        199 => b"Early Dialog Terminated",
        200 => b"OK",
        202 => b"Accepted",
        204 => b"No Notification",
        300 => b"Multiple Choices",
        301 => b"Moved Permanently",
        302 => b"Moved Temporarily",
        305 => b"Use Proxy",
        380 => b"Alternative Service",
        400 => b"Bad Request",
        401 => b"Unauthorized",
        402 => b"Payment Required",
        403 => b"Forbidden",
        404 => b"Not Found",
        405 => b"Method Not Allowed",
        406 => b"Not Acceptable",
        407 => b"Proxy Authentication Required",
        408 => b"Request Timeout",
        410 => b"Gone",
        412 => b"Conditional Request Failed",
        413 => b"Request Entity Too Large",
        414 => b"Request-URI Too Long",
        415 => b"Unsupported Media Type",
        416 => b"Unsupported URI Scheme",
        417 => b"Unknown Resource-Priority",
        420 => b"Bad Extension",
        421 => b"Extension Required",
        422 => b"Session Interval Too Small",
        423 => b"Interval Too Brief",
        428 => b"Use Identity Header",
        429 => b"Provide Referrer Identity",
        430 => b"Flow Failed",
        433 => b"Anonymity Disallowed",
        436 => b"Bad Identity-Info",
        437 => b"Unsupported Certificate",
        438 => b"Invalid Identity Header",
        439 => b"First Hop Lacks Outbound Support",
        440 => b"Max-Breadth Exceeded",
        469 => b"Bad Info Package",
        470 => b"Consent Needed",
        480 => b"Temporarily Unavailable",
        481 => b"Call/Transaction Does Not Exist",
        482 => b"Loop Detected",
        483 => b"Too Many Hops",
        484 => b"Address Incomplete",
        485 => b"Ambiguous",
        486 => b"Busy Here",
        487 => b"Request Terminated",
        488 => b"Not Acceptable Here",
        489 => b"Bad Event",
        491 => b"Request Pending",
        493 => b"Undecipherable",
        494 => b"Security Agreement Required",
        500 => b"Server Internal Error",
        501 => b"Not Implemented",
        502 => b"Bad Gateway",
        503 => b"Service Unavailable",
        504 => b"Server Time-out",
        505 => b"Version Not Supported",
        513 => b"Message Too Large",
        555 => b"Push Notification Service Not Supported",
        580 => b"Precondition Failure",
        600 => b"Busy Everywhere",
        603 => b"Decline",
        604 => b"Does Not Exist Anywhere",
        606 => b"Not Acceptable",
        607 => b"Unwanted",
        608 => b"Rejected",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
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
                branch: b"z9hG4bKnew",
            },
            request_uri: None,
            pop_routes: 0,
            drop_last_route: false,
            record_route: None,
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
            record_route: Some(b"sip:192.0.2.1:5062;lr"),
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
            text(&out)
                .contains("\r\nv: SIP/2.0/UDP h;branch=z9hG4bKq;received=2.2.2.2;rport=9\r\n"),
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

        let bye =
            parse(b"BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n").unwrap();
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
}
