"""Feature store introspection."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.dependencies import ContainerDep, FeatureStoreDep
from service.api.responses import DATABASE, errors
from service.api.schemas import Symbol
from service.api.strict_json import StrictJSONRoute

router = APIRouter(prefix="/feature-store", tags=["feature store"], route_class=StrictJSONRoute)


@router.get("/stats", operation_id="feature_store_stats")
def stats(store: FeatureStoreDep) -> dict[str, Any]:
    """Hits and misses per level, hit rates, keys held and Redis reachability (since start)."""
    return store.stats()


@router.get(
    "/metadata/{symbol}",
    operation_id="feature_metadata",
    responses=errors(404, 409, 422, *DATABASE, d404="Unknown symbol; the body lists the known ones."),
)
def metadata(symbol: Symbol, container: ContainerDep) -> dict[str, Any]:
    """The symbol's feature vector: names, version, computed_at, TTL left, source bars, level served from."""
    container.predictions.require_known([symbol])
    lookup = container.feature_store.get(symbol)
    vector = lookup.vector
    return {
        "symbol": symbol,
        "feature_set": vector.feature_set,
        "version": vector.version,
        "features": dict(zip(vector.names, vector.values, strict=True)),
        "computed_at": vector.computed_at,
        "served_from": lookup.level,
        "ttl_seconds_left": container.feature_store.ttl_left(symbol),
        "source_bars": {"first": vector.first_bar, "last": vector.last_bar, "count": vector.bar_count},
    }
