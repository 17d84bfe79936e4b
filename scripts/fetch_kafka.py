#!/usr/bin/env python3
"""Fetch the Apache Kafka server jars from Maven Central into a local cache, once.

The stream tests run a real Kafka broker (KRaft mode), and no Debian package exists
for it. Its server (``org.apache.kafka:kafka_2.13``) and runtime dependencies are on
Maven Central, so Maven copies them into ``<cache>/kafka-<version>/libs``; a
``.complete`` stamp written last makes every later run a no-op that touches no network.

The cache is ``$XPIPE_CACHE_DIR`` or ``$XDG_CACHE_HOME/xpipe`` or ``~/.cache/xpipe``.
Stdlib only: ``tests/helpers_brokers.py`` imports :func:`kafka_libs` from here.

Usage::

    python scripts/fetch_kafka.py            # fetch if missing, print the libs dir
    python scripts/fetch_kafka.py --check    # exit 1 (and say so) if not fetched yet
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: The newest Kafka 4.x that Maven Central serves here (the broker of the stream tests).
KAFKA_VERSION = "4.4.0"
#: Scala 2.13 build: the only one Kafka 4 publishes.
KAFKA_ARTIFACT = "org.apache.kafka:kafka_2.13"

_STAMP = ".complete"

# Runtime classpath of kafka.Kafka: the server artifact (its compile/runtime scope pulls
# the metadata, raft, storage and coordinator modules) plus a log4j2 back end, which
# Kafka's own distribution ships but does not declare; slf4j-api 2 is pinned because
# a transitive 1.7 would otherwise win and find no 2.x provider. kafka-tools is not needed:
# kafka.tools.StorageTool (the `kafka-storage format` command) is in the server jar.
_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>xpipe.tests</groupId>
  <artifactId>kafka-server-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>2.0.17</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
"""


def cache_dir() -> Path:
    """Root of xpipe's download cache (shared by every worktree of one user)."""
    if explicit := os.environ.get("XPIPE_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xpipe"


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """Directory of one Kafka version in the cache; its jars are under ``libs/``."""
    return cache_dir() / f"kafka-{version}"


def kafka_libs(version: str = KAFKA_VERSION) -> Path | None:
    """The cached ``libs`` directory, or None when it was not (completely) fetched."""
    home = kafka_home(version)
    if (home / _STAMP).is_file():
        return home / "libs"
    return None


def fetch(version: str = KAFKA_VERSION) -> Path:
    """Fetch Kafka ``version`` into the cache unless already there; return its libs dir.

    Maven writes into a temporary directory that is renamed into place, so an
    interrupted fetch never leaves a half-filled cache that looks complete.

    Raises:
        RuntimeError: Maven or Java is missing, or Maven failed (its output attached).
    """
    if (libs := kafka_libs(version)) is not None:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None or shutil.which("java") is None:
        raise RuntimeError(
            "fetching Kafka needs Java 17+ and Maven (`mvn`) on PATH; "
            "install them (Debian: openjdk-17-jre-headless maven)"
        )
    home = kafka_home(version)
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"kafka-{version}.", dir=home.parent) as tmp:
        work = Path(tmp)
        (work / "pom.xml").write_text(_POM.format(version=version))
        argv = [
            mvn, "-B", "-q", "-f", str(work / "pom.xml"),
            "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={work / 'libs'}",
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"mvn copy-dependencies for {KAFKA_ARTIFACT}:{version} failed "
                f"(exit {done.returncode}):\n{done.stdout[-4000:]}{done.stderr[-4000:]}"
            )
        if not any((work / "libs").glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"mvn finished but no kafka_2.13 jar is in {work / 'libs'}")
        (work / _STAMP).write_text(f"{KAFKA_ARTIFACT}:{version}\n")
        if home.exists():  # a stale, incomplete copy from an older fetch
            shutil.rmtree(home)
        os.rename(work, home)
        work.mkdir()  # TemporaryDirectory removes its (now moved) directory on exit
    return home / "libs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=KAFKA_VERSION, help="Kafka version (default %(default)s)")
    parser.add_argument("--check", action="store_true", help="only report whether it is cached")
    args = parser.parse_args(argv)
    if args.check:
        libs = kafka_libs(args.version)
        if libs is None:
            print(f"Kafka {args.version} is not cached under {kafka_home(args.version)}", file=sys.stderr)
            return 1
        print(libs)
        return 0
    try:
        print(fetch(args.version))
    except RuntimeError as exc:
        print(f"fetch_kafka: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
