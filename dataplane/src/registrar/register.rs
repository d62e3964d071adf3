//! What an authenticated REGISTER does to its AOR (RFC 3261 §10.3 steps
//! 6–8): the updates for the location table and the bindings its 200
//! lists. Pure: the current bindings, the source address and `now` in.

use std::net::SocketAddr;

use super::location::{Binding, Op, Stream, Update};
use super::RegistrarConfig;
use crate::sip::{HeaderName, Message, NameAddr, Uri};

/// A REGISTER the registrar accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub updates: Vec<Update>,
    /// The AOR's live bindings once the updates are applied (the 200's
    /// Contact list).
    pub bindings: Vec<Binding>,
}

/// A REGISTER refused with `code` (and `Min-Expires` for 423).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub code: u16,
    pub warning: &'static str,
    pub min_expires: Option<u32>,
}

const fn refuse(code: u16, warning: &'static str) -> Refused {
    Refused {
        code,
        warning,
        min_expires: None,
    }
}

/// Processes the Contact headers of `msg` for `aor` (`user@domain`).
/// `current`: the AOR's bindings as published; `src`: where the REGISTER
/// came from and whether it is a trusted source (a Path it names may then
/// start elsewhere, [`super::path::received`]); `now_unix`: the wall clock
/// in seconds.
pub fn process(
    cfg: &RegistrarConfig,
    msg: &Message<'_>,
    aor: &str,
    current: &[Binding],
    src: (SocketAddr, bool),
    stream: Option<Stream>,
    now_unix: u64,
) -> Result<Accepted, Refused> {
    let (src, trusted_src) = src;
    let header_expires = match msg.header(HeaderName::Expires) {
        Some(v) => Some(parse_u32(v).ok_or(refuse(400, "Bad Expires"))?),
        None => None,
    };
    let call_id = msg.call_id().map_err(|_| refuse(400, "Bad Call-ID"))?;
    let cseq = msg.cseq().map_err(|_| refuse(400, "Bad CSeq"))?.seq;
    let mut list: Vec<Binding> = current
        .iter()
        .filter(|b| b.expires > now_unix)
        .cloned()
        .collect();
    let mut updates = Vec::new();
    let contacts: Vec<&[u8]> = msg.values(HeaderName::Contact).collect();
    if contacts.iter().any(|c| c.trim_ascii() == b"*") {
        // RFC 3261 §10.3 step 6: `*` only alone and with Expires: 0.
        if contacts.len() != 1 || header_expires != Some(0) {
            return Err(refuse(
                400,
                "Contact: * needs Expires: 0 and no other contact",
            ));
        }
        if list
            .iter()
            .any(|b| b.call_id.as_bytes() == call_id && b.cseq > cseq)
        {
            return Err(refuse(500, "Out of order REGISTER"));
        }
        updates.push(Update {
            aor: aor.into(),
            op: Op::Clear,
        });
        return Ok(Accepted {
            updates,
            bindings: Vec::new(),
        });
    }
    let path = super::path::of_register(msg).map_err(|w| refuse(400, w))?;
    let user_agent = msg
        .header(HeaderName::UserAgent)
        .map(|v| String::from_utf8_lossy(v.trim_ascii()).into_owned())
        .unwrap_or_default();
    let default_expires = header_expires.unwrap_or(cfg.default_expires);
    for raw in contacts {
        let na = NameAddr::parse(raw).map_err(|_| refuse(400, "Bad Contact"))?;
        let uri = Uri::parse(na.uri).map_err(|_| refuse(400, "Bad Contact URI"))?;
        if !(uri.scheme.eq_ignore_ascii_case(b"sip") || uri.scheme.eq_ignore_ascii_case(b"sips")) {
            return Err(refuse(400, "Contact must be a sip: or sips: URI"));
        }
        let params = crate::sip::header::params(na.params).map_while(Result::ok);
        let (mut expires, mut q) = (default_expires, 1000u16);
        for p in params {
            if p.name.eq_ignore_ascii_case(b"expires") {
                expires = p
                    .value
                    .and_then(parse_u32)
                    .ok_or(refuse(400, "Bad Contact expires"))?;
            } else if p.name.eq_ignore_ascii_case(b"q") {
                q = p
                    .value
                    .and_then(parse_q)
                    .ok_or(refuse(400, "Bad Contact q"))?;
            }
        }
        let contact: Box<str> = String::from_utf8_lossy(na.uri).into();
        let existing = list.iter().position(|b| b.contact == contact);
        if let Some(i) = existing {
            // RFC 3261 §10.3 step 7: an older CSeq of the same Call-ID is a
            // delayed duplicate; the same CSeq is a retransmission.
            if list[i].call_id.as_bytes() == call_id && list[i].cseq > cseq {
                return Err(refuse(500, "Out of order REGISTER"));
            }
        }
        if expires == 0 {
            if let Some(i) = existing {
                list.remove(i);
            }
            updates.push(Update {
                aor: aor.into(),
                op: Op::Remove(contact),
            });
            continue;
        }
        if expires < cfg.min_expires {
            return Err(Refused {
                code: 423,
                warning: "Interval Too Brief",
                min_expires: Some(cfg.min_expires),
            });
        }
        let expires = expires.min(cfg.max_expires);
        // NAT (Kamailio nat_uac_test 1/2/16 in one rule): when the Contact does
        // not name the address the REGISTER came from, requests go to the source.
        // Through a Path the first hop takes the Contact's place: NAT is the
        // edge's business (RFC 3327, Kamailio's lookup()), but the same rule
        // decides whether its address may be used.
        // Over a connection (no Path) the phone is reachable over that
        // connection only: its peer is always recorded.
        let stream = stream.filter(|_| path.is_empty());
        let received = if stream.is_some() {
            Some(src)
        } else if path.is_empty() {
            let contact_addr = crate::route::uri_addr(&uri);
            (contact_addr != Some(src)).then_some(src)
        } else {
            super::path::received(&path, src, trusted_src)
        };
        let ruid = match existing {
            Some(i) => list[i].ruid.clone(),
            None => ruid(cfg.ruid_seed, aor, &contact, call_id, now_unix),
        };
        let binding = Binding {
            contact,
            received,
            path: path.as_str().into(),
            expires: now_unix + u64::from(expires),
            q,
            call_id: String::from_utf8_lossy(call_id).into(),
            cseq,
            user_agent: user_agent.as_str().into(),
            ruid,
            last_modified: now_unix,
            stream,
        };
        match existing {
            Some(i) => list[i] = binding.clone(),
            None => list.push(binding.clone()),
        }
        updates.push(Update {
            aor: aor.into(),
            op: Op::Upsert(binding),
        });
    }
    if list.len() > cfg.max_contacts {
        return Err(refuse(503, "Too many registered contacts"));
    }
    Ok(Accepted {
        updates,
        bindings: list,
    })
}

/// `uri` with its host and port replaced by `src`, when it names another
/// address (the client is behind a NAT); `None` when it already names `src`.
pub fn nated_uri(uri: &Uri<'_>, src: SocketAddr) -> Option<Vec<u8>> {
    if crate::route::uri_addr(uri) == Some(src) {
        return None;
    }
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(uri.scheme);
    v.push(b':');
    if let Some(user) = uri.user {
        v.extend_from_slice(user);
        if let Some(pw) = uri.password {
            v.push(b':');
            v.extend_from_slice(pw);
        }
        v.push(b'@');
    }
    // SocketAddr's Display brackets IPv6.
    v.extend_from_slice(src.to_string().as_bytes());
    v.extend_from_slice(uri.params);
    if let Some(h) = uri.headers {
        v.push(b'?');
        v.extend_from_slice(h);
    }
    Some(v)
}

/// The Contact header values of a 200 to REGISTER: every binding with its
/// remaining lifetime (RFC 3261 §10.3 step 8).
pub fn contact_values(bindings: &[Binding], now_unix: u64) -> Vec<Vec<u8>> {
    bindings
        .iter()
        .map(|b| {
            let mut v = Vec::with_capacity(b.contact.len() + 24);
            v.push(b'<');
            v.extend_from_slice(b.contact.as_bytes());
            v.extend_from_slice(b">;expires=");
            v.extend_from_slice(b.expires.saturating_sub(now_unix).to_string().as_bytes());
            if b.q != 1000 {
                v.extend_from_slice(format!(";q={}.{:03}", b.q / 1000, b.q % 1000).as_bytes());
            }
            v
        })
        .collect()
}

fn parse_u32(v: &[u8]) -> Option<u32> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // RFC 3261 §20.19: values above 2^32-1 mean 2^32-1.
    Some(
        std::str::from_utf8(v)
            .ok()?
            .parse::<u64>()
            .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX)),
    )
}

/// A q-value (`0`, `0.5`, `1.000`) × 1000.
fn parse_q(v: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(v.trim_ascii()).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u16 = match int {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    let f: u16 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().ok()?
    };
    let q = whole + f;
    (q <= 1000).then_some(q)
}

/// A `location.ruid` for a new binding: unique per process (seed) and
/// binding.
fn ruid(seed: u64, aor: &str, contact: &str, call_id: &[u8], now_unix: u64) -> Box<str> {
    use std::hash::{BuildHasher, Hasher};
    let h = |k: u64| {
        let mut h = ahash::RandomState::with_seeds(seed, k, 0x5195, 0x0a11).build_hasher();
        h.write(aor.as_bytes());
        h.write(contact.as_bytes());
        h.write(call_id);
        h.write_u64(now_unix);
        h.finish()
    };
    format!("sv-{:016x}{:016x}", h(1), h(2)).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const NOW: u64 = 1_800_000_000;

    fn cfg() -> RegistrarConfig {
        super::super::test_config(Instant::now())
    }

    fn req(contacts: &[&str], expires: Option<&str>, cseq: u32) -> Vec<u8> {
        let mut s = String::from(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1\r\n\
             From: <sip:6001@example.com>;tag=1\r\nTo: <sip:6001@example.com>\r\nCall-ID: call-1\r\n",
        );
        s.push_str(&format!("CSeq: {cseq} REGISTER\r\n"));
        for c in contacts {
            s.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = expires {
            s.push_str(&format!("Expires: {e}\r\n"));
        }
        s.push_str("User-Agent: phone/1\r\nContent-Length: 0\r\n\r\n");
        s.into_bytes()
    }

    fn run(raw: &[u8], current: &[Binding], src: &str) -> Result<Accepted, Refused> {
        let msg = crate::sip::parse(raw).unwrap();
        process(
            &cfg(),
            &msg,
            "6001@example.com",
            current,
            (src.parse().unwrap(), false),
            None,
            NOW,
        )
    }

    #[test]
    fn register_refresh_and_remove() {
        let a = run(
            &req(&["<sip:6001@10.0.0.1:5070>;q=0.5"], Some("600"), 1),
            &[],
            "10.0.0.1:5070",
        )
        .unwrap();
        assert_eq!(a.bindings.len(), 1);
        let b = &a.bindings[0];
        assert_eq!(
            (b.expires, b.q, b.received, &*b.user_agent),
            (NOW + 600, 500, None, "phone/1")
        );
        assert_eq!(
            contact_values(&a.bindings, NOW),
            vec![b"<sip:6001@10.0.0.1:5070>;expires=600;q=0.500".to_vec()]
        );
        // Refresh keeps the ruid; a second contact is added.
        let r = run(
            &req(
                &[
                    "<sip:6001@10.0.0.1:5070>",
                    "<sip:6001@10.0.0.1:5072>;expires=120",
                ],
                None,
                2,
            ),
            &a.bindings,
            "10.0.0.1:5070",
        )
        .unwrap();
        assert_eq!(r.bindings.len(), 2);
        assert_eq!(r.bindings[0].ruid, b.ruid);
        assert_eq!(r.bindings[0].expires, NOW + 3600, "default_expires");
        assert_eq!(r.bindings[1].expires, NOW + 120);
        // expires=0 removes one.
        let d = run(
            &req(&["<sip:6001@10.0.0.1:5072>;expires=0"], None, 3),
            &r.bindings,
            "10.0.0.1:5070",
        )
        .unwrap();
        assert_eq!(d.bindings.len(), 1);
        assert_eq!(d.updates[0].op, Op::Remove("sip:6001@10.0.0.1:5072".into()));
        // Contact: * with Expires: 0 clears all.
        let c = run(&req(&["*"], Some("0"), 4), &d.bindings, "10.0.0.1:5070").unwrap();
        assert!(c.bindings.is_empty());
        assert_eq!(c.updates[0].op, Op::Clear);
        // A query (no Contact) lists what there is.
        let q = run(&req(&[], None, 5), &r.bindings, "10.0.0.1:5070").unwrap();
        assert!(q.updates.is_empty());
        assert_eq!(q.bindings.len(), 2);
    }

    #[test]
    fn limits_and_errors() {
        let e = run(
            &req(&["<sip:a@10.0.0.1>"], Some("10"), 1),
            &[],
            "10.0.0.1:5060",
        )
        .unwrap_err();
        assert_eq!((e.code, e.min_expires), (423, Some(60)));
        let capped = run(
            &req(&["<sip:a@10.0.0.1>"], Some("999999"), 1),
            &[],
            "10.0.0.1:5060",
        )
        .unwrap();
        assert_eq!(capped.bindings[0].expires, NOW + 3600);
        let four = [
            "<sip:a@10.0.0.1:1>",
            "<sip:a@10.0.0.1:2>",
            "<sip:a@10.0.0.1:3>",
            "<sip:a@10.0.0.1:4>",
        ];
        assert_eq!(
            run(&req(&four, None, 1), &[], "10.0.0.1:1")
                .unwrap_err()
                .code,
            503
        );
        assert_eq!(
            run(&req(&["*"], None, 1), &[], "10.0.0.1:1")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            run(&req(&["*", "<sip:a@b>"], Some("0"), 1), &[], "10.0.0.1:1")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            run(&req(&["<tel:+123>"], None, 1), &[], "10.0.0.1:1")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            run(&req(&["<sip:a@b>;q=2"], None, 1), &[], "10.0.0.1:1")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            run(&req(&["<sip:a@b>"], Some("x"), 1), &[], "10.0.0.1:1")
                .unwrap_err()
                .code,
            400
        );
        // An older CSeq of the same call is out of order; the same one is a retransmission.
        let a = run(&req(&["<sip:a@10.0.0.1>"], None, 5), &[], "10.0.0.1:5060").unwrap();
        assert_eq!(
            run(
                &req(&["<sip:a@10.0.0.1>"], None, 4),
                &a.bindings,
                "10.0.0.1:5060"
            )
            .unwrap_err()
            .code,
            500
        );
        assert!(run(
            &req(&["<sip:a@10.0.0.1>"], None, 5),
            &a.bindings,
            "10.0.0.1:5060"
        )
        .is_ok());
    }

    #[test]
    fn a_path_replaces_the_contact_as_the_target() {
        let with_path = |path: &str| {
            String::from_utf8(req(&["<sip:6001@192.168.1.5:5060>"], None, 1))
                .unwrap()
                .replace("User-Agent", &format!("Path: {path}\r\nUser-Agent"))
                .into_bytes()
        };
        let edge = "10.0.0.2:5060";
        // Sent by the edge its first hop names: requests go there, no NAT.
        let a = run(&with_path("<sip:10.0.0.2:5060;lr>"), &[], edge).unwrap();
        let b = &a.bindings[0];
        assert_eq!(&*b.path, "<sip:10.0.0.2:5060;lr>");
        assert_eq!((b.received, b.nated()), (None, false));
        assert_eq!(b.target(), Some(edge.parse().unwrap()));
        // A Path naming another address than the sender: the sender.
        let a = run(&with_path("<sip:192.0.2.50;lr>"), &[], edge).unwrap();
        let b = &a.bindings[0];
        assert_eq!(b.target(), Some(edge.parse().unwrap()));
        assert!(!b.nated(), "behind a Path NAT is the edge's business");
        // ... unless the sender is trusted.
        let raw = with_path("<sip:192.0.2.50;lr>");
        let msg = crate::sip::parse(&raw).unwrap();
        let a = process(
            &cfg(),
            &msg,
            "6001@example.com",
            &[],
            (edge.parse().unwrap(), true),
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(
            a.bindings[0].target(),
            Some("192.0.2.50:5060".parse().unwrap())
        );
        // A malformed Path refuses the REGISTER.
        let r = run(&with_path("sip:10.0.0.2;lr"), &[], edge).unwrap_err();
        assert_eq!((r.code, r.warning), (400, "Bad Path"));
    }

    #[test]
    fn nat_stores_the_source() {
        let a = run(
            &req(&["<sip:6001@192.168.1.20:5060>"], None, 1),
            &[],
            "203.0.113.7:40123",
        )
        .unwrap();
        assert_eq!(
            a.bindings[0].received,
            Some("203.0.113.7:40123".parse().unwrap())
        );
        assert_eq!(
            a.bindings[0].target(),
            Some("203.0.113.7:40123".parse().unwrap())
        );
        // Same IP, other port (a NAT that keeps the address): still the source.
        let b = run(
            &req(&["<sip:6001@203.0.113.7:5060>"], None, 1),
            &[],
            "203.0.113.7:40123",
        )
        .unwrap();
        assert!(b.bindings[0].received.is_some());
    }

    #[test]
    fn expired_bindings_do_not_count() {
        let old = run(
            &req(
                &[
                    "<sip:a@10.0.0.1:1>",
                    "<sip:a@10.0.0.1:2>",
                    "<sip:a@10.0.0.1:3>",
                ],
                None,
                1,
            ),
            &[],
            "10.0.0.1:1",
        )
        .unwrap()
        .bindings
        .into_iter()
        .map(|mut b| {
            b.expires = NOW;
            b
        })
        .collect::<Vec<_>>();
        let a = run(&req(&["<sip:a@10.0.0.1:4>"], None, 2), &old, "10.0.0.1:4").unwrap();
        assert_eq!(a.bindings.len(), 1);
    }

    #[test]
    fn nated_uris_name_the_source() {
        let uri = |s: &'static str| Uri::parse(s.as_bytes()).unwrap();
        let src: SocketAddr = "203.0.113.5:4000".parse().unwrap();
        assert_eq!(
            nated_uri(&uri("sip:a@192.168.1.2:5060;transport=udp"), src),
            Some(b"sip:a@203.0.113.5:4000;transport=udp".to_vec())
        );
        assert_eq!(nated_uri(&uri("sip:a@203.0.113.5:4000"), src), None);
        let v6: SocketAddr = "[2001:db8::1]:5062".parse().unwrap();
        assert_eq!(
            nated_uri(&uri("sip:10.0.0.1"), v6),
            Some(b"sip:[2001:db8::1]:5062".to_vec())
        );
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q(b"1"), Some(1000));
        assert_eq!(parse_q(b"0.25"), Some(250));
        assert_eq!(parse_q(b"1.000"), Some(1000));
        assert_eq!(parse_q(b"1.5"), None);
        assert_eq!(parse_q(b"0.1234"), None);
        assert_eq!(parse_u32(b"4294967296"), Some(u32::MAX));
    }

    #[test]
    fn a_register_over_a_connection_records_its_peer_and_owner() {
        let over = |contact: &str, src: &str| {
            let raw = req(&[contact], Some("600"), 1);
            let msg = crate::sip::parse(&raw).unwrap();
            let stream = Stream {
                tls: true,
                worker: Some(1),
            };
            let a = process(
                &cfg(),
                &msg,
                "6001@example.com",
                &[],
                (src.parse().unwrap(), false),
                Some(stream),
                NOW,
            )
            .unwrap();
            a.bindings[0].clone()
        };
        // Its Contact names its source: `received` all the same (reached
        // over the connection only), not NATed.
        let b = over("<sip:6001@10.0.0.1:5070;transport=tls>", "10.0.0.1:5070");
        assert_eq!(b.received, Some("10.0.0.1:5070".parse().unwrap()));
        assert_eq!(b.stream.and_then(|s| s.worker), Some(1));
        assert!(!b.nated());
        assert_eq!(
            b.received_uri().as_deref(),
            Some("sip:10.0.0.1:5070;transport=tls")
        );
        // Behind a NAT.
        let b = over(
            "<sip:6001@192.168.1.2:5070;transport=tls>",
            "203.0.113.5:40000",
        );
        assert_eq!(b.target(), Some("203.0.113.5:40000".parse().unwrap()));
        assert!(b.nated());
    }
}
