//! Local replies (RFC 3261 §8.2.6) and reason phrases.

use super::*;

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
        put_num(out, u64::from(code), 1);
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
            put_num(out, u64::from(secs), 1);
            out.extend_from_slice(CRLF);
        }
        if let Some(text) = o.warning {
            out.extend_from_slice(b"Warning: 399 sipvane \"");
            // Bounded: escaping may double it, and the reply must stay within
            // the header length limit (fuzzing: a 5 KiB text of quotes).
            for &b in text.iter().take(MAX_WARNING) {
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

/// Longest Warning text written (before escaping).
pub const MAX_WARNING: usize = 1024;
