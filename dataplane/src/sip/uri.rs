//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), zero-copy.

use super::chars::{host_len, parse_port};
use super::error::ParseError;
use super::header::param;

/// A parsed URI. Components keep their escapes (`%41` stays `%41`):
/// unescaping is the application's business (RFC 4475 §3.1.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    /// `sip`, `sips` or `tel`, as written (compare case-insensitively).
    pub scheme: &'a [u8],
    /// User part; for `tel` URIs the subscriber number.
    pub user: Option<&'a [u8]>,
    /// The part after `user:` in the userinfo (deprecated but parsed).
    pub password: Option<&'a [u8]>,
    /// Host; IPv6 references keep their brackets. Empty for `tel` URIs.
    pub host: &'a [u8],
    /// Port, when written.
    pub port: Option<u16>,
    /// URI parameters from the first `;` (inclusive) to `?` or the end.
    pub params: &'a [u8],
    /// The part after `?`, without the `?`.
    pub headers: Option<&'a [u8]>,
}

/// Bytes that never appear in a URI as written in a message: controls,
/// space, DEL and the delimiters that enclose URIs. Everything else is left
/// to the component rules (which are deliberately permissive: RFC 4475
/// §3.1.1.2 puts almost any character in user and password).
fn forbidden(b: u8) -> bool {
    b <= b' ' || b == 0x7f || matches!(b, b'<' | b'>' | b'"')
}

impl<'a> Uri<'a> {
    /// Parses a URI. Unknown schemes are [`ParseError::UnsupportedScheme`]
    /// (the answer is 416); structural problems are [`ParseError::BadUri`].
    pub fn parse(s: &'a [u8]) -> Result<Uri<'a>, ParseError> {
        let bad = ParseError::BadUri;
        if s.is_empty() || s.iter().any(|&b| forbidden(b)) {
            return Err(bad);
        }
        // scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
        let colon = memchr::memchr(b':', s).ok_or(bad)?;
        let scheme = &s[..colon];
        let scheme_ok = scheme.first().is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return Err(bad);
        }
        let rest = &s[colon + 1..];
        if scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips") {
            Self::parse_sip(scheme, rest)
        } else if scheme.eq_ignore_ascii_case(b"tel") {
            let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
            if end == 0 {
                return Err(bad);
            }
            Ok(Uri {
                scheme,
                user: Some(&rest[..end]),
                password: None,
                host: &[],
                port: None,
                params: &rest[end..],
                headers: None,
            })
        } else {
            Err(ParseError::UnsupportedScheme)
        }
    }

    fn parse_sip(scheme: &'a [u8], rest: &'a [u8]) -> Result<Uri<'a>, ParseError> {
        let bad = ParseError::BadUri;
        // '@' is allowed neither in the user, the password, the parameters
        // nor the headers (all must escape it), so the first one ends the
        // userinfo even when the user contains ';' or '?' (RFC 4475 §3.1.1.9).
        let (user, password, hostport) = match memchr::memchr(b'@', rest) {
            Some(at) => {
                let userinfo = &rest[..at];
                let (user, password) = match memchr::memchr(b':', userinfo) {
                    Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                    None => (userinfo, None),
                };
                if user.is_empty() {
                    return Err(bad);
                }
                (Some(user), password, &rest[at + 1..])
            }
            None => (None, None, rest),
        };
        let hl = host_len(hostport).ok_or(bad)?;
        let host = &hostport[..hl];
        let mut i = hl;
        let mut port = None;
        if hostport.get(i) == Some(&b':') {
            let p_end = i
                + 1
                + hostport[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
            port = Some(parse_port(&hostport[i + 1..p_end]).ok_or(bad)?);
            i = p_end;
        }
        let tail = &hostport[i..];
        let q = memchr::memchr(b'?', tail).unwrap_or(tail.len());
        let params = &tail[..q];
        if !params.is_empty() && params[0] != b';' {
            return Err(bad);
        }
        let headers = (q < tail.len()).then(|| &tail[q + 1..]);
        Ok(Uri {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// Looks up a URI parameter (case-insensitive name), see [`param`].
    pub fn param(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        param(self.params, name)
    }

    /// Whether the URI carries `;lr` (loose routing, RFC 3261 §16.12).
    pub fn has_lr(&self) -> bool {
        self.param(b"lr").is_some()
    }

    /// `sips:` scheme.
    pub fn is_sips(&self) -> bool {
        self.scheme.eq_ignore_ascii_case(b"sips")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sip_uri() {
        let u = Uri::parse(b"sip:alice:secret@[2001:db8::1]:5070;transport=tcp;lr?subject=x&h=y")
            .unwrap();
        assert_eq!(u.scheme, b"sip");
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.password, Some(&b"secret"[..]));
        assert_eq!(u.host, b"[2001:db8::1]");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.params, b";transport=tcp;lr");
        assert_eq!(u.headers, Some(&b"subject=x&h=y"[..]));
        assert!(u.has_lr());
        assert_eq!(u.param(b"TRANSPORT"), Some(Some(&b"tcp"[..])));
        assert!(!u.is_sips());
    }

    #[test]
    fn host_only_and_params() {
        let u = Uri::parse(b"SIPS:example.com;maddr=10.0.0.1").unwrap();
        assert!(u.is_sips());
        assert_eq!(u.user, None);
        assert_eq!(u.host, b"example.com");
        assert_eq!(u.port, None);
        assert_eq!(u.param(b"maddr"), Some(Some(&b"10.0.0.1"[..])));
        assert!(!u.has_lr());
    }

    #[test]
    fn unusual_but_valid_users() {
        let u = Uri::parse(b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com").unwrap();
        assert_eq!(
            u.user,
            Some(&b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"[..])
        );
        assert_eq!(
            u.password,
            Some(&b"&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"[..])
        );
        assert_eq!(u.host, b"example.com");
        let u = Uri::parse(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user, Some(&b"user;par=u%40example.net"[..]));
        assert_eq!(u.host, b"example.com");
        assert_eq!(u.params, b"");
    }

    #[test]
    fn tel_and_unknown_schemes() {
        let u = Uri::parse(b"tel:+1-201-555-0123;phone-context=example.com").unwrap();
        assert_eq!(u.user, Some(&b"+1-201-555-0123"[..]));
        assert_eq!(u.host, b"");
        assert_eq!(u.param(b"phone-context"), Some(Some(&b"example.com"[..])));
        assert_eq!(
            Uri::parse(b"nobodyKnowsThisScheme:totallyopaquecontent"),
            Err(ParseError::UnsupportedScheme)
        );
    }

    #[test]
    fn rejects() {
        for bad in [
            &b""[..],
            b"<sip:user@example.com>",
            b"sip:user@example.com; lr",
            b"sip:",
            b"sip:@host",
            b"sip:user@",
            b"sip:host:port",
            b"sip:host:70000",
            b"sip:host junk",
            b"sip:[::1",
            b"1sip:host",
            b"nocolon",
            b"tel:",
            b"sip:host\"",
        ] {
            assert_eq!(Uri::parse(bad), Err(ParseError::BadUri), "{:?}", bad);
        }
    }
}
