//! A stand-in for AWS Private CA in tests: a root, the certificates it issues (CA
//! material for a trust domain, leaves with any SANs), and its CRL, made with rcgen.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use time::OffsetDateTime;

/// A test Private CA root.
pub struct TestPca {
    issuer: Issuer<'static, KeyPair>,
    /// The root certificate of the hierarchy, PEM (what the enclave image carries).
    pub root_pem: String,
    /// The signing key of this CA (PKCS#8 PEM), for a second issuer under the same
    /// root (SPIRE's `disk` UpstreamAuthority in the interop tests).
    pub key_pem: String,
}

/// A certificate the CA issued, with its key.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its PKCS#8 private key, PEM.
    pub key_pem: String,
    /// Its serial number (big-endian bytes).
    pub serial: Vec<u8>,
}

/// What to issue.
pub enum Profile<'a> {
    /// A subordinate CA with pathLen 0 and the trust domain's URI SAN.
    Ca {
        /// `spiffe://TD`.
        trust_domain_uri: &'a str,
    },
    /// An end-entity certificate with these SANs.
    Leaf(Vec<SanType>),
}

impl TestPca {
    /// A new root named `name`, valid for ten years from an hour ago.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("root key");
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = OffsetDateTime::from(now - Duration::from_secs(3600));
        params.not_after = OffsetDateTime::from(now + Duration::from_secs(10 * 365 * 86400));
        let cert = params.self_signed(&key).expect("self-signed root");
        Self {
            root_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a certificate of `profile` valid from `not_before` to `not_after`.
    pub fn issue(
        &self,
        profile: Profile<'_>,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Issued {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        let serial: [u8; 16] = rand_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        params.use_authority_key_identifier_extension = true;
        match profile {
            Profile::Ca { trust_domain_uri } => {
                params.distinguished_name = dn("EnclaveID test subordinate CA");
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                params.subject_alt_names =
                    vec![SanType::URI(trust_domain_uri.try_into().expect("URI SAN"))];
            }
            Profile::Leaf(sans) => {
                params.distinguished_name = dn("EnclaveID test leaf");
                params.is_ca = IsCa::ExplicitNoCa;
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![
                    rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                    rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                ];
                params.subject_alt_names = sans;
            }
        }
        let cert = params.signed_by(&key, &self.issuer).expect("issue");
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).expect("parse issued");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: parsed.serial.to_bytes_be(),
        }
    }

    /// Issues a certificate of `profile` valid from an hour ago for `lifetime` from now.
    pub fn issue_for(&self, profile: Profile<'_>, lifetime: Duration) -> Issued {
        let now = SystemTime::now();
        self.issue(profile, now - Duration::from_secs(3600), now + lifetime)
    }

    /// Issues a subordinate CA for `trust_domain_uri` valid for `lifetime`, and the
    /// stand-in that signs with it (its certificates and CRLs chain to this root).
    pub fn subordinate(&self, trust_domain_uri: &str, lifetime: Duration) -> (Self, Issued) {
        let issued = self.issue_for(Profile::Ca { trust_domain_uri }, lifetime);
        let key = KeyPair::from_pem(&issued.key_pem).expect("subordinate key");
        let issuer = Issuer::from_ca_cert_pem(&issued.cert_pem, key).expect("subordinate CA");
        let sub = Self {
            issuer,
            root_pem: self.root_pem.clone(),
            key_pem: issued.key_pem.clone(),
        };
        (sub, issued)
    }

    /// A DER CRL revoking `serials`, valid for a day (CRL number 1, issued five minutes
    /// ago).
    pub fn crl(&self, serials: &[&[u8]]) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        self.crl_numbered(1, now - time::Duration::minutes(5), serials)
    }

    /// A DER CRL number `number` revoking `serials`, issued at `this_update` and valid
    /// until a day from now: a sequence of them, as the Private CA publishes, or an old
    /// one replayed.
    pub fn crl_numbered(
        &self,
        number: u64,
        this_update: OffsetDateTime,
        serials: &[&[u8]],
    ) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update,
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: this_update,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).expect("CRL").der().to_vec()
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "EnclaveID tests");
    name.push(DnType::CommonName, common_name);
    name
}

fn rand_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).expect("random serial");
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    serial
}
