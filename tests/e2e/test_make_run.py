"""`make run` on an empty data directory serves predictions for the seeded symbols over HTTP."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import ManagedProcess, free_port, require_binary, wait_until

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
SYMBOLS = ["AAPL", "AMZN", "GOOGL", "MSFT", "NVDA"]


def test_make_run_serves_predictions_from_an_empty_start(tmp_path: Path) -> None:
    make = require_binary("make")
    port = free_port()
    env = {"DATA_DIR": str(tmp_path / "data"), "LOG_JSON": "true"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in os.environ, "the embedded defaults need no collector"
    started = time.monotonic()
    with ManagedProcess(
        "make-run",
        [make, "--no-print-directory", "run", "HOST=127.0.0.1", f"PORT={port}"],
        log_path=tmp_path / "make-run.log",
        env=env,
        cwd=REPO,
    ) as process:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            return httpx.get(f"{base}/health", timeout=2).json()["status"] == "ok"

        process.wait_ready(healthy, timeout=300, what="make run to serve a healthy API")
        print(f"start-up from empty: {time.monotonic() - started:.1f}s")
        with httpx.Client(base_url=base, timeout=10) as client:
            for symbol in SYMBOLS:
                response = client.post("/predict", json={"symbol": symbol})
                assert response.status_code == 200, response.text
                assert response.json()["direction"] in {"up", "down"}
            assert client.get("/docs").status_code == 200
            health = client.get("/health").json()
            assert health["components"]["redis"]["status"] == "disabled"
            assert health["components"]["model"]["status"] == "up"
            metrics = client.get("/metrics").text
            assert "predictions_total{" in metrics
            # The market feed (on by default for the embedded defaults) brings the next bar within
            # a period or two (5 s), which resolves the prediction made before it.
            first = client.post("/predict", json={"symbol": "AAPL"}).json()

            def next_bar_arrived() -> bool:
                return bool(client.post("/predict", json={"symbol": "AAPL"}).json()["as_of"] > first["as_of"])

            wait_until(next_bar_arrived, timeout=60, interval=1, what="the market feed's next bar")

            def resolved() -> bool:
                record = client.get(f"/predictions/{first['prediction_id']}").json()
                return bool(record["status"] == "resolved")

            wait_until(resolved, timeout=30, interval=0.5, what="the first prediction to be resolved")
        # Every line the server wrote (after make echoes the command) is one JSON object.
        output = process.log_path.read_text().splitlines()
        served = output[next(i for i, line in enumerate(output) if "stockpred serve" in line) + 1 :]
        assert served, output
        for line in served:
            assert "trace_id" in json.loads(line), line
        # The data directory holds what a fresh machine needs next time: database, registry, cache.
        data = tmp_path / "data"
        assert (data / "stockpred.db").exists()
        assert (data / "mlflow.db").exists()
        wait_until(lambda: any((data / "model-cache").rglob("MLmodel")), timeout=5, what="cached model")
