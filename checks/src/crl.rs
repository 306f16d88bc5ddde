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
    /// Not a CRL x509-parser can read (to find its number and date).
    #[error("a CRL does not parse")]
    Unreadable(#[source] x509_parser::error::X509Error),
    /// A CRL number lower than one already applied.
    #[error(
        "CRL number {number} is older than number {applied}, already applied: a replayed CRL is refused"
    )]
    Rollback {
        /// The offered CRL's number, hex.
        number: String,
        /// The number already applied, hex.
        applied: String,
    },
    /// A CRL issued before the one already applied.
    #[error(
        "it was issued at {}, before the CRL already applied ({}): a replayed CRL is refused",
        pki::rfc3339(*this_update),
        pki::rfc3339(*applied)
    )]
    Replayed {
        /// The offered CRL's thisUpdate.
        this_update: SystemTime,
        /// The thisUpdate already applied.
        applied: SystemTime,
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

/// What has been applied of CRLs, so that the parent instance cannot roll revocation back:
/// per issuer, the highest CRL number and the latest thisUpdate applied, and every
/// revocation seen of a path's leaf (a later CRL that no longer lists it does not undo
/// it).
#[derive(Debug, Default)]
pub struct CrlMemory {
    latest: std::collections::HashMap<Vec<u8>, Applied>,
    revoked: std::collections::HashMap<String, Revoked>,
}

#[derive(Debug)]
struct Applied {
    number: Option<Vec<u8>>,
    this_update: i64,
}

/// The issuer, number and thisUpdate of a CRL.
fn describe(crl: &[u8]) -> Result<(Vec<u8>, Applied), CrlError> {
    let der = der(crl)?;
    let (_, parsed) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| CrlError::Unreadable(crate::certs::x509_error(e)))?;
    Ok((
        parsed.issuer().as_raw().to_vec(),
        Applied {
            number: parsed.crl_number().map(|n| n.to_bytes_be()),
            this_update: parsed.last_update().timestamp(),
        },
    ))
}

/// `a` before `b`, as unsigned big-endian numbers without leading zeros.
fn before(a: &[u8], b: &[u8]) -> bool {
    let a = &a[a.iter().take_while(|x| **x == 0).count()..];
    let b = &b[b.iter().take_while(|x| **x == 0).count()..];
    (a.len(), a) < (b.len(), b)
}

// === impl CrlMemory ===

impl CrlMemory {
    /// Refuses `crl` (DER or PEM) if it is older than the CRL of the same issuer already
    /// applied: a lower CRL number, or an earlier thisUpdate. Call it before the CRL is
    /// used; it changes nothing.
    pub fn check(&self, crl: &[u8]) -> Result<(), CrlError> {
        let (issuer, offered) = describe(crl)?;
        let Some(applied) = self.latest.get(&issuer) else {
            return Ok(());
        };
        if let (Some(offered), Some(applied)) = (&offered.number, &applied.number)
            && before(offered, applied)
        {
            return Err(CrlError::Rollback {
                number: enclaveid_attestor::hex(offered),
                applied: enclaveid_attestor::hex(applied),
            });
        }
        if offered.this_update < applied.this_update {
            return Err(CrlError::Replayed {
                this_update: unix_seconds(offered.this_update),
                applied: unix_seconds(applied.this_update),
            });
        }
        Ok(())
    }

    /// Records `crl` as applied: call it once the CRL verified (its signature checked
    /// with its issuer's key).
    pub fn record(&mut self, crl: &[u8]) {
        if let Ok((issuer, applied)) = describe(crl) {
            self.latest.insert(issuer, applied);
        }
    }

    /// Remembers a revocation: the path of `revoked.leaf_serial` stays revoked.
    pub fn remember(&mut self, revoked: &Revoked) {
        self.revoked
            .entry(revoked.leaf_serial.clone())
            .or_insert_with(|| revoked.clone());
    }

    /// The revocation seen earlier of the path whose leaf has `leaf_serial`, if any.
    pub fn revocation_of(&self, leaf_serial: &str) -> Option<&Revoked> {
        self.revoked.get(leaf_serial)
    }
}

fn unix_seconds(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0).unsigned_abs())
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };
    use time::OffsetDateTime;

    use super::*;

    fn issuer(name: &str) -> Issuer<'static, KeyPair> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Issuer::new(params, key)
    }

    fn crl(
        issuer: &Issuer<'static, KeyPair>,
        number: u64,
        age_days: i64,
        serials: &[u8],
    ) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - time::Duration::days(age_days),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&[*s]),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    #[test]
    fn hostile_a_replayed_older_crl_is_refused() {
        let ca = issuer("CA");
        let mut memory = CrlMemory::default();
        let first = crl(&ca, 1, 2, &[]);
        let second = crl(&ca, 2, 1, &[7]);
        memory.check(&first).unwrap();
        memory.record(&first);
        memory.check(&second).unwrap();
        memory.record(&second);
        // The same CRL again is fine; the older one is a rollback.
        memory.check(&second).unwrap();
        let error = memory.check(&first).unwrap_err().to_string();
        assert!(
            error.contains("CRL number 01 is older than number 02"),
            "{error}"
        );
        // A higher number issued earlier than what was applied is refused too.
        let backdated = crl(&ca, 3, 5, &[]);
        let error = memory.check(&backdated).unwrap_err().to_string();
        assert!(error.contains("before the CRL already applied"), "{error}");
        // Another issuer's CRLs are kept apart.
        memory
            .check(&crl(&issuer("another CA"), 1, 9, &[]))
            .unwrap();
    }

    #[test]
    fn hostile_a_revocation_once_seen_is_not_forgotten() {
        let mut memory = CrlMemory::default();
        let revoked = Revoked {
            certificate: CertName {
                subject: "CN=x".into(),
                serial: "0a".into(),
            },
            since: SystemTime::UNIX_EPOCH,
            leaf_serial: "0a".into(),
        };
        assert!(memory.revocation_of("0a").is_none());
        memory.remember(&revoked);
        assert_eq!(memory.revocation_of("0a"), Some(&revoked));
    }

    #[test]
    fn a_big_endian_number_compares_by_value() {
        assert!(before(&[1], &[2]));
        assert!(before(&[0xff], &[1, 0]));
        assert!(!before(&[0, 2], &[2]));
        assert!(!before(&[2], &[1]));
    }
}
