//! The simulated network: each datagram is lost, delivered once or
//! duplicated, each copy after its own random delay (so datagrams overtake
//! each other), and nothing reaches or leaves a partitioned destination.

use std::net::SocketAddr;

use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct NetConfig {
    pub loss: f64,
    pub duplicate: f64,
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
}

impl NetConfig {
    /// Every datagram arrives once, in order of sending.
    pub fn clean() -> NetConfig {
        NetConfig {
            loss: 0.0,
            duplicate: 0.0,
            delay_min_ms: 5,
            delay_max_ms: 5,
        }
    }

    /// A bad access network: 5 % loss, 3 % duplicates, 1–150 ms jitter.
    pub fn lossy() -> NetConfig {
        NetConfig {
            loss: 0.05,
            duplicate: 0.03,
            delay_min_ms: 1,
            delay_max_ms: 150,
        }
    }

    /// 15 % loss, 5 % duplicates, 1–400 ms jitter (partitions come on top).
    pub fn harsh() -> NetConfig {
        NetConfig {
            loss: 0.15,
            duplicate: 0.05,
            delay_min_ms: 1,
            delay_max_ms: 400,
        }
    }

    pub fn is_clean(&self) -> bool {
        self.loss == 0.0 && self.duplicate == 0.0
    }
}

pub struct Net {
    cfg: NetConfig,
    /// (node, from ms, until ms): nothing to or from it in the window.
    partitions: Vec<(SocketAddr, u64, u64)>,
}

impl Net {
    pub fn new(cfg: NetConfig, partitions: Vec<(SocketAddr, u64, u64)>) -> Net {
        Net { cfg, partitions }
    }

    /// The delays (ms) of the copies of one datagram that arrive.
    pub fn copies(&self, rng: &mut Rng, now: u64, from: SocketAddr, to: SocketAddr) -> Vec<u64> {
        let cut = self
            .partitions
            .iter()
            .any(|&(n, a, b)| (n == from || n == to) && (a..b).contains(&now));
        if cut || rng.chance(self.cfg.loss) {
            return Vec::new();
        }
        let n = if rng.chance(self.cfg.duplicate) { 2 } else { 1 };
        (0..n)
            .map(|_| rng.ms(self.cfg.delay_min_ms, self.cfg.delay_max_ms))
            .collect()
    }
}
