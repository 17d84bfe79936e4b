#!/usr/bin/env bash
# Builds every client example (examples/clients/<lang>/build.sh), each idempotent and cached:
# `make install` runs this, so `make test` can run the clients against a real cluster.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for script in "$here"/*/build.sh; do
    [ -e "$script" ] || continue
    echo "building $(basename "$(dirname "$script")") client"
    bash "$script"
done
