//! mTLS by DNS name, the seed's design: each service presents the ACM certificate the
//! agent wrote to files (`[[acm_certificate]]` and its `[[files]]` block) and accepts a
//! peer whose certificate chains to the Private CA root (the bundle file) and is valid
//! for the DNS name it expects (`--verify dns:NAME`).
//!
//! The files are read the way the agent writes them: `DIR/current` is resolved once per
//! handshake and the certificate and key are read from that one generation, so a rotation
//! between the two reads cannot pair a new certificate with an old key. A directory
//! without `current` (written by another tool) is read as it is. The parsed key is kept
//! until `current` points elsewhere.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::Error;

/// The certificate file, as `[[files]]` names it by default.
pub const CERT_FILE: &str = "svid.pem";
/// The key file.
pub const KEY_FILE: &str = "svid_key.pem";
/// The Private CA root.
pub const BUNDLE_FILE: &str = "svid_bundle.pem";

/// The generation last read, and what was read from it.
type Loaded = Option<(PathBuf, Arc<CertifiedKey>)>;

/// A directory the agent writes a certificate, its key and the Private CA root to.
#[derive(Clone, Debug)]
pub struct CertFiles {
    dir: PathBuf,
    loaded: Arc<Mutex<Loaded>>,
}

impl CertFiles {
    /// The files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            loaded: Arc::default(),
        }
    }

    /// The generation directory to read: where `DIR/current` points, or `DIR`.
    fn generation(&self) -> PathBuf {
        match std::fs::read_link(self.dir.join("current")) {
            Ok(target) => self.dir.join(target),
            Err(_) => self.dir.clone(),
        }
    }

    /// The certificate chain and key of the current generation.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, Error> {
        let generation = self.generation();
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, key)) = loaded.as_ref()
            && *at == generation
            && generation != self.dir
        {
            return Ok(key.clone());
        }
        let chain = read_certs(&generation.join(CERT_FILE))?;
        let key_pem = zeroize::Zeroizing::new(read(&generation.join(KEY_FILE))?);
        let key_der = rustls_pki_types::PrivateKeyDer::try_from(pem_block(
            &key_pem,
            "PRIVATE KEY",
            &generation.join(KEY_FILE),
        )?)
        .map_err(|e| Error::Tls(format!("{}: {e}", generation.join(KEY_FILE).display())))?;
        let key = CertifiedKey::from_der(chain, key_der, &provider())
            .map_err(|e| Error::Tls(format!("{}: {e}", generation.display())))?;
        let key = Arc::new(key);
        *loaded = Some((generation, key.clone()));
        Ok(key)
    }

    /// The Private CA root(s) of the current generation.
    pub fn roots(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        read_certs(&self.generation().join(BUNDLE_FILE))
    }

    /// The first DNS name of our own certificate, as `dns:NAME`.
    pub fn own_name(&self) -> Result<String, Error> {
        let key = self.certified_key()?;
        let leaf = key
            .cert
            .first()
            .ok_or_else(|| Error::Tls("our certificate file is empty".into()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| Error::Tls(format!("our certificate does not parse: {e}")))?;
        let name = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
                    _ => None,
                })
            })
            .ok_or_else(|| Error::Tls("our certificate names no DNS name".into()))?;
        Ok(format!("dns:{name}"))
    }

    fn resolve(&self) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
            .inspect_err(|error| tracing::warn!(%error, dir = %self.dir.display(), "no certificate to present"))
            .ok()
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        CertFiles::resolve(self)
    }
}

impl ResolvesClientCert for CertFiles {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        CertFiles::resolve(self)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A `--verify` value: `dns:NAME`.
pub fn parse_verify(value: &str) -> Result<ServerName<'static>, Error> {
    let usage = || {
        Error::Usage(format!(
            "--verify {value:?}: accepted: dns:NAME, such as dns:inference.ephemeral-ml.internal (peers by SPIFFE ID: --allow)"
        ))
    };
    let name = value.strip_prefix("dns:").ok_or_else(usage)?;
    match ServerName::try_from(name.to_owned()) {
        Ok(name @ ServerName::DnsName(_)) => Ok(name),
        _ => Err(usage()),
    }
}

/// A server configuration presenting the files' certificate and requiring a client
/// certificate that chains to the files' root. The client's DNS name is checked by
/// [`check_peer`] right after the handshake, before any application byte.
pub fn server_config(files: &CertFiles) -> Result<Arc<rustls::ServerConfig>, Error> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(files)?),
        Arc::new(provider()),
    )
    .build()
    .map_err(|e| Error::Tls(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(files.clone()));
    Ok(Arc::new(config))
}

/// A client configuration presenting the files' certificate and accepting a server whose
/// certificate chains to the files' root and is valid for the name the connection is
/// opened with.
pub fn client_config(files: &CertFiles) -> Result<Arc<rustls::ClientConfig>, Error> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(root_store(files)?)
        .with_client_cert_resolver(Arc::new(files.clone()));
    Ok(Arc::new(config))
}

/// Checks that the peer's certificate (already chained to the root by the handshake) is
/// valid for `name`; returns `dns:NAME` and its serial.
pub fn check_peer(
    chain: &[CertificateDer<'_>],
    name: &ServerName<'static>,
) -> Result<(String, String), Error> {
    let leaf = chain
        .first()
        .ok_or_else(|| Error::Tls("the peer presented no certificate".into()))?;
    let end_entity = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| Error::Tls(format!("the peer certificate does not parse: {e}")))?;
    end_entity
        .verify_is_valid_for_subject_name(name)
        .map_err(|_| {
            Error::Tls(format!(
                "the peer certificate is not valid for {}: refused",
                name.to_str()
            ))
        })?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| Error::Tls(format!("the peer certificate does not parse: {e}")))?;
    Ok((
        format!("dns:{}", name.to_str()),
        enclaveid_attestor::hex(&cert.serial.to_bytes_be()),
    ))
}

fn root_store(files: &CertFiles) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for root in files.roots()? {
        roots
            .add(root)
            .map_err(|e| Error::Tls(format!("the bundle file: {e}")))?;
    }
    Ok(roots)
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let text = read(path)?;
    enclaveid_checks::certs::parse_pem(&text, &path.display().to_string())
        .map_err(|e| Error::Tls(enclaveid_checks::Chain(&e).to_string()))
}

/// The DER of the one `label` block of a PEM key file.
fn pem_block(text: &[u8], label: &str, path: &Path) -> Result<Vec<u8>, Error> {
    let block = enclaveid_checks::secret_pem::decode(text)
        .filter(|b| b.label == label)
        .ok_or_else(|| Error::Tls(format!("{}: not a PEM {label}", path.display())))?;
    Ok(block.der.to_vec())
}
