//! Attested SVIDs (`verify_attested_svid`): certificates minted here the way the agent
//! mints them (rcgen, then the extension added and the TBSCertificate signed again), and
//! every hostile variant the issue lists, refused with its own error.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use enclaveid_attestor::svid::{self, ATTESTED_SVID_OID, USER_DATA_PREFIX};
use enclaveid_attestor::{
    AttestationRequest, Attestor, Error, FakeAttestor, FakeConfig, Policy, SvidError, SvidPolicy,
    Verifier,
};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, SigningKey as _,
};
use x509_parser::prelude::FromDer;

const PCR0: [u8; 48] = [0x42; 48];

struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(trust_domain: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}").try_into().unwrap(),
        )];
        params.self_signed(&key).unwrap();
        Self {
            issuer: Issuer::new(params, key),
        }
    }

    /// A plain SVID for `id` with `key`, valid over `from..to`.
    fn svid(
        &self,
        id: &str,
        key: &KeyPair,
        serial: u8,
        from: SystemTime,
        to: SystemTime,
    ) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.serial_number = Some(SerialNumber::from_slice(&[0x51, serial, 7, 7]));
        params.not_before = from.into();
        params.not_after = to.into();
        params.signed_by(key, &self.issuer).unwrap().der().to_vec()
    }

    /// `cert` with `extn_value` under the attestation OID, signed again by this CA.
    fn attach_raw(&self, cert: &[u8], extn_value: &[u8], critical: bool) -> Vec<u8> {
        let unsigned = svid::add_raw_extension(cert, extn_value, critical).unwrap();
        let signature = self.issuer.key().sign(unsigned.tbs()).unwrap();
        unsigned.finish(&signature)
    }

    fn attach(&self, cert: &[u8], document: &[u8]) -> Vec<u8> {
        self.attach_raw(cert, &svid::extension_value(document), false)
    }
}

fn enclave(debug: bool) -> FakeAttestor {
    FakeAttestor::new(FakeConfig {
        pcrs: BTreeMap::from([(0, PCR0.to_vec())]),
        debug,
        ..FakeConfig::default()
    })
    .unwrap()
}

fn document_for(attestor: &FakeAttestor, cert: &[u8]) -> Vec<u8> {
    attestor
        .attest(&AttestationRequest {
            user_data: Some(svid::user_data_for(cert).unwrap()),
            ..AttestationRequest::default()
        })
        .unwrap()
}

fn policy(pcr0s: &[&[u8]]) -> SvidPolicy {
    SvidPolicy {
        trust_domain: Some("example.org".into()),
        ..SvidPolicy::required(Policy {
            pcrs: BTreeMap::from([(0, pcr0s.iter().map(|p| p.to_vec()).collect())]),
            ..Policy::default()
        })
    }
}

struct World {
    ca: Ca,
    attestor: FakeAttestor,
    verifier: Verifier,
    key: KeyPair,
    now: SystemTime,
}

fn world() -> World {
    let attestor = enclave(false);
    World {
        ca: Ca::new("example.org"),
        verifier: Verifier::with_root_der(attestor.root_der()),
        attestor,
        key: KeyPair::generate().unwrap(),
        now: SystemTime::now(),
    }
}

impl World {
    fn plain(&self, serial: u8) -> Vec<u8> {
        self.ca.svid(
            "spiffe://example.org/inference",
            &self.key,
            serial,
            self.now - Duration::from_secs(60),
            self.now + Duration::from_secs(3600),
        )
    }

    fn attested(&self, serial: u8) -> Vec<u8> {
        let plain = self.plain(serial);
        self.ca
            .attach(&plain, &document_for(&self.attestor, &plain))
    }
}

#[test]
fn attested_svid_verifies_with_its_pcrs_and_its_ca_signature() {
    let w = world();
    let cert = w.attested(1);
    let verified = w
        .verifier
        .verify_attested_svid(&cert, &policy(&[&[1; 48], &PCR0]), w.now)
        .unwrap()
        .expect("the extension is there");
    assert_eq!(verified.document.pcrs[&0], PCR0);
    assert_eq!(verified.uris, ["spiffe://example.org/inference"]);
    let user_data = verified.document.user_data.unwrap();
    assert!(user_data.starts_with(USER_DATA_PREFIX));
    assert_eq!(user_data.len(), USER_DATA_PREFIX.len() + 48 + 4);

    // Signed again by the CA: the new TBSCertificate verifies with the CA key, and the
    // fields rcgen wrote are all still there, the extension last and non-critical.
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&cert).unwrap();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, w.ca.issuer.key().public_key_raw())
        .verify(
            parsed.tbs_certificate.as_ref(),
            &parsed.signature_value.data,
        )
        .expect("the re-signed certificate verifies with the CA key");
    let plain_der = w.plain(1);
    let (_, plain) = x509_parser::certificate::X509Certificate::from_der(&plain_der).unwrap();
    let oids: Vec<String> = parsed
        .extensions()
        .iter()
        .map(|e| e.oid.to_id_string())
        .collect();
    let plain_oids: Vec<String> = plain
        .extensions()
        .iter()
        .map(|e| e.oid.to_id_string())
        .collect();
    assert_eq!(oids[..oids.len() - 1], plain_oids[..]);
    assert_eq!(oids.last().unwrap(), ATTESTED_SVID_OID);
    // Every arc fits in 31 bits: Go's x509 parser (go-spiffe, spire-agent) refuses a
    // certificate with a larger one.
    let last = parsed.extensions().last().unwrap();
    assert_eq!(last.oid.as_bytes(), svid::ATTESTED_SVID_OID_DER);
    assert!(
        ATTESTED_SVID_OID
            .split('.')
            .all(|arc| arc.parse::<u64>().unwrap() < 1 << 31)
    );
    assert!(!parsed.extensions().last().unwrap().critical);
    assert_eq!(
        parsed.subject_alternative_name().unwrap(),
        plain.subject_alternative_name().unwrap()
    );
}

#[test]
fn attested_svid_missing_extension_fails_closed_when_required() {
    let w = world();
    let plain = w.plain(1);
    assert!(matches!(
        w.verifier
            .verify_attested_svid(&plain, &policy(&[&PCR0]), w.now),
        Err(SvidError::Missing)
    ));
    let optional = SvidPolicy {
        required: false,
        ..policy(&[&PCR0])
    };
    assert_eq!(
        w.verifier
            .verify_attested_svid(&plain, &optional, w.now)
            .unwrap(),
        None
    );
}

#[test]
fn attested_svid_bound_to_another_key_is_refused() {
    let w = world();
    // The enclave's genuine document for its own SVID, carried by a certificate for a
    // key the attacker holds.
    let genuine = w.plain(1);
    let document = document_for(&w.attestor, &genuine);
    let attacker_key = KeyPair::generate().unwrap();
    let forged = w.ca.svid(
        "spiffe://example.org/inference",
        &attacker_key,
        1,
        w.now - Duration::from_secs(60),
        w.now + Duration::from_secs(3600),
    );
    let forged = w.ca.attach(&forged, &document);
    let error = w
        .verifier
        .verify_attested_svid(&forged, &policy(&[&PCR0]), w.now)
        .unwrap_err();
    assert!(matches!(error, SvidError::NotBound { .. }), "{error}");
}

#[test]
fn attested_svid_replayed_document_of_an_older_svid_is_refused() {
    let w = world();
    // The document of the previous SVID (serial 1), replayed in the next one (serial 2),
    // even with the same key.
    let old = w.plain(1);
    let old_document = document_for(&w.attestor, &old);
    let next = w.ca.attach(&w.plain(2), &old_document);
    let error = w
        .verifier
        .verify_attested_svid(&next, &policy(&[&PCR0]), w.now)
        .unwrap_err();
    assert!(matches!(error, SvidError::NotBound { .. }), "{error}");

    // A document made before the certificate's validity began is refused too.
    let later = w.now + Duration::from_secs(7200);
    let future = w.ca.svid(
        "spiffe://example.org/inference",
        &w.key,
        3,
        later,
        later + Duration::from_secs(3600),
    );
    let future = w.ca.attach(&future, &document_for(&w.attestor, &future));
    let error = w
        .verifier
        .verify_attested_svid(&future, &policy(&[&PCR0]), later + Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(error, SvidError::Timestamp { .. }), "{error}");
}

#[test]
fn attested_svid_from_a_debug_mode_enclave_is_refused() {
    let w = world();
    let debug = enclave(true);
    let plain = w.plain(1);
    let cert = w.ca.attach(&plain, &document_for(&debug, &plain));
    let verifier = Verifier::with_root_der(debug.root_der());
    let all_zero = SvidPolicy {
        trust_domain: None,
        ..SvidPolicy::required(Policy::default())
    };
    let error = verifier
        .verify_attested_svid(&cert, &all_zero, w.now)
        .unwrap_err();
    assert!(
        matches!(error, SvidError::Document(Error::DebugMode)),
        "{error}"
    );
}

#[test]
fn attested_svid_with_a_pcr0_not_in_the_list_is_refused() {
    let w = world();
    let error = w
        .verifier
        .verify_attested_svid(&w.attested(1), &policy(&[&[1; 48], &[2; 48]]), w.now)
        .unwrap_err();
    assert!(
        matches!(
            error,
            SvidError::Document(Error::PcrMismatch { index: 0, .. })
        ),
        "{error}"
    );
}

#[test]
fn attested_svid_truncated_or_malformed_extension_is_refused() {
    let w = world();
    let plain = w.plain(1);
    let document = document_for(&w.attestor, &plain);
    let value = svid::extension_value(&document);
    type Expected = fn(&SvidError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Expected)> = vec![
        ("truncated DER", value[..value.len() / 2].to_vec(), |e| {
            matches!(e, SvidError::Malformed(_))
        }),
        ("empty", Vec::new(), |e| {
            matches!(e, SvidError::Malformed(_))
        }),
        ("trailing byte", [value.clone(), vec![0]].concat(), |e| {
            matches!(e, SvidError::Malformed(_))
        }),
        (
            "version 2",
            {
                let mut v = value.clone();
                // SEQUENCE header (4 octets for this length), then INTEGER 02 01 01.
                let at = v.iter().position(|b| *b == 0x02).unwrap();
                v[at + 2] = 2;
                v
            },
            |e| matches!(e, SvidError::Version(2)),
        ),
        (
            "truncated document",
            svid::extension_value(&document[..document.len() - 200]),
            |e| matches!(e, SvidError::Document(_)),
        ),
        (
            "garbage document",
            svid::extension_value(&[0xa5; 300]),
            |e| matches!(e, SvidError::Document(_)),
        ),
    ];
    for (what, extn_value, expected) in cases {
        let cert = w.ca.attach_raw(&plain, &extn_value, false);
        let error = w
            .verifier
            .verify_attested_svid(&cert, &policy(&[&PCR0]), w.now)
            .unwrap_err();
        assert!(expected(&error), "{what}: {error}");
    }

    let critical = w.ca.attach_raw(&plain, &value, true);
    assert!(matches!(
        w.verifier
            .verify_attested_svid(&critical, &policy(&[&PCR0]), w.now),
        Err(SvidError::Critical)
    ));
    let once = w.ca.attach_raw(&plain, &value, false);
    let twice = w.ca.attach_raw(&once, &value, false);
    assert!(matches!(
        w.verifier
            .verify_attested_svid(&twice, &policy(&[&PCR0]), w.now),
        Err(SvidError::Duplicate(2))
    ));
    assert!(matches!(
        w.verifier
            .verify_attested_svid(&plain[..plain.len() - 1], &policy(&[&PCR0]), w.now),
        Err(SvidError::Certificate(_))
    ));
}

#[test]
fn attested_svid_of_another_trust_domain_is_refused() {
    let w = world();
    let other = Ca::new("other.org");
    let plain = other.svid(
        "spiffe://other.org/inference",
        &w.key,
        1,
        w.now - Duration::from_secs(60),
        w.now + Duration::from_secs(3600),
    );
    let cert = other.attach(&plain, &document_for(&w.attestor, &plain));
    let error = w
        .verifier
        .verify_attested_svid(&cert, &policy(&[&PCR0]), w.now)
        .unwrap_err();
    assert!(matches!(error, SvidError::TrustDomain { .. }), "{error}");
    // Without a trust domain in the policy, the attestation itself is sound.
    let any_domain = SvidPolicy {
        trust_domain: None,
        ..policy(&[&PCR0])
    };
    assert!(
        w.verifier
            .verify_attested_svid(&cert, &any_domain, w.now)
            .unwrap()
            .is_some()
    );
}

#[test]
fn attested_svid_expired_certificate_is_refused_at_the_verification_time() {
    let w = world();
    let cert = w.attested(1);
    let error = w
        .verifier
        .verify_attested_svid(&cert, &policy(&[&PCR0]), w.now + Duration::from_secs(7200))
        .unwrap_err();
    assert!(matches!(error, SvidError::NotValidAt { .. }), "{error}");
}

#[test]
fn attested_svid_document_age_is_measured_at_the_verification_time() {
    let w = world();
    let cert = w.attested(1);
    let fresh = SvidPolicy {
        document: Policy {
            max_age: Some(Duration::from_secs(600)),
            ..policy(&[&PCR0]).document
        },
        ..policy(&[&PCR0])
    };
    assert!(
        w.verifier
            .verify_attested_svid(&cert, &fresh, w.now)
            .is_ok()
    );
    let error = w
        .verifier
        .verify_attested_svid(&cert, &fresh, w.now + Duration::from_secs(1800))
        .unwrap_err();
    assert!(
        matches!(error, SvidError::Document(Error::TooOld { .. })),
        "{error}"
    );
}

/// A real AWS-signed document (`../shared/fixtures`) in a certificate: the free function
/// pins the AWS root, the chain verifies at the document's own time, and the document
/// (made for something else, `user_data` null) is refused as not bound.
#[test]
fn attested_svid_with_a_real_aws_document_verifies_the_chain_and_refuses_the_binding() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/nitro/2025-01-06-nitro-attest-fixture.cose");
    let document = std::fs::read(&path).unwrap();
    let made = SystemTime::UNIX_EPOCH + Duration::from_millis(1_736_179_625_472);
    let ca = Ca::new("example.org");
    let key = KeyPair::generate().unwrap();
    let plain = ca.svid(
        "spiffe://example.org/inference",
        &key,
        1,
        made - Duration::from_secs(60),
        made + Duration::from_secs(24 * 3600),
    );
    let cert = ca.attach(&plain, &document);
    // Twenty hours later the document's chain (three hours) has expired, and is still
    // checked at the document's time: the refusal is the binding, not the chain.
    let at = made + Duration::from_secs(20 * 3600);
    let error = enclaveid_attestor::verify_attested_svid(&cert, &policy(&[&PCR0]), at).unwrap_err();
    assert!(
        matches!(error, SvidError::NotBound { ref got, .. } if got == "absent"),
        "{error}"
    );
    // Pinned to another root, the same document is refused at the root.
    let error = world()
        .verifier
        .verify_attested_svid(&cert, &policy(&[&PCR0]), at)
        .unwrap_err();
    assert!(
        matches!(error, SvidError::Document(Error::UntrustedRoot { .. })),
        "{error}"
    );
}
