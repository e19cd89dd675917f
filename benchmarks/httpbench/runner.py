"""The measurements, in the order the methodology asks for.

Phase 1, saturation: for each repetition, every variant in turn (the order rotates between
repetitions so none is always first after a quiet spell): a fresh server, warm-up, wrk at
saturation, and for the telemetry pair the one-connection stall probe.

Phase 2, latency: the same interleaving; each variant is loaded at fixed shares of its own median
saturation from phase 1 (so every variant is compared at the same relative load), plus, for
telemetry off, the absolute rate telemetry on got (so the two medians compare at one rate).
After the last repetition of each telemetry-on variant, the service's /metrics and the
collector's exporter endpoint are timed.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.httpbench.cpu import children_cpu_seconds, tree_cpu_seconds
from benchmarks.httpbench.load import (
    FixedRateResult,
    WrkResult,
    run_vegeta,
    run_wrk,
    summarise_vegeta,
    vegeta_csv,
    vegeta_targets,
    wrk_script,
)
from benchmarks.httpbench.results import CpuUsage, LatencyRun, SaturationRun, ScrapeResult
from benchmarks.httpbench.shape import Shape
from benchmarks.httpbench.stack import Running, Stack, Tools
from benchmarks.httpbench.variants import Variant

# Telemetry off is also loaded at the rate telemetry on got at this share of its saturation.
MATCHED_RATES: dict[str, tuple[str, float]] = {"l1-off": ("l1-on", 0.5)}
MATCHED_LABEL = "matched"


def log(message: str) -> None:
    """Progress on stderr; the table goes to stdout."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rotated(variants: Sequence[Variant], repetition: int) -> list[Variant]:
    """The variants starting at a different one in every repetition."""
    shift = repetition % len(variants) if variants else 0
    return [*variants[shift:], *variants[:shift]]


@dataclass(frozen=True)
class CpuClock:
    """Reads the CPU seconds of the server, the telemetry pipeline and our finished children."""

    server: list[int]
    pipeline: list[int]

    def read(self) -> tuple[float, float, float, float]:
        return (
            time.monotonic(),
            tree_cpu_seconds(self.server),
            tree_cpu_seconds(self.pipeline),
            children_cpu_seconds(),
        )

    def since(self, before: tuple[float, float, float, float]) -> CpuUsage:
        after = self.read()
        wall, server, pipeline, generator = (a - b for a, b in zip(after, before, strict=True))
        return CpuUsage(wall_s=wall, server_s=server, pipeline_s=pipeline, generator_s=generator)


@dataclass
class Runner:
    stack: Stack
    tools: Tools
    shape: Shape
    scratch: Path

    # --- load generators on one running server ---

    def wrk(self, running: Running, *, seconds: int, connections: int) -> WrkResult:
        script = self.scratch / f"{running.variant.name}.lua"
        if not script.exists():
            script.write_text(wrk_script(running.variant.path, running.variant.bodies()))
        return run_wrk(
            self.tools.wrk,
            running.url,
            script,
            seconds=seconds,
            connections=connections,
            threads=min(self.shape.wrk_threads, connections),
            timeout=self.shape.request_timeout_seconds,
        )

    def vegeta(
        self, running: Running, *, rate: float, seconds: float, label: str
    ) -> tuple[FixedRateResult, CpuUsage]:
        """One attack; CPU is counted over the attack only (not the CSV encoding after it)."""
        targets = self.scratch / f"{running.variant.name}-targets.json"
        targets.write_text(vegeta_targets(f"{running.url}{running.variant.path}", running.variant.bodies()))
        output = self.scratch / f"{running.variant.name}-{label.rstrip('%')}.bin"
        clock = self.clock(running)
        started = clock.read()
        exact = run_vegeta(
            self.tools.vegeta,
            targets,
            output,
            rate=rate,
            seconds=seconds,
            timeout=self.shape.request_timeout_seconds,
        )
        cpu = clock.since(started)
        result = summarise_vegeta(vegeta_csv(self.tools.vegeta, output), label=label, offered_rps=exact)
        return result, cpu

    def settle(self) -> None:
        time.sleep(self.shape.settle_seconds)

    def clock(self, running: Running) -> CpuClock:
        return CpuClock(server=[running.process.pid], pipeline=self.stack.pipeline_pids())

    # --- phase 1 ---

    def saturation_phase(self, variants: Sequence[Variant]) -> Iterator[SaturationRun]:
        for repetition in range(self.shape.repetitions):
            for variant in rotated(variants, repetition):
                yield self.saturation_once(variant, repetition + 1)

    def saturation_once(self, variant: Variant, repetition: int) -> SaturationRun:
        shape = self.shape
        with self.stack.serve(variant, f"sat{repetition}") as running:
            self.wrk(running, seconds=shape.warmup_seconds, connections=shape.connections)
            before = running.cache_counts()
            clock = self.clock(running)
            started = clock.read()
            result = self.wrk(running, seconds=shape.saturation_seconds, connections=shape.connections)
            cpu = clock.since(started)
            levels = _delta(before, running.cache_counts(), variant)
            served = running.served_from()
            stall = None
            if variant.stall_probe:
                self.settle()
                stall = self.wrk(running, seconds=shape.stall_probe_seconds, connections=1)
        run = SaturationRun(
            variant=variant.name,
            repetition=repetition,
            saturation=result,
            cpu=cpu,
            stall_probe=stall,
            levels=levels,
            served_from=dict(served),
        )
        log(f"rep {repetition} {variant.name}: {result.rps:.0f} req/s" + _errors(result))
        return run

    # --- phase 2 ---

    def latency_phase(
        self, variants: Sequence[Variant], saturation: dict[str, float]
    ) -> Iterator[LatencyRun | ScrapeResult]:
        last = self.shape.repetitions
        for repetition in range(last):
            for variant in rotated(variants, repetition):
                yield from self.latency_once(
                    variant,
                    repetition + 1,
                    saturation[variant.name],
                    self.rates_for(variant, saturation),
                    scrape=repetition + 1 == last,
                )

    def rates_for(self, variant: Variant, saturation: dict[str, float]) -> list[tuple[str, float]]:
        base = saturation[variant.name]
        rates = [(f"{fraction:.0%}", fraction * base) for fraction in self.shape.rate_fractions]
        matched = MATCHED_RATES.get(variant.name)
        if matched is not None and matched[0] in saturation:
            rates.append((MATCHED_LABEL, matched[1] * saturation[matched[0]]))
        return rates

    def latency_once(
        self,
        variant: Variant,
        repetition: int,
        base_rps: float,
        rates: list[tuple[str, float]],
        *,
        scrape: bool,
    ) -> Iterator[LatencyRun | ScrapeResult]:
        shape = self.shape
        runs, usage = [], []
        with self.stack.serve(variant, f"lat{repetition}") as running:
            # Warm-up at the lowest rate: warms caches without leaving a backlog behind.
            self.vegeta(running, rate=rates[0][1], seconds=shape.warmup_seconds, label="warmup")
            self.settle()
            before = running.cache_counts()
            for label, rate in rates:
                result, cpu = self.vegeta(running, rate=rate, seconds=shape.rate_seconds, label=label)
                runs.append(result)
                usage.append(cpu)
                self.settle()
            levels = _delta(before, running.cache_counts(), variant)
            if scrape and variant.telemetry == "on":
                yield from self.scrapes(running)
        yield LatencyRun(
            variant=variant.name,
            repetition=repetition,
            base_rps=base_rps,
            runs=runs,
            cpu=usage,
            levels=levels,
        )
        cells = ", ".join(f"{r.label} p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} ms" for r in runs)
        log(f"rep {repetition} {variant.name}: {cells}")

    def scrapes(self, running: Running) -> Iterator[ScrapeResult]:
        name = running.variant.name
        if running.variant.serves_metrics:  # otherwise its /metrics is empty by design
            yield measure_scrape(f"{running.url}/metrics", "service /metrics", name, self.shape.scrape_gets)
        yield measure_scrape(
            self.stack.collector_exporter_url, "collector exporter /metrics", name, self.shape.scrape_gets
        )


def median_saturation(runs: Sequence[SaturationRun]) -> dict[str, float]:
    by_variant: dict[str, list[float]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, []).append(run.saturation.rps)
    return {name: statistics.median(values) for name, values in by_variant.items()}


def measure_scrape(url: str, target: str, after: str, gets: int) -> ScrapeResult:
    """Median time of `gets` sequential GETs on one connection, and the exposition's size."""
    times: list[float] = []
    body = b""
    with httpx.Client(timeout=30) as client:
        for _ in range(gets):
            started = time.perf_counter()
            response = client.get(url)
            body = response.content
            times.append((time.perf_counter() - started) * 1000)
    series = sum(1 for line in body.splitlines() if line.strip() and not line.startswith(b"#"))
    return ScrapeResult(
        target=target,
        after=after,
        bytes=len(body),
        series=series,
        gets=gets,
        median_ms=statistics.median(times),
        min_ms=min(times),
        max_ms=max(times),
    )


def _delta(
    before: Counter[str] | None, after: Counter[str] | None, variant: Variant
) -> dict[str, int] | None:
    if before is None or after is None or variant.workers > 1:
        return None
    return {level: after[level] - before[level] for level in ("l1", "redis", "computed")}


def _errors(result: WrkResult) -> str:
    return f" ({result.error_count} errors: {result.errors})" if result.error_count else ""
