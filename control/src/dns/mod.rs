//! DNS on the control thread (RFC 3263: NAPTR → SRV → A/AAAA). Workers never
//! resolve: the control thread turns SIP URIs into addresses with this
//! resolver, caches every answer with its TTL (bounded by `[dns] min_ttl_s` /
//! `max_ttl_s`, negative answers for `negative_ttl_s`) and tells the caller
//! when to ask again, before the answers expire.
//!
//! The decisions (which lookups, in which order, with which weights) are the
//! pure functions of [`rfc3263`] and the pure [`cache`]; this module is the thin
//! I/O around them (hickory-resolver queries, the clock, counters).

pub mod cache;
pub mod rfc3263;
pub mod workers;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::DnsConfig;
use cache::{Cache, Cached, Kind, Records};
use rfc3263::{Naptr, Plan, Srv, Target, Transport};

/// Answers kept at most (names × record types).
const MAX_CACHED: usize = 4096;

/// Counters for `/metrics` (`sipvane_dns_*`).
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Queries sent to a DNS server.
    pub queries: AtomicU64,
    /// Queries that failed (timeout, server failure), not counting answers
    /// that say a name or record does not exist.
    pub failures: AtomicU64,
    /// Questions answered from the cache.
    pub cache_hits: AtomicU64,
}

/// One address a URI resolved to, with what SRV said about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// The host the address belongs to (the SRV target, or the URI host).
    pub host: String,
    /// SRV priority and weight; 0 when no SRV record was involved.
    pub priority: u16,
    pub weight: u16,
}

/// Every target of a URI, in RFC 3263 order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Non-empty.
    pub targets: Vec<Resolved>,
    /// Whether the targets came from SRV records (one per SRV target).
    pub from_srv: bool,
    /// When to resolve again (the earliest refresh time of the answers used);
    /// `None` for IP literals.
    pub refresh: Option<Instant>,
}

/// Why a URI did not resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsError {
    /// Which name failed and why.
    pub message: String,
    /// The server failed or did not answer (a later try may work); `false`:
    /// the name or the records it needs do not exist, or the URI cannot be
    /// used here at all.
    pub temporary: bool,
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for DnsError {
    fn from(message: String) -> DnsError {
        DnsError {
            message,
            temporary: false,
        }
    }
}

/// The control thread's resolver. Shared (`Arc`) by the tasks that resolve.
pub struct Resolver {
    hickory: TokioResolver,
    cache: Mutex<Cache>,
    timeout: Duration,
    min_ttl: Duration,
    max_ttl: Duration,
    negative_ttl: Duration,
    stats: Arc<DnsStats>,
    /// TLS destinations can be reached (`[tls] ca` is set): without it a
    /// `sips:` / `;transport=tls` destination is an error at its line.
    tls: bool,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `cfg.servers` (UDP, TCP on truncation), or the
    /// servers of /etc/resolv.conf when none are configured.
    pub fn new(cfg: &DnsConfig) -> Result<Resolver, String> {
        let servers = cfg.server_addrs()?;
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("dns: cannot read /etc/resolv.conf: {e}"))?
        } else {
            let mut rc = ResolverConfig::new();
            for addr in servers {
                rc.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
                rc.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(rc, TokioConnectionProvider::default())
        };
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 1;
        // Our cache decides lifetimes (min/max/negative TTL, refresh before
        // expiry); a second cache inside hickory would hand back aging answers
        // when a refresh is due.
        opts.cache_size = 0;
        Ok(Resolver {
            hickory: builder.build(),
            cache: Mutex::new(Cache::new(MAX_CACHED)),
            timeout,
            min_ttl: Duration::from_secs(u64::from(cfg.min_ttl_s)),
            max_ttl: Duration::from_secs(u64::from(cfg.max_ttl_s)),
            negative_ttl: Duration::from_secs(u64::from(cfg.negative_ttl_s)),
            stats: Arc::new(DnsStats::default()),
            tls: false,
        })
    }

    /// With `tls`, TLS destinations are accepted (`[tls] ca` is configured).
    pub fn with_tls(mut self, tls: bool) -> Resolver {
        self.tls = tls;
        self
    }

    /// TLS destinations are accepted.
    pub fn tls(&self) -> bool {
        self.tls
    }

    pub fn stats(&self) -> Arc<DnsStats> {
        Arc::clone(&self.stats)
    }

    /// Resolves a SIP URI as RFC 3263 says, using only `supported`
    /// transports. An error says which name failed and why.
    pub async fn resolve_uri(
        &self,
        uri: &str,
        supported: &[Transport],
    ) -> Result<Resolution, DnsError> {
        let target = Target::from_uri(uri)?;
        let supports = |t: Transport| {
            if supported.contains(&t) {
                Ok(())
            } else {
                Err(format!(
                    "{uri}: transport {} is not supported here ({})",
                    t.as_str(),
                    supported
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        };
        let mut refresh = Refresh::default();
        let resolution = match rfc3263::plan(&target) {
            Plan::Literal(addr, transport) => {
                supports(transport)?;
                return Ok(Resolution {
                    targets: vec![Resolved {
                        addr,
                        transport,
                        host: target.host,
                        priority: 0,
                        weight: 0,
                    }],
                    from_srv: false,
                    refresh: None,
                });
            }
            Plan::Address {
                host,
                port,
                transport,
            } => {
                supports(transport)?;
                self.by_address(&host, port, transport, &mut refresh)
                    .await?
            }
            Plan::Srv { host, transport } => {
                supports(transport)?;
                let names = [(rfc3263::srv_name(&host, transport), transport)];
                self.by_srv_names(&host, &names, transport, &mut refresh)
                    .await?
            }
            Plan::Naptr { host } => {
                let naptr = match self.query(Kind::Naptr, &host, &mut refresh).await? {
                    Some(Records::Naptr(r)) => r,
                    _ => Vec::new(),
                };
                let mut names = rfc3263::naptr_srv_names(&naptr, target.secure, supported);
                if names.is_empty() {
                    names = rfc3263::srv_fallback_names(&host, target.secure, supported);
                }
                let fallback = if target.secure {
                    Transport::Tls
                } else {
                    Transport::Udp
                };
                supports(fallback)?;
                self.by_srv_names(&host, &names, fallback, &mut refresh)
                    .await?
            }
        };
        Ok(Resolution {
            refresh: refresh.0,
            ..resolution
        })
    }

    /// The first SRV name with usable records gives the targets; with none,
    /// `host`'s A/AAAA records on `fallback`'s default port.
    async fn by_srv_names(
        &self,
        host: &str,
        names: &[(String, Transport)],
        fallback: Transport,
        refresh: &mut Refresh,
    ) -> Result<Resolution, DnsError> {
        for (name, transport) in names {
            let records = match self.query(Kind::Srv, name, refresh).await? {
                Some(Records::Srv(r)) => r,
                _ => continue,
            };
            // The dispatcher maps priority and weight onto destinations, so
            // the canonical (unshuffled) RFC 2782 order is enough here.
            let ordered = rfc3263::srv_order(&records, &mut |_| 0);
            let mut targets = Vec::new();
            let mut last_error = None;
            for srv in &ordered {
                match self.ips(&srv.target, refresh).await {
                    Ok(ips) => targets.extend(ips.into_iter().take(1).map(|ip| Resolved {
                        addr: SocketAddr::new(ip, srv.port),
                        transport: *transport,
                        host: srv.target.clone(),
                        priority: srv.priority,
                        weight: srv.weight,
                    })),
                    Err(e) => last_error = Some(e),
                }
            }
            if targets.is_empty() {
                return Err(
                    last_error.unwrap_or_else(|| format!("{name}: no usable SRV target").into())
                );
            }
            return Ok(Resolution {
                targets,
                from_srv: true,
                refresh: None,
            });
        }
        self.by_address(host, fallback.default_port(), fallback, refresh)
            .await
    }

    async fn by_address(
        &self,
        host: &str,
        port: u16,
        transport: Transport,
        refresh: &mut Refresh,
    ) -> Result<Resolution, DnsError> {
        let ips = self.ips(host, refresh).await?;
        Ok(Resolution {
            targets: ips
                .into_iter()
                .map(|ip| Resolved {
                    addr: SocketAddr::new(ip, port),
                    transport,
                    host: host.to_owned(),
                    priority: 0,
                    weight: 0,
                })
                .collect(),
            from_srv: false,
            refresh: None,
        })
    }

    async fn ips(&self, host: &str, refresh: &mut Refresh) -> Result<Vec<IpAddr>, DnsError> {
        match self.query(Kind::Ip, host, refresh).await? {
            Some(Records::Ip(ips)) if !ips.is_empty() => Ok(ips),
            _ => Err(format!("{host}: no A/AAAA record").into()),
        }
    }

    /// One question, from the cache when it is fresh; otherwise asked, with
    /// the cached answer (if still valid) kept when the server fails.
    async fn query(
        &self,
        kind: Kind,
        name: &str,
        refresh: &mut Refresh,
    ) -> Result<Option<Records>, DnsError> {
        let now = Instant::now();
        let stale = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(kind, name, now) {
                Cached::Fresh(e) => {
                    self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    refresh.note(e.refresh);
                    return Ok(e.records.clone());
                }
                Cached::Due(e) => Some(e.clone()),
                Cached::Missing => None,
            }
        };
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        let answer = tokio::time::timeout(self.timeout, self.ask(kind, name))
            .await
            .unwrap_or_else(|_| Err(Asked::Failed("timed out".into())));
        let (records, ttl) = match answer {
            Ok((records, ttl_s)) => (
                Some(records),
                rfc3263::clamp_ttl(ttl_s, self.min_ttl, self.max_ttl),
            ),
            Err(Asked::Negative) => (None, self.negative_ttl.max(Duration::from_secs(1))),
            Err(Asked::Failed(why)) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(name, kind = kind.as_str(), error = %why, "DNS query failed");
                return match stale {
                    Some(e) => {
                        // Serve the old answer until it expires; ask again soon.
                        refresh.note(
                            now + Duration::from_secs(1)
                                .min(e.expires.saturating_duration_since(now)),
                        );
                        Ok(e.records)
                    }
                    None => Err(DnsError {
                        message: format!("{name}: {} lookup failed: {why}", kind.as_str()),
                        temporary: true,
                    }),
                };
            }
        };
        let entry = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kind, name, records, ttl, now);
        refresh.note(entry.refresh);
        Ok(entry.records)
    }

    /// Asks the server; returns the records with their smallest TTL.
    async fn ask(&self, kind: Kind, name: &str) -> Result<(Records, u32), Asked> {
        // Names are absolute: no search-domain guessing for SIP hosts.
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let rtype = match kind {
            Kind::Naptr => RecordType::NAPTR,
            Kind::Srv => RecordType::SRV,
            Kind::Ip => {
                let lookup = self.hickory.lookup_ip(fqdn).await.map_err(Asked::from)?;
                let ttl = lookup
                    .as_lookup()
                    .records()
                    .iter()
                    .map(|r| r.ttl())
                    .min()
                    .unwrap_or(0);
                return Ok((Records::Ip(lookup.iter().collect()), ttl));
            }
        };
        let lookup = self
            .hickory
            .lookup(fqdn, rtype)
            .await
            .map_err(Asked::from)?;
        let mut ttl = u32::MAX;
        let mut naptr = Vec::new();
        let mut srv = Vec::new();
        for r in lookup.records() {
            match r.data() {
                RData::NAPTR(n) => naptr.push(Naptr {
                    order: n.order(),
                    preference: n.preference(),
                    flags: String::from_utf8_lossy(n.flags()).into_owned(),
                    service: String::from_utf8_lossy(n.services()).into_owned(),
                    replacement: n.replacement().to_ascii(),
                }),
                RData::SRV(s) => srv.push(Srv {
                    priority: s.priority(),
                    weight: s.weight(),
                    port: s.port(),
                    target: s.target().to_ascii().trim_end_matches('.').to_owned(),
                }),
                _ => continue,
            }
            ttl = ttl.min(r.ttl());
        }
        let records = match kind {
            Kind::Naptr if !naptr.is_empty() => Records::Naptr(naptr),
            Kind::Srv if !srv.is_empty() => Records::Srv(srv),
            _ => return Err(Asked::Negative),
        };
        Ok((records, ttl))
    }
}

/// Why a question got no records.
enum Asked {
    /// The name or the record type does not exist (cached as negative).
    Negative,
    /// The server did not answer usefully.
    Failed(String),
}

impl From<ResolveError> for Asked {
    fn from(e: ResolveError) -> Asked {
        if e.is_no_records_found() || e.is_nx_domain() {
            Asked::Negative
        } else {
            Asked::Failed(e.to_string())
        }
    }
}

/// The earliest refresh time among the answers a resolution used.
#[derive(Default)]
struct Refresh(Option<Instant>);

impl Refresh {
    fn note(&mut self, at: Instant) {
        self.0 = Some(self.0.map_or(at, |t| t.min(at)));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A configuration whose only server is the discard port: for tests
    /// that must never send a query.
    pub(crate) fn no_server() -> DnsConfig {
        DnsConfig {
            servers: vec!["127.0.0.1:9".into()],
            timeout_ms: 200,
            ..DnsConfig::default()
        }
    }

    #[tokio::test]
    async fn ip_literals_never_query() {
        let dns = Resolver::new(&no_server()).unwrap();
        let r = dns
            .resolve_uri("sip:127.0.0.1:5070", &[Transport::Udp])
            .await
            .unwrap();
        assert_eq!(r.targets[0].addr, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(r.refresh, None);
        let r = dns
            .resolve_uri("sip:[::1]", &[Transport::Udp])
            .await
            .unwrap();
        assert_eq!(r.targets[0].addr, "[::1]:5060".parse().unwrap());
        let e = dns
            .resolve_uri("sip:127.0.0.1;transport=tcp", &[Transport::Udp])
            .await
            .unwrap_err()
            .message;
        assert!(e.contains("transport tcp is not supported"), "{e}");
        assert!(dns
            .resolve_uri("nonsense", &[Transport::Udp])
            .await
            .is_err());
        assert_eq!(dns.stats.queries.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_is_a_counted_failure() {
        let dns = Resolver::new(&no_server()).unwrap();
        let e = dns
            .resolve_uri("sip:pbx.sipvane.test:5060", &[Transport::Udp])
            .await
            .unwrap_err();
        assert!(e.temporary);
        let e = e.message;
        assert!(e.contains("pbx.sipvane.test: A/AAAA lookup failed"), "{e}");
        assert_eq!(dns.stats.queries.load(Ordering::Relaxed), 1);
        assert_eq!(dns.stats.failures.load(Ordering::Relaxed), 1);
    }
}
