"""Realised accuracy with delayed labels: `model_accuracy`, resolved and pending counts.

Runs in the background and publishes gauges; it never touches the request path.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.background import Leadership, PeriodicTask
from service.storage.database import Database
from service.storage.prediction_rows import pending_counts, rolling_accuracy
from service.telemetry.providers import Telemetry


class OutcomeMonitor:
    """Publishes `model_accuracy`, `model_resolved_predictions` and `model_pending_predictions`."""

    def __init__(
        self,
        *,
        database: Database,
        telemetry: Telemetry,
        window_predictions: int,
        window_hours: float,
        interval_seconds: float,
        leader: Leadership | None = None,
    ) -> None:
        self._database = database
        self._metrics = telemetry.metrics
        self._window_predictions = window_predictions
        self._window = timedelta(hours=window_hours)
        self._task = PeriodicTask("outcome-monitor", interval_seconds, self.refresh, leader=leader)
        self._published_pending: set[str] = set()
        self.latest: dict[tuple[str, str], tuple[float, int]] = {}

    def refresh(self) -> None:
        with self._database.session() as session:
            rows = rolling_accuracy(
                session, since=datetime.now(UTC) - self._window, per_group_limit=self._window_predictions
            )
            pending = pending_counts(session)
        # Rows of every version are published; the gauges report the served version's only.
        self._metrics.model_accuracy.replace(
            ({"symbol": row.symbol, "model_version": row.model_version}, row.accuracy) for row in rows
        )
        self._metrics.model_resolved.replace(
            ({"symbol": row.symbol, "model_version": row.model_version}, row.resolved) for row in rows
        )
        # A symbol that had pending predictions reports 0 once they are resolved (not no series).
        self._published_pending |= set(pending)
        self._metrics.model_pending.replace(
            ({"symbol": symbol}, pending.get(symbol, 0)) for symbol in sorted(self._published_pending)
        )
        self.latest = {(r.symbol, r.model_version): (r.accuracy, r.resolved) for r in rows}

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stop()
