//! Checks of the certificate material before anything of it is served: the chain to the
//! Private CA root the enclave image carries, validity, revocation (the CA's CRL, verified
//! with the issuer's key), that the released key is the certificate's, and what the
//! certificate is: a CA that signs SVIDs, or itself an X.509-SVID.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, TrustDomain};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;
use zeroize::Zeroizing;

use crate::Error;
use crate::keys::SigningKey;

/// The longest chain followed from the material's certificate to the root.
const MAX_DEPTH: usize = 5;
/// SHA-1 signatures are refused (sha1WithRSAEncryption, ecdsa-with-SHA1).
const SHA1_SIGNATURES: [&str; 2] = ["1.2.840.113549.1.1.5", "1.2.840.10045.4.1"];

/// What the material is, once checked.
#[derive(Debug, PartialEq, Eq)]
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
    /// CA or leaf.
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

/// Checks `certs` (the certificate first, then the chain the host sent) and `key`.
///
/// `crl` is the issuer's CRL, if there is one to check.
pub fn check(
    certs: &[CertificateDer<'static>],
    key: &SigningKey,
    roots: &[CertificateDer<'static>],
    crl: Option<&[u8]>,
    trust_domain: &TrustDomain,
    now: SystemTime,
) -> Result<Checked, Error> {
    let refused = |why: String| Error::KeyMaterial(why);
    let parsed = certs
        .iter()
        .enumerate()
        .map(|(i, der)| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| c)
                .map_err(|e| refused(format!("certificate {i} does not parse: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let roots_parsed = roots
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| c)
                .map_err(|e| Error::Certificate(format!("trust bundle: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = parsed
        .first()
        .ok_or_else(|| refused("no certificate".into()))?;
    let serial = enclaveid_attestor::hex(&leaf.serial.to_bytes_be());
    let name = |c: &X509Certificate<'_>| {
        format!(
            "{} (serial {})",
            c.subject(),
            enclaveid_attestor::hex(&c.serial.to_bytes_be())
        )
    };

    if leaf.public_key().raw != key.subject_public_key_info() {
        return Err(refused(format!(
            "the private key KMS released does not belong to the certificate {}",
            name(leaf)
        )));
    }

    // Build the path: each step must be signed by the next, up to a configured root.
    let mut path = vec![0usize];
    let anchor = loop {
        let current = &parsed[*path.last().unwrap_or(&0)];
        if SHA1_SIGNATURES.contains(
            &current
                .signature_algorithm
                .algorithm
                .to_id_string()
                .as_str(),
        ) {
            return Err(refused(format!("{} is signed with SHA-1", name(current))));
        }
        if let Some(root) = roots_parsed.iter().find(|r| {
            r.subject() == current.issuer()
                && current.verify_signature(Some(r.public_key())).is_ok()
        }) {
            break root;
        }
        if path.len() >= MAX_DEPTH {
            return Err(refused(format!(
                "{} does not reach the root within {MAX_DEPTH} certificates",
                name(leaf)
            )));
        }
        let next = (1..parsed.len()).find(|i| {
            !path.contains(i)
                && parsed[*i].subject() == current.issuer()
                && parsed[*i].is_ca()
                && current
                    .verify_signature(Some(parsed[*i].public_key()))
                    .is_ok()
        });
        match next {
            Some(i) => path.push(i),
            None => {
                return Err(refused(format!(
                    "{} (issuer {}) does not chain to the Private CA root in upstream.trust_bundle_path ({})",
                    name(current),
                    current.issuer(),
                    roots_parsed
                        .iter()
                        .map(|r| r.subject().to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
        }
    };

    let at = ASN1Time::from_timestamp(unix(now)).map_err(|e| refused(e.to_string()))?;
    let mut not_after = i64::MAX;
    for cert in path
        .iter()
        .map(|i| &parsed[*i])
        .chain(std::iter::once(anchor))
    {
        let validity = cert.validity();
        not_after = not_after.min(validity.not_after.timestamp());
        if at < validity.not_before {
            return Err(refused(format!(
                "{} is not valid before {}",
                name(cert),
                validity.not_before
            )));
        }
        if at > validity.not_after {
            return Err(refused(format!(
                "{} expired at {}",
                name(cert),
                validity.not_after
            )));
        }
    }

    if let Some(crl) = crl {
        let issuer = path.get(1).map_or(anchor, |i| &parsed[*i]);
        crate::revocation::check_crl(crl, leaf, issuer, at, |why| {
            Error::KeyMaterial(format!("CRL from the host: {why}"))
        })?;
    }

    let role = if leaf.is_ca() {
        ca_role(leaf, trust_domain).map_err(|why| refused(format!("{}: {why}", name(leaf))))?
    } else {
        leaf_role(leaf, trust_domain).map_err(|why| refused(format!("{}: {why}", name(leaf))))?
    };
    Ok(Checked {
        role,
        path: path.iter().map(|i| certs[*i].clone()).collect(),
        serial,
        not_before: system_time(leaf.validity().not_before.timestamp()),
        not_after: system_time(not_after),
    })
}

/// The PKCS#8 DER of a checked leaf's key, with the leaf re-parsed as an X.509-SVID by
/// the `spiffe` crate: what is served is what a workload's library accepts.
pub fn leaf_svid_key(
    checked: &Checked,
    key: &SigningKey,
) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), Error> {
    let chain: Vec<u8> = checked
        .path
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    let key_der = key.to_pkcs8_der()?;
    spiffe::X509Svid::parse_from_der(&chain, &key_der).map_err(|e| {
        Error::KeyMaterial(format!(
            "the certificate (serial {}) is not a valid X.509-SVID: {e}",
            checked.serial
        ))
    })?;
    Ok((chain, key_der))
}

fn ca_role(cert: &X509Certificate<'_>, trust_domain: &TrustDomain) -> Result<Role, String> {
    let constraints = cert
        .basic_constraints()
        .ok()
        .flatten()
        .map(|bc| bc.value.path_len_constraint);
    if constraints != Some(Some(0)) {
        return Err(format!(
            "a CA certificate must have pathLenConstraint 0 (it signs only SVIDs); it has {}",
            match constraints {
                Some(Some(n)) => n.to_string(),
                _ => "none".into(),
            }
        ));
    }
    if !cert
        .key_usage()
        .ok()
        .flatten()
        .is_some_and(|ku| ku.value.key_cert_sign())
    {
        return Err("a CA certificate needs keyUsage keyCertSign".into());
    }
    let uris = uri_sans(cert);
    let expected = trust_domain.id_string();
    if uris.iter().any(|u| *u != expected) || uris.len() > 1 {
        return Err(format!(
            "a CA certificate may carry one URI SAN, {expected}; it has {uris:?}"
        ));
    }
    Ok(Role::Ca)
}

fn leaf_role(cert: &X509Certificate<'_>, trust_domain: &TrustDomain) -> Result<Role, String> {
    let uris = uri_sans(cert);
    if uris == [trust_domain.id_string()] {
        return Ok(Role::JwtSigner);
    }
    if uris.is_empty() {
        let dns = sans(cert, |n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        });
        return Err(format!(
            "it names only DNS names ({}) and no spiffe:// URI. ACM puts only DNS names in the certificates it issues, so such a certificate is not an X.509-SVID. Issue the enclave's certificate (or a CA for it) from AWS Private CA with a SPIFFE URI SAN instead: see docs/aws.md, \"The Private CA route\"",
            if dns.is_empty() {
                "none".into()
            } else {
                dns.join(", ")
            }
        ));
    }
    let [uri] = uris.as_slice() else {
        return Err(format!(
            "an X.509-SVID has exactly one URI SAN; it has {uris:?}"
        ));
    };
    let id = SpiffeId::new(uri).map_err(|e| format!("URI SAN {uri:?}: {e}"))?;
    if id.path().is_empty() {
        return Err(format!(
            "it is neither a CA (no basicConstraints cA) nor an X.509-SVID: {id} has no path, and a workload's SPIFFE ID needs one"
        ));
    }
    if !id.is_member_of(trust_domain) {
        return Err(format!("{id} is outside the trust domain {trust_domain}"));
    }
    Ok(Role::Leaf(id))
}

/// The certificate's URI SANs.
pub(crate) fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    sans(cert, |n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    })
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

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn system_time(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    };
    use time::OffsetDateTime;

    use super::*;

    struct Root {
        issuer: Issuer<'static, KeyPair>,
        der: CertificateDer<'static>,
    }

    fn root() -> Root {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Root {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a certificate: `ca` = Some(path_len) for a CA, with `uris` as URI SANs.
    fn issue(root: &Root, ca: Option<u8>, uris: &[&str]) -> (CertificateDer<'static>, SigningKey) {
        let key = SigningKey::generate_p256().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = match ca {
            Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
            None => IsCa::ExplicitNoCa,
        };
        params.key_usages = match ca {
            Some(_) => vec![KeyUsagePurpose::KeyCertSign],
            None => vec![KeyUsagePurpose::DigitalSignature],
        };
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        let cert = params.signed_by(&key, &root.issuer).unwrap();
        (cert.der().clone(), key)
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn run(
        root: &Root,
        cert: CertificateDer<'static>,
        key: &SigningKey,
        crl: Option<&[u8]>,
    ) -> Result<Checked, Error> {
        check(
            &[cert],
            key,
            std::slice::from_ref(&root.der),
            crl,
            &td(),
            SystemTime::now(),
        )
    }

    fn crl(root: &Root, serials: &[Vec<u8>], next_update: OffsetDateTime) -> Vec<u8> {
        CertificateRevocationListParams {
            this_update: next_update - time::Duration::days(2),
            next_update,
            crl_number: SerialNumber::from(7u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: OffsetDateTime::now_utc(),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&root.issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    #[test]
    fn ca_and_leaf_material_are_told_apart() {
        let root = root();
        let (cert, key) = issue(&root, Some(0), &["spiffe://example.org"]);
        let checked = run(&root, cert, &key, None).unwrap();
        assert_eq!(checked.role, Role::Ca);
        let (cert, key) = issue(&root, Some(0), &[]);
        assert_eq!(
            run(&root, cert, &key, None).unwrap().role,
            Role::Ca,
            "the URI SAN is optional"
        );

        let (cert, key) = issue(&root, None, &["spiffe://example.org/gateway"]);
        let checked = run(&root, cert, &key, None).unwrap();
        assert_eq!(
            checked.role,
            Role::Leaf(SpiffeId::new("spiffe://example.org/gateway").unwrap())
        );
        let (chain, key_der) = leaf_svid_key(&checked, &key).unwrap();
        assert_eq!(chain, checked.path[0].to_vec());
        assert!(!key_der.is_empty());

        // An end-entity certificate naming only the trust domain certifies a JWT key.
        let (cert, key) = issue(&root, None, &["spiffe://example.org"]);
        assert_eq!(run(&root, cert, &key, None).unwrap().role, Role::JwtSigner);
        let (cert, key) = issue(&root, None, &["spiffe://other.org"]);
        let error = run(&root, cert, &key, None).unwrap_err().to_string();
        assert!(error.contains("has no path"), "{error}");
    }

    #[test]
    fn material_outside_the_svid_profile_is_refused_with_the_reason() {
        let root = root();
        for (ca, uris, expected) in [
            (
                Some(1),
                &["spiffe://example.org"][..],
                "pathLenConstraint 0",
            ),
            (
                Some(0),
                &["spiffe://other.org"][..],
                "may carry one URI SAN, spiffe://example.org",
            ),
            (
                None,
                &["spiffe://example.org/a", "spiffe://example.org/b"][..],
                "exactly one URI SAN",
            ),
            (
                None,
                &["spiffe://other.org/a"][..],
                "outside the trust domain",
            ),
            (None, &[][..], "ACM puts only DNS names"),
        ] {
            let (cert, key) = issue(&root, ca, uris);
            let error = run(&root, cert, &key, None).unwrap_err().to_string();
            assert!(error.contains(expected), "{uris:?}: {error}");
        }
    }

    #[test]
    fn crls_are_verified_current_and_applied() {
        let root = root();
        let (cert, key) = issue(&root, Some(0), &[]);
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let serial = parsed.serial.to_bytes_be();
        let tomorrow = OffsetDateTime::now_utc() + time::Duration::days(1);

        let clean = crl(&root, &[vec![1, 2, 3]], tomorrow);
        run(&root, cert.clone(), &key, Some(&clean)).unwrap();
        let pem = pem::encode(&pem::Pem::new("X509 CRL", clean.clone()));
        run(&root, cert.clone(), &key, Some(pem.as_bytes())).unwrap();

        let revoked = crl(&root, std::slice::from_ref(&serial), tomorrow);
        let error = run(&root, cert.clone(), &key, Some(&revoked))
            .unwrap_err()
            .to_string();
        assert!(error.contains("is revoked since"), "{error}");

        let stale = crl(
            &root,
            &[],
            OffsetDateTime::now_utc() - time::Duration::hours(1),
        );
        let error = run(&root, cert.clone(), &key, Some(&stale))
            .unwrap_err()
            .to_string();
        assert!(error.contains("stale"), "{error}");

        let other = self::root();
        let foreign = crl(&other, &[], tomorrow);
        let error = run(&root, cert.clone(), &key, Some(&foreign))
            .unwrap_err()
            .to_string();
        assert!(error.contains("CRL from the host"), "{error}");

        let mut tampered = clean;
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let error = run(&root, cert, &key, Some(&tampered))
            .unwrap_err()
            .to_string();
        assert!(error.contains("CRL from the host"), "{error}");
    }
}
