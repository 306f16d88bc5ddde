//! Envoy's SDS on the agent socket, driven with the generated client: the stream protocol
//! (`cargo test --workspace -- sds`; the comparison with spire-agent is in
//! `spire_interop/sds.rs`).

use std::time::Duration;

use enclaveid_tests::{AgentProcess, euid};
use enclaveid_workload_api::sds::proto::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
};
use enclaveid_workload_api::sds::proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use enclaveid_workload_api::sds::SECRET_TYPE_URL;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::config;

fn request(names: &[&str], last: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: last.map(|r| r.version_info.clone()).unwrap_or_default(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET_TYPE_URL.to_owned(),
        response_nonce: last.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..DiscoveryRequest::default()
    }
}

/// The next response within `within` seconds, `None` if none came.
async fn next(
    responses: &mut tonic::Streaming<DiscoveryResponse>,
    within: u64,
) -> Option<DiscoveryResponse> {
    tokio::time::timeout(Duration::from_secs(within), responses.message())
        .await
        .ok()
        .map(|m| m.unwrap().unwrap())
}

fn secret_names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|any| {
            let secret: enclaveid_workload_api::sds::proto::envoy::extensions::transport_sockets::tls::v3::Secret =
                prost::Message::decode(any.value.as_slice()).unwrap();
            secret.name
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_stream_answers_new_names_ignores_stale_nonces_and_pushes_rotations() {
    let me = format!("\"unix:uid:{}\"", euid());
    // SVIDs that outlive the test: the one push is the renewal it asks for, so that no
    // rotation can make a request's nonce stale behind its back.
    let agent = AgentProcess::start(&config("1h", &[("envoy", &me, "")]));
    let channel = enclaveid_workload_api::connect_unix(agent.socket())
        .await
        .unwrap();
    // No security header: Envoy does not send it, and SDS does not ask for it.
    let mut client = SecretDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    tx.send(request(&["default"], None)).await.unwrap();
    let mut responses = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut responses, 10).await.expect("a first answer");
    assert_eq!(secret_names(&first), ["default"]);
    assert_eq!(first.version_info, "1");
    assert_eq!(first.nonce.len(), 8);

    // A request with another nonce is stale: ignored, whatever it asks.
    let mut stale = request(&["default", "ROOTCA"], Some(&first));
    stale.response_nonce = "00000000".into();
    tx.send(stale).await.unwrap();
    // New names with the right nonce: answered at once.
    tx.send(request(&["default", "ROOTCA"], Some(&first)))
        .await
        .unwrap();
    let second = next(&mut responses, 5)
        .await
        .expect("an answer to the new names");
    assert_eq!(secret_names(&second), ["ROOTCA", "default"]);
    assert_ne!(second.nonce, first.nonce);

    // An ACK: nothing until the SVID rotates (a renewal forced with SIGUSR1), then a
    // push with a new version.
    tx.send(request(&["default", "ROOTCA"], Some(&second)))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), responses.message())
            .await
            .is_err(),
        "an answer to an ACK"
    );
    agent.renew();
    let pushed = next(&mut responses, 15)
        .await
        .expect("a push at the rotation");
    assert_ne!(pushed.version_info, second.version_info);
    assert_eq!(secret_names(&pushed), ["ROOTCA", "default"]);
    assert_ne!(
        pushed.resources[1].value, second.resources[1].value,
        "a new SVID"
    );

    // A name the caller may not have ends the stream with spire-agent's code.
    tx.send(request(&["spiffe://example.org/other"], Some(&pushed)))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::InvalidArgument);
    assert!(
        ended.message().contains("spiffe://example.org/other"),
        "{ended:?}"
    );
}
