//! Flow tokens in the Record-Route (RFC 5626 §5.3, RFC 5923 style): a request
//! that came over a TCP connection is record-routed with
//! `;sv-flow=TOKEN`, TOKEN naming the connection's peer (address and port)
//! under a keyed MAC that also covers the request's From-tag. An in-dialog
//! request that comes back through that Record-Route entry from the other
//! side — its To-tag is that From-tag (Kamailio's `ftag` test of direction) —
//! is then sent over the same connection, whatever the Request-URI (the
//! caller's Contact, often a private address behind a NAT that nobody could
//! connect to) says. A request from the caller (its From-tag, not its To-tag,
//! is the caller's) fails the MAC and is routed by its route set as usual,
//! even over a new connection.
//!
//! Forged or stale tokens (another process's key, an edited value) are
//! ignored: the request is routed by its Request-URI as without a token. The
//! MAC key is the worker's per-start secret, so tokens do not survive a
//! restart; the dialog's requests then fall back to the Contact.

use std::net::{IpAddr, SocketAddr};

use smallvec::SmallVec;

use super::branch::Minter;
use crate::sip::header::param;
use crate::sip::{HeaderName, Message, Uri};

/// The Record-Route parameter carrying the token.
pub const PARAM: &[u8] = b"sv-flow";
const DOMAIN: &[u8] = b"flow";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// `record_route` (`sip:host:port;lr`) with the flow token of `peer` for the
/// dialog whose caller's From-tag is `from_tag` appended.
pub fn record_route(
    minter: &Minter,
    record_route: &[u8],
    peer: SocketAddr,
    from_tag: &[u8],
) -> SmallVec<[u8; 160]> {
    let mut out = SmallVec::new();
    out.extend_from_slice(record_route);
    out.push(b';');
    out.extend_from_slice(PARAM);
    out.push(b'=');
    let raw = raw(peer);
    let mac = mac_of(minter, &raw, from_tag);
    for b in raw.iter().chain(mac.iter()) {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
    out
}

/// The peer a token names, if sipvane (this start) made it for the dialog
/// whose caller's From-tag is `tag`.
pub fn open(minter: &Minter, token: &[u8], tag: &[u8]) -> Option<SocketAddr> {
    let mut bytes: SmallVec<[u8; 32]> = SmallVec::new();
    if !token.len().is_multiple_of(2) || token.len() > 64 {
        return None;
    }
    for pair in token.chunks_exact(2) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        bytes.push((hi << 4 | lo) as u8);
    }
    let (raw, mac) = bytes.split_at(bytes.len().checked_sub(8)?);
    let peer = match raw.len() {
        6 => SocketAddr::new(
            IpAddr::from(<[u8; 4]>::try_from(&raw[..4]).ok()?),
            u16::from_be_bytes([raw[4], raw[5]]),
        ),
        18 => SocketAddr::new(
            IpAddr::from(<[u8; 16]>::try_from(&raw[..16]).ok()?),
            u16::from_be_bytes([raw[16], raw[17]]),
        ),
        _ => return None,
    };
    (mac_of(minter, raw, tag) == mac).then_some(peer)
}

fn mac_of(minter: &Minter, raw: &[u8], tag: &[u8]) -> [u8; 8] {
    let mut data: SmallVec<[u8; 96]> = SmallVec::new();
    data.extend_from_slice(raw);
    data.extend_from_slice(tag);
    minter.mac(DOMAIN, &data).to_be_bytes()
}

/// The connection an in-dialog request with To-tag `to_tag` must leave on:
/// its first Route entry is `ours` (this worker's Record-Route) and carries a
/// token made for the dialog of a caller whose From-tag is that To-tag, i.e.
/// the request goes towards the caller.
pub fn target(
    minter: &Minter,
    msg: &Message<'_>,
    to_tag: &[u8],
    ours: impl Fn(&Uri<'_>) -> bool,
) -> Option<SocketAddr> {
    let first = msg.values(HeaderName::Route).next()?;
    let uri = crate::route::route_uri(first)?;
    if !ours(&uri) {
        return None;
    }
    let token = param(uri.params, PARAM)??;
    open(minter, token, to_tag)
}

fn raw(peer: SocketAddr) -> SmallVec<[u8; 18]> {
    let mut raw = SmallVec::new();
    match peer.ip() {
        IpAddr::V4(ip) => raw.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => raw.extend_from_slice(&ip.octets()),
    }
    raw.extend_from_slice(&peer.port().to_be_bytes());
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minter(k: u64) -> Minter {
        Minter::new([k, 2, 3, 4], 1)
    }

    #[test]
    fn a_token_opens_to_its_peer_only_under_its_key() {
        let m = minter(1);
        for peer in ["203.0.113.7:40123", "[2001:db8::5]:5061"] {
            let peer: SocketAddr = peer.parse().unwrap();
            let rr = record_route(&m, b"sip:192.0.2.1:5061;lr", peer, b"ftag1");
            let text = std::str::from_utf8(&rr).unwrap();
            let token = text.split("sv-flow=").nth(1).unwrap().as_bytes();
            assert!(text.starts_with("sip:192.0.2.1:5061;lr;sv-flow="));
            assert_eq!(open(&m, token, b"ftag1"), Some(peer));
            // Another dialog's tag, another start (another key), an edited
            // token, garbage: nothing.
            assert_eq!(open(&m, token, b"ftag2"), None);
            assert_eq!(open(&minter(9), token, b"ftag1"), None);
            let mut edited = token.to_vec();
            edited[3] = if edited[3] == b'0' { b'1' } else { b'0' };
            assert_eq!(open(&m, &edited, b"ftag1"), None);
            assert_eq!(open(&m, &token[..token.len() - 1], b"ftag1"), None);
            assert_eq!(open(&m, b"zz", b"ftag1"), None);
            assert_eq!(open(&m, b"", b"ftag1"), None);
        }
    }

    #[test]
    fn target_is_the_flow_for_requests_towards_the_caller() {
        let m = minter(1);
        let caller: SocketAddr = "203.0.113.7:40123".parse().unwrap();
        // The caller's INVITE had From-tag 1.
        let rr = record_route(&m, b"sip:192.0.2.1:5061;lr", caller, b"1");
        let bye = format!(
            "BYE sip:a@192.168.1.20:5060;transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1\r\n\
             Route: <{}>\r\n\
             From: <sip:b@x>;tag=2\r\nTo: <sip:a@x>;tag=1\r\n\
             Call-ID: c\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            std::str::from_utf8(&rr).unwrap()
        );
        let msg = crate::sip::parse(bye.as_bytes()).unwrap();
        let ours = |u: &Uri<'_>| u.host == b"192.0.2.1" && u.port == Some(5061);
        // The callee's BYE: To-tag 1, the caller's.
        assert_eq!(target(&m, &msg, b"1", ours), Some(caller));
        // The caller's own BYE has the callee's tag as To-tag: routed the
        // usual way, whichever connection it came on.
        assert_eq!(target(&m, &msg, b"2", ours), None);
        // Not our entry: not our token to honour.
        assert_eq!(target(&m, &msg, b"1", |_: &Uri<'_>| false), None);
    }
}
