//! Revocation: certificate revocation lists (RFC 5280 §5) checked against a certificate
//! path. The `kms` upstream checks its own material with [`check_crl`]; workloads check
//! their peers' chains with [`RevocationLists::check_chain`] (the mesh example does, on
//! every handshake), against the CRLs the agent exports (`upstream.crl_export_path`).
//!
//! A CRL counts only when it names the certificate's issuer, verifies with that issuer's
//! key and is current (`nextUpdate` not passed); a listed serial refuses the path. An
//! issuer with no CRL among the lists is not checked: this is a deny list.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;

use crate::Error;

/// The longest path followed, as in the `kms` material check.
const MAX_DEPTH: usize = 5;

/// Checks `cert` against `crl` (DER or PEM) issued by `issuer` at time `at`. A CRL that
/// does not parse, names another issuer, does not verify with the issuer's key or is
/// stale is refused with `refused(why)`; a listed certificate with [`Error::Revoked`].
pub fn check_crl(
    crl: &[u8],
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    at: ASN1Time,
    refused: impl Fn(String) -> Error,
) -> Result<(), Error> {
    let der;
    let crl = if crl.starts_with(b"-----BEGIN") {
        der = x509_parser::pem::parse_x509_pem(crl)
            .map_err(|e| refused(format!("not PEM: {e}")))?
            .1
            .contents;
        &der[..]
    } else {
        crl
    };
    let (_, crl) =
        x509_parser::parse_x509_crl(crl).map_err(|e| refused(format!("does not parse: {e}")))?;
    if crl.issuer() != issuer.subject() {
        return Err(refused(format!(
            "issued by {}, not by the certificate's issuer {}",
            crl.issuer(),
            issuer.subject()
        )));
    }
    crl.verify_signature(issuer.public_key()).map_err(|e| {
        refused(format!(
            "its signature does not verify with {}'s key: {e}",
            issuer.subject()
        ))
    })?;
    if let Some(next) = crl.next_update()
        && next < at
    {
        return Err(refused(format!(
            "stale: its nextUpdate {next} has passed, so it may not list recent revocations"
        )));
    }
    if let Some(revoked) = crl
        .iter_revoked_certificates()
        .find(|r| r.raw_serial() == cert.raw_serial())
    {
        let serial = enclaveid_attestor::hex(&cert.serial.to_bytes_be());
        return Err(Error::Revoked {
            message: format!(
                "the certificate {} (serial {serial}) is revoked since {}",
                cert.subject(),
                revoked.revocation_date
            ),
            serial,
        });
    }
    Ok(())
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
    pub fn add(&mut self, bytes: &[u8], origin: &str) -> Result<(), Error> {
        let bad = |why: String| Error::Certificate(format!("{origin}: {why}"));
        let mut found = Vec::new();
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            for block in pem::parse_many(bytes).map_err(|e| bad(format!("not PEM: {e}")))? {
                if block.tag() == "X509 CRL" {
                    found.push(block.into_contents());
                }
            }
            if found.is_empty() {
                return Err(bad(
                    "no X509 CRL block (accepted: PEM X509 CRL blocks or one DER CRL)".into(),
                ));
            }
        } else {
            found.push(bytes.to_vec());
        }
        for der in &found {
            x509_parser::parse_x509_crl(der)
                .map_err(|e| bad(format!("a CRL does not parse: {e}")))?;
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
    /// roots are `roots` (the trust bundle), at `now`. Every certificate of the path but
    /// the root is looked up on the CRLs its issuer signed.
    ///
    /// Call it after the chain itself was verified (the TLS handshake does): it follows
    /// issuer names and checks CRL signatures, not the path's.
    pub fn check_chain(
        &self,
        chain: &[CertificateDer<'_>],
        roots: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<(), Error> {
        if self.lists.is_empty() {
            return Ok(());
        }
        let chain = chain
            .iter()
            .map(|c| parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        let roots = roots
            .iter()
            .map(|c| parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        let at = ASN1Time::from_timestamp(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        )
        .map_err(|e| Error::Certificate(format!("the time cannot be checked: {e}")))?;
        for (depth, cert) in chain.iter().enumerate().take(MAX_DEPTH) {
            if cert.issuer() == cert.subject() {
                break;
            }
            let issuer = chain[depth + 1..]
                .iter()
                .chain(&roots)
                .find(|c| c.subject() == cert.issuer())
                .ok_or_else(|| {
                    Error::Certificate(format!(
                        "the issuer {} of {} is neither in the chain nor in the bundle",
                        cert.issuer(),
                        cert.subject()
                    ))
                })?;
            for crl in self.lists.iter().filter(|crl| names_issuer(crl, issuer)) {
                check_crl(crl, cert, issuer, at, |why| {
                    Error::Certificate(format!("CRL of {}: {why}", issuer.subject()))
                })?;
            }
            if roots.iter().any(|r| r.subject() == issuer.subject()) {
                break;
            }
        }
        Ok(())
    }
}

fn parse<'a>(der: &'a [u8]) -> Result<X509Certificate<'a>, Error> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| Error::Certificate(format!("a peer certificate does not parse: {e}")))
}

fn names_issuer(crl: &[u8], issuer: &X509Certificate<'_>) -> bool {
    x509_parser::parse_x509_crl(crl).is_ok_and(|(_, crl)| crl.issuer() == issuer.subject())
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
        let (ca, ca_cert) = root.subordinate("spiffe://td", Duration::from_secs(3600));
        let leaf = ca.issue_for(
            Profile::Leaf(vec![SanType::URI("spiffe://td/w".try_into().unwrap())]),
            Duration::from_secs(600),
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

    #[test]
    fn a_revoked_leaf_or_intermediate_refuses_the_chain() {
        let h = hierarchy();
        let now = SystemTime::now();
        let check = |crls: &[Vec<u8>]| lists(crls).check_chain(&h.chain, &h.roots, now);

        check(&[]).unwrap();
        // CRLs listing other serials leave the chain alone.
        check(&[h.ca.crl(&[&[9, 9]]), pem_crl(&h.root.crl(&[&[7]]))]).unwrap();

        let leaf = check(&[pem_crl(&h.ca.crl(&[&h.leaf_serial]))]).unwrap_err();
        assert!(
            matches!(&leaf, Error::Revoked { serial, .. } if *serial == enclaveid_attestor::hex(&h.leaf_serial)),
            "{leaf}"
        );
        let ca = check(&[h.root.crl(&[&h.ca_serial])]).unwrap_err();
        assert!(ca.to_string().contains("is revoked since"), "{ca}");
        assert!(ca.to_string().contains("subordinate CA"), "{ca}");
    }

    #[test]
    fn a_forged_or_foreign_crl_is_not_taken_for_the_issuer() {
        let h = hierarchy();
        // A CRL from another CA that happens to share the subject name: its signature
        // does not verify with the real issuer's key, and it is refused loudly.
        let impostor = TestPca::new("root");
        let forged = lists(&[impostor.crl(&[&h.ca_serial])])
            .check_chain(&h.chain, &h.roots, SystemTime::now())
            .unwrap_err();
        assert!(forged.to_string().contains("does not verify"), "{forged}");
        // A CRL of an unrelated issuer (another name) does not apply.
        let other = TestPca::new("another root");
        lists(&[other.crl(&[&h.ca_serial])])
            .check_chain(&h.chain, &h.roots, SystemTime::now())
            .unwrap();
    }

    #[test]
    fn a_stale_crl_refuses_and_garbage_is_named() {
        let h = hierarchy();
        let later = SystemTime::now() + Duration::from_secs(2 * 86400);
        let stale = lists(&[h.ca.crl(&[])])
            .check_chain(&h.chain, &h.roots, later)
            .unwrap_err();
        assert!(stale.to_string().contains("stale"), "{stale}");

        let mut empty = RevocationLists::default();
        let error = empty
            .add(b"not a crl", "/run/crl.pem")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("/run/crl.pem: a CRL does not parse"),
            "{error}"
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
