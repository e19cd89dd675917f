"""PostgreSQL faults under a steady load: the postmaster killed (crash recovery), the database slow
and hung, the connection pool exhausted.

A private PostgreSQL (with `synchronous_commit=on`, PostgreSQL's default and compose's: a crash
test counts committed rows, and the harness's speed setting would let the last commits vanish
with the server) reached through a LatencyProxy; the session's Redis; real `stockpred serve`
processes. Every 200's prediction id is checked against the table: present, once.

Each test names its promise and prints its figures.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import (
    Server,
    crash_postgres,
    create_database,
    postgres_url,
    restart_postgres,
    start_postgres,
    wait_until,
)
from tests.harness.latency_proxy import LatencyProxy
from tests.harness.load import (
    Latency,
    Request,
    SteadyLoad,
    assert_within_noise,
    between,
    ok_ids,
    server_errors,
)
from tests.harness.observe import metric, prediction_rows, report
from tests.harness.service import ServiceProcess, start_service

pytestmark = pytest.mark.integration

DRAIN_TIMEOUT = 60.0
RATE = 30.0


@dataclass
class DatabaseStack:
    postgres: Server
    proxy: LatencyProxy
    service: ServiceProcess
    database_url: str  # direct, past the proxy

    def spool_rows(self) -> float:
        value = metric(self.service.url, "prediction_log_spool_rows")
        assert value is not None, "prediction_log_spool_rows is not exposed"
        return value

    def wait_drained(self) -> float:
        started = time.monotonic()
        wait_until(lambda: self.spool_rows() == 0, timeout=DRAIN_TIMEOUT, what="the spool to drain")
        return time.monotonic() - started

    def rows_lost(self, answered: list[str]) -> tuple[int, int]:
        """(answered ids missing from the table, ids in the table more than once), once drained."""
        self.wait_drained()
        ids = [row.id for row in prediction_rows(self.database_url)]
        return len(set(answered) - set(ids)), len(ids) - len(set(ids))

    def components(self) -> dict[str, Any]:
        components = self.service.health()["components"]
        assert isinstance(components, dict)
        return components


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A private PostgreSQL the tests kill; durable commits, as in production."""
    server = start_postgres(tmp_path_factory.mktemp("faults-postgres"), settings={"synchronous_commit": "on"})
    yield server
    server.stop()


def _service_stack(
    postgres: Server,
    seeded_data_dir: Path,
    redis_url: str,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
) -> Iterator[DatabaseStack]:
    """The service on a fresh database of `postgres`, reached through a proxy."""
    database = f"faults_{uuid.uuid4().hex[:8]}"
    create_database(postgres, database)
    proxy = LatencyProxy(postgres.port).start()
    data_dir = workdir / "data"
    shutil.copytree(seeded_data_dir, data_dir)
    env = {
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": postgres_url(proxy.port, database),
        "REDIS_URL": redis_url,
        "PREDICTION_LOG_DEGRADED_AFTER_SECONDS": "2",
        **(extra_env or {}),
    }
    try:
        service = start_service(workdir / "service", env)
    except BaseException:
        proxy.close()
        raise
    try:
        yield DatabaseStack(postgres, proxy, service, postgres_url(postgres.port, database))
    finally:
        service.stop()
        proxy.close()


def _redis_url(redis_server: Server, request: pytest.FixtureRequest) -> str:
    """A Redis database per test module, so cached features of other tests never serve this one."""
    return redis_server.url.replace("/0", f"/{1 + abs(hash(request.node.nodeid)) % 15}")


@pytest.fixture(scope="module")
def stack(
    postgres: Server,
    seeded_data_dir: Path,
    redis_server: Server,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[DatabaseStack]:
    yield from _service_stack(
        postgres, seeded_data_dir, _redis_url(redis_server, request), tmp_path_factory.mktemp("faults-db")
    )


def _warm_up(load: SteadyLoad, answered: int = 60) -> float:
    wait_until(lambda: len(ok_ids(load.snapshot())) >= answered, timeout=30, what=f"{answered} answers")
    return load.elapsed()


def _wait(load: SteadyLoad, seconds: float, what: str) -> tuple[float, float]:
    """Let the load run `seconds` more; the (start, end) of that span in load time."""
    start = load.elapsed()
    wait_until(lambda: load.elapsed() > start + seconds, timeout=seconds + 10, what=what)
    return start, load.elapsed()


def test_postgres_killed_under_load_answers_every_request_and_loses_no_row(stack: DatabaseStack) -> None:
    """SIGKILL of the postmaster (the restart runs crash recovery) under load: 0 5xx, health
    degraded meanwhile, and every 200's row in the table exactly once after the restart."""
    log_offset = stack.postgres.process.log_size()
    with SteadyLoad(stack.service.url, rate=RATE, threads=8) as load:
        before_end = _warm_up(load)
        wait_until(lambda: stack.spool_rows() == 0, timeout=20, what="rows reaching the database")
        crash_postgres(stack.postgres)
        fault_start = load.elapsed()
        wait_until(
            lambda: stack.components()["database"]["status"] == "down", timeout=10, what="database down"
        )
        assert stack.service.health()["status"] == "degraded"
        _wait(load, 5, "predictions while the database is gone")
        spooled = stack.spool_rows()
        restarting = time.monotonic()
        restart_postgres(stack.postgres)
        recovered = time.monotonic() - restarting
        fault_end = load.elapsed()
        drained = stack.wait_drained()
        wait_until(lambda: stack.service.health()["status"] == "ok", timeout=20, what="health ok again")
        healthy_after = time.monotonic() - restarting
        after = _wait(load, 2, "load after recovery")
        outcomes = load.stop()

    recovery_log = stack.postgres.process.log_tail(200, since=log_offset)
    assert "not properly shut down" in recovery_log, "the restart ran crash recovery"
    assert not server_errors(outcomes), server_errors(outcomes)[:3]
    assert all(o.status == 200 for o in outcomes), [o for o in outcomes if o.status != 200][:3]
    lost, doubled = stack.rows_lost(ok_ids(outcomes))
    assert (lost, doubled) == (0, 0), f"{lost} answered rows missing, {doubled} doubled"
    report(
        "postgres-killed",
        requests=len(outcomes),
        server_errors=0,
        rows_lost=lost,
        duplicates=doubled,
        spooled_at_restart=int(spooled),
        latency_before=Latency.of(between(outcomes, 0, before_end)),
        latency_during=Latency.of(between(outcomes, fault_start, fault_end)),
        latency_after=Latency.of(between(outcomes, *after)),
        outage_seconds=round(fault_end - fault_start, 1),
        crash_recovery_seconds=round(recovered, 2),
        drain_seconds=round(drained, 2),
        health_ok_after_restart_s=round(healthy_after, 2),
    )


def test_a_slow_or_hung_database_never_stalls_cached_predictions_and_loses_no_row(
    stack: DatabaseStack,
) -> None:
    """PostgreSQL slow (0.2 s each way) and then hung: predictions served from L1/Redis keep their
    latency (the prediction log's spool absorbs the writes), health reports the hung database
    down; once it answers, every row lands."""
    phases: dict[str, tuple[float, float]] = {}
    with SteadyLoad(stack.service.url, rate=RATE, threads=8) as load:
        _warm_up(load)
        phases["before"] = _wait(load, 4, "baseline")
        stack.proxy.set_delay(0.2)
        phases["slow_200ms"] = _wait(load, 5, "a slow database")
        stack.proxy.blackhole()
        hung_at, hung_start = time.monotonic(), load.elapsed()
        # A hung database is reported down (the health probe has a deadline), not "up" forever.
        wait_until(lambda: stack.components()["database"]["status"] == "down", timeout=10, what="down")
        reported_down_after = time.monotonic() - hung_at
        assert stack.service.health()["status"] == "degraded"
        assert metric(stack.service.url, "database_connection_status") == 0
        wait_until(lambda: load.elapsed() > hung_start + 5, timeout=10, what="a hung database")
        phases["hung"] = (hung_start, load.elapsed())
        spooled = stack.spool_rows()
        stack.proxy.pass_through()
        restored_at = time.monotonic()
        drained = stack.wait_drained()
        wait_until(lambda: stack.service.health()["status"] == "ok", timeout=20, what="health ok again")
        healthy_after = time.monotonic() - restored_at
        phases["after"] = _wait(load, 2, "load after recovery")
        outcomes = load.stop()

    assert not server_errors(outcomes), server_errors(outcomes)[:3]
    assert all(o.status == 200 for o in outcomes), [o for o in outcomes if o.status != 200][:3]
    latency = {name: Latency.of(between(outcomes, *span)) for name, span in phases.items()}
    for name in ("slow_200ms", "hung"):
        # A request that needed the database would take several 0.4 s round trips, or forever.
        assert_within_noise(name, latency[name], latency["before"], ceiling_ms=1000)
    lost, doubled = stack.rows_lost(ok_ids(outcomes))
    assert (lost, doubled) == (0, 0), f"{lost} answered rows missing, {doubled} doubled"
    report(
        "postgres-slow-and-hung",
        requests=len(outcomes),
        server_errors=0,
        rows_lost=lost,
        **{f"latency_{name}": value for name, value in latency.items()},
        spooled_when_restored=int(spooled),
        hung_reported_down_after_s=round(reported_down_after, 2),
        drain_after_restore_s=round(drained, 2),
        health_ok_after_restore_s=round(healthy_after, 2),
    )


POOL_ENV = {
    "DATABASE_POOL_SIZE": "1",
    "DATABASE_MAX_OVERFLOW": "0",
    "DATABASE_POOL_TIMEOUT_SECONDS": "0.5",
}
POOL_UNAVAILABLE = "database unavailable; nothing was written"


@pytest.fixture
def tiny_pool_stack(
    postgres: Server,
    seeded_data_dir: Path,
    redis_server: Server,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[DatabaseStack]:
    """The service with one pooled connection and a 0.5 s wait for it."""
    redis_url = _redis_url(redis_server, request)
    yield from _service_stack(postgres, seeded_data_dir, redis_url, tmp_path, POOL_ENV)


def _pool_plan(load: SteadyLoad) -> Callable[[int], Request]:
    """Two of three requests predict (L1 hits once warm), one reads an unknown prediction id: a
    lookup the spool cannot answer, so it needs a pooled connection."""

    def plan(index: int) -> Request:
        if index % 3 == 2:
            return Request("GET", f"/predictions/{uuid.uuid4()}")
        symbols = load.symbols
        return Request("POST", "/predict", {"symbol": symbols[index % len(symbols)]})

    return plan


def test_pool_exhaustion_answers_503_with_retry_after_never_500_and_cached_predictions_go_on(
    tiny_pool_stack: DatabaseStack,
) -> None:
    """One pooled connection held by slow statements (0.5 s each way): requests that need one
    get 503 with Retry-After and the documented body after DATABASE_POOL_TIMEOUT_SECONDS, never a
    500; predictions from L1 keep being answered; once the database is fast, reads work again."""
    stack = tiny_pool_stack
    load = SteadyLoad(stack.service.url, rate=RATE, threads=12)
    load.plan = _pool_plan(load)
    with load:
        _warm_up(load, answered=40)
        before = _wait(load, 3, "baseline")
        stack.proxy.set_delay(0.5)
        exhausted = _wait(load, 6, "a held pool")
        stack.proxy.pass_through()
        unknown = f"{stack.service.url}/predictions/{uuid.uuid4()}"
        wait_until(lambda: httpx.get(unknown, timeout=10).status_code == 404, timeout=20, what="reads again")
        stack.wait_drained()  # the backlog written, the one connection is free again
        after = _wait(load, 2, "load after recovery")
        outcomes = load.stop()

    refused = [o for o in outcomes if o.status == 503]
    assert refused, "the pool was exhausted: some request had to wait past the pool timeout"
    assert not [o for o in outcomes if o.status >= 500 and o.status != 503], "never a 500"
    assert {o.route for o in refused} == {"/predictions/{id}"}, "only requests that need the database"
    assert all(o.error == POOL_UNAVAILABLE for o in refused), {o.error for o in refused}
    assert all(o.retry_after is not None and int(o.retry_after) >= 1 for o in refused)
    predictions = [o for o in outcomes if o.route == "/predict"]
    assert all(o.status == 200 for o in predictions), [o for o in predictions if o.status != 200][:3]
    reads = [o for o in outcomes if o.route == "/predictions/{id}"]
    assert {o.status for o in reads} <= {404, 503}
    assert not [o for o in between(reads, after[0]) if o.status != 404], "reads work again after it"
    lost, doubled = stack.rows_lost(ok_ids(outcomes))
    assert (lost, doubled) == (0, 0)
    during_reads = between(reads, *exhausted)
    report(
        "pool-exhausted",
        requests=len(outcomes),
        server_errors_500=0,
        refused_503=len(refused),
        reads_refused_while_held=f"{len([o for o in during_reads if o.status == 503])}/{len(during_reads)}",
        rows_lost=lost,
        predict_latency_before=Latency.of(between(predictions, *before)),
        predict_latency_during=Latency.of(between(predictions, *exhausted)),
        predict_latency_after=Latency.of(between(predictions, *after)),
        retry_after=sorted({o.retry_after or "" for o in refused}),
    )
