//! The digest check a worker runs on a request (RFC 3261 §22): find the
//! credentials for our realm, check the nonce, the account's secret, the
//! response and the nonce count — in that order, so a request that fails
//! verification never consumes a nonce count.

use std::time::Instant;

use super::digest::{write_challenge, Algorithm, Credentials, CredentialsError};
use super::nonce::{NonceCounts, NonceError};
use super::{aor_key, Registrar};
use crate::sip::{HeaderName, Message, Uri};

/// What the check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome<'m> {
    /// Authenticated: the digest username without any `@domain`.
    Ok { user: &'m [u8] },
    /// No usable credentials for our realm: challenge (with `stale=true`
    /// when only the nonce was too old or already used).
    Challenge { stale: bool },
    /// Credentials that do not prove the password (or name no account):
    /// challenged again with a fresh nonce, as Kamailio's default script
    /// answers a failed `auth_check` (`auth_challenge`); the text goes into
    /// a Warning header.
    WrongCredentials(&'static str),
    /// The nonce was issued by this worker: hand the request over.
    Handoff(usize),
    /// Broken credentials: 400.
    Malformed(&'static str),
}

/// Where the check happens.
pub struct Context<'a> {
    pub realm: &'a str,
    pub worker: usize,
    pub workers: usize,
    pub now: Instant,
}

/// Checks the credentials in `header` (Authorization for REGISTER,
/// Proxy-Authorization otherwise) of `msg`.
pub fn check<'m>(
    reg: &Registrar,
    counts: &mut NonceCounts,
    msg: &Message<'m>,
    header: HeaderName,
    cx: &Context<'_>,
) -> AuthOutcome<'m> {
    let cfg = &reg.config;
    let mut found = None;
    for h in msg.headers().iter().filter(|h| h.name == header) {
        match Credentials::parse(h.value) {
            Ok(c) if c.realm.eq_ignore_ascii_case(cx.realm.as_bytes()) => {
                found = Some(c);
                break;
            }
            Ok(_) => {}
            Err(CredentialsError::Malformed) => {
                if crate::sip::auth::digest_params(h.value)
                    .into_iter()
                    .flatten()
                    .any(|(k, v)| {
                        k.eq_ignore_ascii_case(b"realm")
                            && v.eq_ignore_ascii_case(cx.realm.as_bytes())
                    })
                {
                    return AuthOutcome::Malformed("Malformed credentials");
                }
            }
            // An algorithm or qop we do not offer: answer with our challenge.
            Err(_) => {}
        }
    }
    let Some(c) = found else {
        return AuthOutcome::Challenge { stale: false };
    };
    if !cfg.algorithms.contains(&c.algorithm) {
        return AuthOutcome::Challenge { stale: false };
    }
    let now_s = cfg.secs(cx.now);
    let nonce = match cfg.nonce_key.check(c.nonce, now_s, cfg.nonce_ttl_s) {
        Ok(n) => n,
        Err(NonceError::Invalid) => return AuthOutcome::Challenge { stale: false },
        Err(NonceError::Stale) => return AuthOutcome::Challenge { stale: true },
    };
    let issuer = usize::from(nonce.worker);
    if issuer != cx.worker {
        // Also when the request was already handed over (steered by its
        // Call-ID: a phone reusing a nonce under another Call-ID): the
        // issuer never hands it on, so it moves at most once more.
        if issuer < cx.workers {
            return AuthOutcome::Handoff(issuer);
        }
        return AuthOutcome::Challenge { stale: true };
    }
    if !same_target(c.uri, msg.request_uri().unwrap_or(b"")) {
        return AuthOutcome::Malformed("Digest uri differs from the Request-URI");
    }
    // `user@domain` usernames (some phones) use ha1b.
    let (user, with_domain) = match memchr::memchr(b'@', c.username) {
        Some(at) => (&c.username[..at], true),
        None => (c.username, false),
    };
    let domain = cfg.domain_of(c.realm, false).unwrap_or(cx.realm);
    let creds = reg.credentials.load();
    let Some(secret) = creds.get(&aor_key(user, domain)) else {
        return AuthOutcome::WrongCredentials("Unknown user or wrong password");
    };
    let ha1 = match (c.algorithm, with_domain) {
        (Algorithm::Md5, false) => &secret.ha1,
        (Algorithm::Md5, true) => &secret.ha1b,
        (Algorithm::Sha256, _) => &secret.ha1_sha256,
    };
    if ha1.is_empty() || !c.verify(msg.method_raw().unwrap_or(b""), ha1) {
        return AuthOutcome::WrongCredentials("Unknown user or wrong password");
    }
    if !counts.accept(&nonce, c.nonce_count(), now_s, cfg.nonce_ttl_s) {
        return AuthOutcome::Challenge { stale: true };
    }
    AuthOutcome::Ok { user }
}

/// Whether the digest `uri` names the host and port of the Request-URI.
/// The user part is not compared: some clients (SIPp among them) put
/// `sip:host:port` there, and the response and the nonce count already bind
/// the credentials to this one request.
fn same_target(digest_uri: &[u8], request_uri: &[u8]) -> bool {
    match (Uri::parse(digest_uri), Uri::parse(request_uri)) {
        (Ok(a), Ok(b)) => a.host.eq_ignore_ascii_case(b.host) && a.port == b.port,
        _ => digest_uri == request_uri,
    }
}

/// The challenge header values for `realm`, one per offered algorithm,
/// with a fresh nonce from `worker`.
pub fn challenges(
    reg: &Registrar,
    counts: &mut NonceCounts,
    realm: &str,
    worker: usize,
    stale: bool,
    now: Instant,
) -> Vec<Vec<u8>> {
    let cfg = &reg.config;
    let seq = counts.next_seq();
    let nonce = cfg
        .nonce_key
        .mint(cfg.secs(now), u8::try_from(worker).unwrap_or(u8::MAX), seq);
    cfg.algorithms
        .iter()
        .map(|&alg| {
            let mut v = Vec::with_capacity(128);
            write_challenge(alg, realm.as_bytes(), &nonce, stale, &mut v);
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrar::digest::ha1;
    use crate::registrar::{test_config, Secret};
    use std::sync::Arc;
    use std::time::Duration;

    fn registrar(now: Instant) -> Registrar {
        let mut cfg = test_config(now);
        cfg.algorithms = vec![Algorithm::Sha256, Algorithm::Md5];
        let reg = Registrar::new(cfg, 16);
        let mut t = super::super::CredentialTable::new();
        t.insert(
            "6001@example.com".into(),
            Secret {
                ha1: ha1(Algorithm::Md5, b"6001", b"example.com", b"secret").into(),
                ha1b: ha1(
                    Algorithm::Md5,
                    b"6001@example.com",
                    b"example.com",
                    b"secret",
                )
                .into(),
                ha1_sha256: ha1(Algorithm::Sha256, b"6001", b"example.com", b"secret").into(),
            },
        );
        reg.credentials.store(Arc::new(t));
        reg
    }

    fn nonce_of(challenge: &[u8]) -> String {
        let s = String::from_utf8_lossy(challenge);
        let start = s.find("nonce=\"").unwrap() + 7;
        s[start..start + s[start..].find('"').unwrap()].to_string()
    }

    /// A REGISTER answering `nonce` as a client with `password` would.
    fn register(alg: Algorithm, user: &str, password: &str, nonce: &str, nc: u32) -> Vec<u8> {
        let uri = "sip:example.com";
        let realm = "example.com";
        let h1 = ha1(alg, user.as_bytes(), realm.as_bytes(), password.as_bytes());
        let h2 = alg.hash_hex(&[b"REGISTER", uri.as_bytes()]);
        let nc = format!("{nc:08x}");
        let resp = alg.hash_hex(&[
            h1.as_bytes(),
            nonce.as_bytes(),
            nc.as_bytes(),
            b"cn",
            b"auth",
            h2.as_bytes(),
        ]);
        format!(
            "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             From: <sip:{user}@{realm}>;tag=1\r\nTo: <sip:{user}@{realm}>\r\nCall-ID: c\r\n\
             CSeq: 2 REGISTER\r\nAuthorization: Digest username=\"{user}\", realm=\"{realm}\", \
             nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}, qop=auth, \
             nc={nc}, cnonce=\"cn\"\r\nContent-Length: 0\r\n\r\n",
            alg.name()
        )
        .into_bytes()
    }

    fn run(
        reg: &Registrar,
        counts: &mut NonceCounts,
        raw: &[u8],
        worker: usize,
        now: Instant,
    ) -> String {
        let msg = crate::sip::parse(raw).unwrap();
        let cx = Context {
            realm: "example.com",
            worker,
            workers: 2,
            now,
        };
        format!(
            "{:?}",
            check(reg, counts, &msg, HeaderName::Authorization, &cx)
        )
    }

    #[test]
    fn md5_and_sha256_with_replay_protection() {
        let t0 = Instant::now();
        let reg = registrar(t0);
        let mut counts = NonceCounts::new(16);
        let ch = challenges(&reg, &mut counts, "example.com", 0, false, t0);
        assert_eq!(ch.len(), 2);
        assert!(String::from_utf8_lossy(&ch[0]).contains("algorithm=SHA-256"));
        let nonce = nonce_of(&ch[0]);
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let mut counts = NonceCounts::new(16);
            let ok = register(alg, "6001", "secret", &nonce, 1);
            assert_eq!(
                run(&reg, &mut counts, &ok, 0, t0),
                "Ok { user: [54, 48, 48, 49] }"
            );
            assert_eq!(
                run(&reg, &mut counts, &ok, 0, t0),
                "Challenge { stale: true }",
                "replayed nc"
            );
            let next = register(alg, "6001", "secret", &nonce, 2);
            assert!(run(&reg, &mut counts, &next, 0, t0).starts_with("Ok"));
        }
        let wrong = register(Algorithm::Md5, "6001", "guess", &nonce, 5);
        assert!(run(&reg, &mut counts, &wrong, 0, t0).starts_with("WrongCredentials"));
        let unknown = register(Algorithm::Md5, "6002", "secret", &nonce, 5);
        assert!(run(&reg, &mut counts, &unknown, 0, t0).starts_with("WrongCredentials"));
        // A wrong password does not consume the count: the right one still passes.
        let right = register(Algorithm::Md5, "6001", "secret", &nonce, 5);
        assert!(run(&reg, &mut counts, &right, 0, t0).starts_with("Ok"));
    }

    #[test]
    fn stale_foreign_and_missing_nonces() {
        let t0 = Instant::now();
        let reg = registrar(t0);
        let mut counts = NonceCounts::new(16);
        let nonce = nonce_of(&challenges(&reg, &mut counts, "example.com", 1, false, t0)[0]);
        let req = register(Algorithm::Md5, "6001", "secret", &nonce, 1);
        assert_eq!(run(&reg, &mut counts, &req, 0, t0), "Handoff(1)");
        let later = t0 + Duration::from_secs(301);
        assert_eq!(
            run(&reg, &mut counts, &req, 1, later),
            "Challenge { stale: true }"
        );
        let forged = register(Algorithm::Md5, "6001", "secret", "0000000001deadbeef", 1);
        assert_eq!(
            run(&reg, &mut counts, &forged, 0, t0),
            "Challenge { stale: false }"
        );
        let none =
            b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
            From: <sip:6001@example.com>;tag=1\r\nTo: <sip:6001@example.com>\r\nCall-ID: c\r\n\
            CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            run(&reg, &mut counts, none, 0, t0),
            "Challenge { stale: false }"
        );
    }

    #[test]
    fn digest_uri_must_name_the_request_target() {
        assert!(same_target(b"sip:example.com", b"sip:example.com"));
        assert!(same_target(
            b"sip:10.0.0.1:5060",
            b"sip:6001@10.0.0.1:5060;transport=udp"
        ));
        assert!(!same_target(
            b"sip:10.0.0.2:5060",
            b"sip:6001@10.0.0.1:5060"
        ));
        assert!(!same_target(b"sip:10.0.0.1", b"sip:10.0.0.1:5070"));
        assert!(!same_target(b"garbage", b"sip:10.0.0.1"));
    }

    #[test]
    fn sha256_needs_a_password_derived_secret() {
        let t0 = Instant::now();
        let reg = registrar(t0);
        let mut t = (**reg.credentials.load()).clone();
        if let Some(s) = t.get_mut("6001@example.com") {
            s.ha1_sha256 = "".into();
        }
        reg.credentials.store(Arc::new(t));
        let mut counts = NonceCounts::new(16);
        let nonce = nonce_of(&challenges(&reg, &mut counts, "example.com", 0, false, t0)[0]);
        let req = register(Algorithm::Sha256, "6001", "secret", &nonce, 1);
        assert!(run(&reg, &mut counts, &req, 0, t0).starts_with("WrongCredentials"));
    }
}
