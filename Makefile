# Two entry points for users: `make demo` and `make test`. Both set up
# everything they need (Debian packages, a .venv, the project installed in it)
# and are cheap to re-run: each step leaves a stamp and reruns only when its
# inputs change.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .stamps
# Debian packages, each named with a command it provides: a command already on
# PATH (e.g. node/npm from another source) is not reinstalled over.
APT_NEEDS := bwrap:bubblewrap ip:iproute2 ps:procps npm:npm node:nodejs setpriv:util-linux dockerd:docker.io systemd-analyze:systemd
# Libraries with no command of their own.
APT_LIBS := libseccomp2
PYTEST_ARGS ?=

.PHONY: demo test setup clean-venv bench report proto

setup: $(STAMPS)/venv

$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@missing=""; for need in $(APT_NEEDS); do cmd=$${need%%:*}; pkg=$${need#*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	for pkg in $(APT_LIBS); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

$(STAMPS)/venv: pyproject.toml $(STAMPS)/apt
	@mkdir -p $(STAMPS)
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { echo "installing python3-venv"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv >/dev/null; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing ofnode into $(VENV)"
	@$(BIN)/pip install -q --disable-pip-version-check -e '.[test,train,bench]' 2>&1 | { grep -v '^WARNING: Location' || true; }; \
	  test $${PIPESTATUS[0]} -eq 0
	@touch $@

demo: $(STAMPS)/venv
	@$(BIN)/python examples/demo.py

# The docker-backend tests need a dockerd: one that answers is used, else one
# is started (root only) that leaves the host network alone; .ci/run stops it.
test: $(STAMPS)/venv
	@tests/helpers/dockerd.sh start
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every benchmark, then docs/performance.md with tables and plots (an hour or so;
# `make report REPORT_ARGS=--quick` takes minutes).
REPORT_ARGS ?=
bench report: $(STAMPS)/venv
	@tests/helpers/dockerd.sh start
	@$(BIN)/python bench/report.py $(REPORT_ARGS)

clean-venv:
	rm -rf $(VENV) $(STAMPS)

# Regenerate protobuf code (needs grpcio-tools==1.74.0, whose protoc matches
# the protobuf>=6.31 runtime): make proto PROTOC="python -m grpc_tools.protoc"
PROTOC ?= $(BIN)/python -m grpc_tools.protoc
proto:
	@tmp=$$(mktemp -d); \
	$(PROTOC) -Iofnode/v1=node/p2p --python_out=$$tmp ofnode/v1/envelope.proto && \
	cp $$tmp/ofnode/v1/envelope_pb2.py node/p2p/envelope_pb2.py && \
	$(PROTOC) -Iofnode/bitswap=node/store --python_out=$$tmp ofnode/bitswap/bitswap.proto && \
	cp $$tmp/ofnode/bitswap/bitswap_pb2.py node/store/bitswap_pb2.py; rm -rf $$tmp
