"""Series in a full scrape of `/metrics` with every symbol served by two model versions.

Builds the state the dashboards show during a champion switch: version 1 serves every symbol,
some predictions resolve, version 2 is promoted and serves every symbol too, drift and accuracy
monitors publish for both. Then counts series (samples in the exposition) per metric family and
how they split per symbol and per model version, to check the label budget in docs/telemetry.md.

Usage: python benchmarks/series_count.py
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections import Counter
from datetime import datetime
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.api.schemas import Bar
from service.config import Settings
from service.container import build_container, train_and_register
from service.market.synthetic import synthetic_bars_after
from service.storage.tables import as_utc


def drive(client: TestClient, symbols: list[str]) -> None:
    for symbol in symbols:
        client.post("/predict", json={"symbol": symbol})


def next_bars(client: TestClient, symbols: list[str]) -> None:
    """Each symbol's next synthetic bar: resolves the predictions just made."""
    bars = []
    for symbol in symbols:
        as_of = as_utc(
            datetime.fromisoformat(client.post("/predict", json={"symbol": symbol}).json()["as_of"])
        )
        bar = synthetic_bars_after(symbol, after=as_of, count=1)[0]
        bars.append(Bar.from_bar_in(bar).model_dump(mode="json"))
    client.post("/market-data", json={"bars": bars})


def count(exposition: str) -> tuple[Counter[str], Counter[str], Counter[str]]:
    per_family: Counter[str] = Counter()
    per_symbol: Counter[str] = Counter()
    per_version: Counter[str] = Counter()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            per_family[family.name] += 1
            if "symbol" in sample.labels:
                per_symbol[sample.labels["symbol"]] += 1
            if "model_version" in sample.labels:
                per_version[sample.labels["model_version"]] += 1
    return per_family, per_symbol, per_version


def main() -> int:
    logging.disable(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench-series-"))
    try:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            DATA_DIR=workdir,
            LOG_JSON=False,
            MODEL_POLL_SECONDS=0.5,
            MONITOR_INTERVAL_SECONDS=0.5,
        )
        with TestClient(create_app(settings)) as client:
            symbols = client.get("/models/current").json()["symbols"]
            drive(client, symbols)
            next_bars(client, symbols)
            trainer = build_container(settings)
            try:
                second = train_and_register(trainer)
            finally:
                trainer.close()
            client.app.state.container.models.check_for_new_champion()  # type: ignore[attr-defined]
            assert client.get("/models/current").json()["version"] == second
            drive(client, symbols)
            next_bars(client, symbols)
            container = client.app.state.container  # type: ignore[attr-defined]
            container.outcomes.refresh()
            container.drift.refresh()
            client.post("/predict", json={"symbol": "NOPE"})  # an error series, as in real traffic
            per_family, per_symbol, per_version = count(client.get("/metrics").text)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total = sum(per_family.values())
    print(f"{len(symbols)} symbols, 2 model versions: {total} series in one scrape of /metrics")
    print(f"{'family':45s} series")
    for name, n in per_family.most_common():
        print(f"{name:45s} {n:6d}")
    print("per symbol:", dict(sorted(per_symbol.items())))
    print("per model version:", dict(sorted(per_version.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
