"""`make stack` end to end: scripts/stack.py as a real process, on free ports, until every panel has data.

The stack is started as a user starts it (the script, with the binaries `make test` built), with
the intervals shortened through the environment it reads: the market feed appends a bar every
second, the service exports and Prometheus scrapes every 2 s. Then, against the stack's own
Prometheus:

1. every service metric of docs/telemetry.md is present, `model_accuracy` included (the feed's bars
   resolve the predictions Locust makes);
2. every panel query of both dashboards returns data, as Grafana would send it: the drift shift
   the stack enables by default raises NVDA's drift score until ModelDriftDetected fires, so the
   "Firing alerts" table has a row and the alert webhook logs a notification;
3. SIGTERM stops the stack with exit code 0 within a bound, and no process it started is left.

How long each step took is printed after the run ("e2e pipeline timings"); the time from the start
to every panel having data is the figure the README quotes.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import record_timing
from tests.e2e.test_pipeline import contract_metrics, expected_series_names
from tests.harness import ManagedProcess, built_binary, distinct_free_ports, wait_until
from tests.harness.dashboards import all_targets, grafana_intervals, substitute

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "scripts" / "stack.py"
PYTHON = REPO / ".venv" / "bin" / "python"
PORT_VARIABLES = (
    "POSTGRES",
    "REDIS",
    "JAEGER_OTLP",
    "JAEGER_QUERY",
    "JAEGER_QUERY_GRPC",
    "OTLP_GRPC",
    "OTLP_HTTP",
    "COLLECTOR_METRICS",
    "COLLECTOR_TELEMETRY",
    "COLLECTOR_HEALTH",
    "WEBHOOK",
    "ALERTMANAGER",
    "PROMETHEUS",
    "API",
    "LOCUST",
)
SCRAPE_SECONDS = 2
SERVICE_JOB = "prediction-api"
# Start-up: PostgreSQL's initdb, seeding and training the first model on two shared cores.
START_TIMEOUT = 360.0
# The drift shift needs ~60 fed bars (60 s at 1 s) to pass 0.2, then the alert's `for: 2m`.
PANELS_TIMEOUT = 480.0
STOP_TIMEOUT = 90.0
# Dashboard time range for $__range: the stack's age is enough for increase() over it.
RANGE_SECONDS = 600


@dataclass
class RunningStack:
    process: ManagedProcess
    state: Path
    ports: dict[str, int]
    started: float

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def prom(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url('PROMETHEUS')}/api/v1/{path}", params=params, timeout=20)
        assert response.status_code == 200, f"{params}: {response.text}"
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def pids(self) -> dict[str, int]:
        """name -> pid (= process group id) from the pid file the stack keeps."""
        lines = (self.state / "stack.pids").read_text().split("\n")
        return {name: int(pid) for name, pid in (line.split() for line in lines if line.strip())}

    def log(self, lines: int = 60) -> str:
        return self.process.log_tail(lines)


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    # Not pytest's tmp_path: that is private to root, and PostgreSQL runs as `postgres` under root,
    # so its data directory must be reachable (else the stack puts it under /var/tmp).
    state = Path(tempfile.mkdtemp(prefix="stockpred-stack-"))
    state.chmod(0o755)
    ports = dict(zip(PORT_VARIABLES, distinct_free_ports(len(PORT_VARIABLES)), strict=True))
    env = {
        "STACK_DIR": str(state),
        **{f"STACK_{name}_PORT": str(port) for name, port in ports.items()},
        # The binaries `make test` built (the harness runs the build scripts when unset).
        "OTELCOL_BIN": built_binary("otelcol"),
        "PROMETHEUS_BIN": built_binary("prometheus"),
        "ALERTMANAGER_BIN": built_binary("alertmanager"),
        "JAEGER_BIN": built_binary("jaeger"),
        "STACK_SCRAPE_INTERVAL": f"{SCRAPE_SECONDS}s",
        "OTEL_METRIC_EXPORT_INTERVAL": str(SCRAPE_SECONDS * 1000),
        "MARKET_FEED_INTERVAL_SECONDS": "1",
        "MONITOR_INTERVAL_SECONDS": "1",
        "LOG_JSON": "false",
    }
    started = time.monotonic()
    process = ManagedProcess(
        "stack", [str(PYTHON), str(STACK_SCRIPT)], log_path=state / "stack.out", env=env, cwd=REPO
    )
    running = RunningStack(process, state, ports, started)
    try:
        process.wait_ready(
            lambda: b"ready in" in process.log_path.read_bytes(), timeout=START_TIMEOUT, what="ready"
        )
        record_timing("stack start -> ready (every component answers)", time.monotonic() - started)
        yield running
    finally:
        process.stop()  # a no-op after the shutdown test; the stack's own stop kills its groups
        shutil.rmtree(state, ignore_errors=True)


def test_every_component_answers(stack: RunningStack) -> None:
    health = httpx.get(f"{stack.url('API')}/health", timeout=10).json()
    assert health["status"] == "ok", health
    assert health["components"]["redis"]["status"] == "up"
    assert health["components"]["database"]["status"] == "up"
    for name, path in (("PROMETHEUS", "/-/ready"), ("ALERTMANAGER", "/-/ready"), ("LOCUST", "/")):
        assert httpx.get(stack.url(name) + path, timeout=10).status_code == 200, name
    assert httpx.get(f"{stack.url('JAEGER_QUERY')}/api/services", timeout=10).status_code == 200
    assert httpx.get(f"{stack.url('COLLECTOR_HEALTH')}/", timeout=10).status_code == 200
    assert set(stack.pids()) == {
        "stack",
        "postgres",
        "redis",
        "jaeger",
        "otel-collector",
        "alertmanager",
        "prometheus",
        "api",
        "locust",
    }


def panel_queries() -> list[tuple[str, str, bool]]:
    """(where, PromQL as Grafana sends it for "All", instant?) of every panel target."""
    values = {
        **grafana_intervals(
            scrape_seconds=SCRAPE_SECONDS, step_seconds=SCRAPE_SECONDS, range_seconds=RANGE_SECONDS
        ),
        "symbol": ".*",
        "model_version": ".*",
    }
    return [
        (
            f"{uid}/{panel['title']}/{target['refId']}",
            substitute(target["expr"], values),
            bool(target["instant"]),
        )
        for uid, panel, target in all_targets()
    ]


def test_every_seed_metric_and_every_panel_has_data(stack: RunningStack) -> None:
    expected = expected_series_names(contract_metrics())
    assert "model_accuracy" in expected
    queries = panel_queries()
    missing: list[str] = []

    def everything_has_data() -> bool:
        found = {s["__name__"] for s in stack.prom("series", **{"match[]": f'{{job="{SERVICE_JOB}"}}'})}
        missing[:] = sorted(expected - found)
        now = time.time()
        for where, expr, instant in queries:
            if instant:
                empty = not stack.prom("query", query=expr, time=now)["result"]
            else:
                result = stack.prom("query_range", query=expr, start=now - 60, end=now, step=SCRAPE_SECONDS)
                empty = not result["result"]
            if empty:
                missing.append(f"{where}: {expr}")
        return not missing

    try:
        wait_until(everything_has_data, timeout=PANELS_TIMEOUT, interval=2, what="every metric and panel")
    except TimeoutError as error:
        pytest.fail(f"still without data: {missing}\n{error}\n{stack.log()}")
    record_timing("stack start -> every metric and panel query has data", time.monotonic() - stack.started)
    firing = stack.prom("query", query='ALERTS{alertstate="firing"}')["result"]
    assert any(alert["metric"]["alertname"] == "ModelDriftDetected" for alert in firing), firing
    # The alert went all the way: Alertmanager -> the stack's webhook, which logs it.
    webhook_log = stack.state / "logs" / "alert-webhook.log"
    wait_until(
        lambda: "ModelDriftDetected" in webhook_log.read_text(),
        timeout=60,
        what="the alert webhook to log ModelDriftDetected",
    )


def test_locust_sends_realistic_traffic_without_server_errors(stack: RunningStack) -> None:
    stats = httpx.get(f"{stack.url('LOCUST')}/stats/requests", timeout=10).json()
    by_name = {(row["method"], row["name"]): row for row in stats["stats"]}
    for key in (
        ("POST", "/predict"),
        ("POST", "/predict/batch"),
        ("GET", "/predictions/{id}"),
        ("GET", "/models/current"),
        ("GET", "/feature-store/stats"),
        ("GET", "/feature-store/metadata/{symbol}"),
        ("GET", "/health"),
        ("POST", "/predict [unknown symbol]"),
    ):
        assert key in by_name, (key, sorted(by_name))
        assert by_name[key]["num_requests"] > 0, key
    # Bad requests got their 4xx (else Locust counts a failure); nothing answered 5xx.
    assert stats["fail_ratio"] == 0, stats["errors"]
    codes = stack.prom(
        "query", query="sum by (http_response_status_code) (http_server_request_duration_seconds_count)"
    )["result"]
    statuses = {row["metric"]["http_response_status_code"] for row in codes}
    assert {"200", "404", "422"} <= statuses, statuses
    assert not any(status.startswith("5") for status in statuses), statuses


def test_sigterm_stops_everything_and_leaves_nothing(stack: RunningStack) -> None:
    pids = stack.pids()
    assert all(_alive(pid) for pid in pids.values()), pids
    stopping = time.monotonic()
    stack.process.signal(signal.SIGTERM)
    code = stack.process.wait(timeout=STOP_TIMEOUT)
    record_timing("stack SIGTERM -> exit", time.monotonic() - stopping)
    assert code == 0, stack.log()
    assert "stack: stopped" in stack.log()
    leftovers = {name: pid for name, pid in pids.items() if _group_alive(pid)}
    assert not leftovers, f"process groups still alive: {leftovers}"
    assert not (stack.state / "stack.pids").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """Any process left in the group (the stack itself is its own group's leader too)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
