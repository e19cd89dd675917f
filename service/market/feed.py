"""The synthetic market feed: the next deterministic bar of every symbol, every few seconds.

A demo stack has no exchange behind it, so without this nothing after the seeded history ever
arrives: no prediction is resolved, `model_accuracy` never appears and drift never moves. The feed
stands in for the exchange. Every `MARKET_FEED_INTERVAL_SECONDS` it appends, for each configured
symbol, the synthetic market's bar after the newest stored one (`synthetic.py`: bar i is a pure
function of seed, symbol and i), through `ingestion.ingest` with the feature store and the
prediction service, exactly as `POST /market-data` stores bars: validated, one transaction,
cached features invalidated, the predictions the new bars decide resolved.

Modes (`MARKET_FEED`):
- `off`: never runs.
- `on`: always runs, continuing the synthetic path after whatever the database holds.
- `auto` (default): runs only while the database holds the synthetic market. Checked on the first
  tick: every configured symbol has bars, and its oldest and newest stored bars are the synthetic
  bars of the same dates (open, high, low, close and volume equal). Imported data fails this at
  once (another price path), so the feed stays off and says why in a log line. The newest bar is
  checked again on every tick (the feed computes it anyway), so bars imported while it runs stop
  it too. Two bars a symbol, not all of them: a cheap check that an unrelated history cannot pass.

Real time. Synthetic bars are daily closes (21:00 UTC) from 2024-01-01; the 500 seeded business
days end on 2025-11-28. The feed never appends a bar whose timestamp is in the future: once the
next bar would be, it logs that it has caught up with real time and from then on appends one bar
per business day, when that day's close has passed, like a market. From a fresh seed the headroom
is the business days between 2025-11-28 and today (262 on 2026-12-01, about one more each weekday),
so at the default 5 s period a demo moves for about 22 minutes (262 x 5 s) before it follows the
calendar; a longer period stretches it proportionally.

Drift demonstration. With `MARKET_FEED_SHIFT_SYMBOL` set, that symbol's bars from index
`SEED_DAYS` on (the first bar after the seeded history) follow the synthetic market's shifted
regime, so its drift score rises as the feed goes on (about 60 shifted bars take it above the 0.2
alert threshold) and the alert path has something to carry. The shifted path is as deterministic
as the plain one, and the `auto` check compares against the same path.

Several processes. `stockpred serve --workers N` runs one feed per worker, all on one database.
Appending "the bar after the newest" is an idempotent upsert, and resolution only touches rows
still `pending`, so two feeds racing on the same bar store it once and resolve each prediction
once. But N feeds on their own timers would each append a bar per period, advancing the market N
times as fast. So only one process feeds: the one holding an exclusive `flock` on
`DATA_DIR/market-feed.lock` (the workers of one `serve` share DATA_DIR). The others try again
each period and take over when the holder exits (the kernel releases the lock with the process).
Processes on other machines sharing the database have their own DATA_DIR and would each feed:
leave the feed on in one of them only (`MARKET_FEED=off` elsewhere).
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import select

from service.background import PeriodicTask
from service.market.ingestion import ingest
from service.market.synthetic import next_bar_index, synthetic_bars
from service.serving.feature_store import FeatureStore
from service.serving.predictions import PredictionService
from service.storage.database import Database
from service.storage.market_bars import BarIn, last_bar
from service.storage.tables import MarketBar
from service.telemetry.providers import Telemetry

log = logging.getLogger(__name__)

FeedMode = Literal["auto", "on", "off"]
PRICE_FIELDS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class FeedTick:
    """What one tick did: bars appended, predictions resolved, and why it stopped short, if it did."""

    appended: int = 0
    resolved: int = 0
    skipped: str | None = None  # "standby" (another process feeds), "real time", "stopped"


class MarketFeed:
    """Appends the synthetic market's next bar per symbol on a period (see the module docstring)."""

    def __init__(
        self,
        *,
        database: Database,
        feature_store: FeatureStore,
        predictions: PredictionService,
        telemetry: Telemetry,
        symbols: Sequence[str],
        seed: int,
        mode: FeedMode,
        interval_seconds: float,
        lock_path: Path,
        shift_symbol: str | None = None,
        shift_from: int | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._database = database
        self._feature_store = feature_store
        self._predictions = predictions
        self._tracer = telemetry.tracer
        self._symbols = tuple(symbols)
        self._seed = seed
        self._mode = mode
        self._lock_path = lock_path
        self._shift_symbol = shift_symbol
        self._shift_from = shift_from
        self._clock = clock
        self._lock_fd: int | None = None
        self._checked = mode != "auto"  # `on` needs no check; `auto` checks on its first tick
        self._stopped = mode == "off"
        self._at_real_time = False
        self._standby_logged = False
        self._tick_lock = threading.Lock()
        self._task = PeriodicTask("market-feed", interval_seconds, self.tick, run_first=False)
        self.interval_seconds = interval_seconds

    @property
    def running(self) -> bool:
        """False once the feed has turned itself off (imported data) or was configured off."""
        return not self._stopped

    # --- one step --------------------------------------------------------------------------------

    def tick(self) -> FeedTick:
        """Append the next bar of every symbol if this process feeds and the bar is not in the future."""
        with self._tick_lock:
            if self._stopped:
                return FeedTick(skipped="stopped")
            if not self._hold_lock():
                return FeedTick(skipped="standby")
            with self._tracer.start_as_current_span("market_feed.tick"):
                return self._tick()

    def _tick(self) -> FeedTick:
        if not self._checked:
            problem = self._not_synthetic_reason()
            if problem is not None:
                self._stop_feeding(problem)
                return FeedTick(skipped="stopped")
            self._checked = True
            log.info("market feed on: the database holds the synthetic market", extra=self._describe())
        now = self._clock()
        bars: list[BarIn] = []
        for symbol in self._symbols:
            path = self._path_through_newest(symbol)
            if path is None:
                continue
            stored, expected, following = path
            if self._mode == "auto" and not same_bar(stored, expected):
                self._stop_feeding(
                    f"the newest {symbol} bar ({stored.ts.isoformat()}) is not the synthetic one"
                )
                return FeedTick(skipped="stopped")
            if following.ts > now:
                continue
            bars.append(following)
        if not bars:
            if not self._at_real_time:
                self._at_real_time = True
                log.info(
                    "market feed caught up with real time: one bar per business day from now on "
                    "(each after its 21:00 UTC close)",
                    extra={"now": now.isoformat()},
                )
            return FeedTick(skipped="real time")
        self._at_real_time = False
        result = ingest(
            bars, database=self._database, feature_store=self._feature_store, predictions=self._predictions
        )
        log.debug(
            "market feed appended bars",
            extra={"bars": len(bars), "inserted": result.inserted, "resolved": result.resolved_predictions},
        )
        return FeedTick(appended=result.inserted, resolved=result.resolved_predictions)

    def _path_through_newest(self, symbol: str) -> tuple[MarketBar, BarIn, BarIn] | None:
        """(newest stored bar, the synthetic bar of that date, the synthetic bar after it)."""
        with self._database.session() as session:
            newest = last_bar(session, symbol=symbol)
        if newest is None:
            return None
        count = next_bar_index(newest.ts) + 1
        path = synthetic_bars(symbol, count=count, seed=self._seed, shift_from=self._shift_for(symbol))
        return newest, path[-2], path[-1]

    def _shift_for(self, symbol: str) -> int | None:
        return self._shift_from if symbol == self._shift_symbol else None

    # --- is this the synthetic market? -----------------------------------------------------------

    def _not_synthetic_reason(self) -> str | None:
        """Why the database does not hold the synthetic market, or None when it does."""
        for symbol in self._symbols:
            with self._database.session() as session:
                oldest = session.scalars(
                    select(MarketBar).where(MarketBar.symbol == symbol).order_by(MarketBar.ts).limit(1)
                ).first()
                newest = last_bar(session, symbol=symbol)
            if oldest is None or newest is None:
                return f"no bars stored for {symbol}"
            count = next_bar_index(newest.ts)
            path = synthetic_bars(symbol, count=count, seed=self._seed, shift_from=self._shift_for(symbol))
            by_ts = {bar.ts: bar for bar in path}
            for which, bar in (("oldest", oldest), ("newest", newest)):
                expected = by_ts.get(bar.ts)
                if expected is None or not same_bar(bar, expected):
                    return f"the {which} {symbol} bar ({bar.ts.isoformat()}) is not the synthetic one"
        return None

    def _stop_feeding(self, reason: str) -> None:
        self._stopped = True
        log.info(
            "market feed off: the database does not hold the synthetic market (imported data?); "
            "set MARKET_FEED=on to feed it anyway",
            extra={"reason": reason},
        )

    # --- one feeding process ---------------------------------------------------------------------

    def _hold_lock(self) -> bool:
        """True when this process holds the feed lock (taken now or earlier), else stand by."""
        if self._lock_fd is not None:
            return True
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not self._standby_logged:
                self._standby_logged = True
                log.info(
                    "market feed standing by: another process of this DATA_DIR feeds",
                    extra={"lock": str(self._lock_path)},
                )
            return False
        self._lock_fd = fd
        log.info("market feed: this process feeds", extra={"lock": str(self._lock_path), "pid": os.getpid()})
        return True

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _describe(self) -> dict[str, object]:
        return {
            "interval_seconds": self.interval_seconds,
            "symbols": list(self._symbols),
            "shift_symbol": self._shift_symbol,
        }

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._stopped:
            return
        log.info("market feed starting", extra={"mode": self._mode, **self._describe()})
        self._task.start()

    def stop(self) -> None:
        self._task.stop()
        with self._tick_lock:
            self._release_lock()


def same_bar(stored: MarketBar | BarIn, expected: BarIn) -> bool:
    """The same date and the same prices and volume (floats after a database round trip)."""
    if stored.ts != expected.ts:
        return False
    return all(
        math.isclose(getattr(stored, name), getattr(expected, name), rel_tol=1e-9) for name in PRICE_FIELDS
    )
