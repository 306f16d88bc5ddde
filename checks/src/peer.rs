//! A peer's X.509-SVID as a TLS handshake presents it (SPIFFE X.509-SVID §5): the chain
//! leads to one of the trust domain's X.509 authorities, with no hostname check; the leaf
//! carries exactly one URI SAN, a SPIFFE ID, which the caller then authorises.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use spiffe::SpiffeId;

use crate::certs::{self, CertificateError};
use crate::pki;

/// Which end of the handshake the peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The peer is the server (extended key usage serverAuth when present).
    Server,
    /// The peer is the client (clientAuth when present).
    Client,
}

/// Why a peer's SVID was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The peer sent no certificate.
    #[error("the peer sent no certificate")]
    Empty,
    /// No trust bundle to check against.
    #[error("there is no trust bundle to check the peer's certificate against")]
    NoBundle,
    /// The leaf does not parse.
    #[error("the peer's certificate")]
    Certificate(#[source] CertificateError),
    /// The chain does not lead to the bundle, is expired, or is not for this use.
    #[error("the peer's chain does not verify against the trust bundle")]
    Path(#[source] webpki::Error),
    /// The leaf does not carry exactly one SPIFFE ID.
    #[error("an X.509-SVID carries exactly one spiffe:// URI SAN; the peer's carries {found:?}")]
    Uri {
        /// Its URI SANs.
        found: Vec<String>,
    },
}

/// Verifies `chain` (leaf first) against `roots` at `now` and returns the leaf's SPIFFE ID.
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    now: SystemTime,
    role: Role,
) -> Result<SpiffeId, PeerError> {
    let leaf = chain.first().ok_or(PeerError::Empty)?;
    if roots.is_empty() {
        return Err(PeerError::NoBundle);
    }
    let anchors = pki::anchors(roots).map_err(|(_, e)| PeerError::Path(e))?;
    let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(PeerError::Path)?;
    let usage = match role {
        Role::Server => webpki::KeyUsage::server_auth(),
        Role::Client => webpki::KeyUsage::client_auth(),
    };
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            pki::unix_time(now),
            usage,
            None,
            None,
        )
        .map_err(PeerError::Path)?;
    spiffe_id_of(leaf)
}

/// The one SPIFFE ID in `leaf`'s URI SANs; the chain is not checked.
pub fn spiffe_id_of(leaf: &CertificateDer<'_>) -> Result<SpiffeId, PeerError> {
    let parsed = certs::parse(leaf, "peer certificate", 0).map_err(PeerError::Certificate)?;
    let found = crate::verify::uri_sans(&parsed);
    match found.as_slice() {
        [uri] => SpiffeId::new(uri).map_err(|_| PeerError::Uri {
            found: found.clone(),
        }),
        _ => Err(PeerError::Uri { found }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use enclaveid_fakes::pca::{Profile, TestPca};

    use super::*;

    fn der(pem_text: &str) -> CertificateDer<'static> {
        CertificateDer::from(pem::parse(pem_text).unwrap().into_contents())
    }

    #[test]
    fn spire_upstream_peer_svid_is_checked_against_the_bundle_and_names_its_id() {
        let pca = TestPca::new("root");
        let other = TestPca::new("other root");
        let uri = rcgen::SanType::URI("spiffe://example.org/spire/server".try_into().unwrap());
        let leaf = pca.issue_for(Profile::Leaf(vec![uri]), Duration::from_secs(3600));
        let chain = [der(&leaf.cert_pem)];
        let roots = [der(&pca.root_pem)];
        let now = SystemTime::now();
        let id = verify_svid(&chain, &roots, now, Role::Server).unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/spire/server");

        let foreign = [der(&other.root_pem)];
        assert!(matches!(
            verify_svid(&chain, &foreign, now, Role::Server),
            Err(PeerError::Path(webpki::Error::UnknownIssuer))
        ));
        let later = now + Duration::from_secs(2 * 3600);
        assert!(matches!(
            verify_svid(&chain, &roots, later, Role::Server),
            Err(PeerError::Path(webpki::Error::CertExpired { .. }))
        ));
        assert!(matches!(
            verify_svid(&[], &roots, now, Role::Server),
            Err(PeerError::Empty)
        ));
        assert!(matches!(
            verify_svid(&chain, &[], now, Role::Server),
            Err(PeerError::NoBundle)
        ));
    }
}
