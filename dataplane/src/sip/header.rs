//! Header names and the typed header values a proxy reads: Via, CSeq,
//! From/To-style addresses, generic `;name=value` parameters and comma lists.
//!
//! Everything borrows the message buffer. Values may contain folded line
//! breaks (CRLF + SP/HT); the scanners treat them as LWS.

use core::fmt;
use std::net::IpAddr;

use super::chars::{
    host_len, is_lws, is_param_value, is_token, parse_decimal, parse_port, skip_lws, skip_quoted,
    skip_while, trim_lws, trim_lws_end,
};
use super::error::ParseError;
use super::method::Method;

/// A header field name. Long and compact forms map to the same variant;
/// names the proxy does not interpret are `Other` (the raw name stays on the
/// [`super::Header`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Route,
    RecordRoute,
    Contact,
    ContentLength,
    ContentType,
    Expires,
    Allow,
    Supported,
    Require,
    ProxyRequire,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    Event,
    Subject,
    ReferTo,
    UserAgent,
    Server,
    RetryAfter,
    Warning,
    Other,
}

impl HeaderName {
    /// Number of variants (for per-name tables).
    pub const COUNT: usize = HeaderName::Other as usize + 1;

    /// Classifies a raw header name, case-insensitively, including the
    /// compact forms of RFC 3261 §7.3.3 and the extension RFCs
    /// (v i f t m l c k s o r; e u x b y ... are `Other`).
    ///
    /// At most one literal comparison: the length and first letter pick it.
    #[inline]
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        use HeaderName::*;
        let Some(&first) = name.first() else {
            return Other;
        };
        let first = first | 0x20;
        let (cand, lit): (HeaderName, &[u8]) = match (name.len(), first) {
            (1, _) => {
                return match first {
                    b'v' => Via,
                    b'i' => CallId,
                    b'f' => From,
                    b't' => To,
                    b'm' => Contact,
                    b'l' => ContentLength,
                    b'c' => ContentType,
                    b'k' => Supported,
                    b's' => Subject,
                    b'o' => Event,
                    b'r' => ReferTo,
                    _ => Other,
                }
            }
            (2, b't') => (To, b"to"),
            (3, b'v') => (Via, b"via"),
            (4, b'f') => (From, b"from"),
            (4, b'c') => (CSeq, b"cseq"),
            (5, b'r') => (Route, b"route"),
            (5, b'a') => (Allow, b"allow"),
            (5, b'e') => (Event, b"event"),
            (6, b's') => (Server, b"server"),
            (7, b'c') if name[1] | 0x20 == b'a' => (CallId, b"call-id"),
            (7, b'c') => (Contact, b"contact"),
            (7, b'e') => (Expires, b"expires"),
            (7, b's') => (Subject, b"subject"),
            (7, b'r') => (Require, b"require"),
            (7, b'w') => (Warning, b"warning"),
            (8, b'r') => (ReferTo, b"refer-to"),
            (9, b's') => (Supported, b"supported"),
            (10, b'u') => (UserAgent, b"user-agent"),
            (11, b'r') => (RetryAfter, b"retry-after"),
            (12, b'm') => (MaxForwards, b"max-forwards"),
            (12, b'r') => (RecordRoute, b"record-route"),
            (12, b'c') => (ContentType, b"content-type"),
            (13, b'a') => (Authorization, b"authorization"),
            (13, b'p') => (ProxyRequire, b"proxy-require"),
            (14, b'c') => (ContentLength, b"content-length"),
            (16, b'w') => (WwwAuthenticate, b"www-authenticate"),
            (18, b'p') => (ProxyAuthenticate, b"proxy-authenticate"),
            (19, b'p') => (ProxyAuthorization, b"proxy-authorization"),
            _ => return Other,
        };
        if eq_fold_token(name, lit) {
            cand
        } else {
            Other
        }
    }

    /// The canonical long form; empty for `Other`.
    pub fn as_str(self) -> &'static str {
        use HeaderName::*;
        match self {
            Via => "Via",
            From => "From",
            To => "To",
            CallId => "Call-ID",
            CSeq => "CSeq",
            MaxForwards => "Max-Forwards",
            Route => "Route",
            RecordRoute => "Record-Route",
            Contact => "Contact",
            ContentLength => "Content-Length",
            ContentType => "Content-Type",
            Expires => "Expires",
            Allow => "Allow",
            Supported => "Supported",
            Require => "Require",
            ProxyRequire => "Proxy-Require",
            Authorization => "Authorization",
            ProxyAuthorization => "Proxy-Authorization",
            WwwAuthenticate => "WWW-Authenticate",
            ProxyAuthenticate => "Proxy-Authenticate",
            Event => "Event",
            Subject => "Subject",
            ReferTo => "Refer-To",
            UserAgent => "User-Agent",
            Server => "Server",
            RetryAfter => "Retry-After",
            Warning => "Warning",
            Other => "",
        }
    }

    /// Whether several values of this header may share one line, separated by
    /// commas (RFC 3261 §7.3.1). Authorization-style headers and unknown
    /// headers are never split: their commas separate parameters or are data.
    pub fn is_list(self) -> bool {
        use HeaderName::*;
        matches!(
            self,
            Via | Route
                | RecordRoute
                | Contact
                | Allow
                | Supported
                | Require
                | ProxyRequire
                | Warning
        )
    }
}

/// Case-insensitive equality of `name` with a lower-case literal made of
/// letters and `-`, a word at a time. Bit 5 is forced on only where the
/// literal has a letter (letters have bit 6 set, `-` has not), so `-` must
/// match exactly and no other byte can pass for a letter: exact for any input.
#[inline]
fn eq_fold_token(name: &[u8], lower: &[u8]) -> bool {
    #[inline(always)]
    fn w8(s: &[u8], at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(b)
    }
    #[inline(always)]
    fn w4(s: &[u8], at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&s[at..at + 4]);
        u32::from_le_bytes(b)
    }
    #[inline(always)]
    fn eq8(a: u64, l: u64) -> bool {
        a | ((l & 0x4040_4040_4040_4040) >> 1) == l
    }
    #[inline(always)]
    fn eq4(a: u32, l: u32) -> bool {
        a | ((l & 0x4040_4040) >> 1) == l
    }
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    match n {
        0..=3 => name
            .iter()
            .zip(lower)
            .all(|(&a, &l)| a | ((l & 0x40) >> 1) == l),
        // Overlapping loads of the first and last words cover any length.
        4..=7 => eq4(w4(name, 0), w4(lower, 0)) && eq4(w4(name, n - 4), w4(lower, n - 4)),
        8..=16 => eq8(w8(name, 0), w8(lower, 0)) && eq8(w8(name, n - 8), w8(lower, n - 8)),
        _ => {
            eq8(w8(name, 0), w8(lower, 0))
                && eq8(w8(name, 8), w8(lower, 8))
                && eq8(w8(name, n - 8), w8(lower, n - 8))
        }
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderName::Other => "extension",
            n => n.as_str(),
        })
    }
}

/// Splits a header value at top-level commas, ignoring commas inside
/// `"quoted strings"` and `<angle brackets>`. Entries are trimmed of LWS and
/// empty entries are skipped. An unterminated quote or bracket makes the rest
/// of the value one entry (the typed parser will then reject it).
pub fn split_comma(v: &[u8]) -> SplitComma<'_> {
    SplitComma { rest: v }
}

/// Iterator returned by [`split_comma`].
#[derive(Debug, Clone)]
pub struct SplitComma<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SplitComma<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let s = self.rest;
            let mut i = 0;
            let end = loop {
                match memchr::memchr3(b',', b'"', b'<', &s[i..]) {
                    None => break s.len(),
                    Some(k) => {
                        let k = i + k;
                        match s[k] {
                            b',' => break k,
                            b'"' => match skip_quoted(s, k) {
                                Some(j) => i = j,
                                None => break s.len(),
                            },
                            _ => match memchr::memchr(b'>', &s[k..]) {
                                Some(j) => i = k + j + 1,
                                None => break s.len(),
                            },
                        }
                    }
                }
            };
            let entry = trim_lws(&s[..end]);
            self.rest = if end < s.len() { &s[end + 1..] } else { &[] };
            if !entry.is_empty() {
                return Some(entry);
            }
        }
    }
}

/// One `;name[=value]` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Param<'a> {
    pub name: &'a [u8],
    pub value: Option<&'a [u8]>,
    /// Byte range of the parameter (from its `;` to the end of its value)
    /// within the params slice it came from.
    pub start: usize,
    pub end: usize,
}

/// Iterator over a `*( SEMI param )` list with optional LWS around `;` and
/// `=` (RFC 3261 SEMI / EQUAL). Yields `Err(())` once, then stops, on a
/// syntax error: an empty name, a non-token name, a missing value after `=`,
/// or trailing garbage.
#[derive(Debug, Clone)]
pub(crate) struct Params<'a> {
    s: &'a [u8],
    i: usize,
    done: bool,
}

pub(crate) fn params(s: &[u8]) -> Params<'_> {
    Params {
        s,
        i: 0,
        done: false,
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = Result<Param<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let s = self.s;
        let mut i = skip_lws(s, self.i);
        if i >= s.len() {
            self.done = true;
            return None;
        }
        if s[i] != b';' {
            self.done = true;
            return Some(Err(()));
        }
        let start = i;
        i = skip_lws(s, i + 1);
        let name_end = skip_while(s, i, is_token);
        if name_end == i {
            self.done = true;
            return Some(Err(()));
        }
        let name = &s[i..name_end];
        let mut j = skip_lws(s, name_end);
        let mut end = name_end;
        let mut value = None;
        if j < s.len() && s[j] == b'=' {
            j = skip_lws(s, j + 1);
            let vend = if j < s.len() && s[j] == b'"' {
                match skip_quoted(s, j) {
                    Some(e) => e,
                    None => {
                        self.done = true;
                        return Some(Err(()));
                    }
                }
            } else {
                skip_while(s, j, is_param_value)
            };
            if vend == j {
                self.done = true;
                return Some(Err(()));
            }
            value = Some(&s[j..vend]);
            end = vend;
        }
        self.i = end;
        Some(Ok(Param {
            name,
            value,
            start,
            end,
        }))
    }
}

/// Looks up parameter `name` (case-insensitive) in a `;a=b;lr` list.
/// `Some(None)` for a parameter without value, `Some(Some(v))` with its raw
/// value (quotes kept for quoted strings), `None` when absent. Lookup stops
/// at the first syntax error.
pub fn param<'a>(params_str: &'a [u8], name: &[u8]) -> Option<Option<&'a [u8]>> {
    params(params_str)
        .map_while(Result::ok)
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .map(|p| p.value)
}

/// Checks a parameter list for syntax errors.
#[cfg(test)]
pub(crate) fn params_valid(s: &[u8]) -> bool {
    params(s).all(|p| p.is_ok())
}

/// Parses an IP literal as found in a Via sent-by, a `received` parameter or
/// a URI host: dotted IPv4, bare or `[bracketed]` IPv6. No allocation.
pub fn parse_ip(host: &[u8]) -> Option<IpAddr> {
    let h = match host {
        [b'[', inner @ .., b']'] => inner,
        h => h,
    };
    core::str::from_utf8(h).ok()?.parse().ok()
}

/// One Via entry (RFC 3261 §20.42): `SIP/2.0/transport sent-by *(;param)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// `UDP`, `TCP`, `TLS`, `SCTP`, `WS`, ... as written.
    pub transport: &'a [u8],
    /// Host of sent-by; IPv6 references keep their brackets.
    pub host: &'a [u8],
    /// Port of sent-by, when written.
    pub port: Option<u16>,
    /// The `branch` parameter (transaction id).
    pub branch: Option<&'a [u8]>,
    /// The `received` parameter (RFC 3261 §18.2.1).
    pub received: Option<&'a [u8]>,
    /// `None`: absent; `Some(None)`: bare `;rport`; `Some(Some(p))`: `;rport=p`.
    pub rport: Option<Option<u16>>,
    /// All parameters from the first `;` on (use [`param`] for others).
    pub params: &'a [u8],
}

/// RFC 3261 magic cookie that starts a branch of a compliant client.
pub const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

impl<'a> Via<'a> {
    /// Parses one Via entry (one element of a comma-separated Via value).
    ///
    /// LWS is allowed around `/`, `:`, `;` and `=` (RFC 4475 §3.1.1.1). A
    /// branch that is empty or is only the magic cookie is rejected as
    /// [`ParseError::BadBranch`] (RFC 4475 §3.2.1 allows rejecting it; we do
    /// so because it cannot identify a transaction).
    pub fn parse(v: &'a [u8]) -> Result<Via<'a>, ParseError> {
        let bad = ParseError::BadVia;
        let mut i = skip_lws(v, 0);
        // sent-protocol = protocol-name SLASH protocol-version SLASH transport
        let name_end = skip_while(v, i, is_token);
        if !v[i..name_end].eq_ignore_ascii_case(b"SIP") {
            return Err(bad);
        }
        i = skip_lws(v, name_end);
        if v.get(i) != Some(&b'/') {
            return Err(bad);
        }
        i = skip_lws(v, i + 1);
        let ver_end = skip_while(v, i, is_token);
        if &v[i..ver_end] != b"2.0" {
            return Err(bad);
        }
        i = skip_lws(v, ver_end);
        if v.get(i) != Some(&b'/') {
            return Err(bad);
        }
        i = skip_lws(v, i + 1);
        let t_end = skip_while(v, i, is_token);
        if t_end == i {
            return Err(bad);
        }
        let transport = &v[i..t_end];
        // At least one LWS between sent-protocol and sent-by.
        i = skip_lws(v, t_end);
        if i == t_end {
            return Err(bad);
        }
        let hl = host_len(&v[i..]).ok_or(bad)?;
        let host = &v[i..i + hl];
        i += hl;
        let mut port = None;
        let j = skip_lws(v, i);
        if v.get(j) == Some(&b':') {
            let p = skip_lws(v, j + 1);
            let p_end = skip_while(v, p, |b| b.is_ascii_digit());
            port = Some(parse_port(&v[p..p_end]).ok_or(bad)?);
            i = p_end;
        }
        let params_str = trim_lws_end(&v[skip_lws(v, i)..]);
        let mut via = Via {
            transport,
            host,
            port,
            branch: None,
            received: None,
            rport: None,
            params: params_str,
        };
        for p in params(params_str) {
            let p = p.map_err(|()| bad)?;
            if p.name.eq_ignore_ascii_case(b"branch") {
                match p.value {
                    Some(b) if b != MAGIC_COOKIE => via.branch = Some(b),
                    _ => return Err(ParseError::BadBranch),
                }
            } else if p.name.eq_ignore_ascii_case(b"received") {
                via.received = Some(p.value.ok_or(bad)?);
            } else if p.name.eq_ignore_ascii_case(b"rport") {
                via.rport = Some(match p.value {
                    None => None,
                    Some(pv) => Some(parse_port(pv).ok_or(bad)?),
                });
            }
        }
        Ok(via)
    }

    /// The sent-by host as an IP address, when it is a literal.
    pub fn host_ip(&self) -> Option<IpAddr> {
        parse_ip(self.host)
    }
}

/// CSeq (RFC 3261 §20.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// Sequence number, below 2**31.
    pub seq: u32,
    /// The method; `Other` for extensions (see `method_raw`).
    pub method: Method,
    /// The method as written.
    pub method_raw: &'a [u8],
}

impl<'a> CSeq<'a> {
    /// Largest sequence number RFC 3261 §8.1.1.5 allows (less than 2**31).
    pub const MAX_SEQ: u32 = (1 << 31) - 1;

    /// Parses `1*DIGIT LWS Method`; leading zeros are fine.
    pub fn parse(v: &'a [u8]) -> Result<CSeq<'a>, ParseError> {
        let bad = ParseError::BadCSeq;
        let i = skip_lws(v, 0);
        let d_end = skip_while(v, i, |b| b.is_ascii_digit());
        let seq = parse_decimal(&v[i..d_end], u64::from(Self::MAX_SEQ)).ok_or(bad)? as u32;
        let m = skip_lws(v, d_end);
        if m == d_end {
            return Err(bad);
        }
        let m_end = skip_while(v, m, is_token);
        if m_end == m || skip_lws(v, m_end) != v.len() {
            return Err(bad);
        }
        let method_raw = &v[m..m_end];
        Ok(CSeq {
            seq,
            method: Method::from_bytes(method_raw),
            method_raw,
        })
    }
}

/// A `name-addr` or `addr-spec` with header parameters, as in From, To,
/// Contact, Route and Record-Route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name: the inside of the quotes (escapes left as written) or
    /// the unquoted tokens with their inner LWS.
    pub display: Option<&'a [u8]>,
    /// The URI, without angle brackets.
    pub uri: &'a [u8],
    /// The `tag` header parameter.
    pub tag: Option<&'a [u8]>,
    /// Header parameters from the first `;` after the address. For an
    /// addr-spec without `<>` every `;param` belongs here, not to the URI
    /// (RFC 3261 §20.10).
    pub params: &'a [u8],
}

impl<'a> NameAddr<'a> {
    /// Parses one address value (one comma-split entry for list headers).
    ///
    /// Rejected: an unterminated quote (RFC 4475 quotbal), LWS inside `<>`
    /// (badaspec), non-token display names such as `Bell, Alexander`
    /// (baddn), an addr-spec containing `,` `?` or `;` in its URI part
    /// (regbadct: RFC 3261 §20 requires `<>` then), empty parameters
    /// (badinv01) and anything after the parameters.
    pub fn parse(v: &'a [u8]) -> Result<NameAddr<'a>, ParseError> {
        let bad = ParseError::BadNameAddr;
        let v = trim_lws(v);
        if v.is_empty() {
            return Err(bad);
        }
        let (display, uri, rest) = if v[0] == b'"' {
            let q_end = skip_quoted(v, 0).ok_or(bad)?;
            let lt = skip_lws(v, q_end);
            if v.get(lt) != Some(&b'<') {
                return Err(bad);
            }
            let (uri, rest) = angle_uri(&v[lt..])?;
            (Some(&v[1..q_end - 1]), uri, rest)
        } else if let Some(lt) = memchr::memchr(b'<', v) {
            let name = trim_lws_end(&v[..lt]);
            // *(token LWS): every byte is a token character or LWS.
            if !name.iter().all(|&b| is_token(b) || is_lws(b)) {
                return Err(bad);
            }
            let (uri, rest) = angle_uri(&v[lt..])?;
            ((!name.is_empty()).then_some(name), uri, rest)
        } else {
            let end = memchr::memchr(b';', v).unwrap_or(v.len());
            let uri = trim_lws_end(&v[..end]);
            if uri.is_empty()
                || uri
                    .iter()
                    .any(|&b| is_lws(b) || matches!(b, b',' | b'?' | b'"'))
            {
                return Err(bad);
            }
            (None, uri, &v[end..])
        };
        let params_str = trim_lws(rest);
        let mut tag = None;
        for p in params(params_str) {
            let p = p.map_err(|()| bad)?;
            if p.name.eq_ignore_ascii_case(b"tag") {
                tag = Some(p.value.ok_or(bad)?);
            }
        }
        Ok(NameAddr {
            display,
            uri,
            tag,
            params: params_str,
        })
    }
}

/// `<uri>` at the start of `s` (which starts with `<`): the URI and what
/// follows the `>`. The URI must be non-empty and free of LWS.
fn angle_uri(s: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let gt = memchr::memchr(b'>', s).ok_or(ParseError::BadNameAddr)?;
    let uri = &s[1..gt];
    if uri.is_empty() || uri.iter().any(|&b| is_lws(b) || b == b'<') {
        return Err(ParseError::BadNameAddr);
    }
    Ok((uri, &s[gt + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_long_compact_and_case() {
        use HeaderName::*;
        for (raw, want) in [
            (&b"Via"[..], Via),
            (b"v", Via),
            (b"V", Via),
            (b"vIA", Via),
            (b"i", CallId),
            (b"CALL-ID", CallId),
            (b"f", From),
            (b"t", To),
            (b"m", Contact),
            (b"l", ContentLength),
            (b"c", ContentType),
            (b"k", Supported),
            (b"s", Subject),
            (b"o", Event),
            (b"r", ReferTo),
            (b"u", Other),
            (b"e", Other),
            (b"x", Other),
            (b"max-FORWARDS", MaxForwards),
            (b"Record-Route", RecordRoute),
            (b"WWW-Authenticate", WwwAuthenticate),
            (b"Proxy-Authorization", ProxyAuthorization),
            (b"Proxy-Authenticate", ProxyAuthenticate),
            (b"Proxy-Require", ProxyRequire),
            (b"Retry-After", RetryAfter),
            (b"User-Agent", UserAgent),
            (b"C%6Fntact", Other),
            (b"Contacts", Other),
            (b"", Other),
        ] {
            assert_eq!(HeaderName::from_bytes(raw), want, "{:?}", raw);
        }
        for n in [
            Via,
            From,
            To,
            CallId,
            CSeq,
            MaxForwards,
            Route,
            RecordRoute,
            Contact,
        ] {
            assert_eq!(HeaderName::from_bytes(n.as_str().as_bytes()), n);
        }
        assert_eq!(HeaderName::COUNT, 28);
    }

    #[test]
    fn split_comma_respects_quotes_and_brackets() {
        let v = br#""Doe, John" <sip:a@b;x=1,2>;tag=1 , <sip:c@d>,,  sip:e@f "#;
        let got: Vec<&[u8]> = split_comma(v).collect();
        assert_eq!(
            got,
            vec![
                &br#""Doe, John" <sip:a@b;x=1,2>;tag=1"#[..],
                b"<sip:c@d>",
                b"sip:e@f"
            ]
        );
        assert_eq!(split_comma(b" , ,").count(), 0);
        assert_eq!(split_comma(b"\"open, quote").count(), 1);
        assert_eq!(split_comma(b"<sip:open, bracket").count(), 1);
        assert_eq!(
            split_comma(b"a,\r\n b").collect::<Vec<_>>(),
            vec![&b"a"[..], b"b"]
        );
    }

    #[test]
    fn param_lookup() {
        let p = b";branch=z9hG4bK1 ; rport ;Received = 10.0.0.1;x=\"a;b\"";
        assert_eq!(param(p, b"branch"), Some(Some(&b"z9hG4bK1"[..])));
        assert_eq!(param(p, b"RPORT"), Some(None));
        assert_eq!(param(p, b"received"), Some(Some(&b"10.0.0.1"[..])));
        assert_eq!(param(p, b"x"), Some(Some(&b"\"a;b\""[..])));
        assert_eq!(param(p, b"nope"), None);
        assert_eq!(param(b"", b"lr"), None);
        assert!(params_valid(b";lr;a=b"));
        assert!(!params_valid(b";;"));
        assert!(!params_valid(b";a="));
        assert!(!params_valid(b";a=b junk"));
        assert!(!params_valid(b"junk"));
    }

    #[test]
    fn parse_ip_agrees_with_std() {
        for h in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.20.30.40",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.04",
            "1..2.3",
            "1.2.3.",
            ".1.2.3",
            "1.2.3.4a",
            "a.b.c.d",
            "1234.1.1.1",
            "::1",
            "2001:db8::1",
            "example.com",
            "",
        ] {
            let std: Option<IpAddr> = h.parse().ok();
            assert_eq!(parse_ip(h.as_bytes()), std, "{h:?}");
        }
        assert_eq!(parse_ip(b"[::1]"), "::1".parse().ok());
    }

    #[test]
    fn via_plain_ipv6_and_params() {
        let v = Via::parse(b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport").unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"10.0.0.1");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch, Some(&b"z9hG4bKabc"[..]));
        assert_eq!(v.rport, Some(None));
        assert_eq!(v.received, None);
        assert_eq!(v.host_ip(), Some("10.0.0.1".parse().unwrap()));

        let v = Via::parse(
            b"SIP/2.0/TCP [2001:db8::1]:5061;rport=4000;received=2001:db8::2;branch=z9hG4bKx",
        )
        .unwrap();
        assert_eq!(v.host, b"[2001:db8::1]");
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.rport, Some(Some(4000)));
        assert_eq!(v.received, Some(&b"2001:db8::2"[..]));
        assert_eq!(v.host_ip(), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(param(v.params, b"branch"), Some(Some(&b"z9hG4bKx"[..])));

        let v = Via::parse(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(
            (v.transport, v.host, v.port),
            (&b"UDP"[..], &b"192.0.2.2"[..], None)
        );
        let v = Via::parse(
            b"SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        )
        .unwrap();
        assert_eq!(v.host, b"spindle.example.com");
        assert_eq!(v.branch, Some(&b"z9hG4bK9ikj8"[..]));
        let v = Via::parse(b"SIP/2.0/UDP host : 5070").unwrap();
        assert_eq!(v.port, Some(5070));
    }

    #[test]
    fn via_rejects() {
        for bad in [
            &b""[..],
            b"SIP/2.0/UDP",
            b"SIP/2.0/UDP ",
            b"SIP/2.0/UDPhost",
            b"SIP/7.0/UDP host",
            b"HTTP/2.0/UDP host",
            b"SIP/2.0/UDP 192.0.2.15;;",
            b"SIP/2.0/UDP host:99999",
            b"SIP/2.0/UDP host:",
            b"SIP/2.0/UDP [::1",
            b"SIP/2.0/UDP host;rport=x",
            b"SIP/2.0/UDP host;received",
            b"SIP/2.0/UDP host junk",
        ] {
            assert_eq!(Via::parse(bad), Err(ParseError::BadVia), "{:?}", bad);
        }
        assert_eq!(
            Via::parse(b"SIP/2.0/UDP host;branch=z9hG4bK"),
            Err(ParseError::BadBranch)
        );
        assert_eq!(
            Via::parse(b"SIP/2.0/UDP host;branch"),
            Err(ParseError::BadBranch)
        );
    }

    #[test]
    fn cseq() {
        let c = CSeq::parse(b"0009\r\n  INVITE").unwrap();
        assert_eq!((c.seq, c.method), (9, Method::Invite));
        let c = CSeq::parse(b"2147483647 FOO").unwrap();
        assert_eq!(
            (c.seq, c.method, c.method_raw),
            (CSeq::MAX_SEQ, Method::Other, &b"FOO"[..])
        );
        for bad in [
            &b"2147483648 INVITE"[..],
            b"36893488147419103232 REGISTER",
            b"INVITE",
            b"1INVITE",
            b"1 ",
            b"1 INVITE x",
            b"-1 INVITE",
            b"",
        ] {
            assert_eq!(CSeq::parse(bad), Err(ParseError::BadCSeq), "{:?}", bad);
        }
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(
            b"\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(n.display, Some(&b"J Rosenberg \\\\\\\""[..]));
        assert_eq!(n.uri, b"sip:jdrosen@example.com");
        assert_eq!(n.tag, Some(&b"98asjd8"[..]));

        let n =
            NameAddr::parse(b"sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(n.display, None);
        assert_eq!(n.uri, b"sip:vivekg@chair-dnrc.example.com");
        assert_eq!(n.tag, Some(&b"1918181833n"[..]));

        let n = NameAddr::parse(b"caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display, Some(&b"caller"[..]));
        assert_eq!(n.tag, Some(&b"323"[..]));

        let n =
            NameAddr::parse(b"token1~` token2'+_ token3*%!.- <sip:m@e.com>;x=\"\xd1\x80\";tag=_t")
                .unwrap();
        assert_eq!(n.display, Some(&b"token1~` token2'+_ token3*%!.-"[..]));
        assert_eq!(n.tag, Some(&b"_t"[..]));

        // addr-spec: the parameters belong to the header, not to the URI.
        let n = NameAddr::parse(b"sip:a@b;user=phone;tag=x").unwrap();
        assert_eq!(n.uri, b"sip:a@b");
        assert_eq!(n.params, b";user=phone;tag=x");
        let n = NameAddr::parse(b"<sip:a@b;user=phone>;tag=x").unwrap();
        assert_eq!(n.uri, b"sip:a@b;user=phone");
        assert_eq!(n.params, b";tag=x");
        assert_eq!(NameAddr::parse(b"<sip:a@b>").unwrap().tag, None);
    }

    #[test]
    fn name_addr_rejects() {
        for bad in [
            &b""[..],
            b"\"Mr. J. User <sip:j.user@example.com>",
            b"\"Watson, Thomas\" < sip:t.watson@example.org >",
            b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            b"sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            b"\"Joe\" <sip:joe@example.org>;;;;",
            b"<sip:a@b",
            b"<>",
            b"<sip:a@b> junk",
            b"<sip:a@b>;tag",
            b"\"x\" sip:a@b",
        ] {
            assert_eq!(
                NameAddr::parse(bad),
                Err(ParseError::BadNameAddr),
                "{:?}",
                bad
            );
        }
    }

    #[test]
    fn ip_literals() {
        assert_eq!(parse_ip(b"[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip(b"::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip(b"192.0.2.1"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(parse_ip(b"example.com"), None);
        assert_eq!(parse_ip(b"\xff"), None);
    }
}
