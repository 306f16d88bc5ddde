//! Node selectors: entries bound to the enclave's own attestation document.

use std::time::Duration;

use enclaveid_tests::{AgentProcess, euid};
use spiffe::workload_api::WorkloadApiClient;

fn config(attestor: &str, entries: &[(&str, String)]) -> String {
    let mut text = format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\n[upstream]\nkind = \"dev\"\n[attestor]\n{attestor}\n"
    );
    for (path, selectors) in entries {
        text.push_str(&format!(
            "[[entry]]\nspiffe_id = \"spiffe://example.org/{path}\"\nselectors = [{selectors}]\n"
        ));
    }
    text
}

#[tokio::test]
async fn entries_bound_to_pcrs_and_module_id_match_only_this_enclave() {
    let pcr0 = "a1".repeat(48);
    let other = "b2".repeat(48);
    let uid = euid();
    let agent = AgentProcess::start(&config(
        &format!("kind = \"fake\"\nmodule_id = \"i-0123-enc0456\"\npcrs = {{ 0 = \"{pcr0}\" }}"),
        &[
            (
                "this-image",
                format!("\"unix:uid:{uid}\", \"nitro:pcr0:{pcr0}\""),
            ),
            (
                "other-image",
                format!("\"unix:uid:{uid}\", \"nitro:pcr0:{other}\""),
            ),
            (
                "this-enclave",
                format!("\"unix:uid:{uid}\", \"nitro:module_id:i-0123-enc0456\""),
            ),
        ],
    ));
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let context = client.fetch_x509_context().await.unwrap();
    let ids: Vec<String> = context
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "spiffe://example.org/this-image",
            "spiffe://example.org/this-enclave"
        ]
    );
    assert!(agent.stderr_text().contains("enclave attested"));
}

#[test]
fn a_debug_mode_enclave_is_refused_unless_allowed() {
    let entries = [("me", format!("\"unix:uid:{}\"", euid()))];
    let mut refused =
        match AgentProcess::try_start(&config("kind = \"fake\"\ndebug = true", &entries)) {
            Ok(_) => panic!("a debug-mode enclave was accepted"),
            Err(agent) => agent,
        };
    let status = refused.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(64));
    assert!(
        refused.stderr_text().contains("debug mode"),
        "{}",
        refused.stderr_text()
    );

    let allowed = AgentProcess::start(&config(
        "kind = \"fake\"\ndebug = true\nallow_debug = true",
        &entries,
    ));
    assert!(
        allowed.stderr_text().contains("debug_mode=true"),
        "{}",
        allowed.stderr_text()
    );
}
