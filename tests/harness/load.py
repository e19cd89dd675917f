"""A steady, bounded load on loopback: predictions at a fixed rate, every outcome recorded.

Requests are scheduled at fixed times (t0 + i / rate) and sent by a small pool of threads, so a
slow answer delays at most its own thread, not the schedule of the others. Every outcome keeps
its status and, for a 200, the prediction id the service returned: fault tests compare those ids
with the rows the database ends up holding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import httpx

SYMBOLS = ("AAPL", "MSFT", "GOOGL", "AMZN", "NVDA")


@dataclass(frozen=True)
class Outcome:
    sent_at: float  # seconds since the load started
    status: int  # 0: no HTTP answer (connection refused, reset, timeout)
    prediction_id: str | None
    seconds: float
    error: str | None = None


@dataclass
class SteadyLoad:
    """POST /predict at `rate` per second over `symbols` until stopped (or `max_requests`)."""

    base_url: str
    rate: float = 20.0
    threads: int = 4
    symbols: Sequence[str] = SYMBOLS
    max_requests: int = 20_000
    timeout: float = 10.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 0
    _started: float = 0.0
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> SteadyLoad:
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

    def _claim(self) -> int | None:
        with self._lock:
            if self._next >= self.max_requests:
                return None
            index = self._next
            self._next += 1
            return index

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as client:
            while not self._stop.is_set():
                index = self._claim()
                if index is None:
                    return
                due = self._started + index / self.rate
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                self._send(client, self.symbols[index % len(self.symbols)])

    def _send(self, client: httpx.Client, symbol: str) -> None:
        sent = time.monotonic()
        try:
            response = client.post("/predict", json={"symbol": symbol})
            body = (
                response.json()
                if response.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            outcome = Outcome(
                sent - self._started,
                response.status_code,
                body.get("prediction_id") if response.status_code == 200 else None,
                time.monotonic() - sent,
                None if response.status_code == 200 else str(body.get("detail", response.text))[:200],
            )
        except httpx.HTTPError as error:
            outcome = Outcome(sent - self._started, 0, None, time.monotonic() - sent, type(error).__name__)
        with self._lock:
            self.outcomes.append(outcome)

    def __enter__(self) -> SteadyLoad:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def ok_ids(outcomes: Sequence[Outcome]) -> list[str]:
    return [o.prediction_id for o in outcomes if o.status == 200 and o.prediction_id]


def server_errors(outcomes: Sequence[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status >= 500]
