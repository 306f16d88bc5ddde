//! The generated protobuf code is checked in (no protoc, no build script); this test
//! regenerates it with protox from the vendored `.proto` files and fails when the
//! checked-in copy is stale. `proto/refresh.sh` re-vendors the `.proto` files from the Go
//! module cache; run this test afterwards: it rewrites `src/proto/` and fails once so the
//! diff gets reviewed and committed.

use std::path::Path;

#[test]
fn nitro_attestor_generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = [
        "go-plugin/plugin/grpc_broker.proto",
        "go-plugin/plugin/grpc_controller.proto",
        "go-plugin/plugin/grpc_stdio.proto",
        "spire-plugin-sdk/spire/plugin/server/nodeattestor/v1/nodeattestor.proto",
        "spire-plugin-sdk/spire/plugin/agent/nodeattestor/v1/nodeattestor.proto",
        "spire-plugin-sdk/spire/service/common/config/v1/config.proto",
        "spire-plugin-sdk/spire/service/private/init/v1/init.proto",
    ];
    let includes = [
        root.join("proto/go-plugin"),
        root.join("proto/spire-plugin-sdk"),
    ];
    let paths: Vec<_> = files.iter().map(|f| root.join("proto").join(f)).collect();
    let fds = protox::compile(&paths, &includes).expect("the vendored protos compile");

    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation succeeds");

    let mut stale = Vec::new();
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let generated = std::fs::read_to_string(entry.path()).unwrap();
        let checked_in_path = root.join("src/proto").join(&name);
        let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
        if generated != checked_in {
            std::fs::write(&checked_in_path, &generated).unwrap();
            stale.push(name.to_string_lossy().into_owned());
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} in src/proto/ were stale and have been regenerated; review and commit the diff"
    );
}
