#!/usr/bin/env bash
# Builds the Go client example: stubs from proto/xpipe/v1 (protoc-gen-go, protoc-gen-go-grpc),
# `go vet`, its unit tests, then bin/polyglot-go. Idempotent: when nothing it reads changed
# since the last build, it does nothing (no network, well under a second). Downloads are
# cached: the plugins in ~/.cache/xpipe/go-bin (XPIPE_GO_BIN), modules in Go's module cache.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cd "$here"

if ! command -v go >/dev/null 2>&1; then
    echo "go client: go is not on PATH; skipping (install Go 1.26 or newer to build it)" >&2
    exit 0
fi

# Pinned: the plugin versions shape the generated code, so they are part of the build's inputs.
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.5.1
python="${XPIPE_PYTHON:-$repo/.venv/bin/python}"
gobin="${XPIPE_GO_BIN:-$HOME/.cache/xpipe/go-bin}"
export GOTOOLCHAIN=local  # never download another Go toolchain; use the one on PATH

protos=("$repo"/proto/xpipe/v1/*.proto)
stamp="bin/.build-stamp"
inputs="$(cat "${protos[@]}" ./*.go go.mod go.sum build.sh | sha256sum | cut -d' ' -f1)"
inputs="$inputs $PROTOC_GEN_GO_VERSION $PROTOC_GEN_GO_GRPC_VERSION $(go env GOVERSION)"
if [ -x bin/polyglot-go ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then
    echo "go client: up to date (bin/polyglot-go)"
    exit 0
fi

# The protoc plugins, installed once per version into a cache outside the repo.
mkdir -p "$gobin"
if ! "$gobin/protoc-gen-go" --version 2>/dev/null | grep -qx "protoc-gen-go $PROTOC_GEN_GO_VERSION"; then
    GOBIN="$gobin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
if ! "$gobin/protoc-gen-go-grpc" --version 2>/dev/null | grep -qx "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}"; then
    GOBIN="$gobin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi

# The protos carry no go_package option (they are shared by every language), so each file is
# mapped to this module's gen/xpipe/v1 package (named xpipev1) on the command line instead.
gopkg="example.com/xpipe-client/gen/xpipe/v1;xpipev1"
mapping=()
for proto in "${protos[@]}"; do
    mapping+=("--go_opt=Mxpipe/v1/$(basename "$proto")=$gopkg" "--go-grpc_opt=Mxpipe/v1/$(basename "$proto")=$gopkg")
done
if ! "$python" -c "import grpc_tools.protoc" 2>/dev/null; then
    echo "go client: $python has no grpc_tools (grpcio-tools); run 'make install' first" >&2
    exit 1
fi
rm -rf gen
mkdir -p gen bin
# grpc_tools.protoc (from the repo's .venv) bundles protoc and the well-known types.
"$python" -m grpc_tools.protoc -I "$repo/proto" \
    --plugin=protoc-gen-go="$gobin/protoc-gen-go" \
    --plugin=protoc-gen-go-grpc="$gobin/protoc-gen-go-grpc" \
    --go_out=gen --go_opt=paths=source_relative \
    --go-grpc_out=gen --go-grpc_opt=paths=source_relative \
    "${mapping[@]}" \
    "${protos[@]#"$repo/proto/"}"

go vet ./...
go test ./...
go build -o bin/polyglot-go .
echo "$inputs" > "$stamp"
echo "go client: built bin/polyglot-go"
