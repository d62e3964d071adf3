//! The knobs of the relay policy (`[security]`).

use std::net::IpAddr;

pub use ipnet::IpNet as Cidr;

/// What an initial request's pre-loaded Route headers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreloadedRoute {
    /// Removed; the request is routed by its Request-URI (Kamailio's default
    /// script). Entries naming this proxy are always just removed.
    #[default]
    Strip,
    /// Refused with 403 from untrusted sources; a trusted source's are removed.
    Reject,
    /// Followed for trusted sources; removed for everyone else.
    Follow,
}

/// Where an untrusted peer's in-dialog request may be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DialogTargets {
    /// Only to a dispatcher destination's address or a trusted network: the
    /// dialogs sipvane carries for such peers end there.
    #[default]
    Known,
    /// Wherever our Record-Route was followed to (Kamailio's `loose_route`).
    Any,
}

/// Whether `ip` is inside one of `nets` (IPv4-mapped IPv6 matched as IPv4).
pub fn contains(nets: &[Cidr], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_membership() {
        let nets: Vec<Cidr> = vec!["10.1.0.0/16".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(contains(&nets, "10.1.2.3".parse().unwrap()));
        assert!(contains(&nets, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(contains(&nets, "::1".parse().unwrap()));
        assert!(!contains(&nets, "10.2.0.1".parse().unwrap()));
        assert!(!contains(&[], "10.1.2.3".parse().unwrap()));
    }
}
