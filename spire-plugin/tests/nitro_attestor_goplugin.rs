//! The binary as a go-plugin host (SPIRE's catalog) sees it: the magic cookie, the
//! handshake line, health, Init, Config, the order of the attestation messages, and
//! Shutdown through the controller. The tests with the real SPIRE are in
//! `tests/tests/nitro_attestor.rs`.

#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enclaveid_spire_plugin::proto::config::config_client::ConfigClient;
use enclaveid_spire_plugin::proto::config::{ConfigureRequest, CoreConfiguration, ValidateRequest};
use enclaveid_spire_plugin::proto::goplugin::Empty;
use enclaveid_spire_plugin::proto::goplugin::grpc_controller_client::GrpcControllerClient;
use enclaveid_spire_plugin::proto::init::InitRequest;
use enclaveid_spire_plugin::proto::init::init_client::InitClient;
use enclaveid_spire_plugin::proto::server_nodeattestor::node_attestor_client::NodeAttestorClient;
use enclaveid_spire_plugin::proto::server_nodeattestor::{
    AttestRequest, attest_request, attest_response,
};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_enclaveid-nitro-attestor");

fn plugin(mode: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg(mode)
        .env_remove("NodeAttestor")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[test]
fn nitro_attestor_run_by_hand_says_it_is_a_plugin() {
    let output = plugin("server", &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout, which is the handshake channel"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("this binary is a SPIRE plugin"), "{stderr}");

    let output = plugin(
        "server",
        &[
            ("NodeAttestor", "NodeAttestor"),
            ("PLUGIN_PROTOCOL_VERSIONS", "2,3"),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"2,3\"") && stderr.contains("speaks 1"),
        "{stderr}"
    );
}

struct Running {
    child: Child,
    socket: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(mode: &str, socket_dir: &std::path::Path) -> Running {
    let mut child = plugin(
        mode,
        &[
            ("NodeAttestor", "NodeAttestor"),
            ("PLUGIN_PROTOCOL_VERSIONS", "1"),
            ("PLUGIN_UNIX_SOCKET_DIR", socket_dir.to_str().unwrap()),
        ],
    )
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let parts: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(parts.len(), 6, "{line:?}");
    assert_eq!(&parts[..3], ["1", "1", "unix"], "{line:?}");
    assert_eq!(&parts[4..], ["grpc", ""], "{line:?}");
    let socket = PathBuf::from(parts[3]);
    assert!(socket.starts_with(socket_dir), "{line:?}");
    Running { child, socket }
}

#[tokio::test]
async fn nitro_attestor_speaks_go_plugin_and_the_sdk_services() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = start("server", dir.path());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&running.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let channel = enclaveid_workload_api::connect_unix(&running.socket)
        .await
        .unwrap();

    // go-plugin's health check, as the client's Ping.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "plugin".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The SDK's Init names the services SPIRE binds to.
    let names = InitClient::new(channel.clone())
        .init(InitRequest {
            host_service_names: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .plugin_service_names;
    assert_eq!(
        names,
        [
            "spire.plugin.server.nodeattestor.v1.NodeAttestor",
            "spire.service.common.config.v1.Config"
        ]
    );

    // Attesting before Configure is a precondition failure.
    let mut attestor = NodeAttestorClient::new(channel.clone());
    let payload = AttestRequest {
        request: Some(attest_request::Request::Payload(
            enclaveid_spire_plugin::protocol::payload(),
        )),
    };
    let early = attestor.attest(tokio_stream::iter([payload.clone()])).await;
    assert_eq!(early.unwrap_err().code(), Code::FailedPrecondition);

    // Validate reports, Configure refuses, a bad setting by name.
    let core = Some(CoreConfiguration {
        trust_domain: "example.org".into(),
    });
    let mut config = ConfigClient::new(channel.clone());
    let validated = config
        .validate(ValidateRequest {
            core_configuration: core.clone(),
            hcl_configuration: "max_age = \"never\"".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!validated.valid);
    assert!(
        validated.notes[0].contains("max_age"),
        "{:?}",
        validated.notes
    );
    let refused = config
        .configure(ConfigureRequest {
            core_configuration: core.clone(),
            hcl_configuration: "max_age = \"never\"".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    config
        .configure(ConfigureRequest {
            core_configuration: core,
            hcl_configuration: String::new(),
        })
        .await
        .unwrap();

    // The payload is answered with a 32-byte challenge; a second payload is refused.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(payload.clone()).await.unwrap();
    let mut answers = attestor
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match answers.message().await.unwrap().unwrap().response {
        Some(attest_response::Response::Challenge(challenge)) => assert_eq!(challenge.len(), 32),
        other => panic!("expected a challenge, got {other:?}"),
    }
    tx.send(payload).await.unwrap();
    let status = answers.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("second payload"), "{status:?}");

    // The host's Kill: Shutdown through the controller; the socket goes with the process.
    GrpcControllerClient::new(channel)
        .shutdown(Empty {})
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the plugin did not stop on Shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(!running.socket.exists());
}
