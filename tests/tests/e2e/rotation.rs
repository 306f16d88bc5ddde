//! Rotation at half-life reaches open streams without a reconnect.

use std::time::Duration;

use enclaveid_tests::{AgentProcess, euid};
use futures_util::StreamExt as _;
use spiffe::workload_api::WorkloadApiClient;

use super::config;

/// An agent with one entry for us (`extra` added to it), an open X.509 stream, and its
/// first context.
async fn agent_with_stream(
    path: &str,
    extra: &str,
) -> (
    AgentProcess,
    impl futures_util::Stream<Item = Result<spiffe::X509Context, spiffe::WorkloadApiError>> + Unpin,
    spiffe::X509Context,
) {
    let agent = AgentProcess::start(&config(
        "1h",
        &[(path, &format!("\"unix:uid:{}\"", euid()), extra)],
    ));
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut updates = Box::pin(client.stream_x509_contexts().await.unwrap());
    let first = updates.next().await.unwrap().unwrap();
    (agent, updates, first)
}

#[tokio::test]
async fn a_five_second_svid_rotates_on_the_open_stream_with_overlapping_validity() {
    let (_agent, mut updates, first) = agent_with_stream("short", "ttl = \"5s\"").await;
    let old = x509(first.svids()[0].leaf().as_bytes());
    // Half of 5 s, ±10 %, is at most 2.75 s; allow for a slow machine.
    let second = tokio::time::timeout(Duration::from_secs(10), updates.next())
        .await
        .expect("no rotation within 10 s")
        .unwrap()
        .unwrap();
    let new = x509(second.svids()[0].leaf().as_bytes());

    assert_ne!(new.serial, old.serial, "a new certificate");
    assert_eq!(second.svids()[0].spiffe_id(), first.svids()[0].spiffe_id());
    assert_ne!(
        second.svids()[0].private_key().as_bytes(),
        first.svids()[0].private_key().as_bytes(),
        "a new key"
    );
    assert!(
        new.not_before <= old.not_after,
        "validity overlaps: the old SVID is still valid when the new one arrives"
    );
    assert!(new.not_after > old.not_after);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        old.not_after >= now,
        "the new SVID arrived before the old one expired"
    );
    // Bundle unchanged across an SVID rotation.
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    assert_eq!(
        first.bundle_set().get(&td).unwrap().authorities(),
        second.bundle_set().get(&td).unwrap().authorities()
    );
}

#[tokio::test]
async fn sigusr1_forces_a_rotation_on_the_open_stream() {
    let (agent, mut updates, first) = agent_with_stream("hup", "").await;
    let old = x509(first.svids()[0].leaf().as_bytes());

    agent.renew();
    // An hour-long SVID would not rotate for 30 minutes: only the signal explains this.
    let second = tokio::time::timeout(Duration::from_secs(10), updates.next())
        .await
        .expect("no rotation within 10 s of SIGUSR1")
        .unwrap()
        .unwrap();
    let new = x509(second.svids()[0].leaf().as_bytes());
    assert_ne!(new.serial, old.serial, "a new certificate");
    assert!(
        agent
            .stderr_text()
            .contains("renewing every X.509-SVID now")
    );
}

struct Validity {
    serial: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

fn x509(der: &[u8]) -> Validity {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    Validity {
        serial: cert.raw_serial().to_vec(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    }
}
