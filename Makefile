# The two commands of the README, plus helpers. Each creates or reuses .venv and installs the project into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= runs/compare
ARGS ?=
# Huge pages for XLA's per-step host buffers (train/hostmem.py); set here so that no tool re-executes itself.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: demo test test-slow test-gpu-smoke test-all lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)  ## The main job: the architecture comparison on the bundled corpus.
	$(BIN)/python -m experiments.compare --workdir=$(WORKDIR) $(ARGS)

test: $(STAMP)  ## The default test suite (fast, CPU).
	$(BIN)/python -m pytest -q -n 2 --durations=15

test-slow: $(STAMP)  ## End-to-end tests (kill -9 and resume, multi-process runs), on 2 workers as the default suite.
	$(BIN)/python -m pytest -q -n 2 -m 'slow and not gpu_smoke' --durations=15

test-gpu-smoke: $(STAMP)  ## The GPU check script at toy sizes on CPU (before a GPU session; not in CI: 5 minutes).
	$(BIN)/python -m pytest -q -m gpu_smoke

test-all: test test-slow

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
