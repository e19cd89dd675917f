"""Periodic background work (health checks, registry polling, accuracy and drift gauges).

Kept off the request path on purpose: requests read the latest results, never wait for a check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicTask:
    """Runs `work` every `interval` seconds in a daemon thread until stopped; errors are logged."""

    def __init__(
        self, name: str, interval: float, work: Callable[[], object], *, run_first: bool = True
    ) -> None:
        self.name = name
        self._interval = interval
        self._work = work
        self._run_first = run_first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        if self._run_first:
            self._run_once()
        while not self._stop.wait(self._interval):
            self._run_once()

    def _run_once(self) -> None:
        try:
            self._work()
        except Exception:  # a background task must survive whatever its work raises
            log.exception("background task failed", extra={"task": self.name})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
