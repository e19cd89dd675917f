"""Start the real servers the tests need, each private to the test run, on free loopback ports.

Every `start_*` returns a `Server` once it answers (not merely once the process exists) and
stops what it started if it never becomes ready. Stop a server with `.stop()` or a `with` block.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import httpx
import psycopg
import pytest
import redis
from psycopg import sql

from tests.harness.process import (
    LOOPBACK,
    ManagedProcess,
    distinct_free_ports,
    free_port,
    in_ci,
    require_binary,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Credentials of the application role in the test PostgreSQL (test-only instance, loopback only).
PG_USER = "stockpred"
PG_PASSWORD = "stockpred"
PG_DATABASE = "stockpred"
# initdb's superuser; named explicitly so it is the same whoever runs the tests.
PG_SUPERUSER = "postgres"

# Generous readiness deadlines: CI machines have two cores shared with the test run itself.
REDIS_START_TIMEOUT = 20.0
POSTGRES_START_TIMEOUT = 60.0
PROMETHEUS_START_TIMEOUT = 60.0
ALERTMANAGER_START_TIMEOUT = 30.0
COLLECTOR_START_TIMEOUT = 60.0
JAEGER_START_TIMEOUT = 60.0
MLFLOW_START_TIMEOUT = 90.0


@dataclass(eq=False)
class Server:
    """A started server: where it listens and the process behind it.

    `url` is what a client is configured with: `redis://...`, a SQLAlchemy URL, or the HTTP base
    URL (no trailing slash) for Prometheus, Alertmanager and the collector.
    """

    name: str
    port: int
    url: str
    process: ManagedProcess
    workdir: Path
    host: str = LOOPBACK
    _cleanups: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def address(self) -> str:
        """`host:port`, the form scrape targets and listen flags use."""
        return f"{self.host}:{self.port}"

    def is_running(self) -> bool:
        return self.process.is_running()

    def log_tail(self, lines: int = 80) -> str:
        return self.process.log_tail(lines)

    def add_cleanup(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` after the process has stopped (e.g. remove a data directory)."""
        self._cleanups.append(cleanup)

    def stop(self) -> None:
        """Stop the process, then run cleanups. Idempotent."""
        self.process.stop()
        while self._cleanups:
            self._cleanups.pop()()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def dump_logs(*servers: Server | ManagedProcess, lines: int = 80) -> str:
    """The log tails of `servers` as one text, for assertion messages and debugging."""
    parts = []
    for server in servers:
        process = server.process if isinstance(server, Server) else server
        parts.append(f"----- {process.name} ({process.log_path}) -----\n{process.log_tail(lines)}")
    return "\n".join(parts)


def _ready_or_stopped(server: Server, probe: Callable[[], bool], *, timeout: float, what: str) -> Server:
    """Wait for `server` to answer; if it doesn't, stop it so a failed start leaks nothing."""
    try:
        server.process.wait_ready(probe, timeout=timeout, what=what)
    except BaseException:
        server.stop()
        raise
    return server


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2.0).status_code == 200


# --- Redis -------------------------------------------------------------------------------------


def start_redis(workdir: Path, port: int | None = None) -> Server:
    """Start a memory-only Redis. Pass `port` to restart one on the port a client already uses."""
    binary = require_binary("redis-server")
    port = port or free_port()
    # --save '' and --appendonly no: nothing is written to disk, so a restart starts empty.
    argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(workdir)]
    process = ManagedProcess("redis", argv, log_path=workdir / f"redis-{port}.log", cwd=workdir)
    server = Server("redis", port, f"redis://{LOOPBACK}:{port}/0", process, workdir)

    def ping() -> bool:
        client = redis.Redis(host=LOOPBACK, port=port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    return _ready_or_stopped(server, ping, timeout=REDIS_START_TIMEOUT, what="PING")


# --- PostgreSQL --------------------------------------------------------------------------------


def _postgres_conninfo(port: int, dbname: str = "postgres") -> str:
    return f"host={LOOPBACK} port={port} user={PG_SUPERUSER} dbname={dbname} connect_timeout=2"


def postgres_url(port: int, database: str = PG_DATABASE) -> str:
    """SQLAlchemy URL (psycopg 3 driver) for the application role on a test PostgreSQL."""
    return f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@{LOOPBACK}:{port}/{database}"


def start_postgres(workdir: Path, *, settings: Mapping[str, str] | None = None) -> Server:
    """Start a throwaway PostgreSQL with role and database `stockpred` (password `stockpred`).

    PostgreSQL refuses to run as root, so under root initdb and the server run as the `postgres`
    system user (Debian's package creates it). Its files live in a fresh temp dir owned by that
    user, outside `workdir`, because pytest's temp dirs are private to root. The log stays in
    `workdir`. `settings` (`-c name=value`) override the speed settings below, e.g.
    `synchronous_commit=on` for a test that crashes the server and counts committed rows.
    """
    # Resolved, so that initdb comes from the server's own (versioned) bin dir, not a PATH symlink.
    postgres = str(Path(require_binary("postgres", "/usr/lib/postgresql/*/bin/postgres")).resolve())
    initdb = str(Path(postgres).with_name("initdb"))
    run_as = PG_SUPERUSER if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="pg-"))  # short path: unix socket paths max ~100 chars
    data_dir, socket_dir = root / "data", root / "sock"
    socket_dir.mkdir()
    if run_as:
        for path in (root, socket_dir):
            shutil.chown(path, run_as, run_as)
    try:
        _initdb(initdb, data_dir, run_as=run_as, log_path=workdir / "postgres-initdb.log")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise

    port = free_port()
    argv = [postgres, "-D", str(data_dir), "-p", str(port), "-k", str(socket_dir)]
    argv += ["-c", f"listen_addresses={LOOPBACK}"]
    # Durability off: a test database is thrown away, and fsync dominates its run time.
    argv += ["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off"]
    for name, value in (settings or {}).items():
        argv += ["-c", f"{name}={value}"]  # the last -c of a name wins
    process = ManagedProcess(
        "postgres",
        argv,
        log_path=workdir / f"postgres-{port}.log",
        cwd=root,
        user=run_as,
        stop_signal=signal.SIGINT,  # "fast" shutdown; SIGTERM would wait for clients to leave
    )
    server = Server("postgres", port, postgres_url(port), process, workdir)
    server.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))

    def connects() -> bool:
        with psycopg.connect(_postgres_conninfo(port)) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    _ready_or_stopped(server, connects, timeout=POSTGRES_START_TIMEOUT, what="a connection")
    try:
        _create_app_role(port)
    except BaseException:
        server.stop()
        raise
    return server


def restart_postgres(server: Server) -> None:
    """Start a test PostgreSQL again after `server.process.stop()`: same port, same data.

    Fault tests stop the database under load and bring it back; clients keep their URL.
    """
    server.process = server.process.restarted()

    def connects() -> bool:
        with psycopg.connect(_postgres_conninfo(server.port)) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    server.process.wait_ready(connects, timeout=POSTGRES_START_TIMEOUT, what="a connection")


def crash_postgres(server: Server, *, timeout: float = 30.0) -> None:
    """SIGKILL the postmaster alone, as the OOM killer would: no shutdown checkpoint is written, so
    the next start runs crash recovery. Its backends notice their parent is gone and exit; any
    still there after `timeout` are killed too, so `restart_postgres` finds no shared memory in use.
    """
    process = server.process
    process.signal(signal.SIGKILL)
    process.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while _group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.stop()  # kills leftovers of the group, closes the log


def _group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group `pgid` (zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def _initdb(initdb: str, data_dir: Path, *, run_as: str | None, log_path: Path) -> None:
    # trust auth: this instance listens on loopback only and lives for one test run.
    argv = [initdb, "-D", str(data_dir), f"--username={PG_SUPERUSER}", "--auth=trust"]
    argv += ["--encoding=UTF8", "--locale=C", "--no-sync"]  # no-sync: speed, as above
    result = subprocess.run(
        argv,
        user=run_as,
        group=run_as,
        extra_groups=[] if run_as else None,
        cwd=data_dir.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log_path.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def _create_app_role(port: int) -> None:
    with psycopg.connect(_postgres_conninfo(port), autocommit=True) as conn:
        role, password = sql.Identifier(PG_USER), sql.Literal(PG_PASSWORD)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(role, password))
        _create_owned_database(conn, PG_DATABASE)


def _create_owned_database(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    owner = sql.Identifier(PG_USER)
    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), owner))


def create_database(server: Server, name: str) -> str:
    """Create an empty database owned by `stockpred` and return its SQLAlchemy URL."""
    with psycopg.connect(_postgres_conninfo(server.port), autocommit=True) as conn:
        _create_owned_database(conn, name)
    return postgres_url(server.port, name)


def drop_database(server: Server, name: str) -> None:
    """Drop a database even if a client still holds connections to it (FORCE, PostgreSQL 13+)."""
    with psycopg.connect(_postgres_conninfo(server.port), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- MLflow tracking server ---------------------------------------------------------------------


def start_mlflow(workdir: Path, backend_store: Path, *, port: int | None = None, wait: bool = True) -> Server:
    """`mlflow server` from the venv on a SQLite store (e.g. a copy of a seeded `mlflow.db`).

    Artifacts stay where the store's runs say they are (local paths), so models registered by the
    seeded fixture download without copying. Job execution (GenAI scorers: a huey consumer per
    core) is off: the registry needs none of it, and it makes start-up four times slower here.
    `wait=False` returns at once, for a restart whose outage the test measures; `wait_mlflow`
    then waits for it.
    """
    binary = REPO_ROOT / ".venv" / "bin" / "mlflow"
    assert binary.exists(), f"{binary} missing: create the venv (make install)"
    port = port or free_port()
    argv = [str(binary), "server", "--backend-store-uri", f"sqlite:///{backend_store}"]
    argv += ["--default-artifact-root", (workdir / "artifacts").as_uri(), "--no-serve-artifacts"]
    argv += ["--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    process = ManagedProcess(
        "mlflow",
        argv,
        log_path=workdir / f"mlflow-{port}.log",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        cwd=workdir,
    )
    server = Server("mlflow", port, f"http://{LOOPBACK}:{port}", process, workdir)
    return wait_mlflow(server) if wait else server


def wait_mlflow(server: Server) -> Server:
    return _ready_or_stopped(
        server, lambda: _http_ok(f"{server.url}/health"), timeout=MLFLOW_START_TIMEOUT, what="/health"
    )


# --- binaries we build from source ---------------------------------------------------------------


@dataclass(frozen=True)
class BuiltTool:
    """A binary a script of ours builds and caches outside the repo (see scripts/).

    `make test` builds them first and passes the paths in `env_var`; without it the harness runs
    the script itself (a no-op when the cache entry exists, minutes when it doesn't).
    """

    env_var: str
    script: str
    args: tuple[str, ...] = ()


BUILT_TOOLS: dict[str, BuiltTool] = {
    "otelcol": BuiltTool("OTELCOL_BIN", "build-collector.sh"),
    # The releases compose.yaml pins, so tests run what the stack ships.
    "prometheus": BuiltTool("PROMETHEUS_BIN", "build-prometheus.sh", ("prometheus",)),
    "promtool": BuiltTool("PROMTOOL_BIN", "build-prometheus.sh", ("promtool",)),
    "alertmanager": BuiltTool("ALERTMANAGER_BIN", "build-prometheus.sh", ("alertmanager",)),
    "amtool": BuiltTool("AMTOOL_BIN", "build-prometheus.sh", ("amtool",)),
    "jaeger": BuiltTool("JAEGER_BIN", "build-jaeger.sh"),
    # The constant-rate load generator of `make bench` (benchmarks/httpbench).
    "vegeta": BuiltTool("VEGETA_BIN", "build-vegeta.sh"),
}

BUILD_TIMEOUT = 1800.0  # cold builds measured 5 min (Prometheus) on two cores; generous


def _unavailable(message: str) -> NoReturn:
    """A binary we cannot get: skip locally, fail in CI (where nothing may silently go untested)."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@functools.cache
def built_binary(name: str) -> str:
    """Path of the binary `name` of BUILT_TOOLS: its environment variable, else its build script.

    A variable that names no executable is a mistake and always fails; a script that cannot build
    (no Go, no network) skips the tests locally and fails them in CI.
    """
    tool = BUILT_TOOLS[name]
    from_env = os.environ.get(tool.env_var)
    if from_env:
        if not os.access(from_env, os.X_OK):
            pytest.fail(f"{tool.env_var}={from_env} is not an executable file")
        return from_env
    script = REPO_ROOT / "scripts" / tool.script
    if not script.exists():
        _unavailable(f"{script} is missing and {tool.env_var} is unset; cannot get {name}")
    result = subprocess.run(
        ["bash", str(script), *tool.args],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        _unavailable(
            f"{tool.env_var} is unset and {script.name} {' '.join(tool.args)} failed "
            f"({result.returncode}):\n{result.stderr[-4000:]}"
        )
    path = lines[-1].strip()
    if not os.access(path, os.X_OK):
        pytest.fail(f"{script} printed {path!r} as its last line, which is not an executable")
    return path


# --- Prometheus and Alertmanager ---------------------------------------------------------------


def start_prometheus(
    workdir: Path, config_file: Path, *, extra_flags: Sequence[str] = (), port: int | None = None
) -> Server:
    """Start our Prometheus build with exemplar storage, the remote-write receiver and /-/reload.

    The same flags as compose.yaml: in 3.x exemplar storage is still a feature flag
    (`--enable-feature`); the remote-write receiver and the lifecycle API are ordinary flags.
    """
    binary = built_binary("prometheus")
    port = port or free_port()
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--enable-feature=exemplar-storage",
        "--web.enable-remote-write-receiver",
        "--web.enable-lifecycle",
        *extra_flags,
    ]
    process = ManagedProcess("prometheus", argv, log_path=workdir / f"prometheus-{port}.log", cwd=workdir)
    server = Server("prometheus", port, f"http://{LOOPBACK}:{port}", process, workdir)
    return _ready_or_stopped(
        server, lambda: _http_ok(f"{server.url}/-/ready"), timeout=PROMETHEUS_START_TIMEOUT, what="/-/ready"
    )


def start_alertmanager(workdir: Path, config_file: Path, *, port: int | None = None) -> Server:
    """Start a single Alertmanager; an empty cluster address turns its HA gossip off."""
    binary = built_binary("alertmanager")
    port = port or free_port()
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.path={workdir / 'alertmanager-data'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--cluster.listen-address=",
    ]
    process = ManagedProcess("alertmanager", argv, log_path=workdir / f"alertmanager-{port}.log", cwd=workdir)
    server = Server("alertmanager", port, f"http://{LOOPBACK}:{port}", process, workdir)
    return _ready_or_stopped(
        server, lambda: _http_ok(f"{server.url}/-/ready"), timeout=ALERTMANAGER_START_TIMEOUT, what="/-/ready"
    )


# --- OpenTelemetry Collector -------------------------------------------------------------------


@dataclass(frozen=True)
class CollectorPorts:
    """Free loopback ports for every address otel/collector.yaml listens on (see otel/README.md)."""

    otlp_grpc: int
    otlp_http: int
    prometheus: int
    telemetry: int
    health: int

    @classmethod
    def pick(cls) -> CollectorPorts:
        return cls(*distinct_free_ports(5))

    def env(self, *, traces_endpoint: str) -> dict[str, str]:
        """The collector's environment: these ports, and where its trace exporter sends (Tempo's role)."""
        return {
            "OTLP_GRPC_ENDPOINT": f"{LOOPBACK}:{self.otlp_grpc}",
            "OTLP_HTTP_ENDPOINT": f"{LOOPBACK}:{self.otlp_http}",
            "PROMETHEUS_EXPORTER_ENDPOINT": f"{LOOPBACK}:{self.prometheus}",
            "COLLECTOR_TELEMETRY_HOST": LOOPBACK,
            "COLLECTOR_TELEMETRY_PORT": str(self.telemetry),
            "HEALTH_CHECK_ENDPOINT": f"{LOOPBACK}:{self.health}",
            "TRACES_OTLP_ENDPOINT": traces_endpoint,
        }


def collector_binary() -> str:
    """Path of our collector build: $OTELCOL_BIN, else what scripts/build-collector.sh prints last."""
    return built_binary("otelcol")


def start_collector(
    workdir: Path, config_files: Sequence[Path], env: Mapping[str, str], *, health_port: int
) -> Server:
    """Start the collector with layered `--config` files; `env` supplies the endpoints they read.

    The caller picks every port (the config files name the env vars) and tells us the
    health_check extension's port, which is how we know the pipelines are up. `port` and `url`
    of the returned Server are that health endpoint.
    """
    binary = collector_binary()
    argv = [binary, *(f"--config={path}" for path in config_files)]
    process = ManagedProcess(
        "otelcol", argv, log_path=workdir / f"otelcol-{health_port}.log", env=env, cwd=workdir
    )
    server = Server("otelcol", health_port, f"http://{LOOPBACK}:{health_port}", process, workdir)
    return _ready_or_stopped(
        server, lambda: _http_ok(f"{server.url}/"), timeout=COLLECTOR_START_TIMEOUT, what="health_check"
    )


# --- Jaeger --------------------------------------------------------------------------------------

JAEGER_CONFIG = REPO_ROOT / "deploy" / "jaeger.yaml"


@dataclass(eq=False)
class JaegerServer(Server):
    """Jaeger v2: `url` is the query API (HTTP); spans go in over OTLP/gRPC at `otlp_endpoint`."""

    otlp_grpc_port: int = 0

    @property
    def otlp_endpoint(self) -> str:
        """`host:port` for an OTLP/gRPC exporter (the collector's JAEGER_OTLP_ENDPOINT)."""
        return f"{self.host}:{self.otlp_grpc_port}"

    def trace_spans(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans Jaeger holds for `trace_id` (32 hex), as OTLP/JSON span objects; [] if none.

        API v3 answers in OTLP/JSON (hex ids, `kind` as the enum number, `parentSpanId`), the
        same shape as the collector's file exporter, so one checker reads both.
        """
        response = httpx.get(f"{self.url}/api/v3/traces/{trace_id}", timeout=10)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return [
            span
            for resource_spans in response.json()["result"]["resourceSpans"]
            for scope_spans in resource_spans.get("scopeSpans", [])
            for span in scope_spans.get("spans", [])
        ]

    def find_spans(self, service: str, operation: str, *, since: float) -> list[dict[str, Any]]:
        """Spans named `operation` of `service` that started after `since` (epoch seconds).

        API v3 FindTraces returns whole traces; only the spans with that name are kept.
        """
        now = time.time()
        params = {
            "query.service_name": service,
            "query.operation_name": operation,
            "query.start_time_min": _rfc3339(since - 60),
            "query.start_time_max": _rfc3339(now + 60),
            "query.num_traces": "1000",
        }
        response = httpx.get(f"{self.url}/api/v3/traces", params=params, timeout=10)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return [
            span
            for resource_spans in response.json()["result"]["resourceSpans"]
            for scope_spans in resource_spans.get("scopeSpans", [])
            for span in scope_spans.get("spans", [])
            if span.get("name") == operation
        ]


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _tcp_open(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=1):
        return True


def start_jaeger(workdir: Path) -> JaegerServer:
    """Start our Jaeger build with deploy/jaeger.yaml (in-memory storage) on free loopback ports.

    Ready once the query API answers and the OTLP receiver accepts connections: Jaeger, like any
    collector, starts its extensions (the query API) before its receivers.
    """
    binary = built_binary("jaeger")
    otlp_port, http_port, grpc_port = distinct_free_ports(3)
    env = {
        "JAEGER_OTLP_GRPC_ENDPOINT": f"{LOOPBACK}:{otlp_port}",
        "JAEGER_QUERY_HTTP_ENDPOINT": f"{LOOPBACK}:{http_port}",
        "JAEGER_QUERY_GRPC_ENDPOINT": f"{LOOPBACK}:{grpc_port}",
    }
    process = ManagedProcess(
        "jaeger",
        [binary, f"--config={JAEGER_CONFIG}"],
        log_path=workdir / f"jaeger-{http_port}.log",
        env=env,
        cwd=workdir,
    )
    server = JaegerServer(
        "jaeger", http_port, f"http://{LOOPBACK}:{http_port}", process, workdir, otlp_grpc_port=otlp_port
    )
    _ready_or_stopped(
        server,
        lambda: _http_ok(f"{server.url}/api/services") and _tcp_open(otlp_port),
        timeout=JAEGER_START_TIMEOUT,
        what="/api/services and the OTLP port",
    )
    return server
