//! JWT-SVIDs through the Workload API with the `spiffe` crate's client, validated by the
//! agent and independently with a JOSE library (`jsonwebtoken`, through
//! `spiffe::JwtSvid::parse_and_validate`) against the JWKS the agent serves.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use enclaveid_tests::{AgentProcess, euid, raw_client, with_header};
use enclaveid_workload_api::proto::{JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest};
use futures_util::StreamExt as _;
use spiffe::workload_api::WorkloadApiClient;
use spiffe::{JwtBundleSet, JwtSvid};

use super::config;

const ME: &str = "spiffe://example.org/me";

fn agent(extra: &str) -> AgentProcess {
    AgentProcess::start(&config(
        "1h",
        &[("me", &format!("\"unix:uid:{}\"", euid()), extra)],
    ))
}

async fn validate(
    agent: &AgentProcess,
    audience: &str,
    token: &str,
) -> Result<String, tonic::Status> {
    raw_client(agent.socket())
        .await
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: audience.into(),
            svid: token.into(),
        }))
        .await
        .map(|r| r.into_inner().spiffe_id)
}

fn part(token: &str, i: usize) -> serde_json::Value {
    serde_json::from_slice(&B64.decode(token.split('.').nth(i).unwrap()).unwrap()).unwrap()
}

fn forge(header: &serde_json::Value, payload: &serde_json::Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(payload.to_string()),
        B64.encode(signature)
    )
}

#[tokio::test]
async fn a_jwt_svid_validates_through_the_agent_and_with_a_jose_library() {
    let agent = agent("");
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let svid = client
        .fetch_jwt_svid(["api.example.com"], None)
        .await
        .unwrap();
    let token = svid.token().to_owned();
    assert_eq!(svid.spiffe_id().to_string(), ME);

    let header = part(&token, 0);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let payload = part(&token, 1);
    assert_eq!(payload["sub"], ME);
    assert_eq!(payload["aud"], serde_json::json!(["api.example.com"]));
    let lifetime = payload["exp"].as_u64().unwrap() - payload["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 300, "5 minutes by default");

    // Through the agent.
    let validated = client
        .validate_jwt_token("api.example.com", &token)
        .await
        .unwrap();
    assert_eq!(validated.spiffe_id().to_string(), ME);

    // Independently, against the JWKS the agent serves.
    let bundles: JwtBundleSet = client.fetch_jwt_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = bundles.get(&td).expect("a JWT bundle for example.org");
    let kid = header["kid"].as_str().unwrap();
    let authority = bundle
        .find_jwt_authority(kid)
        .expect("the token's kid is in the JWKS");
    let jwk: serde_json::Value = serde_json::from_slice(authority.jwk_json()).unwrap();
    assert_eq!(jwk["use"], "jwt-svid");
    let independent = JwtSvid::parse_and_validate(&token, &bundles, &["api.example.com"]).unwrap();
    assert_eq!(independent.spiffe_id().to_string(), ME);
    assert!(JwtSvid::parse_and_validate(&token, &bundles, &["elsewhere"]).is_err());

    // Cached per audience set: the same token again, another for another audience.
    let again = client
        .fetch_jwt_token(["api.example.com"], None)
        .await
        .unwrap();
    assert_eq!(
        again, token,
        "renewed at half-life, not signed on every call"
    );
    let other = client.fetch_jwt_token(["other"], None).await.unwrap();
    assert_ne!(other, token);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_invalid_argument() {
    let agent = agent("");
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let token = client.fetch_jwt_token(["aud"], None).await.unwrap();
    let (header, payload) = (part(&token, 0), part(&token, 1));
    let signature = B64.decode(token.split('.').nth(2).unwrap()).unwrap();

    let mut foreign_kid = header.clone();
    foreign_kid["kid"] = "not-a-key-of-ours".into();
    let mut tampered = payload.clone();
    tampered["sub"] = "spiffe://example.org/admin".into();
    let none = serde_json::json!({ "alg": "none", "typ": "JWT" });
    // HS256 keyed with the public key: the classic algorithm confusion.
    let bundle = raw_client(agent.socket())
        .await
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let jwks = bundle.bundles["spiffe://example.org"].clone();
    let mut hs256 = header.clone();
    hs256["alg"] = "HS256".into();
    let unsigned = format!(
        "{}.{}",
        B64.encode(hs256.to_string()),
        B64.encode(payload.to_string())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &jwks);
    let mac = aws_lc_rs::hmac::sign(&key, unsigned.as_bytes());

    for (token, why) in [
        (
            forge(&foreign_kid, &payload, &signature),
            "is not in the JWT bundle",
        ),
        (forge(&header, &tampered, &signature), "signature"),
        (forge(&none, &payload, &[]), "\"none\" is not allowed"),
        (
            format!("{unsigned}.{}", B64.encode(mac.as_ref())),
            "\"HS256\" is not allowed",
        ),
        ("garbage".to_owned(), "compact JWS"),
    ] {
        let status = validate(&agent, "aud", &token).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(why), "{why:?} not in {status:?}");
    }
    let status = validate(&agent, "another", &token).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("does not contain \"another\""),
        "{status:?}"
    );
    for (audience, svid, message) in [
        ("", token.as_str(), "audience must be specified"),
        ("aud", "", "svid must be specified"),
    ] {
        let status = validate(&agent, audience, svid).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), message);
    }
}

#[tokio::test]
async fn fetching_needs_an_audience_and_an_identity() {
    let agent = AgentProcess::start(&config(
        "1h",
        &[
            ("me", &format!("\"unix:uid:{}\"", euid()), ""),
            ("other", "\"unix:uid:4000000\"", ""),
        ],
    ));
    let mut client = raw_client(agent.socket()).await;
    let fetch = |audience: &[&str], spiffe_id: &str| {
        with_header(JwtsvidRequest {
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
            spiffe_id: spiffe_id.into(),
        })
    };
    let status = client.fetch_jwtsvid(fetch(&[], "")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "audience must be specified");
    let status = client
        .fetch_jwtsvid(fetch(&["a"], "spiffe://example.org/other"))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::PermissionDenied,
        "not this caller's identity"
    );
    let svids = client
        .fetch_jwtsvid(fetch(&["a"], ME))
        .await
        .unwrap()
        .into_inner()
        .svids;
    assert_eq!(svids.len(), 1);
    assert_eq!(svids[0].spiffe_id, ME);

    let nobody = AgentProcess::start(&config("1h", &[("other", "\"unix:uid:4000000\"", "")]));
    let mut client = raw_client(nobody.socket()).await;
    let status = client.fetch_jwtsvid(fetch(&["a"], "")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "no identity issued");
    let status = client
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn after_a_key_rotation_old_tokens_validate_until_they_expire() {
    // Long enough for the checks below on a slow machine; the test then waits for it.
    let agent = agent("jwt_ttl = \"15s\"");
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut bundles = client.stream_jwt_bundles().await.unwrap();
    let first = bundles.next().await.unwrap().unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    assert_eq!(first.get(&td).unwrap().jwt_authorities().count(), 1);
    let old = client.fetch_jwt_token(["aud"], None).await.unwrap();

    agent.renew();
    // The stream sends the whole new state: the new key and the old one.
    let second = tokio::time::timeout(Duration::from_secs(10), bundles.next())
        .await
        .expect("the JWT bundle stream sends the rotation")
        .unwrap()
        .unwrap();
    assert_eq!(second.get(&td).unwrap().jwt_authorities().count(), 2);
    let new = client.fetch_jwt_token(["aud"], None).await.unwrap();
    assert_ne!(
        part(&new, 0)["kid"],
        part(&old, 0)["kid"],
        "signed with the new key"
    );

    assert_eq!(validate(&agent, "aud", &old).await.unwrap(), ME);
    assert!(JwtSvid::parse_and_validate(&old, &second, &["aud"]).is_ok());
    assert_eq!(validate(&agent, "aud", &new).await.unwrap(), ME);

    // Once the old token's exp has passed (read from its claims), it is refused.
    let exp = part(&old, 1)["exp"].as_u64().expect("a numeric exp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    if let Some(wait) = Duration::from_secs(exp + 1).checked_sub(now) {
        tokio::time::sleep(wait).await;
    }
    let status = validate(&agent, "aud", &old).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("expired"), "{status:?}");
}

#[test]
fn the_cli_fetches_validates_and_prints_bundles() {
    let agent = agent("");
    let run = |args: &[&str]| run_cli(&agent, args, "");
    let run_with_stdin = |args: &[&str], stdin: &str| run_cli(&agent, args, stdin);
    let (ok, out, err) = run(&["api", "fetch", "jwt", "--audience", "cli"]);
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("token({ME}):\n\t")), "{out}");
    let token = out.lines().nth(1).unwrap().trim().to_owned();
    // The token is read from standard input: never on the command line by default.
    let (ok, out, err) = run_with_stdin(&["api", "validate", "jwt", "--audience", "cli"], &token);
    assert!(ok, "{err}");
    assert!(
        out.contains("SVID is valid.") && out.contains(ME) && out.contains("\"aud\":[\"cli\"]"),
        "{out}"
    );
    let (ok, _, err) = run_with_stdin(&["api", "validate", "jwt", "--audience", "other"], &token);
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("does not contain"),
        "{err}"
    );
    // From a file.
    let file = agent.dir().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let (ok, out, err) = run(&[
        "api",
        "validate",
        "jwt",
        "--audience",
        "cli",
        "--token-file",
        file.to_str().unwrap(),
    ]);
    assert!(ok && out.contains(ME), "{err}");
    let (ok, out, err) = run(&["api", "fetch", "jwt-bundles"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("bundle(spiffe://example.org):\n\t{\"keys\":["),
        "{out}"
    );
}

/// `enclaveid ARGS --socket AGENT` with `stdin` on standard input: (success, stdout,
/// stderr).
fn run_cli(agent: &AgentProcess, args: &[&str], stdin: &str) -> (bool, String, String) {
    let output = enclaveid_tests::output_with_stdin(
        std::process::Command::new(enclaveid_tests::enclaveid_bin())
            .args(args)
            .args(["--socket", &agent.endpoint()]),
        stdin.as_bytes(),
    );
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn hostile_a_jwt_svid_is_not_taken_from_the_command_line_unless_asked() {
    let agent = agent("");
    let (ok, out, err) = run_cli(&agent, &["api", "fetch", "jwt", "--audience", "cli"], "");
    assert!(ok, "{err}");
    let token = out.lines().nth(1).unwrap().trim().to_owned();

    // The token as an argument is refused (exit 64) before anything is sent, and the
    // error says what to do instead.
    let output = std::process::Command::new(enclaveid_tests::enclaveid_bin())
        .args(["api", "validate", "jwt", "--audience", "cli", &token])
        .args(["--socket", &agent.endpoint()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{err}");
    assert!(
        err.contains("/proc/PID/cmdline") && err.contains("--token-in-argv"),
        "{err}"
    );
    assert!(!err.contains(&token), "the error does not repeat the token");

    // With the explicit opt-in, it is accepted.
    let (ok, out, err) = run_cli(
        &agent,
        &[
            "api",
            "validate",
            "jwt",
            "--audience",
            "cli",
            "--token-in-argv",
            &token,
        ],
        "",
    );
    assert!(ok && out.contains(ME), "{err}");

    // Nothing on standard input: a clear error.
    let (ok, _, err) = run_cli(&agent, &["api", "validate", "jwt", "--audience", "cli"], "");
    assert!(!ok && err.contains("no token on standard input"), "{err}");
}
