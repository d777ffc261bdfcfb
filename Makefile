# make demo   set up everything on a fresh machine and run the main job (tiny preset, CPU)
# make test   run the test suite (sets up the environment first if needed)
# make bench  run the benchmarks and record their results
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PRESET ?= tiny
STAMP := $(VENV)/.installed

.PHONY: demo test bench install system-deps clean

demo: install system-deps
	$(BIN)/moe-experts --preset $(PRESET) quickstart

test: install
	$(BIN)/python -m pytest -q

install: $(STAMP)

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build; with
# 2.13.0 installed, the project's "torch>=2.4" installs nothing more.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

system-deps:
	@scripts/system-deps.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
