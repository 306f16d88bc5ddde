//! The verifier on real AWS-signed documents (`../shared/fixtures/nitro/`), and on every
//! way of breaking one; the fake attestor against the real format.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ciborium::Value;
use enclaveid_attestor::{
    AttestationRequest, Attestor, Error, FakeAttestor, FakeConfig, Payload, Policy, Verifier,
    VerifyAt, hex,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/nitro")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const PRODUCTION: &str = "2025-01-06-nitro-attest-fixture.cose";
const DEBUG: &str = "2022-10-12-evervault-beta-debug.cose";
const PRODUCTION_PCR0: &str = "8bb159f202bb95d6d4d98e0e103918246cea734f1d57cd263e4fd56075ed53f6fa8c68854817a32749a241e11874c26b";

fn debug_allowed() -> Policy {
    Policy {
        allow_debug: true,
        ..Policy::default()
    }
}

/// The four COSE_Sign1 elements of a document.
fn elements(document: &[u8]) -> Vec<Value> {
    match ciborium::from_reader::<Value, _>(document).unwrap() {
        Value::Array(items) => items,
        Value::Tag(18, inner) => match *inner {
            Value::Array(items) => items,
            _ => panic!("not an array"),
        },
        _ => panic!("not an array"),
    }
}

fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

fn payload_bytes(document: &[u8]) -> Vec<u8> {
    match &elements(document)[2] {
        Value::Bytes(b) => b.clone(),
        _ => panic!("payload is not bytes"),
    }
}

/// The document with its payload map edited (which breaks the signature, so what is
/// checked before the signature must catch the edit).
fn with_payload(document: &[u8], edit: impl FnOnce(&mut Vec<(Value, Value)>)) -> Vec<u8> {
    let mut items = elements(document);
    let Value::Map(mut map) =
        ciborium::from_reader::<Value, _>(payload_bytes(document).as_slice()).unwrap()
    else {
        panic!("payload is not a map");
    };
    edit(&mut map);
    items[2] = Value::Bytes(encode(&Value::Map(map)));
    encode(&Value::Array(items))
}

type PayloadEdit = dyn Fn(&mut Vec<(Value, Value)>);

fn entry<'a>(map: &'a mut [(Value, Value)], key: &str) -> &'a mut Value {
    &mut map
        .iter_mut()
        .find(|(k, _)| *k == Value::Text(key.into()))
        .unwrap()
        .1
}

#[test]
fn both_real_documents_verify_at_their_own_time() {
    let verifier = Verifier::aws();
    let production = verifier
        .verify(
            &fixture(PRODUCTION),
            &Policy::default(),
            VerifyAt::DocumentTime,
        )
        .unwrap();
    assert_eq!(
        production.module_id,
        "i-0bee92034f3d60691-enc01943c5eaab3ad6a"
    );
    assert_eq!(hex(&production.pcrs[&0]), PRODUCTION_PCR0);
    assert_eq!(production.pcrs.len(), 16);
    assert!(production.pcrs.values().all(|v| v.len() == 48));
    assert!(production.pcrs[&8].iter().all(|b| *b == 0));
    assert!(!production.debug_mode);
    assert_eq!(
        production.timestamp,
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_736_179_625_472)
    );
    let key = production.public_key.as_ref().unwrap();
    assert_eq!(key.len(), 294);
    assert_eq!(
        hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key).as_ref()),
        "3648751d0dae73d58bc66db3a58f8b97aec39bc26d94b677f3fd56f79178fc59"
    );
    assert_eq!(production.user_data, None);
    assert_eq!(production.nonce, None);

    let debug = verifier
        .verify(&fixture(DEBUG), &debug_allowed(), VerifyAt::DocumentTime)
        .unwrap();
    assert!(debug.debug_mode);
    assert_eq!(debug.module_id, "i-03ad7cdb817437eeb-enc0183cc7569b3f6e1");
    assert_eq!(
        debug.public_key.as_deref(),
        Some(&b"my super secret key"[..])
    );
    assert_eq!(debug.user_data.as_deref(), Some(&b"hello, world!"[..]));
}

#[test]
fn the_embedded_root_is_the_fixture_root() {
    let pem = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/nitro/aws-nitro-root-g1.pem"),
    )
    .unwrap();
    assert_eq!(pem.trim(), enclaveid_attestor::AWS_NITRO_ROOT_G1_PEM.trim());
    assert_eq!(
        hex(&Verifier::aws().root_sha256()).to_uppercase(),
        "641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B"
    );
}

#[test]
fn debug_mode_is_refused_unless_allowed() {
    let error = Verifier::aws()
        .verify(&fixture(DEBUG), &Policy::default(), VerifyAt::DocumentTime)
        .unwrap_err();
    assert!(matches!(error, Error::DebugMode), "{error}");
}

#[test]
fn both_real_documents_are_refused_now_because_the_chain_expired() {
    for (name, policy) in [(PRODUCTION, Policy::default()), (DEBUG, debug_allowed())] {
        let error = Verifier::aws()
            .verify(&fixture(name), &policy, VerifyAt::Time(SystemTime::now()))
            .unwrap_err();
        assert!(matches!(error, Error::Expired { .. }), "{name}: {error}");
        assert!(error.to_string().contains("expired at"), "{error}");
    }
}

#[test]
fn every_single_bit_flip_in_the_signature_is_refused() {
    let document = fixture(PRODUCTION);
    let mut items = elements(&document);
    let Value::Bytes(signature) = items[3].clone() else {
        panic!()
    };
    assert_eq!(signature.len(), 96);
    for bit in 0..signature.len() * 8 {
        let mut flipped = signature.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        items[3] = Value::Bytes(flipped);
        let error = Verifier::aws()
            .verify(
                &encode(&Value::Array(items.clone())),
                &Policy::default(),
                VerifyAt::DocumentTime,
            )
            .unwrap_err();
        assert!(matches!(error, Error::Signature), "bit {bit}: {error}");
    }
}

#[test]
fn a_changed_pcr_byte_breaks_the_signature() {
    let document = fixture(PRODUCTION);
    let tampered = with_payload(&document, |map| {
        let Value::Map(pcrs) = entry(map, "pcrs") else {
            panic!()
        };
        let Value::Bytes(pcr0) = &mut pcrs[0].1 else {
            panic!()
        };
        pcr0[0] ^= 0x01;
    });
    let error = Verifier::aws()
        .verify(&tampered, &Policy::default(), VerifyAt::DocumentTime)
        .unwrap_err();
    assert!(matches!(error, Error::Signature), "{error}");
}

#[test]
fn a_reordered_cabundle_is_refused() {
    let document = fixture(PRODUCTION);
    let swap = |i: usize, j: usize| {
        with_payload(&document, |map| {
            let Value::Array(bundle) = entry(map, "cabundle") else {
                panic!()
            };
            bundle.swap(i, j);
        })
    };
    let error = Verifier::aws()
        .verify(&swap(0, 1), &Policy::default(), VerifyAt::DocumentTime)
        .unwrap_err();
    assert!(matches!(error, Error::UntrustedRoot { .. }), "{error}");
    let error = Verifier::aws()
        .verify(&swap(1, 2), &Policy::default(), VerifyAt::DocumentTime)
        .unwrap_err();
    assert!(matches!(error, Error::Chain(_)), "{error}");
    let reversed = with_payload(&document, |map| {
        let Value::Array(bundle) = entry(map, "cabundle") else {
            panic!()
        };
        bundle.reverse();
    });
    let error = Verifier::aws()
        .verify(&reversed, &Policy::default(), VerifyAt::DocumentTime)
        .unwrap_err();
    assert!(
        matches!(error, Error::UntrustedRoot { .. }),
        "leaf-first order is refused: {error}"
    );
}

#[test]
fn a_chain_to_another_root_is_refused() {
    let fake = FakeAttestor::new(FakeConfig::default()).unwrap();
    let document = fake.attest(&AttestationRequest::default()).unwrap();
    let error = Verifier::aws()
        .verify(
            &document,
            &Policy::default(),
            VerifyAt::Time(SystemTime::now()),
        )
        .unwrap_err();
    assert!(matches!(error, Error::UntrustedRoot { .. }), "{error}");

    // A real document whose cabundle root is replaced by the fake root: pinned root
    // matches the fake, but the chain does not.
    let real = fixture(PRODUCTION);
    let grafted = with_payload(&real, |map| {
        let Value::Array(bundle) = entry(map, "cabundle") else {
            panic!()
        };
        bundle[0] = Value::Bytes(fake.root_der().to_vec());
    });
    let error = Verifier::with_root_der(fake.root_der())
        .verify(&grafted, &Policy::default(), VerifyAt::DocumentTime)
        .unwrap_err();
    assert!(matches!(error, Error::Chain(_)), "{error}");
}

#[test]
fn every_truncation_is_refused_without_panic() {
    let document = fixture(PRODUCTION);
    for len in 0..document.len() {
        let error = Verifier::aws()
            .verify(&document[..len], &Policy::default(), VerifyAt::DocumentTime)
            .unwrap_err();
        assert!(matches!(error, Error::Malformed(_)), "{len}: {error}");
    }
    let mut trailing = document.clone();
    trailing.push(0);
    let error = Verifier::aws()
        .verify(&trailing, &Policy::default(), VerifyAt::DocumentTime)
        .unwrap_err();
    assert!(matches!(error, Error::Malformed(_)), "{error}");
}

#[test]
fn missing_or_mistyped_payload_fields_are_refused_by_name() {
    let document = fixture(PRODUCTION);
    let cases: Vec<(&str, Box<PayloadEdit>)> = vec![
        (
            "pcrs",
            Box::new(|m| m.retain(|(k, _)| *k != Value::Text("pcrs".into()))),
        ),
        (
            "certificate",
            Box::new(|m| m.retain(|(k, _)| *k != Value::Text("certificate".into()))),
        ),
        (
            "module_id",
            Box::new(|m| *entry(m, "module_id") = Value::Integer(7.into())),
        ),
        (
            "digest",
            Box::new(|m| *entry(m, "digest") = Value::Text("SHA256".into())),
        ),
        (
            "timestamp",
            Box::new(|m| *entry(m, "timestamp") = Value::Text("yesterday".into())),
        ),
        (
            "cabundle",
            Box::new(|m| *entry(m, "cabundle") = Value::Array(vec![])),
        ),
        (
            "user_data",
            Box::new(|m| *entry(m, "user_data") = Value::Bytes(vec![0; 513])),
        ),
        (
            "nonce",
            Box::new(|m| *entry(m, "nonce") = Value::Integer(1.into())),
        ),
        (
            "pcrs",
            Box::new(|m| {
                let Value::Map(pcrs) = entry(m, "pcrs") else {
                    panic!()
                };
                pcrs[0].1 = Value::Bytes(vec![0; 47]);
            }),
        ),
    ];
    for (field, edit) in cases {
        let edited = with_payload(&document, |map| edit(map));
        let error = Verifier::aws()
            .verify(&edited, &Policy::default(), VerifyAt::DocumentTime)
            .unwrap_err();
        match &error {
            Error::Payload { field: got, .. } => assert_eq!(*got, field, "{error}"),
            other => panic!("{field}: {other}"),
        }
    }
}

#[test]
fn oversized_documents_are_refused_before_parsing() {
    let error = Verifier::aws()
        .verify(
            &vec![0x41; 2 * 1024 * 1024],
            &Policy::default(),
            VerifyAt::DocumentTime,
        )
        .unwrap_err();
    assert!(
        matches!(error, Error::TooLarge { len: 2_097_152, .. }),
        "{error}"
    );
}

#[test]
fn tagged_and_indefinite_length_encodings_are_accepted() {
    let document = fixture(PRODUCTION);
    // COSE tag 18 around the array.
    let mut tagged = vec![0xd2];
    tagged.extend_from_slice(&document);
    Verifier::aws()
        .verify(&tagged, &Policy::default(), VerifyAt::DocumentTime)
        .unwrap();
    // The outer array as indefinite-length (not covered by the signature).
    assert_eq!(document[0], 0x84);
    let mut indefinite = vec![0x9f];
    indefinite.extend_from_slice(&document[1..]);
    indefinite.push(0xff);
    Verifier::aws()
        .verify(&indefinite, &Policy::default(), VerifyAt::DocumentTime)
        .unwrap();
    // The payload map as indefinite-length parses to the same payload.
    let payload = payload_bytes(&document);
    assert_eq!(payload[0], 0xa9, "a definite map of 9");
    let mut indefinite = vec![0xbf];
    indefinite.extend_from_slice(&payload[1..]);
    indefinite.push(0xff);
    assert_eq!(
        Payload::parse(&indefinite).unwrap(),
        Payload::parse(&payload).unwrap()
    );
}

#[test]
fn policy_refusals_name_what_was_wrong() {
    let document = fixture(PRODUCTION);
    let verify = |policy: Policy| {
        Verifier::aws()
            .verify(&document, &policy, VerifyAt::DocumentTime)
            .unwrap_err()
    };

    let error = verify(Policy {
        pcrs: [(0, vec![vec![0xa1; 48]])].into(),
        ..Policy::default()
    });
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "PCR0 mismatch: got {PRODUCTION_PCR0}, allowed [\"a1a1"
        )),
        "{message}"
    );

    let error = verify(Policy {
        nonce: Some(b"n".to_vec()),
        ..Policy::default()
    });
    assert!(
        matches!(error, Error::Mismatch { field: "nonce", .. }),
        "{error}"
    );

    // An allowed PCR0 among others passes.
    let pcr0 = (0..PRODUCTION_PCR0.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&PRODUCTION_PCR0[i..i + 2], 16).unwrap())
        .collect();
    Verifier::aws()
        .verify(
            &document,
            &Policy {
                pcrs: [(0, vec![vec![1; 48], pcr0])].into(),
                ..Policy::default()
            },
            VerifyAt::DocumentTime,
        )
        .unwrap();

    // Age is measured against the verification time.
    let fake = FakeAttestor::new(FakeConfig::default()).unwrap();
    let made = SystemTime::now() - Duration::from_secs(600);
    let old = fake
        .attest_at(&AttestationRequest::default(), made)
        .unwrap();
    let verifier = Verifier::with_root_der(fake.root_der());
    let policy = Policy {
        max_age: Some(Duration::from_secs(300)),
        ..Policy::default()
    };
    let error = verifier
        .verify(&old, &policy, VerifyAt::Time(SystemTime::now()))
        .unwrap_err();
    assert!(matches!(error, Error::TooOld { .. }), "{error}");
}

/// The fake's documents have the real documents' structure, field by field.
#[test]
fn the_fake_matches_the_real_format() {
    let real = fixture(PRODUCTION);
    let fake = FakeAttestor::new(FakeConfig::default()).unwrap();
    let request = AttestationRequest {
        public_key: Some(vec![7; 294]),
        ..Default::default()
    };
    let made = fake.attest(&request).unwrap();

    assert_eq!(real[0], 0x84, "real documents are untagged arrays of 4");
    assert_eq!(made[0], real[0]);
    let (real_items, made_items) = (elements(&real), elements(&made));
    assert_eq!(made_items[0], real_items[0], "protected header {{1: -35}}");
    assert_eq!(made_items[1], Value::Map(vec![]));
    assert_eq!(real_items[1], Value::Map(vec![]));
    let (Value::Bytes(real_sig), Value::Bytes(made_sig)) = (&real_items[3], &made_items[3]) else {
        panic!()
    };
    assert_eq!((real_sig.len(), made_sig.len()), (96, 96));

    let map = |doc: &[u8]| match ciborium::from_reader::<Value, _>(payload_bytes(doc).as_slice())
        .unwrap()
    {
        Value::Map(m) => m,
        _ => panic!(),
    };
    let (real_map, made_map) = (map(&real), map(&made));
    let keys = |m: &[(Value, Value)]| m.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(
        keys(&made_map),
        keys(&real_map),
        "same keys in the same order"
    );
    for ((key, real_value), (_, made_value)) in real_map.iter().zip(&made_map) {
        assert_eq!(
            std::mem::discriminant(made_value),
            std::mem::discriminant(real_value),
            "type of {key:?}"
        );
    }
    let real_payload = Payload::parse(&payload_bytes(&real)).unwrap();
    let made_payload = Payload::parse(&payload_bytes(&made)).unwrap();
    assert_eq!(made_payload.digest, real_payload.digest);
    assert_eq!(
        made_payload.pcrs.keys().collect::<Vec<_>>(),
        real_payload.pcrs.keys().collect::<Vec<_>>()
    );
    assert!(made_payload.pcrs.values().all(|v| v.len() == 48));
    assert_eq!(
        made_payload.cabundle.len(),
        real_payload.cabundle.len(),
        "root and three intermediates"
    );
    for payload in [&real_payload, &made_payload] {
        let (_, root) = x509_parser::parse_x509_certificate(&payload.cabundle[0]).unwrap();
        assert_eq!(root.subject(), root.issuer(), "cabundle is root first");
        let (_, leaf) = x509_parser::parse_x509_certificate(&payload.certificate).unwrap();
        let (_, last) =
            x509_parser::parse_x509_certificate(payload.cabundle.last().unwrap()).unwrap();
        assert_eq!(
            leaf.issuer(),
            last.subject(),
            "the last cabundle entry issues the leaf"
        );
        let lifetime =
            leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert!(
            (3 * 3600..=3 * 3600 + 10).contains(&lifetime),
            "leaves live three hours: {lifetime}"
        );
    }
    assert_eq!(made_payload.public_key, request.public_key);
    assert_eq!(made_payload.user_data, None);

    // Debug mode zeroes the PCRs, as NSM reports.
    let debug = FakeAttestor::new(FakeConfig {
        debug: true,
        ..FakeConfig::default()
    })
    .unwrap();
    let document = debug.attest(&AttestationRequest::default()).unwrap();
    let verifier = Verifier::with_root_der(debug.root_der());
    let error = verifier
        .verify(
            &document,
            &Policy::default(),
            VerifyAt::Time(SystemTime::now()),
        )
        .unwrap_err();
    assert!(matches!(error, Error::DebugMode));
}

#[test]
fn requests_over_nsm_limits_are_refused_before_attesting() {
    let fake = FakeAttestor::new(FakeConfig::default()).unwrap();
    for (request, field) in [
        (
            AttestationRequest {
                public_key: Some(vec![0; 1025]),
                ..Default::default()
            },
            "public_key",
        ),
        (
            AttestationRequest {
                user_data: Some(vec![0; 513]),
                ..Default::default()
            },
            "user_data",
        ),
        (
            AttestationRequest {
                nonce: Some(vec![0; 513]),
                ..Default::default()
            },
            "nonce",
        ),
    ] {
        let error = fake.attest(&request).unwrap_err();
        assert!(
            matches!(error, Error::RequestTooLarge { field: f, .. } if f == field),
            "{error}"
        );
    }
}

mod round_trip {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// Whatever a fake document binds comes back out of the verifier unchanged, with
        /// the configured PCRs.
        #[test]
        fn fake_documents_verify_and_round_trip(
            public_key in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..=1024)),
            user_data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=512)),
            nonce in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=512)),
            pcr0 in proptest::collection::vec(1u8..=255, 48),
        ) {
            let fake = FakeAttestor::new(FakeConfig { pcrs: [(0, pcr0.clone())].into(), ..FakeConfig::default() }).unwrap();
            let request = AttestationRequest { public_key: public_key.clone(), user_data: user_data.clone(), nonce: nonce.clone() };
            let document = fake.attest(&request).unwrap();
            let policy = Policy { pcrs: [(0, vec![pcr0.clone()])].into(), nonce: nonce.clone(), ..Policy::default() };
            let verified = Verifier::with_root_der(fake.root_der())
                .verify(&document, &policy, VerifyAt::Time(SystemTime::now()))
                .unwrap();
            prop_assert_eq!(verified.public_key, public_key);
            prop_assert_eq!(verified.user_data, user_data);
            prop_assert_eq!(verified.nonce, nonce);
            prop_assert_eq!(&verified.pcrs[&0], &pcr0);
        }
    }
}
