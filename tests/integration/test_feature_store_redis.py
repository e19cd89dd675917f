"""The multi-level feature store: in-process L1, real Redis L2, computation from SQLite.

L1-only tests need no server. Tests marked `integration` use the session's Redis (and delete
the feature keys they create) or, to stop and restart Redis, a private one from `start_redis`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from service.container import make_redis
from service.market.synthetic import synthetic_bars
from service.model.features import FEATURE_SET, InsufficientHistoryError, latest_vector
from service.serving.feature_store import FeatureStore, FeatureVector
from service.storage.database import Database
from service.storage.market_bars import recent_bars, upsert_bars
from service.storage.migrations import upgrade_to_head
from service.telemetry.providers import noop_telemetry
from tests.conftest import make_settings
from tests.harness import Server, start_redis, wait_until
from tests.harness.latency_proxy import LatencyProxy

SYMBOLS = ("AAPL", "AMZN", "GOOGL", "MSFT", "NVDA")
BARS_PER_SYMBOL = 80  # more than FEATURE_SET.lookback_bars, so the window is a true suffix
REDIS_TTL = 300
KEY_PATTERN = FeatureStore.redis_key("*")

StoreFactory = Callable[..., FeatureStore]


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database holding the synthetic market for every symbol."""
    db = Database(f"sqlite:///{tmp_path / 'features.db'}")
    upgrade_to_head(db.engine)
    with db.session() as session:
        for symbol in SYMBOLS:
            upsert_bars(session, bars=synthetic_bars(symbol, count=BARS_PER_SYMBOL))
    yield db
    db.dispose()


@pytest.fixture
def make_store(database: Database) -> StoreFactory:
    def build(redis_client: redis.Redis | None = None, **overrides: Any) -> FeatureStore:
        options: dict[str, Any] = {"l1_ttl_seconds": 30.0, "redis_ttl_seconds": REDIS_TTL, **overrides}
        return FeatureStore(
            database=database, redis_client=redis_client, telemetry=noop_telemetry(), **options
        )

    return build


def client_for(url: str, tmp_path: Path) -> redis.Redis:
    """A client configured exactly as the service configures its own (short timeouts)."""
    client = make_redis(make_settings(tmp_path / "unused", REDIS_URL=url))
    assert client is not None
    return client


def delete_feature_keys(client: redis.Redis) -> None:
    keys = list(client.scan_iter(match=KEY_PATTERN))
    if keys:
        client.delete(*keys)


@pytest.fixture
def shared_redis(redis_server: Server, tmp_path: Path) -> Iterator[redis.Redis]:
    """The session Redis, without feature keys before and after the test."""
    client = client_for(redis_server.url, tmp_path)
    delete_feature_keys(client)
    yield client
    delete_feature_keys(client)
    client.close()


def stored_hash(client: redis.Redis, symbol: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = client.hgetall(FeatureStore.redis_key(symbol))  # type: ignore[assignment]
    return {key.decode(): value.decode() for key, value in raw.items()}


# --- computation and L1 --------------------------------------------------------------------------


def test_computed_vector_describes_the_newest_lookback_bars(
    make_store: StoreFactory, database: Database
) -> None:
    vector = make_store().compute("MSFT")
    with database.session() as session:
        window = recent_bars(session, symbol="MSFT", limit=FEATURE_SET.lookback_bars)
    generated = synthetic_bars("MSFT", count=BARS_PER_SYMBOL)
    assert vector.values == pytest.approx(tuple(latest_vector(window)))
    assert vector.names == FEATURE_SET.names
    assert (vector.feature_set, vector.version) == (FEATURE_SET.name, FEATURE_SET.version)
    assert vector.bar_count == FEATURE_SET.lookback_bars
    assert vector.last_bar == generated[-1].ts
    assert vector.first_bar == generated[-FEATURE_SET.lookback_bars].ts


def test_symbol_without_bars_has_insufficient_history(make_store: StoreFactory) -> None:
    with pytest.raises(InsufficientHistoryError):
        make_store().get("TSLA")


def test_first_lookup_computes_and_the_next_is_an_l1_hit(make_store: StoreFactory) -> None:
    store = make_store()
    first = store.get("AAPL")
    second = store.get("AAPL")
    assert (first.level, second.level) == ("computed", "l1")
    assert second.vector == first.vector
    assert first.vector.values == store.compute("AAPL").values


def test_l1_entry_expires_after_its_ttl(make_store: StoreFactory) -> None:
    store = make_store(l1_ttl_seconds=0.2)
    assert store.get("AAPL").level == "computed"
    wait_until(lambda: store.ttl_left("AAPL")["l1"] is None, timeout=5, interval=0.02, what="L1 expiry")
    assert store.get("AAPL").level == "computed"
    assert store.stats()["misses"] == 2


def test_l1_ttl_left_starts_at_the_ttl(make_store: StoreFactory) -> None:
    store = make_store(l1_ttl_seconds=30.0)
    assert store.ttl_left("AAPL") == {"l1": None, "redis": None}
    store.get("AAPL")
    left = store.ttl_left("AAPL")["l1"]
    assert left is not None
    assert 25.0 < left <= 30.0


def test_stats_without_redis(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.stats()["hit_rate"] is None  # no lookups yet: no rate rather than 0
    store.get("AAPL")
    store.get("AAPL")
    stats = store.stats()
    assert (stats["lookups"], stats["hits"], stats["misses"]) == (2, {"l1": 1, "redis": 0}, 1)
    assert stats["redis"] == {"configured": False, "reachable": False, "errors": 0, "last_error": None}
    assert stats["keys"] == {"l1": 1, "redis": None}


# --- with Redis ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_miss_is_written_to_a_redis_hash_with_a_ttl(
    make_store: StoreFactory, shared_redis: redis.Redis
) -> None:
    store = make_store(shared_redis)
    lookup = store.get("AAPL")
    assert lookup.level == "computed"
    assert stored_hash(shared_redis, "AAPL") == lookup.vector.to_redis()
    assert 0 < shared_redis.ttl(FeatureStore.redis_key("AAPL")) <= REDIS_TTL  # type: ignore[operator]


@pytest.mark.integration
def test_redis_hash_round_trips_to_the_same_vector(
    make_store: StoreFactory, shared_redis: redis.Redis
) -> None:
    vector = make_store(shared_redis).get("GOOGL").vector
    assert FeatureVector.from_redis("GOOGL", stored_hash(shared_redis, "GOOGL")) == vector


@pytest.mark.integration
def test_a_second_store_is_answered_by_redis(make_store: StoreFactory, shared_redis: redis.Redis) -> None:
    first = make_store(shared_redis).get("AAPL")
    other = make_store(shared_redis)  # another process: empty L1, same Redis
    from_redis = other.get("AAPL")
    assert from_redis.level == "redis"
    assert from_redis.vector == first.vector  # the very entry the first store wrote
    assert other.get("AAPL").level == "l1"  # and now held in its own L1 too


@pytest.mark.integration
def test_invalidate_removes_both_levels(make_store: StoreFactory, shared_redis: redis.Redis) -> None:
    store = make_store(shared_redis)
    store.get("AAPL")
    store.get("MSFT")
    store.invalidate(["AAPL"])
    assert shared_redis.exists(FeatureStore.redis_key("AAPL")) == 0
    assert store.ttl_left("AAPL") == {"l1": None, "redis": None}
    assert store.get("AAPL").level == "computed"
    assert store.get("MSFT").level == "l1"  # other symbols are untouched


@pytest.mark.integration
def test_ttl_left_reports_both_levels(make_store: StoreFactory, shared_redis: redis.Redis) -> None:
    store = make_store(shared_redis, l1_ttl_seconds=30.0)
    store.get("NVDA")
    left = store.ttl_left("NVDA")
    assert left["l1"] is not None
    assert left["redis"] is not None
    assert 25.0 < left["l1"] <= 30.0
    assert REDIS_TTL - 5 <= left["redis"] <= REDIS_TTL


@pytest.mark.integration
def test_stats_count_each_level_and_compute_hit_rates(
    make_store: StoreFactory, shared_redis: redis.Redis
) -> None:
    make_store(shared_redis).get("AAPL")  # puts AAPL in Redis
    store = make_store(shared_redis)
    levels = [store.get(symbol).level for symbol in ("AAPL", "AAPL", "MSFT", "MSFT", "AAPL")]
    assert levels == ["redis", "l1", "computed", "l1", "l1"]
    stats = store.stats()
    # 5 lookups: 3 L1 hits, 1 Redis hit, 1 miss. Redis saw the 2 lookups L1 could not answer.
    assert stats["lookups"] == 5
    assert stats["hits"] == {"l1": 3, "redis": 1}
    assert stats["misses"] == 1
    assert stats["hit_rate"] == pytest.approx(4 / 5)
    assert stats["l1_hit_rate"] == pytest.approx(3 / 5)
    assert stats["redis_hit_rate"] == pytest.approx(1 / 2)
    assert stats["keys"] == {"l1": 2, "redis": 2}
    assert stats["redis"] == {"configured": True, "reachable": True, "errors": 0, "last_error": None}
    assert stats["ttl_seconds"] == {"l1": 30.0, "redis": REDIS_TTL}


@pytest.mark.integration
def test_malformed_redis_entry_is_recomputed(make_store: StoreFactory, shared_redis: redis.Redis) -> None:
    key = FeatureStore.redis_key("AMZN")
    shared_redis.hset(key, mapping={"values": "not json"})
    lookup = make_store(shared_redis).get("AMZN")
    assert lookup.level == "computed"
    assert stored_hash(shared_redis, "AMZN") == lookup.vector.to_redis()  # overwritten


# --- Redis outage (private Redis, stopped and restarted) -----------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Server]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = start_redis(workdir)
    yield server
    server.stop()


class ConnectionCounter:
    """Counts connections taken from a client's pool: one per command or pipeline sent."""

    def __init__(self, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        pool = client.connection_pool
        original = pool.get_connection

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", counting)


@pytest.mark.integration
def test_lookups_still_answer_while_redis_is_down(
    make_store: StoreFactory, private_redis: Server, tmp_path: Path
) -> None:
    client = client_for(private_redis.url, tmp_path)
    store = make_store(client, redis_retry_after_seconds=3600)
    private_redis.stop()
    first = store.get("AAPL")
    second = store.get("AAPL")
    assert (first.level, second.level) == ("computed", "l1")
    assert first.vector.values == store.compute("AAPL").values
    stats = store.stats()
    assert stats["redis"]["configured"] is True
    assert stats["redis"]["reachable"] is False
    assert stats["redis"]["errors"] == 1
    assert stats["redis"]["last_error"] == "ConnectionError"


@pytest.mark.integration
@pytest.mark.parametrize(("retry_after", "expected_calls"), [(3600.0, 1), (0.0, 2 * len(SYMBOLS))])
def test_breaker_skips_redis_for_its_window(
    make_store: StoreFactory,
    private_redis: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    retry_after: float,
    expected_calls: int,
) -> None:
    """With the breaker open only the first lookup tries Redis; without it every read and write does."""
    client = client_for(private_redis.url, tmp_path)
    store = make_store(client, redis_retry_after_seconds=retry_after)
    private_redis.stop()
    counter = ConnectionCounter(client, monkeypatch)
    levels = [store.get(symbol).level for symbol in SYMBOLS]  # cold symbols: each would read and write
    assert levels == ["computed"] * len(SYMBOLS)
    assert counter.calls == expected_calls
    assert store.stats()["redis"]["errors"] == expected_calls  # every attempt failed and was counted


@pytest.mark.integration
def test_redis_is_used_again_after_a_restart_without_rebuilding_the_store(
    make_store: StoreFactory, private_redis: Server, tmp_path: Path
) -> None:
    client = client_for(private_redis.url, tmp_path)
    store = make_store(client, redis_retry_after_seconds=0.2)
    port = private_redis.port
    private_redis.stop()
    assert store.get("AAPL").level == "computed"
    assert store.stats()["redis"]["reachable"] is False

    workdir = tmp_path / "redis-again"
    workdir.mkdir()
    with start_redis(workdir, port=port):
        # An entry another instance wrote while this one was cut off.
        key = FeatureStore.redis_key("NVDA")
        client.hset(key, mapping=store.compute("NVDA").to_redis())  # type: ignore[arg-type]
        client.expire(key, REDIS_TTL)
        # ttl_left goes through the breaker without touching L1: it answers once Redis is used again.
        wait_until(lambda: store.ttl_left("NVDA")["redis"] is not None, timeout=10, what="breaker to close")
        assert store.get("NVDA").level == "redis"
        assert store.get("MSFT").level == "computed"
        assert client.exists(FeatureStore.redis_key("MSFT")) == 1
        assert store.stats()["redis"]["reachable"] is True


@pytest.mark.integration
@pytest.mark.parametrize("missed_by", ["timeout", "open_breaker"])
def test_an_invalidation_redis_missed_is_replayed_before_redis_is_read_again(
    make_store: StoreFactory, shared_redis: redis.Redis, redis_server: Server, tmp_path: Path, missed_by: str
) -> None:
    """New bars while Redis cannot be reached (it hangs, or the breaker is open): its entry from
    before them survives there, and must be deleted before any lookup reads Redis again."""
    key = FeatureStore.redis_key("AAPL")
    with LatencyProxy(redis_server.port) as proxy:
        client = client_for(f"redis://{proxy.address}/0", tmp_path)
        store = make_store(client, redis_retry_after_seconds=0.3)
        assert store.get("AAPL").level == "computed"
        assert shared_redis.exists(key) == 1
        proxy.blackhole()
        if missed_by == "open_breaker":
            assert store.ttl_left("AAPL")["redis"] is None  # times out: the breaker opens
            proxy.pass_through()  # Redis answers again, but the breaker skips it for 0.3 s
        store.invalidate(["AAPL"])
        assert shared_redis.exists(key) == 1, "the fault is real: the stale entry is still in Redis"
        proxy.reset_connections()  # a DELETE held by the proxy dies with its connection, never lands
        proxy.pass_through()
        wait_until(lambda: store.stats()["redis"]["reachable"], timeout=10, what="the breaker to close")
        assert shared_redis.exists(key) == 0, "the missed invalidation was replayed"
        assert store.get("AAPL").level == "computed"
        client.close()
