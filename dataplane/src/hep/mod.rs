//! HEPv3 capture to a Homer collector (docs/capture.md).
//!
//! [`codec`] is the pure encoder/decoder. [`Tap`] is the per-worker sender the
//! worker shell drives: every SIP datagram received on, or sent from, one of the
//! worker's SIP sockets is encoded into one reused buffer and sent with a
//! non-blocking `send` on the worker's own UDP socket connected to the collector.
//! A full socket buffer or any error drops that capture and counts it; capture
//! never blocks the worker and, once warm, never allocates.

pub mod codec;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proxy::stats::{bump, ProxyStats};
use crate::worker::SocketId;

pub use codec::{decode, encode, Capture};

/// What `[hep]` configures.
#[derive(Clone, Debug, PartialEq)]
pub struct HepConfig {
    /// The collector (UDP).
    pub collector: SocketAddr,
    /// Capture agent id (chunk 0x000c).
    pub agent_id: u32,
    /// Auth key chunk (0x000e); `None` leaves it out.
    pub password: Option<String>,
    /// Fraction of calls captured, 0.0..=1.0, by hash of the Call-ID.
    pub sample: f64,
}

impl HepConfig {
    /// Whether the call with this Call-ID is captured: the same answer on every
    /// worker and every message, so a call is captured whole or not at all.
    pub fn sampled(&self, call_id: &[u8]) -> bool {
        if self.sample >= 1.0 {
            return true;
        }
        if self.sample <= 0.0 {
            return false;
        }
        // FNV-1a: fixed, so every worker and restart agrees.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in call_id {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Top 53 bits as a fraction in [0, 1).
        ((h >> 11) as f64 / (1u64 << 53) as f64) < self.sample
    }
}

/// One worker's capture sender.
pub struct Tap {
    cfg: Arc<HepConfig>,
    socket: UdpSocket,
    /// Local address of each captured socket, by [`SocketId`]; sockets past the end
    /// (e.g. the RTPEngine ng socket) are not captured.
    local: Vec<SocketAddr>,
    buf: Vec<u8>,
    stats: Arc<ProxyStats>,
}

impl Tap {
    /// A non-blocking UDP socket connected to the collector. `local` lists the
    /// addresses of the SIP sockets to capture, by socket id.
    pub fn new(
        cfg: Arc<HepConfig>,
        local: Vec<SocketAddr>,
        stats: Arc<ProxyStats>,
    ) -> io::Result<Tap> {
        let bind: SocketAddr = match cfg.collector {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(cfg.collector)?;
        socket.set_nonblocking(true)?;
        Ok(Tap {
            cfg,
            socket,
            local,
            buf: Vec::with_capacity(65_536),
            stats,
        })
    }

    /// A datagram received on `socket` from `src`.
    #[inline]
    pub fn received(&mut self, socket: SocketId, src: SocketAddr, data: &[u8]) {
        if let Some(&local) = self.local.get(usize::from(socket)) {
            self.capture(src, local, codec::IPPROTO_UDP, data);
        }
    }

    /// A datagram sent from `socket` to `dst`.
    #[inline]
    pub fn sent(&mut self, socket: SocketId, dst: SocketAddr, data: &[u8]) {
        if let Some(&local) = self.local.get(usize::from(socket)) {
            self.capture(local, dst, codec::IPPROTO_UDP, data);
        }
    }

    /// One SIP message framed from, or queued on, a TCP connection: `src` and
    /// `dst` are the connection's ends in that direction (the client named by a
    /// PROXY header stands for the peer).
    #[inline]
    pub fn stream(&mut self, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        self.capture(src, dst, codec::IPPROTO_TCP, data);
    }

    fn capture(&mut self, src: SocketAddr, dst: SocketAddr, ip_proto: u8, data: &[u8]) {
        // Keepalives and garbage are not SIP messages; a message without a Call-ID
        // is captured only when everything is.
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        let call_id = call_id_of(data);
        let sampled = match call_id {
            Some(id) => self.cfg.sampled(id),
            None => self.cfg.sample >= 1.0,
        };
        if !sampled {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let c = Capture {
            src,
            dst,
            ip_proto,
            ts_sec: now.as_secs() as u32,
            ts_usec: now.subsec_micros(),
            proto_type: codec::PROTO_SIP,
            agent_id: self.cfg.agent_id,
            auth_key: self.cfg.password.as_deref().map(str::as_bytes),
            correlation_id: call_id,
            payload: data,
        };
        self.buf.clear();
        let ok = encode(&c, &mut self.buf).is_ok() && self.socket.send(&self.buf).is_ok();
        bump(if ok {
            &self.stats.hep_sent
        } else {
            &self.stats.hep_dropped
        });
    }
}

/// The Call-ID of a SIP message, found by a scan of its header lines rather
/// than a full parse: capture sees every message a second time (the core has
/// parsed it already), and a full parse here doubled the parser's share of a
/// call. Compact form `i:` included; `None` when there is no Call-ID before the
/// blank line.
fn call_id_of(data: &[u8]) -> Option<&[u8]> {
    let mut rest = data;
    // Skip the start line.
    let nl = memchr::memchr(b'\n', rest)?;
    rest = &rest[nl + 1..];
    loop {
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        if line.is_empty() {
            return None;
        }
        if let Some(colon) = memchr::memchr(b':', line) {
            let name = line[..colon].trim_ascii_end();
            if name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i") {
                let value = line[colon + 1..].trim_ascii();
                return (!value.is_empty()).then_some(value);
            }
        }
        if end >= rest.len() {
            return None;
        }
        rest = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(collector: SocketAddr, sample: f64) -> Arc<HepConfig> {
        Arc::new(HepConfig {
            collector,
            agent_id: 7,
            password: Some("pw".into()),
            sample,
        })
    }

    #[test]
    fn sampling_is_per_call_and_near_the_fraction() {
        let c = cfg("127.0.0.1:9".parse().unwrap(), 0.5);
        let n = (0..10_000)
            .filter(|i| c.sampled(format!("call-{i}@host").as_bytes()))
            .count();
        assert!((4_500..5_500).contains(&n), "{n}");
        assert!(cfg("127.0.0.1:9".parse().unwrap(), 1.0).sampled(b"x"));
        assert!(!cfg("127.0.0.1:9".parse().unwrap(), 0.0).sampled(b"x"));
        assert_eq!(c.sampled(b"same"), c.sampled(b"same"));
    }

    #[test]
    fn tap_sends_received_and_sent_sip_only() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let stats = Arc::new(ProxyStats::default());
        let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let mut tap = Tap::new(
            cfg(collector.local_addr().unwrap(), 1.0),
            vec![local],
            stats.clone(),
        )
        .unwrap();
        let msg = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: cid-1\r\nCSeq: 1 OPTIONS\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nContent-Length: 0\r\n\r\n";
        tap.received(0, peer, msg);
        tap.sent(0, peer, msg);
        tap.sent(2, peer, msg); // not a captured socket
        tap.received(0, peer, b"\r\n\r\n"); // keepalive
        let mut buf = [0u8; 2048];
        let n = collector.recv(&mut buf).unwrap();
        let d = decode(&buf[..n]).unwrap();
        assert_eq!((d.src, d.dst), (peer, local));
        assert_eq!(d.correlation_id, Some(&b"cid-1"[..]));
        assert_eq!(d.auth_key, Some(&b"pw"[..]));
        assert_eq!(d.agent_id, 7);
        assert_eq!(d.payload, &msg[..]);
        let n = collector.recv(&mut buf).unwrap();
        let d = decode(&buf[..n]).unwrap();
        assert_eq!((d.src, d.dst), (local, peer));
        let s = stats.snapshot();
        assert_eq!((s.hep_sent, s.hep_dropped), (2, 0));
        // A TCP message: the connection's ends, protocol 6.
        tap.stream(peer, local, msg);
        let n = collector.recv(&mut buf).unwrap();
        let d = decode(&buf[..n]).unwrap();
        assert_eq!(
            (d.src, d.dst, d.ip_proto),
            (peer, local, codec::IPPROTO_TCP)
        );
    }

    #[test]
    fn call_id_is_found_without_a_full_parse() {
        let m = b"INVITE sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID:  abc@h \r\n\r\nbody Call-ID: no";
        assert_eq!(call_id_of(m), Some(&b"abc@h"[..]));
        assert_eq!(
            call_id_of(b"SIP/2.0 200 OK\r\ni: x1\r\n\r\n"),
            Some(&b"x1"[..])
        );
        assert_eq!(
            call_id_of(b"SIP/2.0 200 OK\r\nTo: <sip:b@h>\r\n\r\nCall-ID: body"),
            None
        );
        assert_eq!(call_id_of(b"garbage"), None);
        assert_eq!(
            call_id_of(b"X\nCall-ID: lf-only\n\n"),
            Some(&b"lf-only"[..])
        );
        assert_eq!(call_id_of(b""), None);
    }
}
