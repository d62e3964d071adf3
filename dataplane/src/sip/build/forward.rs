//! Forwarded requests and responses: the received message with the
//! proxy's edits (Via, Route, Max-Forwards, Contact, credentials).

use super::*;

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
    super::super::auth::digest_params(value)
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

        out.extend_from_slice(if e.via.tls {
            b"Via: SIP/2.0/TLS "
        } else if e.via.tcp {
            b"Via: SIP/2.0/TCP "
        } else {
            b"Via: SIP/2.0/UDP "
        });
        out.extend_from_slice(e.via.host);
        out.push(b':');
        put_num(out, u64::from(e.via.port), 1);
        out.extend_from_slice(b";branch=");
        out.extend_from_slice(e.via.branch);
        out.extend_from_slice(b";rport\r\n");

        for &rr in e.record_route {
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
        let mut push = e.push_route;
        // With no Route entry left the pushed line follows the last Via.
        let push_after = if kept_end > e.pop_routes {
            None
        } else {
            msg.headers()
                .iter()
                .rposition(|h| h.name == HeaderName::Via)
        };
        for (i, h) in msg.headers().iter().enumerate() {
            if h.name == HeaderName::Route && kept_end > e.pop_routes {
                if let Some(route) = push.take() {
                    verbatim.flush(out);
                    put_header(out, b"Route", route);
                }
            }
            if push_after.is_some_and(|v| i > v) {
                if let Some(route) = push.take() {
                    verbatim.flush(out);
                    put_header(out, b"Route", route);
                }
            }
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
                        put_num(out, u64::from(max_forwards.unwrap_or(70)), 1);
                        out.extend_from_slice(CRLF);
                    }
                }
                HeaderName::ContentLength => verbatim.flush(out),
                _ => verbatim.line(out, h),
            }
        }
        verbatim.flush(out);
        if let Some(route) = push {
            // Nothing after the last Via, or no Via (a hop-by-hop copy).
            put_header(out, b"Route", route);
        }
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
    put_num(out, u64::from(port), 1);
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
