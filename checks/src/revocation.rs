//! Revocation: certificate revocation lists (RFC 5280 §5), applied by rustls-webpki while
//! it builds a certificate's path. The material checks ([`crate::verify`]) apply the
//! issuer's CRL to the material; workloads check their peers' chains with
//! [`RevocationLists::check_chain`] against the CRLs the agent exports
//! (`upstream.crl_export_path`); the mesh example does, on every handshake.
//!
//! A CRL counts only when it names the certificate's issuer, verifies with that issuer's
//! key and is current (`nextUpdate` not passed); a listed serial refuses the path. An
//! issuer with no CRL among the lists is not checked: this is a deny list.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use crate::certs::{self, CertName, CertificateError};
use crate::crl::{self, CrlError, Revoked};
use crate::pki::{self, AnyUsage};

/// Why a peer's chain was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// A CRL file does not hold CRLs.
    #[error("{origin}")]
    File {
        /// The file.
        origin: String,
        /// What is wrong with it.
        #[source]
        source: CrlError,
    },
    /// A PEM file without an `X509 CRL` block.
    #[error("{origin}: no X509 CRL block (accepted: PEM X509 CRL blocks or one DER CRL)")]
    NoCrl {
        /// The file.
        origin: String,
    },
    /// A certificate of the peer's chain does not parse.
    #[error("a peer certificate")]
    Certificate(#[source] CertificateError),
    /// No path leads from the peer's certificate to the bundle.
    #[error("the issuer {issuer} of {subject} is neither in the chain nor in the bundle")]
    UnknownIssuer {
        /// The certificate whose issuer is missing.
        subject: String,
        /// The missing issuer.
        issuer: String,
    },
    /// A CRL that names an issuer of the chain cannot be applied.
    #[error("CRL of {issuer}")]
    Crl {
        /// The issuer the CRL names.
        issuer: String,
        /// What is wrong with it.
        #[source]
        source: CrlError,
    },
    /// A certificate of the chain is revoked.
    #[error(transparent)]
    Revoked(#[from] Revoked),
    /// Any other reason webpki refused the path.
    #[error("the peer's chain does not verify")]
    Path(#[source] webpki::Error),
}

/// A set of CRLs (DER), from files of PEM `X509 CRL` blocks or of one DER CRL.
#[derive(Clone, Debug, Default)]
pub struct RevocationLists {
    lists: Vec<Vec<u8>>,
}

// === impl RevocationLists ===

impl RevocationLists {
    /// Parses the contents of one CRL file: PEM (any number of `X509 CRL` blocks) or DER.
    /// `origin` names the file in errors.
    pub fn add(&mut self, bytes: &[u8], origin: &str) -> Result<(), RevocationError> {
        let bad = |source| RevocationError::File {
            origin: origin.to_owned(),
            source,
        };
        let mut found = Vec::new();
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            for block in pem::parse_many(bytes).map_err(|e| bad(CrlError::NotPem(e)))? {
                if block.tag() == "X509 CRL" {
                    found.push(block.into_contents());
                }
            }
            if found.is_empty() {
                return Err(RevocationError::NoCrl {
                    origin: origin.to_owned(),
                });
            }
        } else {
            found.push(bytes.to_vec());
        }
        for der in &found {
            crl::parse(der).map_err(bad)?;
        }
        self.lists.extend(found);
        Ok(())
    }

    /// How many CRLs the set holds.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// Checks a peer's `chain` (as presented: the leaf first, then intermediates) whose
    /// roots are `roots` (the trust bundle), at `now`: webpki builds the path to a root
    /// and applies every CRL that names an issuer on it.
    ///
    /// Call it after the TLS handshake verified the chain; its purpose is revocation,
    /// which `spiffe-rustls` does not check. Without CRLs there is nothing to check.
    pub fn check_chain(
        &self,
        chain: &[CertificateDer<'_>],
        roots: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<(), RevocationError> {
        if self.lists.is_empty() {
            return Ok(());
        }
        let Some(leaf) = chain.first() else {
            return Err(RevocationError::Path(webpki::Error::BadDer));
        };
        let parsed = chain
            .iter()
            .enumerate()
            .map(|(i, der)| certs::parse(der, "peer chain", i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(RevocationError::Certificate)?;
        let leaf_serial = CertName::of(&parsed[0]).serial;
        let crls = self
            .lists
            .iter()
            .map(|der| crl::parse(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| RevocationError::Crl {
                issuer: "an issuer".into(),
                source,
            })?;
        let crl_refs: Vec<_> = crls.iter().collect();
        let options = webpki::RevocationOptionsBuilder::new(&crl_refs)
            .map_err(|_| RevocationError::Path(webpki::Error::UnknownRevocationStatus))?
            .with_depth(webpki::RevocationCheckDepth::Chain)
            .with_status_policy(webpki::UnknownStatusPolicy::Allow)
            .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
            .build();
        let anchors = pki::anchors(roots).map_err(|(_, e)| RevocationError::Path(e))?;
        let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(RevocationError::Path)?;
        let result = end_entity.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            pki::unix_time(now),
            AnyUsage,
            Some(options),
            None,
        );
        let Err(error) = result else {
            return Ok(());
        };
        // The issuer a CRL problem is about: the first certificate of the chain that a
        // CRL names as its issuer.
        let crl_issuer = || {
            parsed
                .iter()
                .zip(chain)
                .find(|(_, der)| crls.iter().any(|crl| crl::issued_for(crl, der)))
                .map(|(cert, _)| cert.issuer().to_string())
                .unwrap_or_default()
        };
        let crl_error = |source| RevocationError::Crl {
            issuer: crl_issuer(),
            source,
        };
        Err(match error {
            webpki::Error::CertRevoked => match crl::find_revoked(chain, &crl_refs, &leaf_serial) {
                Some(revoked) => RevocationError::Revoked(revoked),
                None => RevocationError::Path(error),
            },
            webpki::Error::InvalidCrlSignatureForPublicKey => crl_error(CrlError::Signature {
                issuer: crl_issuer(),
            }),
            webpki::Error::CrlExpired { next_update, .. } => crl_error(CrlError::Stale {
                next_update: pki::system_time(next_update),
            }),
            webpki::Error::IssuerNotCrlSigner => crl_error(CrlError::NotCrlSigner {
                issuer: crl_issuer(),
            }),
            webpki::Error::UnknownIssuer => {
                let last = &parsed[parsed.len() - 1];
                RevocationError::UnknownIssuer {
                    subject: last.subject().to_string(),
                    issuer: last.issuer().to_string(),
                }
            }
            other => RevocationError::Path(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use enclaveid_fakes::pca::{Profile, TestPca};
    use rcgen::SanType;

    use super::*;

    fn der(pem_text: &str) -> CertificateDer<'static> {
        CertificateDer::from(pem::parse(pem_text).unwrap().into_contents())
    }

    fn pem_crl(der: &[u8]) -> Vec<u8> {
        pem::encode(&pem::Pem::new("X509 CRL", der.to_vec())).into_bytes()
    }

    struct Hierarchy {
        root: TestPca,
        ca: TestPca,
        ca_serial: Vec<u8>,
        chain: Vec<CertificateDer<'static>>,
        leaf_serial: Vec<u8>,
        roots: Vec<CertificateDer<'static>>,
    }

    fn hierarchy() -> Hierarchy {
        let root = TestPca::new("root");
        let (ca, ca_cert) = root.subordinate("spiffe://td", Duration::from_secs(10 * 86400));
        let leaf = ca.issue_for(
            Profile::Leaf(vec![SanType::URI("spiffe://td/w".try_into().unwrap())]),
            Duration::from_secs(5 * 86400),
        );
        Hierarchy {
            chain: vec![der(&leaf.cert_pem), der(&ca_cert.cert_pem)],
            roots: vec![der(&root.root_pem)],
            leaf_serial: leaf.serial,
            ca_serial: ca_cert.serial,
            root,
            ca,
        }
    }

    fn lists(crls: &[Vec<u8>]) -> RevocationLists {
        let mut lists = RevocationLists::default();
        for crl in crls {
            lists.add(crl, "crl.pem").unwrap();
        }
        lists
    }

    fn chain_text(error: &RevocationError) -> String {
        crate::Chain(error).to_string()
    }

    #[test]
    fn webpki_a_revoked_leaf_or_intermediate_refuses_the_chain() {
        let h = hierarchy();
        let now = SystemTime::now();
        let check = |crls: &[Vec<u8>]| lists(crls).check_chain(&h.chain, &h.roots, now);

        check(&[]).unwrap();
        // CRLs listing other serials leave the chain alone.
        check(&[h.ca.crl(&[&[9, 9]]), pem_crl(&h.root.crl(&[&[7]]))]).unwrap();

        let leaf = check(&[pem_crl(&h.ca.crl(&[&h.leaf_serial]))]).unwrap_err();
        assert!(
            matches!(&leaf, RevocationError::Revoked(r) if r.certificate.serial == enclaveid_attestor::hex(&h.leaf_serial)),
            "{leaf}"
        );
        let ca = check(&[h.root.crl(&[&h.ca_serial])]).unwrap_err();
        assert!(ca.to_string().contains("is revoked since"), "{ca}");
        assert!(ca.to_string().contains("subordinate CA"), "{ca}");
        let RevocationError::Revoked(revoked) = ca else {
            panic!("not a revocation");
        };
        assert_eq!(
            revoked.leaf_serial,
            enclaveid_attestor::hex(&h.leaf_serial),
            "a revoked intermediate refuses the leaf under it"
        );
    }

    #[test]
    fn webpki_a_crl_from_the_wrong_issuer_key_is_refused_and_a_foreign_one_ignored() {
        let h = hierarchy();
        // A CRL from another CA that happens to share the subject name: its signature
        // does not verify with the real issuer's key, and it is refused loudly.
        let impostor = TestPca::new("root");
        let forged = lists(&[impostor.crl(&[&h.ca_serial])])
            .check_chain(&h.chain, &h.roots, SystemTime::now())
            .unwrap_err();
        assert!(chain_text(&forged).contains("does not verify"), "{forged}");
        // A CRL of an unrelated issuer (another name) does not apply.
        let other = TestPca::new("another root");
        lists(&[other.crl(&[&h.ca_serial])])
            .check_chain(&h.chain, &h.roots, SystemTime::now())
            .unwrap();
    }

    #[test]
    fn a_stale_crl_refuses_and_garbage_is_named() {
        let h = hierarchy();
        // Two days on, the certificates are still valid and the CA's CRL (valid for a
        // day) is past its nextUpdate.
        let later = SystemTime::now() + Duration::from_secs(2 * 86400);
        let stale = lists(&[h.ca.crl(&[])])
            .check_chain(&h.chain, &h.roots, later)
            .unwrap_err();
        assert!(
            chain_text(&stale).contains("stale"),
            "{}",
            chain_text(&stale)
        );

        let mut empty = RevocationLists::default();
        let error = empty.add(b"not a crl", "/run/crl.pem").unwrap_err();
        assert!(
            chain_text(&error).starts_with("/run/crl.pem: a CRL does not parse"),
            "{}",
            chain_text(&error)
        );
        let error = empty
            .add(
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "c.pem",
            )
            .unwrap_err()
            .to_string();
        assert!(error.contains("no X509 CRL block"), "{error}");
        assert!(empty.is_empty());
    }

    #[test]
    fn a_chain_whose_issuer_is_unknown_is_refused() {
        let h = hierarchy();
        let error = lists(&[h.ca.crl(&[])])
            .check_chain(&h.chain[..1], &[], SystemTime::now())
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("neither in the chain nor in the bundle"),
            "{error}"
        );
    }
}
