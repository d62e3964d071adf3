//! Socket set-up shared by the generator and the responder.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffers large enough for bursts of a few thousand datagrams; the
/// kernel caps them at `net.core.{r,w}mem_max` (see perf/tune.sh).
const BUFFER: usize = 8 << 20;

/// A non-blocking UDP socket bound to `addr`; `reuse_port` lets several
/// threads share one address (the kernel spreads flows between them).
pub fn udp_socket(addr: SocketAddr, reuse_port: bool) -> Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("create UDP socket")?;
    if reuse_port {
        s.set_reuse_port(true).context("SO_REUSEPORT")?;
    }
    // Best effort: a smaller buffer only means earlier drops under bursts.
    let _ = s.set_recv_buffer_size(BUFFER);
    let _ = s.set_send_buffer_size(BUFFER);
    s.set_nonblocking(true).context("O_NONBLOCK")?;
    s.bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    Ok(s.into())
}

/// The local address the kernel routes to `target` from (no packet is sent:
/// connecting a UDP socket only picks the route).
pub fn source_ip_for(target: SocketAddr) -> Result<std::net::IpAddr> {
    let any: SocketAddr = if target.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any).context("bind a probe socket")?;
    s.connect(target)
        .with_context(|| format!("no route to {target}"))?;
    Ok(s.local_addr()?.ip())
}
