"""The whole pipeline as native processes, for machines without a container engine: `make stack`.

    PostgreSQL, Redis -> Jaeger -> collector -> alert webhook -> Alertmanager -> Prometheus
      -> API (`stockpred serve`, market feed on) -> Locust (load generator, web UI)

The same programs and configs as `make test` and compose: Redis and PostgreSQL from
scripts/install-system-deps.sh, the collector, Prometheus, Alertmanager and Jaeger from the
scripts/build-*.sh caches (`OTELCOL_BIN`, `PROMETHEUS_BIN`, `ALERTMANAGER_BIN`, `JAEGER_BIN` name
them directly, as for the tests), otel/collector.yaml with the Jaeger layer, deploy/jaeger.yaml,
prometheus/rules/, and copies of prometheus/prometheus.yml and prometheus/alertmanager.yml with
only their addresses rewritten to loopback (and the intervals, when asked). The alert webhook is
this script itself: it logs every notification to stdout and `$STACK_DIR/logs/alert-webhook.log`.

Each program starts once the one before it answers (a readiness probe with a deadline), on the
ports of docs/telemetry.md; every port can be moved with its `STACK_*_PORT` variable, and a port
already taken stops the start before anything runs. Ctrl-C or SIGTERM stops everything in reverse
order: the graceful signal first, SIGKILL to the whole process group after a grace period, so
nothing is left behind; the exit code is 0 for such a stop, 1 when a program died or never became
ready. `$STACK_DIR/stack.pids` lists what is running (name, pid = process group id).

State lives in `$STACK_DIR` (default `.stack/`, gitignored) and survives a restart like compose's
volumes: the database (market data, predictions), the MLflow store and model cache, Prometheus'
TSDB. `rm -rf .stack` starts from scratch (a fresh seed, so the market feed has its full headroom).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx
import psycopg
import yaml
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"

# (variable, default, what): every port the stack listens on. Defaults are docs/telemetry.md's.
PORTS: tuple[tuple[str, int, str], ...] = (
    ("STACK_POSTGRES_PORT", 5432, "PostgreSQL"),
    ("STACK_REDIS_PORT", 6379, "Redis"),
    ("STACK_JAEGER_OTLP_PORT", 14317, "Jaeger OTLP/gRPC receiver"),
    ("STACK_JAEGER_QUERY_PORT", 16686, "Jaeger query API"),
    ("STACK_JAEGER_QUERY_GRPC_PORT", 16685, "Jaeger query gRPC"),
    ("STACK_OTLP_GRPC_PORT", 4317, "collector OTLP/gRPC"),
    ("STACK_OTLP_HTTP_PORT", 4318, "collector OTLP/HTTP"),
    ("STACK_COLLECTOR_METRICS_PORT", 8889, "collector Prometheus exporter"),
    ("STACK_COLLECTOR_TELEMETRY_PORT", 8888, "collector own metrics"),
    ("STACK_COLLECTOR_HEALTH_PORT", 13133, "collector health_check"),
    ("STACK_WEBHOOK_PORT", 8080, "alert webhook"),
    ("STACK_ALERTMANAGER_PORT", 9093, "Alertmanager"),
    ("STACK_PROMETHEUS_PORT", 9090, "Prometheus"),
    ("STACK_API_PORT", 8000, "API"),
    ("STACK_LOCUST_PORT", 8089, "Locust web UI"),
)

# Readiness deadlines, generous for two shared cores. The API's first start seeds the market and
# trains the first model.
START_TIMEOUT = 90.0
API_START_TIMEOUT = 300.0
STOP_TIMEOUT = 20.0

PG_USER = PG_DATABASE = "stockpred"
PG_SUPERUSER = "postgres"


def log(message: str) -> None:
    print(f"stack: {message}", flush=True)


class StackError(RuntimeError):
    """A start that cannot go on: a port taken, a program that died or never answered."""


class StopRequestedError(Exception):
    """Ctrl-C or SIGTERM arrived while the stack was still starting."""


@dataclass(frozen=True)
class Settings:
    """Everything the environment can change, with its defaults."""

    state: Path
    ports: dict[str, int]
    scrape_interval: str
    export_interval_ms: str
    postgres_password: str
    locust_users: int
    load_rate: str

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        ports = {name: int(env.get(name, default)) for name, default, _ in PORTS}
        return cls(
            state=Path(env.get("STACK_DIR", REPO / ".stack")).resolve(),
            ports=ports,
            # 5 s: compose's, Grafana's timeInterval and the service's export interval agree.
            scrape_interval=env.get("STACK_SCRAPE_INTERVAL", "5s"),
            export_interval_ms=env.get("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            postgres_password=env.get("POSTGRES_PASSWORD", "stockpred-local-only"),
            locust_users=int(env.get("LOCUST_USERS", "5")),
            load_rate=env.get("LOAD_RATE", "10"),
        )

    def port(self, name: str) -> int:
        return self.ports[f"STACK_{name}_PORT"]

    def address(self, name: str) -> str:
        return f"{LOOPBACK}:{self.port(name)}"

    def url(self, name: str) -> str:
        return f"http://{self.address(name)}"

    @property
    def logs(self) -> Path:
        return self.state / "logs"


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Program:
    """A child in its own process group; output to its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """The graceful signal, SIGKILL to the group after STOP_TIMEOUT, then to any leftovers."""
        if self.running():
            self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {STOP_TIMEOUT:.0f}s: killing it")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # the group id is the leader's pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_TIMEOUT)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class Stack:
    settings: Settings
    stopping: threading.Event = field(default_factory=threading.Event)
    programs: list[Program] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Program:
        log_path = self.settings.logs / f"{name}.log"
        with log_path.open("ab") as handle:
            handle.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            handle.flush()
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd or self.settings.state,
                user=user,
                group=user,
                extra_groups=[] if user else None,
                process_group=0,
            )
        program = Program(name, popen, log_path, stop_signal)
        self.programs.append(program)
        self.write_pids()
        return program

    def wait_ready(
        self, program: Program, probe: Callable[[], bool], *, timeout: float = START_TIMEOUT
    ) -> None:
        """Poll `probe` until it is true; fail when the program exits, the deadline passes or we stop."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            if self.stopping.is_set():
                raise StopRequestedError
            if not program.running():
                raise StackError(
                    f"{program.name} exited ({program.popen.returncode}) before it was ready; "
                    f"{program.log_path}:\n{program.tail()}"
                )
            try:
                if probe():
                    return
            except Exception as error:  # not answering yet is what we are waiting for
                last_error = f" (last: {error!r})"
            if time.monotonic() > deadline:
                raise StackError(
                    f"{program.name} not ready after {timeout:.0f}s{last_error}; "
                    f"{program.log_path}:\n{program.tail()}"
                )
            self.stopping.wait(0.25)

    def write_pids(self) -> None:
        lines = [f"stack {os.getpid()}", *(f"{p.name} {p.pid}" for p in self.programs if p.running())]
        (self.settings.state / "stack.pids").write_text("\n".join(lines) + "\n")

    def stop(self) -> None:
        for program in reversed(self.programs):
            if program.running():
                log(f"stopping {program.name} (pid {program.pid})")
            program.stop()
        while self.cleanups:
            self.cleanups.pop()()
        (self.settings.state / "stack.pids").unlink(missing_ok=True)


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2.0).status_code == 200


def tcp_open(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=1):
        return True


def check_ports_free(settings: Settings) -> None:
    """Fail before starting anything when one of our ports is taken."""
    taken = []
    for name, _, what in PORTS:
        port = settings.ports[name]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the servers themselves bind: connections of a previous run in TIME_WAIT don't
            # count, a listening socket does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                taken.append(f"  {port} ({what}): set {name} to another port")
    if taken:
        stale = settings.state / "stack.pids"
        if stale.exists():
            groups = " ".join(f"-{line.split()[1]}" for line in stale.read_text().splitlines()[1:] if line)
            taken.append(
                f"  {stale} is left from a stack that did not stop (killed?); if its programs still run: "
                f"kill -- {groups}"
            )
        raise StackError("ports already in use (another stack, compose, `make run`?):\n" + "\n".join(taken))
    chosen = list(settings.ports.values())
    if len(set(chosen)) != len(chosen):
        raise StackError(f"two STACK_*_PORT variables name the same port: {settings.ports}")


# --- binaries ------------------------------------------------------------------------------------


def built_binary(variable: str, script: str, *args: str) -> str:
    """`$variable` if set, else what scripts/<script> prints last (a no-op once cached)."""
    if os.environ.get(variable):
        return os.environ[variable]
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / script), *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise StackError(f"scripts/{script} {' '.join(args)} failed ({result.returncode})")
    return lines[-1].strip()


def postgres_binaries() -> tuple[str, str]:
    """Debian keeps the server outside PATH, under a versioned directory; the newest wins."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    if not candidates:
        raise StackError("PostgreSQL not found: run scripts/install-system-deps.sh (`make stack` does)")
    return str(candidates[0]), str(candidates[0].with_name("initdb"))


# --- the programs, in start order -----------------------------------------------------------------


def start_postgres(stack: Stack) -> str:
    """PostgreSQL with role and database `stockpred`; returns the API's DATABASE_URL.

    PostgreSQL refuses to run as root, so under root it runs as the `postgres` system user, with
    its files where that user can reach them: `$STACK_DIR/postgres` when every parent directory is
    traversable, else a directory under /var/tmp named after `$STACK_DIR`. No Unix socket (paths
    are length-limited; clients use TCP); password authentication on loopback.
    """
    settings = stack.settings
    postgres, initdb = postgres_binaries()
    run_as = PG_SUPERUSER if os.geteuid() == 0 else None
    data = postgres_data_dir(settings, run_as)
    password = settings.postgres_password
    if not (data / "PG_VERSION").exists():
        log(f"initialising PostgreSQL in {data}")
        data.mkdir(parents=True, exist_ok=True)
        pwfile = data.parent / f".{data.name}.pw"
        pwfile.write_text(password + "\n")
        if run_as:
            shutil.chown(data, run_as, run_as)
            shutil.chown(pwfile, run_as, run_as)
        try:
            subprocess.run(
                [
                    *(initdb, "-D", str(data), f"--username={PG_SUPERUSER}", f"--pwfile={pwfile}"),
                    *("--auth-host=scram-sha-256", "--auth-local=peer", "--encoding=UTF8", "--locale=C"),
                ],
                user=run_as,
                group=run_as,
                extra_groups=[] if run_as else None,
                cwd=data.parent,
                stdin=subprocess.DEVNULL,
                stdout=(settings.logs / "postgres-initdb.log").open("wb"),
                stderr=subprocess.STDOUT,
                check=True,
                timeout=180,
            )
        finally:
            pwfile.unlink(missing_ok=True)
    port = settings.port("POSTGRES")
    argv = [postgres, "-D", str(data), "-p", str(port), "-c", f"listen_addresses={LOOPBACK}"]
    argv += ["-c", "unix_socket_directories="]
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client to leave.
    program = stack.spawn("postgres", argv, user=run_as, cwd=data.parent, stop_signal=signal.SIGINT)
    conninfo = f"host={LOOPBACK} port={port} user={PG_SUPERUSER} password={password} dbname=postgres"

    def connects() -> bool:
        with psycopg.connect(conninfo, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    stack.wait_ready(program, connects)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PG_USER,)).fetchone()
        if role is None:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(PG_USER), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(PG_DATABASE), sql.Identifier(PG_USER)
                )
            )
    return f"postgresql+psycopg://{PG_USER}:{password}@{LOOPBACK}:{port}/{PG_DATABASE}"


def postgres_data_dir(settings: Settings, run_as: str | None) -> Path:
    preferred = settings.state / "postgres"
    if run_as is None or _reachable_by(run_as, settings.state):
        return preferred
    key = hashlib.sha256(str(settings.state).encode()).hexdigest()[:12]
    fallback = Path("/var/tmp") / f"stockpred-stack-{key}" / "postgres"
    fallback.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(fallback.parent, run_as, run_as)
    log(f"{settings.state} is not reachable by user {run_as}: PostgreSQL data in {fallback}")
    return fallback


def _reachable_by(user: str, path: Path) -> bool:
    """Whether `user` can reach `path` (search permission on it and every directory above it)."""
    result = subprocess.run(["test", "-x", str(path)], user=user, stdin=subprocess.DEVNULL, check=False)
    return result.returncode == 0


def start_redis(stack: Stack) -> str:
    port = stack.settings.port("REDIS")
    # A cache only, as in compose: nothing persisted, bounded with LRU eviction.
    argv = ["redis-server", "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
    argv += ["--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"]
    if not shutil.which("redis-server"):
        raise StackError("redis-server not found: run scripts/install-system-deps.sh (`make stack` does)")
    program = stack.spawn("redis", argv)
    stack.wait_ready(program, lambda: tcp_open(port))
    return f"redis://{LOOPBACK}:{port}/0"


def start_jaeger(stack: Stack) -> None:
    settings = stack.settings
    env = {
        "JAEGER_OTLP_GRPC_ENDPOINT": settings.address("JAEGER_OTLP"),
        "JAEGER_QUERY_HTTP_ENDPOINT": settings.address("JAEGER_QUERY"),
        "JAEGER_QUERY_GRPC_ENDPOINT": settings.address("JAEGER_QUERY_GRPC"),
    }
    binary = built_binary("JAEGER_BIN", "build-jaeger.sh")
    program = stack.spawn("jaeger", [binary, f"--config={REPO / 'deploy' / 'jaeger.yaml'}"], env=env)
    stack.wait_ready(
        program,
        lambda: (
            http_ok(f"{settings.url('JAEGER_QUERY')}/api/services") and tcp_open(settings.port("JAEGER_OTLP"))
        ),
    )


def start_collector(stack: Stack) -> None:
    settings = stack.settings
    env = {
        "OTLP_GRPC_ENDPOINT": settings.address("OTLP_GRPC"),
        "OTLP_HTTP_ENDPOINT": settings.address("OTLP_HTTP"),
        "PROMETHEUS_EXPORTER_ENDPOINT": settings.address("COLLECTOR_METRICS"),
        "COLLECTOR_TELEMETRY_HOST": LOOPBACK,
        "COLLECTOR_TELEMETRY_PORT": str(settings.port("COLLECTOR_TELEMETRY")),
        "HEALTH_CHECK_ENDPOINT": settings.address("COLLECTOR_HEALTH"),
        "JAEGER_OTLP_ENDPOINT": settings.address("JAEGER_OTLP"),
        # Tempo's exporter is replaced by the Jaeger layer; point it at Jaeger all the same.
        "TRACES_OTLP_ENDPOINT": settings.address("JAEGER_OTLP"),
    }
    configs = [REPO / "otel" / "collector.yaml", REPO / "otel" / "collector.jaeger.yaml"]
    binary = built_binary("OTELCOL_BIN", "build-collector.sh")
    program = stack.spawn("otel-collector", [binary, *(f"--config={path}" for path in configs)], env=env)
    stack.wait_ready(program, lambda: http_ok(f"{settings.url('COLLECTOR_HEALTH')}/"))


class AlertWebhook:
    """The receiver of alertmanager.yml's webhooks (compose's `alert-webhook`): logs each notification."""

    def __init__(self, port: int, log_file: Path) -> None:
        self._log = log_file.open("a", buffering=1)
        handler = self._handler(self._log)
        self.server = ThreadingHTTPServer((LOOPBACK, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="alert-webhook", daemon=True)
        self.thread.start()

    @staticmethod
    def _handler(out: TextIO) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                out.write(
                    f"{time.strftime('%Y-%m-%dT%H:%M:%S')} POST {self.path} {raw.decode(errors='replace')}\n"
                )
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    body = json.loads(raw)
                    for alert in body["alerts"]:
                        labels = alert["labels"]
                        where = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
                        log(f"alert {alert['status']} -> {self.path}: {labels.get('alertname')} ({where})")
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # a health probe
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        self._log.close()


def start_webhook(stack: Stack) -> None:
    webhook = AlertWebhook(stack.settings.port("WEBHOOK"), stack.settings.logs / "alert-webhook.log")
    stack.cleanups.append(webhook.close)


def alertmanager_config(settings: Settings) -> dict[str, Any]:
    """prometheus/alertmanager.yml with every webhook on this script's receiver (same paths)."""
    config: dict[str, Any] = yaml.safe_load((REPO / "prometheus" / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = settings.url("WEBHOOK") + (urlsplit(hook["url"]).path or "/")
    return config


def start_alertmanager(stack: Stack) -> None:
    settings = stack.settings
    config = write_yaml(settings.state / "config" / "alertmanager.yml", alertmanager_config(settings))
    argv = [
        built_binary("ALERTMANAGER_BIN", "build-prometheus.sh", "alertmanager"),
        f"--config.file={config}",
        f"--storage.path={settings.state / 'alertmanager'}",
        f"--web.listen-address={settings.address('ALERTMANAGER')}",
        "--cluster.listen-address=",  # a single instance: no gossip port
    ]
    program = stack.spawn("alertmanager", argv)
    stack.wait_ready(program, lambda: http_ok(f"{settings.url('ALERTMANAGER')}/-/ready"))


def prometheus_config(settings: Settings) -> dict[str, Any]:
    """prometheus/prometheus.yml with loopback targets, absolute rule files and the scrape interval.

    A scrape job this script doesn't know fails the start: it must learn where the job points.
    """
    config: dict[str, Any] = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    targets = {
        "otel-collector": settings.address("COLLECTOR_METRICS"),
        "otel-collector-self": settings.address("COLLECTOR_TELEMETRY"),
        "prometheus": settings.address("PROMETHEUS"),
        "alertmanager": settings.address("ALERTMANAGER"),
        "prediction-api-liveness": settings.address("API"),
    }
    interval = settings.scrape_interval
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    if parse_seconds(config["global"]["scrape_timeout"]) > parse_seconds(interval):
        config["global"]["scrape_timeout"] = interval
    config["rule_files"] = [str(REPO / "prometheus" / rule) for rule in config["rule_files"]]
    for manager in config["alerting"]["alertmanagers"]:
        for static in manager["static_configs"]:
            static["targets"] = [settings.address("ALERTMANAGER")]
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            raise StackError(
                f"prometheus.yml has a scrape job {job['job_name']!r} that the stack cannot place"
            )
        for static in job["static_configs"]:
            static["targets"] = [targets[job["job_name"]]]
    return config


def parse_seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit) and duration[: -len(unit)].replace(".", "").isdigit():
            return float(duration[: -len(unit)]) * units[unit]
    raise StackError(f"unsupported duration {duration!r} (use e.g. 5s, 500ms, 1m)")


def start_prometheus(stack: Stack) -> None:
    settings = stack.settings
    config = write_yaml(settings.state / "config" / "prometheus.yml", prometheus_config(settings))
    argv = [
        built_binary("PROMETHEUS_BIN", "build-prometheus.sh", "prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={settings.state / 'prometheus'}",
        f"--web.listen-address={settings.address('PROMETHEUS')}",
        # The flags of compose.yaml: exemplars, the remote-write receiver, POST /-/reload.
        "--enable-feature=exemplar-storage",
        "--web.enable-remote-write-receiver",
        "--web.enable-lifecycle",
    ]
    program = stack.spawn("prometheus", argv)
    stack.wait_ready(program, lambda: http_ok(f"{settings.url('PROMETHEUS')}/-/ready"))


def start_api(stack: Stack, database_url: str, redis_url: str) -> None:
    settings = stack.settings
    env = {
        "DATA_DIR": str(settings.state / "data"),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": settings.url("OTLP_HTTP"),
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": settings.export_interval_ms,
        "DEPLOYMENT_ENVIRONMENT": "stack",
        # The market feed (on for the synthetic market) and its drift demonstration: one symbol's
        # bars shift regime, so the drift panels and the alert path have something to show.
        "MARKET_FEED": os.environ.get("MARKET_FEED", "auto"),
        "MARKET_FEED_SHIFT_SYMBOL": os.environ.get("MARKET_FEED_SHIFT_SYMBOL", "NVDA"),
    }
    argv = [str(VENV_BIN / "stockpred"), "serve", "--host", LOOPBACK, "--port", str(settings.port("API"))]
    program = stack.spawn("api", argv, env=env)

    def healthy() -> bool:
        response = httpx.get(f"{settings.url('API')}/health", timeout=3)
        return response.status_code == 200 and response.json()["status"] == "ok"

    stack.wait_ready(program, healthy, timeout=API_START_TIMEOUT)


def start_locust(stack: Stack) -> None:
    settings = stack.settings
    argv = [
        str(VENV_BIN / "locust"),
        f"--locustfile={REPO / 'deploy' / 'locustfile.py'}",
        f"--host={settings.url('API')}",
        # Starts at once, like --headless, but keeps the web UI (statistics, changing the load).
        "--autostart",
        f"--users={settings.locust_users}",
        f"--spawn-rate={settings.locust_users}",
        f"--web-host={LOOPBACK}",
        f"--web-port={settings.port('LOCUST')}",
        "--only-summary",  # no statistics table every few seconds in the log
    ]
    program = stack.spawn("locust", argv, env={"LOAD_RATE": settings.load_rate})
    stack.wait_ready(program, lambda: http_ok(f"{settings.url('LOCUST')}/"))


def write_yaml(path: Path, content: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Generated by scripts/stack.py from the repository's file; edits are overwritten.\n")
    with path.open("a") as handle:
        yaml.safe_dump(content, handle, sort_keys=False)
    return path


# --- running it ----------------------------------------------------------------------------------


def urls(settings: Settings) -> str:
    rows = [
        ("API", f"{settings.url('API')}  (/docs, /health, /metrics)"),
        (
            "Prometheus",
            f"{settings.url('PROMETHEUS')}  (API; rules and alerts: /api/v1/rules, /api/v1/alerts)",
        ),
        ("Alertmanager", settings.url("ALERTMANAGER")),
        ("Jaeger query API", f"{settings.url('JAEGER_QUERY')}  (/api/traces/<trace id>)"),
        ("Locust", settings.url("LOCUST")),
        (
            "Collector",
            f"OTLP {settings.port('OTLP_GRPC')}/{settings.port('OTLP_HTTP')}, "
            f"metrics {settings.url('COLLECTOR_METRICS')}/metrics, "
            f"health {settings.url('COLLECTOR_HEALTH')}/",
        ),
        ("Redis / PostgreSQL", f"{settings.address('REDIS')} / {settings.address('POSTGRES')}"),
        ("Alert notifications", str(settings.logs / "alert-webhook.log")),
        ("Logs", str(settings.logs)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)


@contextlib.contextmanager
def stop_signals(stack: Stack) -> Iterator[None]:
    """Ctrl-C and SIGTERM ask the stack to stop; the stop itself runs in the main thread."""

    def request_stop(signum: int, _frame: object) -> None:
        if not stack.stopping.is_set():
            log(f"{signal.Signals(signum).name}: stopping")
        stack.stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(settings: Settings) -> int:
    check_ports_free(settings)
    settings.logs.mkdir(parents=True, exist_ok=True)
    stack = Stack(settings)
    started = time.monotonic()
    with stop_signals(stack):
        try:
            database_url = start_postgres(stack)
            redis_url = start_redis(stack)
            for start in (start_jaeger, start_collector, start_webhook, start_alertmanager, start_prometheus):
                start(stack)
            start_api(stack, database_url, redis_url)
            start_locust(stack)
            if stack.stopping.is_set():
                raise StopRequestedError
        except StopRequestedError:
            stack.stop()
            log("stopped before it was ready")
            return 0
        except (StackError, subprocess.CalledProcessError, OSError, psycopg.Error) as error:
            log(f"start failed: {error}")
            stack.stop()
            return 1
        elapsed = time.monotonic() - started
        log(f"ready in {elapsed:.0f}s; Ctrl-C (or SIGTERM) stops everything\n{urls(settings)}")
        code = 0
        while not stack.stopping.wait(1.0):
            dead = [p for p in stack.programs if not p.running()]
            if dead:
                for program in dead:
                    code_text = program.popen.returncode
                    log(f"{program.name} exited ({code_text}); {program.log_path}:\n{program.tail()}")
                code = 1
                break
        stack.stop()
        log("stopped")
        return code


def main() -> int:
    try:
        settings = Settings.from_env(dict(os.environ))
        return run(settings)
    except StackError as error:
        log(str(error))
        return 1


if __name__ == "__main__":
    sys.exit(main())
