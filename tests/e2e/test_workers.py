"""Two uvicorn workers behind one port: each exports its own series over OTLP, and they sum right.

service (`stockpred serve --workers 2`) --OTLP--> collector --:8889--> Prometheus. After a known
number of predictions, `sum(predictions_total)` in Prometheus equals it, the series come from two
instances (service.instance.id), and the leader-only outcome monitoring runs in exactly one. And a
bar ingested through one worker retires the other worker's L1 entry at once (feature epochs).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import (
    CollectorPorts,
    Server,
    create_database,
    drop_database,
    free_port,
    start_collector,
    start_prometheus,
    wait_until,
)
from tests.harness.market import bar_time, new_bar, post_bar
from tests.harness.servers import start_jaeger
from tests.harness.service import ServiceProcess, start_service

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
OTEL_DIR = REPO_ROOT / "otel"
SYMBOLS = ("AAPL", "MSFT", "GOOGL", "AMZN", "NVDA")
PREDICTIONS = 200
JOB = "prediction-api"


@pytest.fixture(scope="module")
def stack(
    seeded_data_dir: Path, postgres_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("workers")
    with contextlib.ExitStack() as stack:
        jaeger = stack.enter_context(start_jaeger(_dir(workdir, "jaeger")))
        ports = CollectorPorts.pick()
        env = {
            **ports.env(traces_endpoint=jaeger.otlp_endpoint),
            "JAEGER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        }
        configs = [OTEL_DIR / "collector.yaml", OTEL_DIR / "collector.jaeger.yaml"]
        collector = stack.enter_context(
            start_collector(_dir(workdir, "collector"), configs, env, health_port=ports.health)
        )
        prometheus = stack.enter_context(_prometheus(_dir(workdir, "prometheus"), ports.prometheus))
        name = "workers_e2e"
        database_url = create_database(postgres_server, name)
        stack.callback(drop_database, postgres_server, name)
        data_dir = workdir / "data"
        shutil.copytree(seeded_data_dir, data_dir)
        service = start_service(
            workdir / "service",
            {
                "DATA_DIR": str(data_dir),
                "DATABASE_URL": database_url,
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports.otlp_http}",
                "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            },
            workers=2,
            statuses=("ok", "degraded"),
        )
        stack.callback(service.stop)
        yield {"service": service, "prometheus": prometheus, "collector": collector}


def _dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir()
    return path


def _prometheus(workdir: Path, exporter_port: int) -> Server:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "otel-collector",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
            }
        ],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return start_prometheus(workdir, path, port=free_port())


def _query(prometheus: Server, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=10)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def test_two_workers_series_sum_to_the_predictions_made(stack: dict[str, Any]) -> None:
    service: ServiceProcess = stack["service"]
    prometheus: Server = stack["prometheus"]

    def predict(i: int) -> int:
        # A connection per request, eight at a time: the workers share the listening socket, so
        # concurrent connections are accepted by both.
        body = {"symbol": SYMBOLS[i % len(SYMBOLS)]}
        return httpx.post(f"{service.url}/predict", json=body, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(predict, range(PREDICTIONS)))
    assert statuses == [200] * PREDICTIONS

    total = f'sum(predictions_total{{job="{JOB}"}})'
    wait_until(
        lambda: (
            bool(_query(prometheus, total)) and float(_query(prometheus, total)[0]["value"][1]) == PREDICTIONS
        ),
        timeout=60,
        interval=0.5,
        what=f"sum(predictions_total) == {PREDICTIONS} in Prometheus",
    )
    instances = {r["metric"]["instance"] for r in _query(prometheus, f'predictions_total{{job="{JOB}"}}')}
    assert len(instances) == 2, f"both workers served and export their own series: {instances}"
    health = {r["metric"]["instance"] for r in _query(prometheus, f'service_health_status{{job="{JOB}"}}')}
    assert len(health) == 2, "every worker reports its own health"
    # Outcome monitoring reads the shared table: one worker (the leader) publishes it, not both.
    pending = f'model_pending_predictions{{job="{JOB}"}}'
    wait_until(lambda: bool(_query(prometheus, pending)), timeout=30, what="model_pending_predictions")
    assert len({r["metric"]["instance"] for r in _query(prometheus, pending)}) == 1


def _predict_many(service: ServiceProcess, symbol: str, count: int) -> list[dict[str, Any]]:
    """`count` predictions, a connection each, eight at a time: both workers answer some."""

    def predict(_: int) -> dict[str, Any]:
        response = httpx.post(f"{service.url}/predict", json={"symbol": symbol}, timeout=30)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(predict, range(count)))


def test_a_bar_ingested_through_one_worker_retires_the_l1_of_the_other(stack: dict[str, Any]) -> None:
    """No Redis here: each worker's L1 is its only cache. Warmed in both, then a new bar reaches
    one of them; every prediction after the ingest answered must use the new bar, whichever worker
    serves it (without the shared epochs the other one served the old bar for its L1 TTL, 30 s)."""
    service: ServiceProcess = stack["service"]
    warm = _predict_many(service, "MSFT", 80)
    assert sum(answer["served_from"] == "l1" for answer in warm) >= 60, "L1 warmed in the workers"
    bar = new_bar("MSFT")
    response = post_bar(service.url, bar)
    assert response.status_code == 200, response.text
    after = _predict_many(service, "MSFT", 80)
    as_ofs = {datetime.fromisoformat(answer["as_of"]) for answer in after}
    assert as_ofs == {bar_time(bar)}, f"predictions after the ingest used bars {sorted(as_ofs)}"
