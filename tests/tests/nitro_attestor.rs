//! The `aws_nitro` NodeAttestor plugins (`enclaveid-nitro-attestor`) loaded by the real
//! spire-server and spire-agent v1.13.3: the agent attests with the fake attestor (the
//! server pins the fake root), and the server refuses a replayed response, a document
//! with the wrong PCR0 and a debug-mode document, saying why in its log and in the
//! agent's exit. Every test name contains `nitro_attestor` and `spire` (`-- --skip spire`
//! skips them where Go is missing).

#![allow(clippy::expect_used, reason = "test helpers")]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use enclaveid_attestor::{FakeAttestor, FakeConfig, hex};
use enclaveid_tests::spire::{NITRO_PCR0, SpireServer, nitro_server_plugin, write_fake_nitro_root};
use enclaveid_tests::{euid, fetch_x509, nitro_attestor_bin};

const TRUST_DOMAIN: &str = "nitro.example";
const MODULE_ID: &str = "i-0123456789abcdef0-enc0123456789abcdef";
const GOOD_PCR0: [u8; 48] = NITRO_PCR0;
const BAD_PCR0: [u8; 48] = [0xba; 48];

/// The agent plugin with the fake attestor; `extra` adds `plugin_data` settings.
fn agent_plugin(dir: &Path, extra: &str) -> String {
    format!(
        r#"NodeAttestor "aws_nitro" {{
    plugin_cmd = "{bin}"
    plugin_args = ["agent"]
    plugin_data {{
      attestor = "fake"
      fake_root_cert_path = "{dir}/nitro-root.pem"
      fake_root_key_path = "{dir}/nitro-root.key"
      fake_module_id = "{MODULE_ID}"
      {extra}
    }}
  }}"#,
        bin = nitro_attestor_bin().display(),
        dir = dir.display(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn nitro_attestor_spire_agent_attests_and_its_workloads_get_svids() {
    let dir = tempfile::tempdir().unwrap();
    write_fake_nitro_root(dir.path());
    let server = SpireServer::start_with_plugins(
        dir.path(),
        TRUST_DOMAIN,
        &nitro_server_plugin(dir.path(), &GOOD_PCR0),
    );
    // A block here, a map in the server's allowed_pcrs: SPIRE re-prints either for us.
    let pcr0 = format!(
        "fake_pcrs {{\n        pcr0 = \"{}\"\n      }}",
        hex(&GOOD_PCR0)
    );
    let agent = server.spawn_agent_with(dir.path(), "", &agent_plugin(dir.path(), &pcr0));
    agent.wait_healthy(Duration::from_secs(60));

    // The server attested the agent under the documented ID, with the document's selectors.
    let agent_id = format!("spiffe://{TRUST_DOMAIN}/spire/agent/aws_nitro/{MODULE_ID}");
    let shown = server.cli_ok(&["agent", "show", "-spiffeID", &agent_id]);
    for selector in [
        format!("aws_nitro:pcr0:{}", hex(&GOOD_PCR0)),
        format!("aws_nitro:image_sha384:{}", hex(&GOOD_PCR0)),
        format!("aws_nitro:module_id:{MODULE_ID}"),
        "aws_nitro:pcr8:".to_owned(),
    ] {
        assert!(
            shown.contains(&selector),
            "{selector} missing from:\n{shown}"
        );
    }

    // A workload entry under the attested agent itself, and one under a node alias that
    // groups every enclave running this image (selector aws_nitro:pcr0:…).
    let uid = format!("unix:uid:{}", euid());
    let direct = format!("spiffe://{TRUST_DOMAIN}/inference");
    server.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        &agent_id,
        "-spiffeID",
        &direct,
        "-selector",
        &uid,
    ]);
    let alias = format!("spiffe://{TRUST_DOMAIN}/enclave/image-1c");
    let image = format!("aws_nitro:pcr0:{}", hex(&GOOD_PCR0));
    server.cli_ok(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        &alias,
        "-selector",
        &image,
    ]);
    let by_image = format!("spiffe://{TRUST_DOMAIN}/gateway");
    server.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        &alias,
        "-spiffeID",
        &by_image,
        "-selector",
        &uid,
    ]);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids: Vec<String> = match fetch_x509(agent.socket()).await {
            Ok(response) => response.svids.iter().map(|s| s.spiffe_id.clone()).collect(),
            Err(_) => Vec::new(),
        };
        if ids.contains(&direct) && ids.contains(&by_image) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workload got {ids:?}, not {direct} and {by_image}; agent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[test]
fn nitro_attestor_spire_server_refuses_replayed_wrong_pcr0_and_debug_documents() {
    let dir = tempfile::tempdir().unwrap();
    let attestor = write_fake_nitro_root(dir.path());
    let server = SpireServer::start_with_plugins(
        dir.path(),
        TRUST_DOMAIN,
        &nitro_server_plugin(dir.path(), &GOOD_PCR0),
    );

    // A genuine response to an earlier challenge, captured and replayed.
    let mut pcrs = BTreeMap::new();
    pcrs.insert(0, GOOD_PCR0.to_vec());
    let enclave = FakeAttestor::new(FakeConfig {
        pcrs,
        root: Some(attestor.root()),
        ..FakeConfig::default()
    })
    .expect("fake enclave");
    let earlier_challenge = [7u8; 32];
    let captured =
        enclaveid_spire_plugin::protocol::respond(&enclave, TRUST_DOMAIN, &earlier_challenge)
            .expect("a response");
    std::fs::write(dir.path().join("captured.json"), captured).unwrap();

    let cases = [
        (
            "replay",
            format!(
                r#"fake_replay_response_path = "{}/captured.json""#,
                dir.path().display()
            ),
            "a replayed document, or one made for another challenge",
        ),
        (
            "wrong-pcr0",
            format!(r#"fake_pcrs = {{ pcr0 = "{}" }}"#, hex(&BAD_PCR0)),
            "PCR0 mismatch",
        ),
        (
            "debug",
            "fake_debug = true".to_owned(),
            "the enclave runs in debug mode",
        ),
    ];
    for (name, extra, reason) in cases {
        let agent_dir = dir.path().join(name);
        std::fs::create_dir_all(&agent_dir).unwrap();
        let mut agent = server.spawn_agent_with(&agent_dir, "", &agent_plugin(dir.path(), &extra));
        let status = agent.wait_exit(Duration::from_secs(60));
        let agent_log = agent.log_text();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{name}: spire-agent should have failed to attest and exited, got {status:?}:\n{agent_log}"
        );
        assert!(
            agent_log.contains(reason),
            "{name}: the agent's exit should name {reason:?}:\n{agent_log}"
        );
        // SPIRE's own error line for the failed AttestAgent call.
        let server_log = server.log_text();
        assert!(
            server_log.lines().any(|line| line.contains("level=error")
                && line.contains("Nodeattestor(aws_nitro): aws_nitro attestation refused")
                && line.contains(reason)),
            "{name}: the server log should name {reason:?}:\n{server_log}"
        );
        assert!(
            agent_log.contains("aws_nitro attestation refused"),
            "{agent_log}"
        );
    }
    // None of them was registered as an agent.
    let agents = server.cli_ok(&["agent", "list"]);
    assert!(!agents.contains("aws_nitro"), "{agents}");
}
