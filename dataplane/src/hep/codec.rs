//! HEPv3 (HEP3/EEP) encoding and decoding: a pure function of one captured message.
//!
//! Layout (sipcapture "HEP3 Network Protocol Specification"): the ASCII id `HEP3`,
//! the total length (u16, header included), then chunks. Each chunk is vendor id
//! (u16, 0 = generic), type id (u16), length (u16, including its own 6-byte
//! header) and the value; every integer is big-endian.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// HEP protocol type of SIP (chunk 0x000b).
pub const PROTO_SIP: u8 = 1;
/// IP protocol number of UDP (chunk 0x0002).
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of TCP (chunk 0x0002).
pub const IPPROTO_TCP: u8 = 6;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Generic chunk type ids (vendor 0).
pub mod chunk {
    pub const IP_FAMILY: u16 = 0x0001;
    pub const IP_PROTO: u16 = 0x0002;
    pub const SRC_IP4: u16 = 0x0003;
    pub const DST_IP4: u16 = 0x0004;
    pub const SRC_IP6: u16 = 0x0005;
    pub const DST_IP6: u16 = 0x0006;
    pub const SRC_PORT: u16 = 0x0007;
    pub const DST_PORT: u16 = 0x0008;
    pub const TIME_SEC: u16 = 0x0009;
    pub const TIME_USEC: u16 = 0x000a;
    pub const PROTO_TYPE: u16 = 0x000b;
    pub const AGENT_ID: u16 = 0x000c;
    pub const AUTH_KEY: u16 = 0x000e;
    pub const PAYLOAD: u16 = 0x000f;
    pub const CORRELATION_ID: u16 = 0x0011;
}

/// One captured message, as HEP describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capture<'a> {
    /// Sender of the captured datagram.
    pub src: SocketAddr,
    /// Receiver of the captured datagram.
    pub dst: SocketAddr,
    /// IP protocol number (17 UDP, 6 TCP).
    pub ip_proto: u8,
    /// Wall-clock capture time: seconds since the Unix epoch.
    pub ts_sec: u32,
    /// Microseconds within `ts_sec`.
    pub ts_usec: u32,
    /// HEP protocol type (1 = SIP).
    pub proto_type: u8,
    /// Capture agent id.
    pub agent_id: u32,
    /// Auth key chunk; `None` leaves it out.
    pub auth_key: Option<&'a [u8]>,
    /// Correlation id (the Call-ID); `None` leaves it out.
    pub correlation_id: Option<&'a [u8]>,
    /// The captured message.
    pub payload: &'a [u8],
}

/// The packet would exceed HEP's 16-bit length; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HEP packet longer than 65535 bytes")]
pub struct TooLong;

/// Appends the HEPv3 packet of `c` to `out`. On error `out` is left as it was.
///
/// Addresses of mixed families are both written as IPv6 (v4-mapped).
pub fn encode(c: &Capture<'_>, out: &mut Vec<u8>) -> Result<(), TooLong> {
    let start = out.len();
    out.extend_from_slice(b"HEP3\0\0");
    let (src, dst) = match (c.src.ip(), c.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(v6(s)), IpAddr::V6(v6(d))),
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put(out, chunk::IP_FAMILY, &[AF_INET]);
            put(out, chunk::IP_PROTO, &[c.ip_proto]);
            put(out, chunk::SRC_IP4, &s.octets());
            put(out, chunk::DST_IP4, &d.octets());
        }
        (s, d) => {
            put(out, chunk::IP_FAMILY, &[AF_INET6]);
            put(out, chunk::IP_PROTO, &[c.ip_proto]);
            put(out, chunk::SRC_IP6, &v6(s).octets());
            put(out, chunk::DST_IP6, &v6(d).octets());
        }
    }
    put(out, chunk::SRC_PORT, &c.src.port().to_be_bytes());
    put(out, chunk::DST_PORT, &c.dst.port().to_be_bytes());
    put(out, chunk::TIME_SEC, &c.ts_sec.to_be_bytes());
    put(out, chunk::TIME_USEC, &c.ts_usec.to_be_bytes());
    put(out, chunk::PROTO_TYPE, &[c.proto_type]);
    put(out, chunk::AGENT_ID, &c.agent_id.to_be_bytes());
    if let Some(k) = c.auth_key {
        put(out, chunk::AUTH_KEY, k);
    }
    put(out, chunk::PAYLOAD, c.payload);
    if let Some(id) = c.correlation_id {
        put(out, chunk::CORRELATION_ID, id);
    }
    let Ok(total) = u16::try_from(out.len() - start) else {
        out.truncate(start);
        return Err(TooLong);
    };
    out[start + 4..start + 6].copy_from_slice(&total.to_be_bytes());
    Ok(())
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// One generic chunk. A value too long for the u16 length gets a wrong length here,
/// but then the whole packet is too long too and `encode` discards it.
fn put(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = u16::try_from(value.len() + 6).unwrap_or(u16::MAX);
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a HEP3 packet")]
    Magic,
    #[error("length field does not match the packet")]
    Length,
    #[error("malformed chunk")]
    Chunk,
    #[error("mandatory chunk missing")]
    Missing,
}

/// Decodes one HEPv3 packet (generic chunks; unknown and vendor chunks are skipped).
/// Never panics, whatever the input.
pub fn decode(b: &[u8]) -> Result<Capture<'_>, DecodeError> {
    if b.get(..4) != Some(b"HEP3") {
        return Err(DecodeError::Magic);
    }
    let total = b.get(4..6).map(be16).ok_or(DecodeError::Length)?;
    if usize::from(total) != b.len() {
        return Err(DecodeError::Length);
    }
    let mut family = None;
    let mut ip_proto = None;
    let (mut src_ip, mut dst_ip) = (None, None);
    let (mut src_port, mut dst_port) = (None, None);
    let (mut ts_sec, mut ts_usec) = (None, None);
    let mut proto_type = None;
    let mut agent_id = None;
    let mut auth_key = None;
    let mut correlation_id = None;
    let mut payload = None;
    let mut rest = &b[6..];
    while !rest.is_empty() {
        let head = rest.get(..6).ok_or(DecodeError::Chunk)?;
        let vendor = be16(&head[0..2]);
        let ty = be16(&head[2..4]);
        let len = usize::from(be16(&head[4..6]));
        if len < 6 {
            return Err(DecodeError::Chunk);
        }
        let v = rest.get(6..len).ok_or(DecodeError::Chunk)?;
        rest = &rest[len..];
        if vendor != 0 {
            continue;
        }
        let u8v = || {
            <[u8; 1]>::try_from(v)
                .map(|a| a[0])
                .map_err(|_| DecodeError::Chunk)
        };
        let u16v = || {
            <[u8; 2]>::try_from(v)
                .map(u16::from_be_bytes)
                .map_err(|_| DecodeError::Chunk)
        };
        let u32v = || {
            <[u8; 4]>::try_from(v)
                .map(u32::from_be_bytes)
                .map_err(|_| DecodeError::Chunk)
        };
        match ty {
            chunk::IP_FAMILY => family = Some(u8v()?),
            chunk::IP_PROTO => ip_proto = Some(u8v()?),
            chunk::SRC_IP4 | chunk::DST_IP4 => {
                let a = <[u8; 4]>::try_from(v).map_err(|_| DecodeError::Chunk)?;
                let ip = Some(IpAddr::from(a));
                if ty == chunk::SRC_IP4 {
                    src_ip = ip
                } else {
                    dst_ip = ip
                }
            }
            chunk::SRC_IP6 | chunk::DST_IP6 => {
                let a = <[u8; 16]>::try_from(v).map_err(|_| DecodeError::Chunk)?;
                let ip = Some(IpAddr::from(a));
                if ty == chunk::SRC_IP6 {
                    src_ip = ip
                } else {
                    dst_ip = ip
                }
            }
            chunk::SRC_PORT => src_port = Some(u16v()?),
            chunk::DST_PORT => dst_port = Some(u16v()?),
            chunk::TIME_SEC => ts_sec = Some(u32v()?),
            chunk::TIME_USEC => ts_usec = Some(u32v()?),
            chunk::PROTO_TYPE => proto_type = Some(u8v()?),
            chunk::AGENT_ID => agent_id = Some(u32v()?),
            chunk::AUTH_KEY => auth_key = Some(v),
            chunk::PAYLOAD => payload = Some(v),
            chunk::CORRELATION_ID => correlation_id = Some(v),
            _ => {}
        }
    }
    let fam_ok = matches!(
        (family, src_ip, dst_ip),
        (Some(AF_INET), Some(IpAddr::V4(_)), Some(IpAddr::V4(_)))
            | (Some(AF_INET6), Some(IpAddr::V6(_)), Some(IpAddr::V6(_)))
    );
    if !fam_ok {
        return Err(DecodeError::Missing);
    }
    let miss = DecodeError::Missing;
    Ok(Capture {
        src: SocketAddr::new(src_ip.ok_or(miss)?, src_port.ok_or(miss)?),
        dst: SocketAddr::new(dst_ip.ok_or(miss)?, dst_port.ok_or(miss)?),
        ip_proto: ip_proto.ok_or(miss)?,
        ts_sec: ts_sec.ok_or(miss)?,
        ts_usec: ts_usec.ok_or(miss)?,
        proto_type: proto_type.ok_or(miss)?,
        agent_id: agent_id.ok_or(miss)?,
        auth_key,
        correlation_id,
        payload: payload.ok_or(miss)?,
    })
}

fn be16(b: &[u8]) -> u16 {
    match b {
        [a, c, ..] => u16::from_be_bytes([*a, *c]),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap<'a>(src: &str, dst: &str, key: Option<&'a [u8]>) -> Capture<'a> {
        Capture {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            ip_proto: IPPROTO_UDP,
            ts_sec: 0x0102_0304,
            ts_usec: 999_999,
            proto_type: PROTO_SIP,
            agent_id: 2001,
            auth_key: key,
            correlation_id: Some(b"abc@h"),
            payload: b"OPTIONS sip:a SIP/2.0\r\n\r\n",
        }
    }

    #[test]
    fn ipv4_without_key_byte_for_byte() {
        let mut out = vec![0xee]; // appends, keeps what was there
        encode(&cap("10.0.0.1:5060", "192.168.1.2:5080", None), &mut out).unwrap();
        let mut want: Vec<u8> = vec![0xee];
        want.extend_from_slice(b"HEP3");
        let body: &[&[u8]] = &[
            &[0, 0, 0, 1, 0, 7, 2],
            &[0, 0, 0, 2, 0, 7, 17],
            &[0, 0, 0, 3, 0, 10, 10, 0, 0, 1],
            &[0, 0, 0, 4, 0, 10, 192, 168, 1, 2],
            &[0, 0, 0, 7, 0, 8, 0x13, 0xc4],
            &[0, 0, 0, 8, 0, 8, 0x13, 0xd8],
            &[0, 0, 0, 9, 0, 10, 1, 2, 3, 4],
            &[0, 0, 0, 10, 0, 10, 0x00, 0x0f, 0x42, 0x3f],
            &[0, 0, 0, 11, 0, 7, 1],
            &[0, 0, 0, 12, 0, 10, 0, 0, 0x07, 0xd1],
            &[0, 0, 0, 15, 0, 31],
            b"OPTIONS sip:a SIP/2.0\r\n\r\n",
            &[0, 0, 0, 17, 0, 11],
            b"abc@h",
        ];
        let body: Vec<u8> = body.concat();
        let total = (6 + body.len()) as u16;
        want.extend_from_slice(&total.to_be_bytes());
        want.extend_from_slice(&body);
        assert_eq!(out, want);
    }

    #[test]
    fn ipv6_with_key_byte_for_byte() {
        let mut out = Vec::new();
        let c = cap("[2001:db8::1]:5060", "[::1]:9", Some(b"pw"));
        encode(&c, &mut out).unwrap();
        let mut src = vec![0, 0, 0, 5, 0, 22];
        src.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        let mut dst = vec![0, 0, 0, 6, 0, 22];
        dst.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        let body: &[&[u8]] = &[
            &[0, 0, 0, 1, 0, 7, 10],
            &[0, 0, 0, 2, 0, 7, 17],
            &src,
            &dst,
            &[0, 0, 0, 7, 0, 8, 0x13, 0xc4],
            &[0, 0, 0, 8, 0, 8, 0, 9],
            &[0, 0, 0, 9, 0, 10, 1, 2, 3, 4],
            &[0, 0, 0, 10, 0, 10, 0x00, 0x0f, 0x42, 0x3f],
            &[0, 0, 0, 11, 0, 7, 1],
            &[0, 0, 0, 12, 0, 10, 0, 0, 0x07, 0xd1],
            &[0, 0, 0, 14, 0, 8],
            b"pw",
            &[0, 0, 0, 15, 0, 31],
            b"OPTIONS sip:a SIP/2.0\r\n\r\n",
            &[0, 0, 0, 17, 0, 11],
            b"abc@h",
        ];
        let body = body.concat();
        assert_eq!(&out[..4], b"HEP3");
        assert_eq!(usize::from(be16(&out[4..6])), out.len());
        assert_eq!(&out[6..], &body[..]);
    }

    #[test]
    fn round_trips() {
        for c in [
            cap("10.0.0.1:5060", "192.168.1.2:5080", None),
            cap("10.0.0.1:5060", "192.168.1.2:5080", Some(b"secret")),
            cap("[2001:db8::1]:5060", "[::1]:9", None),
            cap("[2001:db8::1]:5060", "[::1]:9", Some(b"k")),
            Capture {
                correlation_id: None,
                ..cap("1.2.3.4:1", "5.6.7.8:2", None)
            },
        ] {
            let mut out = Vec::new();
            encode(&c, &mut out).unwrap();
            assert_eq!(decode(&out), Ok(c));
        }
    }

    #[test]
    fn mixed_families_become_v4_mapped_v6() {
        let c = cap("10.0.0.1:5060", "[::1]:9", None);
        let mut out = Vec::new();
        encode(&c, &mut out).unwrap();
        let d = decode(&out).unwrap();
        assert_eq!(d.src, "[::ffff:10.0.0.1]:5060".parse().unwrap());
        assert_eq!(d.dst, c.dst);
    }

    #[test]
    fn too_long_writes_nothing() {
        let big = vec![b'x'; 65_600];
        let c = Capture {
            payload: &big,
            ..cap("10.0.0.1:1", "10.0.0.2:2", None)
        };
        let mut out = b"keep".to_vec();
        assert_eq!(encode(&c, &mut out), Err(TooLong));
        assert_eq!(out, b"keep");
    }

    #[test]
    fn decode_never_panics_on_truncations_and_garbage() {
        let mut out = Vec::new();
        encode(&cap("[2001:db8::1]:5060", "[::1]:9", Some(b"k")), &mut out).unwrap();
        for n in 0..out.len() {
            assert!(decode(&out[..n]).is_err(), "len {n}");
            let mut bad = out.clone();
            bad[n] ^= 0xff;
            let _ = decode(&bad);
        }
        let mut zero_len = b"HEP3\0\x0c".to_vec();
        zero_len.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
        assert_eq!(decode(&zero_len), Err(DecodeError::Chunk));
    }
}
