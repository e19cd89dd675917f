# Two commands do all the set-up on a fresh machine:
#   make run   - serve the API on :8000 with embedded defaults (SQLite, local MLflow store, no Redis)
#   make test  - install everything the tests need (Python packages, Redis, PostgreSQL, Prometheus,
#                Alertmanager, the collector build) and run lint, type checks and every test.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-12)
PORT   ?= 8000
HOST   ?= 0.0.0.0

.PHONY: install run test lint typecheck audit system-deps collector pytest bench dashboards clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# requirements.lock pins every transitive version that CI and `make run` use.
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install
	$(BIN)/stockpred serve --host $(HOST) --port $(PORT)

system-deps:
	scripts/install-system-deps.sh

collector:
	scripts/build-collector.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy service

# Known vulnerabilities in every pinned version (needs PyPI); findings fail, see README "Supply chain".
audit: install
	$(BIN)/python scripts/audit_lock.py requirements.lock

pytest: install
	OTELCOL_BIN="$$(scripts/build-collector.sh | tail -n 1)" $(BIN)/pytest

test: install system-deps collector lint typecheck audit pytest

bench: install
	$(BIN)/python benchmarks/telemetry_overhead.py
	$(BIN)/python benchmarks/prediction_latency.py
	$(BIN)/python benchmarks/series_count.py

dashboards: install
	$(BIN)/python grafana/build_dashboards.py

clean:
	rm -rf data .pytest_cache .mypy_cache .ruff_cache
