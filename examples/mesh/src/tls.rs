//! mTLS with SPIFFE IDs: rustls configurations from a live [`X509Source`] (via
//! `spiffe-rustls`), an allow-list of peer SPIFFE IDs, and CRL checks of the peer's chain.
//!
//! `spiffe-rustls` verifies the chain against the trust bundle and authorises the peer's
//! SPIFFE ID during the handshake; it does not check revocation. [`CrlFiles::check`] runs
//! right after the handshake, before a byte of application data is sent or answered,
//! on the chain the peer presented.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use enclaveid_agent::peer_tls::{self, Allowed, Attestation, PeerPolicy};
use rustls_pki_types::{CertificateDer, ServerName};
use spiffe::{SpiffeId, X509Source};

use crate::Error;

/// Who a service is and whom it accepts.
#[derive(Clone)]
pub enum Trust {
    /// SVIDs and bundles from the Workload API; peers by SPIFFE ID (`--allow`).
    Spiffe {
        /// The Workload API.
        source: X509Source,
        /// The peers' SPIFFE IDs.
        allow: Vec<String>,
        /// The attestation the peers' SVIDs must carry (`--require-pcr0`), checked in
        /// the handshake by EnclaveID's verifier (`enclaveid_agent::peer_tls`).
        attestation: Option<Attestation>,
    },
    /// A certificate, key and Private CA root from files (an ACM certificate the agent
    /// writes); the peer by DNS name (`--verify dns:NAME`).
    Dns {
        /// The files.
        files: crate::dns::CertFiles,
        /// The name the peer's certificate must be valid for.
        peer: ServerName<'static>,
    },
}

impl Trust {
    /// The server side's TLS configuration.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        match self {
            Self::Spiffe {
                source,
                allow,
                attestation: None,
            } => server_config(source, allow),
            Self::Spiffe {
                source,
                allow,
                attestation: Some(attestation),
            } => peer_tls::server_config(source, attested_policy(allow, attestation)?)
                .map_err(|e| Error::Tls(e.to_string())),
            Self::Dns { files, .. } => crate::dns::server_config(files),
        }
    }

    /// The client side's TLS configuration.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        match self {
            Self::Spiffe {
                source,
                allow,
                attestation: None,
            } => client_config(source, allow),
            Self::Spiffe {
                source,
                allow,
                attestation: Some(attestation),
            } => peer_tls::client_config(source, attested_policy(allow, attestation)?)
                .map_err(|e| Error::Tls(e.to_string())),
            Self::Dns { files, .. } => crate::dns::client_config(files),
        }
    }

    /// The name a client connects with: the peer's DNS name, or (SPIFFE, where the peer
    /// is authenticated by its ID) a fixed name for SNI.
    pub fn server_name(&self) -> Result<ServerName<'static>, Error> {
        match self {
            Self::Spiffe { .. } => {
                ServerName::try_from("inference").map_err(|e| Error::Tls(e.to_string()))
            }
            Self::Dns { peer, .. } => Ok(peer.clone()),
        }
    }

    /// The peer's identity (`spiffe://…` or `dns:NAME`) and serial from the chain it
    /// presented, which the handshake verified; with DNS, its name is checked here.
    pub fn peer(&self, chain: &[CertificateDer<'_>]) -> Result<(String, String), Error> {
        match self {
            Self::Spiffe { .. } => {
                let (id, serial) = peer_identity(Some(chain))?;
                Ok((id.to_string(), serial))
            }
            Self::Dns { peer, .. } => crate::dns::check_peer(chain, peer),
        }
    }

    /// Our own identity, as peers see it.
    pub fn own_id(&self) -> Result<String, Error> {
        match self {
            Self::Spiffe { source, .. } => Ok(source
                .svid()
                .map_err(|e| Error::Source(e.to_string()))?
                .spiffe_id()
                .to_string()),
            Self::Dns { files, .. } => files.own_name(),
        }
    }

    /// The roots peers chain to, for the CRL checks.
    pub fn roots(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        match self {
            Self::Spiffe { source, .. } => {
                let bundles = source
                    .bundle_set()
                    .map_err(|e| Error::Source(e.to_string()))?;
                Ok(bundles
                    .iter()
                    .flat_map(|(_, bundle)| bundle.authorities())
                    .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                    .collect())
            }
            Self::Dns { files, .. } => files.roots(),
        }
    }
}

/// The peer policy of `--allow ID… --require-pcr0 HEX…`: the IDs and the attestation
/// checked in the handshake (CRLs are checked right after it, as without attestation).
fn attested_policy(allow: &[String], attestation: &Attestation) -> Result<PeerPolicy, Error> {
    // The same usage errors as without attestation.
    drop(allow_list(allow)?);
    let ids = allow
        .iter()
        .map(|id| SpiffeId::new(id).map_err(|e| Error::Usage(format!("--allow {id:?}: {e}"))))
        .collect::<Result<_, _>>()?;
    Ok(PeerPolicy {
        allowed: Allowed::Ids(ids),
        crls: Vec::new(),
        attestation: Some(attestation.clone()),
        resumption: false,
    })
}

/// Connects to the Workload API at `endpoint` (`unix:///path/to/agent.sock`) and waits
/// for the first SVID.
pub async fn source(endpoint: &str) -> Result<X509Source, Error> {
    X509Source::builder()
        .endpoint(endpoint)
        .build()
        .await
        .map_err(|e| Error::Source(format!("{endpoint}: {e}")))
}

/// Parses an allow-list of SPIFFE IDs.
pub fn allow_list(ids: &[String]) -> Result<spiffe_rustls::authorizer::Exact, Error> {
    if ids.is_empty() {
        return Err(Error::Usage(
            "the allow-list is empty; name at least one peer SPIFFE ID (spiffe://TD/PATH)".into(),
        ));
    }
    spiffe_rustls::authorizer::exact(ids.iter().map(String::as_str)).map_err(|e| {
        Error::Usage(format!(
            "allow-list {ids:?}: {e}; accepted: SPIFFE IDs such as spiffe://example.org/gateway"
        ))
    })
}

/// A server configuration presenting the source's current SVID and accepting clients
/// whose SPIFFE ID is in `allow`.
pub fn server_config(
    source: &X509Source,
    allow: &[String],
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let config = spiffe_rustls::mtls_server(source.clone())
        .authorize(allow_list(allow)?)
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A client configuration presenting the source's current SVID and accepting servers
/// whose SPIFFE ID is in `allow`.
pub fn client_config(
    source: &X509Source,
    allow: &[String],
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let config = spiffe_rustls::mtls_client(source.clone())
        .authorize(allow_list(allow)?)
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The peer's SPIFFE ID and serial from the chain it presented (already verified by the
/// handshake).
pub fn peer_identity(chain: Option<&[CertificateDer<'_>]>) -> Result<(SpiffeId, String), Error> {
    let leaf = chain
        .and_then(<[_]>::first)
        .ok_or_else(|| Error::Tls("the peer presented no certificate".into()))?;
    let id = spiffe::cert::spiffe_id_from_der(leaf)
        .map_err(|e| Error::Tls(format!("the peer certificate has no SPIFFE ID: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| Error::Tls(format!("the peer certificate does not parse: {e}")))?;
    Ok((id, enclaveid_attestor::hex(&cert.serial.to_bytes_be())))
}

/// CRL files the peers' chains are checked against, re-read at every check so a new CRL
/// applies to the next handshake. Point them at the agent's export
/// (`upstream.crl_export_path`) or at the Private CA's CRLs.
///
/// A file that does not exist yet counts as "no CRL"; one that cannot be read or parsed
/// refuses every peer (fail closed). An issuer with no CRL in the files is not checked.
#[derive(Clone, Debug, Default)]
pub struct CrlFiles(Arc<Vec<PathBuf>>);

impl CrlFiles {
    /// CRLs at `paths` (PEM `X509 CRL` blocks or one DER CRL per file).
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self(Arc::new(paths))
    }

    /// Checks the peer's `chain` against the CRLs, with the roots `trust` accepts.
    pub fn check(&self, chain: &[CertificateDer<'_>], trust: &Trust) -> Result<(), Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        let lists = enclaveid_io::read_crl_files(&self.0)
            .map_err(|e| Error::Revoked(enclaveid_checks::Chain(&e).to_string()))?;
        let roots = trust.roots()?;
        lists
            .check_chain(chain, &roots, SystemTime::now())
            .map_err(|e| Error::Revoked(enclaveid_checks::Chain(&e).to_string()))
    }
}
