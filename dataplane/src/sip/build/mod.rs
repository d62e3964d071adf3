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
/// (`SIP/2.0/TCP` or `SIP/2.0/TLS` when the request leaves over a connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewVia<'a> {
    /// Host or IP; an IPv6 address must come with its brackets.
    pub host: &'a [u8],
    pub port: u16,
    /// The next hop is reached over TCP.
    pub tcp: bool,
    /// The next hop is reached over TLS (`SIP/2.0/TLS`; wins over `tcp`).
    pub tls: bool,
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
    /// Route entries to push in front of the kept ones (a pre-loaded route
    /// set: a registered binding's Path, RFC 3327), written as one
    /// `Route:` line before the first Route line, or after the last Via
    /// when no Route is left (as Kamailio's `lookup()` places it).
    pub push_route: Option<&'a [u8]>,
    /// Insert `Record-Route: <URI>` lines on top, in this order (a double
    /// Record-Route is two); the caller includes `;lr`. A value already in
    /// `<>` is written as is.
    pub record_route: &'a [&'a [u8]],
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

/// Appends the decimal digits of `n`, zero-padded to at least `width` (1 for
/// the plain form). Shared with the overload-control Via parameters.
pub(crate) fn put_num(out: &mut impl Extend<u8>, mut n: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    while n > 0 || tmp.len() - i < width {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend(tmp[i..].iter().copied());
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
    put_num(out, n as u64, 1);
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

mod forward;
mod hop;
mod reply;

pub use forward::{
    forward_request, forward_response, forward_response_with_body, rewrite_request, Rewrite,
};
pub use hop::{ack_for, cancel_for};
pub use reply::{reason_phrase, reply, MAX_WARNING};

#[cfg(test)]
mod tests;
