//! `upstream.kind = "spire"`: EnclaveID as the SPIRE agent of an enclave, against the
//! real spire-server v1.13.3 with the project's `aws_nitro` server plugin loaded, unchanged.
//! The agent attests with the fake attestor under a fake Nitro root the plugin pins.
//! Every test name contains `spire_upstream` (`cargo test --workspace -- spire_upstream`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use enclaveid_attestor::hex;
use enclaveid_tests::spire::{NITRO_PCR0, SpireServer};
use enclaveid_tests::{AgentProcess, enclaveid_bin, euid, fetch_x509, wait_for_x509svid};
use enclaveid_workload_api::proto;

use super::{GoServer, go_at, go_eventually, status_answers, stdout_of};

const TD: &str = "nitro.example";
const MODULE_ID: &str = "i-0123456789abcdef0-enc0fedcba987654321";

fn server(dir: &Path, server_extra: &str) -> SpireServer {
    SpireServer::start_nitro(dir, TD, server_extra)
}

/// An EnclaveID agent whose upstream is `server`, attesting with PCR0 `pcr0`.
fn enclave_agent(server: &SpireServer, dir: &Path, pcr0: &[u8]) -> AgentProcess {
    AgentProcess::start(&agent_config(server, dir, pcr0))
}

fn agent_config(server: &SpireServer, dir: &Path, pcr0: &[u8]) -> String {
    server.enclaveid_config(dir, MODULE_ID, pcr0, "1s")
}

fn agent_id() -> String {
    format!("spiffe://{TD}/spire/agent/aws_nitro/{MODULE_ID}")
}

/// Waits until the server lists the agent; `agent show`'s output.
fn wait_attested(server: &SpireServer, agent: &AgentProcess) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shown = server.cli(&["agent", "show", "-spiffeID", &agent_id()]);
        if shown.status.success() {
            return String::from_utf8_lossy(&shown.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not attest:\n{}\nserver:\n{}",
            agent.stderr_text(),
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `spire-server entry create` under the agent, for this uid; the entry ID.
fn create_entry(server: &SpireServer, path: &str, extra: &[&str]) -> String {
    let id = format!("spiffe://{TD}/{path}");
    let uid = format!("unix:uid:{}", euid());
    let parent = agent_id();
    let mut args = vec![
        "entry",
        "create",
        "-parentID",
        &parent,
        "-spiffeID",
        &id,
        "-selector",
        &uid,
    ];
    args.extend_from_slice(extra);
    let out = server.cli_ok(&args);
    out.lines()
        .find_map(|l| l.strip_prefix("Entry ID"))
        .map(|r| r.trim_start_matches([' ', ':']).trim().to_owned())
        .expect("an entry ID")
}

/// The first FetchX509SVID answer for which `done` holds, polled on new connections;
/// fails the test naming `what` after 30 s.
async fn fetch_until(
    agent: &AgentProcess,
    what: &str,
    done: impl Fn(&proto::X509svidResponse) -> bool,
) -> proto::X509svidResponse {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = fetch_x509(agent.socket()).await.unwrap();
            if done(&r) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}:\n{}", agent.stderr_text()))
}

fn health(agent: &AgentProcess) -> (bool, String) {
    let out = Command::new(enclaveid_bin())
        .args(["healthcheck", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_health(agent: &AgentProcess, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = health(agent);
        if ok(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {what}: last {text:?}\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn leaf(response: &proto::X509svidResponse) -> x509_parser::certificate::X509Certificate<'_> {
    x509_parser::parse_x509_certificate(&response.svids[0].x509_svid)
        .unwrap()
        .1
}

fn dns_names(response: &proto::X509svidResponse) -> Vec<String> {
    leaf(response)
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_upstream_attests_and_serves_the_servers_entries() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "");
    let agent = enclave_agent(&server, dir.path(), &NITRO_PCR0);

    // The server knows the agent under the plugin's ID, with the document's selectors.
    wait_attested(&server, &agent);
    let shown = server.cli_ok(&["agent", "show", "-spiffeID", &agent_id()]);
    for selector in [
        format!("aws_nitro:pcr0:{}", hex(&NITRO_PCR0)),
        format!("aws_nitro:module_id:{MODULE_ID}"),
    ] {
        assert!(shown.contains(&selector), "{selector} missing:\n{shown}");
    }

    // An entry created after start reaches the workload within a sync or two.
    let entry = create_entry(&server, "inference", &["-dns", "inference.internal"]);
    let first = wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    assert_eq!(first.svids[0].spiffe_id, format!("spiffe://{TD}/inference"));
    assert_eq!(dns_names(&first), ["inference.internal"]);
    assert!(!first.svids[0].bundle.is_empty());

    // A changed DNS name appears in the next SVID on the open stream.
    let mut client = enclaveid_tests::raw_client(agent.socket()).await;
    let (_, mut stream) = enclaveid_tests::open_stream(
        client.fetch_x509svid(enclaveid_tests::with_header(proto::X509svidRequest {})),
    )
    .await;
    server.cli_ok(&[
        "entry",
        "update",
        "-entryID",
        &entry,
        "-parentID",
        &agent_id(),
        "-spiffeID",
        &format!("spiffe://{TD}/inference"),
        "-selector",
        &format!("unix:uid:{}", euid()),
        "-dns",
        "inference-2.internal",
    ]);
    let changed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let next = stream.message().await.unwrap().unwrap();
            if dns_names(&next) == ["inference-2.internal"] {
                return next;
            }
        }
    })
    .await
    .expect("the new DNS name within 30 s");
    assert_ne!(
        leaf(&changed).raw_serial(),
        leaf(&first).raw_serial(),
        "a new SVID"
    );

    // An entry naming the caller's executable (read only once an entry needs it) applies
    // too, on a new connection.
    let exe = std::env::current_exe().unwrap();
    let by_path = create_entry(
        &server,
        "by-path",
        &["-selector", &format!("unix:path:{}", exe.display())],
    );
    let with_path = fetch_until(&agent, "the unix:path entry within 30 s", |r| {
        r.svids.len() == 2
    })
    .await;
    assert!(
        with_path
            .svids
            .iter()
            .any(|s| s.spiffe_id == format!("spiffe://{TD}/by-path"))
    );
    server.cli_ok(&["entry", "delete", "-entryID", &by_path]);

    // JWT-SVIDs come from the server and validate against the bundle it sent. The
    // identity is named: the deleted by-path entry may still be served for a few seconds
    // (the server reloads its entry cache every 5 s), and an empty spiffe_id would then
    // answer both, in the server's entry order.
    let jwt = client
        .fetch_jwtsvid(enclaveid_tests::with_header(proto::JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: format!("spiffe://{TD}/inference"),
        }))
        .await
        .expect("a JWT-SVID")
        .into_inner();
    let validated = client
        .validate_jwtsvid(enclaveid_tests::with_header(
            proto::ValidateJwtsvidRequest {
                audience: "db".into(),
                svid: jwt.svids[0].svid.clone(),
            },
        ))
        .await
        .expect("the server's token validates on the agent")
        .into_inner();
    assert_eq!(validated.spiffe_id, format!("spiffe://{TD}/inference"));

    // Deleting the entry ends the stream with PermissionDenied.
    server.cli_ok(&["entry", "delete", "-entryID", &entry]);
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends within 30 s");
    assert_eq!(
        ended.unwrap_err().code(),
        tonic::Code::PermissionDenied,
        "{}",
        agent.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_upstream_wrong_pcr0_is_refused_with_a_health_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "");
    let agent = enclave_agent(&server, dir.path(), &[0xba; 48]);
    let reason = wait_health(&agent, "a refusal", |t| t.contains("AttestAgent"));
    assert!(reason.contains("PermissionDenied"), "{reason}");
    assert!(
        reason.contains("PCR0 mismatch"),
        "the reason names the PCR: {reason}"
    );
    assert!(
        reason.contains("unhealthy"),
        "nothing to serve yet: {reason}"
    );
    assert!(
        !server
            .cli(&["agent", "show", "-spiffeID", &agent_id()])
            .status
            .success(),
        "not attested"
    );
    // Nothing is served, however long the agent tries.
    let status = fetch_x509(agent.socket()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_upstream_outage_keeps_serving_then_recovers_and_reattests() {
    let dir = tempfile::tempdir().unwrap();
    // Agent SVIDs of 20 s (re-attestation at about 10 s), workload SVIDs of 60 s.
    let mut server = server(
        dir.path(),
        "agent_ttl = \"20s\"\n  default_x509_svid_ttl = \"60s\"",
    );
    let agent = enclave_agent(&server, dir.path(), &NITRO_PCR0);
    wait_attested(&server, &agent);
    create_entry(&server, "gateway", &[]);
    let before = wait_for_x509svid(&agent, Duration::from_secs(30)).await;

    // Down for longer than the agent SVID lives: still serving, degraded, with a reason.
    server.stop();
    let reason = wait_health(&agent, "degraded", |t| t.contains("degraded"));
    assert!(reason.contains("SPIRE server"), "{reason}");
    let during = fetch_x509(agent.socket()).await.expect("still served");
    assert_eq!(during.svids[0].spiffe_id, before.svids[0].spiffe_id);
    tokio::time::sleep(Duration::from_secs(22)).await;

    // Retries back off (1 s, doubling to 30 s), also once the agent SVID is overdue: the
    // server is not asked in a loop.
    let retries = agent.stderr_text().matches("retry_in").count();
    assert!(
        (2..=12).contains(&retries),
        "{retries} retries in about 25 s:\n{}",
        agent.stderr_text()
    );

    // Back: the agent re-attests (its SVID expired meanwhile) and is healthy again.
    let attested = agent
        .stderr_text()
        .matches("attested to the SPIRE server")
        .count();
    server.restart();
    wait_health(&agent, "healthy", |t| t.contains("Agent is healthy"));
    assert!(
        agent
            .stderr_text()
            .matches("attested to the SPIRE server")
            .count()
            > attested,
        "a new attestation after the outage:\n{}",
        agent.stderr_text()
    );
    let after = wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    assert_eq!(after.svids[0].spiffe_id, before.svids[0].spiffe_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_upstream_federated_bundles_reach_the_entries_that_federate() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "");
    let other = enclaveid_tests::pca::TestPca::new("other.example root");
    std::fs::write(dir.path().join("other.pem"), &other.root_pem).unwrap();
    server.cli_ok(&[
        "federation",
        "create",
        "-trustDomain",
        "other.example",
        "-bundleEndpointURL",
        "https://127.0.0.1:1/bundle",
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        "spiffe://other.example/bundle-endpoint",
        "-trustDomainBundlePath",
        &dir.path().join("other.pem").display().to_string(),
        "-trustDomainBundleFormat",
        "pem",
    ]);
    let agent = enclave_agent(&server, dir.path(), &NITRO_PCR0);
    wait_attested(&server, &agent);
    create_entry(
        &server,
        "federated",
        &["-federatesWith", "spiffe://other.example"],
    );
    let response = wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    assert_eq!(
        response.federated_bundles.keys().collect::<Vec<_>>(),
        ["spiffe://other.example"]
    );

    // An entry under a node alias that matches the enclave's PCR0 applies too; it
    // federates with nothing, and another alias's entry never arrives.
    let image = format!("aws_nitro:pcr0:{}", hex(&NITRO_PCR0));
    let other_image = format!("aws_nitro:pcr0:{}", hex(&[0xee; 48]));
    for (alias, selector, workload) in [
        ("image-1c", &image, "by-image"),
        ("image-ee", &other_image, "other-image"),
    ] {
        let alias = format!("spiffe://{TD}/enclave/{alias}");
        server.cli_ok(&[
            "entry",
            "create",
            "-node",
            "-spiffeID",
            &alias,
            "-selector",
            selector,
        ]);
        server.cli_ok(&[
            "entry",
            "create",
            "-parentID",
            &alias,
            "-spiffeID",
            &format!("spiffe://{TD}/{workload}"),
            "-selector",
            &format!("unix:uid:{}", euid()),
        ]);
    }
    let both = fetch_until(&agent, "the alias's entry within 30 s", |r| {
        r.svids.len() >= 2
    })
    .await;
    let mut ids: Vec<_> = both.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            format!("spiffe://{TD}/by-image"),
            format!("spiffe://{TD}/federated")
        ]
    );
    // The caller has an identity that federates, so the bundle still reaches it.
    assert!(
        both.federated_bundles
            .contains_key("spiffe://other.example")
    );
    let expected = pem::parse(&other.root_pem).unwrap().into_contents();
    assert_eq!(
        response.federated_bundles["spiffe://other.example"].as_ref(),
        expected.as_slice()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_upstream_server_ca_rotation_sends_the_bundle_before_the_svids() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "default_x509_svid_ttl = \"20s\"");
    let agent = enclave_agent(&server, dir.path(), &NITRO_PCR0);
    wait_attested(&server, &agent);
    create_entry(&server, "rotating", &[]);
    let first = wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    let roots = |r: &proto::X509svidResponse| {
        let mut der = &r.svids[0].bundle[..];
        let mut n = 0;
        while !der.is_empty() {
            let (rest, _) = x509_parser::parse_x509_certificate(der).unwrap();
            der = rest;
            n += 1;
        }
        n
    };
    assert_eq!(roots(&first), 1);
    let issuer = |r: &proto::X509svidResponse| leaf(r).issuer().to_string();
    let old_issuer = issuer(&first);
    // A go-spiffe mTLS server on this identity, its X509Source following the rotation; a
    // client with a fresh source calls it at each step of the switch.
    let me = format!("spiffe://{TD}/rotating");
    let echo = GoServer::start(&agent.endpoint(), &me);
    let mtls_call = |step: &str| {
        let answer = tokio::task::block_in_place(|| {
            stdout_of(&go_at(
                &agent.endpoint(),
                &["call", &echo.address, &me, step],
            ))
        });
        assert_eq!(answer, format!("{me} says {step}\n"));
    };
    mtls_call("before");

    server.cli_ok(&["localauthority", "x509", "prepare"]);
    // The new authority reaches the bundle while SVIDs still chain to the old one.
    let prepared = fetch_until(&agent, "the prepared authority in the bundle", |r| {
        roots(r) == 2
    })
    .await;
    assert_eq!(issuer(&prepared), old_issuer);
    mtls_call("prepared");
    server.cli_ok(&["localauthority", "x509", "activate", "-authorityID", &{
        let shown = server.cli_ok(&["localauthority", "x509", "show"]);
        shown
            .split("Prepared X.509 authority:")
            .nth(1)
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.trim().strip_prefix("Authority ID:"))
            })
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| panic!("no prepared authority in:\n{shown}"))
    }]);
    // Every SVID served verifies against the bundle served with it, across the switch.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = fetch_x509(agent.socket()).await.unwrap();
        let chain = [rustls_pki_types::CertificateDer::from(
            r.svids[0].x509_svid.to_vec(),
        )];
        let mut bundle = Vec::new();
        let mut der = &r.svids[0].bundle[..];
        while !der.is_empty() {
            let (rest, _) = x509_parser::parse_x509_certificate(der).unwrap();
            bundle.push(rustls_pki_types::CertificateDer::from(
                der[..der.len() - rest.len()].to_vec(),
            ));
            der = rest;
        }
        enclaveid_checks::peer::verify_svid(
            &chain,
            &bundle,
            std::time::SystemTime::now(),
            enclaveid_checks::peer::Role::Client,
        )
        .expect("the SVID verifies against its bundle");
        if issuer(&r) != old_issuer {
            mtls_call("activated");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no SVID from the new authority:\n{}",
            agent.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One server; an EnclaveID agent (aws_nitro, in the "enclave") and a spire-agent
/// (join token) beside it, each with one workload entry for this uid.
fn both_agents(
    dir: &Path,
) -> (
    SpireServer,
    AgentProcess,
    enclaveid_tests::spire::SpireAgent,
) {
    let server = server(dir, "");
    let enclave = enclave_agent(&server, dir, &NITRO_PCR0);
    wait_attested(&server, &enclave);
    create_entry(&server, "enclave-workload", &[]);
    let spire_agent = server.start_agent(dir);
    server.entry_create(
        &format!("spiffe://{TD}/spire-workload"),
        &[&format!("unix:uid:{}", euid())],
        "",
    );
    go_eventually(&enclave.endpoint(), &["fetch"]);
    go_eventually(&spire_agent.endpoint(), &["fetch"]);
    (server, enclave, spire_agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_upstream_clients_see_what_spire_agent_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, enclave, spire_agent) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || both_agents(&dir)
    })
    .await
    .unwrap();
    // go-spiffe sees the same shape from both (the SPIFFE ID aside).
    let shape = |endpoint: String| {
        let out = stdout_of(&go_at(&endpoint, &["fetch"]));
        out.lines()
            .filter(|l| !l.starts_with("id "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (a, b) = tokio::task::spawn_blocking({
        let (e, s) = (enclave.endpoint(), spire_agent.endpoint());
        move || (shape(e), shape(s))
    })
    .await
    .unwrap();
    assert_eq!(a, b);
    // The status codes clients rely on are the same.
    let other = format!("spiffe://{TD}/not-mine");
    assert_eq!(
        status_answers(enclave.socket(), &other).await,
        status_answers(spire_agent.socket(), &other).await
    );
}

#[test]
fn spire_upstream_and_spire_agent_workloads_do_mtls_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, enclave, spire_agent) = both_agents(dir.path());

    let on_enclave = GoServer::start(
        &enclave.endpoint(),
        &format!("spiffe://{TD}/spire-workload"),
    );
    let answer = stdout_of(&go_at(
        &spire_agent.endpoint(),
        &[
            "call",
            &on_enclave.address,
            &format!("spiffe://{TD}/enclave-workload"),
            "from SPIRE",
        ],
    ));
    assert_eq!(
        answer,
        format!("spiffe://{TD}/enclave-workload says from SPIRE\n")
    );
    let on_spire = GoServer::start(
        &spire_agent.endpoint(),
        &format!("spiffe://{TD}/enclave-workload"),
    );
    let answer = stdout_of(&go_at(
        &enclave.endpoint(),
        &[
            "call",
            &on_spire.address,
            &format!("spiffe://{TD}/spire-workload"),
            "from EnclaveID",
        ],
    ));
    assert_eq!(
        answer,
        format!("spiffe://{TD}/spire-workload says from EnclaveID\n")
    );
}

#[test]
fn spire_upstream_insecure_bootstrap_needs_the_command_line_permission() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "");
    let config = agent_config(&server, dir.path(), &NITRO_PCR0).replace(
        &format!(
            "trust_bundle_path = \"{}\"",
            dir.path().join("spire-bundle.pem").display()
        ),
        "insecure_bootstrap = true",
    );
    let refused = AgentProcess::try_start(&config).err().expect("refused");
    assert!(
        refused.stderr_text().contains("--allow-insecure-bootstrap"),
        "{}",
        refused.stderr_text()
    );
}
