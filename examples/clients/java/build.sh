#!/usr/bin/env bash
# Builds the Java client example into target/xpipe-client-java.jar (stubs generated from
# ../../../proto at build time, dependencies shaded in). Idempotent: when the jar is newer
# than the pom, the sources and the protos, it returns at once without starting Maven.
# Maven caches its downloads in ~/.m2 (or MAVEN_REPO_LOCAL, used to time a cold build).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
jar="$here/target/xpipe-client-java.jar"

for tool in java mvn; do
    if ! command -v "$tool" >/dev/null; then
        echo "java client: $tool is not on PATH; skipping (needs Java 17+ and Maven)" >&2
        exit 0
    fi
done

up_to_date() {
    [ -f "$jar" ] && [ -z "$(find "$here/pom.xml" "$here/src" "$here/../../../proto" \
        -newer "$jar" -print -quit)" ]
}
up_to_date && exit 0

# Two builds at once (make install and a test fixture) would clobber each other's target/.
mkdir -p "$here/target"
exec 9>"$here/target/.build.lock"
flock 9
up_to_date && exit 0

args=(-q -B package)
if [ -n "${MAVEN_REPO_LOCAL:-}" ]; then
    args+=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")
fi
# Maven 3.8 writes colour resets even in batch mode; keep the log plain (pipefail keeps its status).
mvn -f "$here/pom.xml" "${args[@]}" 2>&1 | sed 's/\x1b\[[0-9;]*m//g'
echo "java client: built $jar"
