# The verbs a user and CI type. `make` builds its own virtual environment (.venv) and the
# local Kubernetes binaries (cached outside the repository); nothing else is assumed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PFO_CACHE ?= $(HOME)/.cache/paddle-finetune-operator
export PFO_CACHE

.PHONY: help venv binaries test test-unit test-cluster lint demo bench cluster-up cluster-down images clean

help:
	@echo "make demo          run the demo (see README)"
	@echo "make test          every test CI runs: unit, local control plane, end to end"
	@echo "make test-unit     the tests that need no cluster"
	@echo "make lint          ruff"
	@echo "make bench         benchmarks under bench/"
	@echo "make cluster-up    start the local control plane (.cluster/kubeconfig)"
	@echo "make cluster-down  stop it and remove its state"

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
	tests/cluster/build-binaries.sh >/dev/null

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check operator trainer tests bench

test-unit: venv
	$(PY) -m pytest -m "not cluster" tests

test: venv binaries
	$(PY) -m pytest tests

demo: venv
	$(PY) -m finetune_trainer.demo

bench: venv
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .cluster .pytest_cache .ruff_cache
