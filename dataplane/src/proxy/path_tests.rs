//! Path (RFC 3327) on a worker: a phone registered through an edge proxy
//! is called through that edge, with its Path as pre-loaded Route lines.

use super::registrar_tests::{config, credentials, feed, header, invite, publish};
use super::tests::{answer, worker, DEST};
use super::*;

/// The edge proxy the phone registers through.
const EDGE: &str = "10.0.0.2:5060";
/// The phone's Contact: a private address only the edge can reach.
const CONTACT: &str = "sip:6001@192.168.1.5:5060";

/// A REGISTER of 6001 as the edge relays it: its Via on top and its Path.
fn register_via_edge(cseq: u32, auth: &str, path: &str, supported: &str) -> Vec<u8> {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP {EDGE};branch=z9hG4bK-edge-{cseq}\r\n\
         Via: SIP/2.0/UDP 192.168.1.5:5060;received=198.51.100.7;rport=4000;branch=z9hG4bK-p{cseq}\r\n\
         Max-Forwards: 69\r\nFrom: <sip:6001@example.com>;tag=r\r\nTo: <sip:6001@example.com>\r\n\
         Call-ID: reg-path\r\nCSeq: {cseq} REGISTER\r\nContact: <{CONTACT}>\r\n\
         Path: {path}\r\n{supported}{auth}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Registers 6001 through `from` with `path`; the 200's text.
fn register_through(
    w: &mut Worker,
    reg: &crate::registrar::Registrar,
    t0: Instant,
    from: &str,
    path: &str,
    supported: &str,
) -> String {
    let s = feed(w, t0, from, &register_via_edge(1, "", path, supported));
    let challenge = header(&s[0].1, "WWW-Authenticate")[0].to_owned();
    let auth = credentials(
        "Authorization",
        &challenge,
        "REGISTER",
        "sip:example.com",
        "6001",
        "pw1",
    );
    let s = feed(w, t0, from, &register_via_edge(2, &auth, path, supported));
    assert!(s[0].1.starts_with("SIP/2.0 200"), "{}", s[0].1);
    publish(reg);
    s[0].1.clone()
}

#[test]
fn a_call_goes_through_the_path_with_the_contact_as_request_uri() {
    let t0 = Instant::now();
    let (cfg, reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let path = "<sip:10.0.0.2:5060;lr>,<sip:10.0.0.3;lr>";
    register_through(&mut w, &reg, t0, EDGE, path, "");
    let b = &reg.location.lookup("6001@example.com").unwrap()[0];
    assert_eq!((&*b.path, b.received), (path, None));

    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5060",
        &invite("a", "6001", "z9hG4bK-pc1", ""),
    );
    let (to, fwd) = s
        .iter()
        .find(|(_, m)| m.starts_with("INVITE"))
        .expect("forwarded")
        .clone();
    assert_eq!(to, EDGE.parse().unwrap(), "to the first Path hop");
    assert!(
        fwd.starts_with(&format!("INVITE {CONTACT} SIP/2.0\r\n")),
        "{fwd}"
    );
    assert_eq!(header(&fwd, "Route"), vec![path], "{fwd}");

    // The callee's answer: its Contact is left alone (NAT is the edge's).
    let ok = String::from_utf8(answer(&fwd, 180, "callee"))
        .unwrap()
        .replace(
            "Content-Length: 0\r\n",
            &format!("Contact: <{CONTACT}>\r\nContent-Length: 0\r\n"),
        );
    let s = feed(&mut w, t0, EDGE, ok.as_bytes());
    let relayed = s
        .iter()
        .find(|(_, m)| m.starts_with("SIP/2.0 180"))
        .expect("relayed");
    assert_eq!(header(&relayed.1, "Contact"), vec![format!("<{CONTACT}>")]);

    // A refusal: the hop-by-hop ACK carries the same Route set, to the edge.
    let s = feed(&mut w, t0, EDGE, &answer(&fwd, 486, "callee"));
    let (to, ack) = s
        .iter()
        .find(|(_, m)| m.starts_with("ACK"))
        .expect("ACK")
        .clone();
    assert_eq!(to, EDGE.parse().unwrap());
    assert_eq!(header(&ack, "Route"), vec![path], "{ack}");
    assert!(
        ack.starts_with(&format!("ACK {CONTACT} SIP/2.0\r\n")),
        "{ack}"
    );
}

#[test]
fn a_path_not_starting_at_its_sender_is_not_used_to_reach_others() {
    let t0 = Instant::now();
    let (cfg, reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    // Sent from the edge, but naming a victim as the first hop.
    let path = "<sip:192.0.2.66:5060;lr>";
    register_through(&mut w, &reg, t0, EDGE, path, "");
    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5060",
        &invite("a", "6001", "z9hG4bK-pc2", ""),
    );
    let (to, fwd) = s
        .iter()
        .find(|(_, m)| m.starts_with("INVITE"))
        .expect("forwarded")
        .clone();
    assert_eq!(to, EDGE.parse().unwrap(), "to the REGISTER's source");
    assert_eq!(header(&fwd, "Route"), vec![path], "{fwd}");
}

#[test]
fn a_trusted_edge_may_name_another_first_hop() {
    let t0 = Instant::now();
    let (mut cfg, reg) = config(t0, false);
    cfg.trusted_sources = vec!["10.0.0.0/24".parse().unwrap()];
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    // An edge cluster: the REGISTER leaves one node, Path names the service.
    let path = "<sip:10.0.0.9:5060;lr>";
    register_through(&mut w, &reg, t0, EDGE, path, "");
    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5060",
        &invite("a", "6001", "z9hG4bK-pc3", ""),
    );
    let (to, _) = s
        .iter()
        .find(|(_, m)| m.starts_with("INVITE"))
        .expect("forwarded");
    assert_eq!(*to, "10.0.0.9:5060".parse().unwrap());
}

#[test]
fn the_200_lists_the_path_for_a_client_that_supports_it() {
    let t0 = Instant::now();
    let (cfg, reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let path = "<sip:10.0.0.2:5060;lr>,<sip:10.0.0.3;lr>";
    let ok = register_through(&mut w, &reg, t0, EDGE, path, "Supported: path\r\n");
    assert_eq!(header(&ok, "Path"), vec![path], "{ok}");
    assert_eq!(
        header(&ok, "Contact"),
        vec![format!("<{CONTACT}>;expires=3600")]
    );
    // Without `Supported: path`: accepted and stored, the Path not listed.
    let (cfg, reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let ok = register_through(&mut w, &reg, t0, EDGE, path, "Supported: timer\r\n");
    assert!(header(&ok, "Path").is_empty(), "{ok}");
    let b = &reg.location.lookup("6001@example.com").unwrap()[0];
    assert_eq!(&*b.path, path);
}
