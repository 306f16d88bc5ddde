//! The proxy's TLS: its own certificate is the Workload API's current X.509-SVID, read at
//! every handshake (so a rotation never leaves a window in which handshakes are refused),
//! and the peer is verified in the handshake: its chain against its trust domain's bundle
//! (SPIFFE X.509-SVID rules, no hostname), its SPIFFE ID against the allow-list, and its
//! chain against the CRL files, re-read at every handshake.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use enclaveid_checks::peer::{self, Role};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use spiffe::{SpiffeId, TrustDomain, X509Source};

/// Which peers are let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// These SPIFFE IDs.
    Ids(Vec<SpiffeId>),
    /// Any ID of this trust domain.
    TrustDomain(TrustDomain),
}

impl Allowed {
    fn admits(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Ids(ids) => ids.contains(id),
            Self::TrustDomain(td) => id.trust_domain() == td,
        }
    }
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ids(ids) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                write!(f, "{}", ids.join(", "))
            }
            Self::TrustDomain(td) => write!(f, "any ID of {td}"),
        }
    }
}

/// The SVID the proxy presents, read from the Workload API at each handshake; the TLS
/// key is rebuilt only when the SVID changed.
#[derive(Debug)]
pub(crate) struct CurrentSvid {
    source: X509Source,
    provider: Arc<CryptoProvider>,
    built: Mutex<Option<(Vec<u8>, Arc<CertifiedKey>)>>,
}

impl CurrentSvid {
    pub(crate) fn new(source: X509Source, provider: Arc<CryptoProvider>) -> Self {
        Self {
            source,
            provider,
            built: Mutex::new(None),
        }
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        let svid = self
            .source
            .svid()
            .inspect_err(|error| tracing::warn!(%error, "no SVID to present"))
            .ok()?;
        let leaf = svid.leaf().as_bytes().to_vec();
        let mut built = self
            .built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((current, key)) = built.as_ref()
            && *current == leaf
        {
            return Some(key.clone());
        }
        let chain: Vec<CertificateDer<'static>> = svid
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            svid.private_key().as_bytes().to_vec(),
        ));
        let key = CertifiedKey::from_der(chain, key, &self.provider)
            .inspect_err(|error| tracing::error!(%error, "the SVID cannot be used for TLS"))
            .ok()?;
        let key = Arc::new(key);
        *built = Some((leaf, key.clone()));
        Some(key)
    }
}

impl rustls::server::ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }
}

impl rustls::client::ResolvesClientCert for CurrentSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies the peer's X.509-SVID in the handshake.
#[derive(Debug)]
pub(crate) struct PeerVerifier {
    source: X509Source,
    allowed: Allowed,
    crls: Vec<PathBuf>,
    provider: Arc<CryptoProvider>,
}

impl PeerVerifier {
    pub(crate) fn new(
        source: X509Source,
        allowed: Allowed,
        crls: Vec<PathBuf>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            source,
            allowed,
            crls,
            provider,
        }
    }

    /// The peer's SPIFFE ID once its chain, its ID and the CRLs have been checked.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
    ) -> Result<SpiffeId, rustls::Error> {
        let refused = |why: String| {
            tracing::info!(%why, "peer refused in the handshake");
            rustls::Error::General(why)
        };
        let id = peer::spiffe_id_of(end_entity)
            .map_err(|e| refused(enclaveid_checks::Chain(&e).to_string()))?;
        if !self.allowed.admits(&id) {
            return Err(refused(format!(
                "peer {id} is not allowed (allowed: {})",
                self.allowed
            )));
        }
        let bundles = self
            .source
            .bundle_set()
            .map_err(|e| refused(format!("no trust bundles: {e}")))?;
        let roots: Vec<CertificateDer<'static>> = bundles
            .get(id.trust_domain())
            .map(|bundle| {
                bundle
                    .authorities()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity.clone())
            .chain(intermediates.iter().cloned())
            .collect();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
        peer::verify_svid(&chain, &roots, at, role)
            .map_err(|e| refused(format!("{id}: {}", enclaveid_checks::Chain(&e))))?;
        enclaveid_io::read_crl_files(&self.crls)
            .map_err(|e| refused(enclaveid_checks::Chain(&e).to_string()))?
            .check_chain(&chain, &roots, at)
            .map_err(|e| refused(format!("{id}: {}", enclaveid_checks::Chain(&e))))?;
        Ok(id)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, Role::Client)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, Role::Server)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// The TLS configuration of `proxy server`: our SVID, the peer verified in the handshake.
pub(crate) fn server_config(
    source: &X509Source,
    allowed: Allowed,
    crls: Vec<PathBuf>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = PeerVerifier::new(source.clone(), allowed, crls, provider.clone());
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CurrentSvid::new(source.clone(), provider)));
    // No resumption: a resumed session skips the client's certificate, and every new
    // connection must meet the current bundle, allow-list and CRLs.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The TLS configuration of `proxy client`.
pub(crate) fn client_config(
    source: &X509Source,
    allowed: Allowed,
    crls: Vec<PathBuf>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = PeerVerifier::new(source.clone(), allowed, crls, provider.clone());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentSvid::new(source.clone(), provider)));
    // As the server side: every connection verifies the server afresh.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}
