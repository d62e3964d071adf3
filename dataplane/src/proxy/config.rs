//! Runtime settings of the proxy core, already validated by the control plane.

use std::sync::Arc;
use std::time::Duration;

use super::media::MediaShared;

use crate::dispatch::{Algorithm, HealthPolicy};
use crate::route::{Cidr, DialogTargets, PreloadedRoute};
use crate::txn::TimerConfig;

/// What to do with a request whose Request-URI names a domain sipvane does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownDomain {
    /// Forward it to the host in its Request-URI, like any plain proxy.
    Relay,
    /// Answer 404 and forward nothing.
    Reject,
}

/// Chooses a dispatcher set other than the default for matching initial requests.
#[derive(Debug, Clone, PartialEq, Eq)]
/// `media`: anchor matching calls (`Some(true)`) or not (`Some(false)`)
/// whatever the set says; `None`: as the set.
pub enum SetRule {
    /// The Request-URI user part starts with this prefix.
    Prefix {
        prefix: String,
        set: u32,
        media: Option<bool>,
    },
    /// The Request-URI host equals this domain (case-insensitive).
    Domain {
        domain: String,
        set: u32,
        media: Option<bool>,
    },
}

/// Everything a worker needs to route, shared read-only by all workers.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Host or IP written into the Via and Record-Route sipvane adds.
    pub advertise: String,
    /// IP addresses that also mean "this proxy" in a Route or Request-URI.
    pub local_hosts: Vec<String>,
    /// The shared public SIP port.
    pub public_port: u16,
    /// Each worker's private port, indexed by worker.
    pub private_ports: Vec<u16>,
    /// The TLS listener's port (`[tls] listen`), if any: named in the
    /// Record-Route entry facing a TLS peer.
    pub tls_port: Option<u16>,
    pub algorithm: Algorithm,
    pub default_set: u32,
    pub rules: Vec<SetRule>,
    /// Final responses from a destination that make sipvane try the next one.
    pub failover_codes: Vec<u16>,
    pub timers: TimerConfig,
    pub health: HealthPolicy,
    /// Transactions per worker; new requests beyond it get 503.
    pub max_transactions: usize,
    /// New INVITEs get 503 + Retry-After once this many transactions are open.
    pub overload_transactions: usize,
    pub max_dialogs: usize,
    pub retry_after_s: u32,
    /// RFC 7339 feedback to upstream clients that offer `oc` in their Via;
    /// `None`: their `oc` is ignored.
    pub overload_control: Option<OverloadControl>,
    /// New INVITEs get 503 + Retry-After while the worker's public socket
    /// has held a receive backlog for this long (it cannot keep up: answering
    /// 503 costs a fraction of relaying a call); `None`: off.
    pub shed_backlog: Option<Duration>,
    /// RFC 3261 §18.1.1: a request to a UDP next hop larger than this many
    /// bytes goes over TCP to the same address and port; 0: never.
    pub udp_mtu: usize,
    pub record_route: bool,
    /// Domains served; empty means every domain.
    pub domains: Vec<String>,
    pub unknown_domain: UnknownDomain,
    pub server_header: String,
    /// A dialog with no BYE and no in-dialog traffic for this long is
    /// forgotten (Kamailio dialog `default_timeout`, 43200 s).
    pub dialog_timeout: Duration,
    /// Requests reaching the public port are handled by the worker that
    /// hash(Call-ID) names (handed over if needed) instead of whichever
    /// worker the kernel's per-source hash picked: even load when traffic
    /// comes from a few trunks. Default true (see [`crate::route::steer`]).
    pub balance_by_call_id: bool,
    /// Seeds the transaction and dialog key hash. The control plane fills it
    /// from OS randomness; the default is fixed, for tests.
    pub key_seed: [u64; 4],
    /// Keys of the branch seal and of local To-tags; from OS randomness in
    /// the control plane (fixed default, for tests).
    pub branch_secret: [u64; 4],
    /// This process's epoch, sealed into every branch: a restarted process
    /// never repeats a branch of its predecessor.
    pub epoch: u16,
    /// RTPEngine media anchoring; `None`: off.
    pub media: Option<Arc<MediaShared>>,
    /// Sources that may do more than anonymous callers (docs/security.md).
    pub trusted_sources: Vec<Cidr>,
    pub preloaded_route: PreloadedRoute,
    pub dialog_targets: DialogTargets,
    /// Per-source request rate limit, one table for all workers; `None`: off.
    pub flood: Option<Arc<super::flood::FloodGuard>>,
    /// Registrar, authentication and location; `None`: off.
    pub registrar: Option<Arc<crate::registrar::Registrar>>,
    /// The process this one took over from (a restart), while it drains;
    /// `None`: a plain start.
    pub predecessor: Option<Arc<super::predecessor::Predecessor>>,
    /// Host names in Request-URI / Route / Contact, resolved by the control
    /// thread; `None`: names get 503.
    pub names: Option<super::NameSettings>,
}

/// RFC 7339 loss-based overload control towards upstream clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadControl {
    /// Open transactions from which the loss percentage told to clients
    /// grows (0 % here, 100 % at `overload_transactions`).
    pub start_transactions: usize,
    /// `oc-validity` of a non-zero value, in milliseconds.
    pub validity_ms: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            advertise: "127.0.0.1".into(),
            local_hosts: vec!["127.0.0.1".into()],
            public_port: 5060,
            private_ports: vec![5061],
            tls_port: None,
            algorithm: Algorithm::RoundRobin,
            default_set: 1,
            rules: Vec::new(),
            failover_codes: vec![408, 500, 503],
            timers: TimerConfig::default(),
            health: HealthPolicy::default(),
            max_transactions: 65536,
            overload_transactions: 58982,
            max_dialogs: 262144,
            retry_after_s: 5,
            overload_control: Some(OverloadControl {
                start_transactions: 44236,
                validity_ms: 500,
            }),
            shed_backlog: None,
            udp_mtu: 1300,
            record_route: true,
            domains: Vec::new(),
            unknown_domain: UnknownDomain::Relay,
            server_header: "sipvane".into(),
            dialog_timeout: Duration::from_secs(43_200),
            balance_by_call_id: true,
            key_seed: [0x5195_0a11, 0x7e57, 0xd1a1, 0x0c0de],
            branch_secret: [0xb4a7c4, 0x5ea1, 0x7a65, 0x0e90c4],
            epoch: 1,
            media: None,
            trusted_sources: Vec::new(),
            preloaded_route: PreloadedRoute::Strip,
            dialog_targets: DialogTargets::Known,
            flood: None,
            registrar: None,
            predecessor: None,
            names: None,
        }
    }
}

impl ProxyConfig {
    /// Which worker, if any, owns this host:port ("public" owns nobody).
    pub fn owner_of(&self, host: &[u8], port: Option<u16>) -> Option<Ownership> {
        if !self.is_local_host(host) {
            return None;
        }
        let port = port.unwrap_or(5060);
        if port == self.public_port || Some(port) == self.tls_port {
            return Some(Ownership::Public);
        }
        self.private_ports
            .iter()
            .position(|&p| p == port)
            .map(Ownership::Worker)
    }

    /// Whether `ip` is in `trusted_sources`.
    pub fn is_trusted_ip(&self, ip: std::net::IpAddr) -> bool {
        crate::route::trust::contains(&self.trusted_sources, ip)
    }

    pub fn is_local_host(&self, host: &[u8]) -> bool {
        let host = strip_brackets(host);
        host.eq_ignore_ascii_case(strip_brackets(self.advertise.as_bytes()))
            || self
                .local_hosts
                .iter()
                .any(|h| host.eq_ignore_ascii_case(strip_brackets(h.as_bytes())))
    }

    pub fn serves_domain(&self, host: &[u8]) -> bool {
        self.domains.is_empty()
            || self.is_local_host(host)
            || self
                .domains
                .iter()
                .any(|d| host.eq_ignore_ascii_case(d.as_bytes()))
    }

    /// The dispatcher set for an initial request to `user@host`.
    pub fn set_for(&self, user: &[u8], host: &[u8]) -> u32 {
        self.route_for(user, host).0
    }

    /// The dispatcher set for an initial request to `user@host`, and the
    /// matching rule's media anchoring override.
    pub fn route_for(&self, user: &[u8], host: &[u8]) -> (u32, Option<bool>) {
        for rule in &self.rules {
            match rule {
                SetRule::Prefix { prefix, set, media } if user.starts_with(prefix.as_bytes()) => {
                    return (*set, *media)
                }
                SetRule::Domain { domain, set, media }
                    if host.eq_ignore_ascii_case(domain.as_bytes()) =>
                {
                    return (*set, *media)
                }
                _ => {}
            }
        }
        (self.default_set, None)
    }
}

/// Who a local address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The shared SO_REUSEPORT port: any worker may handle it.
    Public,
    /// A worker's private port.
    Worker(usize),
}

fn strip_brackets(h: &[u8]) -> &[u8] {
    match h {
        [b'[', inner @ .., b']'] => inner,
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_by_port_and_host() {
        let cfg = ProxyConfig {
            private_ports: vec![5061, 5062],
            ..ProxyConfig::default()
        };
        assert_eq!(
            cfg.owner_of(b"127.0.0.1", Some(5062)),
            Some(Ownership::Worker(1))
        );
        assert_eq!(cfg.owner_of(b"127.0.0.1", None), Some(Ownership::Public));
        assert_eq!(cfg.owner_of(b"10.0.0.1", Some(5061)), None);
        assert_eq!(cfg.owner_of(b"127.0.0.1", Some(7000)), None);
        let tls = ProxyConfig {
            tls_port: Some(7000),
            ..cfg
        };
        assert_eq!(
            tls.owner_of(b"127.0.0.1", Some(7000)),
            Some(Ownership::Public)
        );
    }

    #[test]
    fn rules_pick_sets() {
        let cfg = ProxyConfig {
            rules: vec![
                SetRule::Prefix {
                    prefix: "+44".into(),
                    set: 2,
                    media: Some(false),
                },
                SetRule::Domain {
                    domain: "pbx.example.com".into(),
                    set: 3,
                    media: None,
                },
            ],
            ..ProxyConfig::default()
        };
        assert_eq!(cfg.set_for(b"+4420", b"x"), 2);
        assert_eq!(cfg.set_for(b"100", b"PBX.example.com"), 3);
        assert_eq!(cfg.set_for(b"100", b"other"), 1);
        assert_eq!(cfg.route_for(b"+4420", b"x"), (2, Some(false)));
        assert_eq!(cfg.route_for(b"100", b"other"), (1, None));
    }
}
