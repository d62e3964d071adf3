//! The client side: TLS connections sipvane opens to destinations (and the
//! prober's), verified against `[tls] ca` or, for a set with `tls_verify =
//! false`, not at all; presenting a client certificate when the destination
//! asks for one (mutual TLS towards trunks).

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore};

use super::{load_certs, load_key, provider, TlsSession};

/// How sipvane opens TLS connections to destinations: verifying their
/// certificate against `[tls] ca`, or (a set with `tls_verify = false`) not at
/// all. Clones share the configuration, which [`TlsClient::replace`] swaps
/// (a reload of `[tls] ca`): connections opened afterwards use the new one.
#[derive(Clone)]
pub struct TlsClient(Arc<ArcSwap<Configs>>);

struct Configs {
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

/// The certificate (chain) and key sipvane presents when a destination asks
/// for a client certificate.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub certificate: &'a Path,
    pub private_key: &'a Path,
}

impl TlsClient {
    /// A session for a connection to `peer`; an unusable name (neither a DNS
    /// name nor an IP address) is an error.
    pub fn session(&self, peer: &TlsPeer) -> Result<TlsSession, String> {
        let host = peer.name.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{}: not a TLS server name: {e}", peer.name))?;
        let configs = self.0.load();
        let config = if peer.verify {
            &configs.verify
        } else {
            &configs.trust_all
        };
        let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
        Ok(TlsSession {
            conn: Connection::Client(conn),
        })
    }

    /// Connections opened from now on (by every clone) use `other`'s CAs and
    /// client certificate; open ones keep theirs.
    pub fn replace(&self, other: &TlsClient) {
        self.0.store(other.0.load_full());
    }
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TlsClient {}

/// The client side from a PEM bundle of CA certificates (`[tls] ca`): TLS 1.2
/// and 1.3, ring provider; with `identity`, that certificate is presented to
/// destinations that ask for one (else none is).
pub fn load_client(ca: &Path, identity: Option<Identity<'_>>) -> Result<TlsClient, String> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
    }
    let provider = provider();
    let identity = match identity {
        Some(id) => {
            // Checked here so a key not fitting the certificate is named.
            super::certified(id.certificate, id.private_key, &provider)?;
            Some((load_certs(id.certificate)?, load_key(id.private_key)?))
        }
        None => None,
    };
    let with_identity =
        |b: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>| match &identity {
            Some((chain, key)) => b
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| format!("client certificate: {e}")),
            None => Ok(b.with_no_client_auth()),
        };
    let verify = with_identity(
        ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots),
    )?;
    let trust_all = with_identity(
        ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAll(provider))),
    )?;
    Ok(TlsClient(Arc::new(ArcSwap::from_pointee(Configs {
        verify: Arc::new(verify),
        trust_all: Arc::new(trust_all),
    }))))
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
