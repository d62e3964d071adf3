//! RFC 3263 ("Locating SIP Servers") as pure functions: which queries a SIP URI
//! needs, the order NAPTR and SRV answers are used in (RFC 2782 priorities and
//! weights), and how TTLs are bounded. The resolver ([`super::Resolver`]) does
//! the I/O and feeds the answers in.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dataplane::sip::Uri;

/// A SIP transport as RFC 3263 names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// `udp`, `tcp`, `tls` (the `transport=` URI parameter).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The `transport=` parameter value, case-insensitively.
    pub fn from_param(v: &[u8]) -> Option<Transport> {
        [Transport::Udp, Transport::Tcp, Transport::Tls]
            .into_iter()
            .find(|t| v.eq_ignore_ascii_case(t.as_str().as_bytes()))
    }

    /// The SRV owner-name prefix (RFC 3263 §4.1: TLS is `_sips._tcp`).
    pub fn srv_prefix(self) -> &'static str {
        match self {
            Transport::Udp => "_sip._udp",
            Transport::Tcp => "_sip._tcp",
            Transport::Tls => "_sips._tcp",
        }
    }

    /// The NAPTR service field (RFC 3263 §4.1).
    fn naptr_service(self) -> &'static str {
        match self {
            Transport::Udp => "SIP+D2U",
            Transport::Tcp => "SIP+D2T",
            Transport::Tls => "SIPS+D2T",
        }
    }

    /// Port used when neither the URI nor an SRV record gives one.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            _ => 5060,
        }
    }
}

/// What RFC 3263 needs from a SIP URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host without IPv6 brackets, lower case.
    pub host: String,
    /// The host as an IP address, when it is one.
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    /// From the `transport=` parameter.
    pub transport: Option<Transport>,
    /// `sips:` URI: only TLS may be used.
    pub secure: bool,
}

impl Target {
    /// Reads the parts of `uri` that decide the lookups.
    pub fn from_uri(uri: &str) -> Result<Target, String> {
        let parsed = Uri::parse(uri.as_bytes()).map_err(|e| format!("bad URI {uri:?}: {e}"))?;
        let host = std::str::from_utf8(parsed.host)
            .map_err(|_| format!("{uri}: host is not UTF-8"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("{uri}: no host"));
        }
        let transport = match parsed.param(b"transport").flatten() {
            None => None,
            Some(v) => Some(Transport::from_param(v).ok_or_else(|| {
                format!(
                    "{uri}: unknown transport={}",
                    String::from_utf8_lossy(v).escape_debug()
                )
            })?),
        };
        Ok(Target {
            ip: host.parse().ok(),
            host,
            port: parsed.port,
            transport,
            secure: parsed.is_sips(),
        })
    }
}

/// The lookups a target needs (RFC 3263 §4.1, §4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// An IP literal: no DNS at all.
    Literal(SocketAddr, Transport),
    /// An explicit port: A/AAAA of the host only.
    Address {
        host: String,
        port: u16,
        transport: Transport,
    },
    /// A transport but no port: SRV for that transport, else A/AAAA with the
    /// transport's default port.
    Srv { host: String, transport: Transport },
    /// Neither: NAPTR, else SRV for each supported transport, else A/AAAA
    /// (UDP, or TLS for `sips:`).
    Naptr { host: String },
}

/// The transport used when nothing but the scheme says which (§4.1).
fn implicit_transport(secure: bool) -> Transport {
    if secure {
        Transport::Tls
    } else {
        Transport::Udp
    }
}

/// Decides the lookups for `t` (RFC 3263 §4.1: an explicit transport, an IP
/// address or a port skip NAPTR; §4.2: an IP address or a port skip SRV).
pub fn plan(t: &Target) -> Plan {
    let transport = t.transport.unwrap_or(implicit_transport(t.secure));
    if let Some(ip) = t.ip {
        let port = t.port.unwrap_or(transport.default_port());
        return Plan::Literal(SocketAddr::new(ip, port), transport);
    }
    match (t.port, t.transport) {
        (Some(port), _) => Plan::Address {
            host: t.host.clone(),
            port,
            transport,
        },
        (None, Some(transport)) => Plan::Srv {
            host: t.host.clone(),
            transport,
        },
        (None, None) => Plan::Naptr {
            host: t.host.clone(),
        },
    }
}

/// The SRV owner name of `host` for `transport`.
pub fn srv_name(host: &str, transport: Transport) -> String {
    format!("{}.{}", transport.srv_prefix(), host.trim_end_matches('.'))
}

/// One NAPTR record, as far as SIP uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub service: String,
    /// The SRV owner name (SIP NAPTRs use the replacement, never the regexp).
    pub replacement: String,
}

/// The SRV names NAPTR `records` point to, in the order to try them (order,
/// then preference), keeping only `s`-flagged records for a transport in
/// `supported` (and TLS only, for a `sips:` URI).
pub fn naptr_srv_names(
    records: &[Naptr],
    secure: bool,
    supported: &[Transport],
) -> Vec<(String, Transport)> {
    let mut usable: Vec<(&Naptr, Transport)> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter(|r| !r.replacement.is_empty() && r.replacement != ".")
        .filter_map(|r| {
            supported
                .iter()
                .copied()
                .filter(|t| !secure || *t == Transport::Tls)
                .find(|t| r.service.eq_ignore_ascii_case(t.naptr_service()))
                .map(|t| (r, t))
        })
        .collect();
    usable.sort_by_key(|(r, _)| (r.order, r.preference));
    usable
        .into_iter()
        .map(|(r, t)| (r.replacement.trim_end_matches('.').to_owned(), t))
        .collect()
}

/// The SRV names to try, in order, when a host has no (usable) NAPTR records
/// (§4.1: one per supported transport; only TLS for `sips:`).
pub fn srv_fallback_names(
    host: &str,
    secure: bool,
    supported: &[Transport],
) -> Vec<(String, Transport)> {
    supported
        .iter()
        .copied()
        .filter(|t| !secure || *t == Transport::Tls)
        .map(|t| (srv_name(host, t), t))
        .collect()
}

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Target host, without the trailing dot.
    pub target: String,
}

/// RFC 2782 order: lowest priority first; inside one priority, a weighted
/// random order where `pick(total)` returns a number in `0..=total` (records
/// of weight 0 come last but still have a chance, as the RFC says). A lone
/// record with target `.` means "decidedly not available": empty result.
pub fn srv_order(records: &[Srv], pick: &mut dyn FnMut(u32) -> u32) -> Vec<Srv> {
    let mut rest: Vec<Srv> = records
        .iter()
        .filter(|r| !r.target.is_empty() && r.target != ".")
        .cloned()
        .collect();
    rest.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(rest.len());
    while !rest.is_empty() {
        let prio = rest[0].priority;
        let same = rest.iter().take_while(|r| r.priority == prio).count();
        let mut group: Vec<Srv> = rest.drain(..same).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let n = pick(total).min(total);
            let mut running = 0u32;
            let i = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= n
                })
                .unwrap_or(0);
            out.push(group.remove(i));
        }
    }
    out
}

/// A TTL bounded by the configured minimum and maximum.
pub fn clamp_ttl(ttl_s: u32, min: Duration, max: Duration) -> Duration {
    Duration::from_secs(u64::from(ttl_s)).clamp(min, max.max(min))
}

/// When a cached answer of lifetime `ttl` fetched at 0 is refreshed: at three
/// quarters of its life, so a working server replaces it before it expires.
pub fn refresh_after(ttl: Duration) -> Duration {
    ttl * 3 / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str) -> Target {
        Target::from_uri(uri).unwrap()
    }

    #[test]
    fn plan_follows_rfc3263_section_4() {
        assert_eq!(
            plan(&target("sip:127.0.0.1")),
            Plan::Literal("127.0.0.1:5060".parse().unwrap(), Transport::Udp)
        );
        assert_eq!(
            plan(&target("sips:[::1]")),
            Plan::Literal("[::1]:5061".parse().unwrap(), Transport::Tls)
        );
        assert_eq!(
            plan(&target("sip:10.0.0.1:5070;transport=tcp")),
            Plan::Literal("10.0.0.1:5070".parse().unwrap(), Transport::Tcp)
        );
        assert_eq!(
            plan(&target("sip:PBX.Example.com:5070")),
            Plan::Address {
                host: "pbx.example.com".into(),
                port: 5070,
                transport: Transport::Udp
            }
        );
        assert_eq!(
            plan(&target("sip:pbx.example.com;transport=TCP")),
            Plan::Srv {
                host: "pbx.example.com".into(),
                transport: Transport::Tcp
            }
        );
        assert_eq!(
            plan(&target("sip:user@pbx.example.com")),
            Plan::Naptr {
                host: "pbx.example.com".into()
            }
        );
        assert!(Target::from_uri("sip:pbx;transport=sctp")
            .unwrap_err()
            .contains("unknown transport"));
        assert!(Target::from_uri("nonsense").is_err());
    }

    fn naptr(order: u16, pref: u16, flags: &str, service: &str, repl: &str) -> Naptr {
        Naptr {
            order,
            preference: pref,
            flags: flags.into(),
            service: service.into(),
            replacement: repl.into(),
        }
    }

    #[test]
    fn naptr_keeps_supported_services_in_order_then_preference() {
        let records = [
            naptr(20, 10, "s", "SIP+D2U", "_sip._udp.b.example."),
            naptr(10, 20, "S", "SIP+D2T", "_sip._tcp.a.example."),
            naptr(10, 10, "s", "SIPS+D2T", "_sips._tcp.a.example."),
            naptr(5, 10, "u", "SIP+D2U", "_sip._udp.x.example."),
            naptr(5, 10, "s", "SIP+D2S", "_sip._sctp.x.example."),
        ];
        let all = [Transport::Udp, Transport::Tcp, Transport::Tls];
        assert_eq!(
            naptr_srv_names(&records, false, &all),
            vec![
                ("_sips._tcp.a.example".into(), Transport::Tls),
                ("_sip._tcp.a.example".into(), Transport::Tcp),
                ("_sip._udp.b.example".into(), Transport::Udp),
            ]
        );
        assert_eq!(
            naptr_srv_names(&records, false, &[Transport::Udp]),
            vec![("_sip._udp.b.example".into(), Transport::Udp)]
        );
        assert_eq!(
            naptr_srv_names(&records, true, &all),
            vec![("_sips._tcp.a.example".into(), Transport::Tls)]
        );
        assert!(naptr_srv_names(&records, true, &[Transport::Udp]).is_empty());
    }

    #[test]
    fn srv_fallback_tries_each_supported_transport() {
        assert_eq!(
            srv_fallback_names("pbx.example.", false, &[Transport::Udp, Transport::Tcp]),
            vec![
                ("_sip._udp.pbx.example".into(), Transport::Udp),
                ("_sip._tcp.pbx.example".into(), Transport::Tcp),
            ]
        );
        assert_eq!(
            srv_fallback_names("pbx.example", true, &[Transport::Udp, Transport::Tls]),
            vec![("_sips._tcp.pbx.example".into(), Transport::Tls)]
        );
    }

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    fn targets(v: &[Srv]) -> Vec<&str> {
        v.iter().map(|r| r.target.as_str()).collect()
    }

    #[test]
    fn srv_order_is_priority_then_weighted() {
        let records = [
            srv(20, 0, "backup"),
            srv(10, 60, "big"),
            srv(10, 40, "small"),
            srv(10, 0, "zero"),
        ];
        // pick = 0 always takes the first record with running sum >= 0: the
        // zero-weight one sorts first inside the priority (RFC 2782).
        assert_eq!(
            targets(&srv_order(&records, &mut |_| 0)),
            ["zero", "big", "small", "backup"]
        );
        // pick = total always takes the last of the group.
        assert_eq!(
            targets(&srv_order(&records, &mut |t| t)),
            ["small", "big", "zero", "backup"]
        );
        // 61 of 100 falls in "small" (0 + 60 < 61 <= 100).
        let mut picks = [61u32, 0, 0, 0].into_iter();
        assert_eq!(
            targets(&srv_order(&records, &mut |_| picks.next().unwrap())),
            ["small", "zero", "big", "backup"]
        );
        // Out-of-range picks are clamped, never panic.
        assert_eq!(srv_order(&records, &mut |_| u32::MAX).len(), 4);
    }

    #[test]
    fn srv_order_weights_hold_over_many_picks() {
        let records = [srv(1, 75, "a"), srv(1, 25, "b")];
        let mut rng = dataplane::dispatch::hash::SplitMix64(7);
        let mut first_a = 0;
        for _ in 0..4000 {
            let order = srv_order(&records, &mut |t| rng.below(u64::from(t) + 1) as u32);
            first_a += usize::from(order[0].target == "a");
        }
        assert!((2800..3200).contains(&first_a), "{first_a}");
    }

    #[test]
    fn a_dot_target_means_not_available() {
        assert!(srv_order(&[srv(0, 0, ".")], &mut |_| 0).is_empty());
    }

    #[test]
    fn ttls_are_bounded() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(3600));
        assert_eq!(clamp_ttl(0, min, max), min);
        assert_eq!(clamp_ttl(60, min, max), Duration::from_secs(60));
        assert_eq!(clamp_ttl(u32::MAX, min, max), max);
        // A maximum below the minimum does not panic: the minimum wins.
        assert_eq!(clamp_ttl(60, max, min), max);
        assert_eq!(
            refresh_after(Duration::from_secs(60)),
            Duration::from_secs(45)
        );
    }
}
