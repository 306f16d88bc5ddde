#!/usr/bin/env bash
# Copies the vendored .proto files (and their licences) from the Go module cache, where
# building SPIRE (tests/interop/spire) puts the exact versions SPIRE v1.13.3 uses.
# Then regenerate src/proto/ with: cargo test -p enclaveid-spire-plugin --test proto_bootstrap
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../../tests/interop/spire"
sdk="$(go list -m -f '{{.Dir}}' github.com/spiffe/spire-plugin-sdk)"
gp="$(go list -m -f '{{.Dir}}' github.com/hashicorp/go-plugin)"
cd "$here"
install -m 0644 -D "$gp/LICENSE" go-plugin/LICENSE
for f in grpc_broker grpc_controller grpc_stdio; do
  install -m 0644 -D "$gp/internal/plugin/$f.proto" "go-plugin/plugin/$f.proto"
done
install -m 0644 -D "$sdk/LICENSE" spire-plugin-sdk/LICENSE
for f in plugin/server/nodeattestor/v1/nodeattestor plugin/agent/nodeattestor/v1/nodeattestor \
  service/common/config/v1/config; do
  install -m 0644 -D "$sdk/proto/spire/$f.proto" "spire-plugin-sdk/spire/$f.proto"
done
install -m 0644 -D "$sdk/internal/proto/spire/service/private/init/v1/init.proto" \
  spire-plugin-sdk/spire/service/private/init/v1/init.proto
echo "go-plugin $(basename "$gp"), spire-plugin-sdk $(basename "$sdk")" > VERSIONS
