//! The sessions in memory: a rustls client and server pair, no sockets.

use super::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::path::PathBuf;

/// A CA (`NAME-ca.crt`) and a certificate for `sip.test` it signed
/// (`NAME.crt`, `NAME.key`), made by `openssl` (which the integration tests
/// need anyway) in `dir`. Returns (CA, certificate, key).
fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca = dir.join(format!("{name}-ca.crt"));
    let ca_key = dir.join(format!("{name}-ca.key"));
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let req = |subj: &str, key: &Path, out: &Path, extra: &[&std::ffi::OsStr]| {
        let ok = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj", subj])
            .args(extra)
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(out)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok);
    };
    req("/CN=test CA", &ca_key, &ca, &[]);
    let args: Vec<std::ffi::OsString> = vec![
        "-addext".into(),
        "subjectAltName=DNS:sip.test".into(),
        "-addext".into(),
        "basicConstraints=critical,CA:FALSE".into(),
        "-CA".into(),
        ca.clone().into(),
        "-CAkey".into(),
        ca_key.into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    req("/CN=sip.test", &key, &cert, &args);
    (ca, cert, key)
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sipvane-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn client(ca: &Path) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ClientConnection::new(Arc::new(cfg), ServerName::try_from("sip.test").unwrap()).unwrap()
}

/// Client → server bytes through the session; server → client back.
fn pump(c: &mut ClientConnection, s: &mut TlsSession, plain: &mut Vec<u8>) -> Result<(), TlsError> {
    for _ in 0..10 {
        let mut to_server = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        s.feed(&to_server, plain)?;
        let mut to_client = Vec::new();
        s.output(&mut to_client);
        if to_server.is_empty() && to_client.is_empty() {
            break;
        }
        let mut rd = to_client.as_slice();
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            if c.process_new_packets().is_err() {
                // The client's alert still goes to the server.
                let mut alert = Vec::new();
                while c.wants_write() {
                    c.write_tls(&mut alert).unwrap();
                }
                return s.feed(&alert, plain);
            }
        }
    }
    Ok(())
}

#[test]
fn handshake_then_messages_both_ways() {
    let dir = tmpdir("pair");
    let (ca, cert, key) = make_cert(&dir, "a");
    let server = TlsServer::new(load_server(&cert, &key).unwrap());
    let mut s = server.session().unwrap();
    let mut c = client(&ca);
    let mut plain = Vec::new();
    c.writer().write_all(b"OPTIONS sip:x SIP/2.0\r\n").unwrap();
    pump(&mut c, &mut s, &mut plain).unwrap();
    assert!(!s.handshaking());
    assert_eq!(s.server_name(), Some("sip.test"));
    assert_eq!(plain, b"OPTIONS sip:x SIP/2.0\r\n");
    s.write(b"SIP/2.0 200 OK\r\n").unwrap();
    let mut out = Vec::new();
    s.output(&mut out);
    c.read_tls(&mut out.as_slice()).unwrap();
    c.process_new_packets().unwrap();
    let mut got = [0u8; 64];
    let n = c.reader().read(&mut got).unwrap();
    assert_eq!(&got[..n], b"SIP/2.0 200 OK\r\n");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_client_trusting_another_ca_fails_the_handshake() {
    let dir = tmpdir("other");
    let (_, cert, key) = make_cert(&dir, "a");
    let (other, _, _) = make_cert(&dir, "b");
    let server = TlsServer::new(load_server(&cert, &key).unwrap());
    let mut s = server.session().unwrap();
    let mut c = client(&other);
    let mut plain = Vec::new();
    let e = pump(&mut c, &mut s, &mut plain).unwrap_err();
    assert!(e.handshake, "{e:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let dir = tmpdir("garbage");
    let (_, cert, key) = make_cert(&dir, "a");
    let server = TlsServer::new(load_server(&cert, &key).unwrap());
    let mut s = server.session().unwrap();
    let e = s
        .feed(b"OPTIONS sip:x SIP/2.0\r\n\r\n", &mut Vec::new())
        .unwrap_err();
    assert!(e.handshake);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_files_are_named() {
    let dir = tmpdir("bad");
    let (_, cert, key) = make_cert(&dir, "a");
    let (_, _, other_key) = make_cert(&dir, "b");
    let e = load_server(&dir.join("nope.crt"), &key).unwrap_err();
    assert!(e.contains("nope.crt: cannot read"), "{e}");
    let e = load_server(&key, &key).unwrap_err();
    assert!(e.contains("no CERTIFICATE"), "{e}");
    let e = load_server(&cert, &cert).unwrap_err();
    assert!(e.contains("no PRIVATE KEY"), "{e}");
    let e = load_server(&cert, &other_key).unwrap_err();
    assert!(e.contains("does not fit"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// One session's output fed to the other until both are quiet.
fn pump_sessions(
    c: &mut TlsSession,
    s: &mut TlsSession,
    at_client: &mut Vec<u8>,
    at_server: &mut Vec<u8>,
) -> Result<(), (bool, TlsError)> {
    for _ in 0..10 {
        let mut to_server = Vec::new();
        c.output(&mut to_server);
        let fed = s.feed(&to_server, at_server);
        let mut to_client = Vec::new();
        s.output(&mut to_client);
        fed.map_err(|e| (false, e))?;
        if to_server.is_empty() && to_client.is_empty() {
            return Ok(());
        }
        c.feed(&to_client, at_client).map_err(|e| (true, e))?;
    }
    Ok(())
}

#[test]
fn client_verifies_the_server_against_the_ca() {
    let dir = tmpdir("client");
    let (ca, cert, key) = make_cert(&dir, "a");
    let server = TlsServer::new(load_server(&cert, &key).unwrap());
    let client = load_client(&ca, None).unwrap();
    let peer = TlsPeer {
        name: "sip.test".into(),
        verify: true,
    };
    let mut c = client.session(&peer).unwrap();
    let mut s = server.session().unwrap();
    c.write(b"INVITE sip:x SIP/2.0\r\n").unwrap();
    let (mut at_c, mut at_s) = (Vec::new(), Vec::new());
    pump_sessions(&mut c, &mut s, &mut at_c, &mut at_s).unwrap();
    assert!(!c.handshaking() && !s.handshaking());
    assert_eq!(s.server_name(), Some("sip.test"));
    assert_eq!(at_s, b"INVITE sip:x SIP/2.0\r\n");
    s.write(b"SIP/2.0 200 OK\r\n").unwrap();
    pump_sessions(&mut c, &mut s, &mut at_c, &mut at_s).unwrap();
    assert_eq!(at_c, b"SIP/2.0 200 OK\r\n");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn client_refuses_a_server_of_another_ca_or_name() {
    let dir = tmpdir("client-bad");
    let (_, cert, key) = make_cert(&dir, "a");
    let (other, _, _) = make_cert(&dir, "b");
    let server = TlsServer::new(load_server(&cert, &key).unwrap());
    let fails = |ca: &Path, name: &str, verify: bool| {
        let peer = TlsPeer {
            name: name.into(),
            verify,
        };
        let mut c = load_client(ca, None).unwrap().session(&peer).unwrap();
        let mut s = server.session().unwrap();
        pump_sessions(&mut c, &mut s, &mut Vec::new(), &mut Vec::new())
    };
    // Another CA: the client's handshake fails.
    let (at_client, e) = fails(&other, "sip.test", true).unwrap_err();
    assert!(at_client && e.handshake, "{e:?}");
    // Our CA, but the certificate is not for this name (or IP).
    let (at_client, e) = fails(&dir.join("a-ca.crt"), "other.test", true).unwrap_err();
    assert!(at_client && e.handshake, "{e:?}");
    let (at_client, _) = fails(&dir.join("a-ca.crt"), "127.0.0.1", true).unwrap_err();
    assert!(at_client);
    // Not verified at all (a set with verify = false): it connects.
    fails(&other, "127.0.0.1", false).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn client_matches_an_ip_san() {
    let dir = tmpdir("client-ip");
    let (ca, _, _) = make_cert(&dir, "a");
    let (cert, key) = (dir.join("ip.crt"), dir.join("ip.key"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj", "/CN=ip"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(dir.join("a-ca.key"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let server = TlsServer::new(load_server(&cert, &key).unwrap());
    let client = load_client(&ca, None).unwrap();
    for (name, good) in [("127.0.0.1", true), ("127.0.0.2", false)] {
        let peer = TlsPeer {
            name: name.into(),
            verify: true,
        };
        let mut c = client.session(&peer).unwrap();
        let mut s = server.session().unwrap();
        let r = pump_sessions(&mut c, &mut s, &mut Vec::new(), &mut Vec::new());
        assert_eq!(r.is_ok(), good, "{name}: {r:?}");
        assert_eq!(c.handshaking(), !good);
    }
    assert!(load_client(&dir.join("nope.crt"), None)
        .err()
        .unwrap()
        .contains("cannot read"));
    let _ = std::fs::remove_dir_all(dir);
}

/// `[tls] client_ca`: a client presenting a certificate that CA signed gets
/// in; one without a certificate, or with one from another CA, fails the
/// handshake, and the server side tells it was the client's certificate.
#[test]
fn mutual_tls_requires_a_client_certificate_from_client_ca() {
    let dir = tmpdir("mutual");
    let (ca, cert, key) = make_cert(&dir, "a");
    let (client_ca, client_cert, client_key) = make_cert(&dir, "b");
    let server =
        TlsServer::new(load_server_sni(&cert, &key, &[], Some(client_ca.as_path())).unwrap());
    let peer = TlsPeer {
        name: "sip.test".into(),
        verify: true,
    };
    let try_with = |identity: Option<Identity<'_>>| {
        let mut c = load_client(&ca, identity).unwrap().session(&peer).unwrap();
        let mut s = server.session().unwrap();
        c.write(b"OPTIONS sip:x SIP/2.0\r\n").unwrap();
        let mut at_s = Vec::new();
        pump_sessions(&mut c, &mut s, &mut Vec::new(), &mut at_s).map(|()| at_s)
    };
    let got = try_with(Some(Identity {
        certificate: &client_cert,
        private_key: &client_key,
    }))
    .unwrap();
    assert_eq!(got, b"OPTIONS sip:x SIP/2.0\r\n");
    for identity in [
        None,
        Some(Identity {
            certificate: &cert,
            private_key: &key,
        }),
    ] {
        let (at_client, e) = try_with(identity).unwrap_err();
        assert!(!at_client && e.handshake && e.peer_certificate(), "{e:?}");
    }
    // A key that does not fit the client certificate is named at load.
    let e = load_client(
        &ca,
        Some(Identity {
            certificate: &client_cert,
            private_key: &key,
        }),
    )
    .err()
    .unwrap();
    assert!(e.contains("does not fit"), "{e}");
    // A client_ca that is not PEM is named.
    let e = load_server_sni(&cert, &key, &[], Some(key.as_path())).unwrap_err();
    assert!(e.contains("no CERTIFICATE"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
