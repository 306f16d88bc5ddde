//! mTLS between workloads in enclaves, for `enclaveid proxy` and the mesh example: the
//! certificate presented is the Workload API's current X.509-SVID, read at every handshake
//! (so a rotation never leaves a window in which handshakes are refused), and the peer is
//! verified in the handshake, before any application byte: its chain against its trust
//! domain's bundle (SPIFFE X.509-SVID rules, no hostname), its SPIFFE ID against the
//! allow-list, its chain against the CRL files (re-read at every handshake) and, when
//! asked, the attestation its SVID carries ([`Attestation`]: a bound document with one
//! of the accepted PCR0s).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use enclaveid_attestor::{Policy, SvidPolicy, Verifier};
use enclaveid_checks::peer::{self, Role};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, SignatureScheme};
use spiffe::{SpiffeId, TrustDomain, X509Source};

/// The three signature methods of rustls's verifier traits, checked with the algorithms of
/// the verifier's `provider` field: the same in every verifier of this crate.
macro_rules! signatures_with_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use signatures_with_provider;

/// What a peer must be.
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    /// Which SPIFFE IDs are let in.
    pub allowed: Allowed,
    /// CRL files the peer's chain is checked against (missing files: no CRL).
    pub crls: Vec<PathBuf>,
    /// The attestation the peer's SVID must carry, if any.
    pub attestation: Option<Attestation>,
    /// Allow TLS 1.3 session resumption. A resumed connection is not verified again: it
    /// continues the full handshake's session, whose peer passed every check, and skips
    /// checks that changed since (a new CRL, a new bundle). Off in `enclaveid proxy`.
    pub resumption: bool,
}

/// A bad `--require-pcr0` or `--attestation-root`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationFlagError {
    /// Not a PCR value.
    #[error(
        "--require-pcr0 {value:?}: accepted: a PCR0 of 96 hex digits (SHA-384), as `nitro-cli describe-eif` prints it"
    )]
    Pcr0 {
        /// The value given.
        value: String,
    },
    /// The root file cannot be read.
    #[error("--attestation-root {}: cannot be read", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The root file is not PEM.
    #[error("--attestation-root {}: accepted: a PEM certificate (the fake attestor's root)", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
    },
}

/// The peer's SVID must carry an attestation document ([`enclaveid_attestor::svid`])
/// bound to it, from an enclave whose PCR0 is one of these, not in debug mode.
#[derive(Clone, Debug)]
pub struct Attestation {
    verifier: Verifier,
    policy: SvidPolicy,
}

impl Attestation {
    /// Documents chaining to the AWS Nitro Enclaves root, with one of `pcr0s` (48 bytes
    /// each).
    pub fn new(pcr0s: Vec<Vec<u8>>) -> Self {
        Self::with_verifier(pcr0s, Verifier::aws())
    }

    /// Documents chaining to another root: the fake attestor's, in development and tests.
    pub fn with_verifier(pcr0s: Vec<Vec<u8>>, verifier: Verifier) -> Self {
        Self {
            verifier,
            policy: SvidPolicy::required(Policy {
                pcrs: [(0, pcr0s)].into(),
                ..Policy::default()
            }),
        }
    }

    /// The requirement of `--require-pcr0 HEX…` and `--attestation-root PEM` (the same
    /// flags on `enclaveid proxy` and the mesh): none without a PCR0.
    pub fn from_flags(
        pcr0s: &[String],
        root: Option<&std::path::Path>,
    ) -> Result<Option<Self>, AttestationFlagError> {
        if pcr0s.is_empty() {
            return Ok(None);
        }
        let pcr0s = pcr0s
            .iter()
            .map(|v| {
                enclaveid_attestor::parse_pcr(v)
                    .ok_or_else(|| AttestationFlagError::Pcr0 { value: v.clone() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let verifier = match root {
            None => Verifier::aws(),
            Some(path) => {
                let text = std::fs::read(path).map_err(|source| AttestationFlagError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let pem = pem::parse(text).map_err(|_| AttestationFlagError::NotPem {
                    path: path.to_owned(),
                })?;
                Verifier::with_root_der(pem.contents())
            }
        };
        Ok(Some(Self::with_verifier(pcr0s, verifier)))
    }

    /// Checks `leaf`, whose SPIFFE ID is `id`, at `at`.
    pub fn check(
        &self,
        leaf: &[u8],
        id: &SpiffeId,
        at: SystemTime,
    ) -> Result<(), enclaveid_attestor::SvidError> {
        let policy = SvidPolicy {
            trust_domain: Some(id.trust_domain().to_string()),
            ..self.policy.clone()
        };
        self.verifier.verify_attested_svid(leaf, &policy, at)?;
        Ok(())
    }
}

/// Which peers are let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// These SPIFFE IDs.
    Ids(Vec<SpiffeId>),
    /// Any ID of this trust domain.
    TrustDomain(TrustDomain),
}

impl Allowed {
    /// Whether `id` is let in.
    pub fn admits(&self, id: &SpiffeId) -> bool {
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
pub struct CurrentSvid {
    source: X509Source,
    provider: Arc<CryptoProvider>,
    built: Mutex<Option<(Vec<u8>, Arc<CertifiedKey>)>>,
}

impl CurrentSvid {
    /// The SVID of `source`, as TLS keys of `provider`.
    pub fn new(source: X509Source, provider: Arc<CryptoProvider>) -> Self {
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
pub struct PeerVerifier {
    source: X509Source,
    policy: PeerPolicy,
    provider: Arc<CryptoProvider>,
}

impl PeerVerifier {
    /// Peers of `policy`, with the bundles of `source`.
    pub fn new(source: X509Source, policy: PeerPolicy, provider: Arc<CryptoProvider>) -> Self {
        Self {
            source,
            policy,
            provider,
        }
    }

    /// The peer's SPIFFE ID once its chain, its ID, the CRLs and its attestation have
    /// been checked.
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
        if !self.policy.allowed.admits(&id) {
            return Err(refused(format!(
                "peer {id} is not allowed (allowed: {})",
                self.policy.allowed
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
        enclaveid_io::read_crl_files(&self.policy.crls)
            .map_err(|e| refused(enclaveid_checks::Chain(&e).to_string()))?
            .check_chain(&chain, &roots, at)
            .map_err(|e| refused(format!("{id}: {}", enclaveid_checks::Chain(&e))))?;
        if let Some(attestation) = &self.policy.attestation {
            attestation
                .check(end_entity, &id, at)
                .map_err(|e| refused(format!("{id}: {}", enclaveid_checks::Chain(&e))))?;
        }
        Ok(id)
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

    signatures_with_provider!();
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

    signatures_with_provider!();
}

/// A server configuration: our SVID, the client verified in the handshake.
pub fn server_config(
    source: &X509Source,
    policy: PeerPolicy,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resumption = policy.resumption;
    let verifier = PeerVerifier::new(source.clone(), policy, provider.clone());
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CurrentSvid::new(source.clone(), provider)));
    if !resumption {
        // A resumed session skips the client's certificate: without resumption, every
        // new connection meets the current bundle, allow-list, CRLs and attestation.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// A client configuration: our SVID, the server verified in the handshake.
pub fn client_config(
    source: &X509Source,
    policy: PeerPolicy,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resumption = policy.resumption;
    let verifier = PeerVerifier::new(source.clone(), policy, provider.clone());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentSvid::new(source.clone(), provider)));
    if !resumption {
        // As the server side: every connection verifies the server afresh.
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}
