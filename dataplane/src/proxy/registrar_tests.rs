//! The registrar on a worker, driven directly: REGISTER challenged and
//! accepted, the control thread's publish, calls to registered users, 407
//! for callers claiming a registrar domain.

use super::tests::{sent, worker, DEST};
use super::*;
use crate::registrar::digest::{ha1, Algorithm};
use crate::registrar::{test_config, CredentialTable, Registrar, Secret};
use std::time::Duration;

pub(super) const PHONE: &str = "10.0.0.9:5070";

pub(super) fn config(t0: Instant, auth_calls: bool) -> (ProxyConfig, Arc<Registrar>) {
    let mut rc = test_config(t0);
    rc.auth_calls = auth_calls;
    let reg = Registrar::shared(rc, 64);
    let mut t = CredentialTable::new();
    for (user, pw) in [("6001", "pw1"), ("6002", "pw2")] {
        t.insert(
            format!("{user}@example.com").into(),
            Secret {
                ha1: ha1(
                    Algorithm::Md5,
                    user.as_bytes(),
                    b"example.com",
                    pw.as_bytes(),
                )
                .into(),
                ..Secret::default()
            },
        );
    }
    reg.credentials.store(Arc::new(t));
    let cfg = ProxyConfig {
        registrar: Some(reg.clone()),
        ..ProxyConfig::default()
    };
    (cfg, reg)
}

/// The `name: Digest …` credentials answering `challenge` for `method`.
pub(super) fn credentials(
    name: &str,
    challenge: &str,
    method: &str,
    uri: &str,
    user: &str,
    pw: &str,
) -> String {
    let nonce_at = challenge.find("nonce=\"").unwrap() + 7;
    let nonce = &challenge[nonce_at..nonce_at + challenge[nonce_at..].find('"').unwrap()];
    let h1 = ha1(
        Algorithm::Md5,
        user.as_bytes(),
        b"example.com",
        pw.as_bytes(),
    );
    let h2 = Algorithm::Md5.hash_hex(&[method.as_bytes(), uri.as_bytes()]);
    let resp = Algorithm::Md5.hash_hex(&[
        h1.as_bytes(),
        nonce.as_bytes(),
        b"00000001",
        b"c0ffee",
        b"auth",
        h2.as_bytes(),
    ]);
    format!(
        "{name}: Digest username=\"{user}\", realm=\"example.com\", nonce=\"{nonce}\", \
         uri=\"{uri}\", response=\"{resp}\", qop=auth, nc=00000001, cnonce=\"c0ffee\"\r\n"
    )
}

fn register(user: &str, cseq: u32, auth: &str) -> Vec<u8> {
    register_from(PHONE, user, cseq, auth)
}

/// A REGISTER of `user` from the phone at `phone` (its Contact and Call-ID).
fn register_from(phone: &str, user: &str, cseq: u32, auth: &str) -> Vec<u8> {
    register_with(phone, user, cseq, auth, "")
}

/// [`register_from`] with Contact parameters (`;q=0.5`).
fn register_with(phone: &str, user: &str, cseq: u32, auth: &str, params: &str) -> Vec<u8> {
    // PHONE's Call-ID as before (its hash picks the worker in the handoff test).
    let call_id = if phone == PHONE {
        format!("reg-{user}")
    } else {
        format!("reg-{user}-{phone}")
    };
    format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK-{user}-r{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag=r\r\nTo: <sip:{user}@example.com>\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{phone}>{params}\r\n{auth}\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

pub(super) fn invite(from: &str, to: &str, branch: &str, auth: &str) -> Vec<u8> {
    format!(
        "INVITE sip:{to}@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7:5060;branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{from}@example.com>;tag=f\r\nTo: <sip:{to}@example.com>\r\n\
         Call-ID: {branch}\r\nCSeq: 1 INVITE\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

pub(super) fn feed(
    w: &mut Worker,
    now: Instant,
    from: &str,
    bytes: &[u8],
) -> Vec<(SocketAddr, String)> {
    let mut out = Outbox::new();
    w.on_datagram(now, SOCK_PUBLIC, from.parse().unwrap(), bytes, &mut out);
    sent(&out)
}

pub(super) fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .collect()
}

/// What the control thread does every few milliseconds.
pub(super) fn publish(reg: &Registrar) {
    let updates: Vec<_> = std::iter::from_fn(|| reg.updates.pop()).collect();
    reg.location.apply(updates);
}

/// Registers `user` from PHONE and publishes the binding.
pub(super) fn registered(w: &mut Worker, reg: &Registrar, t0: Instant, user: &str, pw: &str) {
    registered_from(w, reg, t0, PHONE, user, pw);
}

/// Registers `user` from `phone` and publishes the binding.
pub(super) fn registered_from(
    w: &mut Worker,
    reg: &Registrar,
    t0: Instant,
    phone: &str,
    user: &str,
    pw: &str,
) {
    registered_with(w, reg, t0, phone, user, pw, "");
}

/// [`registered_from`] with Contact parameters.
pub(super) fn registered_with(
    w: &mut Worker,
    reg: &Registrar,
    t0: Instant,
    phone: &str,
    user: &str,
    pw: &str,
    params: &str,
) {
    let s = feed(w, t0, phone, &register_with(phone, user, 1, "", params));
    let challenge = header(&s[0].1, "WWW-Authenticate")[0].to_owned();
    let auth = credentials(
        "Authorization",
        &challenge,
        "REGISTER",
        "sip:example.com",
        user,
        pw,
    );
    let s = feed(w, t0, phone, &register_with(phone, user, 2, &auth, params));
    assert!(s[0].1.starts_with("SIP/2.0 200"), "{}", s[0].1);
    publish(reg);
}

#[test]
fn register_is_challenged_then_stored_and_listed() {
    let t0 = Instant::now();
    let (cfg, reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let s = feed(&mut w, t0, PHONE, &register("6001", 1, ""));
    assert_eq!(s.len(), 1);
    assert!(s[0].1.starts_with("SIP/2.0 401"), "{}", s[0].1);
    let challenge = header(&s[0].1, "WWW-Authenticate")[0].to_owned();
    assert!(challenge.contains("realm=\"example.com\""), "{challenge}");

    let wrong = credentials(
        "Authorization",
        &challenge,
        "REGISTER",
        "sip:example.com",
        "6001",
        "nope",
    );
    let s = feed(&mut w, t0, PHONE, &register("6001", 2, &wrong));
    // Challenged again, with a fresh nonce (Kamailio's auth_challenge).
    assert!(s[0].1.starts_with("SIP/2.0 401"), "{}", s[0].1);
    let again = header(&s[0].1, "WWW-Authenticate");
    assert_eq!(again.len(), 1, "{}", s[0].1);
    assert_ne!(again[0], challenge, "the same nonce again");
    assert!(s[0].1.contains("wrong password"), "{}", s[0].1);
    assert!(reg.updates.is_empty(), "a refused REGISTER queued a change");

    let right = credentials(
        "Authorization",
        &challenge,
        "REGISTER",
        "sip:example.com",
        "6001",
        "pw1",
    );
    let s = feed(&mut w, t0, PHONE, &register("6001", 3, &right));
    assert!(s[0].1.starts_with("SIP/2.0 200"), "{}", s[0].1);
    assert_eq!(
        header(&s[0].1, "Contact"),
        vec![format!("<sip:6001@{PHONE}>;expires=3600")]
    );
    // The same credentials again: the nonce count did not grow.
    let s = feed(&mut w, t0, PHONE, &register("6001", 4, &right));
    assert!(s[0].1.contains("stale=true"), "{}", s[0].1);

    assert!(
        w.locate(
            t0,
            &parse(&invite("x", "6001", "b", ""))
                .unwrap()
                .validated_request()
                .unwrap()
        )
        .is_empty(),
        "not published yet"
    );
    publish(&reg);
    assert_eq!(reg.location.counts(), (1, 1));
}

#[test]
fn calls_reach_the_binding_or_get_404() {
    let t0 = Instant::now();
    let (cfg, reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    registered(&mut w, &reg, t0, "6001", "pw1");
    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5060",
        &invite("a", "6001", "z9hG4bK-c1", ""),
    );
    let fwd = s
        .iter()
        .find(|(_, m)| m.starts_with("INVITE"))
        .expect("forwarded");
    assert_eq!(fwd.0, PHONE.parse().unwrap());
    assert!(
        fwd.1
            .starts_with(&format!("INVITE sip:6001@{PHONE} SIP/2.0\r\n")),
        "{}",
        fwd.1
    );
    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5060",
        &invite("a", "6999", "z9hG4bK-c2", ""),
    );
    assert!(s[0].1.starts_with("SIP/2.0 404"), "{}", s[0].1);
    // Outside the prefixes: the dispatcher set.
    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5060",
        &invite("a", "1000", "z9hG4bK-c3", ""),
    );
    assert!(s
        .iter()
        .any(|(to, m)| *to == DEST.parse().unwrap() && m.starts_with("INVITE")));
    // Expired: 404 again, before the control thread removed it.
    let later = t0 + Duration::from_secs(3601);
    let s = feed(
        &mut w,
        later,
        "10.0.0.7:5060",
        &invite("a", "6001", "z9hG4bK-c4", ""),
    );
    assert!(s[0].1.starts_with("SIP/2.0 404"), "{}", s[0].1);
}

#[test]
fn callers_of_our_domain_authenticate_as_themselves() {
    let t0 = Instant::now();
    let (cfg, reg) = config(t0, true);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    registered(&mut w, &reg, t0, "6001", "pw1");
    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5060",
        &invite("6002", "6001", "z9hG4bK-a1", ""),
    );
    assert!(s[0].1.starts_with("SIP/2.0 407"), "{}", s[0].1);
    let challenge = header(&s[0].1, "Proxy-Authenticate")[0].to_owned();
    let uri = "sip:6001@example.com";
    // 6002's password, but From says 6001: no caller-ID spoofing.
    let as_other = credentials(
        "Proxy-Authorization",
        &challenge,
        "INVITE",
        uri,
        "6002",
        "pw2",
    );
    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5060",
        &invite("6001", "6001", "z9hG4bK-a2", &as_other),
    );
    assert!(s[0].1.starts_with("SIP/2.0 403"), "{}", s[0].1);
    let challenge = {
        let s = feed(
            &mut w,
            t0,
            "10.0.0.7:5060",
            &invite("6002", "6001", "z9hG4bK-a3", ""),
        );
        header(&s[0].1, "Proxy-Authenticate")[0].to_owned()
    };
    let ok = credentials(
        "Proxy-Authorization",
        &challenge,
        "INVITE",
        uri,
        "6002",
        "pw2",
    );
    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5060",
        &invite("6002", "6001", "z9hG4bK-a4", &ok),
    );
    let forwarded = s
        .iter()
        .find(|(to, m)| *to == PHONE.parse().unwrap() && m.starts_with("INVITE"))
        .map(|(_, m)| m.as_str());
    let forwarded = forwarded.unwrap_or_else(|| panic!("{s:?}"));
    // The credentials were for sipvane (consumed), not for the phone.
    assert!(
        header(forwarded, "Proxy-Authorization").is_empty(),
        "{forwarded}"
    );
    // A dispatcher destination calling in is exempt.
    let s = feed(&mut w, t0, DEST, &invite("6002", "6001", "z9hG4bK-a5", ""));
    assert!(
        s.iter()
            .any(|(to, m)| *to == PHONE.parse().unwrap() && m.starts_with("INVITE")),
        "{s:?}"
    );
    // A caller of another domain is not challenged.
    let foreign = String::from_utf8(invite("6002", "6001", "z9hG4bK-a6", ""))
        .unwrap()
        .replace("<sip:6002@example.com>", "<sip:bob@carrier.example>");
    let s = feed(&mut w, t0, "10.0.0.7:5060", foreign.as_bytes());
    assert!(s.iter().any(|(_, m)| m.starts_with("INVITE")), "{s:?}");
}

#[test]
fn credentials_for_another_workers_nonce_are_handed_to_it() {
    let t0 = Instant::now();
    let (mut cfg, _reg) = config(t0, false);
    cfg.private_ports = vec![5061, 5062];
    let mut w0 = worker(cfg.clone(), &format!("1 sip:{DEST}\n"), t0);
    let table = w0.table.clone();
    let mut w1 = Worker::new(1, Arc::new(cfg), table, Arc::new(ProxyStats::default()), t0);
    let s = feed(&mut w1, t0, PHONE, &register("6001", 1, ""));
    let challenge = header(&s[0].1, "WWW-Authenticate")[0].to_owned();
    let auth = credentials(
        "Authorization",
        &challenge,
        "REGISTER",
        "sip:example.com",
        "6001",
        "pw1",
    );
    let mut out = Outbox::new();
    w0.on_datagram(
        t0,
        SOCK_PUBLIC,
        PHONE.parse().unwrap(),
        &register("6001", 2, &auth),
        &mut out,
    );
    let handed: Vec<_> = out.handoffs().collect();
    assert_eq!(handed.len(), 1, "{:?}", sent(&out));
    assert_eq!(handed[0].0, 1);
}

#[test]
fn credentials_steered_to_another_worker_still_reach_the_nonces_worker() {
    // A phone reusing its nonce under another Call-ID: the Call-ID steers
    // the request to worker 0 (handed over), the nonce is worker 1's.
    let t0 = Instant::now();
    let (mut cfg, _reg) = config(t0, false);
    cfg.private_ports = vec![5061, 5062];
    let mut w0 = worker(cfg.clone(), &format!("1 sip:{DEST}\n"), t0);
    let table = w0.table.clone();
    let mut w1 = Worker::new(1, Arc::new(cfg), table, Arc::new(ProxyStats::default()), t0);
    let s = feed(&mut w1, t0, PHONE, &register("6001", 1, ""));
    let challenge = header(&s[0].1, "WWW-Authenticate")[0].to_owned();
    let auth = credentials(
        "Authorization",
        &challenge,
        "REGISTER",
        "sip:example.com",
        "6001",
        "pw1",
    );
    let mut out = Outbox::new();
    w0.on_datagram(
        t0,
        SOCK_PUBLIC | HANDED_OVER,
        PHONE.parse().unwrap(),
        &register("6001", 2, &auth),
        &mut out,
    );
    let handed: Vec<_> = out.handoffs().collect();
    assert_eq!(handed.len(), 1, "{:?}", sent(&out));
    assert_eq!(handed[0].0, 1);
}

#[test]
fn a_retransmitted_register_gets_its_answer_again() {
    // The load test's 1 in 10 000: SIPp retransmits an authenticated
    // REGISTER whose 200 it did not get in time; its nonce count was used
    // by the original, so the retransmission got a fresh 401 (stale).
    let t0 = Instant::now();
    let (cfg, reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let s = feed(&mut w, t0, PHONE, &register("6001", 1, ""));
    let challenge = header(&s[0].1, "WWW-Authenticate")[0].to_owned();
    let auth = credentials(
        "Authorization",
        &challenge,
        "REGISTER",
        "sip:example.com",
        "6001",
        "pw1",
    );
    let req = register("6001", 2, &auth);
    let first = feed(&mut w, t0, PHONE, &req);
    assert!(first[0].1.starts_with("SIP/2.0 200"), "{}", first[0].1);
    assert_eq!(reg.updates.len(), 1);
    let t1 = t0 + Duration::from_millis(500);
    let again = feed(&mut w, t1, PHONE, &req);
    assert_eq!(again, first, "the same 200, to the same place");
    assert_eq!(reg.updates.len(), 1, "applied once");
    // Until Timer J (32 s); the credentials stay used for new requests.
    let t2 = t0 + Duration::from_secs(31);
    assert_eq!(feed(&mut w, t2, PHONE, &req), first);
    let other = feed(&mut w, t0, PHONE, &register("6001", 3, &auth));
    assert!(other[0].1.contains("stale=true"), "{}", other[0].1);
    let late = feed(&mut w, t0 + Duration::from_secs(33), PHONE, &req);
    assert!(late[0].1.starts_with("SIP/2.0 401"), "{}", late[0].1);
}

#[test]
fn a_retransmitted_register_gets_the_same_challenge() {
    // What the load test saw: SIPp retransmits the first REGISTER, answers
    // the first 401 and then gets a second one with another nonce while it
    // waits for the 200 (an unexpected message: the call fails).
    let t0 = Instant::now();
    let (cfg, _reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let req = register("6001", 1, "");
    let first = feed(&mut w, t0, PHONE, &req);
    assert!(first[0].1.starts_with("SIP/2.0 401"), "{}", first[0].1);
    let again = feed(&mut w, t0 + Duration::from_secs(2), PHONE, &req);
    assert_eq!(again, first, "the same nonce");
    // A new request (another branch) gets a nonce of its own.
    let other = feed(&mut w, t0, PHONE, &register("6001", 2, ""));
    assert_ne!(
        header(&other[0].1, "WWW-Authenticate"),
        header(&first[0].1, "WWW-Authenticate")
    );
    assert_eq!(w.stats().snapshot().retransmissions_absorbed, 1);
}

#[test]
fn in_dialog_requests_may_reach_registered_phones() {
    let t0 = Instant::now();
    let (cfg, reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let bye = format!(
        "BYE sip:6001@{PHONE} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK-bye\r\n\
         Max-Forwards: 70\r\nRoute: <sip:127.0.0.1:5061;lr>\r\nFrom: <sip:a@example.com>;tag=f\r\n\
         To: <sip:6001@example.com>;tag=t\r\nCall-ID: dlg\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let s = feed(&mut w, t0, "10.0.0.7:5060", bye.as_bytes());
    assert!(
        s[0].1.starts_with("SIP/2.0 403"),
        "not a known target yet: {}",
        s[0].1
    );
    registered(&mut w, &reg, t0, "6001", "pw1");
    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5060",
        bye.replace("z9hG4bK-bye", "z9hG4bK-bye2").as_bytes(),
    );
    assert!(
        s.iter()
            .any(|(to, m)| *to == PHONE.parse().unwrap() && m.starts_with("BYE")),
        "{s:?}"
    );
}

#[test]
fn a_nated_callers_contact_names_its_source() {
    let t0 = Instant::now();
    let (cfg, _reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let with_contact = |from: &str, branch: &str| {
        String::from_utf8(invite(
            from,
            "1000",
            branch,
            "Contact: <sip:u@192.168.1.5:5060;ob>\r\n",
        ))
        .unwrap()
    };
    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5062",
        with_contact("6002", "z9hG4bK-n1").as_bytes(),
    );
    let fwd = s
        .iter()
        .find(|(_, m)| m.starts_with("INVITE"))
        .expect("forwarded");
    assert_eq!(
        header(&fwd.1, "Contact"),
        vec!["<sip:u@10.0.0.7:5062;ob>"],
        "{}",
        fwd.1
    );
    // A caller of another domain keeps its Contact.
    let foreign =
        with_contact("6002", "z9hG4bK-n2").replace("sip:6002@example.com", "sip:x@carrier.example");
    let s = feed(&mut w, t0, "10.0.0.7:5062", foreign.as_bytes());
    let fwd = s
        .iter()
        .find(|(_, m)| m.starts_with("INVITE"))
        .expect("forwarded");
    assert_eq!(
        header(&fwd.1, "Contact"),
        vec!["<sip:u@192.168.1.5:5060;ob>"]
    );
}

#[test]
fn a_nated_callees_answer_names_its_source() {
    let t0 = Instant::now();
    let (cfg, reg) = config(t0, false);
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    let nat = "203.0.113.9:40000";
    let private = "<sip:6001@192.168.1.5:5060>";
    let reg_from_nat = |cseq: u32, auth: &str| {
        String::from_utf8(register("6001", cseq, auth))
            .unwrap()
            .replace(&format!("<sip:6001@{PHONE}>"), private)
    };
    let s = feed(&mut w, t0, nat, reg_from_nat(1, "").as_bytes());
    let challenge = header(&s[0].1, "WWW-Authenticate")[0].to_owned();
    let auth = credentials(
        "Authorization",
        &challenge,
        "REGISTER",
        "sip:example.com",
        "6001",
        "pw1",
    );
    let s = feed(&mut w, t0, nat, reg_from_nat(2, &auth).as_bytes());
    assert!(s[0].1.starts_with("SIP/2.0 200"), "{}", s[0].1);
    publish(&reg);

    let s = feed(
        &mut w,
        t0,
        "10.0.0.7:5060",
        &invite("a", "6001", "z9hG4bK-nc", ""),
    );
    let (to, fwd) = s
        .iter()
        .find(|(_, m)| m.starts_with("INVITE"))
        .expect("forwarded")
        .clone();
    assert_eq!(
        to,
        nat.parse().unwrap(),
        "to the NAT, not the private address"
    );
    let ok = String::from_utf8(super::tests::answer(&fwd, 200, "callee"))
        .unwrap()
        .replace(
            "Content-Length: 0\r\n",
            &format!("Contact: {private}\r\nContent-Length: 0\r\n"),
        );
    let s = feed(&mut w, t0, nat, ok.as_bytes());
    let relayed = s
        .iter()
        .find(|(_, m)| m.starts_with("SIP/2.0 200"))
        .expect("relayed");
    assert_eq!(
        header(&relayed.1, "Contact"),
        vec![format!("<sip:6001@{nat}>")],
        "{}",
        relayed.1
    );
}

#[test]
fn nated_bindings_are_pinged_and_removed_when_they_stop_answering() {
    let t0 = Instant::now();
    let mut rc = test_config(t0);
    rc.nat_ping_interval_s = 10;
    rc.nat_ping_max_misses = 2;
    let reg = Registrar::shared(rc, 64);
    reg.credentials
        .store(config(t0, false).1.credentials.load_full());
    let cfg = ProxyConfig {
        registrar: Some(reg.clone()),
        ..ProxyConfig::default()
    };
    let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
    // 6002 at the address its Contact names: not pinged.
    registered(&mut w, &reg, t0, "6002", "pw2");
    let nat = "203.0.113.9:40000";
    let reg_from_nat = |cseq: u32, auth: &str| {
        String::from_utf8(register("6001", cseq, auth))
            .unwrap()
            .replace(
                &format!("<sip:6001@{PHONE}>"),
                "<sip:6001@192.168.1.5:5060>",
            )
    };
    let s = feed(&mut w, t0, nat, reg_from_nat(1, "").as_bytes());
    let challenge = header(&s[0].1, "WWW-Authenticate")[0].to_owned();
    let auth = credentials(
        "Authorization",
        &challenge,
        "REGISTER",
        "sip:example.com",
        "6001",
        "pw1",
    );
    let s = feed(&mut w, t0, nat, reg_from_nat(2, &auth).as_bytes());
    assert!(s[0].1.starts_with("SIP/2.0 200"), "{}", s[0].1);
    publish(&reg);

    let tick = |w: &mut Worker, secs: u64| {
        let mut out = Outbox::new();
        w.on_timer(t0 + Duration::from_secs(secs), &mut out);
        sent(&out)
    };
    assert!(tick(&mut w, 5).is_empty(), "not due yet");
    let s = tick(&mut w, 10);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].0, nat.parse().unwrap());
    assert!(
        s[0].1
            .starts_with("OPTIONS sip:6001@192.168.1.5:5060 SIP/2.0\r\n"),
        "{}",
        s[0].1
    );
    // It answers: alive. A second copy of the answer is a stray.
    let pong = super::tests::answer(&s[0].1, 200, "p");
    assert!(feed(&mut w, t0, nat, &pong).is_empty());
    feed(&mut w, t0, nat, &pong);
    assert_eq!(w.stats().snapshot().stray_responses, 1);
    // Then it stays silent: two misses and it is gone.
    for secs in [20, 30] {
        assert_eq!(tick(&mut w, secs).len(), 1);
    }
    assert!(tick(&mut w, 40).is_empty(), "removed, not pinged");
    assert_eq!(
        crate::registrar::RegistrarStats::get(&reg.stats.nat_ping_removals),
        1
    );
    assert_eq!(
        crate::registrar::RegistrarStats::get(&reg.stats.nat_pings),
        3
    );
    publish(&reg);
    let t = t0 + Duration::from_secs(40);
    let s = feed(
        &mut w,
        t,
        "10.0.0.7:5060",
        &invite("a", "6001", "z9hG4bK-np", ""),
    );
    assert!(s[0].1.starts_with("SIP/2.0 404"), "{}", s[0].1);
    let s = feed(
        &mut w,
        t,
        "10.0.0.7:5060",
        &invite("a", "6002", "z9hG4bK-np2", ""),
    );
    assert!(s.iter().any(|(_, m)| m.starts_with("INVITE")), "{s:?}");
}
