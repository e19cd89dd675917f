"""A health probe that hangs reports its component down within the deadline, and never piles up."""

from __future__ import annotations

import threading
import time

import pytest

from service.monitoring.health import BoundedProbe, ProbeTimeoutError, timed_check


def test_a_hung_probe_is_reported_down_within_its_deadline_and_not_started_again() -> None:
    release = threading.Event()
    calls: list[int] = []

    def hangs() -> None:
        calls.append(1)
        release.wait(10)

    probe = BoundedProbe("database", hangs, timeout=0.2)
    started = time.monotonic()
    health = timed_check("database", probe)
    assert not health.up
    assert time.monotonic() - started < 2
    with pytest.raises(ProbeTimeoutError, match="still not returned"):
        probe()  # at once: the first one is still stuck, no second thread is started
    assert len(calls) == 1
    release.set()
    deadline = time.monotonic() + 5
    while not timed_check("database", probe).up:  # once the stuck probe returned, checks run again
        assert time.monotonic() < deadline
    assert len(calls) == 2


def test_a_probe_error_is_raised_as_it_is() -> None:
    def fails() -> None:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError, match="refused"):
        BoundedProbe("redis", fails, timeout=1)()
