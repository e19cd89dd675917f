"""The market feed with `stockpred serve --workers 2`: one process feeds, the market advances once.

A real server with two worker processes on one DATA_DIR (SQLite), each running the feed on a
short period. The lock in DATA_DIR makes exactly one of them feed (one holder, seen in /proc/locks);
the bars stored over a while are then at most one per period, not two.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from service.market.synthetic import next_bar_index
from tests.harness import wait_until
from tests.harness.service import start_service

pytestmark = pytest.mark.integration

INTERVAL = 0.5


def newest_index(url: str) -> int:
    """Index in the synthetic market of the newest bar the service predicts from."""
    as_of = httpx.post(f"{url}/predict", json={"symbol": "AAPL"}, timeout=10).json()["as_of"]
    return next_bar_index(datetime.fromisoformat(as_of)) - 1


def flock_holders(path: Path) -> list[int]:
    """Pids holding a flock on `path`, from /proc/locks (`N: FLOCK ADVISORY WRITE pid maj:min:inode ...`)."""
    inode = path.stat().st_ino
    holders = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
            holders.append(int(fields[4]))
    return holders


def test_two_workers_feed_the_market_once(seeded_data_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(seeded_data_dir, data_dir)
    env = {
        "DATA_DIR": str(data_dir),
        "MARKET_FEED": "auto",
        "MARKET_FEED_INTERVAL_SECONDS": str(INTERVAL),
        "LOG_JSON": "false",
        # Each worker has its own L1 cache, which only the feeding worker's invalidation clears: with
        # the default 30 s TTL the other worker would keep answering from the previous bar.
        "FEATURE_L1_TTL_SECONDS": "0.001",
        # Several workers refuse the per-process /metrics; no collector here, so no metric outlet.
        "OTEL_METRICS_EXPORTER": "none",
    }
    service = start_service(tmp_path / "service", env, workers=2)
    try:
        # Which process holds the lock, asked of the kernel (not of the log).
        lock = data_dir / "market-feed.lock"
        wait_until(
            lambda: len(flock_holders(lock)) == 1, timeout=60, what="one process holding the feed lock"
        )
        (holder,) = flock_holders(lock)
        assert holder != service.process.pid, "the supervisor does not serve, a worker feeds"

        first, started = newest_index(service.url), time.monotonic()
        wait_until(lambda: newest_index(service.url) >= first + 6, timeout=60, what="six more bars")
        elapsed = time.monotonic() - started
        advanced = newest_index(service.url) - first
        # One feeder: at most one bar per period (plus one for the tick in flight). Two would
        # advance about twice as fast.
        assert advanced <= elapsed / INTERVAL + 2, (advanced, elapsed)
    finally:
        service.stop()
