"""The harness itself, against the real programs: each starter gives a server that really works."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy
import yaml

from tests.harness import (
    ManagedProcess,
    ProcessExitedError,
    Server,
    WebhookSink,
    free_port,
    require_binary,
    start_alertmanager,
    start_prometheus,
    start_redis,
    wait_until,
)
from tests.harness.latency_proxy import LatencyProxy

pytestmark = pytest.mark.integration

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"


def compose_pin(repository: str) -> str:
    """X.Y.Z of compose.yaml's `image: <repository>:vX.Y.Z`: what the harness must run too."""
    images = [service["image"] for service in yaml.safe_load(COMPOSE.read_text())["services"].values()]
    tags = [image.split(":v", 1)[1] for image in images if image.startswith(f"{repository}:v")]
    assert len(tags) == 1, f"{repository} in {images}"
    return tags[0]


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an unreaped zombie can't hold a port)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


# --- process basics ----------------------------------------------------------------------------


def test_wait_until_names_what_it_waited_for_and_the_last_error() -> None:
    def never() -> bool:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(TimeoutError, match=r"waiting for the moon.*nobody home"):
        wait_until(never, timeout=0.3, interval=0.05, what="the moon")


def test_free_port_can_be_listened_on(tmp_path: Path) -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    listen = f"import socket, time; s = socket.create_server(('127.0.0.1', {port})); time.sleep(300)"
    with ManagedProcess("listener", [sys.executable, "-c", listen], log_path=tmp_path / "l.log") as process:
        wait_until(lambda: _connects(port), timeout=10, what="the listener")
        assert process.is_running()
    assert not process.is_running()


def _connects(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The shell exits on SIGTERM while its background child would survive: stop() must kill it too.
    pid_file = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    with ManagedProcess("shell", ["sh", "-c", script], log_path=tmp_path / "sh.log") as process:
        wait_until(lambda: pid_file.read_text().strip().isdigit(), timeout=10, what="the child pid")
        child = int(pid_file.read_text())
        assert _alive(child)

        process.stop()
        process.stop()  # idempotent
        assert not process.is_running()
    wait_until(lambda: not _alive(child), timeout=10, what=f"child {child} to die")


def test_a_program_that_dies_fails_readiness_with_its_log(tmp_path: Path) -> None:
    with (
        ManagedProcess(
            "doomed", ["sh", "-c", "echo config is broken >&2; exit 3"], log_path=tmp_path / "doomed.log"
        ) as process,
        pytest.raises(ProcessExitedError, match=r"(?s)exited with code 3.*config is broken"),
    ):
        process.wait_ready(lambda: False, timeout=10, what="never")


def test_missing_binary_skips_locally_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="install-system-deps"):
        require_binary("no-such-program-xyz", "/nonexistent/*/bin/no-such-program-xyz")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-program-xyz"):
        require_binary("no-such-program-xyz")


def test_require_binary_finds_versioned_paths_by_glob() -> None:
    found = require_binary("postgres", "/usr/lib/postgresql/*/bin/postgres")
    assert Path(found).name == "postgres"


# --- Redis -------------------------------------------------------------------------------------


def test_redis_set_get(redis_server: Server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("harness:key", "value")
    assert client.get("harness:key") == b"value"
    client.close()


def test_redis_restarted_on_same_port_serves_the_old_client(tmp_path: Path) -> None:
    first = start_redis(tmp_path)
    client = redis.Redis.from_url(first.url, socket_timeout=2)
    try:
        client.set("before-restart", "1")
        first.stop()
        assert not first.is_running()
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(first.url, socket_connect_timeout=1).ping()

        with start_redis(tmp_path, port=first.port) as second:
            assert second.url == first.url
            # The same client object reconnects by itself; polled because its pooled socket is dead.
            wait_until(lambda: client.ping(), timeout=10, what="the old client to reconnect")
            assert client.get("before-restart") is None  # memory-only: a fresh, empty instance
            client.set("after-restart", "2")
            assert client.get("after-restart") == b"2"
    finally:
        client.close()
        first.stop()


def test_latency_proxy_delays_holds_while_black_holed_and_resets_when_the_upstream_is_gone(
    tmp_path: Path,
) -> None:
    server = start_redis(tmp_path)
    with server, LatencyProxy(server.port) as proxy:
        # from_url: no retries, so each call below costs exactly what the proxy does to it.
        client = redis.Redis.from_url(f"redis://{proxy.address}/0", socket_timeout=0.5)
        assert client.ping()
        proxy.set_delay(0.1)
        started = time.monotonic()
        assert client.ping()
        assert 0.2 <= time.monotonic() - started < 0.45, "0.1 s each way: a round trip costs 0.2 s"
        proxy.blackhole()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        proxy.pass_through()
        assert client.ping(), "the client reconnects once bytes flow again"
        payload = b"x" * 5_000_000  # beyond the proxy's held-bytes bound: back-pressure, in order
        client.set("proxied", payload)
        assert client.get("proxied") == payload
        server.process.kill()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert proxy.stats.refused_upstream >= 1
        client.close()


# --- PostgreSQL --------------------------------------------------------------------------------


def test_postgres_select_one_through_sqlalchemy(postgres_server: Server) -> None:
    engine = sqlalchemy.create_engine(postgres_server.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select 1")).scalar_one() == 1
            assert conn.execute(sqlalchemy.text("select current_user")).scalar_one() == "stockpred"
    finally:
        engine.dispose()


def test_fresh_postgres_url_is_an_empty_database_of_its_own(
    postgres_server: Server, fresh_postgres_url: str
) -> None:
    assert fresh_postgres_url != postgres_server.url
    engine = sqlalchemy.create_engine(fresh_postgres_url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sqlalchemy.text("select current_database()")).scalar_one().startswith("test_")
            conn.execute(sqlalchemy.text("create table t (x int)"))  # the role owns this database
            tables = conn.execute(
                sqlalchemy.text("select count(*) from information_schema.tables where table_schema='public'")
            )
            assert tables.scalar_one() == 1
    finally:
        engine.dispose()


# --- Prometheus --------------------------------------------------------------------------------


def test_prometheus_ready_with_our_flags(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\n")
    with start_prometheus(tmp_path, config) as prometheus:
        build = httpx.get(f"{prometheus.url}/api/v1/status/buildinfo", timeout=5).json()
        assert build["status"] == "success"
        # Our build of the release compose.yaml ships, stamped (an unstamped build says "").
        assert build["data"]["version"] == compose_pin("prom/prometheus")
        assert build["data"]["branch"] == f"v{compose_pin('prom/prometheus')}"

        flags = httpx.get(f"{prometheus.url}/api/v1/status/flags", timeout=5).json()["data"]
        assert flags["enable-feature"] == "exemplar-storage"
        assert flags["web.enable-remote-write-receiver"] == "true"
        assert flags["web.listen-address"] == prometheus.address
        # --web.enable-lifecycle: reload is accepted (it is 403 without the flag).
        assert httpx.post(f"{prometheus.url}/-/reload", timeout=10).status_code == 200


# --- Alertmanager ------------------------------------------------------------------------------

ALERTMANAGER_CONFIG = """\
route:
  receiver: sink
  group_by: [alertname]
  # Notify at once and re-evaluate groups every second: a test waits seconds, not minutes.
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: sink
    webhook_configs:
      - url: {url}
        send_resolved: false
"""


def test_alertmanager_routes_a_posted_alert_to_the_webhook(tmp_path: Path, webhook_sink: WebhookSink) -> None:
    config = tmp_path / "alertmanager.yml"
    config.write_text(ALERTMANAGER_CONFIG.format(url=webhook_sink.url))
    with start_alertmanager(tmp_path, config) as alertmanager:
        status = httpx.get(f"{alertmanager.url}/api/v2/status", timeout=5).json()
        assert status["cluster"]["status"] == "disabled"  # --cluster.listen-address= turned HA off
        assert status["versionInfo"]["version"] == compose_pin("prom/alertmanager")

        alert = {
            "labels": {"alertname": "HarnessSelfTest", "severity": "info"},
            "annotations": {"summary": "The harness can deliver an alert."},
        }
        response = httpx.post(f"{alertmanager.url}/api/v2/alerts", json=[alert], timeout=5)
        assert response.status_code == 200, response.text

        body = webhook_sink.wait_for(
            lambda b: any(a["labels"].get("alertname") == "HarnessSelfTest" for a in b["alerts"]),
            timeout=20,
        )
        assert body["status"] == "firing"
        assert body["receiver"] == "sink"
        assert body["alerts"][0]["annotations"]["summary"] == "The harness can deliver an alert."
