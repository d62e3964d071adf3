//! RTPEngine health from the control thread: an ng `ping` to each engine
//! every `rtpengine.ping_interval_s`, published to the workers through
//! [`EngineHealth`](dataplane::proxy::media::EngineHealth) atomics. Workers
//! stop choosing an engine for new calls as soon as it misses a ping round,
//! and take it back when it answers again; their own request timeouts mark
//! an engine down in between.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dataplane::proxy::media::MediaShared;
use dataplane::rtpengine::ng::{split_cookie, write_request, Reply, Request};
use tokio::net::UdpSocket;
use tracing::{info, warn};

/// Pings engine `index` of `shared` forever (the task ends with the runtime).
/// Each round sends up to `1 + retries` pings, `timeout` apart.
pub async fn watch(
    shared: Arc<MediaShared>,
    index: usize,
    interval: Duration,
    timeout: Duration,
    retries: u32,
) {
    let Some(&(addr, _)) = shared.config.engines.get(index) else {
        return;
    };
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            warn!(engine = %addr, error = %e, "cannot open a socket to ping rtpengine");
            return;
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    loop {
        tick.tick().await;
        seq += 1;
        let up = ping(&sock, addr, seq, timeout, retries).await;
        if shared.health.set(index, up) {
            if up {
                info!(engine = %addr, "rtpengine is up");
            } else {
                warn!(engine = %addr, "rtpengine does not answer ping; no new calls to it");
            }
        }
    }
}

/// One ping round: true when the engine answered `pong` to our cookie.
async fn ping(
    sock: &UdpSocket,
    addr: SocketAddr,
    seq: u64,
    timeout: Duration,
    retries: u32,
) -> bool {
    let cookie = format!("sipvane_health_{}_{seq}", std::process::id());
    let mut req = Vec::with_capacity(64);
    if write_request(cookie.as_bytes(), &Request::ping(), &mut req).is_err() {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    for _ in 0..=retries {
        if sock.send_to(&req, addr).await.is_err() {
            tokio::time::sleep(timeout).await;
            continue;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let recv = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
            let Ok(Ok((n, from))) = recv else { break };
            let Some(data) = buf.get(..n) else { continue };
            let ours =
                from == addr && split_cookie(data).is_ok_and(|(c, _)| c == cookie.as_bytes());
            if ours {
                return Reply::parse(data).is_ok_and(|r| r.is_success());
            }
        }
    }
    false
}
