//! Path (RFC 3327): the proxies between a registered phone and the
//! registrar (an edge proxy, an SBC) list themselves in the REGISTER's
//! `Path` header; requests for the binding are sent through them, the
//! stored values becoming a pre-loaded route set. Pure: what a REGISTER
//! carries, where a request for a binding goes, what the 200 echoes.
//!
//! Trust (docs/registrar.md#path): a Path hop is chosen by whoever sent
//! the REGISTER, like a Contact, so it gets the Contact rule: requests go
//! to the first hop only when it is the address the REGISTER came from
//! (the edge that added it) or when that address is a trusted source;
//! otherwise they go to the REGISTER's source (stored as `received`), with
//! the Route lines still naming the Path. A client cannot make sipvane
//! send calls to an address it did not register from.

use std::net::SocketAddr;

use crate::sip::header::split_comma;
use crate::sip::{HeaderName, Message, NameAddr, Uri};

/// Path values longer than this (all of them together) refuse the REGISTER:
/// they are copied into every call to the binding and into the database.
pub const MAX_PATH: usize = 1024;

/// The REGISTER's Path header values joined by `,` in the order received
/// (the first is the hop nearest the registrar); empty: no Path. `Err`
/// with the warning of a 400 when an entry is not a SIP URI in `<>` or the
/// whole is too long.
pub fn of_register(msg: &Message<'_>) -> Result<String, &'static str> {
    let mut path = String::new();
    for h in msg
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::Other && h.raw_name.eq_ignore_ascii_case(b"Path"))
    {
        for entry in split_comma(h.value) {
            let entry = entry.trim_ascii();
            // Folded lines stay out: the value is copied into Route lines.
            if !sane(entry) {
                return Err("Bad Path");
            }
            let uri = NameAddr::parse(entry)
                .ok()
                .filter(|na| na.display.is_some() || entry.starts_with(b"<"))
                .and_then(|na| Uri::parse(na.uri).ok())
                .ok_or("Bad Path")?;
            if !(uri.scheme.eq_ignore_ascii_case(b"sip")
                || uri.scheme.eq_ignore_ascii_case(b"sips"))
            {
                return Err("Path must be sip: or sips: URIs");
            }
            if !path.is_empty() {
                path.push(',');
            }
            path.push_str(std::str::from_utf8(entry).map_err(|_| "Bad Path")?);
        }
    }
    if path.len() > MAX_PATH {
        return Err("Path too long");
    }
    Ok(path)
}

/// Whether a Path value may be written into a header line as it is: no
/// control characters (a folded line, or a row from the database with a
/// line break, would add header lines of its own).
pub fn sane(path: impl AsRef<[u8]>) -> bool {
    path.as_ref().iter().all(|&b| b >= 0x20 && b != 0x7f)
}

/// The address of a stored Path's first hop, when it is an IP literal
/// (workers resolve no names).
pub fn first_hop(path: &str) -> Option<SocketAddr> {
    let entry = split_comma(path.as_bytes()).next()?;
    let na = NameAddr::parse(entry.trim_ascii()).ok()?;
    let uri = Uri::parse(na.uri).ok()?;
    crate::route::uri_addr(&uri)
}

/// Where requests for a binding registered with `path` (non-empty) from
/// `src` must go instead of the Path's first hop: `None` when the first
/// hop may be used (it is `src`, or `src` is trusted and the hop is an IP
/// literal), else `src`.
pub fn received(path: &str, src: SocketAddr, trusted_src: bool) -> Option<SocketAddr> {
    match first_hop(path) {
        Some(hop) if hop == src || trusted_src => None,
        _ => Some(src),
    }
}

/// Whether the REGISTER said `Supported: path` (then its 200 lists the
/// Path, RFC 3327 §5.3).
pub fn supported(msg: &Message<'_>) -> bool {
    msg.values(HeaderName::Supported)
        .flat_map(split_comma)
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"path"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse;

    fn register(extra: &str) -> Vec<u8> {
        format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK0\r\n\
             From: <sip:6001@example.com>;tag=1\r\nTo: <sip:6001@example.com>\r\nCall-ID: c\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:6001@10.0.0.1:5070>\r\n{extra}Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn path_of(extra: &str) -> Result<String, &'static str> {
        of_register(&parse(&register(extra)).unwrap())
    }

    #[test]
    fn values_in_order_received() {
        assert_eq!(path_of(""), Ok(String::new()));
        assert_eq!(
            path_of("Path: <sip:10.0.0.2:5060;lr>\r\n"),
            Ok("<sip:10.0.0.2:5060;lr>".into())
        );
        // Several lines and several entries on a line keep their order.
        assert_eq!(
            path_of(
                "Path: <sip:p1.example;lr>, <sip:p2.example;lr>\r\npath: <sip:p3.example;lr>\r\n"
            ),
            Ok("<sip:p1.example;lr>,<sip:p2.example;lr>,<sip:p3.example;lr>".into())
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert_eq!(path_of("Path: sip:10.0.0.2;lr\r\n"), Err("Bad Path"));
        assert_eq!(path_of("Path: <sip:10.0.0.2;lr\r\n"), Err("Bad Path"));
        assert_eq!(
            path_of("Path: \"edge\r\n one\" <sip:10.0.0.2;lr>\r\n"),
            Err("Bad Path")
        );
        assert!(!sane("<sip:a;lr>\r\nVia: x"));
        assert_eq!(
            path_of("Path: <tel:+15551234>\r\n"),
            Err("Path must be sip: or sips: URIs")
        );
        let long = format!("Path: <sip:{}.example;lr>\r\n", "a".repeat(MAX_PATH));
        assert_eq!(path_of(&long), Err("Path too long"));
    }

    #[test]
    fn the_first_hop_is_used_only_from_itself_or_a_trusted_source() {
        let path = "<sip:10.0.0.2:5060;lr>,<sip:10.0.0.3;lr>";
        let edge: SocketAddr = "10.0.0.2:5060".parse().unwrap();
        let other: SocketAddr = "10.0.0.66:5060".parse().unwrap();
        assert_eq!(first_hop(path), Some(edge));
        assert_eq!(received(path, edge, false), None);
        assert_eq!(received(path, other, false), Some(other));
        assert_eq!(received(path, other, true), None);
        // A name as the first hop: sent to the source, trusted or not.
        assert_eq!(first_hop("<sip:edge.example;lr>"), None);
        assert_eq!(received("<sip:edge.example;lr>", other, true), Some(other));
        assert_eq!(
            first_hop("<sip:[2001:db8::1]:5070;lr>"),
            Some("[2001:db8::1]:5070".parse().unwrap())
        );
    }

    #[test]
    fn supported_path() {
        let with = |s: &str| supported(&parse(&register(s)).unwrap());
        assert!(!with(""));
        assert!(with("Supported: path\r\n"));
        assert!(with("Supported: timer, Path\r\nSupported: 100rel\r\n"));
        assert!(with("k: path\r\n"));
        assert!(!with("Supported: pathological\r\n"));
    }
}
