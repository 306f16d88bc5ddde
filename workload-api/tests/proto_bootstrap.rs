//! The generated protobuf code is checked in (no protoc, no build script); this test
//! regenerates it with protox and fails when the checked-in copy is stale.
//!
//! To regenerate after editing `proto/workload.proto`, run this test: it rewrites
//! `src/proto/workload.rs` and fails once so the diff gets reviewed and committed.

use std::path::Path;

#[test]
fn generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile([root.join("proto/workload.proto")], [root.join("proto")])
        .expect("proto/workload.proto compiles");

    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Byte fields are `bytes::Bytes` so that one SVID or bundle is shared, not
        // copied, by every stream it goes out on, and so that a private key can be
        // owned by a zeroizing buffer (`Bytes::from_owner`).
        .bytes(".")
        // The private key must never reach a log: `Debug` for `X509SVID` is written by
        // hand in src/lib.rs and elides it.
        .skip_debug([".X509SVID"])
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation succeeds");

    // A proto file without a package is generated into `_.rs`.
    let generated = std::fs::read_to_string(out.path().join("_.rs")).unwrap();
    let checked_in_path = root.join("src/proto/workload.rs");
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    if generated != checked_in {
        std::fs::write(&checked_in_path, &generated).unwrap();
        panic!(
            "src/proto/workload.rs was stale and has been regenerated; review and commit the diff"
        );
    }
}

/// Envoy's SDS v3, the subset the agent serves (`proto/envoy-sds/`), into
/// `src/sds/proto/`: server for the agent, client for the tests.
#[test]
fn sds_generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos = root.join("proto/envoy-sds");
    let fds = protox::compile(
        [
            protos.join("envoy/service/secret/v3/sds.proto"),
            protos.join("envoy/extensions/transport_sockets/tls/v3/secret.proto"),
        ],
        [&protos],
    )
    .expect("the vendored SDS protos compile");
    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // As the Workload API's: a private key in a zeroizing buffer, shared, not copied.
        .bytes(".")
        .skip_debug([".envoy.extensions.transport_sockets.tls.v3.TlsCertificate"])
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation succeeds");
    let dir = root.join("src/sds/proto");
    std::fs::create_dir_all(&dir).unwrap();
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let entry = entry.unwrap();
        let generated = std::fs::read_to_string(entry.path()).unwrap();
        let checked_in_path = dir.join(entry.file_name());
        if std::fs::read_to_string(&checked_in_path).unwrap_or_default() != generated {
            std::fs::write(&checked_in_path, &generated).unwrap();
            stale.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} in src/sds/proto/ were stale and have been regenerated; review and commit the diff"
    );
}
