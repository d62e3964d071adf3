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
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
pub use rustls::ServerConfig;
use rustls::{Connection, RootCertStore, ServerConnection};

mod client;
pub use client::{load_client, Identity, TlsClient, TlsPeer};

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
    load_server_sni(certificate, private_key, &[], None)
}

/// A certificate chosen when the client asks for one of `names` (SNI).
pub struct SniCert<'a> {
    pub names: &'a [String],
    pub certificate: &'a Path,
    pub private_key: &'a Path,
}

/// As [`load_server`], with certificates chosen by the name the client asks
/// for (exact, case-insensitive); the first pair serves every other client.
/// With `client_ca` (mutual TLS, `[tls] client_ca`), every client must present
/// a certificate that CA bundle signed, or its handshake fails.
pub fn load_server_sni(
    certificate: &Path,
    private_key: &Path,
    sni: &[SniCert<'_>],
    client_ca: Option<&Path>,
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
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
    };
    Ok(builder.with_cert_resolver(Arc::new(resolver)))
}

/// Requires a client certificate signed by one of the CAs in `ca` (a PEM bundle).
fn client_verifier(
    ca: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))
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

impl TlsError {
    /// The peer's certificate was missing or refused by our verifier (on a
    /// server session: the client had no certificate `[tls] client_ca` signed).
    pub fn peer_certificate(&self) -> bool {
        matches!(
            self.error,
            rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)
        )
    }

    /// The peer ended the handshake with an alert about certificates or the
    /// handshake itself. A TLS 1.3 server refusing our client certificate
    /// sends it after our side of the handshake has completed (so `handshake`
    /// is false), before it has read anything we sent.
    pub fn refused_by_peer(&self) -> bool {
        use rustls::AlertDescription as A;
        matches!(
            self.error,
            rustls::Error::AlertReceived(
                A::CertificateRequired
                    | A::BadCertificate
                    | A::UnsupportedCertificate
                    | A::CertificateRevoked
                    | A::CertificateExpired
                    | A::CertificateUnknown
                    | A::UnknownCA
                    | A::AccessDenied
                    | A::HandshakeFailure
            )
        )
    }
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
mod tests;
