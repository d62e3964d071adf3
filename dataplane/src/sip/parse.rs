//! Zero-copy framing of a SIP message: start line, header lines, body.
//!
//! `parse` makes one pass over the header section with `memchr` for line
//! ends and colons, classifies each header name and records borrowed slices;
//! it allocates nothing unless a message has more than 32 headers. Header
//! values are not interpreted until an accessor asks for them.
//!
//! Line endings: CRLF as RFC 3261 requires, and bare LF too (cheap to accept,
//! and common from broken senders). A line break followed by SP or HT folds
//! the header (RFC 3261 §7.3.1); folded values keep their line breaks, which
//! the accessors treat as LWS.

use smallvec::SmallVec;

use super::chars::{is_token_str, parse_decimal, LineScanner};
use super::error::ParseError;
use super::header::{split_comma, CSeq, HeaderName, NameAddr, SplitComma, Via};
use super::method::Method;
use super::uri::Uri;

/// Most header lines a message may have.
pub const MAX_HEADERS: usize = 256;

/// Header lines a proxy may add to a request it relays (Via, Record-Route,
/// a missing Max-Forwards and a missing Content-Length): a request that
/// leaves no room for them is refused, so what sipvane sends always parses
/// again (here and at the next hop with the same limit).
pub const FORWARD_HEADROOM: usize = 4;
/// Longest header, including its continuation lines and line ends.
pub const MAX_HEADER_LEN: usize = 8192;
/// Longest start line.
pub const MAX_START_LINE_LEN: usize = 8192;
/// Largest message (a UDP datagram cannot be larger).
pub const MAX_MESSAGE_LEN: usize = 65535;
/// Inline capacity of the header list; more headers spill to the heap.
pub const INLINE_HEADERS: usize = 32;

const NONE: u16 = u16::MAX;

/// First line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `Method SP Request-URI SP SIP-Version`.
    Request {
        method: Method,
        method_raw: &'a [u8],
        uri: &'a [u8],
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`.
    Response { code: u16, reason: &'a [u8] },
}

/// One header line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: HeaderName,
    /// The name as written (`v`, `VIA`, `Via`, ...).
    pub raw_name: &'a [u8],
    /// The value with surrounding LWS trimmed; folds inside are kept.
    pub value: &'a [u8],
    /// Byte range of the whole header (first byte of the name to just past
    /// the line end of its last continuation line) within `Message::buf()`.
    pub line_start: u32,
    pub line_end: u32,
}

/// A parsed message borrowing the receive buffer.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    buf: &'a [u8],
    start: StartLine<'a>,
    version: &'a [u8],
    start_line: (u32, u32),
    headers: SmallVec<[Header<'a>; INLINE_HEADERS]>,
    /// Index of the first header of each name, `NONE` when absent.
    first: [u16; HeaderName::COUNT],
    /// Bit per `HeaderName` seen more than once.
    repeated: u32,
    content_length: Option<u32>,
    body_start: u32,
    body: &'a [u8],
}

/// Frames a message: start line, header lines and body.
///
/// Fails only when the message cannot be framed: bad start line, malformed
/// header line, limits exceeded, unusable Content-Length or a body shorter
/// than announced. Typed header problems surface from the accessors, so a
/// proxy can still answer 400. Line breaks before the start line (RFC 5626
/// keep-alives, stream leftovers) are skipped.
///
/// Body framing is for datagrams: without Content-Length the body is the
/// rest of the buffer; bytes after `Content-Length` octets are ignored
/// (RFC 3261 §18.3). A stream transport must require Content-Length itself.
/// A message may end right after its last header line without the empty
/// line; the body is then empty.
#[inline]
pub fn parse(buf: &[u8]) -> Result<Message<'_>, ParseError> {
    // Built in place and filled through a reference: the message is large
    // (inline header storage), so it should be written once, not moved.
    let mut msg = Message {
        buf,
        start: StartLine::Response {
            code: 0,
            reason: &[],
        },
        version: &[],
        start_line: (0, 0),
        headers: SmallVec::new(),
        first: [NONE; HeaderName::COUNT],
        repeated: 0,
        content_length: None,
        body_start: 0,
        body: &[],
    };
    fill(&mut msg)?;
    Ok(msg)
}

fn fill<'a>(msg: &mut Message<'a>) -> Result<(), ParseError> {
    let buf = msg.buf;
    let len = buf.len();
    if len > MAX_MESSAGE_LEN {
        return Err(ParseError::TooLarge);
    }
    let mut pos = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if pos == len {
        return Err(ParseError::Empty);
    }

    let sl_start = pos;
    let mut scan = LineScanner::new(buf, pos);
    let nl = scan.newline(pos).ok_or(ParseError::Truncated)?;
    let sl_end = if buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    if sl_end - sl_start > MAX_START_LINE_LEN {
        return Err(ParseError::BadRequestLine);
    }
    let (start, version) = parse_start_line(&buf[sl_start..sl_end])?;
    pos = nl + 1;
    msg.start = start;
    msg.version = version;
    msg.start_line = (sl_start as u32, pos as u32);

    // Kept in locals so they can live in registers during the loop.
    let mut first = [NONE; HeaderName::COUNT];
    let mut repeated = 0u32;
    let mut content_length: Option<u32> = None;
    let headers = &mut msg.headers;

    let body_start = loop {
        let Some(&b) = buf.get(pos) else {
            break len;
        };
        match b {
            b'\n' => break pos + 1,
            b'\r' if buf.get(pos + 1) == Some(&b'\n') => break pos + 2,
            b' ' | b'\t' | b'\r' => return Err(ParseError::BadHeaderLine),
            _ => {}
        }
        let line_start = pos;
        // field-name *(SP / HTAB) ":" on the first physical line.
        let colon = scan.colon_in_line(line_start)?;
        // Find the end of this header, following continuation lines.
        // From the line start, not the colon: both searches then depend on
        // `line_start` only and can overlap (colon_in_line checked no line
        // end precedes the colon).
        let mut nl = scan.newline(line_start).ok_or(ParseError::Truncated)?;
        while matches!(buf.get(nl + 1), Some(b' ' | b'\t')) {
            nl = scan.newline(nl + 1).ok_or(ParseError::Truncated)?;
        }
        let next = nl + 1;
        if next - line_start > MAX_HEADER_LEN {
            return Err(ParseError::HeaderTooLong);
        }
        let content_end = nl - usize::from(buf[nl - 1] == b'\r');
        let mut name_end = colon;
        // Common case "Name:", else trim "Name  :".
        if name_end > line_start && buf[name_end - 1] <= b' ' {
            while name_end > line_start && matches!(buf[name_end - 1], b' ' | b'\t') {
                name_end -= 1;
            }
        }
        let raw_name = &buf[line_start..name_end];
        let name = HeaderName::from_bytes(raw_name);
        // A known name matched its literal exactly, so only extension names
        // need the token check.
        if name == HeaderName::Other && !is_token_str(raw_name) {
            return Err(ParseError::BadHeaderLine);
        }
        // Common case ": value" costs two comparisons; anything else
        // (tabs, folds right after the colon, trailing blanks) the loops.
        let mut vs = colon + 1;
        if vs < content_end && buf[vs] == b' ' {
            vs += 1;
        }
        if vs < content_end && buf[vs] <= b' ' {
            while vs < content_end && matches!(buf[vs], b' ' | b'\t' | b'\r' | b'\n') {
                vs += 1;
            }
        }
        let mut ve = content_end.max(vs);
        if ve > vs && buf[ve - 1] <= b' ' {
            while ve > vs && matches!(buf[ve - 1], b' ' | b'\t' | b'\r' | b'\n') {
                ve -= 1;
            }
        }
        let value = &buf[vs..ve];
        let idx = headers.len();
        if idx == MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
        let slot = &mut first[name as usize];
        if *slot == NONE {
            *slot = idx as u16;
        } else {
            repeated |= 1 << name as u32;
        }
        if name == HeaderName::ContentLength {
            let cl = parse_decimal(value, u64::from(u32::MAX))
                .ok_or(ParseError::BadContentLength)? as u32;
            match content_length {
                Some(prev) if prev != cl => return Err(ParseError::ConflictingContentLength),
                _ => content_length = Some(cl),
            }
        }
        headers.push(Header {
            name,
            raw_name,
            value,
            line_start: line_start as u32,
            line_end: next as u32,
        });
        pos = next;
    };

    let available = len - body_start;
    let body_len = match content_length {
        Some(cl) if cl as usize > available => return Err(ParseError::BodyTruncated),
        Some(cl) => cl as usize,
        None => available,
    };
    msg.first = first;
    msg.repeated = repeated;
    msg.content_length = content_length;
    msg.body_start = body_start as u32;
    msg.body = &buf[body_start..body_start + body_len];
    Ok(())
}

/// `SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT`, "SIP" case-insensitive.
fn is_version(v: &[u8]) -> bool {
    if v.len() == 7 && v[..4].eq_ignore_ascii_case(b"SIP/") && &v[4..] == b"2.0" {
        return true;
    }
    if v.len() < 7 || !v[..4].eq_ignore_ascii_case(b"SIP/") {
        return false;
    }
    let rest = &v[4..];
    match memchr::memchr(b'.', rest) {
        Some(dot) => {
            dot > 0
                && dot + 1 < rest.len()
                && rest[..dot].iter().all(u8::is_ascii_digit)
                && rest[dot + 1..].iter().all(u8::is_ascii_digit)
        }
        None => false,
    }
}

fn parse_start_line(line: &[u8]) -> Result<(StartLine<'_>, &[u8]), ParseError> {
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let bad = ParseError::BadStatusLine;
        let sp = memchr::memchr(b' ', line).ok_or(bad)?;
        let version = &line[..sp];
        if !is_version(version) {
            return Err(bad);
        }
        let rest = &line[sp + 1..];
        if rest.len() < 3 || !rest[..3].iter().all(u8::is_ascii_digit) {
            return Err(bad);
        }
        // "SIP/2.0 100" without the SP before an empty reason is tolerated.
        let reason = match rest.get(3) {
            None => &rest[3..],
            Some(b' ') => &rest[4..],
            Some(_) => return Err(bad),
        };
        let code = u16::from(rest[0] - b'0') * 100
            + u16::from(rest[1] - b'0') * 10
            + u16::from(rest[2] - b'0');
        if !(100..=699).contains(&code) {
            return Err(bad);
        }
        Ok((StartLine::Response { code, reason }, version))
    } else {
        // Request-Line = Method SP Request-URI SP SIP-Version: exactly one SP
        // between elements and none at the end (RFC 4475 lwsstart, trws,
        // lwsruri are rejected here).
        let bad = ParseError::BadRequestLine;
        // Methods are short: a plain loop beats a search call.
        let sp1 = line.iter().position(|&b| b == b' ').ok_or(bad)?;
        let n = line.len();
        let sp2 = if n >= 8 && line[n - 8] == b' ' {
            n - 8
        } else {
            memchr::memrchr(b' ', line).ok_or(bad)?
        };
        if sp2 <= sp1 + 1 {
            return Err(bad);
        }
        let method_raw = &line[..sp1];
        let uri = &line[sp1 + 1..sp2];
        let version = &line[sp2 + 1..];
        // Controls other than SP in the URI are left to `Uri::parse`.
        if !is_token_str(method_raw) || !is_version(version) || uri.contains(&b' ') {
            return Err(bad);
        }
        Ok((
            StartLine::Request {
                method: Method::from_bytes(method_raw),
                method_raw,
                uri,
            },
            version,
        ))
    }
}

/// Iterator over all entries of all headers of one name; see
/// [`Message::values`].
#[derive(Debug, Clone)]
pub struct Values<'a, 'm> {
    headers: core::slice::Iter<'m, Header<'a>>,
    name: HeaderName,
    split: Option<SplitComma<'a>>,
}

impl<'a> Iterator for Values<'a, '_> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if let Some(s) = &mut self.split {
                if let Some(v) = s.next() {
                    return Some(v);
                }
                self.split = None;
            }
            let h = self.headers.find(|h| h.name == self.name)?;
            if self.name.is_list() {
                self.split = Some(split_comma(h.value));
            } else {
                return Some(h.value);
            }
        }
    }
}

impl<'a> Message<'a> {
    /// The whole buffer the message was parsed from.
    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// The request or status line.
    pub fn start_line(&self) -> &StartLine<'a> {
        &self.start
    }

    /// Byte range of the start line, including its line end, within `buf()`.
    pub fn start_line_range(&self) -> (usize, usize) {
        (self.start_line.0 as usize, self.start_line.1 as usize)
    }

    /// The SIP-Version as written (`SIP/2.0`).
    pub fn version(&self) -> &'a [u8] {
        self.version
    }

    /// Request (true) or response (false).
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// Request method; `None` for responses.
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// Request method as written; `None` for responses.
    pub fn method_raw(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { method_raw, .. } => Some(method_raw),
            StartLine::Response { .. } => None,
        }
    }

    /// Status code; `None` for requests.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// Reason phrase; `None` for requests.
    pub fn reason(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Response { reason, .. } => Some(reason),
            StartLine::Request { .. } => None,
        }
    }

    /// The Request-URI as written; `None` for responses.
    pub fn request_uri(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// All header lines in order.
    pub fn headers(&self) -> &[Header<'a>] {
        &self.headers
    }

    /// The first header line of that name.
    pub fn header_entry(&self, name: HeaderName) -> Option<&Header<'a>> {
        match self.first[name as usize] {
            NONE => None,
            i => self.headers.get(usize::from(i)),
        }
    }

    /// Value of the first header of that name (raw, trimmed). For `Other`
    /// this is the first extension header, whatever its name; look those up
    /// with [`Message::header_by_name`].
    pub fn header(&self, name: HeaderName) -> Option<&'a [u8]> {
        self.header_entry(name).map(|h| h.value)
    }

    /// Value of the first header whose raw name matches `raw_name`
    /// case-insensitively (linear scan; for extension headers).
    pub fn header_by_name(&self, raw_name: &[u8]) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.raw_name.eq_ignore_ascii_case(raw_name))
            .map(|h| h.value)
    }

    /// Whether more than one header of that name is present.
    pub fn is_repeated(&self, name: HeaderName) -> bool {
        self.repeated & (1 << name as u32) != 0
    }

    /// All values of all headers of that name, in order. List headers (Via,
    /// Route, Record-Route, Contact, ...; see [`HeaderName::is_list`]) are
    /// split on top-level commas, so `Route: <a>, <b>` yields two entries.
    pub fn values(&self, name: HeaderName) -> Values<'a, '_> {
        let from = match self.first[name as usize] {
            NONE => self.headers.len(),
            i => usize::from(i),
        };
        Values {
            headers: self.headers[from..].iter(),
            name,
            split: None,
        }
    }

    /// The top Via entry.
    pub fn top_via(&self) -> Result<Via<'a>, ParseError> {
        let v = self
            .header(HeaderName::Via)
            .ok_or(ParseError::Missing(HeaderName::Via))?;
        Via::parse(split_comma(v).next().ok_or(ParseError::BadVia)?)
    }

    /// Call-ID: `word ["@" word]`, so non-empty and without LWS.
    pub fn call_id(&self) -> Result<&'a [u8], ParseError> {
        let v = self
            .header(HeaderName::CallId)
            .ok_or(ParseError::Missing(HeaderName::CallId))?;
        if v.is_empty() || v.iter().any(|&b| b <= b' ' || b == 0x7f) {
            return Err(ParseError::BadCallId);
        }
        Ok(v)
    }

    /// CSeq: number below 2**31 and method.
    pub fn cseq(&self) -> Result<CSeq<'a>, ParseError> {
        CSeq::parse(
            self.header(HeaderName::CSeq)
                .ok_or(ParseError::Missing(HeaderName::CSeq))?,
        )
    }

    /// From, with its tag; `BadFrom` if malformed.
    pub fn from(&self) -> Result<NameAddr<'a>, ParseError> {
        let v = self
            .header(HeaderName::From)
            .ok_or(ParseError::Missing(HeaderName::From))?;
        NameAddr::parse(v).map_err(|_| ParseError::BadFrom)
    }

    /// To, with its tag if any; `BadTo` if malformed.
    pub fn to(&self) -> Result<NameAddr<'a>, ParseError> {
        let v = self
            .header(HeaderName::To)
            .ok_or(ParseError::Missing(HeaderName::To))?;
        NameAddr::parse(v).map_err(|_| ParseError::BadTo)
    }

    /// Max-Forwards (0..=255); `Ok(None)` when absent.
    pub fn max_forwards(&self) -> Result<Option<u32>, ParseError> {
        match self.header(HeaderName::MaxForwards) {
            None => Ok(None),
            Some(v) => parse_decimal(v, 255)
                .map(|n| Some(n as u32))
                .ok_or(ParseError::BadMaxForwards),
        }
    }

    /// Content-Length as announced, if present (validated by `parse`).
    pub fn content_length(&self) -> Option<u32> {
        self.content_length
    }

    /// Content-Type value as written.
    pub fn content_type(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::ContentType)
    }

    /// The body, bounded by Content-Length.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Offset of the body (just past the empty line) within `buf()`.
    pub fn body_offset(&self) -> usize {
        self.body_start as usize
    }

    /// The Request-URI, parsed. `Err(NotARequest)` for responses.
    pub fn ruri(&self) -> Result<Uri<'a>, ParseError> {
        Uri::parse(self.request_uri().ok_or(ParseError::NotARequest)?)
    }

    /// Checks what a proxy needs before it acts on a request: SIP/2.0, a
    /// usable Request-URI (sip, sips or tel, no `?headers`), a parseable top
    /// Via, From, To, Call-ID and CSeq present once each, the CSeq method
    /// equal to the request method, and a valid Max-Forwards if present.
    pub fn validate_request(&self) -> Result<(), ParseError> {
        self.validated_request().map(|_| ())
    }

    /// [`Message::validate_request`] that also hands back what it parsed,
    /// so a proxy does not parse the same headers twice.
    pub fn validated_request(&self) -> Result<RequestInfo<'a>, ParseError> {
        let StartLine::Request { method_raw, .. } = self.start else {
            return Err(ParseError::NotARequest);
        };
        if !self.version.eq_ignore_ascii_case(b"SIP/2.0") {
            return Err(ParseError::UnsupportedVersion);
        }
        if self.headers.len() > MAX_HEADERS - FORWARD_HEADROOM {
            return Err(ParseError::TooManyHeaders);
        }
        let ruri = self.ruri()?;
        if ruri.headers.is_some() {
            return Err(ParseError::HeadersInRequestUri);
        }
        let common = self.validate_common()?;
        if common.cseq.method_raw != method_raw {
            return Err(ParseError::CSeqMethodMismatch);
        }
        Ok(RequestInfo {
            ruri,
            max_forwards: self.max_forwards()?,
            common,
        })
    }

    /// Response counterpart of [`Message::validate_request`]: SIP/2.0, a
    /// parseable top Via, From, To, Call-ID and CSeq present once each.
    pub fn validate_response(&self) -> Result<(), ParseError> {
        self.validated_response().map(|_| ())
    }

    /// [`Message::validate_response`] that also hands back what it parsed.
    pub fn validated_response(&self) -> Result<DialogInfo<'a>, ParseError> {
        if self.is_request() {
            return Err(ParseError::NotAResponse);
        }
        if !self.version.eq_ignore_ascii_case(b"SIP/2.0") {
            return Err(ParseError::UnsupportedVersion);
        }
        self.validate_common()
    }

    fn validate_common(&self) -> Result<DialogInfo<'a>, ParseError> {
        for name in [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ] {
            if self.first[name as usize] == NONE {
                return Err(ParseError::Missing(name));
            }
            if name != HeaderName::Via && self.is_repeated(name) {
                return Err(ParseError::Duplicate(name));
            }
        }
        Ok(DialogInfo {
            via: self.top_via()?,
            from: self.from()?,
            to: self.to()?,
            call_id: self.call_id()?,
            cseq: self.cseq()?,
        })
    }
}

/// The headers every message must carry, parsed (see
/// [`Message::validated_response`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialogInfo<'a> {
    /// The top Via entry.
    pub via: Via<'a>,
    pub from: NameAddr<'a>,
    pub to: NameAddr<'a>,
    pub call_id: &'a [u8],
    pub cseq: CSeq<'a>,
}

/// What [`Message::validated_request`] parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    pub ruri: Uri<'a>,
    pub max_forwards: Option<u32>,
    pub common: DialogInfo<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    #[test]
    fn parses_a_plain_invite() {
        let m = parse(INVITE).unwrap();
        assert!(m.is_request());
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.request_uri(), Some(&b"sip:bob@biloxi.example.com"[..]));
        assert_eq!(m.version(), b"SIP/2.0");
        assert_eq!(m.headers().len(), 9);
        assert_eq!(
            m.header(HeaderName::CallId),
            Some(&b"a84b4c76e66710@pc33.atlanta.example.com"[..])
        );
        assert_eq!(
            m.call_id().unwrap(),
            b"a84b4c76e66710@pc33.atlanta.example.com"
        );
        assert_eq!(m.max_forwards(), Ok(Some(70)));
        assert_eq!(m.cseq().unwrap().seq, 314159);
        assert_eq!(m.from().unwrap().tag, Some(&b"1928301774"[..]));
        assert_eq!(m.to().unwrap().tag, None);
        assert_eq!(m.top_via().unwrap().branch, Some(&b"z9hG4bK776asdhds"[..]));
        assert_eq!(m.content_type(), Some(&b"application/sdp"[..]));
        assert_eq!(m.content_length(), Some(4));
        assert_eq!(m.body(), b"v=0\n");
        assert_eq!(m.ruri().unwrap().host, b"biloxi.example.com");
        m.validate_request().unwrap();
        let info = m.validated_request().unwrap();
        assert_eq!(info.ruri, m.ruri().unwrap());
        assert_eq!(info.max_forwards, Some(70));
        assert_eq!(info.common.via, m.top_via().unwrap());
        assert_eq!(info.common.from, m.from().unwrap());
        assert_eq!(info.common.to, m.to().unwrap());
        assert_eq!(info.common.call_id, m.call_id().unwrap());
        assert_eq!(info.common.cseq, m.cseq().unwrap());
        let h = m.headers()[0];
        assert_eq!(
            &INVITE[h.line_start as usize..h.line_end as usize],
            &b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"[..]
        );
        assert_eq!(m.start_line_range(), (0, 43));
    }

    #[test]
    fn responses() {
        let m =
            parse(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n").unwrap();
        assert_eq!(m.status(), Some(180));
        assert_eq!(m.reason(), Some(&b"Ringing"[..]));
        assert_eq!(m.method(), None);
        assert_eq!(m.request_uri(), None);
        assert_eq!(m.ruri(), Err(ParseError::NotARequest));
        assert_eq!(m.validate_request(), Err(ParseError::NotARequest));
        assert_eq!(
            m.validate_response(),
            Err(ParseError::Missing(HeaderName::From))
        );
        let m = parse(b"SIP/2.0 100\r\n\r\n").unwrap();
        assert_eq!(m.reason(), Some(&b""[..]));
        for bad in [
            &b"SIP/2.0 1000 x\r\n\r\n"[..],
            b"SIP/2.0 099 x\r\n\r\n",
            b"SIP/2.0 700 x\r\n\r\n",
            b"SIP/2.0 20 x\r\n\r\n",
            b"SIP/2.0200 OK\r\n\r\n",
            b"SIP/x 200 OK\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad).err(),
                Some(ParseError::BadStatusLine),
                "{:?}",
                bad
            );
        }
    }

    #[test]
    fn request_line_rules() {
        for bad in [
            &b"INVITE  sip:a@b SIP/2.0\r\n\r\n"[..],
            b"INVITE sip:a@b  SIP/2.0\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0 \r\n\r\n",
            b"INVITE sip:a@b; lr SIP/2.0\r\n\r\n",
            b"INVITE sip:a@b\r\n\r\n",
            b"INVITE\r\n\r\n",
            b"INV(ITE sip:a@b SIP/2.0\r\n\r\n",
            b"INVITE sip:a@b HTTP/1.1\r\n\r\n",
            b"INVITE sip:a@b SIP/2.\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad).err(),
                Some(ParseError::BadRequestLine),
                "{:?}",
                bad
            );
        }
        let m = parse(b"FOO sip:a@b SIP/7.0\r\n\r\n").unwrap();
        assert_eq!(m.method(), Some(Method::Other));
        assert_eq!(m.method_raw(), Some(&b"FOO"[..]));
        assert_eq!(m.validate_request(), Err(ParseError::UnsupportedVersion));
    }

    #[test]
    fn folding_whitespace_and_bare_lf() {
        let m = parse(b"OPTIONS sip:a@b SIP/2.0\nSubject  :  hello\n  world \nX-A:\n\tb\nl: 0\n\n")
            .unwrap();
        let h = m.headers();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].name, HeaderName::Subject);
        assert_eq!(h[0].raw_name, b"Subject");
        assert_eq!(h[0].value, b"hello\n  world");
        assert_eq!(h[1].raw_name, b"X-A");
        assert_eq!(h[1].value, b"b");
        assert_eq!(h[2].name, HeaderName::ContentLength);
        assert_eq!(m.body(), b"");
        assert_eq!(m.header_by_name(b"x-a"), Some(&b"b"[..]));
    }

    #[test]
    fn framing_errors() {
        assert_eq!(parse(b"").err(), Some(ParseError::Empty));
        assert_eq!(parse(b"\r\n\r\n").err(), Some(ParseError::Empty));
        assert_eq!(
            parse(b"OPTIONS sip:a@b SIP/2.0").err(),
            Some(ParseError::Truncated)
        );
        assert_eq!(
            parse(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x").err(),
            Some(ParseError::Truncated)
        );
        assert_eq!(
            parse(b"OPTIONS sip:a@b SIP/2.0\r\n folded\r\n\r\n").err(),
            Some(ParseError::BadHeaderLine)
        );
        assert_eq!(
            parse(b"OPTIONS sip:a@b SIP/2.0\r\nNoColon\r\n\r\n").err(),
            Some(ParseError::BadHeaderLine)
        );
        assert_eq!(
            parse(b"OPTIONS sip:a@b SIP/2.0\r\n: x\r\n\r\n").err(),
            Some(ParseError::BadHeaderLine)
        );
        assert_eq!(
            parse(b"OPTIONS sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n").err(),
            Some(ParseError::BadHeaderLine)
        );
        assert_eq!(
            parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: -1\r\n\r\n").err(),
            Some(ParseError::BadContentLength)
        );
        assert_eq!(
            parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: 5\r\n\r\nabc").err(),
            Some(ParseError::BodyTruncated)
        );
        assert_eq!(
            parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nabc").err(),
            Some(ParseError::ConflictingContentLength)
        );
        let big = vec![b'a'; MAX_MESSAGE_LEN + 1];
        assert_eq!(parse(&big).err(), Some(ParseError::TooLarge));
    }

    #[test]
    fn limits() {
        let mut m = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for _ in 0..MAX_HEADERS {
            m.extend_from_slice(b"X: y\r\n");
        }
        m.extend_from_slice(b"\r\n");
        assert_eq!(parse(&m).unwrap().headers().len(), MAX_HEADERS);
        let mut m2 = m[..m.len() - 2].to_vec();
        m2.extend_from_slice(b"X: y\r\n\r\n");
        assert_eq!(parse(&m2).err(), Some(ParseError::TooManyHeaders));
        // A request a proxy could not relay without passing the limit
        // (fuzzing found forward_request writing 258 headers).
        let mut r = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
            .to_vec();
        for _ in 0..MAX_HEADERS - FORWARD_HEADROOM - 5 {
            r.extend_from_slice(b"X: y\r\n");
        }
        let ok = [r.as_slice(), b"\r\n"].concat();
        assert!(parse(&ok).unwrap().validate_request().is_ok());
        // Relayed with all four additions (it has neither Max-Forwards nor
        // Content-Length), it still parses: fuzzing found 257 headers when
        // the headroom forgot Content-Length.
        let edits = crate::sip::build::RequestEdits {
            via: crate::sip::build::NewVia {
                host: b"192.0.2.1",
                port: 5060,
                tcp: false,
                tls: false,
                branch: b"z9hG4bKx",
            },
            request_uri: None,
            pop_routes: 0,
            drop_last_route: false,
            push_route: None,
            record_route: &[b"sip:192.0.2.1;lr"],
            received: None,
            body: None,
        };
        let mut out = Vec::new();
        crate::sip::build::forward_request(&parse(&ok).unwrap(), &edits, &mut out).unwrap();
        assert_eq!(parse(&out).unwrap().headers().len(), MAX_HEADERS);
        let full = [r.as_slice(), b"X: y\r\n\r\n"].concat();
        assert_eq!(
            parse(&full).unwrap().validate_request(),
            Err(ParseError::TooManyHeaders)
        );

        let mut m = b"OPTIONS sip:a@b SIP/2.0\r\nX: ".to_vec();
        m.extend_from_slice(&vec![b'a'; MAX_HEADER_LEN]);
        m.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&m).err(), Some(ParseError::HeaderTooLong));
    }

    #[test]
    fn body_framing() {
        // No Content-Length: the rest of the datagram.
        let m = parse(b"MESSAGE sip:a@b SIP/2.0\r\n\r\nhello").unwrap();
        assert_eq!(m.body(), b"hello");
        assert_eq!(m.content_length(), None);
        // Extra octets after Content-Length are ignored.
        let m = parse(b"MESSAGE sip:a@b SIP/2.0\r\nl: 2\r\n\r\nhello").unwrap();
        assert_eq!(m.body(), b"he");
        // No empty line at all.
        let m = parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n").unwrap();
        assert_eq!(m.body(), b"");
        // Leading keep-alive CRLFs are skipped.
        let m = parse(b"\r\n\r\nOPTIONS sip:a@b SIP/2.0\r\n\r\n").unwrap();
        assert_eq!(m.start_line_range(), (4, 29));
    }

    #[test]
    fn values_and_repeats() {
        let m = parse(
            b"OPTIONS sip:a@b SIP/2.0\r\nRoute: <sip:a;lr>, <sip:b;lr>\r\nVia: SIP/2.0/UDP x\r\nRoute: <sip:c>\r\nSubject: a, b\r\nSubject: c\r\n\r\n",
        )
        .unwrap();
        let r: Vec<&[u8]> = m.values(HeaderName::Route).collect();
        assert_eq!(r, vec![&b"<sip:a;lr>"[..], b"<sip:b;lr>", b"<sip:c>"]);
        let s: Vec<&[u8]> = m.values(HeaderName::Subject).collect();
        assert_eq!(s, vec![&b"a, b"[..], b"c"]);
        assert_eq!(m.values(HeaderName::Contact).count(), 0);
        assert!(m.is_repeated(HeaderName::Route));
        assert!(!m.is_repeated(HeaderName::Via));
        assert_eq!(
            m.header(HeaderName::Route),
            Some(&b"<sip:a;lr>, <sip:b;lr>"[..])
        );
    }

    #[test]
    fn validation_errors() {
        let base = |extra: &str, cseq: &str| {
            format!(
                "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: {cseq}\r\n{extra}\r\n"
            )
        };
        let ok = base("", "1 INVITE");
        parse(ok.as_bytes()).unwrap().validate_request().unwrap();
        let check = |s: String, e: ParseError| {
            assert_eq!(
                parse(s.as_bytes()).unwrap().validate_request(),
                Err(e),
                "{s}"
            );
        };
        check(base("", "1 OPTIONS"), ParseError::CSeqMethodMismatch);
        check(base("", "1 invite"), ParseError::CSeqMethodMismatch);
        check(
            base("Max-Forwards: 256\r\n", "1 INVITE"),
            ParseError::BadMaxForwards,
        );
        check(
            base("Call-ID: d\r\n", "1 INVITE"),
            ParseError::Duplicate(HeaderName::CallId),
        );
        check(base("", "x INVITE"), ParseError::BadCSeq);
        check(
            ok.replace("sip:a@b SIP", "sip:a@b?x=y SIP"),
            ParseError::HeadersInRequestUri,
        );
        check(
            ok.replace("sip:a@b SIP", "foo:bar SIP"),
            ParseError::UnsupportedScheme,
        );
        check(
            ok.replace("Call-ID: c\r\n", ""),
            ParseError::Missing(HeaderName::CallId),
        );
        check(
            ok.replace("Call-ID: c\r\n", "Call-ID: \r\n"),
            ParseError::BadCallId,
        );
        check(
            ok.replace("To: <sip:a@b>", "To: <sip:a@b"),
            ParseError::BadTo,
        );
        check(ok.replace("tag=1", "tag"), ParseError::BadFrom);
        check(
            ok.replace("branch=z9hG4bK1", "branch=z9hG4bK"),
            ParseError::BadBranch,
        );
    }
}
