//! The routing decision for a request, as one pure function: the parsed
//! message, who sent it and the configuration in; what to do with it out.
//! Stateful and stateless paths of the proxy both call [`decide`], so the
//! relay policy (who may send us where), loose routing and the local
//! answers live and are tested here.
//!
//! The trust model (docs/security.md): nothing from the network is trusted.
//! A source is *trusted* when its IP is in `[security] trusted_sources` or it
//! is a dispatcher destination (address and port). Untrusted sources reach
//! only what sipvane chooses for them:
//! - an initial request goes to a dispatcher set (pre-loaded Route headers
//!   are removed, or the request refused, `preloaded_route`); a Request-URI
//!   naming a domain we do not serve gets 404;
//! - an in-dialog request is routed only through this proxy's own
//!   Record-Route, and then only to a dispatcher destination's address or a
//!   trusted network (`dialog_targets = "known"`); anything else gets 404 or
//!   403, never a datagram to an address the peer picked.

pub mod names;
pub mod trust;

use std::net::{IpAddr, SocketAddr};

use crate::dispatch::hash::{hash_bytes, mix64};
use crate::proxy::config::{Ownership, ProxyConfig, UnknownDomain};
use crate::sip::parse::RequestInfo;
use crate::sip::{HeaderName, Message, Method, Uri};

pub use names::{Lookup, Resolved};
pub use trust::{Cidr, DialogTargets, PreloadedRoute};

/// A request as the decision sees it.
#[derive(Clone, Copy)]
pub struct Request<'a, 'm, 'i> {
    pub msg: &'a Message<'m>,
    /// What validation parsed of it.
    pub info: &'a RequestInfo<'i>,
    pub method: Method,
    /// Whether the source may do more than an anonymous caller (see the
    /// module doc); asked only where the answer matters.
    pub trusted: &'a dyn Fn() -> bool,
    /// The datagram was handed over by another worker: never hand it on again.
    pub handed_over: bool,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Answer it here with `code` (and a Warning text).
    Reply {
        code: u16,
        warning: Option<&'static str>,
    },
    /// An OPTIONS addressed to this proxy: answer 200 with our capabilities.
    Options,
    /// Another worker owns the dialog it belongs to.
    Handoff(usize),
    /// The next hop is a host name the worker does not know yet (the
    /// `names` lookup said [`Lookup::Unknown`]): park the request and ask.
    Resolve,
    /// Relay to a next hop the route set or Request-URI names, after
    /// dropping `pop_routes` leading Route entries. `strict`: the previous
    /// hop was a strict router (RFC 3261 §16.4) — the last Route entry
    /// becomes the Request-URI and leaves the route set.
    Relay {
        to: SocketAddr,
        /// The next hop's URI says `;transport=tcp` or `;transport=tls`
        /// (a stream connection).
        tcp: bool,
        /// The next hop's URI says `;transport=tls` or is a `sips:` URI: a
        /// new connection to it runs TLS and our Via says TLS.
        tls: bool,
        pop_routes: usize,
        strict: bool,
    },
    /// An initial request for dispatcher set `set` (`media`: the matching
    /// rule's anchoring override), after dropping `pop_routes` Route entries.
    Dispatch {
        set: u32,
        media: Option<bool>,
        pop_routes: usize,
    },
    /// A REGISTER for a registrar domain: the registrar answers it.
    Register,
    /// An initial request for a registered user (a Request-URI user in
    /// `[registrar] prefixes`): to the user's bindings, after dropping
    /// `pop_routes` Route entries.
    Location { pop_routes: usize },
}

const fn reply(code: u16, warning: &'static str) -> Decision {
    Decision::Reply {
        code,
        warning: Some(warning),
    }
}

/// How the decision learns the address of a next hop named by a host name.
pub type Names<'a> = &'a dyn Fn(&Uri<'_>) -> Lookup;

/// Decides what `req` gets. `known_target` says whether an address is one an
/// untrusted peer's in-dialog request may be relayed to (a dispatcher
/// destination or a trusted network); it is asked after a name is resolved
/// too, so resolving never widens the relay policy. `names`: what the
/// worker knows of a next hop's host name.
pub fn decide(
    req: Request<'_, '_, '_>,
    cfg: &ProxyConfig,
    worker: usize,
    known_target: &dyn Fn(IpAddr) -> bool,
    names: Names<'_>,
) -> Decision {
    let msg = req.msg;
    let in_dialog = req.info.common.to.tag.is_some();

    // The route set: how many entries, and the first three parsed (a
    // double Record-Route of ours, then the next hop).
    let mut routes = 0usize;
    let mut first: Option<Uri<'_>> = None;
    let mut second: Option<Uri<'_>> = None;
    let mut third: Option<Uri<'_>> = None;
    let mut all_ours = true;
    for entry in msg.values(HeaderName::Route) {
        let Some(uri) = route_uri(entry) else {
            return reply(400, "Bad Route header");
        };
        all_ours &= cfg.owner_of(uri.host, uri.port).is_some();
        match routes {
            0 => first = Some(uri),
            1 => second = Some(uri),
            2 => third = Some(uri),
            _ => {}
        }
        routes += 1;
    }
    let first_owner = first.and_then(|u| cfg.owner_of(u.host, u.port));
    let own = own_entries(cfg, first.as_ref(), second.as_ref());
    if in_dialog && routes > 0 && first_owner.is_none() {
        let ruri = &req.info.ruri;
        if let Some(Ownership::Worker(w)) = cfg.owner_of(ruri.host, ruri.port) {
            // Our own Record-Route in the Request-URI: the previous hop
            // routes strictly. Its real target is the last Route entry.
            return strict_route(req, cfg, worker, w, routes, first, known_target, names);
        }
    }
    if in_dialog {
        if let Some(w) = own.worker {
            if w != worker && w < cfg.private_ports.len() && !req.handed_over {
                // The dialog this request belongs to lives on worker w.
                return Decision::Handoff(w);
            }
        }
    }

    // Max-Forwards before anything is relayed (RFC 3261 §16.3 step 2).
    if req.info.max_forwards == Some(0) {
        let ruri = &req.info.ruri;
        let to_us = req.method == Method::Options
            && (routes == 0 || (routes == 1 && first_owner.is_some()))
            && cfg.owner_of(ruri.host, ruri.port).is_some();
        return if to_us {
            Decision::Options
        } else {
            reply(483, "Too many hops")
        };
    }

    if in_dialog {
        let next = match own.count {
            0 => first,
            1 => second,
            _ => third,
        };
        return in_dialog_decision(req, cfg, (routes, next, own.count), known_target, names);
    }

    // ---- initial request: the route set is the caller's wish, not ours.
    let mut pop_routes = 0;
    if routes > 0 {
        let follow = match cfg.preloaded_route {
            _ if all_ours => false,
            PreloadedRoute::Follow => (req.trusted)(),
            PreloadedRoute::Reject if !(req.trusted)() => {
                return reply(403, "Pre-loaded Route not allowed");
            }
            PreloadedRoute::Reject | PreloadedRoute::Strip => false,
        };
        if follow {
            // A trusted peer's own route set: pop our entry, go where the next says.
            let (next, pop) = match first_owner {
                Some(_) => (second, 1),
                None => (first, 0),
            };
            if let Some(next) = next {
                if cfg.owner_of(next.host, next.port).is_some() {
                    return reply(482, "Route points back at sipvane");
                }
                return match next_hop(&next, names) {
                    Ok((to, tcp, tls)) => Decision::Relay {
                        to,
                        tcp,
                        tls,
                        pop_routes: pop,
                        strict: false,
                    },
                    Err(d) => d,
                };
            }
            pop_routes = pop;
        } else {
            // Kamailio's default script: remove_hf("Route") on initial requests.
            pop_routes = routes;
        }
    }
    let ruri = &req.info.ruri;
    if req.method == Method::Options && cfg.owner_of(ruri.host, ruri.port).is_some() {
        // Keepalive addressed to sipvane itself.
        return Decision::Options;
    }
    if let Some(reg) = &cfg.registrar {
        let ours = reg
            .config
            .domain_of(ruri.host, cfg.is_local_host(ruri.host))
            .is_some();
        if ours && req.method == Method::Register {
            return Decision::Register;
        }
        if ours && reg.config.is_local_user(ruri.user.unwrap_or(b"")) {
            return Decision::Location { pop_routes };
        }
    }
    if !cfg.serves_domain(ruri.host) {
        // A plain proxy would forward to the Request-URI host; only a trusted
        // source may ask that of us.
        if cfg.unknown_domain == UnknownDomain::Relay && (req.trusted)() {
            return match next_hop(ruri, names) {
                Ok((to, tcp, tls)) => Decision::Relay {
                    to,
                    tcp,
                    tls,
                    pop_routes,
                    strict: false,
                },
                Err(d) => d,
            };
        }
        return reply(404, "Domain not served here");
    }
    let (set, media) = cfg.route_for(ruri.user.unwrap_or(b""), ruri.host);
    Decision::Dispatch {
        set,
        media,
        pop_routes,
    }
}

/// Loose routing of a request inside a dialog (RFC 3261 §16.4, §16.6 step 6).
/// `route_set`: how many Route entries, the first one after our own
/// entries, and how many of ours lead the set (0, 1, or 2 for a double
/// Record-Route).
type RouteSet<'u> = (usize, Option<Uri<'u>>, usize);

fn in_dialog_decision(
    req: Request<'_, '_, '_>,
    cfg: &ProxyConfig,
    (routes, after_ours, own): RouteSet<'_>,
    known_target: &dyn Fn(IpAddr) -> bool,
    names: Names<'_>,
) -> Decision {
    let (next, pop_routes) = match (after_ours, own) {
        // Through our own Record-Route: the next entry, else the remote target.
        (next, 1..) => (next, own),
        // A route set that does not start with us: not a dialog we routed.
        (Some(f), 0) if (req.trusted)() => (Some(f), 0),
        (Some(_), 0) => return reply(404, "Route does not name this proxy"),
        (None, _) if !(req.trusted)() => return reply(404, "Not here"),
        (None, _) => (None, 0),
    };
    let (to, tcp, tls) = match next {
        Some(uri) => {
            if cfg.owner_of(uri.host, uri.port).is_some() {
                // More of our own entries than one Record-Route of ours
                // writes: forwarding would loop.
                return reply(482, "Route points back at sipvane");
            }
            match next_hop(&uri, names) {
                Ok(hop) => hop,
                Err(d) => return d,
            }
        }
        None => {
            let ruri = &req.info.ruri;
            if cfg.owner_of(ruri.host, ruri.port).is_some() {
                // Addressed to sipvane itself with no route on: nowhere to go.
                return reply(404, "Not here");
            }
            match next_hop(ruri, names) {
                Ok(hop) => hop,
                Err(d) => return d,
            }
        }
    };
    if cfg.dialog_targets == DialogTargets::Known && !known_target(to.ip()) && !(req.trusted)() {
        return reply(403, "Relay denied");
    }
    debug_assert!(pop_routes <= routes);
    Decision::Relay {
        to,
        tcp,
        tls,
        pop_routes,
        strict: false,
    }
}

/// RFC 3261 §16.4: the Request-URI is a Record-Route value of ours (worker
/// `owner`'s), so the last Route entry is the real Request-URI; the next hop
/// is the first remaining Route entry, else that URI.
#[allow(clippy::too_many_arguments)]
fn strict_route(
    req: Request<'_, '_, '_>,
    cfg: &ProxyConfig,
    worker: usize,
    owner: usize,
    routes: usize,
    first: Option<Uri<'_>>,
    known_target: &dyn Fn(IpAddr) -> bool,
    names: Names<'_>,
) -> Decision {
    if owner != worker && owner < cfg.private_ports.len() && !req.handed_over {
        return Decision::Handoff(owner);
    }
    let next = if routes > 1 {
        first
    } else {
        req.msg.values(HeaderName::Route).last().and_then(route_uri)
    };
    let Some(next) = next else {
        return reply(400, "Bad Route header");
    };
    if cfg.owner_of(next.host, next.port).is_some() {
        return reply(482, "Route points back at sipvane");
    }
    let (to, tcp, tls) = match next_hop(&next, names) {
        Ok(hop) => hop,
        Err(d) => return d,
    };
    if cfg.dialog_targets == DialogTargets::Known && !known_target(to.ip()) && !(req.trusted)() {
        return reply(403, "Relay denied");
    }
    Decision::Relay {
        to,
        tcp,
        tls,
        pop_routes: 0,
        strict: true,
    }
}

/// This proxy's entries leading a route set: what loose routing pops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OwnEntries {
    /// 0, 1, or 2: the second entry is ours too and on another transport
    /// than the first (the two halves of a double Record-Route).
    pub count: usize,
    /// The worker whose private port one of them names: the dialog's owner.
    pub worker: Option<usize>,
}

/// How many of the first two Route entries are this proxy's own and are
/// popped together. sipvane writes two Record-Route entries when a call
/// changes transport (Kamailio `enable_double_rr`): one for each side, each
/// naming the transport of its side, so a peer that follows RFC 3263 comes
/// back over the transport it uses. Two own entries on the same transport
/// are no such pair: the request went through sipvane twice (a loop).
pub fn own_entries(
    cfg: &ProxyConfig,
    first: Option<&Uri<'_>>,
    second: Option<&Uri<'_>>,
) -> OwnEntries {
    let Some(first) = first else {
        return OwnEntries::default();
    };
    let Some(a) = cfg.owner_of(first.host, first.port) else {
        return OwnEntries::default();
    };
    let worker_of = |o: Ownership| match o {
        Ownership::Worker(w) => Some(w),
        Ownership::Public => None,
    };
    let pair = second.and_then(|s| {
        let b = cfg.owner_of(s.host, s.port)?;
        (uri_transport(first) != uri_transport(s)).then_some(b)
    });
    match pair {
        Some(b) => OwnEntries {
            count: 2,
            worker: worker_of(a).or(worker_of(b)),
        },
        None => OwnEntries {
            count: 1,
            worker: worker_of(a),
        },
    }
}

/// The transport a URI names: 0 UDP (none said), 1 TCP, 2 TLS.
fn uri_transport(uri: &Uri<'_>) -> u8 {
    if uri_secure(uri) {
        2
    } else if uri_tcp(uri) {
        1
    } else {
        0
    }
}

/// The address and transport (stream, TLS) of a next hop: an IP literal as
/// written, a host name as the worker's cache knows it. A name that does not
/// resolve gets Kamailio's answer (478 Unresolvable destination); a DNS
/// failure 503.
fn next_hop(uri: &Uri<'_>, names: Names<'_>) -> Result<(SocketAddr, bool, bool), Decision> {
    let tls = uri_secure(uri);
    if let Some(a) = uri_addr(uri) {
        return Ok((a, uri_tcp(uri) || tls, tls));
    }
    match names(uri) {
        Lookup::Known(Resolved::Found { to, tcp }) => Ok((to, tcp || tls, tls)),
        Lookup::Known(Resolved::NoSuchName) => Err(reply(478, "Unresolvable destination")),
        Lookup::Known(Resolved::Failed) => Err(reply(503, "DNS lookup failed")),
        Lookup::Unknown => Err(Decision::Resolve),
    }
}

/// The URI of the last Route entry as written (between `<>`), which a strict
/// router left there as the real Request-URI.
pub fn last_route_uri<'m>(msg: &Message<'m>) -> Option<&'m [u8]> {
    entry_uri(msg.values(HeaderName::Route).last()?)
}

/// The URI of one Route entry (`<sip:...;lr>` or a bare URI).
pub fn route_uri(entry: &[u8]) -> Option<Uri<'_>> {
    Uri::parse(entry_uri(entry)?).ok()
}

/// Which worker owns a request that arrived on the shared public socket,
/// when calls are spread by Call-ID (`balance = "callid"`, the default).
///
/// The kernel's `SO_REUSEPORT` hash is per source address, so one trunk would
/// use one worker; hashing the Call-ID instead spreads its calls over all of
/// them. Every request of a transaction carries the same Call-ID —
/// retransmissions, the CANCEL, the ACK of a non-2xx final — so they all meet
/// the transaction's owner, and as the kernel keeps one source on one
/// receiving worker (one handoff queue, first in first out), a retransmission
/// never overtakes its original. The ACK of a 2xx and other in-dialog requests
/// follow the dialog's owner too: the dialog was created by the steered INVITE.
///
/// A request routed through a worker's own Record-Route (its first Route entry
/// or, from a strict router, its Request-URI names a private port) is left to
/// [`decide`], which hands it to that worker: the dialog lives there even if
/// the worker count changed since. `None`: no Call-ID, or one worker.
pub fn steer(msg: &Message<'_>, cfg: &ProxyConfig, workers: usize) -> Option<usize> {
    if workers < 2 {
        return None;
    }
    let mut entries = msg.values(HeaderName::Route);
    if let Some(first) = entries.next() {
        let first = route_uri(first);
        let second = entries.next().and_then(route_uri);
        let ours = own_entries(cfg, first.as_ref(), second.as_ref());
        let ruri = msg.request_uri().and_then(|r| Uri::parse(r).ok());
        let strict = matches!(
            ruri.and_then(|u| cfg.owner_of(u.host, u.port)),
            Some(Ownership::Worker(_))
        );
        if ours.worker.is_some() || strict {
            return None;
        }
    }
    let call_id = msg.call_id().ok()?;
    // Salted, so that the worker split is independent of the dispatcher's own
    // hash(Call-ID) (algorithm 0): each worker still sees every destination.
    let h = mix64(hash_bytes(call_id) ^ 0x57ee_12c0_a11d_0001);
    Some(((u128::from(h) * workers as u128) >> 64) as usize)
}

/// The URI text of one Route entry: between `<>`, or the whole entry.
fn entry_uri(entry: &[u8]) -> Option<&[u8]> {
    let e = entry.trim_ascii();
    match memchr::memchr(b'<', e) {
        Some(open) => {
            let rest = &e[open + 1..];
            Some(&rest[..memchr::memchr(b'>', rest)?])
        }
        None => Some(e),
    }
}

/// The address of an IP-literal URI; sipvane resolves no names on a worker.
pub fn uri_addr(uri: &Uri<'_>) -> Option<SocketAddr> {
    let ip = parse_ip(uri.host)?;
    let default = if uri.scheme.eq_ignore_ascii_case(b"sips") {
        5061
    } else {
        5060
    };
    Some(SocketAddr::new(ip, uri.port.unwrap_or(default)))
}

/// Whether a URI asks for TCP (`;transport=tcp`, any case).
pub fn uri_tcp(uri: &Uri<'_>) -> bool {
    uri.param(b"transport")
        .flatten()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"tcp"))
}

/// Whether a URI asks for TLS (`;transport=tls`, any case): an in-dialog next
/// hop that is a TLS client reached over its connection (a stream, as for TCP).
pub fn uri_tls(uri: &Uri<'_>) -> bool {
    uri.param(b"transport")
        .flatten()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"tls"))
}

/// Whether a destination is reached over TLS: `;transport=tls` or a `sips:`
/// URI (RFC 3261 §26.2.2: sips means TLS on every hop).
pub fn uri_secure(uri: &Uri<'_>) -> bool {
    uri_tls(uri) || uri.scheme.eq_ignore_ascii_case(b"sips")
}

/// An IP literal (IPv6 with or without brackets).
pub use crate::sip::parse_ip;

#[cfg(test)]
mod tests;
