//! Bad input on the socket and bad configuration: clear errors, and the agent keeps
//! serving what is still valid.

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use enclaveid_tests::{AgentProcess, first_x509_response, open_stream, raw_client, with_header};
use enclaveid_workload_api::proto::X509svidRequest;
use tonic::Code;

use super::{config, config_for_me};

#[tokio::test]
async fn garbage_half_open_connections_and_churn_leave_the_agent_serving() {
    let agent = AgentProcess::start(&config_for_me());

    // Garbage bytes, a truncated HTTP/2 preface, and an HTTP/1 request.
    for junk in [
        &b"\x00\xff garbage \x13\x37"[..],
        b"PRI * HTTP/2.0\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut stream = UnixStream::connect(agent.socket()).unwrap();
        let _ = stream.write_all(junk);
    }
    // Half-open connections held while others work.
    let held: Vec<_> = (0..50)
        .map(|_| UnixStream::connect(agent.socket()).unwrap())
        .collect();
    // Thousands of connect/drop cycles.
    for _ in 0..3000 {
        drop(UnixStream::connect(agent.socket()).unwrap());
    }
    // An oversized request body is refused, not buffered.
    let mut client = raw_client(agent.socket()).await;
    let huge = tonic::Request::new(enclaveid_workload_api::proto::ValidateJwtsvidRequest {
        audience: String::new(),
        svid: "x".repeat(1 << 20),
    });
    let mut huge = huge;
    huge.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let status = client.validate_jwtsvid(huge).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);

    assert_eq!(
        first_x509_response(agent.socket()).await.svids.len(),
        1,
        "still serving"
    );
    drop(held);
}

#[tokio::test]
async fn sigterm_ends_streams_removes_the_socket_and_exits_zero() {
    let mut agent = AgentProcess::start(&config_for_me());
    let mut client = raw_client(agent.socket()).await;
    let (_, mut stream) = open_stream(client.fetch_x509svid(with_header(X509svidRequest {}))).await;

    let socket = agent.socket().to_owned();
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || agent.terminate(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the agent exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "open streams do not hold the agent up"
    );
    assert!(!socket.exists(), "socket removed");
    // The open stream ended with a status clients retry on, not silently.
    match stream.message().await {
        Err(status) => assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::Cancelled | Code::Unknown
            ),
            "{status:?}"
        ),
        Ok(None) => panic!("stream ended without a status"),
        Ok(Some(_)) => panic!("a message after shutdown"),
    }
}

#[test]
fn a_second_agent_on_a_live_socket_is_refused() {
    let first = AgentProcess::start(&config("1h", &[("me", "\"unix:uid:1\"", "")]));
    let text = std::fs::read_to_string(first.dir().join("agent.toml")).unwrap();
    let mut second = match AgentProcess::try_start(&text) {
        Ok(_) => panic!("two agents on one socket"),
        Err(second) => second,
    };
    let status = second
        .wait_exit(Duration::from_secs(10))
        .expect("second agent exits");
    assert!(!status.success());
    assert!(
        second.stderr_text().contains("another agent is serving"),
        "{}",
        second.stderr_text()
    );
    assert!(
        std::os::unix::net::UnixStream::connect(first.socket()).is_ok(),
        "the first one keeps its socket"
    );
}

#[test]
fn bad_configuration_exits_64_with_one_line_naming_key_and_value() {
    let cases = [
        (
            "trust_domain = \"example.org\"",
            "trust_domain = \"EXAMPLE ORG\"",
            "trust_domain",
        ),
        (
            "spiffe_id = \"spiffe://example.org/me\"",
            "spiffe_id = \"spiffe://elsewhere.org/me\"",
            "entry[0].spiffe_id",
        ),
        (
            "\"unix:uid:1\"",
            "\"docker:label:x\"",
            "entry[0].selectors[0]",
        ),
        (
            "selectors = [\"unix:uid:1\"]",
            "selectors = []",
            "entry[0].selectors",
        ),
        ("svid_ttl = \"1h\"", "svid_ttl = \"4s\"", "svid_ttl"),
        (
            "svid_ttl = \"1h\"",
            "svid_ttl = \"1h\"\nwhat = 1",
            "unknown field `what`",
        ),
        (
            "kind = \"dev\"",
            "kind = \"dev\"\ncert_path = \"/nonexistent/ca.pem\"\nkey_path = \"/nonexistent/ca.key\"",
            "/nonexistent/ca.pem",
        ),
        ("[attestor]", "[attestor", "line"),
    ];
    let good = config("1h", &[("me", "\"unix:uid:1\"", "")]);
    for (from, to, want) in cases {
        assert!(good.contains(from), "case does not apply: {from}");
        let mut agent = match AgentProcess::try_start(&good.replacen(from, to, 1)) {
            Ok(_) => panic!("agent started with {to}"),
            Err(agent) => agent,
        };
        let status = agent.wait_exit(Duration::from_secs(10)).expect("exits");
        let stderr = agent.stderr_text();
        let line: Vec<_> = stderr
            .lines()
            .filter(|l| l.starts_with("enclaveid: "))
            .collect();
        assert_eq!(line.len(), 1, "one line for {to}: {stderr}");
        assert!(line[0].contains(want), "{to}: {}", line[0]);
        // A missing CA file is an I/O error of the operator's input: still EX_USAGE.
        assert_eq!(status.code(), Some(64), "{to}: {stderr}");
        assert!(
            !agent.socket().exists(),
            "no socket bound before the config is checked"
        );
    }
}
