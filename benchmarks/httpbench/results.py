"""What a run records, as pydantic models: written as JSON next to the Markdown report, so a
report can be rendered again (`--report-from`) and the tests can render one from a fixture.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from benchmarks.httpbench.load import FixedRateResult, WrkResult
from benchmarks.httpbench.shape import Shape
from benchmarks.httpbench.variants import Variant


class CpuUsage(BaseModel):
    """CPU seconds spent during one measured window, by whom."""

    wall_s: float
    server_s: float  # the server under test (all its workers)
    pipeline_s: float  # the collector and Jaeger (0 without a collector)
    generator_s: float  # the load generator (wrk or vegeta)


class SaturationRun(BaseModel):
    """One repetition of one variant at saturation (wrk), on a freshly started server."""

    variant: str
    repetition: int
    saturation: WrkResult
    cpu: CpuUsage | None = None  # during the saturation window
    stall_probe: WrkResult | None = None  # one connection, closed loop
    # Lookups answered per feature-store level during the measured window (one-worker variants:
    # the counters are per process, so for several workers only the probe below is shown).
    levels: dict[str, int] | None = None
    # `served_from` of a few requests sent right after the measurement.
    served_from: dict[str, int] = Field(default_factory=dict)


class LatencyRun(BaseModel):
    """One repetition of one variant at fixed offered rates (vegeta), on a fresh server."""

    variant: str
    repetition: int
    base_rps: float  # the variant's median saturation the rates are shares of
    runs: list[FixedRateResult]
    cpu: list[CpuUsage] = Field(default_factory=list)  # one per run, same order
    levels: dict[str, int] | None = None


class ScrapeResult(BaseModel):
    """Size and time of one metrics endpoint, measured right after a variant's load."""

    target: str  # "service /metrics" or "collector :exporter /metrics"
    after: str  # the variant whose load ran just before
    bytes: int
    series: int  # sample lines in the exposition
    gets: int
    median_ms: float
    min_ms: float
    max_ms: float


class CollectorStep(BaseModel):
    """One offered rate of captured OTLP trace payloads into the collector's OTLP/HTTP receiver."""

    offered_requests_per_s: float
    offered_spans_per_s: float
    achieved_requests_per_s: float
    non_2xx: int
    p99_ms: float
    accepted: int
    refused: int
    send_failed: int
    enqueue_failed: int
    exported: int  # spans the Jaeger exporter sent
    drained: bool  # everything accepted had left the collector soon after the step
    ok: bool
    why: str = ""


class CollectorResult(BaseModel):
    """The collector's sustained rate before it refuses or drops spans."""

    payloads: int  # captured trace export requests
    replayed_payloads: int  # copies with fresh trace ids in the replay rotation
    spans_per_payload: float
    bytes_per_payload: float
    # Mostly one trace per /predict request (server span and its children); the prediction log
    # writer's inserts are traces of their own.
    spans_per_trace: float
    metric_exports: int
    bytes_per_metric_export: float
    steps: list[CollectorStep]
    sustained_spans_per_s: float | None
    limit: str  # what ended the ramp


class RunResult(BaseModel):
    """Everything one run measured, and the set-up it measured it on."""

    started: str
    finished: str = ""
    setup: dict[str, Any]
    shape: Shape
    variants: list[Variant]
    saturation: list[SaturationRun] = Field(default_factory=list)
    latency: list[LatencyRun] = Field(default_factory=list)
    scrapes: list[ScrapeResult] = Field(default_factory=list)
    collector: CollectorResult | None = None
    notes: list[str] = Field(default_factory=list)
