//! Where destinations come from: a Kamailio `dispatcher.list` file, or the
//! Kamailio `dispatcher` table on PostgreSQL / MariaDB.

pub mod db;
pub mod file;
pub mod reload;
pub mod snapshot;

use std::net::{SocketAddr, ToSocketAddrs};

use dataplane::sip::Uri;

/// Resolves a destination URI to the address sipvane sends to. Runs on the
/// control thread, so a DNS lookup here never stalls a worker.
pub fn resolve_uri(uri: &str) -> Result<SocketAddr, String> {
    let parsed = Uri::parse(uri.as_bytes()).map_err(|e| format!("bad URI {uri:?}: {e}"))?;
    let transport = parsed.param(b"transport").flatten().unwrap_or(b"udp");
    if !transport.eq_ignore_ascii_case(b"udp") {
        return Err(format!(
            "{uri}: transport={} is not supported yet (UDP only)",
            String::from_utf8_lossy(transport)
        ));
    }
    let host = std::str::from_utf8(parsed.host).map_err(|_| format!("{uri}: host is not UTF-8"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let default_port = if parsed.scheme.eq_ignore_ascii_case(b"sips") {
        5061
    } else {
        5060
    };
    let port = parsed.port.unwrap_or(default_port);
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{uri}: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{uri}: {host} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_ip_literals_and_rejects_tcp() {
        assert_eq!(
            resolve_uri("sip:127.0.0.1:5070").unwrap(),
            "127.0.0.1:5070".parse().unwrap()
        );
        assert_eq!(
            resolve_uri("sip:127.0.0.1").unwrap(),
            "127.0.0.1:5060".parse().unwrap()
        );
        assert_eq!(
            resolve_uri("sip:[::1]:5080").unwrap(),
            "[::1]:5080".parse().unwrap()
        );
        assert!(resolve_uri("sip:127.0.0.1;transport=tcp")
            .unwrap_err()
            .contains("UDP only"));
        assert!(resolve_uri("nonsense").is_err());
    }
}
