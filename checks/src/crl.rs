//! Certificate revocation lists (RFC 5280 §5) as rustls-webpki applies them: parsing,
//! what a revocation is, and finding which certificate of a path a CRL revokes (webpki
//! says only that one is). The material checks ([`crate::verify`]) and the peer checks
//! ([`crate::revocation`]) share them.

use std::borrow::Cow;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use webpki::{BorrowedCertRevocationList, CertRevocationList, EndEntityCert};

use crate::certs::CertName;
use crate::pki;

/// A certificate of a path is on its issuer's CRL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the certificate {certificate} is revoked since {}", pki::rfc3339(*since))]
pub struct Revoked {
    /// The revoked certificate (the leaf, or a CA above it).
    pub certificate: CertName,
    /// When its issuer revoked it.
    pub since: SystemTime,
    /// The serial of the path's leaf (the material's certificate, the peer's SVID), hex:
    /// what is withdrawn when any certificate of its path is revoked.
    pub leaf_serial: String,
}

/// A CRL that cannot be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// PEM that does not parse.
    #[error("not PEM")]
    NotPem(#[source] pem::PemError),
    /// PEM of another kind than `X509 CRL`.
    #[error("a PEM {0:?} block; accepted: X509 CRL")]
    PemTag(String),
    /// Not a CRL webpki can read (version 2, DER).
    #[error("a CRL does not parse")]
    Parse(#[source] webpki::Error),
    /// The CRL names another issuer than the certificate's.
    #[error("it is not issued by the certificate's issuer {expected}")]
    WrongIssuer {
        /// The certificate's issuer.
        expected: String,
    },
    /// The CRL's signature does not verify with the issuer's key: forged, or from another
    /// CA with the same name.
    #[error("its signature does not verify with {issuer}'s key")]
    Signature {
        /// The issuer whose key was used.
        issuer: String,
    },
    /// Past its nextUpdate.
    #[error(
        "stale: its nextUpdate {} has passed, so it may not list recent revocations",
        pki::rfc3339(*next_update)
    )]
    Stale {
        /// Its nextUpdate.
        next_update: SystemTime,
    },
    /// The issuer's keyUsage does not allow signing CRLs.
    #[error("{issuer} may not sign CRLs (its keyUsage lacks cRLSign)")]
    NotCrlSigner {
        /// The issuer.
        issuer: String,
    },
}

/// A CRL's DER from DER or PEM (`X509 CRL`).
pub(crate) fn der(bytes: &[u8]) -> Result<Cow<'_, [u8]>, CrlError> {
    if !bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Ok(Cow::Borrowed(bytes));
    }
    let block = pem::parse(bytes).map_err(CrlError::NotPem)?;
    if block.tag() != "X509 CRL" {
        return Err(CrlError::PemTag(block.tag().to_owned()));
    }
    Ok(Cow::Owned(block.into_contents()))
}

/// Parses a CRL as webpki applies it.
pub(crate) fn parse(der: &[u8]) -> Result<CertRevocationList<'_>, CrlError> {
    BorrowedCertRevocationList::from_der(der)
        .map(CertRevocationList::from)
        .map_err(CrlError::Parse)
}

/// The first certificate of `chain` that one of `crls` lists, by its issuer's name and
/// its serial, with the revocation date. Called once webpki has said that a certificate
/// of the path is revoked (the CRL's signature is verified by then).
pub(crate) fn find_revoked(
    chain: &[CertificateDer<'_>],
    crls: &[&CertRevocationList<'_>],
    leaf_serial: &str,
) -> Option<Revoked> {
    chain.iter().find_map(|der| {
        let cert = EndEntityCert::try_from(der).ok()?;
        crls.iter()
            .filter(|crl| crl.issuer() == cert.issuer())
            .find_map(|crl| crl.find_serial(cert.serial()).ok().flatten())
            .and_then(|entry| {
                let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
                Some(Revoked {
                    certificate: CertName::of(&parsed),
                    since: pki::system_time(entry.revocation_date),
                    leaf_serial: leaf_serial.to_owned(),
                })
            })
    })
}

/// Whether `crl` is issued under the name that issued `cert` (webpki's own matching).
pub(crate) fn issued_for(crl: &CertRevocationList<'_>, cert: &CertificateDer<'_>) -> bool {
    EndEntityCert::try_from(cert).is_ok_and(|cert| crl.issuer() == cert.issuer())
}
