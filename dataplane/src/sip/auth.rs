//! Credentials headers (`Authorization`, `Proxy-Authorization`, RFC 3261
//! §22): what the proxy reads from them without verifying anything.

use super::{HeaderName, Message};

/// The `username` of the request's digest credentials: Proxy-Authorization
/// first (credentials meant for a proxy), then Authorization. Quoted values
/// are returned without their quotes.
pub fn credentials_username<'a>(msg: &Message<'a>) -> Option<&'a [u8]> {
    [HeaderName::ProxyAuthorization, HeaderName::Authorization]
        .into_iter()
        .filter_map(|h| msg.header(h))
        .find_map(digest_username)
}

/// `username` from one `Digest k=v, k="v", …` credentials value.
pub fn digest_username(value: &[u8]) -> Option<&[u8]> {
    digest_params(value)?
        .find(|(name, _)| name.eq_ignore_ascii_case(b"username"))
        .and_then(|(_, val)| (!val.is_empty()).then_some(val))
}

/// The `name=value` pairs of a `Digest …` credentials or challenge value,
/// quoted values without their quotes (escapes left as written); `None`
/// when the scheme is not Digest. Iteration stops at the first malformed
/// pair.
pub fn digest_params(value: &[u8]) -> Option<DigestParams<'_>> {
    let v = value.trim_ascii();
    let scheme_end = v.iter().position(|c| c.is_ascii_whitespace())?;
    if !v[..scheme_end].eq_ignore_ascii_case(b"digest") {
        return None;
    }
    Some(DigestParams {
        rest: &v[scheme_end..],
        done: false,
    })
}

/// Iterator of [`digest_params`].
pub struct DigestParams<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> Iterator for DigestParams<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = self.rest.trim_ascii_start();
        let Some(eq) = rest.iter().position(|&c| c == b'=') else {
            self.done = true;
            return None;
        };
        let name = rest[..eq].trim_ascii();
        let rest = rest[eq + 1..].trim_ascii_start();
        let (val, after) = if let Some(q) = rest.strip_prefix(b"\"") {
            // A quoted string; `\"` escapes do not end it.
            let mut i = 0;
            while i < q.len() && q[i] != b'"' {
                i += if q[i] == b'\\' { 2 } else { 1 };
            }
            let end = i.min(q.len());
            (&q[..end], q.get(end + 1..).unwrap_or(&[]))
        } else {
            let end = rest.iter().position(|&c| c == b',').unwrap_or(rest.len());
            (rest[..end].trim_ascii(), &rest[end..])
        };
        match after.trim_ascii_start().strip_prefix(b",") {
            Some(next) => self.rest = next,
            None => self.done = true,
        }
        Some((name, val))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_username_quoted_or_not() {
        assert_eq!(
            digest_username(b"Digest realm=\"a\", username=\"alice\", nonce=\"x\""),
            Some(&b"alice"[..])
        );
        assert_eq!(
            digest_username(b"digest USERNAME=bob,realm=a"),
            Some(&b"bob"[..])
        );
        assert_eq!(
            digest_username(b"Digest realm=\"a,\\\"b\", username=\"c\""),
            Some(&b"c"[..])
        );
        assert_eq!(digest_username(b"Basic YWxhZGRpbg=="), None);
        assert_eq!(digest_username(b"Digest realm=\"a\""), None);
        assert_eq!(digest_username(b"Digest username=\"\""), None);
    }

    #[test]
    fn proxy_authorization_comes_first() {
        let raw = b"INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
            Authorization: Digest username=\"ua\"\r\nProxy-Authorization: Digest username=\"px\"\r\n\
            From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let msg = crate::sip::parse(raw).unwrap();
        assert_eq!(credentials_username(&msg), Some(&b"px"[..]));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut v = b"Digest ".to_vec();
            v.extend_from_slice(&bytes);
            let _ = digest_username(&v);
        }
    }
}
