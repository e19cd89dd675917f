"""Periodic background work (health checks, registry polling, accuracy and drift gauges).

Kept off the request path on purpose: requests read the latest results, never wait for a check.

With several worker processes (`stockpred serve --workers N`) every worker runs its own tasks,
except those marked leader-only: work that reads shared state to publish a gauge every worker
would publish alike (accuracy from the `predictions` table, drift). One process per DATA_DIR is
the leader (an flock on `DATA_DIR/leader.lock`); when it dies the kernel drops the lock and the
next follower to try takes over, within one interval.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class Leadership:
    """Whether this process is the one (per DATA_DIR) that runs leader-only work."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def held(self) -> bool:
        """True once this process holds the lock; tries to take it (without waiting) otherwise."""
        with self._lock:
            if self._fd is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return False
                self._fd = fd
                log.info("this process runs the leader-only background work", extra={"pid": os.getpid()})
            return True

    def release(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class PeriodicTask:
    """Runs `work` every `interval` seconds in a daemon thread until stopped; errors are logged.

    With `leader`, the work runs only in the process that holds the leadership.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[], object],
        *,
        run_first: bool = True,
        leader: Leadership | None = None,
    ) -> None:
        self.name = name
        self._interval = interval
        self._work = work
        self._run_first = run_first
        self._leader = leader
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
        if self._leader is not None and not self._leader.held():
            return
        try:
            self._work()
        except Exception:  # a background task must survive whatever its work raises
            log.exception("background task failed", extra={"task": self.name})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
