"""MLflow faults under a steady load: the registry unreachable at start-up, then killed mid-run.

One real `stockpred serve` for the module, with `MLFLOW_TRACKING_URI` pointing at a loopback port
where a real `mlflow server` (the venv's, on a copy of the seeded SQLite store) is started only
once the service is up: the service starts with the registry down. The second test kills that
server under load and starts it again, as a supervisor would.

Each test names its promise and prints its figures.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import (
    Server,
    create_database,
    drop_database,
    free_port,
    start_mlflow,
    wait_until,
)
from tests.harness.load import Latency, SteadyLoad, between, ok_ids, server_errors
from tests.harness.observe import metric, prediction_rows, report
from tests.harness.service import ServiceProcess, start_service

pytestmark = pytest.mark.integration

MODEL_NAME = "stock-direction"
MODEL_ALIAS = "champion"
RATE = 30.0
DRAIN_TIMEOUT = 60.0


@dataclass
class RegistryStack:
    service: ServiceProcess
    mlflow_port: int
    mlflow_store: Path
    workdir: Path
    database_url: str
    startup_seconds: float
    mlflow: Server | None = None
    _restarts: int = field(default=0)

    def start_mlflow(self) -> float:
        """Start the registry on its port (again); seconds until it answers."""
        started = time.monotonic()
        self._restarts += 1
        workdir = self.workdir / f"mlflow-{self._restarts}"
        workdir.mkdir()
        self.mlflow = start_mlflow(workdir, self.mlflow_store, port=self.mlflow_port)
        return time.monotonic() - started

    def ensure_mlflow(self) -> None:
        if self.mlflow is None or not self.mlflow.is_running():
            self.start_mlflow()
        wait_until(lambda: self.mlflow_status() == "up", timeout=30, what="the service to see the registry")

    def components(self) -> dict[str, Any]:
        components = self.service.health()["components"]
        assert isinstance(components, dict)
        return components

    def mlflow_status(self) -> str:
        return str(self.components()["mlflow"]["status"])

    def current_model(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.service.url}/models/current", timeout=10).json()
        return body

    def reload_failures(self) -> float:
        return metric(self.service.url, "model_reloads_total", {"outcome": "failure"}) or 0.0

    def rows_lost(self, answered: list[str]) -> tuple[int, int]:
        wait_until(
            lambda: metric(self.service.url, "prediction_log_spool_rows") == 0,
            timeout=DRAIN_TIMEOUT,
            what="the spool to drain",
        )
        ids = [row.id for row in prediction_rows(self.database_url)]
        return len(set(answered) - set(ids)), len(ids) - len(set(ids))


@pytest.fixture(scope="module")
def stack(
    seeded_data_dir: Path, postgres_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryStack]:
    workdir = tmp_path_factory.mktemp("faults-registry")
    database = f"faults_registry_{uuid.uuid4().hex[:8]}"
    database_url = create_database(postgres_server, database)
    data_dir = workdir / "data"
    shutil.copytree(seeded_data_dir, data_dir)
    store = workdir / "mlflow-store" / "mlflow.db"  # the server's own copy of the seeded registry
    store.parent.mkdir()
    shutil.copy2(seeded_data_dir / "mlflow.db", store)
    port = free_port()
    started = time.monotonic()
    service = start_service(
        workdir / "service",
        {
            "DATA_DIR": str(data_dir),
            "DATABASE_URL": database_url,
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",  # nothing listens there yet
            "MODEL_POLL_SECONDS": "0.5",
        },
        statuses=("ok", "degraded"),
    )
    stack = RegistryStack(service, port, store, workdir, database_url, time.monotonic() - started)
    try:
        yield stack
    finally:
        service.stop()
        if stack.mlflow is not None:
            stack.mlflow.stop()
        drop_database(postgres_server, database)


def _warm_up(load: SteadyLoad, answered: int = 30) -> None:
    wait_until(lambda: len(ok_ids(load.snapshot())) >= answered, timeout=30, what=f"{answered} answers")


def _wait(load: SteadyLoad, seconds: float, what: str) -> tuple[float, float]:
    start = load.elapsed()
    wait_until(lambda: load.elapsed() > start + seconds, timeout=seconds + 10, what=what)
    return start, load.elapsed()


def test_registry_unreachable_at_start_up_serves_the_cached_model_and_reconnects_when_it_appears(
    stack: RegistryStack,
) -> None:
    """Started with nothing on the registry's port: the cached version serves under load (0 5xx),
    health is degraded with mlflow down and mlflow_connection_status 0; once a registry answers
    there, the same process reports it up."""
    if stack.mlflow is not None:
        pytest.fail("the registry must still be absent: this test runs first in its module")
    current = stack.current_model()
    assert current["source"] == "cache", current
    health = stack.service.health()
    assert health["status"] == "degraded"
    assert stack.components()["mlflow"]["status"] == "down"
    assert stack.components()["model"]["status"] == "up"
    assert metric(stack.service.url, "mlflow_connection_status") == 0
    with SteadyLoad(stack.service.url, rate=RATE, threads=8) as load:
        _warm_up(load)
        down = _wait(load, 3, "predictions with the registry down")
        registry_start = stack.start_mlflow()
        appeared = time.monotonic()
        wait_until(lambda: stack.service.health()["status"] == "ok", timeout=30, what="health ok")
        seen_after = time.monotonic() - appeared
        assert metric(stack.service.url, "mlflow_connection_status") == 1
        up = _wait(load, 2, "predictions with the registry up")
        outcomes = load.stop()

    assert not server_errors(outcomes), server_errors(outcomes)[:3]
    assert all(o.status == 200 for o in outcomes), [o for o in outcomes if o.status != 200][:3]
    lost, doubled = stack.rows_lost(ok_ids(outcomes))
    assert (lost, doubled) == (0, 0)
    assert stack.current_model()["version"] == current["version"]
    report(
        "registry-down-at-start",
        service_start_seconds=round(stack.startup_seconds, 1),
        served_version=current["version"],
        source=current["source"],
        requests=len(outcomes),
        server_errors=0,
        rows_lost=lost,
        latency_registry_down=Latency.of(between(outcomes, *down)),
        latency_registry_up=Latency.of(between(outcomes, *up)),
        mlflow_server_start_seconds=round(registry_start, 1),
        health_ok_after_registry_up_s=round(seen_after, 2),
    )


def _promote_a_new_version(registry_url: str) -> str:
    """Register a second version of the champion's model (the same artifacts) and promote it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
    champion = client.get_model_version_by_alias(MODEL_NAME, MODEL_ALIAS)
    # MLflow 3 registers a logged model (source `models:/<model id>`); the answer leaves model_id out.
    model_id = champion.model_id or str(champion.source).removeprefix("models:/")
    created = client.create_model_version(
        MODEL_NAME, source=str(champion.source), run_id=champion.run_id, model_id=model_id
    )
    wait_until(
        lambda: client.get_model_version(MODEL_NAME, created.version).status == "READY",
        timeout=30,
        what="the new version to be ready",
    )
    client.set_registered_model_alias(MODEL_NAME, MODEL_ALIAS, created.version)
    return str(created.version)


def test_registry_killed_mid_run_keeps_serving_counts_poll_failures_and_follows_a_promotion_once_back(
    stack: RegistryStack,
) -> None:
    """SIGKILL of the MLflow server under load: 0 5xx, health degraded, the poller's failures
    counted in model_reloads_total{outcome="failure"}; restarted, it is used again by the same
    process: a promotion made then is served without a restart."""
    stack.ensure_mlflow()
    assert stack.mlflow is not None
    pid = stack.service.process.pid
    served = stack.current_model()["version"]
    failures_before = stack.reload_failures()
    with SteadyLoad(stack.service.url, rate=RATE, threads=8) as load:
        _warm_up(load)
        before = _wait(load, 2, "baseline")
        stack.mlflow.process.kill()
        killed_at = time.monotonic()
        fault_start = load.elapsed()
        wait_until(lambda: stack.mlflow_status() == "down", timeout=15, what="mlflow down")
        degraded_after = time.monotonic() - killed_at
        assert stack.service.health()["status"] == "degraded"
        wait_until(lambda: stack.reload_failures() >= failures_before + 2, timeout=20, what="poll failures")
        _wait(load, 3, "predictions with the registry gone")
        failures_during = stack.reload_failures() - failures_before
        restart_seconds = stack.start_mlflow()
        fault_end = load.elapsed()
        back_at = time.monotonic()
        wait_until(lambda: stack.service.health()["status"] == "ok", timeout=30, what="health ok again")
        healthy_after = time.monotonic() - back_at
        new_version = _promote_a_new_version(stack.mlflow.url)
        promoted_at = time.monotonic()
        wait_until(lambda: stack.current_model()["version"] == new_version, timeout=30, what="the promotion")
        followed_after = time.monotonic() - promoted_at
        after = _wait(load, 2, "load after recovery")
        outcomes = load.stop()

    assert stack.service.process.pid == pid, "the same process throughout: no restart"
    assert not server_errors(outcomes), server_errors(outcomes)[:3]
    assert all(o.status == 200 for o in outcomes), [o for o in outcomes if o.status != 200][:3]
    assert failures_during >= 2
    lost, doubled = stack.rows_lost(ok_ids(outcomes))
    assert (lost, doubled) == (0, 0)
    prediction = httpx.post(f"{stack.service.url}/predict", json={"symbol": "AAPL"}, timeout=10).json()
    assert prediction["model_version"] == new_version
    report(
        "registry-killed",
        requests=len(outcomes),
        server_errors=0,
        rows_lost=lost,
        latency_before=Latency.of(between(outcomes, *before)),
        latency_during=Latency.of(between(outcomes, fault_start, fault_end)),
        latency_after=Latency.of(between(outcomes, *after)),
        outage_seconds=round(fault_end - fault_start, 1),
        mlflow_down_in_health_after_s=round(degraded_after, 2),
        reload_failures_counted=int(failures_during),
        mlflow_restart_seconds=round(restart_seconds, 1),
        health_ok_after_restart_s=round(healthy_after, 2),
        promotion=f"{served}->{new_version}",
        promotion_served_after_s=round(followed_after, 2),
    )
