#!/usr/bin/env bash
# Installs the Node client's two pure-JavaScript dependencies (package-lock.json pins them)
# into node_modules/, and checks that none of them is a native addon: the point of this
# example is a client that needs no compiler and no native module (issue 18).
#
# Idempotent: when node_modules/ already matches package-lock.json it does no network and
# returns at once. Downloads go through npm's own cache (~/.npm), so a rebuild after
# `rm -rf node_modules` is offline too. Without node/npm on PATH it skips (the test skips too).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node client: node and npm not on PATH; skipping the build" >&2
    exit 0
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
    echo "node client: needs Node 20 or newer, found $(node --version)" >&2
    exit 1
fi

# The lock file's hash, recorded after a good install: unchanged lock, nothing to do.
stamp="node_modules/.xpipe-build-stamp"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

# --ignore-scripts: no dependency runs code at install time (nothing here needs to, and a
# native addon could not build without it).
npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --loglevel=error

native="$(find node_modules \( -name binding.gyp -o -name '*.node' \) -print)"
if [ -n "$native" ]; then
    echo "node client: native addon files under node_modules (this example must have none):" >&2
    echo "$native" >&2
    exit 1
fi
echo "$want" > "$stamp"
