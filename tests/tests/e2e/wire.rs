//! The wire contract real clients depend on: the security header, status codes and their
//! messages, bundle keys, callers with and without identities.

use std::process::Command;

use enclaveid_tests::{
    AgentProcess, can_switch_uid, enclaveid_bin, euid, first_x509_response, open_stream,
    raw_client, with_header,
};
use enclaveid_workload_api::proto::{JwtsvidRequest, X509BundlesRequest, X509svidRequest};
use tonic::Code;

use super::{config, config_for_me};

/// A uid that no test entry names and no system account uses.
const STRANGER_UID: u32 = 4_000_001;
const ENTITLED_UID: u32 = 4_000_002;

#[tokio::test]
async fn calls_without_the_security_header_are_invalid_argument() {
    let agent = AgentProcess::start(&config_for_me());
    let mut client = raw_client(agent.socket()).await;

    let status = client.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "security header missing from request");

    let mut wrong = tonic::Request::new(X509BundlesRequest {});
    wrong
        .metadata_mut()
        .insert("workload.spiffe.io", "yes".parse().unwrap());
    let status = client.fetch_x509_bundles(wrong).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "any value but `true` is refused"
    );

    let status = client
        .fetch_jwtsvid(JwtsvidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "the header is checked before anything else"
    );

    // With the header the same connection works.
    let (first, _stream) =
        open_stream(client.fetch_x509svid(with_header(X509svidRequest {}))).await;
    assert_eq!(first.svids.len(), 1);
}

#[tokio::test]
async fn x509_bundles_are_keyed_by_trust_domain_id_and_streamed() {
    let agent = AgentProcess::start(&config_for_me());
    let mut client = raw_client(agent.socket()).await;
    let mut stream = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let bundles = stream.message().await.unwrap().unwrap();
    let keys: Vec<_> = bundles.bundles.keys().cloned().collect();
    assert_eq!(keys, ["spiffe://example.org"], "keys carry the scheme");
    let root = &bundles.bundles["spiffe://example.org"];
    let (rest, cert) = x509_parser::parse_x509_certificate(root).unwrap();
    assert!(rest.is_empty(), "one root, DER");
    assert!(cert.is_ca());

    let svid = first_x509_response(agent.socket()).await;
    assert_eq!(
        &svid.svids[0].bundle, root,
        "the SVID's bundle is its trust domain's"
    );
    assert!(svid.federated_bundles.is_empty());
    let key = &svid.svids[0].x509_svid_key;
    assert!(
        spiffe::X509Svid::parse_from_der(&svid.svids[0].x509_svid, key).is_ok(),
        "chain as concatenated DER, key as PKCS#8 DER"
    );
}

/// This test process has no entry (entries name other uids): both X.509 calls answer
/// PermissionDenied "no identity issued", as SPIRE does by default.
#[tokio::test]
async fn a_caller_without_an_entry_gets_permission_denied() {
    let agent = AgentProcess::start(&config(
        "1h",
        &[("someone", &format!("\"unix:uid:{STRANGER_UID}\""), "")],
    ));
    let mut client = raw_client(agent.socket()).await;
    let status = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "no identity issued");
    let status = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "no identity issued");

    // The spiffe crate surfaces the same status.
    let client = spiffe::workload_api::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let error = client.fetch_x509_context().await.unwrap_err().to_string();
    assert!(error.contains("no identity issued"), "{error}");
}

/// Callers in child processes under other uids: the entitled uid gets its SVID, a
/// stranger gets PermissionDenied, through the CLI (the `spiffe` crate client).
#[test]
fn callers_under_other_uids_get_only_their_own_identity() {
    if !can_switch_uid() {
        eprintln!(
            "SKIPPED callers_under_other_uids_get_only_their_own_identity: needs root and setpriv to run callers as other uids"
        );
        return;
    }
    let agent = AgentProcess::start(&config(
        "1h",
        &[
            ("root", &format!("\"unix:uid:{}\"", euid()), ""),
            ("entitled", &format!("\"unix:uid:{ENTITLED_UID}\""), ""),
        ],
    ));
    // The build directory may not be reachable by other uids (a checkout under /root):
    // run a copy from the agent's world-readable temporary directory.
    let client = agent.dir().join("enclaveid-client");
    std::fs::copy(enclaveid_bin(), &client).unwrap();
    let fetch_as = |uid: u32| {
        Command::new("setpriv")
            .args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
            ])
            .arg(&client)
            .args(["api", "fetch", "x509", "--socket"])
            .arg(agent.socket())
            .output()
            .unwrap()
    };
    let entitled = fetch_as(ENTITLED_UID);
    let stdout = String::from_utf8_lossy(&entitled.stdout);
    assert!(
        entitled.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&entitled.stderr)
    );
    assert!(stdout.contains("spiffe://example.org/entitled"), "{stdout}");
    assert!(!stdout.contains("spiffe://example.org/root"), "{stdout}");

    let stranger = fetch_as(STRANGER_UID);
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert!(!stranger.status.success());
    assert!(stderr.contains("no identity issued"), "{stderr}");
}

/// gRPC C-core clients (py-spiffe) send the percent-encoded socket path as `:authority`,
/// grpc-java clients (java-spiffe) the raw path; both must be served. Driven here with
/// hand-made HTTP/2 frames, as those clients send them.
#[test]
fn clients_that_send_the_socket_path_as_authority_are_served() {
    use std::io::{Read as _, Write as _};

    let agent = AgentProcess::start(&config_for_me());
    let path = agent.socket().display().to_string();
    let percent_encoded = path.trim_start_matches('/').replace('/', "%2F");
    for authority in [percent_encoded.as_str(), path.as_str()] {
        let mut stream = std::os::unix::net::UnixStream::connect(agent.socket()).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let frame = |kind: u8, flags: u8, stream_id: u32, payload: &[u8]| {
            let len = payload.len();
            let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
            out.extend_from_slice(&stream_id.to_be_bytes());
            out.extend_from_slice(payload);
            out
        };
        let block = loona_hpack::Encoder::new().encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"workload.spiffe.io", b"true"),
        ]);
        let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        request.extend(frame(0x4, 0, 0, &[]));
        request.extend(frame(0x1, 0x4, 1, &block));
        request.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
        stream.write_all(&request).unwrap();

        // Read frames until a DATA frame on stream 1 (an SVID) or a reset.
        let mut got_svid = false;
        while !got_svid {
            let mut header = [0u8; 9];
            stream.read_exact(&mut header).unwrap();
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0; len];
            stream.read_exact(&mut payload).unwrap();
            let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
            match (header[3], stream_id) {
                (0x3, 1) => panic!("RST_STREAM for authority {authority:?}"),
                (0x0, 1) => got_svid = len > 100,
                (0x4, 0) if header[4] & 1 == 0 => {
                    stream.write_all(&frame(0x4, 0x1, 0, &[])).unwrap()
                }
                _ => {}
            }
        }
    }
}
