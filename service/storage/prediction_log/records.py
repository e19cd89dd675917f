"""What the prediction log stores: prediction rows and feedback, as JSON record payloads.

Each payload is one JSON object: `kind` "predictions" (with `rows`, all rows of one request, so a
batch is stored all or nothing) or "feedback"; `at`, the epoch second it was spooled (for the
oldest-row age); `link`, the trace and span id of the request, so the writer's span can link
back to it; `v`, the format version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opentelemetry import trace

FORMAT_VERSION = 1


@dataclass(frozen=True)
class LoggedPrediction:
    """A prediction as logged when it is served (the `predictions` columns known then)."""

    id: str
    created_at: datetime
    symbol: str
    as_of: datetime
    direction: str
    confidence: float
    probability_up: float
    model_name: str
    model_version: str
    feature_set_version: str
    trace_id: str | None

    def columns(self) -> dict[str, Any]:
        """The `predictions` columns it fills, field by field (dataclasses.asdict deep-copies every
        value, a measurable cost per request)."""
        return {
            "id": self.id,
            "created_at": self.created_at,
            "symbol": self.symbol,
            "as_of": self.as_of,
            "direction": self.direction,
            "confidence": self.confidence,
            "probability_up": self.probability_up,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "feature_set_version": self.feature_set_version,
            "trace_id": self.trace_id,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "symbol": self.symbol,
            "as_of": self.as_of.isoformat(),
            "direction": self.direction,
            "confidence": self.confidence,
            "probability_up": self.probability_up,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "feature_set_version": self.feature_set_version,
            "trace_id": self.trace_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoggedPrediction:
        return cls(
            **{
                **data,
                "created_at": datetime.fromisoformat(data["created_at"]),
                "as_of": datetime.fromisoformat(data["as_of"]),
            }
        )


@dataclass(frozen=True)
class LoggedFeedback:
    """An outcome recorded explicitly for a prediction that was still in a spool."""

    prediction_id: str
    actual_direction: str
    resolved_at: datetime
    first_spooled_at: float  # epoch seconds, kept when the record is carried forward


@dataclass(frozen=True)
class Decoded:
    """A payload read back."""

    kind: str
    at: float
    rows: tuple[LoggedPrediction, ...] = ()
    feedback: LoggedFeedback | None = None
    link: trace.SpanContext | None = None


def span_reference() -> list[str] | None:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return [format(context.trace_id, "032x"), format(context.span_id, "016x")]


def encode_predictions(rows: Sequence[LoggedPrediction]) -> bytes:
    record = {
        "v": FORMAT_VERSION,
        "kind": "predictions",
        "at": time.time(),
        "rows": [row.to_json() for row in rows],
        "link": span_reference(),
    }
    return json.dumps(record, separators=(",", ":")).encode()


def encode_feedback(feedback: LoggedFeedback) -> bytes:
    record = {
        "v": FORMAT_VERSION,
        "kind": "feedback",
        "at": time.time(),
        "id": feedback.prediction_id,
        "actual": feedback.actual_direction,
        "resolved_at": feedback.resolved_at.isoformat(),
        "first_at": feedback.first_spooled_at,
        "link": span_reference(),
    }
    return json.dumps(record, separators=(",", ":")).encode()


def decode(payload: bytes) -> Decoded:
    data = json.loads(payload)
    link = None
    if data.get("link"):
        trace_id, span_id = data["link"]
        link = trace.SpanContext(
            int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=trace.TraceFlags(1)
        )
    if data["kind"] == "predictions":
        rows = tuple(LoggedPrediction.from_json(row) for row in data["rows"])
        return Decoded("predictions", data["at"], rows=rows, link=link)
    feedback = LoggedFeedback(
        prediction_id=data["id"],
        actual_direction=data["actual"],
        resolved_at=datetime.fromisoformat(data["resolved_at"]),
        first_spooled_at=float(data["first_at"]),
    )
    return Decoded("feedback", data["at"], feedback=feedback, link=link)
