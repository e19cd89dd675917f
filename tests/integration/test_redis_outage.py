"""Redis stopped mid-run: health degrades, answers stay correct; restarted: used again, no restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from service.serving.feature_store import FeatureStore
from tests.conftest import ClientFactory, make_settings
from tests.harness import start_redis, wait_until

pytestmark = pytest.mark.integration
SYMBOLS = ["AAPL", "AMZN", "GOOGL", "MSFT", "NVDA"]


def test_redis_outage_degrades_health_and_recovers(
    make_client: ClientFactory, data_dir: Path, tmp_path: Path
) -> None:
    server = start_redis(tmp_path / "redis")
    port = server.port
    # A short L1 TTL so that lookups reach past L1 during the test.
    settings = make_settings(data_dir, REDIS_URL=server.url, FEATURE_L1_TTL_SECONDS=0.3)
    api = make_client(settings)
    probe = redis.Redis.from_url(server.url)

    before = {s: api.post("/predict", json={"symbol": s}).json()["probability_up"] for s in SYMBOLS}
    assert probe.exists(FeatureStore.redis_key("AAPL")) == 1
    wait_until(lambda: api.get("/health").json()["status"] == "ok", timeout=10, what="health ok with redis")

    server.stop()
    wait_until(
        lambda: api.get("/health").json()["components"]["redis"]["status"] == "down",
        timeout=10,
        what="redis reported down",
    )
    health = api.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    # Answers stay correct: the same bars and model give the same probabilities, now computed.
    for symbol in SYMBOLS:
        response = api.post("/predict", json={"symbol": symbol})
        assert response.status_code == 200, response.text
        assert response.json()["probability_up"] == before[symbol]
    wait_until(
        lambda: api.post("/predict", json={"symbol": "AAPL"}).json()["served_from"] == "computed",
        timeout=10,
        what="a lookup computed while redis is down",
    )
    stats = api.get("/feature-store/stats").json()
    assert stats["redis"]["reachable"] is False
    assert stats["redis"]["errors"] >= 1

    restarted = start_redis(tmp_path / "redis-again", port=port)
    try:
        wait_until(lambda: api.get("/health").json()["status"] == "ok", timeout=15, what="health ok again")

        def used_again() -> bool:
            api.post("/predict", json={"symbol": "MSFT"})
            return bool(probe.exists(FeatureStore.redis_key("MSFT")))

        wait_until(used_again, timeout=15, what="features written to the restarted redis")
        wait_until(
            lambda: api.post("/predict", json={"symbol": "MSFT"}).json()["served_from"] in {"redis", "l1"},
            timeout=10,
            what="a lookup answered from cache after the restart",
        )
        assert api.get("/feature-store/stats").json()["redis"]["reachable"] is True
    finally:
        restarted.stop()
