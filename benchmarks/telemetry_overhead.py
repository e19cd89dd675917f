"""Server-side time that telemetry adds to one prediction (L1 hit, the hot path).

Three apps are built from the same seeded data (each on its own copy of the data directory):

- `on`:  the production set-up without a collector: `setup_telemetry` (Prometheus reader, service
         instruments, FastAPI's native server span and metrics, SQLAlchemy spans) plus what OTLP
         export would cost locally: spans through a BatchSpanProcessor and metrics through a
         5 s PeriodicExportingMetricReader, both into exporters that drop everything.
- `on-10%`: the same with a parent-based 10 % trace-id ratio sampler, what
         OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1 gives.
- `off`: `noop_telemetry()`: no-op providers. FastAPI's native telemetry sees them and skips all
         of its work (fastapi/telemetry/_asgi.py: `tracing`/`metering` are false for NoOp
         providers and `logs` is off, so the request goes straight to the app); the script checks
         that by the response's trace_id being null.

Server-side time is measured by an ASGI wrapper around each app, from the moment the app is
called to the end of the response, so test-client overhead is excluded. Calls alternate between
the variants in small blocks (so drift in machine load hits both equally); per-request CPU is
`time.process_time` over each variant's blocks, which includes the client's share (equal for
both) and background threads (the span batcher of `on` may spill into `off` blocks).

Usage: python benchmarks/telemetry_overhead.py [--requests 2000] [--block 50] [--warmup 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.app import create_app
from service.config import Settings
from service.container import bootstrap, build_container
from service.telemetry.providers import Telemetry, noop_telemetry, setup_telemetry

SYMBOLS = ["AAPL", "MSFT", "GOOGL", "AMZN", "NVDA"]
# Long enough that every measured call is an L1 hit: we measure telemetry, not the database.
L1_TTL_SECONDS = 24 * 3600.0
# Same cadence as production OTLP metric export (DEFAULT_EXPORT_INTERVAL_MS).
METRIC_EXPORT_INTERVAL_MS = 5000


class DropSpans(SpanExporter):
    """Stands in for the OTLP exporter: batching and encoding-free export cost only."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class DropMetrics(MetricExporter):
    def __init__(self) -> None:
        super().__init__(preferred_temporality={}, preferred_aggregation={})

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **_: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
        return None


@dataclass
class Timed:
    """ASGI wrapper recording how long the app takes per HTTP request."""

    app: ASGIApp
    samples: list[float] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        finished: list[float] = []

        async def timed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finished.append(time.perf_counter())

        await self.app(scope, receive, timed_send)
        self.samples.append((finished[0] if finished else time.perf_counter()) - started)


@dataclass
class Variant:
    name: str
    client: TestClient
    timed: Timed
    telemetry: Telemetry
    cpu_seconds: float = 0.0
    calls: int = 0


def settings_for(data_dir: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        DATA_DIR=data_dir,
        SYMBOLS=SYMBOLS,
        LOG_JSON=False,
        LOG_LEVEL="WARNING",
        FEATURE_L1_TTL_SECONDS=L1_TTL_SECONDS,
    )


def seed(root: Path) -> Path:
    """Seeded market and a registered champion, built once."""
    data = root / "seed"
    container = build_container(settings_for(data))
    try:
        bootstrap(container)
        assert container.models.current is not None, "bootstrap produced no model"
    finally:
        container.close()
    return data


def full_telemetry(settings: Settings, sampler: Sampler | None = None) -> Telemetry:
    telemetry = setup_telemetry(
        settings,
        sampler=sampler,
        extra_metric_readers=[
            PeriodicExportingMetricReader(DropMetrics(), export_interval_millis=METRIC_EXPORT_INTERVAL_MS)
        ],
    )
    telemetry.tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))  # type: ignore[attr-defined]
    return telemetry


def start(name: str, seeded: Path, root: Path, telemetry_on: bool, sampler: Sampler | None = None) -> Variant:
    data = root / name
    shutil.copytree(seeded, data)
    settings = settings_for(data)
    telemetry = full_telemetry(settings, sampler) if telemetry_on else noop_telemetry()
    timed = Timed(create_app(settings, telemetry))
    client = TestClient(timed)
    client.__enter__()
    return Variant(name, client, timed, telemetry)


def call(variant: Variant, index: int) -> dict[str, Any]:
    response = variant.client.post("/predict", json={"symbol": SYMBOLS[index % len(SYMBOLS)]})
    if response.status_code != 200:
        raise RuntimeError(f"{variant.name}: /predict answered {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return body


def warm_up(variant: Variant, count: int) -> None:
    for index in range(count):
        body = call(variant, index)
    if variant.name == "off" and body["trace_id"] is not None:
        raise RuntimeError("telemetry off, yet the request ran inside a span: FastAPI still instruments")
    if variant.name.startswith("on") and body["trace_id"] is None:
        raise RuntimeError("telemetry on, yet the request had no span")
    if body["served_from"] != "l1":
        raise RuntimeError(f"{variant.name}: warm-up did not reach the L1 cache ({body['served_from']})")
    variant.timed.samples.clear()


def run_block(variant: Variant, start_index: int, size: int) -> None:
    cpu = time.process_time()
    for index in range(start_index, start_index + size):
        call(variant, index)
    variant.cpu_seconds += time.process_time() - cpu
    variant.calls += size


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[94]


def report(variants: Sequence[Variant], off: Variant) -> None:
    """One row per variant, then what each telemetry variant adds over `off`."""
    rows = {}
    for variant in (*variants, off):
        samples = variant.timed.samples
        rows[variant.name] = (
            len(samples),
            statistics.median(samples) * 1e6,
            p95(samples) * 1e6,
            statistics.fmean(samples) * 1e6,
            variant.cpu_seconds / variant.calls * 1e6,
        )
    header = (
        f"{'telemetry':<14}{'requests':>9}{'median µs':>12}{'p95 µs':>12}{'mean µs':>12}{'CPU µs/req':>13}"
    )
    print(header)
    print("-" * len(header))
    for name, (count, median, tail, mean, cpu) in rows.items():
        print(f"{name:<14}{count:>9}{median:>12.1f}{tail:>12.1f}{mean:>12.1f}{cpu:>13.1f}")
    print("-" * len(header))
    base = rows[off.name]
    for variant in variants:
        diff = [a - b for a, b in zip(rows[variant.name][1:], base[1:], strict=True)]
        cells = "".join(f"{value:>+12.1f}" for value in diff[:3]) + f"{diff[3]:>+13.1f}"
        print(f"{variant.name + ' - off':<14}{'':>9}{cells}")
    for variant in variants:
        added = rows[variant.name][1] - base[1]
        print(f"{variant.name}: adds {added:.0f} µs ({added / base[1]:.0%}) to the median server-side time.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="measured /predict calls per variant")
    parser.add_argument("--block", type=int, default=50, help="calls per variant before switching")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured calls per variant first")
    args = parser.parse_args(argv)
    for key in [k for k in os.environ if k.startswith("OTEL_EXPORTER_OTLP")]:
        del os.environ[key]  # the `on` variant must not try to reach a collector
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="telemetry-bench-") as tmp:
        root = Path(tmp)
        print("seeding a market and training a model (a few seconds)...", file=sys.stderr)
        seeded = seed(root)
        on = start("on", seeded, root, telemetry_on=True)
        # What OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1 gives.
        sampled = start(
            "on-10%", seeded, root, telemetry_on=True, sampler=ParentBased(TraceIdRatioBased(0.1))
        )
        off = start("off", seeded, root, telemetry_on=False)
        variants = [on, sampled, off]
        try:
            for variant in variants:
                warm_up(variant, args.warmup)
            done = 0
            order = list(variants)
            while done < args.requests:
                size = min(args.block, args.requests - done)
                for variant in order:
                    run_block(variant, done, size)
                order = order[1:] + order[:1]  # no variant always runs first
                done += size
        finally:
            for variant in variants:
                variant.client.__exit__(None, None, None)
            on.telemetry.shutdown()
            sampled.telemetry.shutdown()
    report([on, sampled], off)
    return 0


if __name__ == "__main__":
    sys.exit(main())
