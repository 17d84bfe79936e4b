#!/usr/bin/env bash
# Build grpcurl once into ~/.cache/xpipe/grpcurl/<version>/ (tests/integration/test_grpcurl.py
# runs it against a real coordinator). Go modules come through the Go module proxy into the
# Go module cache; a second run finds the binary and touches no network. No Go: says so and
# exits 0, and the test skips with that reason.
set -euo pipefail

VERSION="${GRPCURL_VERSION:-v1.9.3}"
DEST="${XDG_CACHE_HOME:-$HOME/.cache}/xpipe/grpcurl/$VERSION"

if [[ -x "$DEST/grpcurl" ]]; then
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "[install_grpcurl] go is not on PATH: grpcurl not built (its test will skip)" >&2
    exit 0
fi
mkdir -p "$DEST"
echo "[install_grpcurl] building grpcurl $VERSION into $DEST"
GOBIN="$DEST" GOFLAGS=-mod=mod go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$VERSION"
