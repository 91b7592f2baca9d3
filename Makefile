# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.plexus-installed
export RAY_AUTH_MODE ?= disabled
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true
export PLEXUS_DATA ?= $(abspath ../shared/data)

.PHONY: demo demo-ctr test test-reliability test-slow test-all lint typecheck bench-ingest bench-train bench-quality clean postgres test-server registry-server

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt fbgemm-gpu-cpu tensordict torchmetrics==1.0.3 tqdm pyre-extensions
	$(BIN)/pip install -q --no-deps -c constraints.txt torchrec
	$(BIN)/pip install -q -c constraints.txt -e '.[train,export,serve,dev]'
	touch $@

install: $(STAMP)

# The mission end to end: log -> ingest -> train (local Ray) -> kNN-Embed -> ONNX -> registry
# @champion -> service on 127.0.0.1 -> one retrieval answered (`[plexus] served: ...`).
demo: $(STAMP)
	$(BIN)/plexus demo

# The CTR job on its own: synthetic Criteo -> ingest -> DeepFM -> test AUC, tracked in MLflow.
demo-ctr: $(STAMP)
	$(BIN)/plexus data synth --format criteo --rows 200000 --out runs/synthetic/criteo_200k.tsv
	$(BIN)/plexus run synthetic
	@echo
	@echo "Look at the run:  $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db  (then open http://127.0.0.1:5000)"

# Two pytest workers: the Ray and CLI tests wait on process start-up more than they compute
# (one took 489 s wall for 166 s CPU), so two share 2 cores well (1,096 s -> 702 s here).
# Work stealing: a worker that runs out takes the other's queued tests, so a long test at the
# end of one queue does not leave the other worker idle.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=25

# PostgreSQL for the registry-server tests, from Debian's package, only when it is missing.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -q && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

# Jobs, registry, promotion gate and service against an MLflow server on PostgreSQL (slow).
test-server: $(STAMP) postgres
	$(BIN)/python -m pytest -q -m slow tests/pipelines/test_registry_server.py

# An MLflow tracking server on a throwaway PostgreSQL until Ctrl-C; prints MLFLOW_TRACKING_URI.
registry-server: $(STAMP) postgres
	$(BIN)/python -m plexus.pipelines.registry_server --root runs/registry

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The reliability table (README): every fault, bad-input and bundle case, slow ones included.
test-reliability: $(STAMP)
	PLEXUS_RELIABILITY_OUT=runs/reliability $(BIN)/python -m pytest -q -m reliability
	@cat runs/reliability/results.md

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check platform models pipelines serving tests docs
	$(BIN)/ruff format --check platform models pipelines serving tests docs

typecheck: $(STAMP)
	$(BIN)/mypy platform/plexus serving/plexus --explicit-package-bases

bench-ingest: $(STAMP)
	$(BIN)/plexus bench ingest --out runs/bench/ingest

bench-train: $(STAMP)
	$(BIN)/plexus bench train --out runs/bench/train

bench-quality: $(STAMP)
	$(BIN)/plexus bench quality --out runs/bench/quality --data-root $(PLEXUS_DATA)

clean:
	rm -rf runs mlflow.db mlartifacts .pytest_cache
