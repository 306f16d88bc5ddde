//! X.509-SVIDs fetched with the `spiffe` crate's client verify against the bundle and
//! follow the X.509-SVID profile.

use std::time::Duration;

use enclaveid_tests::{AgentProcess, euid};
use rustls_pki_types::{CertificateDer, UnixTime};
use spiffe::workload_api::WorkloadApiClient;
use x509_parser::extensions::GeneralName;

use super::config;

#[tokio::test]
async fn svids_and_bundles_reach_a_spiffe_client_and_verify() {
    let uid = euid();
    let agent = AgentProcess::start(&config(
        "1h",
        &[
            (
                "gateway",
                &format!("\"unix:uid:{uid}\""),
                "dns_names = [\"gateway.internal\"]\nhint = \"internal\"",
            ),
            ("other", "\"unix:uid:4000000\"", ""),
            (
                "inference",
                &format!(
                    "\"unix:uid:{uid}\", \"unix:gid:{}\"",
                    nix::unistd::getegid()
                ),
                "ttl = \"10m\"",
            ),
        ],
    ));
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let context = client.fetch_x509_context().await.unwrap();

    // Both matching entries, in configuration order; the first is the default.
    let ids: Vec<String> = context
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "spiffe://example.org/gateway",
            "spiffe://example.org/inference"
        ]
    );
    assert_eq!(
        context.default_svid().unwrap().spiffe_id().to_string(),
        "spiffe://example.org/gateway"
    );
    assert_eq!(context.svids()[0].hint(), Some("internal"));

    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = context
        .bundle_set()
        .get(&td)
        .expect("bundle for example.org");
    let roots: Vec<_> = bundle
        .authorities()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();

    for svid in context.svids() {
        let leaf = CertificateDer::from(svid.leaf().as_bytes().to_vec());
        let intermediates: Vec<_> = svid
            .cert_chain()
            .iter()
            .skip(1)
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let end_entity = webpki::EndEntityCert::try_from(&leaf).unwrap();
        for usage in [
            webpki::KeyUsage::server_auth(),
            webpki::KeyUsage::client_auth(),
        ] {
            end_entity
                .verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    &anchors,
                    &intermediates,
                    UnixTime::now(),
                    usage,
                    None,
                    None,
                )
                .unwrap_or_else(|e| panic!("{} does not verify: {e:?}", svid.spiffe_id()));
        }
        check_x509_svid_profile(svid.leaf().as_bytes(), &svid.spiffe_id().to_string());
    }

    let (_, gateway) =
        x509_parser::parse_x509_certificate(context.svids()[0].leaf().as_bytes()).unwrap();
    let san = gateway.subject_alternative_name().unwrap().unwrap().value;
    assert!(
        san.general_names
            .contains(&GeneralName::DNSName("gateway.internal"))
    );
    let (_, inference) =
        x509_parser::parse_x509_certificate(context.svids()[1].leaf().as_bytes()).unwrap();
    let lifetime =
        inference.validity().not_after.timestamp() - inference.validity().not_before.timestamp();
    // ttl = 10m plus the 60 s backdating of notBefore.
    assert_eq!(lifetime, 600 + 60, "the entry's ttl overrides svid_ttl");

    // The same SVID is shared by every caller's stream: a second fetch returns it.
    let again = client.fetch_x509_context().await.unwrap();
    assert_eq!(
        again.svids()[0].leaf().as_bytes(),
        context.svids()[0].leaf().as_bytes()
    );
}

/// Every rule of the X.509-SVID profile the agent promises, on the parsed leaf.
pub(crate) fn check_x509_svid_profile(der: &[u8], spiffe_id: &str) {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    assert!(rest.is_empty());
    let san = cert
        .subject_alternative_name()
        .unwrap()
        .expect("SAN present")
        .value;
    let uris: Vec<_> = san
        .general_names
        .iter()
        .filter_map(|n| {
            if let GeneralName::URI(u) = n {
                Some(*u)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(uris, [spiffe_id], "exactly one URI SAN");
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(!bc.value.ca, "cA=false");
    let ku = cert.key_usage().unwrap().expect("keyUsage present");
    assert!(ku.critical, "keyUsage critical");
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    assert!(
        !ku.value.key_encipherment(),
        "no keyEncipherment on an EC key"
    );
    let eku = cert
        .extended_key_usage()
        .unwrap()
        .expect("EKU present")
        .value;
    assert!(eku.server_auth && eku.client_auth);
    assert_eq!(
        cert.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    assert!(cert.serial.bits() > 64, "a random serial of 128 bits");
    let not_before = cert.validity().not_before.timestamp();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(not_before < now, "notBefore backdated for clock skew");
    assert!(now - not_before < Duration::from_secs(3600).as_secs() as i64);
}
