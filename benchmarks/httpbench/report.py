"""From a run's results to the tables: medians with their spread, ratios, targets.

Every figure is the median over repetitions with [min-max] beside it. Ratios are given twice:
the ratio of the two medians, and the range of the per-repetition ratios (repetition i of one
variant against repetition i of the other: they ran next to each other, so machine drift
between repetitions cancels out).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from benchmarks.httpbench.load import FixedRateResult, WrkResult
from benchmarks.httpbench.results import CpuUsage, LatencyRun, RunResult, SaturationRun
from benchmarks.httpbench.runner import MATCHED_LABEL
from benchmarks.httpbench.variants import Variant

# Targets of issue 9 (the benchmark reports them; it never fails on them).
CEILING_SHARE = 0.5
TELEMETRY_SHARE = 0.9
TELEMETRY_MEDIAN_MS = 0.2
P99_AT_70_MS = 20.0
STALL_TAIL_MS = 0.5
WORKERS_SPEEDUP = 1.4
POSTGRES_SHARE = 0.8
# A variant's level check passes when at least this share of lookups came from its level.
LEVEL_SHARE = 0.99
LATE_WARNING_MS = 5.0


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over repetitions."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread | None:
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            return None
        return cls(statistics.median(finite), min(finite), max(finite), len(finite))

    def fmt(self, digits: int = 0, unit: str = "") -> str:
        value = f"{self.median:.{digits}f}{unit}"
        if self.count < 2:
            return value
        return f"{value} [{self.low:.{digits}f}-{self.high:.{digits}f}]"


def fmt(spread: Spread | None, digits: int = 0, unit: str = "") -> str:
    return spread.fmt(digits, unit) if spread is not None else "-"


@dataclass(frozen=True)
class Target:
    what: str
    measured: str
    threshold: str
    passed: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]


# --- lookups into a run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Views:
    """A run's results indexed by variant."""

    result: RunResult

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.result.variants if v.name == name), None)

    def saturation(self, name: str) -> list[SaturationRun]:
        return sorted((r for r in self.result.saturation if r.variant == name), key=lambda r: r.repetition)

    def latency(self, name: str) -> list[LatencyRun]:
        return sorted((r for r in self.result.latency if r.variant == name), key=lambda r: r.repetition)

    def rps(self, name: str) -> Spread | None:
        return Spread.of(r.saturation.rps for r in self.saturation(name))

    def rps_by_repetition(self, name: str) -> dict[int, float]:
        return {r.repetition: r.saturation.rps for r in self.saturation(name)}

    def at(self, name: str, label: str, pick: Callable[..., float]) -> Spread | None:
        """One latency figure (e.g. p99) of a variant at one rate label, over repetitions."""
        values = [pick(run) for lat in self.latency(name) for run in lat.runs if run.label == label]
        return Spread.of(values)

    def at_cpu(
        self, name: str, label: str, pick: Callable[[FixedRateResult, CpuUsage], float]
    ) -> Spread | None:
        """A figure from a fixed-rate run and the CPU spent during it, over repetitions."""
        values = [
            pick(run, cpu)
            for lat in self.latency(name)
            for run, cpu in zip(lat.runs, lat.cpu, strict=False)
            if run.label == label
        ]
        return Spread.of(values)

    def ceiling_for(self, variant: Variant) -> str | None:
        """The bare variant with the same worker count."""
        ceilings = [v for v in self.result.variants if v.kind == "bare" and v.workers == variant.workers]
        return ceilings[0].name if ceilings else None

    def labels(self) -> list[str]:
        return [f"{fraction:.0%}" for fraction in self.result.shape.rate_fractions]


def ratio(views: Views, numerator: str, denominator: str) -> tuple[float, Spread | None] | None:
    """Median ratio and the spread of per-repetition ratios of two variants' saturation."""
    top, bottom = views.rps(numerator), views.rps(denominator)
    if top is None or bottom is None or bottom.median == 0:
        return None
    a, b = views.rps_by_repetition(numerator), views.rps_by_repetition(denominator)
    paired = Spread.of(a[rep] / b[rep] for rep in a if b.get(rep))
    return top.median / bottom.median, paired


def fmt_ratio(value: tuple[float, Spread | None] | None, unit: str = "x") -> str:
    if value is None:
        return "-"
    median, paired = value
    if paired is None or paired.count < 2:
        return f"{median:.2f}{unit}"
    return f"{median:.2f}{unit} (per rep {paired.low:.2f}-{paired.high:.2f})"


# --- level checks -----------------------------------------------------------------------------------


def level_check(views: Views, variant: Variant) -> tuple[str, bool | None]:
    """Which level answered during the measured windows; whether it is the one claimed."""
    if variant.kind == "bare":
        return "-", None
    runs = views.saturation(variant.name)
    counts = {"l1": 0, "redis": 0, "computed": 0}
    source = "counters"
    for run in runs:
        tally = run.levels if run.levels is not None else run.served_from
        source = "counters" if run.levels is not None else "probe"
        for level, n in tally.items():
            counts[level] = counts.get(level, 0) + n
    total = sum(counts.values())
    if not total:
        return "-", None
    share = counts.get(variant.cache, 0) / total
    return f"{variant.cache} {share:.1%} ({source})", share >= LEVEL_SHARE


# --- targets ---------------------------------------------------------------------------------------------


def targets(views: Views) -> list[Target]:
    n = next((v.workers for v in views.result.variants if v.workers > 1), 2)
    return [
        _share_target(
            views,
            "l1-on",
            "bare",
            CEILING_SHARE,
            "/predict L1, telemetry on (OTLP), 1 worker vs the bare ceiling",
        ),
        _share_target(views, "l1-on", "l1-off", TELEMETRY_SHARE, "telemetry on vs off, throughput"),
        _median_added_target(views),
        *_p99_targets(views),
        _stall_target(views),
        _share_target(views, f"l1-on-w{n}", "l1-on", WORKERS_SPEEDUP, f"{n} workers vs 1 worker, throughput"),
        _share_target(views, "pg-l1-on", "l1-on", POSTGRES_SHARE, "PostgreSQL + Redis vs SQLite, throughput"),
    ]


def _share_target(views: Views, top: str, bottom: str, least: float, what: str) -> Target:
    value = ratio(views, top, bottom)
    threshold = f"≥ {least:.2f}x ({top} / {bottom})"
    if value is None:
        return Target(what, "not measured", threshold, None)
    return Target(what, fmt_ratio(value), threshold, value[0] >= least)


def _median_added_target(views: Views) -> Target:
    what = "telemetry on adds to the median at a fixed rate"
    threshold = f"≤ {TELEMETRY_MEDIAN_MS} ms (l1-on at 50 % of its saturation vs l1-off at that same rate)"
    label = views.labels()[0] if views.labels() else "50%"
    on = views.at("l1-on", label, lambda r: r.p50_ms)
    off = views.at("l1-off", MATCHED_LABEL, lambda r: r.p50_ms)
    if on is None or off is None:
        return Target(what, "not measured", threshold, None)
    added = on.median - off.median
    measured = f"{added:+.3f} ms (on {on.fmt(3)} ms, off {off.fmt(3)} ms)"
    return Target(what, measured, threshold, added <= TELEMETRY_MEDIAN_MS)


def _p99_targets(views: Views) -> list[Target]:
    found = []
    for variant in views.result.variants:
        if variant.kind != "service":
            continue
        p99 = views.at(variant.name, "70%", lambda r: r.sched_p99_ms)
        what = f"p99 at 70 % of saturation, {variant.name}"
        threshold = f"< {P99_AT_70_MS:.0f} ms (from the schedule)"
        if p99 is None:
            found.append(Target(what, "not measured", threshold, None))
            continue
        found.append(Target(what, fmt(p99, 2, " ms"), threshold, p99.median < P99_AT_70_MS))
    return found


def _stall_target(views: Views) -> Target:
    what = "no periodic export stall at one connection"
    threshold = f"(p99 - p50) grows by ≤ {STALL_TAIL_MS} ms with telemetry on (wrk -c1)"
    tails = {}
    for name in ("l1-on", "l1-off"):
        spread = Spread.of(
            r.stall_probe.p99_ms - r.stall_probe.p50_ms for r in views.saturation(name) if r.stall_probe
        )
        if spread is not None:
            tails[name] = spread
    if len(tails) < 2:
        return Target(what, "not measured", threshold, None)
    grown = tails["l1-on"].median - tails["l1-off"].median
    measured = f"{grown:+.3f} ms (on {tails['l1-on'].fmt(3)}, off {tails['l1-off'].fmt(3)} ms)"
    return Target(what, measured, threshold, grown <= STALL_TAIL_MS)


# --- tables -------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main_table(views: Views) -> str:
    labels = views.labels()
    headers = ["variant", "workers", "backend", "cache", "telemetry", "endpoint", "req/s median [min-max]"]
    headers += ["predictions/s", "x ceiling", "x telemetry off"]
    headers += [f"p50 / p99 ms @{label}" for label in labels] + ["level check"]
    rows = []
    for variant in views.result.variants:
        rps = views.rps(variant.name)
        ceiling = views.ceiling_for(variant)
        cells = [variant.name, str(variant.workers), variant.backend if variant.kind == "service" else "-"]
        cells += [variant.cache, variant.telemetry, variant.path if variant.kind == "service" else "/predict"]
        cells += [fmt(rps), _predictions(variant, rps)]
        vs_ceiling = ratio(views, variant.name, ceiling) if ceiling and not variant.batch else None
        cells.append(_short_ratio(vs_ceiling) if variant.kind == "service" else "1.00x" if rps else "-")
        cells.append(_short_ratio(ratio(views, variant.name, "l1-off")) if _pairs_with_off(variant) else "")
        for label in labels:
            p50 = views.at(variant.name, label, lambda r: r.p50_ms)
            p99 = views.at(variant.name, label, lambda r: r.p99_ms)
            cells.append(f"{fmt(p50, 2)} / {fmt(p99, 2)}" if p50 else "-")
        cells.append(level_check(views, variant)[0])
        rows.append(cells)
    return table(headers, rows)


def _pairs_with_off(variant: Variant) -> bool:
    """Telemetry-on twins of l1-off: same set-up but telemetry (sampled or not)."""
    same = (
        variant.cache == "l1" and variant.workers == 1 and variant.backend == "sqlite" and not variant.batch
    )
    return variant.kind == "service" and variant.telemetry == "on" and same


def _predictions(variant: Variant, rps: Spread | None) -> str:
    if rps is None:
        return "-"
    per = variant.predictions_per_request
    return f"{rps.median * per:.0f}"


def _short_ratio(value: tuple[float, Spread | None] | None) -> str:
    return f"{value[0]:.2f}x" if value is not None else "-"


def latency_table(views: Views) -> str:
    headers = ["variant", "rate", "offered req/s", "sent req/s", "ok", "p50 ms", "p90 ms", "p99 ms"]
    headers += ["max ms", "p99 from schedule", "late p99 / max ms", "server CPU ms/req", "vegeta cores"]
    rows = []
    for variant in views.result.variants:
        seen: list[str] = []
        for lat in views.latency(variant.name):
            seen += [run.label for run in lat.runs if run.label not in seen]
        for label in seen:
            rows.append(_latency_row(views, variant.name, label))
    return table(headers, rows)


def _latency_row(views: Views, name: str, label: str) -> list[str]:
    def at(pick: Callable[..., float]) -> Spread | None:
        return views.at(name, label, pick)

    success = at(lambda r: r.success)
    return [
        name,
        label,
        fmt(at(lambda r: r.offered_rps)),
        fmt(at(lambda r: r.achieved_rps)),
        f"{success.low:.1%}" if success else "-",
        fmt(at(lambda r: r.p50_ms), 2),
        fmt(at(lambda r: r.p90_ms), 2),
        fmt(at(lambda r: r.p99_ms), 2),
        fmt(at(lambda r: r.max_ms), 1),
        fmt(at(lambda r: r.sched_p99_ms), 2),
        f"{fmt(at(lambda r: r.lateness_p99_ms), 2)} / {fmt(at(lambda r: r.lateness_max_ms), 1)}",
        fmt(views.at_cpu(name, label, lambda r, c: c.server_s * 1000 / max(1, r.requests)), 3),
        fmt(views.at_cpu(name, label, lambda r, c: c.generator_s / c.wall_s if c.wall_s else math.nan), 2),
    ]


def stall_table(views: Views) -> str:
    headers = ["variant", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "p99 - p50 ms"]
    rows = []
    for variant in views.result.variants:
        probes = [r.stall_probe for r in views.saturation(variant.name) if r.stall_probe]
        if not probes:
            continue
        rows.append(
            [
                variant.name,
                fmt(Spread.of(p.rps for p in probes)),
                fmt(Spread.of(p.p50_ms for p in probes), 3),
                fmt(Spread.of(p.p99_ms for p in probes), 3),
                fmt(Spread.of(p.p999_ms for p in probes), 3),
                fmt(Spread.of(p.max_ms for p in probes), 2),
                fmt(Spread.of(p.p99_ms - p.p50_ms for p in probes), 3),
            ]
        )
    return table(headers, rows)


def cpu_table(views: Views) -> str:
    """CPU per request at saturation: steadier than req/s when other work shares the cores."""
    headers = ["variant", "server CPU ms/request", "collector + Jaeger CPU ms/request"]
    headers += ["wrk CPU ms/request", "cores busy: server / pipeline / wrk"]
    rows = []
    for variant in views.result.variants:
        runs = [(r.saturation, r.cpu) for r in views.saturation(variant.name) if r.cpu is not None]
        if runs:
            rows.append(_cpu_row(variant.name, runs))
    return table(headers, rows)


def _cpu_row(name: str, runs: list[tuple[WrkResult, CpuUsage]]) -> list[str]:
    def per_request(pick: Callable[[CpuUsage], float]) -> str:
        return fmt(Spread.of(pick(cpu) * 1000 / max(1, wrk.requests) for wrk, cpu in runs), 3)

    def cores(pick: Callable[[CpuUsage], float]) -> str:
        spread = Spread.of(pick(cpu) / cpu.wall_s for _, cpu in runs if cpu.wall_s)
        return f"{spread.median:.2f}" if spread else "-"

    busy = " / ".join(cores(pick) for pick in (_server, _pipeline, _generator))
    return [name, per_request(_server), per_request(_pipeline), per_request(_generator), busy]


def _server(cpu: CpuUsage) -> float:
    return cpu.server_s


def _pipeline(cpu: CpuUsage) -> float:
    return cpu.pipeline_s


def _generator(cpu: CpuUsage) -> float:
    return cpu.generator_s


def scrape_table(views: Views) -> str:
    headers = ["endpoint", "after the load of", "bytes", "series (sample lines)", "GET ms median [min-max]"]
    rows = [
        [
            s.target,
            s.after,
            f"{s.bytes:,}",
            f"{s.series:,}",
            f"{s.median_ms:.2f} [{s.min_ms:.2f}-{s.max_ms:.2f}]",
        ]
        for s in views.result.scrapes
    ]
    return table(headers, rows)


def collector_section(views: Views) -> str:
    result = views.result.collector
    if result is None:
        return "Not measured in this run."
    headers = ["offered spans/s", "req/s offered / sent", "non-2xx", "p99 ms", "accepted", "refused"]
    headers += ["exported", "enqueue failed", "send failed", "verdict"]
    rows = [
        [
            f"{s.offered_spans_per_s:,.0f}",
            f"{s.offered_requests_per_s:.1f} / {s.achieved_requests_per_s:.1f}",
            str(s.non_2xx),
            f"{s.p99_ms:.1f}",
            f"{s.accepted:,}",
            f"{s.refused:,}",
            f"{s.exported:,}",
            f"{s.enqueue_failed:,}",
            f"{s.send_failed:,}",
            "ok" if s.ok else s.why,
        ]
        for s in result.steps
    ]
    sustained = (
        f"{result.sustained_spans_per_s:,.0f} spans/s" if result.sustained_spans_per_s else "none passed"
    )
    lines = [
        f"Sustained: **{sustained}** (ramp ended: {result.limit}).",
        _headroom(views, result.sustained_spans_per_s, result.spans_per_trace),
        f"Payloads: {result.payloads} captured trace exports (replayed as {result.replayed_payloads} "
        f"copies with fresh trace ids), {result.spans_per_payload:.0f} spans and "
        f"{result.bytes_per_payload / 1024:.1f} KiB each on average; {result.spans_per_trace:.1f} spans per "
        f"trace; {result.metric_exports} metric exports of {result.bytes_per_metric_export / 1024:.1f} KiB.",
        "",
        table(headers, rows),
    ]
    return "\n".join(line for line in lines if line is not None)


def _headroom(views: Views, sustained: float | None, spans_per_trace: float) -> str:
    rps = views.rps("l1-on")
    if rps is None or not sustained:
        return ""
    emitted = rps.median * spans_per_trace
    return (
        f"The service at l1-on saturation emits about {emitted:,.0f} spans/s "
        f"({rps.median:.0f} req/s x {spans_per_trace:.1f}): headroom {sustained / emitted:.1f}x."
    )


def targets_section(views: Views) -> str:
    rows = [[t.verdict, t.what, t.measured, t.threshold] for t in targets(views)]
    return table(["", "target", "measured", "threshold"], rows)


def setup_section(result: RunResult) -> str:
    setup = result.setup
    shape = result.shape
    packages = ", ".join(f"{name} {version}" for name, version in setup.get("packages", {}).items())
    lines = [
        f"- Machine: {setup.get('cores')} cores, {setup.get('cpu')}, {setup.get('memory_gib')} GiB, "
        f"kernel {setup.get('kernel')}; work directory on {setup.get('workdir_filesystem')}; "
        f"load average at start {setup.get('load_average_at_start')}, "
        f"at end {setup.get('load_average_at_end', '?')}",
        f"- Python {setup.get('python')}; {packages}",
        f"- Collector: {setup.get('collector')}; wrk: {setup.get('wrk')}; vegeta: {setup.get('vegeta')}; "
        f"Redis: {setup.get('redis')}; PostgreSQL: {setup.get('postgres')}",
        f"- Servers: {setup.get('server_flags')}",
        f"- Shape ({shape.name}): {shape.repetitions} interleaved repetitions, "
        "a fresh server per measurement; "
        f"warm-up {shape.warmup_seconds} s; saturation `wrk -t{shape.wrk_threads} -c{shape.connections} "
        f"-d{shape.saturation_seconds}s` (Lua POST rotating over the bodies); stall probe `wrk -t1 -c1 "
        f"-d{shape.stall_probe_seconds}s`; fixed rates "
        f"`vegeta attack -rate R -duration {shape.rate_seconds:g}s` "
        f"at {', '.join(f'{f:.0%}' for f in shape.rate_fractions)} of the variant's median saturation, "
        f"-max-workers unbounded (open model); {shape.settle_seconds:g} s pause after each load",
        "- Data: 50 symbols x 150 synthetic days (SQLite file or a fresh PostgreSQL database per server), "
        "one champion trained on all 50; /predict rotates over AAPL, AMZN, GOOGL, MSFT, NVDA; "
        "/predict/batch over windows of 10 (all 50 covered) or the 50 at once (MAX_BATCH_SYMBOLS 50)",
    ]
    return "\n".join(lines)


def forcing_section(result: RunResult) -> str:
    rows = [
        [v.name, str(v.workers), v.path if v.kind == "service" else "/predict", v.forcing()]
        for v in result.variants
    ]
    lines = [table(["variant", "workers", "endpoint", "how it is forced"], rows), ""]
    lines.append(
        "Checked on every server: telemetry off answers trace_id null, on a trace id; the level "
        "that answered comes from /feature-store/stats deltas over the measured window (one worker) "
        "or from `served_from` of probe requests (several workers: the counters are per process). "
        "Every server is started afresh for every measurement on a private copy of the seeded data "
        "directory (PostgreSQL: a fresh database, seeded by the service at start-up; Redis flushed)."
    )
    return "\n".join(lines)


CO_TEXT = (
    "vegeta is open-model: request i is due at start + i/rate, and with `-max-workers` unbounded "
    "(its default) the pacer never waits for a busy worker, it starts another one, so a slow "
    "server cannot slow the schedule and queueing shows in the latencies (with a bounded "
    "-max-workers it would silently send late instead). vegeta times each request from its "
    "actual send and reports no late or dropped requests itself, so the run reads every result's "
    'timestamp and sequence number and reports how late requests went out ("late") and the p99 '
    "from the schedule (latency + lateness): a generator that fell behind on the shared cores is "
    "visible, and the p99 target is judged from the schedule. vegeta costs about 0.3 ms of CPU per "
    'request ("vegeta cores"), wrk about 0.03 ms: at high rates the generator takes CPU the '
    "server had under wrk, so a variant's latency at 90 % of its wrk saturation can already be "
    "queueing, most of all for the bare ceiling and for N workers."
)


def render(result: RunResult) -> str:
    """The whole Markdown report (also what is printed)."""
    views = Views(result)
    sections = [
        f"# make bench: {result.started[:10]} ({result.shape.name})",
        "",
        f"Started {result.started}, finished {result.finished}.",
        "",
        "## Set-up",
        "",
        setup_section(result),
        "",
        "## How each variant is forced",
        "",
        forcing_section(result),
        "",
        "## Throughput and latency",
        "",
        "Saturation throughput from wrk (closed loop); latency from vegeta at fixed offered rates "
        "(open loop), each a share of the variant's own median saturation. x ceiling: against the "
        "bare app with the same workers (requests, so not for batches).",
        "",
        main_table(views),
        "",
        "## Targets",
        "",
        targets_section(views),
        "",
        "## CPU per request at saturation",
        "",
        "Server CPU comes from /proc (all workers), the generator's from getrusage; the pipeline "
        "is the collector and Jaeger, which run on the same two cores as everything else.",
        "",
        cpu_table(views),
        "",
        "## Latency at fixed rates, in detail",
        "",
        CO_TEXT,
        "",
        latency_table(views),
        "",
        "## One connection (export stalls)",
        "",
        stall_table(views),
        "",
        "## Metrics endpoints",
        "",
        "Measured right after each telemetry-on variant's last latency run. The collector's "
        "exporter holds the series of every service process of the last two minutes "
        "(metric_expiration), and every measurement starts a new process (a new instance label).",
        "",
        scrape_table(views),
        "",
        "## Collector sustained rate",
        "",
        collector_section(views),
        "",
    ]
    if result.notes:
        sections += ["## Notes", "", *(f"- {note}" for note in result.notes), ""]
    return "\n".join(sections)


def run_warnings(result: RunResult) -> list[str]:
    """What in the figures should not be read at face value: wrong level, errors, a late generator."""
    views = Views(result)
    notes = []
    for variant in result.variants:
        text, ok = level_check(views, variant)
        if ok is False:
            notes.append(f"{variant.name}: the claimed level did not answer everything: {text}")
        for run in views.saturation(variant.name):
            if run.saturation.error_count:
                notes.append(f"{variant.name} rep {run.repetition}: wrk errors {run.saturation.errors}")
        for lat in views.latency(variant.name):
            warnings = (_rate_warning(variant.name, lat.repetition, run) for run in lat.runs)
            notes += [warning for warning in warnings if warning]
    return notes


def _rate_warning(name: str, repetition: int, run: FixedRateResult) -> str:
    problems = []
    if run.success < 1:
        detail = f"; errors {run.errors}" if run.errors else ""
        problems.append(f"{1 - run.success:.2%} failed ({run.status_codes}{detail})")
    if run.lateness_p99_ms > LATE_WARNING_MS:
        problems.append(f"vegeta sent late (p99 {run.lateness_p99_ms:.1f} ms): the generator fell behind")
    return f"{name} rep {repetition} at {run.label}: " + "; ".join(problems) if problems else ""
