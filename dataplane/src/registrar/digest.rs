//! HTTP Digest as SIP uses it (RFC 3261 §22, RFC 7616, RFC 8760): the
//! credentials a client sends, the response it must have computed, and the
//! challenge sipvane sends. MD5 and SHA-256, `qop=auth` (and RFC 2069
//! clients that send no qop). Pure: hashes of byte strings.

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::sip::auth::digest_params;

/// A digest algorithm sipvane verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// The name in `algorithm=` (RFC 7616 §6.1).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// The `algorithm=` value of credentials; absent means MD5.
    pub fn parse(v: &[u8]) -> Option<Algorithm> {
        if v.eq_ignore_ascii_case(b"MD5") {
            Some(Algorithm::Md5)
        } else if v.eq_ignore_ascii_case(b"SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lowercase hex of the hash of `parts` joined by `:`.
    pub fn hash_hex(self, parts: &[&[u8]]) -> String {
        fn run<D: Digest>(parts: &[&[u8]]) -> String {
            let mut d = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex(&d.finalize())
        }
        match self {
            Algorithm::Md5 => run::<Md5>(parts),
            Algorithm::Sha256 => run::<Sha256>(parts),
        }
    }
}

/// HA1 = H(username:realm:password).
pub fn ha1(alg: Algorithm, user: &[u8], realm: &[u8], password: &[u8]) -> String {
    alg.hash_hex(&[user, realm, password])
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Digest credentials from an `Authorization` / `Proxy-Authorization` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub username: &'a [u8],
    pub realm: &'a [u8],
    pub nonce: &'a [u8],
    pub uri: &'a [u8],
    pub response: &'a [u8],
    pub algorithm: Algorithm,
    /// `auth` when the client used a quality of protection; `None` for RFC
    /// 2069 clients.
    pub qop: Option<&'a [u8]>,
    pub cnonce: Option<&'a [u8]>,
    /// The nonce count as sent (8 hex digits).
    pub nc: Option<&'a [u8]>,
}

/// Why credentials were not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialsError {
    /// Not Digest, or a required parameter is missing or malformed.
    Malformed,
    /// An algorithm sipvane does not verify (e.g. `MD5-sess`).
    Algorithm,
    /// A qop other than `auth` (`auth-int` is not offered).
    Qop,
}

impl<'a> Credentials<'a> {
    pub fn parse(value: &'a [u8]) -> Result<Credentials<'a>, CredentialsError> {
        let params = digest_params(value).ok_or(CredentialsError::Malformed)?;
        let (mut username, mut realm, mut nonce, mut uri, mut response) =
            (None, None, None, None, None);
        let (mut algorithm, mut qop, mut cnonce, mut nc) = (Algorithm::Md5, None, None, None);
        for (name, val) in params {
            match name.to_ascii_lowercase().as_slice() {
                b"username" => username = Some(val),
                b"realm" => realm = Some(val),
                b"nonce" => nonce = Some(val),
                b"uri" => uri = Some(val),
                b"response" => response = Some(val),
                b"algorithm" => {
                    algorithm = Algorithm::parse(val).ok_or(CredentialsError::Algorithm)?
                }
                b"qop" => qop = Some(val),
                b"cnonce" => cnonce = Some(val),
                b"nc" => nc = Some(val),
                _ => {}
            }
        }
        if let Some(q) = qop {
            if !q.eq_ignore_ascii_case(b"auth") {
                return Err(CredentialsError::Qop);
            }
            // RFC 7616 §3.4: cnonce and nc come with qop.
            let nc_ok = nc.is_some_and(|n| n.len() == 8 && n.iter().all(u8::is_ascii_hexdigit));
            if cnonce.is_none_or(<[u8]>::is_empty) || !nc_ok {
                return Err(CredentialsError::Malformed);
            }
        }
        match (username, realm, nonce, uri, response) {
            (Some(username), Some(realm), Some(nonce), Some(uri), Some(response))
                if !username.is_empty() && !nonce.is_empty() =>
            {
                Ok(Credentials {
                    username,
                    realm,
                    nonce,
                    uri,
                    response,
                    algorithm,
                    qop,
                    cnonce,
                    nc,
                })
            }
            _ => Err(CredentialsError::Malformed),
        }
    }

    /// The nonce count as a number (1 for clients without qop: each nonce
    /// may then be used once).
    pub fn nonce_count(&self) -> u32 {
        self.nc
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| u32::from_str_radix(n, 16).ok())
            .unwrap_or(1)
    }

    /// The response the client must have sent for `method`, given the
    /// account's HA1 (hex, of this algorithm).
    pub fn expected_response(&self, method: &[u8], ha1_hex: &str) -> String {
        let alg = self.algorithm;
        let ha2 = alg.hash_hex(&[method, self.uri]);
        match (self.qop, self.nc, self.cnonce) {
            (Some(qop), Some(nc), Some(cnonce)) => alg.hash_hex(&[
                ha1_hex.as_bytes(),
                self.nonce,
                nc,
                cnonce,
                qop,
                ha2.as_bytes(),
            ]),
            _ => alg.hash_hex(&[ha1_hex.as_bytes(), self.nonce, ha2.as_bytes()]),
        }
    }

    /// Whether the response proves knowledge of `ha1_hex` (compared in
    /// constant time; hex case-insensitive).
    pub fn verify(&self, method: &[u8], ha1_hex: &str) -> bool {
        let want = self.expected_response(method, ha1_hex);
        let got = self.response;
        if want.len() != got.len() {
            return false;
        }
        want.bytes()
            .zip(got)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
            == 0
    }
}

/// Writes one challenge value (`Digest realm="…", nonce="…", …`) for a
/// `WWW-Authenticate` / `Proxy-Authenticate` header.
pub fn write_challenge(alg: Algorithm, realm: &[u8], nonce: &[u8], stale: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"Digest realm=\"");
    out.extend_from_slice(realm);
    out.extend_from_slice(b"\", nonce=\"");
    out.extend_from_slice(nonce);
    out.extend_from_slice(b"\", qop=\"auth\", algorithm=");
    out.extend_from_slice(alg.name().as_bytes());
    if stale {
        out.extend_from_slice(b", stale=true");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc2617_md5_example() {
        // RFC 2617 §3.5 (HTTP, but the same arithmetic).
        let ha1 = ha1(
            Algorithm::Md5,
            b"Mufasa",
            b"testrealm@host.com",
            b"Circle Of Life",
        );
        let c = Credentials::parse(
            b"Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
              nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
              qop=auth, nc=00000001, cnonce=\"0a4f113b\", \
              response=\"6629fae49393a05397450978507c4ef1\", \
              opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert!(c.verify(b"GET", &ha1));
        assert!(!c.verify(b"POST", &ha1));
        assert_eq!(c.nonce_count(), 1);
    }

    #[test]
    fn rfc7616_sha256_example() {
        // RFC 7616 §3.9.1.
        let ha1 = ha1(
            Algorithm::Sha256,
            b"Mufasa",
            b"http-auth@example.org",
            b"Circle of Life",
        );
        let c = Credentials::parse(
            b"Digest username=\"Mufasa\", realm=\"http-auth@example.org\", uri=\"/dir/index.html\", \
              algorithm=SHA-256, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
              nc=00000001, cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", qop=auth, \
              response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\", \
              opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        )
        .unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert!(c.verify(b"GET", &ha1));
    }

    #[test]
    fn rfc2069_without_qop() {
        let ha1 = ha1(Algorithm::Md5, b"alice", b"example.com", b"pw");
        let ha2 = Algorithm::Md5.hash_hex(&[b"REGISTER", b"sip:example.com"]);
        let resp = Algorithm::Md5.hash_hex(&[ha1.as_bytes(), b"n1", ha2.as_bytes()]);
        let v = format!(
            "Digest username=\"alice\",realm=\"example.com\",nonce=\"n1\",uri=\"sip:example.com\",response=\"{}\"",
            resp.to_uppercase()
        );
        let c = Credentials::parse(v.as_bytes()).unwrap();
        assert!(c.verify(b"REGISTER", &ha1));
        assert_eq!(c.qop, None);
    }

    #[test]
    fn refuses_what_it_cannot_verify() {
        let base = "username=\"a\", realm=\"r\", nonce=\"n\", uri=\"sip:r\", response=\"00\"";
        let parse = |extra: &str| {
            Credentials::parse(format!("Digest {base}{extra}").as_bytes()).map(|_| ())
        };
        assert!(parse("").is_ok());
        assert_eq!(
            parse(", algorithm=MD5-sess").unwrap_err(),
            CredentialsError::Algorithm
        );
        assert_eq!(
            parse(", qop=auth-int, nc=00000001, cnonce=\"x\"").unwrap_err(),
            CredentialsError::Qop
        );
        assert_eq!(
            parse(", qop=auth, cnonce=\"x\"").unwrap_err(),
            CredentialsError::Malformed
        );
        assert_eq!(
            parse(", qop=auth, nc=1, cnonce=\"x\"").unwrap_err(),
            CredentialsError::Malformed
        );
        assert!(Credentials::parse(b"Basic abc").is_err());
        assert!(Credentials::parse(b"Digest username=\"a\"").is_err());
    }

    #[test]
    fn challenge_text() {
        let mut out = Vec::new();
        write_challenge(Algorithm::Sha256, b"example.com", b"abc", true, &mut out);
        assert_eq!(
            out,
            b"Digest realm=\"example.com\", nonce=\"abc\", qop=\"auth\", algorithm=SHA-256, stale=true"
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut v = b"Digest ".to_vec();
            v.extend_from_slice(&bytes);
            if let Ok(c) = Credentials::parse(&v) {
                let _ = c.verify(b"REGISTER", "00");
                let _ = c.nonce_count();
            }
        }
    }
}
