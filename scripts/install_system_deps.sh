#!/usr/bin/env bash
# Install the system packages that `make install` and the tests need.
#
# - etcd (Debian package etcd-server): integration tests start their own etcd on
#   free loopback ports, so the package's own service is kept from starting
#   (policy-rc.d) and never relied on.
# - slapd and ldap-utils (OpenLDAP): the LDAP tests start their own slapd with a throwaway
#   config on a free loopback port; the package's own service is kept from starting
#   (policy-rc.d) and never relied on.
# - redis-server and nats-server (Debian's; NATS 2.9 with JetStream): the stream tests
#   start their own brokers on free loopback ports (tests/helpers_brokers.py); the
#   packages' own services are kept from starting (policy-rc.d) and never relied on.
#   Kafka has no Debian package: `make install` fetches its jars with Maven instead
#   (scripts/fetch_kafka.py), which needs Java 17+ and Maven, checked here.
# - chromium (Debian's): the dashboard's browser tests (tests/browser) drive it with
#   Playwright for Python through its executable path; no browser is downloaded.
# - python3-venv, only when the python3 in use is Debian's and lacks ensurepip
#   (a bare Debian 12), since `python3 -m venv` fails without it.
#
# Idempotent: installs nothing that is already there. Fails loudly otherwise.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

log() { echo "[install_system_deps] $*"; }
die() { echo "[install_system_deps] ERROR: $*" >&2; exit 1; }

find_etcd() {
    if command -v etcd >/dev/null 2>&1; then
        command -v etcd
    elif [ -x /usr/bin/etcd ]; then
        echo /usr/bin/etcd
    else
        return 1
    fi
}

packages=()

if path="$(find_etcd)"; then
    log "etcd already installed at ${path}"
else
    log "etcd not found on PATH nor at /usr/bin/etcd; will install etcd-server"
    packages+=(etcd-server)
fi

find_sbin() {
    command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; }
}

if path="$(find_sbin slapd)" && find_sbin slapadd >/dev/null; then
    log "slapd already installed at ${path}"
else
    log "slapd not found on PATH nor in /usr/sbin; will install slapd"
    packages+=(slapd)
fi

if command -v ldapwhoami >/dev/null 2>&1; then
    log "ldap-utils already installed"
else
    packages+=(ldap-utils)
fi

if path="$(find_sbin redis-server)"; then
    log "redis-server already installed at ${path}"
else
    log "redis-server not found on PATH nor in /usr/sbin; will install redis-server"
    packages+=(redis-server)
fi

if path="$(find_sbin nats-server)"; then
    log "nats-server already installed at ${path}"
else
    log "nats-server not found on PATH nor in /usr/sbin; will install nats-server"
    packages+=(nats-server)
fi

if path="$(command -v chromium 2>/dev/null)"; then
    log "chromium already installed at ${path}"
else
    log "chromium not found on PATH; will install chromium (for the browser tests)"
    packages+=(chromium)
fi

# javac too: the Java client example (examples/clients/java) compiles with Maven.
if command -v javac >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; then
    log "javac and mvn present (for the Kafka jars and the Java client example)"
else
    command -v javac >/dev/null 2>&1 || packages+=(openjdk-17-jdk-headless)
    command -v mvn >/dev/null 2>&1 || packages+=(maven)
fi

if "${PYTHON}" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    log "${PYTHON} can create virtual environments"
else
    py_path="$(command -v "${PYTHON}" || true)"
    py_real="$(readlink -f "${py_path:-/nonexistent}" || true)"
    case "${py_real}" in
        /usr/bin/*)
            log "${PYTHON} (${py_real}) lacks ensurepip; will install python3-venv"
            packages+=(python3-venv)
            ;;
        *)
            die "${PYTHON} (${py_real:-not found}) cannot create a venv (no ensurepip/venv) and is not Debian's python; fix that Python install"
            ;;
    esac
fi

if [ "${#packages[@]}" -eq 0 ]; then
    log "nothing to do"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "installing ${packages[*]} needs root (apt-get); run as root or install them by hand"
command -v apt-get >/dev/null 2>&1 || die "apt-get is not available; install ${packages[*]} by hand"

# Keep a package's init script from starting a system-wide etcd on :2379 (or slapd on
# :389, redis on :6379, nats on :4222) during the install (exit 101 = "action forbidden"). Only add our own policy file when none
# exists, and remove it afterwards.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "${policy}" ]; then
    printf '#!/bin/sh\nexit 101\n' >"${policy}"
    chmod +x "${policy}"
    added_policy=1
fi
cleanup() { if [ "${added_policy}" -eq 1 ]; then rm -f "${policy}"; fi; }
trap cleanup EXIT

log "running apt-get update"
apt-get update </dev/null || die "apt-get update failed"
log "running apt-get install ${packages[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" </dev/null \
    || die "apt-get install ${packages[*]} failed"

if [[ " ${packages[*]} " == *" etcd-server "* ]]; then
    path="$(find_etcd)" || die "etcd-server installed but no etcd binary on PATH or at /usr/bin/etcd"
    log "installed $("${path}" --version 2>/dev/null | head -n 1 || echo etcd) at ${path}"
fi
if [[ " ${packages[*]} " == *" slapd "* ]]; then
    path="$(find_sbin slapd)" || die "slapd installed but no slapd binary on PATH or in /usr/sbin"
    log "installed $("${path}" -VV 2>&1 | head -n 1 || echo slapd) at ${path}"
fi
for server in redis-server nats-server; do
    if [[ " ${packages[*]} " == *" ${server} "* ]]; then
        path="$(find_sbin "${server}")" || die "${server} installed but not on PATH nor in /usr/sbin"
        log "installed $("${path}" --version 2>&1 | head -n 1) at ${path}"
    fi
done
if [[ " ${packages[*]} " == *" chromium "* ]]; then
    path="$(command -v chromium)" || die "chromium installed but not on PATH"
    log "installed $("${path}" --version 2>&1 | head -n 1) at ${path}"
fi
if [[ " ${packages[*]} " == *" python3-venv "* ]]; then
    "${PYTHON}" -c 'import ensurepip, venv' || die "python3-venv installed but ${PYTHON} still lacks ensurepip"
    log "installed python3-venv"
fi
