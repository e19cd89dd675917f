"""A steady, bounded load on loopback: requests at a fixed rate, every outcome recorded.

Requests are scheduled at fixed times (t0 + i / rate) and sent by a small pool of threads, so a
slow answer delays at most its own thread, not the schedule of the others (an open model, as far
as the pool allows). Every outcome keeps its route, status, latency and, for a 200, the prediction
ids the service returned: fault tests compare those ids with the rows the database ends up
holding, and latency before a fault with latency during it.

By default every request is `POST /predict` over the symbols in turn; a `plan` says otherwise
(the soak mixes batches, reads of logged predictions and new bars).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

SYMBOLS = ("AAPL", "MSFT", "GOOGL", "AMZN", "NVDA")
RECENT_IDS = 512  # prediction ids kept for plans that read predictions back


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    json: Any = None
    headers: dict[str, str] | None = None


RequestPlan = Callable[[int], Request]
"""The `index`-th request of the schedule."""


def predictions_plan(symbols: Sequence[str] = SYMBOLS) -> RequestPlan:
    """POST /predict, one symbol after the other."""
    return lambda index: Request("POST", "/predict", {"symbol": symbols[index % len(symbols)]})


@dataclass(frozen=True)
class Outcome:
    sent_at: float  # seconds since the load started
    status: int  # 0: no HTTP answer (connection refused, reset, timeout)
    prediction_id: str | None
    seconds: float
    error: str | None = None
    route: str = "/predict"
    more_ids: tuple[str, ...] = ()  # a batch's other prediction ids
    retry_after: str | None = None  # the Retry-After header of an error answer


@dataclass
class SteadyLoad:
    """`plan`'s requests at `rate` per second until stopped (or `max_requests` were sent)."""

    base_url: str
    rate: float = 20.0
    threads: int = 4
    symbols: Sequence[str] = SYMBOLS
    max_requests: int = 20_000
    timeout: float = 10.0
    plan: RequestPlan | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 0
    _started: float = 0.0
    _workers: list[threading.Thread] = field(default_factory=list)
    _recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_IDS))

    def start(self) -> SteadyLoad:
        if self.plan is None:
            self.plan = predictions_plan(self.symbols)
        self._started = time.monotonic()
        self._workers = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True) for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=self.timeout + 5)
        with self._lock:
            return list(self.outcomes)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def recent_id(self, index: int) -> str | None:
        """One of the last answered prediction ids (picked by `index`), for plans that read back."""
        with self._lock:
            return self._recent[index % len(self._recent)] if self._recent else None

    def _claim(self) -> int | None:
        with self._lock:
            if self._next >= self.max_requests:
                return None
            index = self._next
            self._next += 1
            return index

    def _run(self) -> None:
        assert self.plan is not None
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as client:
            while not self._stop.is_set():
                index = self._claim()
                if index is None:
                    return
                due = self._started + index / self.rate
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                self._send(client, self.plan(index))

    def _send(self, client: httpx.Client, request: Request) -> None:
        sent = time.monotonic()
        route = _route(request.path)
        try:
            response = client.request(
                request.method, request.path, json=request.json, headers=request.headers
            )
            outcome = _outcome(response, sent - self._started, time.monotonic() - sent, route)
        except httpx.HTTPError as error:
            outcome = Outcome(
                sent - self._started, 0, None, time.monotonic() - sent, type(error).__name__, route
            )
        with self._lock:
            self.outcomes.append(outcome)
            if outcome.prediction_id is not None and route != "/predictions/{id}":
                self._recent.append(outcome.prediction_id)

    def __enter__(self) -> SteadyLoad:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _route(path: str) -> str:
    return "/predictions/{id}" if path.startswith("/predictions/") else path


def _outcome(response: httpx.Response, sent_at: float, seconds: float, route: str) -> Outcome:
    is_json = response.headers.get("content-type", "").startswith("application/json")
    body = response.json() if is_json else {}
    ok = response.status_code == 200
    ids: list[str] = []
    if ok and isinstance(body, dict):
        if "prediction_id" in body:
            ids = [body["prediction_id"]]
        elif "predictions" in body:
            ids = [p["prediction_id"] for p in body["predictions"]]
        elif route == "/predictions/{id}":
            ids = [body["id"]]
    return Outcome(
        sent_at,
        response.status_code,
        ids[0] if ids else None,
        seconds,
        None if ok else str(body.get("detail", response.text) if isinstance(body, dict) else body)[:200],
        route,
        tuple(ids[1:]),
        response.headers.get("retry-after"),
    )


def ok_ids(outcomes: Sequence[Outcome]) -> list[str]:
    """Every prediction id a 200 of a prediction route returned (reads of predictions excluded)."""
    return [
        prediction_id
        for o in outcomes
        if o.status == 200 and o.prediction_id and o.route in {"/predict", "/predict/batch"}
        for prediction_id in (o.prediction_id, *o.more_ids)
    ]


def server_errors(outcomes: Sequence[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status >= 500]


def between(outcomes: Sequence[Outcome], start: float, end: float = math.inf) -> list[Outcome]:
    """The outcomes of requests sent in [start, end) seconds after the load started."""
    return [o for o in outcomes if start <= o.sent_at < end]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[rank]


@dataclass(frozen=True)
class Latency:
    """Latency of the 200 answers of a phase, in milliseconds (what fault tests print)."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> Latency:
        seconds = [o.seconds for o in outcomes if o.status == 200]
        return cls(
            len(seconds),
            round(percentile(seconds, 0.5) * 1000, 1),
            round(percentile(seconds, 0.99) * 1000, 1),
            round(max(seconds, default=math.nan) * 1000, 1),
        )

    def __str__(self) -> str:
        return f"n={self.count} p50={self.p50_ms}ms p99={self.p99_ms}ms max={self.max_ms}ms"


def assert_within_noise(name: str, during: Latency, before: Latency, *, ceiling_ms: float) -> None:
    """A fault stayed off the request path: the median within 2x + 10 ms of the baseline's, and no
    answer as slow as the fault would make one that waited for it (`ceiling_ms`).

    The p99 is printed, not compared: on two shared cores a few answers of any phase take a few
    hundred milliseconds for reasons of their own, while a request that waits on the fault takes
    its full delay or timeout.
    """
    assert during.p50_ms <= 2 * before.p50_ms + 10, f"{name}: median {during} vs {before}"
    assert during.max_ms < ceiling_ms, f"{name}: an answer waited {during.max_ms} ms ({during})"
