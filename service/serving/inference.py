"""The model's answer for a feature vector, computed once and served to every request until it changes.

A symbol's features change only with a new bar (or a corrected one), and the model only with a
new champion, so the answer for (symbol, last bar, feature-set version, when the vector was
computed, model version) is a constant: the first request pays for `predict_proba` (and sklearn's
input validation, the larger part of it), the others reuse it. Every request still gets its own
prediction id, log row, metrics, exemplar and `model.inference` span (attribute
`model.inference.reused`). Nothing needs invalidating by hand: whatever invalidates the features
yields a vector with another key, and a model swap another version.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
from opentelemetry import trace

from service.model.served_model import ServedModel
from service.serving.feature_store import FeatureVector

Direction = Literal["up", "down"]
AnswerKey = tuple[str, datetime, str, datetime, str]


@dataclass(frozen=True)
class Answer:
    """What the model says for one feature vector (shared, read-only: do not mutate `features`)."""

    key: AnswerKey
    probability_up: float
    direction: Direction
    confidence: float
    features: dict[str, float]


def answer_key(vector: FeatureVector, model: ServedModel) -> AnswerKey:
    return (vector.symbol, vector.last_bar, vector.version, vector.computed_at, model.version)


class InferenceCache:
    """The newest answer per symbol; thread-safe (requests run on the event loop and in threads)."""

    def __init__(self) -> None:
        self._answers: dict[str, Answer] = {}
        self._lock = threading.Lock()

    def answer(self, vector: FeatureVector, model: ServedModel, tracer: trace.Tracer) -> Answer:
        """The answer, in a `model.inference` span (never made current: nothing runs below it)."""
        key = answer_key(vector, model)
        span = tracer.start_span("model.inference")
        try:
            cached = self._answers.get(vector.symbol)
            reused = cached is not None and cached.key == key
            answer = cached if reused and cached is not None else self._compute(key, vector, model)
            if span.is_recording():
                span.set_attributes(
                    {
                        "model.version": model.version,
                        "prediction.probability_up": answer.probability_up,
                        "model.inference.reused": reused,
                    }
                )
        except Exception as error:
            span.record_exception(error)
            span.set_status(trace.StatusCode.ERROR, type(error).__name__)
            raise
        finally:
            span.end()
        return answer

    def _compute(self, key: AnswerKey, vector: FeatureVector, model: ServedModel) -> Answer:
        probability_up = model.probability_up(np.asarray(vector.values))
        answer = Answer(
            key=key,
            probability_up=probability_up,
            direction="up" if probability_up >= 0.5 else "down",
            confidence=max(probability_up, 1 - probability_up),
            features=dict(zip(vector.names, vector.values, strict=True)),
        )
        with self._lock:
            self._answers[vector.symbol] = answer
        return answer
