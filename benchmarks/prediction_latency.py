"""Server-side latency of one prediction by where its features come from: L1, Redis, or computed.

One seeded data directory, one Redis (started here on a free loopback port unless REDIS_URL is
given), production telemetry without a collector. For each path the same `PredictionService.predict`
call is timed (feature lookup, inference, prediction log insert, metrics and spans):

- `l1`:       the symbol's vector is in the in-process cache.
- `redis`:    L1 is emptied before each call, the vector comes from the Redis hash.
- `computed`: both levels are emptied before each call, features come from the database.

`computed` is the baseline of the same run: the table shows how much each cache level saves.
The prediction log insert is part of every path, so it sets the floor.

Usage: python benchmarks/prediction_latency.py [--requests 500]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from service.config import Settings
from service.container import Container, bootstrap, build_container
from service.telemetry.providers import setup_telemetry

SYMBOLS = ["AAPL", "MSFT", "GOOGL", "AMZN", "NVDA"]


@contextmanager
def local_redis() -> Iterator[str]:
    """A throw-away redis-server on a free loopback port, ready before it is handed out."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def timed(call: Callable[[], object], *, before: Callable[[], None], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        before()
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def run(container: Container, count: int) -> dict[str, list[float]]:
    store = container.feature_store
    predict = container.predictions.predict
    results: dict[str, list[float]] = {"l1": [], "redis": [], "computed": []}
    for symbol in SYMBOLS:
        predict(symbol)  # warm every level and the model
        results["l1"] += timed(lambda s=symbol: predict(s), before=lambda: None, count=count // len(SYMBOLS))
        results["redis"] += timed(
            lambda s=symbol: predict(s),
            before=lambda s=symbol: store.drop_local([s]),
            count=count // len(SYMBOLS),
        )
        results["computed"] += timed(
            lambda s=symbol: predict(s),
            before=lambda s=symbol: store.invalidate([s]),
            count=count // len(SYMBOLS),
        )
    served = dict.fromkeys(results, 0)
    for symbol in SYMBOLS:  # prove each path is what it claims to be
        store.invalidate([symbol])
        served["computed"] += predict(symbol).served_from == "computed"
        store.drop_local([symbol])
        served["redis"] += predict(symbol).served_from == "redis"
        served["l1"] += predict(symbol).served_from == "l1"
    assert all(n == len(SYMBOLS) for n in served.values()), served
    return results


def report(results: dict[str, list[float]]) -> None:
    baseline = statistics.median(results["computed"])
    print(f"{'path':10s} {'n':>5s} {'median ms':>10s} {'p95 ms':>8s} {'vs computed':>12s}")
    for path, samples in results.items():
        median = statistics.median(samples)
        p95 = statistics.quantiles(samples, n=20)[-1]
        print(f"{path:10s} {len(samples):5d} {median:10.3f} {p95:8.3f} {median / baseline:11.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="calls per path")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    try:
        with local_redis() as redis_url:
            settings = Settings(_env_file=None, DATA_DIR=workdir, REDIS_URL=redis_url, LOG_JSON=False)  # type: ignore[call-arg]
            telemetry = setup_telemetry(settings)
            container = build_container(settings, telemetry)
            try:
                bootstrap(container)
                backend = container.database.backend
                print(f"database {backend}, redis {redis_url}, {args.requests} calls per path")
                report(run(container, args.requests))
            finally:
                container.close()
                telemetry.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
