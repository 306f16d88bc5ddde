//! Checks of certificate material before anything of it is served: that the released key
//! is the certificate's, the path to the Private CA root the enclave image carries
//! (rustls-webpki's path building: signatures, validity, basicConstraints and pathLen,
//! critical extensions, the CRL), and what the certificate is: a CA that signs SVIDs, an
//! X.509-SVID, or a JWT-SVID signing key.
//!
//! EnclaveID's own rules sit on top of webpki's, as policy:
//! - no SHA-1 signature anywhere on the path;
//! - every CA on the path may sign certificates (keyUsage keyCertSign, when present);
//! - CA material has pathLenConstraint 0 and keyUsage keyCertSign, and at most the trust
//!   domain's URI SAN; a leaf has exactly one SPIFFE URI in the trust domain;
//! - the CRL offered with the material must be its issuer's (`require_crl` is the
//!   caller's: it decides whether `None` is acceptable);
//! - the root itself must be within its validity.
//!
//! CA material cannot be an end entity for webpki, so the path of CA material is proven
//! with a probe: a short-lived leaf signed by the released key under the CA certificate,
//! which is what every SVID minted under it will look like to a relying party.

use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, SanType};
use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, TrustDomain};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use zeroize::Zeroizing;

use crate::certs::{self, CertName, CertificateError};
use crate::crl::{self, CrlError, Revoked};
use crate::keys::{KeyError, SigningKey};
use crate::pki::{self, AnyUsage};

/// SHA-1 signatures are refused (sha1WithRSAEncryption, ecdsa-with-SHA1).
const SHA1_SIGNATURES: [&str; 2] = ["1.2.840.113549.1.1.5", "1.2.840.10045.4.1"];
/// The longest chain of names followed when looking for SHA-1 before webpki runs.
const MAX_DEPTH: usize = 6;

/// What the material is, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A CA (cA=true, pathLen 0) for the trust domain: SVIDs are minted under it.
    Ca,
    /// An X.509-SVID for this SPIFFE ID.
    Leaf(SpiffeId),
    /// A JWT-SVID signing key of the trust domain: an end-entity certificate whose only
    /// URI SAN is the trust-domain ID (`spiffe://example.org`, no path).
    JwtSigner,
}

/// Checked material.
#[derive(Debug)]
pub struct Checked {
    /// CA, leaf or JWT signer.
    pub role: Role,
    /// The certificate, then the intermediates up to (not including) the root.
    pub path: Vec<CertificateDer<'static>>,
    /// The certificate's serial, hex.
    pub serial: String,
    /// The certificate's notBefore.
    pub not_before: SystemTime,
    /// The earliest notAfter of the path and root.
    pub not_after: SystemTime,
}

/// Why material was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// No certificate was given.
    #[error("no certificate")]
    Empty,
    /// A certificate of the material does not parse.
    #[error("the material")]
    Certificate(#[source] CertificateError),
    /// A root of the trust bundle cannot be a trust anchor.
    #[error("the trust bundle: root {index} is not a usable trust anchor")]
    Root {
        /// Its position in the bundle.
        index: usize,
        /// webpki's complaint.
        #[source]
        source: webpki::Error,
    },
    /// The released key is not the certificate's.
    #[error("the private key KMS released does not belong to the certificate {certificate}")]
    KeyMismatch {
        /// The certificate.
        certificate: CertName,
    },
    /// A certificate on the path is signed with SHA-1.
    #[error("{certificate} is signed with SHA-1")]
    Sha1 {
        /// The certificate.
        certificate: CertName,
    },
    /// No path leads from the certificate to a configured root.
    #[error(
        "{certificate} (issuer {issuer}) does not chain to the Private CA root the enclave trusts ({roots})"
    )]
    Untrusted {
        /// The material's certificate.
        certificate: CertName,
        /// Its issuer's name.
        issuer: String,
        /// The roots' subjects.
        roots: String,
    },
    /// A certificate on the path is past its notAfter.
    #[error("{certificate} expired at {}", pki::rfc3339(*not_after))]
    Expired {
        /// The certificate that expired.
        certificate: CertName,
        /// Its notAfter.
        not_after: SystemTime,
    },
    /// A certificate on the path is not valid yet.
    #[error("{certificate} is not valid before {}", pki::rfc3339(*not_before))]
    NotYetValid {
        /// The certificate.
        certificate: CertName,
        /// Its notBefore.
        not_before: SystemTime,
    },
    /// A CA's pathLenConstraint does not allow the CAs below it.
    #[error(
        "{certificate} does not chain to the Private CA root: an intermediate's pathLenConstraint forbids this path"
    )]
    PathLength {
        /// The material's certificate.
        certificate: CertName,
    },
    /// A certificate on the path carries a critical extension webpki does not process.
    #[error(
        "{certificate} does not chain to the Private CA root: a certificate on the path carries an unknown critical extension"
    )]
    CriticalExtension {
        /// The material's certificate.
        certificate: CertName,
    },
    /// Any other reason webpki refused the path.
    #[error("{certificate} does not chain to the Private CA root")]
    Path {
        /// The material's certificate.
        certificate: CertName,
        /// webpki's reason.
        #[source]
        source: webpki::Error,
    },
    /// A CA on the path may not sign certificates.
    #[error("{certificate} is a CA whose keyUsage does not allow keyCertSign")]
    NotCertSigner {
        /// The CA.
        certificate: CertName,
    },
    /// The CRL offered with the material cannot be applied.
    #[error("CRL from the host")]
    Crl(#[source] CrlError),
    /// A certificate of the material's path is revoked.
    #[error(transparent)]
    Revoked(Revoked),
    /// The certificate is not what EnclaveID serves.
    #[error("{certificate}")]
    Role {
        /// The material's certificate.
        certificate: CertName,
        /// What it is instead.
        #[source]
        source: RoleError,
    },
    /// The leaf does not parse as an X.509-SVID with its key.
    #[error("the certificate (serial {serial}) is not a valid X.509-SVID")]
    NotSvid {
        /// Its serial.
        serial: String,
        /// The `spiffe` crate's reason.
        #[source]
        source: spiffe::X509SvidError,
    },
    /// The probe under CA material could not be made.
    #[error("signing a probe certificate with the released CA key failed")]
    Probe(#[source] rcgen::Error),
    /// The key could not be serialized.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Why a certificate that chains is still not what EnclaveID serves.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoleError {
    /// A CA with another pathLenConstraint than 0.
    #[error(
        "a CA certificate must have pathLenConstraint 0 (it signs only SVIDs); it has {}",
        found.map_or_else(|| "none".to_owned(), |n| n.to_string())
    )]
    CaPathLength {
        /// Its constraint.
        found: Option<u32>,
    },
    /// A CA without keyUsage keyCertSign.
    #[error("a CA certificate needs keyUsage keyCertSign")]
    CaKeyUsage,
    /// A CA whose URI SANs name another trust domain.
    #[error("a CA certificate may carry one URI SAN, {expected}; it has {found:?}")]
    CaUris {
        /// The trust-domain ID.
        expected: String,
        /// Its URI SANs.
        found: Vec<String>,
    },
    /// A DNS-only certificate, as ACM issues them.
    #[error(
        "it names only DNS names ({}) and no spiffe:// URI. ACM puts only DNS names in the certificates it issues, so such a certificate is not an X.509-SVID. Issue the enclave's certificate (or a CA for it) from AWS Private CA with a SPIFFE URI SAN instead: see docs/aws.md, \"The Private CA route\"",
        if dns.is_empty() { "none".to_owned() } else { dns.join(", ") }
    )]
    DnsOnly {
        /// Its DNS names.
        dns: Vec<String>,
    },
    /// A DNS certificate that does not name a DNS name it was configured for.
    #[error(
        "it is not valid for {name:?}, a DNS name it was expected to carry (it names {})",
        if dns.is_empty() { "no DNS name".to_owned() } else { dns.join(", ") }
    )]
    DnsNameMissing {
        /// The name expected.
        name: String,
        /// Its DNS names.
        dns: Vec<String>,
    },
    /// A CA certificate where a TLS server certificate was expected.
    #[error("it is a CA certificate (basicConstraints cA), not a TLS server certificate")]
    CaAsServer,
    /// A leaf with several URI SANs.
    #[error("an X.509-SVID has exactly one URI SAN; it has {found:?}")]
    UriCount {
        /// Its URI SANs.
        found: Vec<String>,
    },
    /// A URI SAN that is not a SPIFFE ID.
    #[error("URI SAN {uri:?} is not a SPIFFE ID")]
    NotSpiffeId {
        /// The URI.
        uri: String,
        /// Why.
        #[source]
        source: spiffe::SpiffeIdError,
    },
    /// A SPIFFE ID without a path on an end-entity certificate of another trust domain.
    #[error(
        "it is neither a CA (no basicConstraints cA) nor an X.509-SVID: {id} has no path, and a workload's SPIFFE ID needs one"
    )]
    NoPath {
        /// The SPIFFE ID.
        id: SpiffeId,
    },
    /// A leaf of another trust domain.
    #[error("{id} is outside the trust domain {trust_domain}")]
    OutsideTrustDomain {
        /// Its SPIFFE ID.
        id: SpiffeId,
        /// The agent's trust domain.
        trust_domain: TrustDomain,
    },
}

/// Checks `certs` (the certificate first, then the chain the host sent) and `key`
/// against `roots` at `now`. `crl` is the issuer's CRL, DER or PEM, if there is one to
/// check.
pub fn check(
    certs: &[CertificateDer<'static>],
    key: &SigningKey,
    roots: &[CertificateDer<'static>],
    crl: Option<&[u8]>,
    trust_domain: &TrustDomain,
    now: SystemTime,
) -> Result<Checked, CheckError> {
    let path = verify_path(certs, key, roots, crl, now)?;
    let leaf = certs::parse(&certs[0], "key material", 0).map_err(CheckError::Certificate)?;
    let role = if leaf.is_ca() {
        ca_role(&leaf, trust_domain)
    } else {
        leaf_role(&leaf, trust_domain)
    }
    .map_err(|source| CheckError::Role {
        certificate: path.name.clone(),
        source,
    })?;
    Ok(Checked {
        role,
        path: path.path,
        serial: path.name.serial,
        not_before: path.not_before,
        not_after: path.not_after,
    })
}

/// A TLS server certificate for DNS names (what ACM issues), checked.
#[derive(Debug)]
pub struct ServerChecked {
    /// Its DNS names, as the certificate lists them.
    pub dns_names: Vec<String>,
    /// The certificate, then the intermediates up to (not including) the root.
    pub path: Vec<CertificateDer<'static>>,
    /// The certificate's serial, hex.
    pub serial: String,
    /// The certificate's notBefore.
    pub not_before: SystemTime,
    /// The earliest notAfter of the path and root.
    pub not_after: SystemTime,
}

/// Checks a TLS server certificate for DNS names, such as ACM issues from a Private CA:
/// the same key, path, validity, SHA-1 and CRL checks as [`check`], then that it is an
/// end entity valid for every one of `dns_names` (webpki's name matching: a wildcard
/// covers one label). It is never an X.509-SVID: whatever URI SANs it has are ignored,
/// and nothing of it is served through the Workload API.
pub fn check_server(
    certs: &[CertificateDer<'static>],
    key: &SigningKey,
    roots: &[CertificateDer<'static>],
    crl: Option<&[u8]>,
    dns_names: &[String],
    now: SystemTime,
) -> Result<ServerChecked, CheckError> {
    let leaf_der = certs.first().ok_or(CheckError::Empty)?;
    let leaf = certs::parse(leaf_der, "key material", 0).map_err(CheckError::Certificate)?;
    let dns = sans(&leaf, |n| match n {
        GeneralName::DNSName(d) => Some(*d),
        _ => None,
    });
    let role_error = |source| CheckError::Role {
        certificate: CertName::of(&leaf),
        source,
    };
    if leaf.is_ca() {
        return Err(role_error(RoleError::CaAsServer));
    }
    let path = verify_path(certs, key, roots, crl, now)?;
    let end_entity =
        webpki::EndEntityCert::try_from(leaf_der).map_err(|source| CheckError::Path {
            certificate: path.name.clone(),
            source,
        })?;
    for name in dns_names {
        let matches = rustls_pki_types::ServerName::try_from(name.as_str())
            .ok()
            .is_some_and(|server_name| {
                end_entity
                    .verify_is_valid_for_subject_name(&server_name)
                    .is_ok()
            });
        if !matches {
            return Err(role_error(RoleError::DnsNameMissing {
                name: name.clone(),
                dns: dns.clone(),
            }));
        }
    }
    Ok(ServerChecked {
        dns_names: dns,
        path: path.path,
        serial: path.name.serial,
        not_before: path.not_before,
        not_after: path.not_after,
    })
}

/// What [`verify_path`] proved.
struct VerifiedPath {
    name: CertName,
    path: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The checks every material gets, whatever it is: key, SHA-1, path to `roots` with the
/// CRL, validity, keyCertSign on the CAs.
fn verify_path(
    certs: &[CertificateDer<'static>],
    key: &SigningKey,
    roots: &[CertificateDer<'static>],
    crl: Option<&[u8]>,
    now: SystemTime,
) -> Result<VerifiedPath, CheckError> {
    let parsed = certs
        .iter()
        .enumerate()
        .map(|(i, der)| certs::parse(der, "key material", i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CheckError::Certificate)?;
    let roots_parsed = roots
        .iter()
        .enumerate()
        .map(|(i, der)| certs::parse(der, "the trust bundle", i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CheckError::Certificate)?;
    let (leaf, leaf_der) = parsed.first().zip(certs.first()).ok_or(CheckError::Empty)?;
    let name = CertName::of(leaf);

    if leaf.public_key().raw != key.subject_public_key_info() {
        return Err(CheckError::KeyMismatch { certificate: name });
    }
    refuse_sha1(&parsed, &roots_parsed)?;

    let anchors =
        pki::anchors(roots).map_err(|(index, source)| CheckError::Root { index, source })?;
    let crl_der = crl.map(crl::der).transpose().map_err(CheckError::Crl)?;
    let crls = crl_der
        .as_deref()
        .map(crl::parse)
        .transpose()
        .map_err(CheckError::Crl)?;
    let crl_refs: Vec<_> = crls.iter().collect();
    let revocation = (!crl_refs.is_empty())
        .then(|| webpki::RevocationOptionsBuilder::new(&crl_refs).ok())
        .flatten()
        .map(|builder| {
            builder
                .with_depth(webpki::RevocationCheckDepth::Chain)
                .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                .build()
        });

    // CA material is proven through a probe it signs; other material is the end entity.
    let probe = if leaf.is_ca() {
        Some(probe(leaf_der, key, now).map_err(CheckError::Probe)?)
    } else {
        None
    };
    let (end_entity_der, intermediates) = match &probe {
        Some(probe) => (probe, certs),
        None => (leaf_der, &certs[1..]),
    };
    let end_entity = webpki::EndEntityCert::try_from(end_entity_der)
        .map_err(|source| path_error(source, &name, leaf, &parsed, &roots_parsed, certs, &crls))?;
    let verified = end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            pki::unix_time(now),
            AnyUsage,
            revocation,
            None,
        )
        .map_err(|source| path_error(source, &name, leaf, &parsed, &roots_parsed, certs, &crls))?;

    // A CRL that names another issuer was not applied to the material: `require_crl` is
    // met only by the material's issuer's CRL.
    if let Some(crl) = &crls
        && !crl::issued_for(crl, leaf_der)
    {
        return Err(CheckError::Crl(CrlError::WrongIssuer {
            expected: leaf.issuer().to_string(),
        }));
    }

    // The path webpki built: the material first (for CA material, the probe's issuer).
    let mut path: Vec<CertificateDer<'static>> = Vec::new();
    if probe.is_none() {
        path.push(leaf_der.clone());
    }
    for cert in verified.intermediate_certificates() {
        path.push(cert.der().into_owned());
    }
    let anchor = verified.anchor();
    let root = roots_parsed
        .iter()
        .find(|r| r.public_key().raw == webpki::spki_for_anchor(anchor).as_ref())
        .ok_or_else(|| CheckError::Untrusted {
            certificate: name.clone(),
            issuer: leaf.issuer().to_string(),
            roots: subjects(&roots_parsed),
        })?;

    let mut not_after = root_validity(root, now)?;
    for der in &path {
        let cert = certs::parse(der, "key material", 0).map_err(CheckError::Certificate)?;
        if cert.is_ca() && !signs_certificates(&cert) {
            return Err(CheckError::NotCertSigner {
                certificate: CertName::of(&cert),
            });
        }
        not_after = not_after.min(validity(&cert).1);
    }

    Ok(VerifiedPath {
        name,
        path,
        not_before: validity(leaf).0,
        not_after,
    })
}

/// The concatenated DER chain and the PKCS#8 DER key of a checked leaf, with the leaf
/// re-parsed as an X.509-SVID by the `spiffe` crate: what is served is what a workload's
/// library accepts.
pub fn leaf_svid_key(
    checked: &Checked,
    key: &SigningKey,
) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), CheckError> {
    let chain: Vec<u8> = checked
        .path
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    let key_der = key.to_pkcs8_der()?;
    spiffe::X509Svid::parse_from_der(&chain, &key_der).map_err(|source| CheckError::NotSvid {
        serial: checked.serial.clone(),
        source,
    })?;
    Ok((chain, key_der))
}

/// The URI SANs of a certificate.
pub fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    sans(cert, |n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    })
}

/// A leaf that lives two minutes, signed by `key` under the CA certificate `ca`.
fn probe(
    ca: &CertificateDer<'_>,
    key: &SigningKey,
    now: SystemTime,
) -> Result<CertificateDer<'static>, rcgen::Error> {
    let issuer = Issuer::from_ca_cert_der(ca, key)?;
    let probe_key = SigningKey::generate_p256().map_err(|_| rcgen::Error::RingUnspecified)?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![SanType::URI("spiffe://probe.invalid/probe".try_into()?)];
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + Duration::from_secs(60)).into();
    let cert = params.signed_by(&probe_key, &issuer)?;
    Ok(cert.der().clone())
}

/// Maps webpki's refusal to what the operator needs to know, naming the certificate.
fn path_error(
    error: webpki::Error,
    name: &CertName,
    leaf: &X509Certificate<'_>,
    parsed: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
    certs: &[CertificateDer<'static>],
    crls: &Option<webpki::CertRevocationList<'_>>,
) -> CheckError {
    let certificate = name.clone();
    match error {
        webpki::Error::CertRevoked => {
            let crls: Vec<_> = crls.iter().collect();
            match crl::find_revoked(certs, &crls, &name.serial) {
                Some(revoked) => CheckError::Revoked(revoked),
                None => CheckError::Path {
                    certificate,
                    source: error,
                },
            }
        }
        webpki::Error::CertExpired { not_after, .. } => {
            let not_after = pki::system_time(not_after);
            CheckError::Expired {
                certificate: holder(parsed, roots, |c| validity(c).1 == not_after)
                    .unwrap_or(certificate),
                not_after,
            }
        }
        webpki::Error::CertNotValidYet { not_before, .. } => {
            let not_before = pki::system_time(not_before);
            CheckError::NotYetValid {
                certificate: holder(parsed, roots, |c| validity(c).0 == not_before)
                    .unwrap_or(certificate),
                not_before,
            }
        }
        webpki::Error::UnknownIssuer => CheckError::Untrusted {
            certificate,
            issuer: leaf.issuer().to_string(),
            roots: subjects(roots),
        },
        webpki::Error::PathLenConstraintViolated => CheckError::PathLength { certificate },
        webpki::Error::UnsupportedCriticalExtension => {
            CheckError::CriticalExtension { certificate }
        }
        webpki::Error::InvalidCrlSignatureForPublicKey => CheckError::Crl(CrlError::Signature {
            issuer: leaf.issuer().to_string(),
        }),
        webpki::Error::CrlExpired { next_update, .. } => CheckError::Crl(CrlError::Stale {
            next_update: pki::system_time(next_update),
        }),
        webpki::Error::IssuerNotCrlSigner => CheckError::Crl(CrlError::NotCrlSigner {
            issuer: leaf.issuer().to_string(),
        }),
        source => CheckError::Path {
            certificate,
            source,
        },
    }
}

/// The certificate of the material or the bundle that `pick` finds.
fn holder(
    parsed: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
    pick: impl Fn(&X509Certificate<'_>) -> bool,
) -> Option<CertName> {
    parsed
        .iter()
        .chain(roots)
        .find(|c| pick(c))
        .map(CertName::of)
}

/// Refuses SHA-1 on the chain of names from the leaf up (webpki would refuse it too, as
/// an unsupported algorithm; this says which certificate and why).
fn refuse_sha1(
    parsed: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
) -> Result<(), CheckError> {
    let mut current = parsed.first();
    for _ in 0..MAX_DEPTH {
        let Some(cert) = current else {
            return Ok(());
        };
        let algorithm = cert.signature_algorithm.algorithm.to_id_string();
        if SHA1_SIGNATURES.contains(&algorithm.as_str()) {
            return Err(CheckError::Sha1 {
                certificate: CertName::of(cert),
            });
        }
        if roots.iter().any(|r| r.subject() == cert.issuer()) || cert.subject() == cert.issuer() {
            return Ok(());
        }
        current = parsed.iter().find(|c| c.subject() == cert.issuer());
    }
    Ok(())
}

/// The root's notAfter, refusing a root outside its validity (webpki does not look at a
/// trust anchor's dates).
fn root_validity(root: &X509Certificate<'_>, now: SystemTime) -> Result<SystemTime, CheckError> {
    let (not_before, not_after) = validity(root);
    if now < not_before {
        return Err(CheckError::NotYetValid {
            certificate: CertName::of(root),
            not_before,
        });
    }
    if now > not_after {
        return Err(CheckError::Expired {
            certificate: CertName::of(root),
            not_after,
        });
    }
    Ok(not_after)
}

/// notBefore and notAfter.
fn validity(cert: &X509Certificate<'_>) -> (SystemTime, SystemTime) {
    let at = |t: x509_parser::time::ASN1Time| {
        let seconds = t.timestamp();
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.max(0).unsigned_abs())
    };
    (
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    )
}

/// Whether a CA's keyUsage, when present, allows signing certificates.
fn signs_certificates(cert: &X509Certificate<'_>) -> bool {
    match cert.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    }
}

fn subjects(roots: &[X509Certificate<'_>]) -> String {
    roots
        .iter()
        .map(|r| r.subject().to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn ca_role(cert: &X509Certificate<'_>, trust_domain: &TrustDomain) -> Result<Role, RoleError> {
    let constraints = cert
        .basic_constraints()
        .ok()
        .flatten()
        .map(|bc| bc.value.path_len_constraint);
    if constraints != Some(Some(0)) {
        return Err(RoleError::CaPathLength {
            found: constraints.flatten(),
        });
    }
    if !cert
        .key_usage()
        .ok()
        .flatten()
        .is_some_and(|ku| ku.value.key_cert_sign())
    {
        return Err(RoleError::CaKeyUsage);
    }
    let uris = uri_sans(cert);
    let expected = trust_domain.id_string();
    if uris.iter().any(|u| *u != expected) || uris.len() > 1 {
        return Err(RoleError::CaUris {
            expected,
            found: uris,
        });
    }
    Ok(Role::Ca)
}

fn leaf_role(cert: &X509Certificate<'_>, trust_domain: &TrustDomain) -> Result<Role, RoleError> {
    let uris = uri_sans(cert);
    if uris == [trust_domain.id_string()] {
        return Ok(Role::JwtSigner);
    }
    if uris.is_empty() {
        let dns = sans(cert, |n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        });
        return Err(RoleError::DnsOnly { dns });
    }
    let [uri] = uris.as_slice() else {
        return Err(RoleError::UriCount { found: uris });
    };
    let id = SpiffeId::new(uri).map_err(|source| RoleError::NotSpiffeId {
        uri: uri.clone(),
        source,
    })?;
    if id.path().is_empty() {
        return Err(RoleError::NoPath { id });
    }
    if !id.is_member_of(trust_domain) {
        return Err(RoleError::OutsideTrustDomain {
            id,
            trust_domain: trust_domain.clone(),
        });
    }
    Ok(Role::Leaf(id))
}

/// The subject alternative names `pick` selects.
fn sans<'a>(
    cert: &X509Certificate<'a>,
    pick: impl Fn(&GeneralName<'a>) -> Option<&'a str>,
) -> Vec<String> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| pick(n).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
