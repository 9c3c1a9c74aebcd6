# Development and CI tasks for ethtwisted (GNU make, Debian 12).
#
#   make test      install what the tests need, lint, then run the whole test suite
#   make test-all  the same, with the suite run on each of Python 3.11, 3.12 and 3.13 (CI)
#   make lint      ruff check, ruff format --check, mypy
#   make venv      .venv: the locked dependencies, and the checkout on its sys.path
#   make lock      refresh requirements.lock and requirements-test.lock from setup.cfg's ranges
#   make services  MariaDB (with Galera), Redis (with Sentinel), Chromium and promtool
#                  (prometheus) from Debian's packages, when missing
#   make node      from package-lock.json, under node_modules/: the anvil Ethereum dev node and
#                  EthereumJS (a peer-to-peer execution client, for a clique network in the tests)
#   make fuzz      the property tests with fresh random examples, 5,000 each (minutes, bounded)
#   make clean     remove everything these targets and the tests generate
#   make run       the whole demo in the foreground: dev node, eth-server, eth-client
#   make test-containers  build the images from the Dockerfile and run docker-compose.yml
#                  with podman, checking the running stack from outside (minutes; see below)
#
# A target that runs the programs depends on `venv services node` and calls $(TWISTD).
#
# Every target is idempotent: on a machine that already has everything, `make test` only runs
# the checks.  A venv is made again from scratch when the lock files or setup.cfg change; the
# code itself is never installed into it: tests, twistd and the benchmarks run the checkout.
# Extra pytest arguments: make test PYTEST_ARGS='-k sql -x'.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
TWISTD := $(VENV)/bin/twistd
PYTEST_ARGS ?=

# The Python versions supported, each tested by `make test-all` in a venv of its own (.venv-3.12).
PYTHON_VERSIONS := 3.11 3.12 3.13
# Exact versions of every dependency, for all of PYTHON_VERSIONS: what the package needs to run
# (the images install this one) and that plus setup.cfg's `test` extra (the venvs install this).
LOCK := requirements.lock
TEST_LOCK := requirements-test.lock
# What a venv is made from: when one of these changes, the venv is made again.
VENV_INPUTS := $(LOCK) $(TEST_LOCK) setup.cfg pyproject.toml setup.py
PIP := -m pip install --disable-pip-version-check --no-input --progress-bar off --quiet

# Binaries (and the Galera library) the tests start, and the Debian packages that provide them:
# galera-4 comes with mariadb-server, and a Galera node joining the cluster copies its data
# with rsync.
SERVICE_BINARIES := mariadbd mariadb-install-db redis-server redis-cli redis-sentinel rsync \
	chromium promtool
SERVICE_FILES := /usr/lib/galera/libgalera_smm.so
APT_PACKAGES := mariadb-server galera-4 rsync redis-server redis-sentinel chromium prometheus
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600

# npm's marker of a completed install; newer than the lock file once `npm ci` has run.
NODE_STAMP := node_modules/.package-lock.json

.PHONY: test test-all lint venv lock services node clean fuzz

test: lint services node
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

# One run of the suite per Python version, one after the other (the timing-sensitive tests
# share two cores); all run even when one fails, and the last line names those that failed.
test-all: lint services node $(PYTHON_VERSIONS:%=$(VENV)-%/.installed)
	@failed=""; \
	for version in $(PYTHON_VERSIONS); do \
		echo "== the test suite on Python $$version"; \
		$(VENV)-$$version/bin/python -m pytest $(PYTEST_ARGS) || failed="$$failed $$version"; \
	done; \
	if [ -n "$$failed" ]; then echo "the test suite failed on Python$$failed" >&2; exit 1; fi

# The property tests (marked `property`) with the `fuzz` profile of tests/conftest.py: fresh
# random examples, many more of them; each test still stops at the suite's timeout.
fuzz: venv services node
	HYPOTHESIS_PROFILE=fuzz $(VENV_PY) -m pytest -m property -p no:cacheprovider $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(VENV)/bin/mypy ethtwisted tests bench

venv: $(VENV)/.installed

# No install of the package: a .pth naming the checkout puts it on sys.path, where twistd looks
# for plugins (setuptools' editable install maps it by an import hook, which twistd never sees).
# $(call fill_venv,DIR): the locked dependencies into the new venv DIR, then the checkout; and
# check that its twistd, run from another folder, offers the plugins.
define fill_venv
$(1)/bin/python $(PIP) --requirement $(TEST_LOCK)
site_packages="$$($(1)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"; \
	echo "$(CURDIR)" >"$$site_packages/ethtwisted-checkout.pth"
cd / && $(CURDIR)/$(1)/bin/twistd --help | grep eth-server >/dev/null \
	|| { echo "$(1)/bin/twistd offers no eth-server" >&2; exit 1; }
touch $(1)/.installed
endef

$(VENV)/.installed: $(VENV_INPUTS)
	rm -rf $(VENV)
	@# Debian's python3 keeps venv (ensurepip) in a package of its own.
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || { $(APT_GET) update -qq && \
		$(APT_GET) install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(call fill_venv,$(VENV))

# Python X.Y is pythonX.Y on PATH when that runs (pyenv's shim of a version not selected is on
# PATH but does not run), else the newest X.Y.N that pyenv holds.  Neither Debian 12 nor any
# registry reachable here has other versions: a machine without one stops here, saying so.
$(VENV)-%/.installed: $(VENV_INPUTS)
	rm -rf $(VENV)-$*
	@python=""; \
	if python$* -c '' 2>/dev/null; then python="$$(command -v python$*)"; else \
		root="$$(pyenv root 2>/dev/null || echo "$${PYENV_ROOT:-$$HOME/.pyenv}")"; \
		python="$$(ls -d "$$root"/versions/$*.*/bin/python$* 2>/dev/null \
			| grep -E '/versions/$(subst .,\.,$*)\.[0-9]+/' | sort -V | tail -n 1 || true)"; \
	fi; \
	if [ -z "$$python" ]; then \
		echo "Python $* not found: no python$* on PATH runs, and pyenv has no $*.N" \
			"(pyenv install $*)" >&2; \
		exit 1; \
	fi; \
	echo "$$python -m venv $(VENV)-$*"; \
	"$$python" -m venv $(VENV)-$*
	$(call fill_venv,$(VENV)-$*)

# Exact versions, the newest that setup.cfg's ranges allow, resolved once for every supported
# Python and platform; the test lock keeps the versions of the runtime lock.
UV_COMPILE = $(VENV)/bin/uv pip compile setup.cfg --universal --python-version $(firstword \
	$(PYTHON_VERSIONS)) --upgrade --quiet --custom-compile-command 'make lock'
lock: venv
	$(UV_COMPILE) --output-file $(LOCK)
	$(UV_COMPILE) --extra test --constraint $(LOCK) --output-file $(TEST_LOCK)

services:
	@missing=""; \
	for binary in $(SERVICE_BINARIES); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v "$$binary" >/dev/null || missing="$$missing $$binary"; \
	done; \
	for file in $(SERVICE_FILES); do \
		[ -e "$$file" ] || missing="$$missing $$file"; \
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
	@# No install scripts: anvil's binary comes as a package of its own, EthereumJS's LevelDB
	@# binding ships prebuilt (classic-level's prebuilds/), and its own preinstall only makes a
	@# placeholder for a file the package already holds.
	npm ci --ignore-scripts --no-audit --no-fund
	@ls node_modules/@foundry-rs/anvil-*/bin/anvil >/dev/null 2>&1 \
		|| { echo "npm installed no anvil binary for this platform" >&2; exit 1; }
	@node node_modules/.bin/ethereumjs --version >/dev/null \
		|| { echo "npm installed no EthereumJS that runs on this node" >&2; exit 1; }
	touch $@

clean:
	rm -rf $(VENV) $(PYTHON_VERSIONS:%=$(VENV)-%) node_modules build dist ./*.egg-info \
		.mypy_cache .ruff_cache .pytest_cache .hypothesis _trial_temp twisted/plugins/dropin.cache \
		wheels
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

# The Dockerfile's images built and docker-compose.yml run with podman and podman-compose
# (installed from Debian's packages when missing), then checked from outside the containers by
# tests/test_containers.py.  podman reads tests/containers/containers.conf (nothing under /etc
# changes).  No image registry is reached: what the compose file runs but cannot be had here
# is stood in for by images of tests/containers/Containerfile, on a Debian base made with
# debootstrap, and named by the compose file's ETHTWISTED_*_IMAGE variables:
#   python:3.11-slim-bookworm  Debian's Python 3.11 (the base of the app image built here)
#   mariadb:11.4               Debian's MariaDB 10.11
#   redis:7.2-alpine           Debian's Redis 7.0
#   the geth target            anvil, from node_modules/, behind a `geth` command that takes
#                              the compose file's flags (the geth target itself, on Alpine, is
#                              not built here)
# The base and the built layers stay in podman's store between runs: a second run rebuilds only
# what changed.  The images are tagged localhost/ethtwisted-test-*, apart from a user's own.
CONTAINER_PACKAGES := podman runc podman-compose debootstrap
export CONTAINERS_CONF := $(CURDIR)/tests/containers/containers.conf
export ETHTWISTED_IMAGE := localhost/ethtwisted-test:latest
export ETHTWISTED_GETH_IMAGE := localhost/ethtwisted-test-geth:latest
export ETHTWISTED_MARIADB_IMAGE := localhost/ethtwisted-test-mariadb:latest
export ETHTWISTED_REDIS_IMAGE := localhost/ethtwisted-test-redis:latest

.PHONY: test-containers
test-containers: venv node
	@missing=""; \
	for binary in $(CONTAINER_PACKAGES); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v "$$binary" >/dev/null || missing="$$missing $$binary"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing $(CONTAINER_PACKAGES) (missing:$$missing)"; \
		$(APT_GET) update; \
		$(APT_GET) install -y $(CONTAINER_PACKAGES); \
	fi
	PATH="$$PATH:/usr/sbin:/sbin" PYTHON=$(VENV_PY) tests/containers/build-images
	@# -x: every test there checks the one running stack.
	$(VENV_PY) -m pytest -m containers -x tests/test_containers.py $(PYTEST_ARGS)
