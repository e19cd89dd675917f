# Two commands do all the set-up on a fresh machine:
#   make run   - serve the API on :8000 with embedded defaults (SQLite, local MLflow store, no Redis)
#   make test  - install everything the tests need (Python packages, Redis, PostgreSQL, and builds
#                from source of the collector, Prometheus, Alertmanager and Jaeger, cached outside
#                the repo) and run lint, type checks and every test.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-12)
PORT   ?= 8000
HOST   ?= 0.0.0.0

.PHONY: install run stack test lint typecheck audit system-deps collector prometheus jaeger vegeta tools pytest bench dashboards clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# requirements.lock pins every transitive version that CI and `make run` use.
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,load]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install
	$(BIN)/stockpred serve --host $(HOST) --port $(PORT)

# The whole pipeline without a container engine (scripts/stack.py): database, Redis, Jaeger,
# collector, Prometheus, Alertmanager, the API with the market feed, Locust. Ctrl-C stops it all.
stack: install system-deps tools
	$(BIN)/python scripts/stack.py

system-deps:
	scripts/install-system-deps.sh

# Builds from source, each cached under ~/.cache/stockpred and a no-op once cached. The paths go to
# pytest as environment variables; tests/harness/servers.py (BUILT_TOOLS) reads them.
collector:
	scripts/build-collector.sh

# Prometheus, promtool, Alertmanager and amtool at the releases compose.yaml pins.
prometheus:
	scripts/build-prometheus.sh

jaeger:
	scripts/build-jaeger.sh

# The constant-rate load generator of `make bench` (latency at fixed offered rates).
vegeta:
	scripts/build-vegeta.sh

tools: collector prometheus jaeger vegeta

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy service

# Known vulnerabilities in every pinned version (needs PyPI); findings fail, see README "Supply chain".
audit: install
	$(BIN)/python scripts/audit_lock.py requirements.lock

pytest: install
	OTELCOL_BIN="$$(scripts/build-collector.sh | tail -n 1)" \
	PROMETHEUS_BIN="$$(scripts/build-prometheus.sh prometheus | tail -n 1)" \
	PROMTOOL_BIN="$$(scripts/build-prometheus.sh promtool | tail -n 1)" \
	ALERTMANAGER_BIN="$$(scripts/build-prometheus.sh alertmanager | tail -n 1)" \
	AMTOOL_BIN="$$(scripts/build-prometheus.sh amtool | tail -n 1)" \
	JAEGER_BIN="$$(scripts/build-jaeger.sh | tail -n 1)" \
	VEGETA_BIN="$$(scripts/build-vegeta.sh | tail -n 1)" \
	$(BIN)/pytest

test: install system-deps tools lint typecheck audit pytest

# The benchmark of the real thing (benchmarks/httpbench): real uvicorn processes, real HTTP, the
# collector and Jaeger; writes benchmarks/results/<date>.md. About 40 min on 2 cores at full length.
# A smoke test of its plumbing, or a subset (variant names or tags, see --help):
#   make bench BENCH_ARGS=--quick
#   make bench BENCH_ARGS="--quick --only l1,bare"
# Then the series budget of docs/telemetry.md (in-process, seconds).
# No market feed: bars arriving on their own would invalidate the cached features being measured.
bench: export MARKET_FEED = off
bench: install system-deps collector jaeger vegeta
	OTELCOL_BIN="$$(scripts/build-collector.sh | tail -n 1)" \
	JAEGER_BIN="$$(scripts/build-jaeger.sh | tail -n 1)" \
	VEGETA_BIN="$$(scripts/build-vegeta.sh | tail -n 1)" \
	$(BIN)/python -m benchmarks.httpbench $(BENCH_ARGS)
	$(BIN)/python benchmarks/series_count.py

dashboards: install
	$(BIN)/python grafana/build_dashboards.py

clean:
	rm -rf data .pytest_cache .mypy_cache .ruff_cache
