# Developer and CI entry points. GNU make; run `make help` for the list.
#
# `make install` is idempotent: the venv is created once, `pip install -e '.[dev]'`
# reruns only when pyproject.toml is newer than the stamp file, and the system
# dependencies script is a no-op once etcd, slapd, redis-server and nats-server are
# present, and the Kafka jars are fetched with Maven once into ~/.cache/xpipe (a no-op
# that touches no network once cached; see scripts/fetch_kafka.py).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
VPIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: help install system-deps kafka clients test proto demo bench bench-streams clean

help:
	@echo "make install   create .venv, install xpipe editable with dev extras, install etcd, slapd,"
	@echo "               redis-server and nats-server, fetch the Kafka jars into ~/.cache/xpipe"
	@echo "make test      check generated stubs are fresh, then run the test suite"
	@echo "make proto     regenerate sdk/_proto and the reference in docs/api.md from proto/xpipe/v1"
	@echo "make demo      run examples/demo.py"
	@echo "make bench     install bench extras and run python -m bench"
	@echo "make bench-streams the streams scenario on Kafka: xpipe, aiokafka loop, Quix Streams"
	@echo "make clean     remove .venv and caches (bench/results stays)"

install: system-deps $(STAMP) kafka clients

# Kafka for the stream tests: no Debian package exists, so Maven fetches the server jars.
kafka: | system-deps
	$(PYTHON) scripts/fetch_kafka.py

# The Go, Java and Node client examples (examples/clients/): tests run them against a real
# cluster. Each build caches its toolchain downloads (Go modules, ~/.m2, npm's cache).
clients: $(STAMP)
	bash examples/clients/build.sh
	bash scripts/install_grpcurl.sh

# System packages come first: on a bare Debian they include python3-venv, which
# `python3 -m venv` needs.
system-deps:
	PYTHON=$(PYTHON) bash scripts/install_system_deps.sh

$(VPY): | system-deps
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install --upgrade pip
	$(VPIP) install -e '.[dev]'
	touch $(STAMP)

test: install
	$(VPY) scripts/gen_protos.py --check
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=30

proto: $(STAMP)
	$(VPY) scripts/gen_protos.py
	$(VPY) scripts/gen_api_docs.py

demo: install
	$(VPY) examples/demo.py

bench: install
	$(VPIP) install -e '.[bench]'
	$(VPY) -m bench

# Not part of `make bench`: it starts a Kafka and measures other peers (docs/performance.md, "Streams").
bench-streams: install
	$(VPIP) install -e '.[bench]'
	$(VPY) -m bench.streams

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist ./*.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
