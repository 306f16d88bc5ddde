//! Live reload of the configuration: `SIGHUP` re-reads the file
//! (`cargo test --workspace -- config_reload`); `SIGUSR1` forces a rotation (in
//! `rotation.rs`).

use std::process::Command;
use std::time::{Duration, Instant};

use enclaveid_tests::{AgentProcess, euid};

use super::config;

/// The serials of a response's SVIDs, by SPIFFE ID.
fn serials(
    response: &enclaveid_workload_api::proto::X509svidResponse,
) -> std::collections::BTreeMap<String, String> {
    response
        .svids
        .iter()
        .map(|s| {
            let (_, cert) = x509_parser::parse_x509_certificate(&s.x509_svid).unwrap();
            (s.spiffe_id.clone(), cert.raw_serial_as_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_keeps_unchanged_identities_and_refuses_a_bad_file() {
    use enclaveid_tests::{open_stream, raw_client, with_header};
    use enclaveid_workload_api::proto::X509svidRequest;
    let me = format!("\"unix:uid:{}\"", euid());
    let agent = AgentProcess::start(&config("1h", &[("kept", &me, ""), ("removed", &me, "")]));
    let mut client = raw_client(agent.socket()).await;
    let (first, mut stream) =
        open_stream(client.fetch_x509svid(with_header(X509svidRequest {}))).await;
    let before = serials(&first);
    assert_eq!(before.len(), 2);

    // Added and removed on the open stream; the unchanged identity keeps its SVID.
    std::fs::write(
        agent.config_path(),
        config("1h", &[("kept", &me, ""), ("added", &me, "")])
            .replace("{socket}", &agent.socket().display().to_string()),
    )
    .unwrap();
    agent.reload();
    let next = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = stream.message().await.unwrap().unwrap();
            if serials(&message).contains_key("spiffe://example.org/added") {
                return message;
            }
        }
    })
    .await
    .expect("the added identity within 10 s");
    let after = serials(&next);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        ["spiffe://example.org/added", "spiffe://example.org/kept"]
    );
    assert_eq!(
        after["spiffe://example.org/kept"], before["spiffe://example.org/kept"],
        "the unchanged identity keeps its SVID"
    );

    // A file that fails validation: refused, one line naming the key and the value; the
    // running configuration stays; health says so.
    std::fs::write(
        agent.config_path(),
        config("1h", &[("kept", "\"unix:uid:nobody\"", "")])
            .replace("{socket}", &agent.socket().display().to_string()),
    )
    .unwrap();
    agent.reload();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.stderr_text().contains("configuration reload refused") {
        assert!(Instant::now() < deadline, "{}", agent.stderr_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = agent
        .stderr_text()
        .lines()
        .find(|l| l.contains("configuration reload refused"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("entry[0].selectors[0]") && line.contains("unix:uid:nobody"),
        "{line}"
    );
    let health = Command::new(enclaveid_tests::enclaveid_bin())
        .args(["healthcheck", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    let health = String::from_utf8_lossy(&health.stderr);
    assert!(health.contains("configuration reload refused"), "{health}");
    let still = enclaveid_tests::fetch_x509(agent.socket()).await.unwrap();
    assert_eq!(serials(&still), after, "the running configuration stays");

    // The last identity of a caller removed: its stream ends with PermissionDenied.
    std::fs::write(
        agent.config_path(),
        config("1h", &[("other", "\"unix:uid:65534\"", "")])
            .replace("{socket}", &agent.socket().display().to_string()),
    )
    .unwrap();
    agent.reload();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends within 10 s");
    assert_eq!(ended.unwrap_err().code(), tonic::Code::PermissionDenied);
    let health = Command::new(enclaveid_tests::enclaveid_bin())
        .args(["healthcheck", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&health.stderr).contains("reload refused"),
        "a good reload clears the reason"
    );
}
