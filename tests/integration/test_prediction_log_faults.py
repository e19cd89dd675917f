"""The prediction log under real faults: the service process killed or stopped under load, its
PostgreSQL stopped and started again. Real `stockpred serve` processes, a real PostgreSQL,
a real Redis, a steady loopback load; every 200's prediction id is checked against the table.

Each test names its promise; the figures (requests, 200s, rows, drain time) are printed and are
what the closing note of the prediction-log issue reports.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Server, restart_postgres, start_postgres, wait_until
from tests.harness.load import SteadyLoad, ok_ids, server_errors
from tests.harness.service import ServiceProcess, start_service

pytestmark = pytest.mark.integration

DRAIN_TIMEOUT = 60.0


@dataclass
class Stack:
    postgres: Server
    service: ServiceProcess
    data_dir: Path

    def table_ids(self) -> list[str]:
        """Every prediction id in the table (a list, so a doubled id would show)."""
        url = self.postgres.url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as conn:
            return [row[0] for row in conn.execute("SELECT id FROM predictions")]

    def spool_rows(self) -> int:
        """The service's own gauge, read from its /metrics exposition."""
        text = httpx.get(f"{self.service.url}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            if family.name == "prediction_log_spool_rows":
                return int(sum(sample.value for sample in family.samples))
        raise AssertionError("prediction_log_spool_rows is not exposed")

    def wait_drained(self) -> float:
        """Seconds until the service reports an empty spool (it drains by itself)."""
        started = time.monotonic()
        wait_until(lambda: self.spool_rows() == 0, timeout=DRAIN_TIMEOUT, what="the spool to drain")
        return time.monotonic() - started

    def spool_dirs(self) -> list[Path]:
        root = self.data_dir / "prediction-log"
        return sorted(p for p in root.iterdir() if p.is_dir() and p.name != "quarantine")


@pytest.fixture
def stack(
    seeded_data_dir: Path, redis_server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """A private PostgreSQL (tests stop it), the shared Redis, the service on a seeded data dir."""
    (tmp_path / "postgres").mkdir()
    postgres = start_postgres(tmp_path / "postgres")
    data_dir = tmp_path / "data"
    shutil.copytree(seeded_data_dir, data_dir)
    env = {
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": postgres.url,
        "REDIS_URL": redis_server.url.replace("/0", f"/{_redis_db(request)}"),
        "PREDICTION_LOG_DEGRADED_AFTER_SECONDS": "2",
        **getattr(request, "param", {}),
    }
    service = start_service(tmp_path / "service", env)
    try:
        yield Stack(postgres, service, data_dir)
    finally:
        service.stop()
        postgres.stop()


def _redis_db(request: pytest.FixtureRequest) -> int:
    """A Redis database per test, so cached features of one test never serve another."""
    return 1 + abs(hash(request.node.nodeid)) % 15


def stop_database(stack: Stack) -> None:
    stack.postgres.process.stop()


def report(name: str, **figures: object) -> None:
    print(f"\n[{name}] " + ", ".join(f"{key}={value}" for key, value in figures.items()))


def test_sigkill_under_load_loses_no_answered_prediction(stack: Stack) -> None:
    """Killed with SIGKILL while rows wait in its spool: after a restart every 200 is a row, once."""
    with SteadyLoad(stack.service.url, rate=40) as load:
        wait_until(lambda: len(ok_ids(load.snapshot())) >= 40, timeout=30, what="40 answered predictions")
        stop_database(stack)  # from here rows can only wait in the spool
        before = len(ok_ids(load.snapshot()))
        wait_until(lambda: len(ok_ids(load.snapshot())) >= before + 60, timeout=30, what="spooled answers")
        wait_until(lambda: stack.spool_rows() > 0, timeout=10, what="rows waiting in the spool")
        spooled_at_kill = stack.spool_rows()
        stack.service.process.kill()
        outcomes = load.stop()
    answered = ok_ids(outcomes)
    restart_postgres(stack.postgres)
    stack.service.restart(statuses=("ok", "degraded"))
    drained = stack.wait_drained()
    ids = stack.table_ids()
    assert len(ids) == len(set(ids)), "a row was written twice"
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} answered predictions are not in the table"
    assert len(stack.spool_dirs()) == 1, "the killed process's spool is adopted and removed"
    report(
        "sigkill",
        requests=len(outcomes),
        answered_200=len(answered),
        spooled_at_kill=spooled_at_kill,
        rows=len(ids),
        duplicates=len(ids) - len(set(ids)),
        drain_seconds=round(drained, 2),
    )


def test_sigterm_under_load_answers_in_flight_requests_and_exits_0(stack: Stack) -> None:
    with SteadyLoad(stack.service.url, rate=40) as load:
        wait_until(lambda: len(ok_ids(load.snapshot())) >= 40, timeout=30, what="40 answered predictions")
        stopped_at = time.monotonic()
        stack.service.process.signal(signal.SIGTERM)
        code = stack.service.process.wait(timeout=30)
        exit_seconds = time.monotonic() - stopped_at
        outcomes = load.stop()
    assert code == 0
    answered = ok_ids(outcomes)
    # Requests sent after the stop get no answer (connection refused), none gets a 5xx.
    assert not server_errors(outcomes), server_errors(outcomes)[:3]
    ids = set(stack.table_ids())
    assert set(answered) <= ids, "the shutdown wrote every answered prediction to the database"
    assert stack.spool_dirs() == [], "a drained spool is removed at shutdown"
    report("sigterm", requests=len(outcomes), answered_200=len(answered), exit_seconds=round(exit_seconds, 2))


def test_database_outage_under_load_serves_every_request_and_loses_no_row(stack: Stack) -> None:
    """PostgreSQL down for 30+ s under steady load: 0 5xx, health degraded, then every row lands."""
    outage_seconds = 32.0
    with SteadyLoad(stack.service.url, rate=25) as load:
        wait_until(lambda: len(ok_ids(load.snapshot())) >= 50, timeout=30, what="50 answered predictions")
        stop_database(stack)
        outage_started = time.monotonic()

        def degraded() -> bool:
            health = stack.service.health()
            components = health["components"]  # type: ignore[index]
            return (
                health["status"],
                components["database"]["status"],
                components["prediction_log"]["status"],
            ) == (
                "degraded",
                "down",
                "degraded",
            )

        wait_until(degraded, timeout=10, what="health: degraded, database down, prediction log degraded")
        wait_until(
            lambda: time.monotonic() - outage_started >= outage_seconds,
            timeout=outage_seconds + 5,
            interval=0.5,
            what="the outage to last",
        )
        spooled = stack.spool_rows()
        restart_postgres(stack.postgres)
        outage = time.monotonic() - outage_started
        drained = stack.wait_drained()
        wait_until(lambda: stack.service.health()["status"] == "ok", timeout=20, what="health to say ok")
        outcomes = load.stop()
    stack.wait_drained()  # the last answers' rows may still be on their way
    assert not server_errors(outcomes), server_errors(outcomes)[:3]
    answered = ok_ids(outcomes)
    assert len(answered) == len(outcomes), [o for o in outcomes if o.status != 200][:3]
    ids = stack.table_ids()
    assert len(ids) == len(set(ids)), "a row was written twice"
    assert sorted(ids) == sorted(answered), "rows in the table are exactly the 200 responses"
    report(
        "outage",
        outage_seconds=round(outage, 1),
        requests=len(outcomes),
        answered_200=len(answered),
        server_errors=0,
        spooled_at_restart=spooled,
        rows=len(ids),
        duplicates=0,
        drain_seconds=round(drained, 2),
    )


@pytest.mark.parametrize("stack", [{"PREDICTION_LOG_MAX_BYTES": str(64 * 1024)}], indirect=True)
def test_a_full_prediction_log_answers_503_and_never_drops_a_row(stack: Stack) -> None:
    with SteadyLoad(stack.service.url, rate=50) as load:
        wait_until(lambda: len(ok_ids(load.snapshot())) >= 20, timeout=30, what="20 answered predictions")
        stop_database(stack)
        wait_until(
            lambda: any(o.status == 503 for o in load.snapshot()), timeout=60, what="the log to fill up"
        )
        wait_until(
            lambda: stack.service.health()["components"]["prediction_log"]["status"] == "down",  # type: ignore[index]
            timeout=10,
            what="health to report the log down",
        )
        assert stack.service.health()["status"] == "down"
        restart_postgres(stack.postgres)
        stack.wait_drained()
        refused_until = max(o.sent_at for o in load.snapshot() if o.status == 503)
        wait_until(
            lambda: any(o.status == 200 and o.sent_at > refused_until for o in load.snapshot()),
            timeout=20,
            what="predictions answered again",
        )
        outcomes = load.stop()
    stack.wait_drained()  # the last answers' rows may still be on their way
    refused = [o for o in outcomes if o.status == 503]
    assert refused
    assert all((o.error or "").startswith("prediction log is full") for o in refused), refused[:2]
    assert not [o for o in outcomes if o.status >= 500 and o.status != 503]
    ids = stack.table_ids()
    assert sorted(ids) == sorted(ok_ids(outcomes)), "every 200 is a row; no refused request left one"
    report("full", requests=len(outcomes), answered_200=len(ok_ids(outcomes)), refused_503=len(refused))
