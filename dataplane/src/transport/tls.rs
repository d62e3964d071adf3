//! TLS on a stream connection, sans-IO: rustls' `ServerConnection` (accepted
//! connections) or `ClientConnection` (connections we open to TLS
//! destinations) fed with the bytes the driver read, giving back the plaintext
//! for the framer and the bytes to send (handshake records, encrypted
//! messages, alerts). The driver keeps one [`TlsSession`] per TLS connection
//! beside its socket; nothing here touches a socket. Certificates are loaded
//! from PEM files by [`load_server`], the CAs destinations are verified
//! against by [`load_client`].

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
pub use rustls::ServerConfig;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConnection};

/// The server configuration new handshakes use; swapped whole on reload, so
/// established sessions keep theirs.
#[derive(Clone)]
pub struct TlsServer(pub Arc<ArcSwap<ServerConfig>>);

impl TlsServer {
    pub fn new(config: ServerConfig) -> Self {
        TlsServer(Arc::new(ArcSwap::from_pointee(config)))
    }

    /// New handshakes from now on use `config`.
    pub fn replace(&self, config: ServerConfig) {
        self.0.store(Arc::new(config));
    }

    /// A session for a freshly accepted connection.
    pub fn session(&self) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: Connection::Server(ServerConnection::new(self.0.load_full())?),
        })
    }
}

/// How sipvane opens TLS connections to destinations: verifying their
/// certificate against `[tls] ca`, or (a set with `verify = false`) not at all.
#[derive(Clone)]
pub struct TlsClient {
    verify: Arc<ClientConfig>,
    trust_all: Arc<ClientConfig>,
}

/// Who a TLS connection we open is to: the name its certificate must carry (a
/// DNS name, or an IP address matched against the IP SANs) and whether it is
/// verified at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPeer {
    pub name: String,
    pub verify: bool,
}

impl TlsClient {
    /// A session for a connection to `peer`; an unusable name (neither a DNS
    /// name nor an IP address) is an error.
    pub fn session(&self, peer: &TlsPeer) -> Result<TlsSession, String> {
        let host = peer.name.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{}: not a TLS server name: {e}", peer.name))?;
        let config = if peer.verify {
            &self.verify
        } else {
            &self.trust_all
        };
        let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
        Ok(TlsSession {
            conn: Connection::Client(conn),
        })
    }
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.verify, &other.verify)
    }
}

impl Eq for TlsClient {}

/// The client side from a PEM bundle of CA certificates (`[tls] ca`): TLS 1.2
/// and 1.3, ring provider, no client certificate.
pub fn load_client(ca: &Path) -> Result<TlsClient, String> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
    }
    let provider = provider();
    let verify = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let trust_all = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAll(provider)))
        .with_no_client_auth();
    Ok(TlsClient {
        verify: Arc::new(verify),
        trust_all: Arc::new(trust_all),
    })
}

/// Accepts any certificate (a destination set with `verify = false`); the
/// handshake signatures are still checked, so the session is encrypted to
/// whoever holds the presented key.
#[derive(Debug)]
struct TrustAll(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for TrustAll {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsServer")
    }
}

impl PartialEq for TlsServer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TlsServer {}

/// A certificate chain and key from PEM files, as a server configuration
/// (TLS 1.2 and 1.3, ring provider). The error names the file and what is
/// wrong with it.
pub fn load_server(certificate: &Path, private_key: &Path) -> Result<ServerConfig, String> {
    load_server_sni(certificate, private_key, &[])
}

/// A certificate chosen when the client asks for one of `names` (SNI).
pub struct SniCert<'a> {
    pub names: &'a [String],
    pub certificate: &'a Path,
    pub private_key: &'a Path,
}

/// As [`load_server`], with certificates chosen by the name the client asks
/// for (exact, case-insensitive); the first pair serves every other client.
pub fn load_server_sni(
    certificate: &Path,
    private_key: &Path,
    sni: &[SniCert<'_>],
) -> Result<ServerConfig, String> {
    let provider = provider();
    let default = certified(certificate, private_key, &provider)?;
    let mut by_name = std::collections::HashMap::new();
    for e in sni {
        let key = Arc::new(certified(e.certificate, e.private_key, &provider)?);
        for n in e.names {
            by_name.insert(n.to_ascii_lowercase(), key.clone());
        }
    }
    let resolver = Resolver {
        default: Arc::new(default),
        by_name,
    };
    Ok(ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver)))
}

fn certified(
    certificate: &Path,
    private_key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, String> {
    let certs = load_certs(certificate)?;
    let key = load_key(private_key)?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        format!(
            "{}: private key does not fit the certificate in {}: {e}",
            private_key.display(),
            certificate.display()
        )
    })
}

/// Picks the certificate for a client hello by its server name.
#[derive(Debug)]
struct Resolver {
    default: Arc<CertifiedKey>,
    by_name: std::collections::HashMap<String, Arc<CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()));
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

/// The crypto provider: ring, as chosen for the project (no aws-lc, no C
/// toolchain beyond ring's). rustls 0.23.48 deprecates it for lacking
/// post-quantum key exchange; classical ECDHE is what SIP peers offer.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// The certificates of a PEM file (leaf first); at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in the file", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no PRIVATE KEY in the file", path.display()))
}

/// Why a session ended.
#[derive(Debug)]
pub struct TlsError {
    /// It failed before the handshake completed (counted as a handshake failure).
    pub handshake: bool,
    pub error: rustls::Error,
}

/// One TLS connection's state.
pub struct TlsSession {
    conn: Connection,
}

impl TlsSession {
    /// The handshake is still going on.
    pub fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The name the client asked for (SNI), if any.
    pub fn server_name(&self) -> Option<&str> {
        match &self.conn {
            Connection::Server(s) => s.server_name(),
            Connection::Client(_) => None,
        }
    }

    /// Feeds bytes read from the socket; the plaintext they carry is appended to
    /// `plain`. After an `Err` the connection must be closed once [`Self::output`]
    /// (holding the alert for the peer) has been sent.
    pub fn feed(&mut self, mut data: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsError> {
        while !data.is_empty() {
            let handshake = self.conn.is_handshaking();
            let fail = |error| TlsError { handshake, error };
            // Only fails when its buffer is full, which draining below prevents.
            let n = self
                .conn
                .read_tls(&mut data)
                .map_err(|e| fail(rustls::Error::General(e.to_string())))?;
            let state = self.conn.process_new_packets().map_err(fail)?;
            let want = state.plaintext_bytes_to_read();
            if want > 0 {
                let at = plain.len();
                plain.resize(at + want, 0);
                let got = self
                    .conn
                    .reader()
                    .read(plain.get_mut(at..).unwrap_or_default())
                    .unwrap_or(0);
                plain.truncate(at + got);
            }
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Encrypts `plain` for sending (held until the handshake completes).
    pub fn write(&mut self, plain: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(plain)
    }

    /// Appends what must be sent to the peer now to `out`.
    pub fn output(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
    fn pump(
        c: &mut ClientConnection,
        s: &mut TlsSession,
        plain: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
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
        let client = load_client(&ca).unwrap();
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
            let mut c = load_client(ca).unwrap().session(&peer).unwrap();
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
        let client = load_client(&ca).unwrap();
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
        assert!(load_client(&dir.join("nope.crt"))
            .err()
            .unwrap()
            .contains("cannot read"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
