"""Multi-level feature store: in-process L1, Redis L2, computation from the database.

A lookup tries L1 (a TTL cache in this process), then Redis (one hash per symbol, with a TTL),
then computes from the newest bars and writes the result back to both levels. New bars for a
symbol invalidate its entries on both levels.

Invalidation bumps the symbol's epoch (`feature_epochs`, shared by every process of the
DATA_DIR). An L1 entry is used only while its symbol's epoch is the one noted when it was stored,
so a bar ingested through another worker, or by `stockpred import`, retires this worker's entry
at once instead of after the L1 TTL. A lookup notes the epoch before it reads (Redis) or computes
(database) and writes its vector back only if the epoch is unchanged, under the same lock as
invalidation: a computation that started before an ingest can never put its stale vector back
after the ingest invalidated the symbol. (Across processes the check and the write are not one
step: another worker's in-flight computation can still write to Redis in that instant, where the
TTL bounds it; L1 is safe either way, its entry carries the old epoch.)

Redis is optional and allowed to fail: any Redis error opens a short circuit breaker
(`retry_after` seconds) during which lookups skip Redis, so an outage costs one timeout per
window instead of one per request. The next try after the window uses Redis again: no restart.

An invalidation that cannot reach Redis (an error, or the breaker open) is not dropped: the
symbols stay pending, and every Redis call first deletes the pending keys, so no call can read
Redis until the entries from before the new bars are gone. Otherwise a Redis that was unreachable
(not restarted empty) while bars arrived would serve its stale entries once it answers again, for
up to their TTL. (Pending invalidations live in this process: another worker may read a stale
entry until this one has replayed them, which it does on its next Redis call.)
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from cachetools import TTLCache

from service.model.features import FEATURE_SET, latest_vector
from service.serving.feature_epochs import FeatureEpochs
from service.storage.database import Database
from service.storage.market_bars import recent_bars
from service.telemetry.providers import Telemetry

log = logging.getLogger(__name__)

Level = Literal["l1", "redis", "computed"]


@dataclass(frozen=True)
class FeatureVector:
    """The features of a symbol's newest bar and where they came from."""

    symbol: str
    values: tuple[float, ...]
    names: tuple[str, ...]
    feature_set: str
    version: str
    computed_at: datetime
    first_bar: datetime
    last_bar: datetime
    bar_count: int

    def to_redis(self) -> dict[str, str]:
        return {
            "values": json.dumps(self.values),
            "names": json.dumps(self.names),
            "feature_set": self.feature_set,
            "version": self.version,
            "computed_at": self.computed_at.isoformat(),
            "first_bar": self.first_bar.isoformat(),
            "last_bar": self.last_bar.isoformat(),
            "bar_count": str(self.bar_count),
        }

    @classmethod
    def from_redis(cls, symbol: str, fields: dict[str, str]) -> FeatureVector:
        """Raises ValueError for an entry the model must not see (e.g. written before the checks)."""
        values = tuple(float(v) for v in json.loads(fields["values"]))
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"non-finite feature values {values}")
        return cls(
            symbol=symbol,
            values=values,
            names=tuple(json.loads(fields["names"])),
            feature_set=fields["feature_set"],
            version=fields["version"],
            computed_at=datetime.fromisoformat(fields["computed_at"]),
            first_bar=datetime.fromisoformat(fields["first_bar"]),
            last_bar=datetime.fromisoformat(fields["last_bar"]),
            bar_count=int(fields["bar_count"]),
        )


@dataclass(frozen=True)
class Lookup:
    vector: FeatureVector
    level: Level


class FeatureStore:
    """Features per symbol through L1 → Redis → database. Thread-safe."""

    def __init__(
        self,
        *,
        database: Database,
        redis_client: redis.Redis | None,
        telemetry: Telemetry,
        l1_ttl_seconds: float,
        redis_ttl_seconds: int,
        redis_retry_after_seconds: float = 1.0,
        l1_max_entries: int = 4096,
        epochs: FeatureEpochs | None = None,
    ) -> None:
        """`epochs` None keeps invalidation within this process (tests, one-off tools)."""
        self._database = database
        self._redis = redis_client
        self._telemetry = telemetry
        self._redis_ttl = redis_ttl_seconds
        self._retry_after = redis_retry_after_seconds
        # Values carry their insertion time (on the cache's own clock) so TTL left can be reported,
        # and the symbol's epoch when they were read or computed.
        self._l1: TTLCache[str, tuple[FeatureVector, float, int]] = TTLCache(
            maxsize=l1_max_entries, ttl=l1_ttl_seconds
        )
        self._l1_lock = threading.Lock()
        self._compute_locks: dict[str, threading.Lock] = {}
        # Held while invalidating and while writing back, never while computing.
        self._write_lock = threading.Lock()
        self._epochs = epochs if epochs is not None else FeatureEpochs()
        # Symbols whose Redis entries must be deleted before Redis may be read again.
        self._pending_invalidations: set[str] = set()
        self._invalidations_missed = False  # some of them failed once (worth a log line when replayed)
        self._pending_lock = threading.Lock()
        self._redis_skip_until = 0.0
        self._redis_last_error: str | None = None
        self._counts_lock = threading.Lock()
        self._counts = {"l1_hits": 0, "redis_hits": 0, "misses": 0, "redis_errors": 0}

    # --- lookups ---------------------------------------------------------------------------------

    def get(self, symbol: str) -> Lookup:
        """Features of the symbol's newest bar, from the fastest level that has them."""
        with self._telemetry.tracer.start_as_current_span("feature_store.lookup") as span:
            lookup = self._lookup(symbol)
            if span.is_recording():
                span.set_attribute("feature_store.level", lookup.level)
                span.set_attribute("feature_set.version", lookup.vector.version)
            return lookup

    def get_local(self, symbol: str) -> Lookup | None:
        """An L1 hit, traced and counted as `get` would; None when L1 lacks it (call `get` then).

        No I/O at all, so the event loop may call it; `get` may wait on Redis or the database.
        The span has no children, so it is never made the current one (that costs a context
        attach and detach per request for nothing).
        """
        vector = self._l1_get(symbol)
        if vector is None:
            return None
        attributes = {"feature_store.level": "l1", "feature_set.version": vector.version}
        self._telemetry.tracer.start_span("feature_store.lookup", attributes=attributes).end()
        self._hit("l1")
        return Lookup(vector, "l1")

    def _lookup(self, symbol: str) -> Lookup:
        vector = self._l1_get(symbol)
        if vector is not None:
            self._hit("l1")
            return Lookup(vector, "l1")
        epoch = self._epochs.current(symbol)
        vector = self._redis_get(symbol)
        if vector is not None:
            self._write_back(vector, epoch, redis_too=False)
            self._hit("redis")
            return Lookup(vector, "redis")
        with self._compute_lock(symbol):
            vector = self._l1_get(symbol)  # another thread may have computed it meanwhile
            if vector is not None:
                self._hit("l1")
                return Lookup(vector, "l1")
            epoch = self._epochs.current(symbol)
            vector = self.compute(symbol)
        self._count("misses")
        self._telemetry.metrics.feature_store_misses.add(1)
        self._write_back(vector, epoch, redis_too=True)
        return Lookup(vector, "computed")

    def _write_back(self, vector: FeatureVector, epoch: int, *, redis_too: bool) -> None:
        """Cache the vector unless the symbol was invalidated since it was read or computed."""
        with self._write_lock:
            if self._epochs.current(vector.symbol) != epoch:
                log.info(
                    "discarding a vector computed before an invalidation", extra={"symbol": vector.symbol}
                )
                return
            self._l1_put(vector, epoch)
            if redis_too:
                self._redis_put(vector)

    def compute(self, symbol: str) -> FeatureVector:
        """Features straight from the newest bars in the database (no cache involved)."""
        with self._telemetry.tracer.start_as_current_span("features.compute") as span:
            started = time.perf_counter()
            with self._database.session() as session:
                bars = recent_bars(session, symbol=symbol, limit=FEATURE_SET.lookback_bars)
            values = latest_vector(bars)
            self._telemetry.metrics.feature_computation_duration.record(time.perf_counter() - started)
            if span.is_recording():
                span.set_attribute("features.bar_count", len(bars))
            return FeatureVector(
                symbol=symbol,
                values=tuple(float(v) for v in values),
                names=FEATURE_SET.names,
                feature_set=FEATURE_SET.name,
                version=FEATURE_SET.version,
                computed_at=datetime.now(UTC),
                first_bar=bars[0].ts,
                last_bar=bars[-1].ts,
                bar_count=len(bars),
            )

    def close(self) -> None:
        self._epochs.close()

    def drop_local(self, symbols: list[str]) -> None:
        """Forget the symbols in this process only (L1); Redis keeps them."""
        with self._l1_lock:
            for symbol in symbols:
                self._l1.pop(symbol, None)

    def invalidate(self, symbols: list[str]) -> None:
        """Drop the symbols' entries on both levels (called when new bars arrive)."""
        if not symbols:
            return
        with self._write_lock:
            self._epochs.bump(symbols)
            self.drop_local(symbols)
            if self._redis is not None:
                with self._pending_lock:
                    self._pending_invalidations.update(symbols)
                if self._redis_call(lambda _client: True) is None:  # deletes them now if Redis answers
                    with self._pending_lock:
                        self._invalidations_missed = True
                    log.warning(
                        "redis unreachable: invalidation kept until it answers", extra={"symbols": symbols}
                    )

    # --- L1 --------------------------------------------------------------------------------------

    def _l1_get(self, symbol: str) -> FeatureVector | None:
        """The L1 entry, unless it expired or the symbol was invalidated since (by any process)."""
        with self._l1_lock:
            entry = self._l1.get(symbol)
            if entry is None:
                return None
            if entry[2] != self._epochs.current(symbol):
                del self._l1[symbol]
                return None
        return entry[0]

    def _l1_put(self, vector: FeatureVector, epoch: int) -> None:
        with self._l1_lock:
            self._l1[vector.symbol] = (vector, self._l1.timer(), epoch)

    def _hit(self, level: Literal["l1", "redis"]) -> None:
        self._count(f"{level}_hits")
        self._telemetry.metrics.feature_store_hits.add(1, {"level": level})

    def _count(self, name: str) -> None:
        with self._counts_lock:  # `+=` on a dict value is not atomic across threads
            self._counts[name] += 1

    def _compute_lock(self, symbol: str) -> threading.Lock:
        with self._l1_lock:
            return self._compute_locks.setdefault(symbol, threading.Lock())

    # --- Redis -----------------------------------------------------------------------------------

    @staticmethod
    def redis_key(symbol: str) -> str:
        return f"features:{FEATURE_SET.name}:v{FEATURE_SET.version}:{symbol}"

    def _redis_get(self, symbol: str) -> FeatureVector | None:
        fields = self._redis_call(lambda client: client.hgetall(self.redis_key(symbol)))
        if not fields:
            return None
        try:
            return FeatureVector.from_redis(symbol, {_text(k): _text(v) for k, v in fields.items()})
        except (KeyError, ValueError) as error:
            log.warning("discarding malformed feature entry", extra={"symbol": symbol, "error": str(error)})
            return None

    def _redis_put(self, vector: FeatureVector) -> None:
        key = self.redis_key(vector.symbol)

        def write(client: redis.Redis) -> None:
            with client.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=vector.to_redis())  # type: ignore[arg-type]
                pipe.expire(key, self._redis_ttl)
                pipe.execute()

        self._redis_call(write)

    def _redis_call(self, operation: Any) -> Any:
        """Run a Redis operation unless the breaker is open; errors open it and return None.

        Pending invalidations go first: an operation runs only once they are done.
        """
        if self._redis is None or time.monotonic() < self._redis_skip_until:
            return None
        try:
            if not self._replay_invalidations(self._redis):
                return None
            result = operation(self._redis)
        except redis.RedisError as error:
            self._redis_skip_until = time.monotonic() + self._retry_after
            self._count("redis_errors")
            self._redis_last_error = type(error).__name__
            log.warning("redis unavailable, serving without L2", extra={"error": type(error).__name__})
            return None
        self._redis_last_error = None
        return result

    def _replay_invalidations(self, client: redis.Redis) -> bool:
        """Delete the entries of invalidations that could not reach Redis first; raises if it still
        can't. False when another thread's failure opened the breaker while this one waited."""
        with self._pending_lock:
            if not self._pending_invalidations:
                return True
            if time.monotonic() < self._redis_skip_until:
                return False  # one timeout per breaker window, not one per waiting thread
            client.delete(*[self.redis_key(symbol) for symbol in sorted(self._pending_invalidations)])
            if self._invalidations_missed:
                log.info(
                    "replayed feature invalidations redis had missed",
                    extra={"symbols": sorted(self._pending_invalidations)},
                )
                self._invalidations_missed = False
            self._pending_invalidations.clear()
            return True

    # --- introspection ---------------------------------------------------------------------------

    @property
    def redis_configured(self) -> bool:
        return self._redis is not None

    def stats(self) -> dict[str, Any]:
        """Hits and misses per level since start, hit rates, keys held, Redis reachability."""
        with self._counts_lock:
            counts = dict(self._counts)
        lookups = counts["l1_hits"] + counts["redis_hits"] + counts["misses"]
        hits = counts["l1_hits"] + counts["redis_hits"]
        redis_keys = self._redis_call(
            lambda client: sum(1 for _ in client.scan_iter(match=self.redis_key("*"), count=500))
        )
        with self._l1_lock:
            l1_keys = len(self._l1)
        return {
            "lookups": lookups,
            "hits": {"l1": counts["l1_hits"], "redis": counts["redis_hits"]},
            "misses": counts["misses"],
            "hit_rate": hits / lookups if lookups else None,
            "l1_hit_rate": counts["l1_hits"] / lookups if lookups else None,
            "redis_hit_rate": (
                counts["redis_hits"] / (lookups - counts["l1_hits"]) if lookups - counts["l1_hits"] else None
            ),
            "keys": {"l1": l1_keys, "redis": redis_keys},
            "redis": {
                "configured": self.redis_configured,
                "reachable": self.redis_configured
                and self._redis_last_error is None
                and redis_keys is not None,
                "errors": counts["redis_errors"],
                "last_error": self._redis_last_error,
            },
            "feature_set": {"name": FEATURE_SET.name, "version": FEATURE_SET.version},
            "ttl_seconds": {"l1": self._l1.ttl, "redis": self._redis_ttl},
        }

    def ttl_left(self, symbol: str) -> dict[str, float | None]:
        """Seconds left before each level forgets the symbol (None: not held there)."""
        with self._l1_lock:
            entry = self._l1.get(symbol)
            now = self._l1.timer()
        redis_ttl = self._redis_call(lambda client: client.ttl(self.redis_key(symbol)))
        return {
            "l1": None if entry is None else max(0.0, entry[1] + self._l1.ttl - now),
            "redis": float(redis_ttl) if isinstance(redis_ttl, int) and redis_ttl >= 0 else None,
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
