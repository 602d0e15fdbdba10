# The verbs a user and CI type. `make` builds its own virtual environment (.venv) and the
# local Kubernetes binaries (cached outside the repository); nothing else is assumed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PFO_CACHE ?= $(HOME)/.cache/paddle-finetune-operator
export PFO_CACHE

.PHONY: help venv binaries prometheus node-runtime operator-wheels image-tools images images-docker test test-unit test-images test-cluster lint demo bench cluster-up cluster-down clean

help:
	@echo "make demo          run the demo (see README)"
	@echo "make test          every test CI runs: unit, local control plane, end to end"
	@echo "make test-unit     the tests that need no cluster"
	@echo "make lint          ruff"
	@echo "make bench         benchmarks under bench/"
	@echo "make cluster-up    start the local control plane (.cluster/kubeconfig)"
	@echo "make cluster-down  stop it and remove its state"
	@echo "make images        build the operator, trainer (CPU) and pause images as OCI archives, no Docker"
	@echo "make images-docker build the operator and the GPU trainer image with a Docker engine"

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# The PaddleClas reference for parity tests and the benchmark: its pinned dependencies
	# (numpy==1.24.4, gast==0.3.3) clash with Paddle 3, so only its source is installed.
	$(PY) -m pip install --quiet --no-deps paddleclas==2.6.0
	touch $@

binaries:
	localcluster/build-binaries.sh >/dev/null

# A real Prometheus server and promtool for tests/operator/test_prometheus.py: Debian's package,
# installed once (a no-op when both are on PATH already).
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make prometheus: installing Debian's prometheus package needs root; run as root:" >&2; \
	  echo "  apt-get update && apt-get install -y --no-install-recommends prometheus" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# The real node's container runtime (localcluster/realnode/): containerd, runc and the CNI
# plugins from Debian's packages, iproute2 for its bridge and nftables for its route to the API
# server (apiservice.py), installed once (a no-op when all are there). Needs root, like
# `prometheus`. Its pause image comes from `make images`.
NODE_PACKAGES := containerd runc containernetworking-plugins iproute2 nftables
node-runtime:
	@if command -v containerd >/dev/null && command -v runc >/dev/null && command -v ctr >/dev/null \
	  && [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && command -v ip >/dev/null && command -v nft >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make node-runtime: installing Debian's $(NODE_PACKAGES) needs root; run as root:" >&2; \
	  echo "  apt-get update && apt-get install -y --no-install-recommends $(NODE_PACKAGES)" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  $(NODE_PACKAGES) >/dev/null

# A wheelhouse of the operator extra's dependencies, so tests/operator/test_images.py installs
# `.[operator]` into a fresh virtual environment without reaching PyPI at test time.
OPERATOR_WHEELS := $(PFO_CACHE)/wheels/operator
operator-wheels: $(OPERATOR_WHEELS)/.done
$(OPERATOR_WHEELS)/.done: pyproject.toml | venv
	$(PY) -m pip wheel --quiet --wheel-dir $(OPERATOR_WHEELS) '.[operator]' 'setuptools>=68'
	rm -f $(OPERATOR_WHEELS)/paddle_finetune_operator-*.whl
	touch $@

# Debian's tools for the Docker-free image build and its tests, installed once (a no-op when
# present): mmdebstrap (root file systems), gcc + libc6-dev (the static pause program), and
# skopeo, umoci and runc, with which the tests read, unpack and run what the build wrote.
image-tools:
	@if command -v mmdebstrap >/dev/null && command -v gcc >/dev/null && command -v skopeo >/dev/null \
	  && command -v umoci >/dev/null && command -v runc >/dev/null && [ -f /usr/lib/x86_64-linux-gnu/libc.a ] \
	  && [ -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make image-tools: installing Debian's packages needs root; run as root:" >&2; \
	  echo "  apt-get update && apt-get install -y --no-install-recommends mmdebstrap debian-archive-keyring gcc libc6-dev skopeo umoci runc" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  mmdebstrap debian-archive-keyring gcc libc6-dev skopeo umoci runc >/dev/null

# The operator, trainer (CPU Paddle) and pause images as OCI archives under
# $(PFO_CACHE)/images/archives, built from Debian's packages and PyPI's wheels without Docker
# (images/README.md). Layers are cached by their inputs: warm, this is a no-op; a change to the
# project's code rebuilds only the top layers. References follow the chart's defaults.
IMAGE_PREFIX ?= ghcr.io/paddle-finetune-operator
IMAGE_TAG ?= 0.1.0
images: venv image-tools
	$(PY) -m images.build --prefix $(IMAGE_PREFIX) --tag $(IMAGE_TAG) all

# The registry route: both Dockerfiles with a Docker engine (the trainer on the official
# PaddlePaddle GPU image). Then `docker push`; see images/README.md.
images-docker:
	@if ! docker info >/dev/null 2>&1; then \
	  echo "make images-docker: no Docker engine is reachable here ('docker info' failed)." >&2; \
	  echo "Without Docker, 'make images' builds OCI archives; push them with skopeo (images/README.md)." >&2; \
	  exit 1; fi
	docker build -f images/operator/Dockerfile -t $(IMAGE_PREFIX)/operator:$(IMAGE_TAG) .
	docker build -f images/trainer/Dockerfile -t $(IMAGE_PREFIX)/trainer:$(IMAGE_TAG) .

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check contract operator trainer tests bench demo localcluster images

test-unit: venv operator-wheels
	$(PY) -m pytest -m "not cluster and not images" tests

test: venv binaries prometheus node-runtime operator-wheels images
	$(PY) -m pytest tests

# The locally built images, read, unpacked and run with skopeo, umoci and runc.
test-images: venv images
	$(PY) -m pytest -m images tests

# Only the tests against the local control plane (each pytest session starts and stops its own).
test-cluster: venv binaries prometheus node-runtime images
	$(PY) -m pytest -m cluster tests

# A local control plane left running for people and the demo: .cluster/kubeconfig (see
# localcluster/README.md). `make test` does not need it.
cluster-up: venv binaries node-runtime images
	$(PY) -m localcluster up

cluster-down:
	@if [ -x $(PY) ]; then $(PY) -m localcluster down; else echo "no $(PY): nothing started"; fi

# The demo (demo/README.md): cluster, chart, operator, weights and data, one FineTuneJob to
# Succeeded. Everything stays running; `make cluster-down` stops it.
demo: venv binaries node-runtime images
	$(PY) -m demo

bench: venv
	$(PY) bench/run.py

clean: cluster-down
	rm -rf $(VENV) .cluster .pytest_cache .ruff_cache .hypothesis
