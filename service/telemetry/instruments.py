"""Every custom instrument of the service, with its unit, description and bucket layout.

Names follow OpenTelemetry style (`prediction.duration`, unit `s`) and translate to the Prometheus
names of docs/telemetry.md (`prediction_duration_seconds`). Ratio-like values (confidence,
accuracy, status gauges) deliberately have no unit: unit `1` would add a `_ratio` suffix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from opentelemetry import metrics

from service.telemetry.current_state import CurrentState, ServedVersion

# Seconds. 2 s and 5 s are the seed's latency SLO / alert thresholds, so they are boundaries and
# `histogram_quantile` is exact there; below 10 ms the L1-hit path lives.
LATENCY_BUCKETS: Sequence[float] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
# Probability of the predicted class is never below 0.5 for a binary model.
CONFIDENCE_BUCKETS: Sequence[float] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
COMPUTATION_BUCKETS: Sequence[float] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
# Rows per prediction-log transaction: one request alone is 1; batches are capped by
# PREDICTION_LOG_BATCH_ROWS (128 by default) plus at most one batched request's rows.
BATCH_SIZE_BUCKETS: Sequence[float] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# One multi-row insert and commit: about a millisecond on SQLite, more on a busy PostgreSQL.
WRITE_BUCKETS: Sequence[float] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

# Why rows of a database write failed: retried later, set aside in quarantine, feedback whose row
# never arrived (service/storage/prediction_log/writer.py).
PREDICTION_LOG_FAILURE_REASONS = ("unavailable", "rejected", "orphaned_feedback")

# The prediction log's state as observable gauges: Prometheus name -> (instrument, unit, meaning).
PREDICTION_LOG_GAUGES: dict[str, tuple[str, str, str]] = {
    "queued_rows": (
        "prediction_log.queue.depth",
        "{row}",
        "Rows handed to the log, waiting for their fsync.",
    ),
    "spool_rows": (
        "prediction_log.spool.rows",
        "{row}",
        "Rows durable in the local spool, not yet in the database.",
    ),
    "spool_bytes": ("prediction_log.spool.size", "By", "Bytes of spooled records not yet in the database."),
    "capacity_bytes": (
        "prediction_log.spool.capacity",
        "By",
        "Spool bound; predictions answer 503 beyond it.",
    ),
    "oldest_age_seconds": (
        "prediction_log.oldest_row.age",
        "s",
        "Age of the oldest row not yet in the database (0 when drained).",
    ),
}


class ServiceMetrics:
    """Every custom instrument of the service, created once per meter provider.

    Model and outcome gauges are observable (current_state.py): each is a `CurrentState` that
    publishers replace, reported only for the served model version.
    """

    def __init__(self, meter: metrics.Meter) -> None:
        self.meter = meter
        self.served_version = ServedVersion()
        per_version = self.served_version

        def current(name: str, *, unit: str = "", description: str, versioned: bool = True) -> CurrentState:
            state = CurrentState(per_version if versioned else None)
            meter.create_observable_gauge(name, callbacks=[state.observe], unit=unit, description=description)
            return state

        self.predictions = meter.create_counter(
            "predictions", unit="{prediction}", description="Predictions served."
        )
        self.prediction_duration = meter.create_histogram(
            "prediction.duration",
            unit="s",
            description="Server-side time of one prediction, end to end.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.prediction_confidence = meter.create_histogram(
            "prediction.confidence",
            description="Probability of the predicted class.",
            explicit_bucket_boundaries_advisory=CONFIDENCE_BUCKETS,
        )
        self.prediction_errors = meter.create_counter(
            "prediction.errors", unit="{error}", description="Failed prediction requests, by reason."
        )
        self.model_accuracy = current(
            "model.accuracy", description="Share right over the rolling window of resolved predictions."
        )
        self.model_resolved = current(
            "model.resolved_predictions",
            unit="{prediction}",
            description="Resolved predictions inside the accuracy window.",
        )
        self.model_pending = current(
            "model.pending_predictions",
            unit="{prediction}",
            description="Predictions whose outcome is not known yet.",
            versioned=False,
        )
        self.model_info = current("model.info", description="The model version served (value 1).")
        self.model_reloads = meter.create_counter(
            "model.reloads", unit="{reload}", description="Champion model loads, by outcome."
        )
        self.model_feature_importance = current(
            "model.feature_importance", description="Importance of each feature in the served model."
        )
        self.model_drift_score = current(
            "model.drift_score", description="Largest feature PSI of the served window vs training."
        )
        self.model_feature_drift = current(
            "model.feature_drift", description="PSI of one feature's served window vs training."
        )
        self.model_prediction_drift = current(
            "model.prediction_drift", description="PSI of the served confidence vs training."
        )
        self.feature_store_hits = meter.create_counter(
            "feature_store.hits", unit="{lookup}", description="Feature lookups answered by a cache level."
        )
        self.feature_store_misses = meter.create_counter(
            "feature_store.misses", unit="{lookup}", description="Feature lookups that computed features."
        )
        self.feature_computation_duration = meter.create_histogram(
            "feature.computation.duration",
            unit="s",
            description="Time to compute one symbol's features from the database.",
            explicit_bucket_boundaries_advisory=COMPUTATION_BUCKETS,
        )
        self.database_operations = meter.create_counter(
            "database.operations", unit="{operation}", description="SQL operations issued by the service."
        )
        self.redis_status = meter.create_gauge(
            "redis.connection.status", description="1 when Redis answers, 0 when not."
        )
        self.database_status = meter.create_gauge(
            "database.connection.status", description="1 when the database answers, 0 when not."
        )
        self.mlflow_status = meter.create_gauge(
            "mlflow.connection.status", description="1 when the model registry answers, 0 when not."
        )
        self.health_status = meter.create_gauge(
            "service.health.status", description="2 ok, 1 degraded, 0 cannot predict."
        )
        self.prediction_log_rows_written = meter.create_counter(
            "prediction_log.rows.written", unit="{row}", description="Rows the log wrote to the database."
        )
        self.prediction_log_rows_failed = meter.create_counter(
            "prediction_log.rows.failed",
            unit="{row}",
            description="Rows of database writes that failed, by reason (unavailable rows are retried).",
        )
        for reason in PREDICTION_LOG_FAILURE_REASONS:  # every series exists from the start, at 0
            self.prediction_log_rows_failed.add(0, {"reason": reason})
        self.prediction_log_batch_size = meter.create_histogram(
            "prediction_log.batch.size",
            unit="{row}",
            description="Rows per database transaction of the prediction log (group commit).",
            explicit_bucket_boundaries_advisory=BATCH_SIZE_BUCKETS,
        )
        self.prediction_log_write_duration = meter.create_histogram(
            "prediction_log.write.duration",
            unit="s",
            description="Time of one prediction-log transaction (multi-row insert and commit).",
            explicit_bucket_boundaries_advisory=WRITE_BUCKETS,
        )
        self.prediction_log_syncs = meter.create_counter(
            "prediction_log.spool.syncs",
            unit="{sync}",
            description="fdatasync calls of the spool; each covers every record queued meanwhile.",
        )
        self.prediction_log_records = meter.create_counter(
            "prediction_log.spool.records",
            unit="{record}",
            description="Records made durable in the spool (one per request).",
        )

    def observe_prediction_log(self, read: Callable[[], Mapping[str, float]]) -> None:
        """Observable gauges of the prediction log: `read` returns its state by PREDICTION_LOG_GAUGES key."""
        for key, (name, unit, description) in PREDICTION_LOG_GAUGES.items():
            self.meter.create_observable_gauge(
                name, callbacks=[_observe(read, key)], unit=unit, description=description
            )


def _observe(
    read: Callable[[], Mapping[str, float]], key: str
) -> Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]:
    def callback(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [metrics.Observation(read()[key])]

    return callback
