//! Phones registered over TCP or TLS, driven on two workers: the binding
//! records the connection and its worker, a call for the phone is handed
//! to that worker and its branch goes over the connection (Via TCP/TLS, a
//! double Record-Route for a UDP caller), the ACK of a refusal and the
//! CANCEL follow it there; a branch to a connection that is gone or
//! another worker's fails at once.

use super::registrar_tests::{config, credentials, header, invite, publish};
use super::tests::{worker, DEST};
use super::*;
use std::time::Duration;

const PHONE: &str = "203.0.113.9:40111";
const CALLER: &str = "10.0.0.7:5060";

/// Everything a worker sent: socket, address, text.
fn all(out: &Outbox) -> Vec<(SocketId, SocketAddr, String)> {
    out.iter()
        .map(|(s, a, b)| (s, a, String::from_utf8_lossy(b).into_owned()))
        .collect()
}

fn register(cseq: u32, auth: &str) -> Vec<u8> {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.168.77.1:5060;branch=z9hG4bK-s{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:6001@example.com>;tag=r\r\nTo: <sip:6001@example.com>\r\n\
         Call-ID: reg-stream\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:6001@192.168.77.1:5060;transport=tcp>\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Two workers sharing one configuration and table; the phone registers
/// over a connection (`socket`: SOCK_TCP or SOCK_TLS) of worker 1.
fn two_workers(socket: SocketId) -> (Worker, Worker, Arc<crate::registrar::Registrar>, Instant) {
    let t0 = Instant::now();
    let (mut cfg, reg) = config(t0, false);
    cfg.private_ports = vec![5061, 5062];
    cfg.tls_port = Some(5081);
    let w0 = worker(cfg.clone(), &format!("1 sip:{DEST}\n"), t0);
    let mut w1 = Worker::new(
        1,
        Arc::new(cfg),
        w0.table.clone(),
        Arc::new(ProxyStats::default()),
        t0,
    );
    let phone: SocketAddr = PHONE.parse().unwrap();
    let mut out = Outbox::new();
    w1.on_datagram(t0, socket, phone, &register(1, ""), &mut out);
    let s = all(&out);
    let challenge = header(&s[0].2, "WWW-Authenticate")[0].to_owned();
    let auth = credentials(
        "Authorization",
        &challenge,
        "REGISTER",
        "sip:example.com",
        "6001",
        "pw1",
    );
    out.clear();
    w1.on_datagram(t0, socket, phone, &register(2, &auth), &mut out);
    let s = all(&out);
    assert_eq!(
        (s[0].0, s[0].1),
        (SOCK_TCP, phone),
        "answered on its connection"
    );
    assert!(s[0].2.starts_with("SIP/2.0 200"), "{}", s[0].2);
    publish(&reg);
    (w0, w1, reg, t0)
}

#[test]
fn a_phone_registered_over_a_connection_is_called_on_it() {
    for (socket, via) in [(SOCK_TCP, "TCP"), (SOCK_TLS, "TLS")] {
        let (mut w0, mut w1, reg, t0) = two_workers(socket);
        let phone: SocketAddr = PHONE.parse().unwrap();
        let b = reg.location.lookup("6001@example.com").unwrap()[0].clone();
        assert_eq!(b.received, Some(phone));
        assert_eq!(
            b.stream,
            Some(crate::registrar::Stream {
                tls: socket == SOCK_TLS,
                worker: Some(1)
            })
        );
        assert!(b.nated(), "its Contact names a private address");
        // A UDP caller's INVITE, steered to worker 0 by its Call-ID: handed
        // to worker 1, which owns the phone's connection.
        let caller: SocketAddr = CALLER.parse().unwrap();
        let inv = invite("a", "6001", &format!("z9hG4bK-st{via}"), "");
        let mut out = Outbox::new();
        w0.on_datagram(t0, SOCK_PUBLIC | HANDED_OVER, caller, &inv, &mut out);
        let handed: Vec<_> = out.handoffs().map(|(w, s, a, _)| (w, s, a)).collect();
        assert_eq!(handed, [(1, SOCK_PRIVATE | HANDED_OVER, caller)]);
        assert_eq!(all(&out).len(), 0, "nothing sent from worker 0");
        out.clear();
        w1.on_datagram(t0, SOCK_PRIVATE | HANDED_OVER, caller, &inv, &mut out);
        let s = all(&out);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].0, s[0].1), (SOCK_TCP, phone));
        let fwd = &s[0].2;
        assert!(
            fwd.starts_with("INVITE sip:6001@192.168.77.1:5060;transport=tcp SIP/2.0"),
            "{fwd}"
        );
        assert!(
            fwd.contains(&format!("Via: SIP/2.0/{via} 127.0.0.1:5062;")),
            "{fwd}"
        );
        let rr: Vec<&str> = header(fwd, "Record-Route");
        let phone_side = if via == "TLS" {
            "<sip:127.0.0.1:5081;transport=tls;lr>"
        } else {
            "<sip:127.0.0.1:5060;transport=tcp;lr>"
        };
        assert_eq!(rr, [phone_side, "<sip:127.0.0.1:5062;lr>"], "{fwd}");
        // Its 200 comes back over the connection and reaches the caller.
        out.clear();
        let ok = super::tests::answer(fwd, 200, "ph");
        w1.on_datagram(t0, socket, phone, &ok, &mut out);
        let s = all(&out);
        assert!(
            s.iter()
                .any(|(_, a, m)| *a == caller && m.starts_with("SIP/2.0 200")),
            "{s:?}"
        );
    }
}

#[test]
fn cancel_and_the_ack_of_a_refusal_follow_the_invite_to_the_owner() {
    let (mut w0, mut w1, _reg, t0) = two_workers(SOCK_TCP);
    let caller: SocketAddr = CALLER.parse().unwrap();
    let phone: SocketAddr = PHONE.parse().unwrap();
    let inv = invite("a", "6001", "z9hG4bK-cx", "");
    let mut out = Outbox::new();
    w1.on_datagram(t0, SOCK_PRIVATE | HANDED_OVER, caller, &inv, &mut out);
    let fwd = all(&out)[0].2.clone();
    // It rings (a CANCEL waits for that, RFC 3261 §9.1).
    out.clear();
    w1.on_datagram(
        t0,
        SOCK_TCP,
        phone,
        &super::tests::answer(&fwd, 180, "ph"),
        &mut out,
    );
    // The caller's CANCEL reaches worker 0 (its Call-ID): handed to 1.
    let cancel = String::from_utf8(inv.clone())
        .unwrap()
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    out.clear();
    w0.on_datagram(
        t0,
        SOCK_PUBLIC | HANDED_OVER,
        caller,
        cancel.as_bytes(),
        &mut out,
    );
    let handed: Vec<_> = out.handoffs().map(|(w, _, _, _)| w).collect();
    assert_eq!(handed, [1]);
    out.clear();
    w1.on_datagram(
        t0,
        SOCK_PRIVATE | HANDED_OVER,
        caller,
        cancel.as_bytes(),
        &mut out,
    );
    let s = all(&out);
    assert!(s
        .iter()
        .any(|(_, a, m)| *a == caller && m.starts_with("SIP/2.0 200")));
    assert!(
        s.iter()
            .any(|(k, a, m)| (*k, *a) == (SOCK_TCP, phone) && m.starts_with("CANCEL ")),
        "the CANCEL goes over the connection: {s:?}"
    );
    // The phone's 487 reaches the caller; the caller's ACK (no route set)
    // lands on worker 0 and is handed to 1.
    out.clear();
    w1.on_datagram(
        t0,
        SOCK_TCP,
        phone,
        &super::tests::answer(&fwd, 487, "ph"),
        &mut out,
    );
    let s = all(&out);
    let refusal = s
        .iter()
        .find(|(_, a, m)| *a == caller && m.starts_with("SIP/2.0 487"))
        .expect("487 relayed");
    let tag = super::tests::to_tag(&refusal.2);
    let ack = String::from_utf8(inv)
        .unwrap()
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace(
            "To: <sip:6001@example.com>",
            &format!("To: <sip:6001@example.com>;tag={tag}"),
        );
    out.clear();
    w0.on_datagram(
        t0,
        SOCK_PUBLIC | HANDED_OVER,
        caller,
        ack.as_bytes(),
        &mut out,
    );
    let handed: Vec<_> = out.handoffs().map(|(w, _, _, _)| w).collect();
    assert_eq!(handed, [1]);
}

#[test]
fn a_branch_without_its_connection_fails_at_once() {
    let (mut w0, mut w1, _reg, t0) = two_workers(SOCK_TCP);
    let caller: SocketAddr = CALLER.parse().unwrap();
    let phone: SocketAddr = PHONE.parse().unwrap();
    // From a TCP caller on worker 0 the request cannot move (its answers
    // leave on worker 0's connection), and worker 0 does not hold the
    // phone's: 480 at once.
    let inv = invite("a", "6001", "z9hG4bK-nc1", "");
    let mut out = Outbox::new();
    w0.on_datagram(t0, SOCK_TCP, caller, &inv, &mut out);
    assert_eq!(out.handoffs().count(), 0);
    let s = all(&out);
    assert!(
        s.iter()
            .any(|(k, a, m)| (*k, *a) == (SOCK_TCP, caller) && m.starts_with("SIP/2.0 480")),
        "{s:?}"
    );
    // On the owner, the connection closed meanwhile: the driver reports
    // the send as failed and the branch ends (480).
    let inv = invite("a", "6001", "z9hG4bK-nc2", "");
    out.clear();
    w1.on_datagram(t0, SOCK_PRIVATE | HANDED_OVER, caller, &inv, &mut out);
    assert_eq!(all(&out)[0].1, phone);
    out.clear();
    w1.on_connect_failed(t0, phone, &mut out);
    let s = all(&out);
    assert!(
        s.iter()
            .any(|(_, a, m)| *a == caller && m.starts_with("SIP/2.0 480")),
        "{s:?}"
    );
}

#[test]
fn a_phone_on_a_connection_gets_no_options_keepalive() {
    let t0 = Instant::now();
    let mut rc = crate::registrar::test_config(t0);
    rc.nat_ping_interval_s = 10;
    let reg = crate::registrar::Registrar::shared(rc, 64);
    reg.credentials
        .store(config(t0, false).1.credentials.load_full());
    let cfg = ProxyConfig {
        registrar: Some(reg.clone()),
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let phone: SocketAddr = PHONE.parse().unwrap();
    let mut out = Outbox::new();
    w.on_datagram(t0, SOCK_TCP, phone, &register(1, ""), &mut out);
    let challenge = header(&all(&out)[0].2, "WWW-Authenticate")[0].to_owned();
    let auth = credentials(
        "Authorization",
        &challenge,
        "REGISTER",
        "sip:example.com",
        "6001",
        "pw1",
    );
    out.clear();
    w.on_datagram(t0, SOCK_TCP, phone, &register(2, &auth), &mut out);
    assert!(all(&out)[0].2.starts_with("SIP/2.0 200"));
    publish(&reg);
    let b = reg.location.lookup("6001@example.com").unwrap()[0].clone();
    assert!(b.nated() && b.stream.is_some(), "{b:?}");
    // Behind a NAT, but on a connection: no OPTIONS over UDP, round after
    // round (its CRLF keep-alives keep the NAT open), and it stays.
    for secs in [10, 20, 30, 40] {
        out.clear();
        w.on_timer(t0 + Duration::from_secs(secs), &mut out);
        assert_eq!(all(&out).len(), 0, "{:?}", all(&out));
    }
    assert_eq!(
        crate::registrar::RegistrarStats::get(&reg.stats.nat_pings),
        0
    );
    assert!(reg.location.lookup("6001@example.com").is_some());
}

/// A caller on TCP whose BYE comes over a new connection to another worker
/// (RFC 3263 on its route set): relayed there, and the dialog's worker
/// gets a copy that ends the dialog (its call count, media, events).
#[test]
fn a_bye_over_another_workers_connection_ends_the_dialog_on_its_owner() {
    let t0 = Instant::now();
    let cfg = ProxyConfig {
        private_ports: vec![5061, 5062],
        ..ProxyConfig::default()
    };
    let mut w0 = worker(cfg.clone(), &format!("1 sip:{DEST}\n"), t0);
    let mut w1 = Worker::new(
        1,
        Arc::new(cfg),
        w0.table.clone(),
        Arc::new(ProxyStats::default()),
        t0,
    );
    let caller: SocketAddr = CALLER.parse().unwrap();
    let dest: SocketAddr = DEST.parse().unwrap();
    let inv = super::tests::invite("z9hG4bK-dn");
    let mut out = Outbox::new();
    w0.on_datagram(t0, SOCK_TCP, caller, &inv, &mut out);
    let fwd = all(&out)[0].2.clone();
    out.clear();
    w0.on_datagram(
        t0,
        SOCK_PRIVATE,
        dest,
        &super::tests::answer(&fwd, 200, "cal"),
        &mut out,
    );
    assert_eq!(w0.occupancy().1, 1, "a dialog on worker 0");
    let mut routes: Vec<String> = header(&fwd, "Record-Route")
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(routes.len(), 2, "{routes:?}");
    routes.reverse();
    let bye = format!(
        "BYE sip:100@{DEST} SIP/2.0\r\nVia: SIP/2.0/TCP {CALLER};branch=z9hG4bK-dnb\r\n\
         Route: {}\r\nRoute: {}\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=f1\r\n\
         To: <sip:100@127.0.0.1>;tag=cal\r\nCall-ID: z9hG4bK-dn@t\r\nCSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        routes[0], routes[1]
    );
    let other: SocketAddr = "10.0.0.7:40999".parse().unwrap();
    out.clear();
    w1.on_datagram(t0, SOCK_TCP, other, bye.as_bytes(), &mut out);
    let s = all(&out);
    assert!(
        s.iter()
            .any(|(k, a, m)| (*k, *a) == (SOCK_PRIVATE, dest) && m.starts_with("BYE ")),
        "relayed from worker 1: {s:?}"
    );
    let notes: Vec<_> = out
        .handoffs()
        .map(|(w, k, a, d)| (w, k, a, d.to_vec()))
        .collect();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        (notes[0].0, notes[0].1),
        (0, SOCK_DIALOG_NOTE | HANDED_OVER)
    );
    let mut out0 = Outbox::new();
    w0.on_datagram(t0, notes[0].1, notes[0].2, &notes[0].3, &mut out0);
    assert_eq!(all(&out0).len(), 0, "a note is not relayed again");
    assert_eq!(w0.occupancy().1, 0, "the dialog ended on worker 0");
    assert_eq!(w0.stats().snapshot().dialogs_ended, 1);
}
