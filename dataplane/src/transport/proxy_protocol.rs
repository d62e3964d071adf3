//! The PROXY protocol preamble (HAProxy `send-proxy` v1 and `send-proxy-v2`): a
//! load balancer in front of sipvane opens each TCP connection with a header naming
//! the client's address, which then stands for the connection's peer everywhere
//! (Via `received`/`rport`, trusted sources, flood limits, HEP).
//!
//! Only connections from `[tcp] proxy_protocol_from` may, and must, start with one;
//! from anyone else a PROXY header is an error (a client must not be able to claim
//! another address). Sans-IO: [`Preamble`] is fed the first bytes of a connection and
//! says when the header is complete, what it names and where SIP starts.
//!
//! Formats: <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// How a v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 line, CRLF included (the spec's bound).
const V1_MAX: usize = 107;
/// Fixed part of a v2 header (signature, version/command, family, length).
const V2_FIXED: usize = 16;
/// Largest v2 address + TLV block accepted: addresses take at most 216 bytes
/// (AF_UNIX); HAProxy's TLVs (ALPN, authority, unique id, SSL) fit well within this.
/// Bounds what one connection may make us buffer before its first SIP byte.
const V2_MAX_BLOCK: usize = 1024;
/// Longest header this module ever buffers.
pub const MAX_HEADER: usize = V2_FIXED + V2_MAX_BLOCK;

/// Why a connection's preamble is refused; the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A connection from `proxy_protocol_from` did not start with a PROXY header.
    #[error("no PROXY header")]
    Missing,
    /// A malformed v1 line.
    #[error("malformed PROXY v1 header")]
    BadV1,
    /// A malformed v2 header (version, command, or addresses too short).
    #[error("malformed PROXY v2 header")]
    BadV2,
    /// A header longer than this module accepts.
    #[error("PROXY header too long")]
    TooLong,
    /// A PROXY header from a source not in `proxy_protocol_from`.
    #[error("PROXY header from a source not allowed to send one")]
    Unexpected,
}

/// A complete header at the start of some bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes (SIP starts right after).
    pub len: usize,
    /// The client's address; `None` when the header names none (v1 `UNKNOWN`,
    /// v2 `LOCAL` such as the balancer's own health checks, or a family other than
    /// IPv4/IPv6): the connection's own peer address stands.
    pub source: Option<SocketAddr>,
}

/// Parses a PROXY header (v1 or v2) at the start of `buf`: `Ok(None)` while
/// `buf` is a plausible but incomplete start of one.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, HeaderError> {
    if is_prefix_of(buf, &V2_SIGNATURE) {
        return Ok(None);
    }
    if buf.starts_with(&V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if is_prefix_of(buf, V1_PREFIX) {
        return Ok(None);
    }
    if buf.starts_with(V1_PREFIX) {
        return parse_v1(buf);
    }
    Err(HeaderError::Missing)
}

/// Whether `buf` could still become `sig` (a strict prefix of it, or empty).
fn is_prefix_of(buf: &[u8], sig: &[u8]) -> bool {
    buf.len() < sig.len() && sig.starts_with(buf)
}

/// Whether `buf`, the first bytes of a connection, is a PROXY header's start:
/// `None` while it cannot be told yet (a strict prefix of a signature).
pub fn sniff(buf: &[u8]) -> Option<bool> {
    if buf.starts_with(&V2_SIGNATURE) || buf.starts_with(V1_PREFIX) {
        return Some(true);
    }
    if is_prefix_of(buf, &V2_SIGNATURE) || is_prefix_of(buf, V1_PREFIX) {
        return None;
    }
    Some(false)
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, `PROXY TCP6 ...`, or
/// `PROXY UNKNOWN[ anything]\r\n`.
fn parse_v1(buf: &[u8]) -> Result<Option<Header>, HeaderError> {
    let window = buf.get(..V1_MAX.min(buf.len())).unwrap_or(buf);
    let Some(end) = memchr::memmem::find(window, b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(HeaderError::TooLong)
        } else {
            Ok(None)
        };
    };
    let line = window.get(V1_PREFIX.len()..end).ok_or(HeaderError::BadV1)?;
    let len = end + 2;
    if line.starts_with(b"UNKNOWN") {
        return Ok(Some(Header { len, source: None }));
    }
    let line = std::str::from_utf8(line).map_err(|_| HeaderError::BadV1)?;
    let mut fields = line.split(' ');
    let (proto, src, dst, sport, dport) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(p), Some(s), Some(d), Some(sp), Some(dp), None) => (p, s, d, sp, dp),
        _ => return Err(HeaderError::BadV1),
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(src.parse().map_err(|_| HeaderError::BadV1)?),
            IpAddr::V4(dst.parse().map_err(|_| HeaderError::BadV1)?),
        ),
        "TCP6" => (
            IpAddr::V6(src.parse().map_err(|_| HeaderError::BadV1)?),
            IpAddr::V6(dst.parse().map_err(|_| HeaderError::BadV1)?),
        ),
        _ => return Err(HeaderError::BadV1),
    };
    let _ = dst;
    let sport = v1_port(sport)?;
    v1_port(dport)?;
    Ok(Some(Header {
        len,
        source: Some(SocketAddr::new(src, sport)),
    }))
}

/// A v1 port: 1 to 5 decimal digits, 0..=65535 (`u16::from_str` alone would take a `+`).
fn v1_port(s: &str) -> Result<u16, HeaderError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::BadV1);
    }
    s.parse().map_err(|_| HeaderError::BadV1)
}

/// The binary v2 header: signature, version 2 + command, family + protocol, block
/// length (big-endian), then addresses and TLVs (skipped).
fn parse_v2(buf: &[u8]) -> Result<Option<Header>, HeaderError> {
    let Some(fixed) = buf.get(..V2_FIXED) else {
        return Ok(None);
    };
    let (ver_cmd, fam) = (fixed[12], fixed[13]);
    let block = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::BadV2);
    }
    if block > V2_MAX_BLOCK {
        return Err(HeaderError::TooLong);
    }
    let len = V2_FIXED + block;
    let Some(addrs) = buf.get(V2_FIXED..len) else {
        return Ok(None);
    };
    let source = match ver_cmd & 0x0f {
        // LOCAL: the balancer speaking for itself (health checks).
        0 => None,
        // PROXY
        1 => match fam >> 4 {
            1 => {
                let a = addrs.get(..12).ok_or(HeaderError::BadV2)?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                let port = u16::from_be_bytes([a[8], a[9]]);
                Some(SocketAddr::new(IpAddr::V4(ip), port))
            }
            2 => {
                let a = addrs.get(..36).ok_or(HeaderError::BadV2)?;
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&a[..16]);
                let port = u16::from_be_bytes([a[32], a[33]]);
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
            }
            // UNSPEC, AF_UNIX: no IP address to stand for the client.
            0 | 3 => None,
            _ => return Err(HeaderError::BadV2),
        },
        _ => return Err(HeaderError::BadV2),
    };
    Ok(Some(Header { len, source }))
}

/// Where the SIP bytes start once the preamble is done.
#[derive(Debug, PartialEq, Eq)]
pub enum Rest {
    /// At this offset of the bytes just fed.
    Data(usize),
    /// In these bytes (the preamble spanned several reads; rare).
    Buffered(Vec<u8>),
}

/// What feeding the preamble gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// More bytes are needed.
    Wait,
    /// The preamble is over: `source` replaces the peer's address when set; the
    /// stream's SIP bytes so far are `rest`.
    Done {
        source: Option<SocketAddr>,
        rest: Rest,
    },
}

/// The start of one inbound connection, until its SIP bytes begin.
#[derive(Debug)]
pub struct Preamble {
    /// The peer is in `proxy_protocol_from`: a header is required (else forbidden).
    required: bool,
    /// Bytes of an incomplete header (or of a start not told apart yet); at most
    /// [`MAX_HEADER`].
    buf: Vec<u8>,
}

impl Preamble {
    /// `required`: the connection comes from `proxy_protocol_from`.
    pub fn new(required: bool) -> Self {
        Preamble {
            required,
            buf: Vec::new(),
        }
    }

    /// Feeds the next bytes received.
    pub fn feed(&mut self, data: &[u8]) -> Result<Step, HeaderError> {
        let held = !self.buf.is_empty();
        if held {
            self.buf.extend_from_slice(data);
        }
        let bytes: &[u8] = if held { &self.buf } else { data };
        let done = if self.required {
            parse(bytes)?.map(|h| (h.len, h.source))
        } else {
            match sniff(bytes) {
                Some(true) => return Err(HeaderError::Unexpected),
                Some(false) => Some((0, None)),
                None => None,
            }
        };
        let Some((len, source)) = done else {
            if !held {
                // Bounded: `parse` and `sniff` only wait on fewer than MAX_HEADER bytes.
                self.buf.extend_from_slice(data);
            }
            return Ok(Step::Wait);
        };
        let rest = if held {
            let mut b = std::mem::take(&mut self.buf);
            b.drain(..len.min(b.len()));
            Rest::Buffered(b)
        } else {
            Rest::Data(len)
        };
        Ok(Step::Done { source, rest })
    }

    /// Whether a PROXY header is required (the peer is in `proxy_protocol_from`).
    pub fn required(&self) -> bool {
        self.required
    }

    /// Bytes held (for memory accounting and tests).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(block.len() as u16).to_be_bytes());
        v.extend_from_slice(block);
        v
    }

    fn v2_inet(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut b = src.to_vec();
        b.extend_from_slice(&[127, 0, 0, 1]);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&5060u16.to_be_bytes());
        v2(1, 0x11, &b)
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let h = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 5060\r\nINVITE";
        assert_eq!(
            parse(h),
            Ok(Some(Header {
                len: 43,
                source: Some(sa("192.0.2.7:40000"))
            }))
        );
        let h = b"PROXY TCP6 2001:db8::1 ::1 1 5060\r\n";
        assert_eq!(
            parse(h).unwrap().unwrap().source,
            Some(sa("[2001:db8::1]:1"))
        );
        let h = b"PROXY UNKNOWN ffff::1 ::1 1 2\r\nX";
        assert_eq!(parse(h).unwrap().unwrap().source, None);
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().len, 15);
    }

    #[test]
    fn v1_rejects_malformed_lines() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 127.0.0.1 40000\r\n"[..],
            b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 5060 9\r\n",
            b"PROXY TCP4 ::1 127.0.0.1 40000 5060\r\n",
            b"PROXY TCP6 192.0.2.7 ::1 40000 5060\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 70000 5060\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 +1 5060\r\n",
            b"PROXY TCP4  192.0.2.7 127.0.0.1 1 5060\r\n",
            b"PROXY UDP4 192.0.2.7 127.0.0.1 1 5060\r\n",
            b"PROXY \r\n",
        ] {
            assert_eq!(parse(bad), Err(HeaderError::BadV1), "{bad:?}");
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Err(HeaderError::TooLong));
    }

    #[test]
    fn incomplete_headers_wait() {
        for n in 0..43 {
            let h = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 5060\r\n";
            assert_eq!(parse(&h[..n]), Ok(None), "{n}");
        }
        let h = v2_inet([192, 0, 2, 7], 4000);
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Ok(None), "{n}");
        }
    }

    #[test]
    fn v2_inet_inet6_local_unspec() {
        let mut h = v2_inet([192, 0, 2, 7], 40000);
        let len = h.len();
        h.extend_from_slice(b"OPTIONS");
        assert_eq!(
            parse(&h),
            Ok(Some(Header {
                len,
                source: Some(sa("192.0.2.7:40000"))
            }))
        );
        let mut b = vec![0u8; 36];
        b[0] = 0x20;
        b[1] = 0x01;
        b[15] = 9;
        b[32..34].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &b)).unwrap().unwrap().source,
            Some(sa("[2001::9]:7"))
        );
        // LOCAL (health check) and UNSPEC name no client.
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().unwrap().source, None);
        assert_eq!(parse(&v2(1, 0x00, &[])).unwrap().unwrap().source, None);
        // TLVs after the addresses are skipped.
        let mut b = vec![10, 0, 0, 1, 127, 0, 0, 1, 0, 80, 0, 81];
        b.extend_from_slice(&[0x04, 0x00, 0x00]);
        let h = v2(1, 0x11, &b);
        assert_eq!(parse(&h).unwrap().unwrap().len, h.len());
    }

    #[test]
    fn v2_rejects_bad_versions_commands_and_sizes() {
        let mut h = v2_inet([1, 2, 3, 4], 1);
        h[12] = 0x11;
        assert_eq!(parse(&h), Err(HeaderError::BadV2));
        let mut h = v2_inet([1, 2, 3, 4], 1);
        h[12] = 0x22;
        assert_eq!(parse(&h), Err(HeaderError::BadV2));
        assert_eq!(parse(&v2(1, 0x11, &[0; 4])), Err(HeaderError::BadV2));
        assert_eq!(parse(&v2(1, 0x21, &[0; 12])), Err(HeaderError::BadV2));
        assert_eq!(parse(&v2(1, 0x51, &[0; 12])), Err(HeaderError::BadV2));
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&h), Err(HeaderError::TooLong));
    }

    #[test]
    fn sip_without_header_is_missing() {
        assert_eq!(
            parse(b"INVITE sip:a@b SIP/2.0\r\n"),
            Err(HeaderError::Missing)
        );
        // A keep-alive is not a v2 signature.
        assert_eq!(parse(b"\r\n\r\nOPTIONS"), Err(HeaderError::Missing));
        assert_eq!(parse(b"PRACK sip:x"), Err(HeaderError::Missing));
    }

    #[test]
    fn required_preamble_across_reads() {
        let h = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 5060\r\nOPTIONS";
        let mut p = Preamble::new(true);
        assert_eq!(p.feed(&h[..10]), Ok(Step::Wait));
        assert_eq!(p.feed(&h[10..20]), Ok(Step::Wait));
        assert_eq!(
            p.feed(&h[20..]),
            Ok(Step::Done {
                source: Some(sa("192.0.2.7:40000")),
                rest: Rest::Buffered(b"OPTIONS".to_vec())
            })
        );
        assert_eq!(p.pending(), 0);
        let mut p = Preamble::new(true);
        assert_eq!(
            p.feed(h),
            Ok(Step::Done {
                source: Some(sa("192.0.2.7:40000")),
                rest: Rest::Data(43)
            })
        );
        let mut p = Preamble::new(true);
        assert_eq!(p.feed(b"OPTIONS sip:x"), Err(HeaderError::Missing));
    }

    #[test]
    fn forbidden_preamble_passes_sip_and_refuses_headers() {
        let mut p = Preamble::new(false);
        assert_eq!(
            p.feed(b"INVITE sip:x SIP/2.0\r\n"),
            Ok(Step::Done {
                source: None,
                rest: Rest::Data(0)
            })
        );
        let mut p = Preamble::new(false);
        assert_eq!(p.feed(b"PR"), Ok(Step::Wait));
        assert_eq!(
            p.feed(b"ACK sip:x"),
            Ok(Step::Done {
                source: None,
                rest: Rest::Buffered(b"PRACK sip:x".to_vec())
            })
        );
        let mut p = Preamble::new(false);
        assert_eq!(p.feed(b"PROX"), Ok(Step::Wait));
        assert_eq!(p.feed(b"Y TCP4"), Err(HeaderError::Unexpected));
        let mut p = Preamble::new(false);
        assert_eq!(
            p.feed(&v2_inet([1, 2, 3, 4], 5)),
            Err(HeaderError::Unexpected)
        );
        // A keep-alive ping first is SIP, once told apart from a v2 signature.
        let mut p = Preamble::new(false);
        assert_eq!(p.feed(b"\r\n\r\n"), Ok(Step::Wait));
        assert_eq!(
            p.feed(b"\r\n"),
            Ok(Step::Done {
                source: None,
                rest: Rest::Buffered(b"\r\n\r\n\r\n".to_vec())
            })
        );
    }

    #[test]
    fn buffered_bytes_stay_bounded() {
        let mut p = Preamble::new(true);
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x04, 0x00]);
        assert_eq!(p.feed(&h), Ok(Step::Wait));
        for _ in 0..1023 {
            assert_eq!(p.feed(&[0]), Ok(Step::Wait));
        }
        assert!(p.pending() < MAX_HEADER);
        assert!(matches!(p.feed(&[0]), Ok(Step::Done { .. })));
    }
}
