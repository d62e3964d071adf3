//! OPTIONS probing of destinations (Kamailio's dispatcher pinging), on the
//! control thread.
//!
//! [`core`] is the sans-IO state machine; [`run`] is its thin tokio shell: one
//! UDP socket per address family on the listen address (ephemeral port), a
//! round every `ping_interval_s`, replies read as they come. A probe of a
//! `;transport=tcp` destination opens a TCP connection of its own (a task that
//! connects, writes the OPTIONS, reads the replies and closes), so a
//! destination that refuses connections fails its probes. A TLS destination's
//! probe runs the TLS client handshake on that connection (the workers' sans-IO
//! `TlsSession`, verified against `[tls] ca`): a failed handshake is a failed
//! probe. Every state change
//! is logged and, when events are on, pushed as `dst_up` / `dst_down`.

pub mod core;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dataplane::dispatch::SharedTable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Config;
use crate::events::{DstChange, Event, EventQueue, WallClock};

pub use self::core::{Change, ProbeConfig, Prober, Transmit};

impl ProbeConfig {
    /// The prober's settings from `[dispatcher]`; `None` when probing is off
    /// (`ping_interval_s = 0`).
    pub fn from_config(cfg: &Config) -> Option<ProbeConfig> {
        let d = &cfg.dispatcher;
        let interval = d.ping_interval()?;
        Some(ProbeConfig {
            interval,
            // As Kamailio's probes, which run as transactions with tm's fr_timer.
            timeout: d.fr_timer().min(interval),
            probing_threshold: d.probing_threshold,
            inactive_threshold: d.inactive_threshold,
            reply_codes: d.ping_reply_codes.clone(),
            from: d.ping_from.clone(),
            method: d.ping_method.clone(),
            mode: d.probing_mode,
        })
    }
}

/// Probes the destinations of `table` until the task is dropped. `listen` is the
/// proxy's SIP address: probes leave from its IP (on an ephemeral port);
/// `advertise` names the host in their Via when that IP is unspecified.
pub async fn run(
    cfg: ProbeConfig,
    table: SharedTable,
    listen: SocketAddr,
    advertise: String,
    events: Option<EventQueue>,
    forged: Arc<AtomicU64>,
    tls: Option<dataplane::transport::tls::TlsClient>,
) {
    let mut prober = Prober::new(cfg, instance_id());
    let v4 = bind(listen, false, &advertise, &mut prober).await;
    let v6 = bind(listen, true, &advertise, &mut prober).await;
    if v4.is_none() && v6.is_none() {
        tracing::error!("probing is off: no UDP socket could be bound for probes");
        return;
    }
    let clock = WallClock::new();
    let interval = prober.config().interval;
    let mut next_round = Instant::now();
    let (mut buf4, mut buf6) = (vec![0u8; 65_535], vec![0u8; 65_535]);
    let (mut out, mut changes) = (Vec::new(), Vec::new());
    // What the TCP probe tasks learn; bounded: a full channel drops the news
    // and the probe times out instead.
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<TcpNews>(1024);
    let timeout = prober.config().timeout;
    loop {
        let wake = prober
            .next_deadline()
            .map_or(next_round, |d| Instant::from_std(d).min(next_round));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            n = recv(v4.as_ref(), &mut buf4) => if let Some(n) = n {
                prober.handle(Instant::now().into_std(), buf4.get(..n).unwrap_or_default(), &mut changes);
            },
            n = recv(v6.as_ref(), &mut buf6) => if let Some(n) = n {
                prober.handle(Instant::now().into_std(), buf6.get(..n).unwrap_or_default(), &mut changes);
            },
            Some(news) = tcp_rx.recv() => match news {
                TcpNews::Reply(bytes) => prober.handle(Instant::now().into_std(), &bytes, &mut changes),
                TcpNews::ConnectFailed(to) => prober.connect_failed(to, &mut changes),
            },
        }
        let now = Instant::now();
        if now >= next_round {
            prober.start_round(now.into_std(), &table.load(), &mut out, &mut changes);
            next_round += interval;
            if next_round <= now {
                // We fell behind (a suspended process): no burst of rounds.
                next_round = now + interval;
            }
        }
        prober.poll(now.into_std(), &mut out, &mut changes);
        // The prober is the only writer; /metrics reads this copy.
        forged.store(prober.forged(), Ordering::Relaxed);
        for t in out.drain(..) {
            if t.tcp {
                let session = match (&t.tls, &tls) {
                    (None, _) => None,
                    (Some(name), Some(client)) => {
                        let peer = dataplane::transport::tls::TlsPeer {
                            name: name.clone(),
                            verify: true,
                        };
                        match client.session(&peer) {
                            Ok(s) => Some(s),
                            Err(e) => {
                                tracing::debug!(to = %t.to, error = %e, "TLS probe not started");
                                prober.connect_failed(t.to, &mut changes);
                                continue;
                            }
                        }
                    }
                    // A TLS destination needs [tls] ca (checked at load).
                    (Some(_), None) => {
                        prober.connect_failed(t.to, &mut changes);
                        continue;
                    }
                };
                tokio::spawn(tcp_probe(t.to, t.bytes, timeout, session, tcp_tx.clone()));
                continue;
            }
            let sock = if t.to.is_ipv6() { &v6 } else { &v4 };
            if let Some(s) = sock {
                if let Err(e) = s.send_to(&t.bytes, t.to).await {
                    // The timeout turns this into a failed probe.
                    tracing::debug!(to = %t.to, error = %e, "probe not sent");
                }
            }
        }
        for c in changes.drain(..) {
            report(&c, events.as_ref(), clock.unix_ms(now.into_std()));
        }
    }
}

/// What a TCP probe task reports to the prober.
enum TcpNews {
    /// A message read from the probe's connection.
    Reply(Vec<u8>),
    /// The connection could not be opened within the probe timeout.
    ConnectFailed(SocketAddr),
}

/// One probe over a TCP connection of its own (TLS on it with `tls`):
/// connect, send, hand every message read back to the prober until a final
/// reply, the timeout or EOF. A failed TLS handshake counts as a failed connect.
async fn tcp_probe(
    to: SocketAddr,
    bytes: Vec<u8>,
    timeout: Duration,
    mut tls: Option<dataplane::transport::tls::TlsSession>,
    news: mpsc::Sender<TcpNews>,
) {
    let deadline = Instant::now() + timeout;
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(to)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%to, error = %e, "TCP probe: connect refused or failed");
            let _ = news.try_send(TcpNews::ConnectFailed(to));
            return;
        }
        Err(_) => {
            tracing::debug!(%to, "probe connection not up within the probe timeout");
            let _ = news.try_send(TcpNews::ConnectFailed(to));
            return;
        }
    };
    // On TLS the OPTIONS waits in the session until the handshake is done;
    // what goes on the wire is the session's output.
    let mut wire = bytes;
    if let Some(s) = tls.as_mut() {
        if s.write(&wire).is_err() {
            return;
        }
        wire.clear();
        s.output(&mut wire);
    }
    if tokio::time::timeout_at(deadline, stream.write_all(&wire))
        .await
        .map_or(true, |r| r.is_err())
    {
        // Not sent: the prober's timeout fails it.
        return;
    }
    let mut framer = dataplane::transport::Framer::new(65_535);
    let mut buf = vec![0u8; 16 * 1024];
    let mut plain = Vec::new();
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => {
                if tls.as_ref().is_some_and(|s| s.handshaking()) {
                    // Closed by the peer before the handshake finished.
                    let _ = news.try_send(TcpNews::ConnectFailed(to));
                }
                return;
            }
        };
        let data = match tls.as_mut() {
            None => &buf[..n],
            Some(s) => {
                plain.clear();
                let fed = s.feed(&buf[..n], &mut plain);
                wire.clear();
                s.output(&mut wire);
                let _ = tokio::time::timeout_at(deadline, stream.write_all(&wire)).await;
                if let Err(e) = fed {
                    tracing::debug!(%to, error = %e.error, "TLS probe: handshake or record failed");
                    if e.handshake {
                        let _ = news.try_send(TcpNews::ConnectFailed(to));
                    }
                    return;
                }
                &plain[..]
            }
        };
        let mut done = false;
        let fed = framer.feed(std::time::Instant::now(), data, |f| {
            if let dataplane::transport::Frame::Message(m) = f {
                done |= dataplane::sip::parse(m)
                    .ok()
                    .and_then(|m| m.status())
                    .is_some_and(|c| c >= 200);
                let _ = news.try_send(TcpNews::Reply(m.to_vec()));
            }
        });
        if fed.is_err() || done {
            return;
        }
    }
}

fn report(c: &Change, events: Option<&EventQueue>, ts: u64) {
    tracing::info!(
        set = c.set, uri = %c.uri, old = %c.old, new = %c.new, reason = %c.reason,
        "destination {}", if c.is_up() { "up" } else { "down" }
    );
    if let Some(q) = events {
        let change = DstChange {
            set: c.set,
            uri: c.uri.as_str().into(),
            reason: c.reason.clone(),
            ts,
        };
        q.push(if c.is_up() {
            Event::DstUp(change)
        } else {
            Event::DstDown(change)
        });
    }
}

/// Binds the probe socket of one family and tells the prober its sent-by.
async fn bind(
    listen: SocketAddr,
    v6: bool,
    advertise: &str,
    prober: &mut Prober,
) -> Option<UdpSocket> {
    let ip = match (listen.ip(), v6) {
        (IpAddr::V4(ip), false) => IpAddr::V4(ip),
        (IpAddr::V6(ip), true) => IpAddr::V6(ip),
        (_, false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (_, true) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            // Normal for IPv6 on hosts without it; only matters if a
            // destination of that family exists, and then it is never probed.
            tracing::debug!(%ip, error = %e, "no probe socket for this address family");
            return None;
        }
    };
    let local = sock.local_addr().ok()?;
    let host = if !local.ip().is_unspecified() {
        local.ip().to_string()
    } else if local.ip().is_ipv4() == listen.ip().is_ipv4() {
        advertise.to_owned()
    } else if v6 {
        Ipv6Addr::LOCALHOST.to_string()
    } else {
        Ipv4Addr::LOCALHOST.to_string()
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    prober.set_sent_by(v6, Some(format!("{host}:{}", local.port())));
    Some(sock)
}

/// The next datagram on `sock`; never completes without a socket. Errors
/// (e.g. ICMP port unreachable reported on the socket) count as nothing read.
async fn recv(sock: Option<&UdpSocket>, buf: &mut [u8]) -> Option<usize> {
    match sock {
        Some(s) => match s.recv_from(buf).await {
            Ok((n, _)) => Some(n),
            Err(_) => {
                // Avoid spinning on a socket that keeps failing.
                tokio::time::sleep(Duration::from_millis(10)).await;
                None
            }
        },
        None => std::future::pending().await,
    }
}

/// A per-run id for branches and Call-IDs, from the OS-seeded hasher keys.
fn instance_id() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id()) >> 16
}
