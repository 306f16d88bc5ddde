//! A stand-in for the Nitro Secure Module that emits documents in exactly the AWS format.
//!
//! Same envelope (untagged COSE_Sign1, protected `{1: -35}`, empty unprotected map, 96-byte
//! `r || s` ES384 signature), same payload map in NSM's key order, 16 PCRs of 48 bytes,
//! and a chain shaped like AWS's: a P-384 root, three intermediates (as AWS's regional,
//! zonal and instance CAs) and a fresh leaf per document, valid three hours, as AWS's are.
//! The root is generated at run time (or loaded from a [`FakeRoot`], so that a fake KMS
//! in another process can pin it) and exported so tests and `enclaveid attest verify
//! --root` can pin it. Nothing here is secret: it is for development only.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P384_SHA384, SubjectPublicKeyInfo,
};
use time::OffsetDateTime;

use crate::document::{CoseSign1, PROTECTED_ES384, Payload};
use crate::{AttestationRequest, Attestor, Error, FakeConfig, FakeRoot};

/// How long a fake leaf certificate is valid, as AWS's.
const LEAF_VALIDITY: Duration = Duration::from_secs(3 * 3600);

/// A fake Nitro Secure Module.
pub struct FakeAttestor {
    root_der: Vec<u8>,
    root_pem: String,
    root_key_pem: String,
    /// DER certificates, root first, then the intermediates; the last issues leaves.
    cabundle: Vec<Vec<u8>>,
    issuer: Issuer<'static, KeyPair>,
    pcrs: BTreeMap<u8, Vec<u8>>,
    module_id: String,
}

// === impl FakeAttestor ===

impl FakeAttestor {
    /// Generates the intermediates, and the root unless the config carries one.
    pub fn new(config: FakeConfig) -> Result<Self, Error> {
        let now = SystemTime::now();
        let (mut issuer, root_der, root_pem, root_key_pem) = match &config.root {
            Some(root) => {
                let key = KeyPair::from_pem(&root.key_pem)
                    .map_err(|e| fake(format!("fake root key: {e}")))?;
                let key_pem = key.serialize_pem();
                let (_, pem) = x509_parser::pem::parse_x509_pem(root.cert_pem.as_bytes())
                    .map_err(|e| fake(format!("fake root certificate: {e}")))?;
                let issuer = Issuer::from_ca_cert_pem(&root.cert_pem, key)
                    .map_err(|e| fake(format!("fake root certificate: {e}")))?;
                (issuer, pem.contents, root.cert_pem.clone(), key_pem)
            }
            None => {
                let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(fake)?;
                let key_pem = root_key.serialize_pem();
                let root_params = ca_params(
                    "fake.nitro-enclaves",
                    now,
                    Duration::from_secs(30 * 365 * 24 * 3600),
                    None,
                );
                let root = root_params.self_signed(&root_key).map_err(fake)?;
                let (der, pem) = (root.der().to_vec(), root.pem());
                (Issuer::new(root_params, root_key), der, pem, key_pem)
            }
        };
        let mut cabundle = vec![root_der.clone()];
        for (i, name) in [
            "fake-region.nitro-enclaves",
            "fake-zone.nitro-enclaves",
            "fake-instance.nitro-enclaves",
        ]
        .into_iter()
        .enumerate()
        {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(fake)?;
            // Shorter-lived further down, as AWS's; path lengths shrink towards the leaf.
            let lifetime = Duration::from_secs((365 - 100 * i as u64) * 24 * 3600);
            let params = ca_params(name, now, lifetime, Some(2 - i as u8));
            let cert = params.signed_by(&key, &issuer).map_err(fake)?;
            cabundle.push(cert.der().to_vec());
            issuer = Issuer::new(params, key);
        }
        let pcrs = (0u8..16)
            .map(|i| {
                let value = match config.pcrs.get(&i) {
                    _ if config.debug => vec![0; 48],
                    Some(value) => value.clone(),
                    None => derived_pcr(i),
                };
                (i, value)
            })
            .collect();
        Ok(Self {
            root_der,
            root_pem,
            root_key_pem,
            cabundle,
            issuer,
            pcrs,
            module_id: config.module_id,
        })
    }

    /// The root's DER, to pin in a [`crate::Verifier`].
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The root as PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root and its key, for [`FakeConfig::root`] of another fake that must chain to
    /// the same root.
    pub fn root(&self) -> FakeRoot {
        FakeRoot {
            cert_pem: self.root_pem.clone(),
            key_pem: self.root_key_pem.clone(),
        }
    }

    /// A document made at `now`.
    pub fn attest_at(
        &self,
        request: &AttestationRequest,
        now: SystemTime,
    ) -> Result<Vec<u8>, Error> {
        request.check_limits()?;
        let rng = SystemRandom::new();
        let leaf_key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).map_err(fake)?;
        let spki = leaf_key.public_key().as_der().map_err(fake)?;
        let mut params = CertificateParams::default();
        params.distinguished_name =
            aws_like_name(&format!("{}.fake-instance.nitro-enclaves", self.module_id));
        params.not_before = OffsetDateTime::from(now - Duration::from_secs(3));
        params.not_after = OffsetDateTime::from(now + LEAF_VALIDITY);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf_public = SubjectPublicKeyInfo::from_der(spki.as_ref()).map_err(fake)?;
        let leaf = params.signed_by(&leaf_public, &self.issuer).map_err(fake)?;

        let timestamp_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(fake)?
            .as_millis()
            .try_into()
            .map_err(fake)?;
        let payload = Payload {
            module_id: self.module_id.clone(),
            digest: "SHA384".into(),
            timestamp_ms,
            pcrs: self.pcrs.clone(),
            certificate: leaf.der().to_vec(),
            cabundle: self.cabundle.clone(),
            public_key: request.public_key.clone(),
            user_data: request.user_data.clone(),
            nonce: request.nonce.clone(),
        };
        let mut cose = CoseSign1 {
            protected: PROTECTED_ES384.to_vec(),
            payload: payload.encode(),
            signature: Vec::new(),
        };
        cose.signature = leaf_key
            .sign(&rng, &cose.signed_bytes())
            .map_err(fake)?
            .as_ref()
            .to_vec();
        Ok(cose.encode())
    }
}

impl Attestor for FakeAttestor {
    fn attest(&self, request: &AttestationRequest) -> Result<Vec<u8>, Error> {
        self.attest_at(request, SystemTime::now())
    }
}

impl std::fmt::Debug for FakeAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAttestor")
            .field("module_id", &self.module_id)
            .field(
                "root_sha256",
                &crate::hex(&crate::verify::sha256(&self.root_der)),
            )
            .finish_non_exhaustive()
    }
}

fn ca_params(
    name: &str,
    now: SystemTime,
    lifetime: Duration,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = aws_like_name(name);
    params.is_ca = IsCa::Ca(path_len.map_or(
        BasicConstraints::Unconstrained,
        BasicConstraints::Constrained,
    ));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::from(now - Duration::from_secs(60));
    params.not_after = OffsetDateTime::from(now + lifetime);
    params
}

/// A subject shaped like AWS's Nitro certificates': `C=US, O=Amazon, OU=AWS, CN=…`.
fn aws_like_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CountryName, "US");
    name.push(DnType::OrganizationName, "Amazon");
    name.push(DnType::OrganizationalUnitName, "AWS");
    name.push(DnType::CommonName, common_name);
    name
}

/// A stable, non-zero 48-byte PCR value for index `i` (SHA-384 of a label).
fn derived_pcr(i: u8) -> Vec<u8> {
    aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA384,
        format!("enclaveid fake PCR{i}").as_bytes(),
    )
    .as_ref()
    .to_vec()
}

fn fake(e: impl std::fmt::Display) -> Error {
    Error::Fake(e.to_string())
}
