# make demo   set up everything on a fresh machine and run the main job (tiny preset, CPU)
# make test   run the test suite (sets up the environment first if needed)
# make bench  run the CPU benchmarks on the demo's workspace (results in benchmarks/results/)
# make bench-gpu  the token-level router's benchmarks on a GPU, small models (benchmarks/small_btx.sh)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PRESET ?= tiny
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-gpu install system-deps clean

demo: install system-deps
	$(BIN)/moe-experts --preset $(PRESET) quickstart

# --durations: the slowest tests in every run's log (CI's too), where the suite's time goes
test: install
	$(BIN)/python -m pytest -q --durations=25

bench: demo
	$(BIN)/python benchmarks/faiss_search.py
	$(BIN)/python benchmarks/routing_accuracy.py -w runs/$(PRESET)
	$(BIN)/python benchmarks/routing_latency.py -w runs/$(PRESET)
	$(BIN)/python benchmarks/embedder_int8.py -w runs/$(PRESET)
	$(BIN)/python benchmarks/moe_layer.py --tokens 2048 --hidden 256 --ffn 704

bench-gpu: install
	PY=$(BIN)/python benchmarks/small_btx.sh job

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
