"""The model registry down: start from the cached version, report it, fail fast, recover."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from tests.conftest import ClientFactory, make_settings
from tests.harness import free_port, wait_until


def unreachable_registry() -> str:
    """A loopback port nothing listens on: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def test_start_with_registry_down_serves_the_cached_version(
    make_client: ClientFactory, data_dir: Path
) -> None:
    settings = make_settings(data_dir, MLFLOW_TRACKING_URI=unreachable_registry())
    started = time.monotonic()
    api: TestClient = make_client(settings)
    startup = time.monotonic() - started
    # MLflow's defaults retry for minutes; the service gives up within seconds.
    assert startup < 60, f"start-up with the registry down took {startup:.0f}s"

    current = api.get("/models/current").json()
    assert current["source"] == "cache"
    assert api.post("/predict", json={"symbol": "AAPL"}).json()["model_version"] == current["version"]
    health = api.get("/health").json()
    assert health["status"] == "degraded"
    assert health["components"]["mlflow"]["status"] == "down"
    assert health["components"]["model"]["status"] == "up"
    listing = api.get("/models").json()
    assert listing["registry_reachable"] is False
    assert listing["served_version"] == current["version"]
    metrics = api.get("/metrics").text
    assert "mlflow_connection_status" in metrics
    assert any(
        line.startswith("mlflow_connection_status") and line.rstrip().endswith(" 0.0")
        for line in metrics.splitlines()
    ), [line for line in metrics.splitlines() if "mlflow_connection" in line]


def test_start_with_registry_down_and_no_cache_reports_down(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "empty", MLFLOW_TRACKING_URI=unreachable_registry())
    api = make_client(settings)
    health = api.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "down"
    assert api.post("/predict", json={"symbol": "AAPL"}).status_code == 503


def test_promoting_a_new_champion_is_picked_up_live(make_client: ClientFactory, data_dir: Path) -> None:
    from service.container import build_container, train_and_register

    settings = make_settings(data_dir)
    api = make_client(settings)
    first = api.get("/models/current").json()["version"]
    assert api.post("/predict", json={"symbol": "MSFT"}).status_code == 200
    trainer = build_container(settings)
    try:
        second = train_and_register(trainer, promote=True)
    finally:
        trainer.close()
    assert second != first
    wait_until(
        lambda: api.get("/models/current").json()["version"] == second,
        timeout=20,
        what="the poller to serve the new champion",
    )
    assert api.post("/predict", json={"symbol": "MSFT"}).json()["model_version"] == second
    versions = {v["version"]: v for v in api.get("/models").json()["versions"]}
    assert versions[second]["champion"] is True
    assert versions[first]["champion"] is False
    metrics = api.get("/metrics").text.splitlines()
    # Counters of both versions stay (they are cumulative); per-version gauges only for the served
    # one (tests/monitoring/test_retired_version.py).
    assert any(
        line.startswith("predictions_total{") and f'model_version="{first}"' in line for line in metrics
    )
    assert any(line.startswith("model_info{") and f'model_version="{second}"' in line for line in metrics)
    assert not any(line.startswith("model_info{") and f'model_version="{first}"' in line for line in metrics)
