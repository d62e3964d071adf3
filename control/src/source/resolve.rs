//! Dispatcher destinations through DNS. Every definition's URI is resolved on
//! the control thread (RFC 3263, [`crate::dns`]); a URI whose answer comes from
//! SRV records becomes one destination per SRV target, with SRV priority and
//! weight mapped onto dispatcher priority and `rweight`. The result says when
//! to resolve again, so a changed answer can be republished before the old one
//! expires.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use dataplane::dispatch::list::{parse_attrs, DestDef, ListError};
use dataplane::dispatch::Table;
use dataplane::sip::Uri;

use crate::dns::rfc3263::Transport;
use crate::dns::{Resolution, Resolver};

/// Transports a dispatcher destination may use: TCP when its URI says
/// `;transport=tcp`, TLS for `;transport=tls` or a `sips:` URI (the workers
/// decide the transport from the URI alone), UDP otherwise — never one chosen
/// by NAPTR that the URI does not name.
pub fn destination_transports(uri: &str) -> &'static [Transport] {
    let Ok(u) = Uri::parse(uri.as_bytes()) else {
        return &[Transport::Udp];
    };
    if dataplane::route::uri_secure(&u) {
        &[Transport::Tls]
    } else if dataplane::route::uri_tcp(&u) {
        &[Transport::Tcp]
    } else {
        &[Transport::Udp]
    }
}

/// Definitions as the table is built from them: SRV names expanded, each with
/// its address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expanded {
    pub defs: Vec<DestDef>,
    pub addrs: HashMap<String, SocketAddr>,
    /// When to resolve again; `None` when every destination is an IP literal.
    pub refresh: Option<Instant>,
}

/// Resolves every definition. Every problem carries the definition's line.
pub async fn expand(defs: &[DestDef], dns: &Resolver) -> Result<Expanded, Vec<ListError>> {
    let mut out = Expanded::default();
    let mut errors = Vec::new();
    for def in defs {
        if destination_transports(&def.uri) == [Transport::Tls] && !dns.tls() {
            errors.push(ListError::new(
                def.line,
                format!(
                    "TLS destination '{}' needs [tls] ca (the PEM CA bundle its certificate is verified against)",
                    def.uri
                ),
            ));
            continue;
        }
        match dns
            .resolve_uri(&def.uri, destination_transports(&def.uri))
            .await
        {
            Ok(res) => {
                if let Some(at) = res.refresh {
                    out.refresh = Some(out.refresh.map_or(at, |t| t.min(at)));
                }
                for (d, addr) in expand_one(def, &res) {
                    out.addrs.insert(d.uri.clone(), addr);
                    out.defs.push(d);
                }
            }
            Err(e) => errors.push(ListError::new(
                def.line,
                format!("cannot resolve destination '{}': {e}", def.uri),
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Builds the table from expanded definitions (the successor of `previous`
/// when given, keeping the state of destinations that persist).
pub fn build(
    expanded: &Expanded,
    epoch: Instant,
    previous: Option<&Table>,
) -> Result<Table, Vec<ListError>> {
    let mut lookup = |uri: &str| {
        expanded
            .addrs
            .get(uri)
            .copied()
            .ok_or_else(|| format!("{uri} was not resolved"))
    };
    match previous {
        Some(old) => Table::rebuild(old, &expanded.defs, &mut lookup),
        None => Table::build(&expanded.defs, epoch, &mut lookup),
    }
}

/// One definition and its resolution as table definitions (pure). A name
/// resolved through A/AAAA stays one destination on its first address; SRV
/// targets become one destination each, `sip:TARGET:PORT` with the
/// configured scheme, user and parameters; their priority is the configured
/// one minus the SRV priority (lower SRV priority is preferred, higher
/// dispatcher priority is); their SRV weights become `rweight` unless the
/// definition sets one.
pub fn expand_one(def: &DestDef, res: &Resolution) -> Vec<(DestDef, SocketAddr)> {
    if !res.from_srv {
        return res
            .targets
            .first()
            .map(|t| (def.clone(), t.addr))
            .into_iter()
            .collect();
    }
    let Ok(uri) = Uri::parse(def.uri.as_bytes()) else {
        return Vec::new();
    };
    let scheme = String::from_utf8_lossy(uri.scheme);
    let user = uri
        .user
        .map(|u| format!("{}@", String::from_utf8_lossy(u)))
        .unwrap_or_default();
    let params = String::from_utf8_lossy(uri.params);
    let weights: Vec<u16> = res.targets.iter().map(|t| t.weight).collect();
    let rweights = srv_rweights(&weights);
    res.targets
        .iter()
        .zip(rweights)
        .map(|(t, rweight)| {
            let mut d = def.clone();
            d.uri = format!("{scheme}:{user}{}:{}{params}", t.host, t.addr.port());
            d.priority = def.priority.saturating_sub(i32::from(t.priority));
            if def.attrs.rweight == 0 && rweight > 0 {
                let raw = match def.attrs_raw.trim_end_matches(';') {
                    "" => format!("rweight={rweight}"),
                    a => format!("{a};rweight={rweight}"),
                };
                if let Ok(attrs) = parse_attrs(&raw) {
                    d.attrs = attrs;
                    d.attrs_raw = raw;
                }
            }
            let from = format!(
                "SRV of {} (priority {}, weight {})",
                def.uri, t.priority, t.weight
            );
            d.description = match def.description.as_str() {
                "" => from,
                own => format!("{own}; {from}"),
            };
            (d, t.addr)
        })
        .collect()
}

/// SRV weights (0..=65535, relative) as `rweight` values (1..=100) keeping
/// their ratios as far as integers allow; all zero: none (0) for every one.
pub fn srv_rweights(weights: &[u16]) -> Vec<u32> {
    let max = weights.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return vec![0; weights.len()];
    }
    weights
        .iter()
        .map(|&w| {
            let scaled = if max <= 100 {
                u32::from(w)
            } else {
                (u32::from(w) * 100 + u32::from(max) / 2) / u32::from(max)
            };
            scaled.max(1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Resolved;
    use dataplane::dispatch::list::parse_list;

    fn def(line: &str) -> DestDef {
        parse_list(line).unwrap().remove(0)
    }

    fn target(host: &str, addr: &str, priority: u16, weight: u16) -> Resolved {
        Resolved {
            addr: addr.parse().unwrap(),
            transport: Transport::Udp,
            host: host.into(),
            priority,
            weight,
        }
    }

    #[test]
    fn an_address_answer_keeps_the_definition() {
        let d = def("1 sip:pbx.example:5070 0 10 weight=50\n");
        let res = Resolution {
            targets: vec![
                target("pbx.example", "10.0.0.1:5070", 0, 0),
                target("pbx.example", "10.0.0.2:5070", 0, 0),
            ],
            from_srv: false,
            refresh: None,
        };
        assert_eq!(
            expand_one(&d, &res),
            vec![(d.clone(), "10.0.0.1:5070".parse().unwrap())]
        );
    }

    #[test]
    fn srv_targets_become_destinations_with_priority_and_weight() {
        let d = def("3 sip:pool.example;transport=udp 0 10 maxload=50\n");
        let res = Resolution {
            targets: vec![
                target("a.pool.example", "10.0.0.1:5080", 1, 30),
                target("b.pool.example", "10.0.0.2:5090", 1, 10),
                target("c.pool.example", "10.0.0.3:5060", 2, 0),
            ],
            from_srv: true,
            refresh: None,
        };
        let out = expand_one(&d, &res);
        let summary: Vec<(&str, i32, u32, u32, &str)> = out
            .iter()
            .map(|(d, _)| {
                (
                    d.uri.as_str(),
                    d.priority,
                    d.attrs.rweight,
                    d.attrs.maxload,
                    d.attrs_raw.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "sip:a.pool.example:5080;transport=udp",
                    9,
                    30,
                    50,
                    "maxload=50;rweight=30"
                ),
                (
                    "sip:b.pool.example:5090;transport=udp",
                    9,
                    10,
                    50,
                    "maxload=50;rweight=10"
                ),
                (
                    "sip:c.pool.example:5060;transport=udp",
                    8,
                    1,
                    50,
                    "maxload=50;rweight=1"
                ),
            ]
        );
        assert_eq!(out[2].1, "10.0.0.3:5060".parse().unwrap());
        assert_eq!(
            out[0].0.description,
            "SRV of sip:pool.example;transport=udp (priority 1, weight 30)"
        );
        assert!(out.iter().all(|(x, _)| x.set == 3 && x.line == d.line));
    }

    #[test]
    fn a_configured_rweight_wins_over_srv_weights() {
        let d = def("1 sip:pool.example 0 0 rweight=7\n");
        let res = Resolution {
            targets: vec![target("a.example", "10.0.0.1:5060", 0, 500)],
            from_srv: true,
            refresh: None,
        };
        let out = expand_one(&d, &res);
        assert_eq!(
            (out[0].0.attrs.rweight, out[0].0.attrs_raw.as_str()),
            (7, "rweight=7")
        );
    }

    #[test]
    fn srv_weights_scale_into_rweight_range() {
        assert_eq!(srv_rweights(&[0, 0]), [0, 0]);
        assert_eq!(srv_rweights(&[60, 40, 0]), [60, 40, 1]);
        assert_eq!(srv_rweights(&[1000, 250, 1]), [100, 25, 1]);
        assert_eq!(srv_rweights(&[65535, 65535]), [100, 100]);
        assert!(srv_rweights(&[]).is_empty());
    }
}
