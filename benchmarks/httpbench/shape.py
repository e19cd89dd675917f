"""The load shape of one run: how long each measurement lasts, how often it is repeated.

Two presets: the full run (what the committed results come from) and `--quick` (seconds per
variant: a smoke test of the plumbing on a busy machine, not a measurement to quote).

The full run's budget on two cores, per repetition of the ten default variants: two server starts
each (about 5-8 s with the stop), warm-up 3 s twice, saturation 10 s, three fixed rates of 8 s
with 1 s pauses, plus the two 15 s stall probes and the matched rate: about 13 minutes; three
repetitions and the collector ramp (about 3 minutes) make about 40 minutes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Shape(BaseModel):
    """Durations in seconds. Frozen: one run has one shape, written into its results."""

    model_config = ConfigDict(frozen=True)

    name: str = "full"
    repetitions: int = 3
    # Unmeasured load on every freshly started server first: caches, connection pools, the model
    # and the allocator reach their steady state before anything is timed.
    warmup_seconds: int = 3
    # Saturation: wrk, closed loop, this many connections on one wrk thread (the issue's
    # `wrk -t1 -c16 -d10s`). One thread is plenty for a Python server and leaves the second core
    # to the server's own threads, the collector and Jaeger.
    saturation_seconds: int = 10
    connections: int = 16
    wrk_threads: int = 1
    # One connection, closed loop: a periodic export that stalls the server shows in its tail.
    # 15 s covers three 5 s metric-export intervals (and the span processor's 5 s schedule).
    stall_probe_seconds: int = 15
    # Open model, fixed offered rates (vegeta), as shares of the variant's median saturation.
    rate_seconds: float = 8.0
    rate_fractions: tuple[float, ...] = (0.5, 0.7, 0.9)
    # Pause after each load so the server's background work (span batches, the prediction log
    # writer) catches up before the next measurement starts.
    settle_seconds: float = 1.0
    request_timeout_seconds: int = 10
    scrape_gets: int = 20
    # Collector: each offered rate is held this long; rates grow by `collector_growth` per step.
    collector_step_seconds: float = 10.0
    collector_growth: float = 1.5
    # Enough steps that the ramp ends on a failure (or on the generator's own limit), not on a cap.
    collector_max_steps: int = 20


FULL = Shape()

QUICK = Shape(
    name="quick",
    repetitions=1,
    warmup_seconds=1,
    saturation_seconds=2,
    stall_probe_seconds=5,
    rate_seconds=2.0,
    settle_seconds=0.5,
    scrape_gets=5,
    collector_step_seconds=2.0,
    collector_growth=2.0,
    collector_max_steps=12,
)
