//! The generated client code for SPIRE's server API is checked in (no protoc, no build
//! script); this test regenerates it with protox from the `.proto` files vendored under
//! `proto/spire-api-sdk/` (spiffe/spire-api-sdk v1.13.3, 08d43797) and fails when the
//! checked-in copy is stale: it rewrites `src/spire/proto/` and fails once so that the
//! diff gets reviewed and committed.

use std::path::Path;

#[test]
fn spire_upstream_generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sdk = root.join("proto/spire-api-sdk");
    let files = ["agent", "bundle", "entry", "svid"]
        .map(|service| sdk.join(format!("spire/api/server/{service}/v1/{service}.proto")));
    let fds = protox::compile(&files, [&sdk]).expect("the vendored protos compile");

    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        // The agent is a client of the server; it serves none of these.
        .build_client(true)
        .build_server(false)
        .build_transport(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation succeeds");

    let mut stale = Vec::new();
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let generated = std::fs::read_to_string(entry.path()).unwrap();
        let checked_in_path = root.join("src/spire/proto").join(&name);
        let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
        if generated != checked_in {
            std::fs::write(&checked_in_path, &generated).unwrap();
            stale.push(name.to_string_lossy().into_owned());
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} in src/spire/proto/ were stale and have been regenerated; review and commit the diff"
    );
}
