//! Deterministic hashing for dispatch decisions.
//!
//! Every worker and every restart must map a key to the same destination, so
//! nothing here is seeded at run time: FNV-1a 64 over the bytes, then the
//! murmur3 64-bit finaliser so that `hash % n` and rendezvous scores use
//! well-mixed bits (plain FNV is weak in its low bits for short keys).

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Streaming FNV-1a 64.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_OFFSET)
    }
}

impl Fnv {
    /// Feeds one byte.
    #[inline]
    pub fn byte(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }

    /// Feeds bytes.
    #[inline]
    pub fn bytes(&mut self, bs: &[u8]) {
        for &b in bs {
            self.byte(b);
        }
    }

    /// Final, mixed value.
    #[inline]
    pub fn finish(self) -> u64 {
        mix64(self.0)
    }
}

/// murmur3 `fmix64`: a bijection with full avalanche.
#[inline]
pub fn mix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// SplitMix64: a tiny, fast, well-distributed PRNG for shuffles and the
/// random algorithm. Seeded explicitly, never from the clock.
#[derive(Clone, Copy, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next pseudo-random value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform value in `0..n` (`n > 0`), without modulo bias worth caring
    /// about: Lemire's multiply-shift.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Hash of raw bytes (Call-ID, auth user).
#[inline]
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.bytes(b);
    h.finish()
}

/// Hash of the `user@host[:port]` identity of a SIP URI, as Kamailio's
/// dispatcher hashes From/To/R-URI: URI parameters and headers, a display name
/// and angle brackets, the scheme and a password are ignored; the host is
/// compared case-insensitively; the port counts only when it is not the
/// scheme's default (5060, or 5061 for `sips:`). Never fails: any byte string
/// hashes to something deterministic.
pub fn hash_uri(uri: &[u8]) -> u64 {
    let (user, host, port) = uri_identity(uri);
    let mut h = Fnv::default();
    if let Some(u) = user {
        h.bytes(u);
        h.byte(b'@');
    }
    for &b in host {
        h.byte(b.to_ascii_lowercase());
    }
    if let Some(p) = port {
        h.byte(b':');
        h.bytes(p);
    }
    h.finish()
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Splits a URI (optionally in name-addr form) into user, host and a
/// non-default port.
fn uri_identity(uri: &[u8]) -> (Option<&[u8]>, &[u8], Option<&[u8]>) {
    let mut s = trim(uri);
    if let Some(lt) = s.iter().position(|&b| b == b'<') {
        s = &s[lt + 1..];
        if let Some(gt) = s.iter().position(|&b| b == b'>') {
            s = &s[..gt];
        }
    }
    let mut default_port: &[u8] = b"5060";
    if let Some(colon) = s.iter().position(|&b| b == b':') {
        let scheme = &s[..colon];
        let is_scheme = !scheme.is_empty()
            && scheme
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            && scheme[0].is_ascii_alphabetic();
        if is_scheme {
            if scheme.eq_ignore_ascii_case(b"sips") {
                default_port = b"5061";
            }
            s = &s[colon + 1..];
        }
    }
    // Parameters and headers are not part of the identity; ';' cannot occur
    // in a host, and a user part with ';' (tel-style) is rare enough that
    // Kamailio ignores it too.
    let at = s.iter().rposition(|&b| b == b'@');
    let end = s
        .iter()
        .enumerate()
        .position(|(i, &b)| {
            matches!(b, b'?' | b'>') || (b == b';' && !matches!(at, Some(a) if i <= a))
        })
        .unwrap_or(s.len());
    let s = &s[..end];
    let (user, hostport) = match s.iter().rposition(|&b| b == b'@') {
        Some(a) => {
            let u = &s[..a];
            let u = match u.iter().position(|&b| b == b':') {
                Some(c) => &u[..c],
                None => u,
            };
            (Some(u), &s[a + 1..])
        }
        None => (None, s),
    };
    let (host, port) = if hostport.first() == Some(&b'[') {
        match hostport.iter().position(|&b| b == b']') {
            Some(close) => {
                let rest = &hostport[close + 1..];
                (&hostport[..=close], rest.strip_prefix(b":"))
            }
            None => (hostport, None),
        }
    } else {
        match hostport.iter().rposition(|&b| b == b':') {
            Some(c) => (&hostport[..c], Some(&hostport[c + 1..])),
            None => (hostport, None),
        }
    };
    let port = port.filter(|p| !p.is_empty() && *p != default_port);
    (user, host, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors, before mixing.
        let mut h = Fnv::default();
        h.bytes(b"");
        assert_eq!(h.0, 0xcbf29ce484222325);
        let mut h = Fnv::default();
        h.bytes(b"a");
        assert_eq!(h.0, 0xaf63dc4c8601ec8c);
        let mut h = Fnv::default();
        h.bytes(b"foobar");
        assert_eq!(h.0, 0x85944171f73967e8);
    }

    #[test]
    fn uri_identity_ignores_decoration() {
        let base = hash_uri(b"sip:alice@example.com");
        for same in [
            &b"sip:alice@example.com;transport=udp"[..],
            b"  sip:alice@EXAMPLE.com  ",
            b"\"Alice\" <sip:alice@example.com>;tag=1234",
            b"<sip:alice@example.com:5060;lr>",
            b"sip:alice:secret@example.com",
            b"sip:alice@example.com?subject=x",
            b"alice@example.com",
        ] {
            assert_eq!(hash_uri(same), base, "{}", String::from_utf8_lossy(same));
        }
        for different in [
            &b"sip:bob@example.com"[..],
            b"sip:Alice@example.com",
            b"sip:alice@example.com:5080",
            b"sips:alice@example.com:5060",
            b"sip:example.com",
        ] {
            assert_ne!(
                hash_uri(different),
                base,
                "{}",
                String::from_utf8_lossy(different)
            );
        }
        assert_eq!(
            hash_uri(b"sips:alice@example.com:5061"),
            hash_uri(b"sips:alice@example.com")
        );
        assert_eq!(hash_uri(b"sip:a@[::1]:5060"), hash_uri(b"sip:a@[::1]"));
        assert_ne!(hash_uri(b"sip:a@[::1]:5070"), hash_uri(b"sip:a@[::1]"));
    }

    #[test]
    fn garbage_never_panics() {
        for g in [
            &b""[..],
            b"<",
            b">",
            b"@",
            b":",
            b"[",
            b"sip:",
            b"sip:@",
            b"<sip:a@b",
            b"\xff\xfe",
        ] {
            let _ = hash_uri(g);
        }
    }
}
