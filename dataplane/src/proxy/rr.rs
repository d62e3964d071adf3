//! The Record-Route entries sipvane writes into a dialog-forming request.
//!
//! One entry, `<sip:ADVERTISE:PRIVATE_PORT;lr>`, when the caller and the
//! callee use the same transport: the worker's private UDP port, so
//! in-dialog requests over UDP come straight back to the worker holding the
//! dialog. When the transport changes (a TCP or TLS caller to a UDP callee,
//! a UDP caller to a TCP destination, ...) two entries, as Kamailio's
//! `enable_double_rr`: the top one faces the callee (its route set starts
//! there), the second the caller (its route set is the reverse), each naming
//! the transport and port of its side — UDP the private port, TCP the
//! public port with `;transport=tcp`, TLS the TLS port with
//! `;transport=tls`. A peer that follows RFC 3263 then comes back over the
//! transport it uses (a TLS caller never sends its BYE unencrypted), and
//! loose routing pops both entries ([`crate::route::own_entries`]).
//!
//! A caller on a stream connection gets the flow token on the entry facing
//! it ([`super::flow_token`]).

use std::net::SocketAddr;

use smallvec::SmallVec;

use super::branch::Minter;
use super::config::ProxyConfig;
use super::{flow_token, SOCK_PRIVATE, SOCK_PUBLIC};
use crate::worker::{SocketId, SOCK_TCP, SOCK_TCP_OUT, SOCK_TLS_OUT};

/// The transport of one side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leg {
    Udp,
    Tcp,
    Tls,
}

impl Leg {
    /// The transport of a message sent to or received from `socket`; `tls`:
    /// the connection behind [`SOCK_TCP`] runs TLS.
    pub(super) fn of(socket: SocketId, tls: bool) -> Leg {
        match socket {
            SOCK_TCP if tls => Leg::Tls,
            SOCK_TCP | SOCK_TCP_OUT => Leg::Tcp,
            SOCK_TLS_OUT => Leg::Tls,
            SOCK_PUBLIC | SOCK_PRIVATE => Leg::Udp,
            _ => Leg::Udp,
        }
    }

    pub(super) fn stream(self) -> bool {
        self != Leg::Udp
    }
}

/// One Record-Route value, token included.
pub(super) type Entry = SmallVec<[u8; 160]>;

/// This worker's Record-Route URIs, one per transport.
pub(super) struct Entries {
    udp: Vec<u8>,
    tcp: Vec<u8>,
    /// `None` without a TLS listener: a TLS callee is then given the UDP
    /// entry (there is no TLS port of ours it could come back to).
    tls: Option<Vec<u8>>,
}

impl Entries {
    pub(super) fn new(cfg: &ProxyConfig, private_port: u16) -> Entries {
        let adv = &cfg.advertise;
        Entries {
            udp: format!("sip:{adv}:{private_port};lr").into_bytes(),
            tcp: format!("sip:{adv}:{};transport=tcp;lr", cfg.public_port).into_bytes(),
            tls: cfg
                .tls_port
                .map(|p| format!("sip:{adv}:{p};transport=tls;lr").into_bytes()),
        }
    }

    /// The entry facing a peer on `leg`, and the leg it really names.
    fn facing(&self, leg: Leg) -> (&[u8], Leg) {
        match (leg, &self.tls) {
            (Leg::Tcp, _) => (&self.tcp, Leg::Tcp),
            (Leg::Tls, Some(tls)) => (tls, Leg::Tls),
            (Leg::Udp, _) | (Leg::Tls, None) => (&self.udp, Leg::Udp),
        }
    }

    /// The entries of a request from a caller on `up` to a callee on
    /// `down`, top first. `flow`: the caller's address and From-tag, when
    /// `up` is a stream connection (its token goes on the entry facing it).
    pub(super) fn write(
        &self,
        minter: &Minter,
        up: Leg,
        down: Leg,
        flow: Option<(SocketAddr, &[u8])>,
    ) -> SmallVec<[Entry; 2]> {
        let (callee_side, down) = self.facing(down);
        let (caller_side, up_named) = self.facing(up);
        let with_flow = |entry: &[u8]| match flow {
            Some((peer, tag)) if up.stream() => {
                flow_token::record_route(minter, entry, peer, up == Leg::Tls, tag)
            }
            _ => Entry::from_slice(entry),
        };
        let mut out = SmallVec::new();
        if up_named == down {
            // Same transport: one entry, the private UDP port as ever.
            out.push(with_flow(&self.udp));
        } else {
            out.push(Entry::from_slice(callee_side));
            out.push(with_flow(caller_side));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tls_port: Option<u16>) -> Entries {
        let cfg = ProxyConfig {
            advertise: "192.0.2.1".into(),
            public_port: 5060,
            tls_port,
            ..ProxyConfig::default()
        };
        Entries::new(&cfg, 5071)
    }

    fn text(v: &SmallVec<[Entry; 2]>) -> Vec<String> {
        v.iter()
            .map(|e| String::from_utf8(e.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn one_entry_on_one_transport_two_when_it_changes() {
        let m = Minter::new([1, 2, 3, 4], 1);
        let e = entries(Some(5081));
        let peer: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let flow = Some((peer, &b"ftag"[..]));
        // UDP to UDP: the private port, no token.
        assert_eq!(
            text(&e.write(&m, Leg::Udp, Leg::Udp, None)),
            ["sip:192.0.2.1:5071;lr"]
        );
        // TCP to TCP, TLS to TLS: one entry with the caller's token.
        for leg in [Leg::Tcp, Leg::Tls] {
            let one = text(&e.write(&m, leg, leg, flow));
            assert_eq!(one.len(), 1);
            assert!(
                one[0].starts_with("sip:192.0.2.1:5071;lr;sv-flow="),
                "{one:?}"
            );
        }
        // UDP caller to a TCP callee: the callee's side (top) over TCP.
        assert_eq!(
            text(&e.write(&m, Leg::Udp, Leg::Tcp, None)),
            [
                "sip:192.0.2.1:5060;transport=tcp;lr",
                "sip:192.0.2.1:5071;lr"
            ]
        );
        // TCP caller to a UDP callee: the token faces the caller.
        let two = text(&e.write(&m, Leg::Tcp, Leg::Udp, flow));
        assert_eq!(two[0], "sip:192.0.2.1:5071;lr");
        assert!(
            two[1].starts_with("sip:192.0.2.1:5060;transport=tcp;lr;sv-flow="),
            "{two:?}"
        );
        // TLS caller: its side names the TLS port.
        let two = text(&e.write(&m, Leg::Tls, Leg::Udp, flow));
        assert_eq!(two[0], "sip:192.0.2.1:5071;lr");
        assert!(
            two[1].starts_with("sip:192.0.2.1:5081;transport=tls;lr;sv-flow="),
            "{two:?}"
        );
        // TCP caller to a TLS destination.
        let two = text(&e.write(&m, Leg::Tcp, Leg::Tls, flow));
        assert_eq!(two[0], "sip:192.0.2.1:5081;transport=tls;lr");
        assert!(two[1].starts_with("sip:192.0.2.1:5060;transport=tcp;lr;sv-flow="));
        // Without a TLS listener a TLS callee gets the UDP entry: a UDP
        // caller then needs one entry only.
        let e = entries(None);
        assert_eq!(
            text(&e.write(&m, Leg::Udp, Leg::Tls, None)),
            ["sip:192.0.2.1:5071;lr"]
        );
    }
}
