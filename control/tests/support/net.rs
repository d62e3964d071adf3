//! Loopback ports and readiness checks.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ports already handed out by this test binary: the kernel may give the same
/// ephemeral port twice once the probing socket is closed.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// `127.0.0.1:port`.
pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Panics unless `addr` is a loopback address: tests never send traffic
/// anywhere else.
pub fn assert_loopback(addr: SocketAddr) {
    assert!(
        addr.ip().is_loopback(),
        "test traffic must stay on loopback, got {addr}"
    );
}

fn fresh_port(probe: impl Fn() -> std::io::Result<u16>) -> u16 {
    for _ in 0..1000 {
        let port = match probe() {
            Ok(p) => p,
            Err(e) => panic!("cannot bind a loopback port: {e}"),
        };
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(port) {
            return port;
        }
    }
    panic!("no fresh loopback port after 1000 tries")
}

/// A UDP port on 127.0.0.1 that was free a moment ago and that this test
/// binary has not handed out before.
pub fn free_udp_port() -> u16 {
    fresh_port(|| Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port()))
}

/// A port on 127.0.0.1 free for both UDP and TCP a moment ago: sipvane's
/// SIP listen binds both, and a port free only for UDP may be some client's
/// ephemeral TCP port (a flaky "Address already in use").
pub fn free_sip_port() -> u16 {
    fresh_port(|| loop {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    })
}

/// `n` distinct free UDP ports.
pub fn free_udp_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_udp_port()).collect()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    fresh_port(|| Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()))
}

/// `127.0.0.1:<free udp port>`.
pub fn free_udp_addr() -> SocketAddr {
    localhost(free_udp_port())
}

/// True if some socket is bound to UDP `addr` (exact address or wildcard),
/// read from /proc/net/udp{,6}. UDP has no accept(), and a bound socket
/// queues what is sent to it, so "bound" is "ready".
pub fn udp_bound(addr: SocketAddr) -> bool {
    let (file, want_port) = match addr {
        SocketAddr::V4(_) => ("/proc/net/udp", addr.port()),
        SocketAddr::V6(_) => ("/proc/net/udp6", addr.port()),
    };
    let Ok(table) = std::fs::read_to_string(file) else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let Some(local) = line.split_whitespace().nth(1) else {
            return false;
        };
        let Some((ip_hex, port_hex)) = local.split_once(':') else {
            return false;
        };
        if u16::from_str_radix(port_hex, 16).ok() != Some(want_port) {
            return false;
        }
        match parse_proc_ip(ip_hex) {
            Some(ip) => ip == addr.ip() || ip.is_unspecified(),
            None => false,
        }
    })
}

/// /proc/net/udp prints each 32-bit word of the address as a host-order hex
/// number.
fn parse_proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let s = hex.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(s, 16).ok()?.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// Waits until something is bound to UDP `addr`; false on timeout.
pub fn wait_for_udp_listener(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if udp_bound(addr) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until a TCP connect to `addr` succeeds; false on timeout.
pub fn wait_for_tcp_listener(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one SIP OPTIONS to `target` over UDP and returns the status code of
/// the first final (>= 200) response, or `None` if none came within
/// `timeout`. Retransmits every 100 ms like a (fast) SIP client.
pub fn sip_options_ping(target: SocketAddr, timeout: Duration) -> Option<u16> {
    assert_loopback(target);
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => "127.0.0.1:0".parse().ok()?,
        SocketAddr::V6(_) => "[::1]:0".parse().ok()?,
    };
    let sock = UdpSocket::bind(bind).ok()?;
    let local = sock.local_addr().ok()?;
    let host = |a: SocketAddr| match a {
        SocketAddr::V4(v) => format!("{}:{}", v.ip(), v.port()),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    };
    let branch = format!("z9hG4bK-ping-{}-{}", std::process::id(), local.port());
    let msg = format!(
        "OPTIONS sip:ping@{t} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {l};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:harness@{l}>;tag=h{p}\r\n\
         To: <sip:ping@{t}>\r\n\
         Call-ID: ping-{branch}@harness\r\n\
         CSeq: 1 OPTIONS\r\n\
         Contact: <sip:harness@{l}>\r\n\
         Content-Length: 0\r\n\r\n",
        t = host(target),
        l = host(local),
        p = local.port(),
    );
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    let mut next_send = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        if now >= next_send {
            let _ = sock.send_to(msg.as_bytes(), target);
            next_send = now + Duration::from_millis(100);
        }
        let wait = next_send.min(deadline).saturating_duration_since(now);
        let _ = sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from != target {
                continue;
            }
            if let Some(code) = status_code(buf.get(..n).unwrap_or_default()) {
                if code >= 200 {
                    return Some(code);
                }
            }
        }
    }
}

/// Status code of a SIP response ("SIP/2.0 200 OK..."), `None` for anything else.
pub fn status_code(msg: &[u8]) -> Option<u16> {
    let rest = msg.strip_prefix(b"SIP/2.0 ")?;
    let digits = rest.get(..3)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}
