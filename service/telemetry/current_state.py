"""Gauges that report the current state only: observable gauges whose callback reads a snapshot.

A synchronous gauge keeps every attribute set it was ever given, so when the champion moves the
retired version's accuracy, drift, importance and info series stay at their last value forever,
and an alert on them keeps firing for a version that no longer serves. An observable gauge
reports, at each collection, exactly what its callback yields (the SDK drops the rest), so:

- publishers `replace` the whole set of points they own each time they refresh, and
- points labelled with a `model_version` other than the served one are never yielded, so a
  retired version's series disappear at the first collection after the swap (one export
  interval), before the monitors' next refresh.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Observation

Attributes = Mapping[str, str]
Point = tuple[Attributes, float]


class ServedVersion:
    """The model version being served, as the per-version gauges see it (set on every swap)."""

    def __init__(self) -> None:
        self.version: str | None = None


class CurrentState:
    """The points an observable gauge reports: replaced as a whole, read by its callback."""

    def __init__(self, served: ServedVersion | None = None) -> None:
        self._served = served  # None: not per version
        self._points: dict[frozenset[tuple[str, str]], float] = {}
        self._lock = threading.Lock()

    def replace(self, points: Iterable[Point]) -> None:
        """Everything this gauge should report from now on."""
        fresh = {frozenset(attributes.items()): float(value) for attributes, value in points}
        with self._lock:
            self._points = fresh

    def points(self) -> list[Point]:
        with self._lock:
            snapshot = list(self._points.items())
        served = self._served.version if self._served is not None else None
        return [
            (dict(key), value)
            for key, value in snapshot
            if served is None or dict(key).get("model_version", served) == served
        ]

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, attributes) for attributes, value in self.points()]
