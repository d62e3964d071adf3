//! Byte classes and small scanners of the RFC 3261 grammar (§25.1) shared by
//! the parsers. Every loop here is bounded by the length of its input.

const fn build_token_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    t
}

static TOKEN: [bool; 256] = build_token_table();

/// `token` character (RFC 3261 §25.1).
#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// A non-empty run of token characters.
pub(crate) fn is_token_str(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token(b))
}

/// SP or HTAB.
#[inline]
pub(crate) fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Linear white space inside a header value. The framer only lets CR and LF
/// into a value as part of a fold (CRLF followed by SP/HT), so treating them
/// as white space here is exactly RFC 3261's LWS.
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

pub(crate) fn trim_lws_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| is_lws(b)).count();
    &s[n..]
}

pub(crate) fn trim_lws_end(s: &[u8]) -> &[u8] {
    let n = s.iter().rev().take_while(|&&b| is_lws(b)).count();
    &s[..s.len() - n]
}

pub(crate) fn trim_lws(s: &[u8]) -> &[u8] {
    trim_lws_end(trim_lws_start(s))
}

/// Index of the first byte at or after `i` that is not LWS.
#[inline]
pub(crate) fn skip_lws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_lws(s[i]) {
        i += 1;
    }
    i
}

/// Index just past the run of bytes at `i` for which `f` holds.
#[inline]
pub(crate) fn skip_while(s: &[u8], mut i: usize, f: impl Fn(u8) -> bool) -> usize {
    while i < s.len() && f(s[i]) {
        i += 1;
    }
    i
}

/// A decimal number of at most `max`; leading zeros are allowed (RFC 4475
/// §3.1.1.1). Returns `None` for an empty string, a non-digit or overflow.
pub(crate) fn parse_decimal(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut acc: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        acc = acc * 10 + u64::from(b - b'0');
        // Checked on every digit, so `acc` never exceeds max * 10 + 9.
        if acc > max {
            return None;
        }
    }
    Some(acc)
}

/// A port: 1 to 5 digits, at most 65535.
pub(crate) fn parse_port(s: &[u8]) -> Option<u16> {
    if s.len() > 5 {
        return None;
    }
    parse_decimal(s, 65535).map(|v| v as u16)
}

/// Index just past the closing quote of the quoted string starting at `i`
/// (`s[i]` must be `"`), honouring backslash escapes. `None` if unterminated.
pub(crate) fn skip_quoted(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < s.len() {
        let k = j + memchr::memchr2(b'"', b'\\', &s[j..])?;
        if s[k] == b'"' {
            return Some(k + 1);
        }
        // quoted-pair: the escaped byte may be anything, even a quote.
        j = k + 2;
    }
    None
}

/// Offset of `inner` within `outer`, when `inner` is a sub-slice of it.
pub(crate) fn offset_in(outer: &[u8], inner: &[u8]) -> Option<usize> {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    if i >= o && i + inner.len() <= o + outer.len() {
        Some(i - o)
    } else {
        None
    }
}

/// Host characters outside an IPv6 reference (hostname / IPv4address).
/// `_` is not in the grammar but appears in real deployments.
#[inline]
pub(crate) fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

/// Characters of an IPv6 reference between the brackets (hex, `:` and the
/// dotted IPv4 tail).
#[inline]
pub(crate) fn is_ipv6_char(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// Length of the host at the start of `s`: a bracketed IPv6 reference or a
/// run of host characters. `None` if it is empty or an IPv6 reference is
/// unterminated or contains a foreign byte.
pub(crate) fn host_len(s: &[u8]) -> Option<usize> {
    if s.first() == Some(&b'[') {
        let close = memchr::memchr(b']', s)?;
        if close < 3 || !s[1..close].iter().all(|&b| is_ipv6_char(b)) {
            return None;
        }
        Some(close + 1)
    } else {
        let n = skip_while(s, 0, is_host_char);
        (n > 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_bounds_and_leading_zeros() {
        assert_eq!(parse_decimal(b"0068", 255), Some(68));
        assert_eq!(parse_decimal(b"256", 255), None);
        assert_eq!(parse_decimal(b"", 255), None);
        assert_eq!(parse_decimal(b"1a", 255), None);
        assert_eq!(
            parse_decimal(b"99999999999999999999999999999", u64::from(u32::MAX)),
            None
        );
        assert_eq!(parse_port(b"65535"), Some(65535));
        assert_eq!(parse_port(b"65536"), None);
        assert_eq!(parse_port(b"000080"), None);
    }

    #[test]
    fn quoted_strings_and_escapes() {
        assert_eq!(skip_quoted(br#""a\"b" x"#, 0), Some(6));
        assert_eq!(skip_quoted(br#""a\\" x"#, 0), Some(5));
        assert_eq!(skip_quoted(br#""unterminated"#, 0), None);
        assert_eq!(skip_quoted(br#""ends in escape\"#, 0), None);
    }

    #[test]
    fn hosts() {
        assert_eq!(host_len(b"[2001:db8::1]:5060"), Some(13));
        assert_eq!(host_len(b"[2001:db8::1"), None);
        assert_eq!(host_len(b"[zz]"), None);
        assert_eq!(host_len(b"example.com;lr"), Some(11));
        assert_eq!(host_len(b";lr"), None);
    }

    #[test]
    fn offsets_of_subslices() {
        let b = b"hello world";
        assert_eq!(offset_in(b, &b[6..]), Some(6));
        assert_eq!(offset_in(b, &b[11..]), Some(11));
        assert_eq!(offset_in(&b[..5], &b[6..]), None);
    }
}
