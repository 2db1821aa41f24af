# Two commands set up everything on a clean clone: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 50051
DB     ?= sqlite:///var/hparamrec.db

.PHONY: run test test-fast stubs bench pfn clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	mkdir -p var
	$(BIN)/hparamrec serve --db $(DB) --host $(HOST) --port $(PORT) --no-auth

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

stubs: $(STAMP)
	$(BIN)/python scripts/generate_stubs.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks.backtest

# Retrains the PFN from its prior (seeded; 30 minutes measured on this shared 2-core box) and
# overwrites predictor/pfn/checkpoints/pfn.safetensors and pfn.json. CI never runs this.
pfn: $(STAMP)
	$(BIN)/python -m predictor.pfn.train

clean:
	rm -rf $(VENV) var build *.egg-info
