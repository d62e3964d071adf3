//! The data-plane half of a restart hand-over (docs/deployment.md, "Restarts
//! and upgrades").
//!
//! The running process hands its SIP sockets to its successor and stops
//! reading them ([`super::Pool::handover`]); the successor reads all traffic
//! and relays what belongs to the old process's transactions back to it over
//! a Unix datagram socket ([`super::Outbox::to_predecessor`]), where
//! [`Injector::inject`] feeds it to the worker that owns it. This module is
//! the relay's frame: which worker and socket, the original source, the bytes.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::shell::{Handoff, Shared};
use super::SocketId;

/// Frame version; a frame of another version is dropped.
const VERSION: u8 = 1;
/// version, worker, socket, IPv6 (or v4-mapped) address, port.
pub const HEADER: usize = 1 + 1 + 1 + 16 + 2;

/// Writes one relay frame into `out` (cleared first).
pub fn encode(worker: u8, socket: SocketId, src: SocketAddr, data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(VERSION);
    out.push(worker);
    out.push(socket);
    let ip = match src.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(data);
}

/// A relay frame read back: `(worker, socket, source, bytes)`; `None` for
/// anything malformed.
pub fn decode(frame: &[u8]) -> Option<(u8, SocketId, SocketAddr, &[u8])> {
    if frame.len() < HEADER || frame[0] != VERSION {
        return None;
    }
    let octets: [u8; 16] = frame.get(3..19)?.try_into().ok()?;
    let v6 = Ipv6Addr::from(octets);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    let port = u16::from_be_bytes([frame[19], frame[20]]);
    Some((
        frame[1],
        frame[2],
        SocketAddr::new(ip, port),
        &frame[HEADER..],
    ))
}

/// Feeds datagrams relayed by the successor to this process's workers; cheap
/// to clone, usable from any thread.
#[derive(Clone)]
pub struct Injector {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector").finish_non_exhaustive()
    }
}

impl Injector {
    /// Queues a datagram for `worker` as if another worker had handed it over
    /// (its core sees `socket` and `src`). `false` when the worker is unknown
    /// or its queue is full (the datagram is dropped and counted).
    pub fn inject(&self, worker: usize, socket: SocketId, src: SocketAddr, data: &[u8]) -> bool {
        let Some(w) = self.shared.workers.get(worker) else {
            return false;
        };
        let h = Handoff {
            socket,
            src,
            data: data.into(),
        };
        if w.queue.push(h).is_err() {
            w.stats.relay_drops.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        w.wake.wake();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_for_both_families() {
        let mut buf = Vec::new();
        for src in [
            "127.0.0.1:5060".parse::<SocketAddr>().unwrap(),
            "[2001:db8::7]:5070".parse().unwrap(),
        ] {
            encode(3, 1, src, b"SIP/2.0 200 OK\r\n", &mut buf);
            assert_eq!(decode(&buf), Some((3, 1, src, &b"SIP/2.0 200 OK\r\n"[..])));
        }
    }

    #[test]
    fn short_or_foreign_frames_are_rejected() {
        let mut buf = Vec::new();
        encode(0, 0, "127.0.0.1:1".parse().unwrap(), b"", &mut buf);
        assert!(decode(&buf).is_some());
        for n in 0..HEADER {
            assert_eq!(decode(&buf[..n]), None);
        }
        buf[0] = 9;
        assert_eq!(decode(&buf), None);
    }
}
