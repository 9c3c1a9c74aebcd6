# Development and CI tasks for ethtwisted (GNU make, Debian 12).
#
#   make test      install what the tests need, lint, then run the whole test suite
#   make lint      ruff check, ruff format --check, mypy
#   make venv      .venv with a regular (non-editable) install of '.[test]'
#   make services  MariaDB, Redis and Chromium from Debian's packages, when missing
#   make node      the anvil Ethereum dev node from package-lock.json, under node_modules/
#   make fuzz      the property tests with many more random examples (minutes, bounded)
#   make clean     remove everything these targets and the tests generate
#   make run       the whole demo in the foreground: dev node, eth-server, eth-client
#
# A target that runs the programs depends on `venv services node` and calls $(TWISTD).
#
# Every target is idempotent: on a machine that already has everything, `make test` spends
# its time reinstalling the package into .venv (so tests and twistd see the current source)
# and running the checks.  Extra pytest arguments: make test PYTEST_ARGS='-k sql -x'.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
TWISTD := $(VENV)/bin/twistd
PYTEST_ARGS ?=

# Binaries the tests start, and the Debian packages that provide them.
SERVICE_BINARIES := mariadbd mariadb-install-db redis-server redis-cli chromium
APT_PACKAGES := mariadb-server redis-server chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600

# npm's marker of a completed install; newer than the lock file once `npm ci` has run.
NODE_STAMP := node_modules/.package-lock.json

.PHONY: test lint venv services node clean fuzz

test: lint services node
	$(VENV_PY) -P -m pytest $(PYTEST_ARGS)

# The property tests (marked `property`) with the `fuzz` profile of tests/conftest.py: fresh
# random examples, many more of them; each test still stops at the suite's timeout.
fuzz: venv services node
	HYPOTHESIS_PROFILE=fuzz $(VENV_PY) -P -m pytest -m property -p no:cacheprovider $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(VENV)/bin/mypy ethtwisted bench

# The package is reinstalled on every run: a regular install is what twistd's plugin
# discovery needs, and a stale build/ would carry deleted modules into the wheel.
venv: $(VENV_PY)
	rm -rf build ./*.egg-info
	$(VENV_PY) -m pip install --disable-pip-version-check --no-input --progress-bar off \
		--quiet '.[test]'
	rm -rf build ./*.egg-info
	$(VENV_PY) -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'

$(VENV_PY):
	rm -rf $(VENV)
	@# Debian's python3 keeps venv (ensurepip) in a package of its own.
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || { $(APT_GET) update -qq && \
		$(APT_GET) install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --disable-pip-version-check --no-input --progress-bar off \
		--quiet --upgrade pip

services:
	@missing=""; \
	for binary in $(SERVICE_BINARIES); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v "$$binary" >/dev/null || missing="$$missing $$binary"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing $(APT_PACKAGES) (missing:$$missing)"; \
		$(APT_GET) update; \
		$(APT_GET) install -y $(APT_PACKAGES); \
	fi

node: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json
	@if ! command -v npm >/dev/null; then \
		echo "installing npm"; \
		$(APT_GET) update; \
		$(APT_GET) install -y --no-install-recommends nodejs npm; \
	fi
	npm ci --ignore-scripts --no-audit --no-fund
	@ls node_modules/@foundry-rs/anvil-*/bin/anvil >/dev/null 2>&1 \
		|| { echo "npm installed no anvil binary for this platform" >&2; exit 1; }
	touch $@

clean:
	rm -rf $(VENV) node_modules build dist ./*.egg-info .mypy_cache .ruff_cache \
		.pytest_cache _trial_temp twisted/plugins/dropin.cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# The whole demo in the foreground (twistd eth-demo): an anvil dev node mining a block every
# 2 s, eth-server on SQLite with its dashboard on http://127.0.0.1:8080/, and eth-client
# following the node over IPC, all kept in ethtwisted-demo/.  Ctrl-C stops all three; a
# second run resumes.  Options of `twistd eth-demo --help` go in RUN_ARGS, for instance
# make run RUN_ARGS='--block-time 5 --stats 8081'.
RUN_ARGS ?=

.PHONY: run
run: venv node
	$(TWISTD) --nodaemon --pidfile= eth-demo $(RUN_ARGS)
