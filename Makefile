# Two entry points for a fresh machine: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-all bench clean chromium

setup: $(STAMP)

# torch first, pinned to the CPU build that pip finds on this machine's disk; then gridrl with
# what the demo needs and no extra; then every feeder built into the cache and the power-flow
# kernel compiled, so that first commands start at once
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	$(BIN)/gridrl warmup
	touch $(STAMP)

# what the test suite needs on top: pytest and Pillow, and the libraries of the optional parts
# it tests (the benchmark's solvers, Ray and RLlib, the TorchRL / SB3 adapters, ONNX policies)
TEST_STAMP := $(VENV)/.installed-test
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench,ray,rllib,torchrl,sb3,onnx]'
	touch $(TEST_STAMP)

# the feeder library, a map of ieee33, then dmpo trained on its training days and compared with
# none / droop / droop:tuned / opf on its 73 test days, with training curves in the report
demo: setup
	$(BIN)/gridrl feeders
	$(BIN)/gridrl feeders show ieee33 --out out/ieee33-map.html
	$(BIN)/gridrl train ieee33 --config experiments/demo.toml --out out/demo --resume
	@echo
	@echo "Open out/demo/report.html and out/ieee33-map.html in a browser."
	@echo "gridrl is installed in $(VENV), not on your PATH: activate it, then go on, e.g."
	@echo "  source $(BIN)/activate"
	@echo "  gridrl feeders                # every command explains itself with --help"
	@echo "  gridrl feeders show ieee141"
	@echo "  gridrl train ieee33 --algo dppo --out out/runs/ieee33-dppo"
	@echo "or call it by its path, without activating: $(BIN)/gridrl feeders"

# the report test opens HTML in headless Chromium (Debian's package); install it when missing
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test: $(TEST_STAMP) chromium
	$(BIN)/python -m pytest -q

test-all: $(TEST_STAMP) chromium
	$(BIN)/python -m pytest -q -m ""

bench: $(TEST_STAMP)
	$(BIN)/python experiments/bench_powerflow.py
	$(BIN)/python experiments/bench_env.py
	$(BIN)/python experiments/bench_train.py
	$(BIN)/python experiments/bench_first_use.py
	$(BIN)/python experiments/bench_ray.py

clean:
	rm -rf $(VENV) .pytest_cache
