"""The real processes of a run: shared servers (Redis, PostgreSQL, Jaeger, the collector) started
once, and one server under test started afresh for every measurement.

Everything is started through `tests/harness` (free loopback ports, logs, readiness, teardown),
the same code the integration and end-to-end tests use, so the benchmark runs what they test.
Each server under test gets a private copy of one seeded data directory (and, on PostgreSQL, a
fresh database), so no measurement inherits another one's prediction log or caches.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from benchmarks.httpbench.variants import (
    SYMBOLS,
    TTL_FOREVER_SECONDS,
    TTL_NEVER_SECONDS,
    Variant,
)
from tests.harness.process import LOOPBACK, ManagedProcess, ProcessExitedError, free_port, wait_until
from tests.harness.servers import (
    CollectorPorts,
    JaegerServer,
    Server,
    built_binary,
    create_database,
    drop_database,
    start_collector,
    start_jaeger,
    start_postgres,
    start_redis,
)
from tests.harness.service import STOCKPRED, ServiceProcess, start_service

REPO_ROOT = Path(__file__).resolve().parents[2]
OTEL_DIR = REPO_ROOT / "otel"
COLLECTOR_CONFIGS = (OTEL_DIR / "collector.yaml", OTEL_DIR / "collector.jaeger.yaml")

# Enough history for the 60-bar feature window and a quick 50-symbol training run.
SEED_DAYS = 150
# uvicorn's supervisor kills a worker that does not answer its health ping within 5 s
# (timeout_worker_healthcheck); a worker counts as settled once it outlived one such window.
WORKER_SETTLE_SECONDS = 7.0
WORKERS_TIMEOUT = 180.0

# The service's production defaults, written out because tests/harness/service.py layers
# test-speed values (0.5 s health checks, plain-text logs) underneath what we pass.
PRODUCTION_ENV = {
    "LOG_JSON": "true",
    "LOG_LEVEL": "INFO",
    "HEALTH_CHECK_INTERVAL_SECONDS": "5",
    "MONITOR_INTERVAL_SECONDS": "5",
}


class SetupError(RuntimeError):
    """The benchmark cannot run here (a missing tool, a server that does not start)."""


@contextlib.contextmanager
def harness_errors(what: str) -> Iterator[None]:
    """The harness skips or fails a *test* when a tool is missing; here that is a set-up error."""
    try:
        yield
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        raise SetupError(f"{what}: {exc}") from None


def scrub_environment() -> None:
    """Drop inherited settings (DATABASE_URL, REDIS_URL, OTEL_*, ...) from this process.

    Every child inherits our environment under what we pass; a stray variable from the shell
    would silently change a variant.
    """
    from service.config import Settings

    for key in list(os.environ):
        if key in Settings.model_fields or key.startswith(("OTEL_", "FASTAPI_OTEL")):
            del os.environ[key]


# --- tools ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    wrk: str
    vegeta: str
    otelcol: str | None


def find_tools(*, need_collector: bool) -> Tools:
    """wrk from the system (scripts/install-system-deps.sh); vegeta and the collector built by
    scripts/ (cached; $VEGETA_BIN and $OTELCOL_BIN win, as in the tests)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SetupError("wrk not found; install it with scripts/install-system-deps.sh")
    with harness_errors("vegeta"):
        vegeta = built_binary("vegeta")
    otelcol = None
    if need_collector:
        with harness_errors("the collector"):
            otelcol = built_binary("otelcol")
    return Tools(wrk=wrk, vegeta=vegeta, otelcol=otelcol)


# --- the seeded data directory ---------------------------------------------------------------------


def seed_env(data_dir: Path) -> dict[str, str]:
    """What every server under test shares: the fifty symbols and their synthetic market."""
    return {"DATA_DIR": str(data_dir), "SYMBOLS": ",".join(SYMBOLS), "SEED_DAYS": str(SEED_DAYS)}


def seed_data(workdir: Path) -> Path:
    """Seed fifty symbols and train the champion once (`stockpred seed` + `stockpred train`)."""
    data_dir = workdir / "seed"
    env = {**os.environ, **seed_env(data_dir), "OTEL_SDK_DISABLED": "true", "LOG_JSON": "false"}
    for command in (["seed"], ["train"]):
        result = subprocess.run(
            [str(STOCKPRED), *command], env=env, cwd=workdir, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SetupError(
                f"stockpred {command[0]} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
    return data_dir


# --- a server under test -----------------------------------------------------------------------------


@dataclass
class Running:
    """A started server under test: its URL and process; the checks a measurement needs."""

    variant: Variant
    url: str
    process: ManagedProcess
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    def cache_counts(self) -> Counter[str] | None:
        """Lookups answered per level so far (this worker's counters); None for the ceiling."""
        if self.variant.kind == "bare":
            return None
        stats: dict[str, Any] = self.client.get(f"{self.url}/feature-store/stats").json()
        return Counter(l1=stats["hits"]["l1"], redis=stats["hits"]["redis"], computed=stats["misses"])

    def served_from(self, requests: int = 10) -> Counter[str]:
        """`served_from` of a few requests of the variant's own shape: the level really answering."""
        levels: Counter[str] = Counter()
        for body in (self.variant.bodies() * requests)[:requests]:
            answer = self.post(body)
            for prediction in answer.get("predictions", [answer]):
                levels[str(prediction.get("served_from", "none"))] += 1
        return levels

    def post(self, body: str) -> dict[str, Any]:
        response = self.client.post(
            f"{self.url}{self.variant.path}", content=body, headers={"content-type": "application/json"}
        )
        if response.status_code != 200:
            raise SetupError(f"{self.variant.name}: {self.variant.path} answered {response.status_code}")
        answer: dict[str, Any] = response.json()
        return answer

    def check_telemetry(self) -> None:
        """Telemetry off must mean no span at all; on must mean the request had one."""
        if self.variant.kind == "bare":
            return
        trace_id = self.post(self.variant.bodies()[0]).get("trace_id")
        if trace_id is None and self.variant.batch:
            trace_id = self.post(self.variant.bodies()[0])["predictions"][0]["trace_id"]
        if self.variant.telemetry == "off" and trace_id is not None:
            raise SetupError(f"{self.variant.name}: telemetry off, yet the request ran inside a span")
        if self.variant.telemetry == "on" and self.variant.sample_ratio >= 1 and trace_id is None:
            raise SetupError(f"{self.variant.name}: telemetry on, yet the request had no span")


def worker_pids(parent: int) -> set[int]:
    """uvicorn's worker processes under `parent` (spawned children; not the resource tracker)."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except FileNotFoundError:
        return set()
    workers = set()
    for child in children:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.add(int(child))
    return workers


def wait_workers_settled(process: ManagedProcess, workers: int) -> None:
    """Wait until `workers` uvicorn workers have run unchanged for WORKER_SETTLE_SECONDS.

    The service's workers import MLflow, scikit-learn and pandas before they can answer
    uvicorn's 5 s health ping; on a busy two-core machine that can take longer, and uvicorn then
    kills and replaces them (its log says "Child process [...] died"). Measuring before the set
    is stable would measure fewer workers than claimed.
    """
    if workers <= 1:
        return
    seen: set[int] = set()
    since = time.monotonic()

    def settled() -> bool:
        nonlocal seen, since
        current = worker_pids(process.pid)
        if current != seen:
            seen, since = current, time.monotonic()
        return len(current) == workers and time.monotonic() - since >= WORKER_SETTLE_SECONDS

    wait_until(settled, timeout=WORKERS_TIMEOUT, interval=0.5, what=f"{workers} settled uvicorn workers")


# --- the run's shared servers ---------------------------------------------------------------------------


class Stack:
    """Shared servers for a run, and `serve(variant)` for each server under test.

    Redis, PostgreSQL and the collector (with Jaeger behind it, in Tempo's role) start only if a
    chosen variant needs them.
    """

    def __init__(self, workdir: Path, variants: list[Variant], *, collector: bool) -> None:
        self.workdir = workdir
        self._variants = variants
        self._want_collector = collector or any(v.telemetry == "on" for v in variants)
        self._exit = contextlib.ExitStack()
        self.seeded: Path | None = None
        self.redis: Server | None = None
        self.postgres: Server | None = None
        self.jaeger: JaegerServer | None = None
        self.collector: Server | None = None
        self.collector_ports: CollectorPorts | None = None
        self._starts = 0
        # Things seen on the servers that a reader of the figures should know (e.g. restarts).
        self.notes: list[str] = []

    def __enter__(self) -> Stack:
        try:
            self._start_shared()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _start_shared(self) -> None:
        services = [v for v in self._variants if v.kind == "service"]
        if services or self._want_collector:  # the collector ramp captures a service's payloads
            self.seeded = seed_data(self.workdir)
        if any(v.needs_redis for v in services):
            with harness_errors("Redis"):
                self.redis = self._exit.enter_context(start_redis(self._mkdir("redis")))
        if any(v.backend == "postgresql" for v in services):
            with harness_errors("PostgreSQL"):
                self.postgres = self._exit.enter_context(start_postgres(self._mkdir("postgres")))
        if self._want_collector:
            self._start_collector()

    def _start_collector(self) -> None:
        with harness_errors("Jaeger"):
            jaeger = start_jaeger(self._mkdir("jaeger"))
        self._exit.callback(jaeger.stop)
        self.jaeger = jaeger
        ports = CollectorPorts.pick()
        env = {
            **ports.env(traces_endpoint=jaeger.otlp_endpoint),
            "JAEGER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        }
        with harness_errors("the collector"):
            self.collector = self._exit.enter_context(
                start_collector(self._mkdir("collector"), COLLECTOR_CONFIGS, env, health_port=ports.health)
            )
        self.collector_ports = ports

    def _mkdir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- URLs of the collector ---

    @property
    def otlp_http_url(self) -> str:
        assert self.collector_ports is not None, "no collector in this run"
        return f"http://{LOOPBACK}:{self.collector_ports.otlp_http}"

    @property
    def collector_exporter_url(self) -> str:
        """The collector's Prometheus exporter (what Prometheus scrapes: every service series)."""
        assert self.collector_ports is not None, "no collector in this run"
        return f"http://{LOOPBACK}:{self.collector_ports.prometheus}/metrics"

    @property
    def collector_self_url(self) -> str:
        """The collector's own metrics (accepted, refused, failed, queue sizes)."""
        assert self.collector_ports is not None, "no collector in this run"
        return f"http://{LOOPBACK}:{self.collector_ports.telemetry}/metrics"

    def pipeline_pids(self) -> list[int]:
        """The collector's and Jaeger's processes (their CPU is telemetry's cost too)."""
        return [server.process.pid for server in (self.collector, self.jaeger) if server is not None]

    # --- servers under test ---

    @contextlib.contextmanager
    def serve(self, variant: Variant, label: str, *, otlp_endpoint: str | None = None) -> Iterator[Running]:
        """Start `variant` afresh, wait until every worker serves, check its telemetry mode.

        A start that times out or dies is tried once more (noted in the results): one flaky start
        on a busy machine should not end a 40-minute run. `otlp_endpoint` sends its telemetry
        somewhere else than the run's collector (the collector benchmark captures real export
        payloads that way).
        """
        self._starts += 1
        name = f"servers/{self._starts:03d}-{variant.name}-{label}"
        for attempt in (1, 2):
            workdir = self._mkdir(name if attempt == 1 else f"{name}-retry")
            cleanups: list[Callable[[], None]] = []
            try:
                running = self._start(variant, label, workdir, cleanups, otlp_endpoint)
            except (TimeoutError, ProcessExitedError) as error:
                self._clean(cleanups, workdir)
                if attempt == 2:
                    raise
                self.notes.append(
                    f"{variant.name} ({label}): the server did not start, retried once: {error}"
                )
                continue
            try:
                yield running
            finally:
                self._clean(cleanups, workdir)
            return

    def _start(
        self,
        variant: Variant,
        label: str,
        workdir: Path,
        cleanups: list[Callable[[], None]],
        otlp_endpoint: str | None,
    ) -> Running:
        """One start; what must be undone is appended to `cleanups` as soon as it exists."""
        if variant.kind == "bare":
            service = self._start_bare(variant, workdir)
        else:
            env = self._service_env(variant, workdir, cleanups, otlp_endpoint)
            with harness_errors(variant.name):
                service = start_service(workdir, env, workers=variant.workers)
        cleanups.append(service.stop)
        cleanups.append(lambda: self._note_restarts(variant, label, service.process))
        wait_workers_settled(service.process, variant.workers)
        running = Running(variant, service.url, service.process)
        cleanups.append(running.client.close)
        running.check_telemetry()
        return running

    @staticmethod
    def _clean(cleanups: list[Callable[[], None]], workdir: Path) -> None:
        for cleanup in reversed(cleanups):
            cleanup()
        cleanups.clear()
        shutil.rmtree(workdir / "data", ignore_errors=True)

    def _note_restarts(self, variant: Variant, label: str, process: ManagedProcess) -> None:
        """uvicorn logs "Child process [pid] died" when it replaces a worker that missed its ping."""
        lines = process.log_tail(100_000).splitlines()
        died = sum(1 for line in lines if "Child process" in line and "died" in line)
        if died:
            self.notes.append(
                f"{variant.name} ({label}): uvicorn replaced {died} worker(s) that did not answer its 5 s "
                f"health ping (log {process.log_path}); measured only after {variant.workers} had settled"
            )

    def _start_bare(self, variant: Variant, workdir: Path) -> ServiceProcess:
        port = free_port()
        argv = [sys.executable, "-m", "benchmarks.bare_app", "--host", LOOPBACK, "--port", str(port)]
        argv += ["--workers", str(variant.workers)]
        env = {"PYTHONPATH": str(REPO_ROOT), "OTEL_SDK_DISABLED": "true"}
        process = ManagedProcess("bare", argv, log_path=workdir / "bare.log", env=env, cwd=workdir)
        service = ServiceProcess(process, port)
        try:
            service.wait_ready()
        except BaseException:
            process.stop()
            raise
        return service

    def _service_env(
        self, variant: Variant, workdir: Path, cleanups: list[Callable[[], None]], otlp_endpoint: str | None
    ) -> dict[str, str]:
        """The environment that puts `stockpred serve` into the variant's state (variants.py)."""
        assert self.seeded is not None
        data_dir = workdir / "data"
        shutil.copytree(self.seeded, data_dir)
        env = {**PRODUCTION_ENV, **seed_env(data_dir)}
        env["FEATURE_L1_TTL_SECONDS"] = str(
            TTL_FOREVER_SECONDS if variant.cache == "l1" else TTL_NEVER_SECONDS
        )
        if variant.needs_redis:
            assert self.redis is not None
            redis.Redis.from_url(self.redis.url).flushall()
            env["REDIS_URL"] = self.redis.url
            env["FEATURE_REDIS_TTL_SECONDS"] = str(int(TTL_FOREVER_SECONDS))
        if variant.backend == "postgresql":
            assert self.postgres is not None
            name = f"bench_{uuid.uuid4().hex[:12]}"
            env["DATABASE_URL"] = create_database(self.postgres, name)
            postgres = self.postgres
            cleanups.append(lambda: drop_database(postgres, name))
        if variant.telemetry == "off":
            env["OTEL_SDK_DISABLED"] = "true"
        else:
            env["OTEL_SDK_DISABLED"] = "false"
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint or self.otlp_http_url
            env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
            env.update(variant.telemetry_env())
        return env
