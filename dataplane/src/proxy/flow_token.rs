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
//! The token also says whether the connection runs TLS, so a request sent
//! by it says `SIP/2.0/TLS` in our Via (and a connection opened again to
//! that peer would be a TLS one). With a double Record-Route (the call
//! changes transport, [`super::rr`]) the token is on the entry facing the
//! caller, the second of our two entries in the callee's route set.
//!
//! Forged or stale tokens (another process's key, an edited value) are
//! ignored: the request is routed by its Request-URI as without a token. The
//! MAC key is the worker's per-start secret, so tokens do not survive a
//! restart; the dialog's requests then fall back to the Contact.

use std::net::{IpAddr, SocketAddr};

use smallvec::SmallVec;

use super::branch::Minter;
use super::config::ProxyConfig;
use crate::sip::header::param;
use crate::sip::{HeaderName, Message};

/// The Record-Route parameter carrying the token.
pub const PARAM: &[u8] = b"sv-flow";
const DOMAIN: &[u8] = b"flow";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// `record_route` (`sip:host:port;lr`) with the flow token of `peer` (over
/// TLS: `tls`) for the dialog whose caller's From-tag is `from_tag` appended.
pub fn record_route(
    minter: &Minter,
    record_route: &[u8],
    peer: SocketAddr,
    tls: bool,
    from_tag: &[u8],
) -> SmallVec<[u8; 160]> {
    let mut out = SmallVec::new();
    out.extend_from_slice(record_route);
    out.push(b';');
    out.extend_from_slice(PARAM);
    out.push(b'=');
    let raw = raw(peer, tls);
    let mac = mac_of(minter, &raw, from_tag);
    for b in raw.iter().chain(mac.iter()) {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
    out
}

/// The peer a token names and whether its connection runs TLS, if sipvane
/// (this start) made it for the dialog whose caller's From-tag is `tag`.
pub fn open(minter: &Minter, token: &[u8], tag: &[u8]) -> Option<(SocketAddr, bool)> {
    let mut bytes: SmallVec<[u8; 32]> = SmallVec::new();
    if !token.len().is_multiple_of(2) || token.len() > 2 * 27 {
        return None;
    }
    for pair in token.chunks_exact(2) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        bytes.push((hi << 4 | lo) as u8);
    }
    let (raw, mac) = bytes.split_at(bytes.len().checked_sub(8)?);
    let (&flags, addr) = raw.split_first()?;
    let peer = match addr.len() {
        6 => SocketAddr::new(
            IpAddr::from(<[u8; 4]>::try_from(&addr[..4]).ok()?),
            u16::from_be_bytes([addr[4], addr[5]]),
        ),
        18 => SocketAddr::new(
            IpAddr::from(<[u8; 16]>::try_from(&addr[..16]).ok()?),
            u16::from_be_bytes([addr[16], addr[17]]),
        ),
        _ => return None,
    };
    (mac_of(minter, raw, tag) == mac && flags <= 1).then_some((peer, flags == 1))
}

fn mac_of(minter: &Minter, raw: &[u8], tag: &[u8]) -> [u8; 8] {
    let mut data: SmallVec<[u8; 96]> = SmallVec::new();
    data.extend_from_slice(raw);
    data.extend_from_slice(tag);
    minter.mac(DOMAIN, &data).to_be_bytes()
}

/// Where a request that follows a flow token goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The caller's connection (its peer address).
    pub peer: SocketAddr,
    /// The connection runs TLS.
    pub tls: bool,
    /// Our own Route entries to pop (two for a double Record-Route).
    pub pop: usize,
    /// The worker one of them names (the dialog's owner), if any.
    pub worker: Option<usize>,
}

/// The connection an in-dialog request with To-tag `to_tag` must leave on:
/// its route set starts with our own Record-Route (one entry or the two of
/// a double one) and one of those entries carries a token made for the
/// dialog of a caller whose From-tag is that To-tag, i.e. the request goes
/// towards the caller.
pub fn target(
    minter: &Minter,
    msg: &Message<'_>,
    to_tag: &[u8],
    cfg: &ProxyConfig,
) -> Option<Flow> {
    let mut entries = msg.values(HeaderName::Route);
    let first = crate::route::route_uri(entries.next()?)?;
    let second = entries.next().and_then(crate::route::route_uri);
    let own = crate::route::own_entries(cfg, Some(&first), second.as_ref());
    let popped = [Some(first), second];
    popped.iter().take(own.count).flatten().find_map(|uri| {
        let token = param(uri.params, PARAM)??;
        let (peer, tls) = open(minter, token, to_tag)?;
        Some(Flow {
            peer,
            tls,
            pop: own.count,
            worker: own.worker,
        })
    })
}

/// A flags byte (1: TLS), the address and the port.
fn raw(peer: SocketAddr, tls: bool) -> SmallVec<[u8; 19]> {
    let mut raw = SmallVec::new();
    raw.push(u8::from(tls));
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
        for (peer, tls) in [("203.0.113.7:40123", false), ("[2001:db8::5]:5061", true)] {
            let peer: SocketAddr = peer.parse().unwrap();
            let rr = record_route(&m, b"sip:192.0.2.1:5061;lr", peer, tls, b"ftag1");
            let text = std::str::from_utf8(&rr).unwrap();
            let token = text.split("sv-flow=").nth(1).unwrap().as_bytes();
            assert!(text.starts_with("sip:192.0.2.1:5061;lr;sv-flow="));
            assert_eq!(open(&m, token, b"ftag1"), Some((peer, tls)));
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
        let cfg = ProxyConfig {
            advertise: "192.0.2.1".into(),
            private_ports: vec![5071, 5072],
            tls_port: Some(5081),
            ..ProxyConfig::default()
        };
        let caller: SocketAddr = "203.0.113.7:40123".parse().unwrap();
        let bye = |routes: &str| {
            format!(
                "BYE sip:a@192.168.1.20:5060;transport=tcp SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1\r\n\
                 {routes}\
                 From: <sip:b@x>;tag=2\r\nTo: <sip:a@x>;tag=1\r\n\
                 Call-ID: c\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
            )
        };
        // The caller's INVITE had From-tag 1; one entry (same transport).
        let rr = record_route(&m, b"sip:192.0.2.1:5072;lr", caller, false, b"1");
        let one = bye(&format!(
            "Route: <{}>\r\n",
            std::str::from_utf8(&rr).unwrap()
        ));
        let msg = crate::sip::parse(one.as_bytes()).unwrap();
        // The callee's BYE: To-tag 1, the caller's.
        let flow = Flow {
            peer: caller,
            tls: false,
            pop: 1,
            worker: Some(1),
        };
        assert_eq!(target(&m, &msg, b"1", &cfg), Some(flow));
        // The caller's own BYE has the callee's tag as To-tag: routed the
        // usual way, whichever connection it came on.
        assert_eq!(target(&m, &msg, b"2", &cfg), None);
        // Not our entry: not our token to honour.
        let other = ProxyConfig {
            advertise: "192.0.2.99".into(),
            local_hosts: Vec::new(),
            ..cfg.clone()
        };
        assert_eq!(target(&m, &msg, b"1", &other), None);

        // A double Record-Route: the callee-facing entry on top, the token
        // (TLS) on the second; both popped, over TLS.
        let rr = record_route(
            &m,
            b"sip:192.0.2.1:5081;transport=tls;lr",
            caller,
            true,
            b"1",
        );
        let two = bye(&format!(
            "Route: <sip:192.0.2.1:5072;lr>\r\nRoute: <{}>, <sip:10.0.0.9;lr>\r\n",
            std::str::from_utf8(&rr).unwrap()
        ));
        let msg = crate::sip::parse(two.as_bytes()).unwrap();
        let flow = Flow {
            peer: caller,
            tls: true,
            pop: 2,
            worker: Some(1),
        };
        assert_eq!(target(&m, &msg, b"1", &cfg), Some(flow));
        assert_eq!(target(&m, &msg, b"2", &cfg), None);
        // A token behind a foreign entry is not ours to follow.
        let behind = bye(&format!(
            "Route: <sip:10.0.0.9;lr>, <{}>\r\n",
            std::str::from_utf8(&rr).unwrap()
        ));
        let msg = crate::sip::parse(behind.as_bytes()).unwrap();
        assert_eq!(target(&m, &msg, b"1", &cfg), None);
    }
}
