//! Byte classes and small scanners of the RFC 3261 grammar (§25.1) shared by
//! the parsers. Every loop here is bounded by the length of its input.

use super::error::ParseError;

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

const fn build_param_value_table() -> [bool; 256] {
    let mut t = [true; 256];
    let stops = [b' ', b'\t', b'\r', b'\n', b';', b',', b'"'];
    let mut i = 0;
    while i < stops.len() {
        t[stops[i] as usize] = false;
        i += 1;
    }
    t
}

static PARAM_VALUE: [bool; 256] = build_param_value_table();

/// A byte of an unquoted parameter value: anything but LWS, `;`, `,` and
/// `"` (lenient: token, host and IPv6 characters all pass).
#[inline]
pub(crate) fn is_param_value(b: u8) -> bool {
    PARAM_VALUE[b as usize]
}

/// `token` character (RFC 3261 §25.1).
#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// A non-empty run of token characters.
#[inline]
pub(crate) fn is_token_str(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token(b))
}

/// Linear white space inside a header value. The framer only lets CR and LF
/// into a value as part of a fold (CRLF followed by SP/HT), so treating them
/// as white space here is exactly RFC 3261's LWS.
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

#[inline]
pub(crate) fn trim_lws_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| is_lws(b)).count();
    &s[n..]
}

#[inline]
pub(crate) fn trim_lws_end(s: &[u8]) -> &[u8] {
    let n = s.iter().rev().take_while(|&&b| is_lws(b)).count();
    &s[..s.len() - n]
}

#[inline]
pub(crate) fn trim_lws(s: &[u8]) -> &[u8] {
    trim_lws_end(trim_lws_start(s))
}

/// Index of the first byte at or after `i` that is not LWS.
#[inline]
pub(crate) fn skip_lws(s: &[u8], i: usize) -> usize {
    skip_while(s, i, is_lws)
}

/// Index just past the run of bytes at `i` for which `f` holds.
#[inline]
pub(crate) fn skip_while(s: &[u8], i: usize, f: impl Fn(u8) -> bool) -> usize {
    match s.get(i..) {
        // Iterating the sub-slice avoids a bounds check per byte.
        Some(rest) => i + rest.iter().position(|&b| !f(b)).unwrap_or(rest.len()),
        None => i,
    }
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

const fn build_host_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_';
        i += 1;
    }
    t
}

static HOST: [bool; 256] = build_host_table();

/// Host characters outside an IPv6 reference (hostname / IPv4address).
/// `_` is not in the grammar but appears in real deployments.
#[inline]
pub(crate) fn is_host_char(b: u8) -> bool {
    HOST[b as usize]
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

/// Finds line ends and header colons, classifying 64 bytes per step into
/// two bit masks (SSE2 on x86_64). Cheaper than a `memchr` call per header
/// line, whose set-up dominates on ~50-byte lines. Queries are expected to
/// move forward; a query behind the window restarts it there.
pub(crate) struct LineScanner<'a> {
    buf: &'a [u8],
    base: usize,
    nl: u64,
    colon: u64,
}

impl<'a> LineScanner<'a> {
    pub(crate) fn new(buf: &'a [u8], from: usize) -> Self {
        let mut s = LineScanner {
            buf,
            base: from,
            nl: 0,
            colon: 0,
        };
        s.load(from);
        s
    }

    fn load(&mut self, at: usize) {
        self.base = at;
        let buf = self.buf;
        (self.nl, self.colon) =
            if let Some(chunk) = buf.get(at..).and_then(<[u8]>::first_chunk::<64>) {
                masks64(chunk)
            } else if at >= buf.len() {
                (0, 0)
            } else if let Some(last) = buf.last_chunk::<64>() {
                // Near the end: classify the last 64 bytes and drop the ones
                // before `at` (0 < shift < 64 here), instead of copying.
                let shift = at - (buf.len() - 64);
                let (n, c) = masks64(last);
                (n >> shift, c >> shift)
            } else {
                // Buffers shorter than 64 bytes: zero padding matches nothing.
                let rest = &buf[at..];
                let mut tmp = [0u8; 64];
                tmp[..rest.len()].copy_from_slice(rest);
                masks64(&tmp)
            };
    }

    /// Position of the first `\n` at or after `p`.
    #[inline(always)]
    pub(crate) fn newline(&mut self, p: usize) -> Option<usize> {
        let off = p.wrapping_sub(self.base);
        if off < 64 {
            let m = self.nl & (u64::MAX << off);
            if m != 0 {
                return Some(self.base + m.trailing_zeros() as usize);
            }
        }
        self.newline_slow(p)
    }

    #[inline(never)]
    fn newline_slow(&mut self, p: usize) -> Option<usize> {
        // Either the window holding `p` has nothing left (continue after
        // it) or `p` lies outside the window (restart at `p`); both ways
        // every window scanned below starts at or after `p`.
        let mut next = if p.wrapping_sub(self.base) < 64 {
            self.base + 64
        } else {
            p
        };
        loop {
            if next >= self.buf.len() {
                return None;
            }
            self.load(next);
            if self.nl != 0 {
                return Some(self.base + self.nl.trailing_zeros() as usize);
            }
            next += 64;
        }
    }

    /// Position of the first `:` at or after `p`, provided no `\n` comes
    /// before it. `BadHeaderLine` when the line has no colon, `Truncated`
    /// when the buffer ends first.
    #[inline(always)]
    pub(crate) fn colon_in_line(&mut self, p: usize) -> Result<usize, ParseError> {
        let off = p.wrapping_sub(self.base);
        if off < 64 {
            let above = u64::MAX << off;
            let c = self.colon & above;
            let n = self.nl & above;
            // Both masks are non-zero below their highest bit only when
            // something was found; compare the first hits.
            if c != 0 && c.trailing_zeros() < n.trailing_zeros() {
                return Ok(self.base + c.trailing_zeros() as usize);
            }
            if n != 0 {
                return Err(ParseError::BadHeaderLine);
            }
        }
        self.colon_slow(p)
    }

    #[inline(never)]
    fn colon_slow(&mut self, p: usize) -> Result<usize, ParseError> {
        let mut next = if p.wrapping_sub(self.base) < 64 {
            self.base + 64
        } else {
            p
        };
        loop {
            if next >= self.buf.len() {
                return Err(ParseError::Truncated);
            }
            self.load(next);
            let (c, n) = (self.colon, self.nl);
            if c != 0 && c.trailing_zeros() < n.trailing_zeros() {
                return Ok(self.base + c.trailing_zeros() as usize);
            }
            if n != 0 {
                return Err(ParseError::BadHeaderLine);
            }
            next += 64;
        }
    }
}

/// Bit i of the first mask set when `chunk[i] == b'\n'`, of the second
/// when `chunk[i] == b':'`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
fn masks64(chunk: &[u8; 64]) -> (u64, u64) {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    // SAFETY: the cfg guarantees SSE2 at compile time; the four loads read
    // bytes 0..64 of `chunk`, and loadu has no alignment requirement.
    unsafe {
        let p = chunk.as_ptr().cast::<__m128i>();
        let v = [
            _mm_loadu_si128(p),
            _mm_loadu_si128(p.add(1)),
            _mm_loadu_si128(p.add(2)),
            _mm_loadu_si128(p.add(3)),
        ];
        let nl = _mm_set1_epi8(b'\n' as i8);
        let colon = _mm_set1_epi8(b':' as i8);
        let m = |x: __m128i, n: __m128i| _mm_movemask_epi8(_mm_cmpeq_epi8(x, n)) as u32 as u64;
        (
            m(v[0], nl) | m(v[1], nl) << 16 | m(v[2], nl) << 32 | m(v[3], nl) << 48,
            m(v[0], colon) | m(v[1], colon) << 16 | m(v[2], colon) << 32 | m(v[3], colon) << 48,
        )
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline]
fn masks64(chunk: &[u8; 64]) -> (u64, u64) {
    (mask64_swar(chunk, b'\n'), mask64_swar(chunk, b':'))
}

#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
fn mask64_swar(chunk: &[u8; 64], needle: u8) -> u64 {
    let n = u64::from_ne_bytes([needle; 8]);
    let mut m = 0u64;
    for (i, w) in chunk.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b) ^ n;
        // Exact per byte (no borrow between bytes): high bit set where x == 0.
        let z =
            !(((x & 0x7f7f_7f7f_7f7f_7f7f) + 0x7f7f_7f7f_7f7f_7f7f) | x) & 0x8080_8080_8080_8080;
        // Gather the 8 high bits into one byte.
        let bits = ((z >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56;
        m |= bits << (8 * i);
    }
    m
}

#[cfg(test)]
mod scanner_tests {
    use super::*;

    #[test]
    fn finds_every_newline_across_windows() {
        let mut buf = vec![b'a'; 300];
        let spots = [0usize, 1, 63, 64, 65, 127, 128, 200, 299];
        for &s in &spots {
            buf[s] = b'\n';
        }
        let mut sc = LineScanner::new(&buf, 0);
        let mut found = Vec::new();
        let mut p = 0;
        while let Some(i) = sc.newline(p) {
            found.push(i);
            p = i + 1;
        }
        assert_eq!(found, spots);
        // Jumps forward and backward recompute the window.
        assert_eq!(sc.newline(150), Some(200));
        assert_eq!(sc.newline(2), Some(63));
        assert_eq!(sc.newline(300), None);
        assert_eq!(LineScanner::new(b"", 0).newline(0), None);
    }

    #[test]
    fn colons_only_before_the_line_end() {
        let mut sc = LineScanner::new(b"Via: a:b\nNoColon\nX:y", 0);
        assert_eq!(sc.colon_in_line(0), Ok(3));
        assert_eq!(sc.colon_in_line(9), Err(ParseError::BadHeaderLine));
        assert_eq!(sc.colon_in_line(17), Ok(18));
        let mut sc = LineScanner::new(b"abc", 0);
        assert_eq!(sc.colon_in_line(0), Err(ParseError::Truncated));
        let mut long = vec![b'a'; 200];
        long[150] = b':';
        long[170] = b'\n';
        let mut sc = LineScanner::new(&long, 0);
        assert_eq!(sc.colon_in_line(0), Ok(150));
        assert_eq!(sc.newline(151), Some(170));
        long[100] = b'\n';
        let mut sc = LineScanner::new(&long, 0);
        assert_eq!(sc.colon_in_line(0), Err(ParseError::BadHeaderLine));
    }

    #[test]
    fn mask_matches_naive() {
        let mut chunk = [0u8; 64];
        for (i, c) in chunk.iter_mut().enumerate() {
            *c = (i * 37 % 251) as u8;
        }
        chunk[5] = b'\n';
        chunk[63] = b':';
        let naive = |needle: u8| {
            chunk
                .iter()
                .enumerate()
                .fold(0u64, |m, (i, &c)| m | (u64::from(c == needle) << i))
        };
        assert_eq!(masks64(&chunk), (naive(b'\n'), naive(b':')));
        for needle in [b'\n', b':', 0x80, 0xff, 1] {
            assert_eq!(mask64_swar(&chunk, needle), naive(needle), "{needle}");
        }
    }
}
