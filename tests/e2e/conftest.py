"""The whole pipeline as real processes on loopback, started once for tests/e2e/test_pipeline.py.

    service --OTLP/HTTP--> collector 1 (collector.yaml + .jaeger + .test-capture + tee layer)
                             |-- /metrics <--scrape-- Prometheus 1 --> Alertmanager --> WebhookSink
                             |-- $CAPTURE_DIR/traces.json, metrics.json
                             |-- traces --OTLP/gRPC--> Jaeger 1 (query API: the exemplar test)
                             `-- tee --OTLP/HTTP--> collector 2 (collector.yaml + .remote-write + .jaeger)
                                                      |-- remote write --> Prometheus 2
                                                      `-- traces --OTLP/gRPC--> Jaeger 2

The service has one OTLP endpoint, so the remote-write path gets the same traffic through a tee:
collector 1 also forwards what it receives from the service to collector 2 (the agent -> gateway
pattern; a test-only layer written here, adding pipelines and leaving the repo's lists alone).
Both Prometheus then hold the same process's series, one scraped, one remote-written, and each
collector's Jaeger holds the traces its Prometheus' exemplars point to. Two Jaegers, not one: both
collectors export the same spans, and one store would hold every span twice.

Configs are the repository's, copied into the test's directory with only addresses rewritten and
the intervals below shortened. Every port is picked free on loopback.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.harness import (
    CollectorPorts,
    JaegerServer,
    ManagedProcess,
    Server,
    WebhookSink,
    create_database,
    distinct_free_ports,
    drop_database,
    dump_logs,
    start_alertmanager,
    start_collector,
    start_jaeger,
    start_prometheus,
    start_redis,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
OTEL_DIR = REPO_ROOT / "otel"
PROMETHEUS_DIR = REPO_ROOT / "prometheus"
STOCKPRED = REPO_ROOT / ".venv" / "bin" / "stockpred"
LOOPBACK = "127.0.0.1"

SERVICE_JOB = "prediction-api"
SYMBOLS = ("AAPL", "MSFT", "GOOGL", "AMZN", "NVDA")
# Passed to the service explicitly so the test computes the same "next synthetic bar" it would.
SEED = 42

# Everything runs faster than in production so the file finishes in minutes: the service exports
# every second, Prometheus scrapes and evaluates every second. Latency of one hop is then ~1 s.
EXPORT_INTERVAL_MS = 1000
FAST_INTERVAL = "1s"

# Collector layers after collector.yaml (the tee layer is written by the test). Both send traces to
# Jaeger with the repository's own layer, so that layer is what is tested here.
SCRAPE_LAYERS = ("collector.jaeger.yaml", "collector.test-capture.yaml")
REMOTE_LAYERS = ("collector.remote-write.yaml", "collector.jaeger.yaml")

# The rule files are the repository's, unchanged: the Redis test waits the real `for:` of RedisDown
# (1m at the time of writing), which dominates the run time of this file.

# Deadlines: two shared cores run eleven processes here.
SERVICE_START_TIMEOUT = 180.0
DEFAULT_TIMEOUT = 90.0

# Timings shown at the end of the run (pytest_terminal_summary below).
_TIMINGS: dict[str, float] = {}
_PHASES: dict[str, float] = {}
_TEST_FILE = "tests/e2e/test_pipeline.py"


# --- small helpers -------------------------------------------------------------------------------


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds of a Prometheus duration such as `5m` or `1m30s`."""
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def record_timing(name: str, seconds: float) -> None:
    """Keep a measured duration for the summary printed after the run."""
    _TIMINGS[name] = seconds


# --- the pipeline ------------------------------------------------------------------------------------


@dataclass
class Pipeline:
    """Handles on every running part; `redis` is replaced when a test restarts it."""

    workdir: Path
    service: ManagedProcess
    service_url: str
    redis: Server
    postgres: Server
    collector: Server
    capture_dir: Path
    prometheus: Server
    alertmanager: Server
    sink: WebhookSink
    remote_collector: Server
    remote_prometheus: Server
    jaeger: JaegerServer
    remote_jaeger: JaegerServer
    alertmanager_config: dict[str, Any]
    alert_for: dict[str, float]
    started_at: float = field(default_factory=time.time)

    def processes(self) -> list[Server | ManagedProcess]:
        return [
            self.service,
            self.redis,
            self.postgres,
            self.collector,
            self.prometheus,
            self.alertmanager,
            self.remote_collector,
            self.remote_prometheus,
            self.jaeger,
            self.remote_jaeger,
        ]

    def wait(self, predicate: Callable[[], bool], *, what: str, timeout: float = DEFAULT_TIMEOUT) -> float:
        """`wait_until` that quotes every process log on timeout; returns the seconds it took."""
        started = time.monotonic()
        try:
            wait_until(predicate, timeout=timeout, interval=0.5, what=what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{dump_logs(*self.processes(), lines=40)}") from None
        return time.monotonic() - started

    def restart_redis(self) -> None:
        """A new Redis on the same port (the service's REDIS_URL does not change); it starts empty."""
        self.redis = start_redis(self.workdir / "redis", port=self.redis.port)

    # Prometheus HTTP API -----------------------------------------------------------------------

    def prom(self, path: str, *, remote: bool = False, **params: str) -> Any:
        server = self.remote_prometheus if remote else self.prometheus
        response = httpx.get(f"{server.url}/api/v1/{path}", params=params, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def series(self, match: str, *, remote: bool = False) -> list[dict[str, str]]:
        """Every series matching `match` since the pipeline started (stale ones included)."""
        start, end = str(self.started_at - 60), str(time.time() + 60)
        return list(self.prom("series", remote=remote, **{"match[]": match, "start": start, "end": end}))


@pytest.fixture(scope="module")
def pipeline(
    seeded_data_dir: Path, postgres_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """Start everything, wait until each part answers, and always stop it all again."""
    started = time.monotonic()
    workdir = tmp_path_factory.mktemp("e2e")
    with contextlib.ExitStack() as stack:
        built = _start(stack, workdir, seeded_data_dir, postgres_server)
        _PHASES["pipeline start-up"] = time.monotonic() - started
        yield built
        stopping = time.monotonic()
        # Callbacks run here, newest first: service before its dependencies.
        stack.close()
        _PHASES["pipeline tear-down"] = time.monotonic() - stopping


def _start(stack: contextlib.ExitStack, workdir: Path, seeded: Path, postgres: Server) -> Pipeline:
    (service_port, prom_port, am_port) = distinct_free_ports(3)
    c1, c2 = CollectorPorts.pick(), CollectorPorts.pick()

    sink = stack.enter_context(WebhookSink())
    jaeger_dirs = [workdir / "jaeger", workdir / "jaeger-remote"]
    for path in jaeger_dirs:
        path.mkdir()
    jaeger, remote_jaeger = (stack.enter_context(start_jaeger(path)) for path in jaeger_dirs)
    (workdir / "redis").mkdir()
    redis_server = start_redis(workdir / "redis")
    holder: dict[str, Any] = {}
    # The Redis test swaps the server; stop whichever one is current at the end.
    stack.callback(lambda: holder["pipeline"].redis.stop() if "pipeline" in holder else redis_server.stop())

    database = f"e2e_{uuid.uuid4().hex[:12]}"
    database_url = create_database(postgres, database)
    stack.callback(drop_database, postgres, database)

    am_config = alertmanager_config(sink)
    am_file = _write_yaml(workdir / "alertmanager" / "alertmanager.yml", am_config)
    alertmanager = stack.enter_context(start_alertmanager(am_file.parent, am_file, port=am_port))

    remote_dir = workdir / "prometheus-remote"
    remote_dir.mkdir()
    (remote_dir / "prometheus.yml").write_text(
        "# remote-write receiver only: nothing to scrape\nglobal: {}\n"
    )
    remote_prometheus = stack.enter_context(start_prometheus(remote_dir, remote_dir / "prometheus.yml"))

    remote_env = {
        **_collector_env(c2, remote_jaeger),
        "PROMETHEUS_REMOTE_WRITE_URL": f"{remote_prometheus.url}/api/v1/write",
    }
    remote_configs = [OTEL_DIR / name for name in ("collector.yaml", *REMOTE_LAYERS)]
    (workdir / "collector-remote").mkdir()
    remote_collector = stack.enter_context(
        start_collector(workdir / "collector-remote", remote_configs, remote_env, health_port=c2.health)
    )

    capture_dir = workdir / "capture"
    capture_dir.mkdir()
    tee = _write_tee_layer(workdir / "collector" / "collector.e2e-tee.yaml", c2.otlp_http)
    configs = [*(OTEL_DIR / name for name in ("collector.yaml", *SCRAPE_LAYERS)), tee]
    env = {**_collector_env(c1, jaeger), "CAPTURE_DIR": str(capture_dir)}
    collector = stack.enter_context(
        start_collector(workdir / "collector", configs, env, health_port=c1.health)
    )

    rule_files = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
    alert_for = alert_durations(rule_files)
    targets = {
        "otel-collector": f"{LOOPBACK}:{c1.prometheus}",
        "otel-collector-self": f"{LOOPBACK}:{c1.telemetry}",
        "prometheus": f"{LOOPBACK}:{prom_port}",
        "alertmanager": f"{LOOPBACK}:{am_port}",
        "prediction-api-liveness": f"{LOOPBACK}:{service_port}",
    }
    prom_config = prometheus_config(targets, f"{LOOPBACK}:{am_port}", rule_files)
    prom_file = _write_yaml(workdir / "prometheus" / "prometheus.yml", prom_config)
    prometheus = stack.enter_context(start_prometheus(prom_file.parent, prom_file, port=prom_port))

    data_dir = workdir / "data"
    shutil.copytree(seeded, data_dir)
    service = _start_service(
        stack,
        workdir,
        service_port,
        {
            "DATA_DIR": str(data_dir),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_server.url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOOPBACK}:{c1.otlp_http}",
        },
    )
    built = Pipeline(
        workdir=workdir,
        service=service,
        service_url=f"http://{LOOPBACK}:{service_port}",
        redis=redis_server,
        postgres=postgres,
        collector=collector,
        capture_dir=capture_dir,
        prometheus=prometheus,
        alertmanager=alertmanager,
        sink=sink,
        remote_collector=remote_collector,
        remote_prometheus=remote_prometheus,
        jaeger=jaeger,
        remote_jaeger=remote_jaeger,
        alertmanager_config=am_config,
        alert_for=alert_for,
    )
    holder["pipeline"] = built
    built.wait(lambda: _targets_up(built, set(targets)), what=f"Prometheus targets {sorted(targets)} up")
    return built


def _start_service(
    stack: contextlib.ExitStack, workdir: Path, port: int, env: dict[str, str]
) -> ManagedProcess:
    """`stockpred serve` as a real process; ready once /health says ok (every dependency up)."""
    assert STOCKPRED.exists(), f"{STOCKPRED} missing: create the venv (make install)"
    service_env = {
        **env,
        "SEED": str(SEED),
        # The tests send the next bars themselves and count what they resolve.
        "MARKET_FEED": "off",
        "LOG_JSON": "false",  # readable in the failure report
        # Background checks every second so an outage shows in the gauges within ~1 s.
        "HEALTH_CHECK_INTERVAL_SECONDS": "1",
        "MONITOR_INTERVAL_SECONDS": "1",
        # L1 entries expire at once, so every lookup reaches Redis: each prediction's trace then has a
        # Redis span (a hit, or a miss followed by computing from PostgreSQL and writing back).
        "FEATURE_L1_TTL_SECONDS": "0.001",
        "OTEL_METRIC_EXPORT_INTERVAL": str(EXPORT_INTERVAL_MS),
        "OTEL_BSP_SCHEDULE_DELAY": "500",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    service_dir = workdir / "service"
    service_dir.mkdir()
    process = ManagedProcess(
        "stockpred",
        [str(STOCKPRED), "serve", "--host", LOOPBACK, "--port", str(port)],
        log_path=service_dir / "service.log",
        env=service_env,
        cwd=service_dir,  # no stray .env from the checkout
    )
    stack.callback(process.stop)
    url = f"http://{LOOPBACK}:{port}"

    def healthy() -> bool:
        response = httpx.get(f"{url}/health", timeout=2)
        return response.status_code == 200 and response.json()["status"] == "ok"

    process.wait_ready(healthy, timeout=SERVICE_START_TIMEOUT, what="/health status ok")
    return process


def _targets_up(built: Pipeline, jobs: set[str]) -> bool:
    active = built.prom("targets", state="active")["activeTargets"]
    healthy = {target["labels"]["job"] for target in active if target["health"] == "up"}
    return jobs <= healthy


# --- collectors ------------------------------------------------------------------------------------


def _collector_env(ports: CollectorPorts, jaeger: JaegerServer) -> dict[str, str]:
    """A collector's ports, with traces going to `jaeger` (the Tempo endpoint is unused then)."""
    return {
        **ports.env(traces_endpoint=jaeger.otlp_endpoint),
        "JAEGER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
    }


def _write_tee_layer(path: Path, otlp_http_port: int) -> Path:
    """Test-only layer: forward what collector 1 receives from the service to collector 2.

    Own pipelines (layering replaces lists), fed by the OTLP receiver only: collector 2 computes
    its span metrics from the forwarded spans, as collector 1 does.
    """
    layer = {
        "exporters": {"otlp_http/e2e-tee": {"endpoint": f"http://{LOOPBACK}:{otlp_http_port}"}},
        "service": {
            "pipelines": {
                f"{signal}/e2e-tee": {
                    "receivers": ["otlp/app"],
                    "processors": ["memory_limiter/collector"],
                    "exporters": ["otlp_http/e2e-tee"],
                }
                for signal in ("traces", "metrics")
            }
        },
    }
    return _write_yaml(path, layer)


# --- Prometheus and Alertmanager configs ---------------------------------------------------------


def alert_durations(rule_files: list[Path]) -> dict[str, float]:
    """Each alert's `for:` in seconds (the longest when an alert has several rules), for deadlines."""
    alert_for: dict[str, float] = {}
    for path in rule_files:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    seconds = parse_duration(rule.get("for", "0s"))
                    alert_for[rule["alert"]] = max(seconds, alert_for.get(rule["alert"], 0.0))
    return alert_for


def prometheus_config(targets: dict[str, str], alertmanager: str, rule_files: list[Path]) -> dict[str, Any]:
    """prometheus/prometheus.yml with loopback targets, absolute rule files and 1 s intervals.

    Every scrape job of the file must have a target here: a job added upstream fails the test
    until this test knows where it points.
    """
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(
        scrape_interval=FAST_INTERVAL, scrape_timeout=FAST_INTERVAL, evaluation_interval=FAST_INTERVAL
    )
    config["rule_files"] = [str(path) for path in rule_files]
    for manager in config["alerting"]["alertmanagers"]:
        for static in manager["static_configs"]:
            static["targets"] = [alertmanager]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == set(targets), f"scrape jobs {sorted(jobs)} vs targets known to the test {sorted(targets)}"
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [targets[job["job_name"]]]
    return config


def alertmanager_config(sink: WebhookSink) -> dict[str, Any]:
    """prometheus/alertmanager.yml with webhooks on the sink (same paths) and 1-2 s grouping.

    The repo waits 10-30 s before a group's first notification and 5 min before the next one
    (e.g. the "resolved" message); here 1 s and 2 s, so a notification follows the alert at once.
    """
    config = yaml.safe_load((PROMETHEUS_DIR / "alertmanager.yml").read_text())

    def shorten(route: dict[str, Any], *, root: bool) -> None:
        if root or "group_wait" in route:
            route["group_wait"] = "1s"
        if root or "group_interval" in route:
            route["group_interval"] = "2s"
        for child in route.get("routes", []):
            shorten(child, root=False)

    shorten(config["route"], root=True)
    base = sink.url.rstrip("/")
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = base + (urlsplit(webhook["url"]).path or "/")
    return config


def _write_yaml(path: Path, content: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


# --- timings ---------------------------------------------------------------------------------------


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid.startswith(_TEST_FILE):
        name = report.nodeid.split("::")[-1]
        _PHASES[f"{name} ({report.when})"] = _PHASES.get(f"{name} ({report.when})", 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _PHASES and not _TIMINGS:
        return
    terminalreporter.section("e2e pipeline timings")
    for name, seconds in _PHASES.items():
        if seconds >= 0.05:
            terminalreporter.write_line(f"{seconds:8.1f}s  {name}")
    for name, seconds in _TIMINGS.items():
        terminalreporter.write_line(f"{seconds:8.1f}s  measured: {name}")
    if _PHASES:
        total = sum(seconds for name, seconds in _PHASES.items() if name.endswith(")"))
        terminalreporter.write_line(f"{total:8.1f}s  total e2e (setup + calls + teardown of {_TEST_FILE})")
