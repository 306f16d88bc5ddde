//! End-to-end tests: the real `enclaveid` binary, driven as users and workloads drive it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers of tests fail the test on unexpected errors"
)]

mod e2e {
    mod attest;
    mod attested_svid;
    mod cli;
    mod files;
    mod hostile;
    mod jwt;
    mod node;
    mod proxy;
    mod relay;
    mod reload;
    mod robustness;
    mod rotation;
    mod sds;
    mod supervisor;
    mod svid;
    mod telemetry;
    mod wire;

    /// A configuration with one entry, `spiffe://example.org/me`, for this process's uid.
    pub(crate) fn config_for_me() -> String {
        config(
            "1h",
            &[(
                "me",
                &format!("\"unix:uid:{}\"", enclaveid_tests::euid()),
                "",
            )],
        )
    }

    /// A configuration with one entry per `(path, selectors, extra)`; `{socket}` is filled
    /// in by `AgentProcess`.
    pub(crate) fn config(svid_ttl: &str, entries: &[(&str, &str, &str)]) -> String {
        let mut text = format!(
            "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\nsvid_ttl = \"{svid_ttl}\"\n\
             [upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n"
        );
        for (path, selectors, extra) in entries {
            text.push_str(&format!(
                "[[entry]]\nspiffe_id = \"spiffe://example.org/{path}\"\nselectors = [{selectors}]\n{extra}\n"
            ));
        }
        text
    }
}
