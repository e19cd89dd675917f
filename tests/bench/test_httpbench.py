"""The HTTP benchmark's own plumbing (benchmarks/httpbench), without measuring anything.

Generated load files, result parsing, the report rendered from a fixture run, and one tiny real
run of the bare ceiling. Nothing here asserts on a performance figure: those are reported by
`make bench`, never enforced.
"""

from __future__ import annotations

import base64
import http.server
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from benchmarks.httpbench.__main__ import Plan, execute, results_path
from benchmarks.httpbench.collector import collector_counters, spans_of, with_fresh_trace_ids
from benchmarks.httpbench.load import (
    FixedRateResult,
    WrkResult,
    percentile,
    run_wrk,
    summarise_vegeta,
    vegeta_rate,
    vegeta_targets,
    wrk_script,
)
from benchmarks.httpbench.report import Views, render, targets
from benchmarks.httpbench.results import CpuUsage, LatencyRun, RunResult, SaturationRun
from benchmarks.httpbench.shape import FULL, QUICK, Shape
from benchmarks.httpbench.variants import SYMBOLS, Variant, all_variants, select
from tests.harness.process import LOOPBACK, free_port, require_binary
from tests.harness.servers import built_binary

VARIANTS = {variant.name: variant for variant in all_variants(cores=2)}

# --- variants ------------------------------------------------------------------------------------------


def test_predict_bodies_rotate_over_the_five_default_symbols() -> None:
    bodies = [json.loads(body) for body in VARIANTS["l1-on"].bodies()]
    assert [body["symbol"] for body in bodies] == ["AAPL", "AMZN", "GOOGL", "MSFT", "NVDA"]


@pytest.mark.parametrize(("name", "size", "count"), [("batch10-on", 10, 5), ("batch50-on", 50, 1)])
def test_batch_bodies_cover_all_fifty_symbols_without_repeats(name: str, size: int, count: int) -> None:
    bodies = [json.loads(body)["symbols"] for body in VARIANTS[name].bodies()]
    assert len(bodies) == count
    assert all(len(symbols) == size for symbols in bodies)
    assert sorted(symbol for symbols in bodies for symbol in symbols) == sorted(SYMBOLS)
    assert len(set(SYMBOLS)) == 50


def test_only_selects_by_name_or_tag_and_extras_only_by_name() -> None:
    variants = all_variants(cores=2)
    assert [v.name for v in select(variants, ["bare"])] == ["bare", "bare-w2"]
    assert {v.name for v in select(variants, ["redis", "pg"])} == {"redis-on", "pg-l1-on"}
    assert "l1-on-sampled10" not in {v.name for v in select(variants, [])}
    assert "l1-on-sampled10" not in {v.name for v in select(variants, ["l1"])}
    assert [v.name for v in select(variants, ["sampled"])] == ["l1-on-sampled10"]
    with pytest.raises(ValueError, match="unknown"):
        select(variants, ["nope"])


def test_results_file_names_mark_quick_and_partial_runs(tmp_path: Path) -> None:
    assert results_path(tmp_path, FULL, [], "2025-01-02").name == "2025-01-02.md"
    assert (
        results_path(tmp_path, QUICK, ["l1", "bare"], "2025-01-02").name == "2025-01-02-quick-only-bare-l1.md"
    )


# --- load generator files and results -------------------------------------------------------------------


def test_vegeta_targets_are_json_lines_with_base64_bodies() -> None:
    bodies = VARIANTS["l1-on"].bodies()
    lines = vegeta_targets("http://127.0.0.1:1/predict", bodies).splitlines()
    targets_ = [json.loads(line) for line in lines]
    assert [base64.b64decode(t["body"]).decode() for t in targets_] == bodies
    assert all(t["method"] == "POST" and t["url"] == "http://127.0.0.1:1/predict" for t in targets_)
    assert all(t["header"] == {"Content-Type": ["application/json"]} for t in targets_)


def test_vegeta_rate_keeps_low_rates_precise() -> None:
    assert vegeta_rate(2.5) == ("150/1m", 2.5)
    assert vegeta_rate(812.0) == ("48720/1m", 812.0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def _csv_row(seq: int, sent_ns: int, latency_ns: int, code: int = 200, error: str = "") -> str:
    return f"{sent_ns},{code},{latency_ns},18,0,{error},,,{seq},POST,http://x/predict,"


def test_vegeta_summary_adds_lateness_to_latency_from_the_schedule() -> None:
    """At 1000/s request i is due at t0 + i ms; request 2 went out 5 ms late, request 3 4.1 ms."""
    t0 = 1_000_000_000
    rows = [
        _csv_row(0, t0, 1_000_000),
        _csv_row(1, t0 + 1_000_000, 1_000_000),
        _csv_row(2, t0 + 7_000_000, 1_000_000),
        _csv_row(3, t0 + 7_100_000, 2_000_000, code=500, error="500 Internal Server Error"),
    ]
    result = summarise_vegeta("\n".join(rows) + "\n", label="50%", offered_rps=1000.0)
    assert result.requests == 4
    assert result.success == 0.75
    assert result.status_codes == {"200": 3, "500": 1}
    assert result.max_ms == 2.0  # vegeta's own view: from the actual send
    assert result.lateness_max_ms == pytest.approx(5.0)
    assert result.sched_max_ms == pytest.approx(6.1)  # request 3: 2 ms latency + 4.1 ms late
    assert result.errors == {"500 Internal Server Error": 1}


def test_vegeta_summary_counts_errors_by_kind_with_addresses_masked() -> None:
    t0 = 1_000_000_000
    reset = "Post http://127.0.0.1:{p}/predict: read tcp 127.0.0.1:{p}->127.0.0.1:8000: connection reset"
    rows = [_csv_row(i, t0 + i * 10**6, 10**6, code=0, error=reset.format(p=40000 + i)) for i in range(3)]
    result = summarise_vegeta("\n".join(rows) + "\n", label="50%", offered_rps=1000.0)
    assert result.errors == {
        "Post http://ADDR/predict: read tcp ADDR->ADDR: connection reset": 3,
    }


@pytest.fixture
def recording_server() -> Iterator[tuple[str, list[bytes]]]:
    """An HTTP server that answers 200 and keeps every POST body."""
    bodies: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_wrk_script_posts_every_body_and_reports_json(
    recording_server: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    url, received = recording_server
    variant = VARIANTS["batch10-on"]
    script = tmp_path / "load.lua"
    script.write_text(wrk_script(variant.path, variant.bodies()))
    result = run_wrk(require_binary("wrk"), url, script, seconds=1, connections=1, threads=1, timeout=5)
    assert result.requests > 0
    assert result.error_count == 0
    assert {body.decode() for body in received} == set(variant.bodies())


# --- collector helpers ------------------------------------------------------------------------------------


def _export(trace_ids: list[bytes]) -> bytes:
    spans = [
        Span(trace_id=trace_id, span_id=bytes([i + 1]) * 8, name="s") for i, trace_id in enumerate(trace_ids)
    ]
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])])
    encoded: bytes = request.SerializeToString()
    return encoded


def test_fresh_trace_ids_keep_spans_of_one_trace_together() -> None:
    a, b = b"a" * 16, b"b" * 16
    fresh = spans_of(with_fresh_trace_ids(_export([a, a, b]), random.Random(1)))
    assert len(fresh) == 3
    assert fresh[0] == fresh[1] != fresh[2]
    assert not {a, b} & set(fresh)


def test_collector_counters_sum_what_says_refused_dropped_or_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    exposition = "\n".join(
        [
            "# HELP otelcol_receiver_accepted_spans spans",
            'otelcol_receiver_accepted_spans{receiver="otlp/app",transport="http"} 10',
            'otelcol_receiver_accepted_spans{receiver="otlp/app",transport="grpc"} 5',
            'otelcol_receiver_refused_spans_total{receiver="otlp/app",transport="http"} 2',
            'otelcol_exporter_sent_spans{exporter="otlp_grpc/jaeger",server_port="1"} 12',
            'otelcol_exporter_sent_spans{exporter="other"} 99',
            'otelcol_exporter_enqueue_failed_spans{exporter="otlp_grpc/jaeger"} 1',
        ]
    )

    class Answer:
        text = exposition

    monkeypatch.setattr("benchmarks.httpbench.collector.httpx.get", lambda url, timeout: Answer())
    assert collector_counters("http://x/metrics") == {
        "accepted": 15.0,
        "refused": 2.0,
        "exported": 12.0,
        "enqueue_failed": 1.0,
    }


# --- the report from a fixture run --------------------------------------------------------------------------


def _wrk(rps: float, p50: float = 1.0, p99: float = 2.0) -> WrkResult:
    return WrkResult(
        connections=16,
        seconds=10.0,
        requests=int(rps * 10),
        rps=rps,
        errors={"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
        p50_ms=p50,
        p90_ms=p99,
        p99_ms=p99,
        p999_ms=p99,
        max_ms=p99,
    )


def _fixed(label: str, rate: float, p50: float, p99: float) -> FixedRateResult:
    return FixedRateResult(
        label=label,
        offered_rps=rate,
        achieved_rps=rate,
        requests=int(rate * 10),
        success=1.0,
        status_codes={"200": int(rate * 10)},
        p50_ms=p50,
        p90_ms=p99,
        p99_ms=p99,
        max_ms=p99,
        sched_p50_ms=p50,
        sched_p99_ms=p99,
        sched_max_ms=p99,
        lateness_p50_ms=0.1,
        lateness_p99_ms=0.3,
        lateness_max_ms=0.5,
    )


def fixture_run() -> RunResult:
    """Two repetitions of the ceiling and the telemetry pair, with round figures."""
    variants = [VARIANTS["bare"], VARIANTS["l1-off"], VARIANTS["l1-on"]]
    rps = {"bare": (600.0, 640.0), "l1-off": (400.0, 420.0), "l1-on": (300.0, 330.0)}
    cpu = CpuUsage(wall_s=10, server_s=9, pipeline_s=0.5, generator_s=0.2)
    result = RunResult(started="2025-01-02T03:04:05+00:00", setup={"cores": 2}, shape=FULL, variants=variants)
    for rep in (1, 2):
        for variant in variants:
            stall = _wrk(100, 1.0, 1.2 if variant.name == "l1-on" else 1.1) if variant.stall_probe else None
            levels = {"l1": 100, "redis": 0, "computed": 0} if variant.kind == "service" else None
            result.saturation.append(
                SaturationRun(
                    variant=variant.name,
                    repetition=rep,
                    saturation=_wrk(rps[variant.name][rep - 1]),
                    cpu=cpu,
                    stall_probe=stall,
                    levels=levels,
                )
            )
            runs = [_fixed(f"{f:.0%}", f * 300, 2.0, 8.0) for f in FULL.rate_fractions]
            if variant.name == "l1-off":
                runs.append(_fixed("matched", 150, 1.9, 7.0))
            result.latency.append(
                LatencyRun(
                    variant=variant.name, repetition=rep, base_rps=300, runs=runs, cpu=[cpu] * len(runs)
                )
            )
    return result


def test_targets_from_a_fixture_run() -> None:
    verdicts = {t.what: t.passed for t in targets(Views(fixture_run()))}
    assert verdicts["/predict L1, telemetry on (OTLP), 1 worker vs the bare ceiling"] is True  # 315/620
    assert verdicts["telemetry on vs off, throughput"] is False  # 315/410
    assert verdicts["telemetry on adds to the median at a fixed rate"] is True  # 2.0 - 1.9 ms
    assert verdicts["p99 at 70 % of saturation, l1-on"] is True
    assert verdicts["no periodic export stall at one connection"] is True
    assert verdicts["2 workers vs 1 worker, throughput"] is None  # not in this run


def test_report_renders_from_a_fixture_run_and_round_trips_through_json() -> None:
    result = fixture_run()
    text = render(result)
    for heading in ("## Set-up", "## Throughput and latency", "## Targets", "## Collector sustained rate"):
        assert heading in text
    assert "| l1-on | 1 | sqlite | l1 | on | /predict | 315 [300-330] |" in text
    assert "| MISS | telemetry on vs off, throughput |" in text
    assert render(RunResult.model_validate_json(result.model_dump_json())) == text


# --- one tiny real run --------------------------------------------------------------------------------------

TINY = Shape(
    name="quick",
    repetitions=1,
    warmup_seconds=1,
    saturation_seconds=1,
    rate_seconds=1.0,
    rate_fractions=(0.5,),
    settle_seconds=0.2,
    scrape_gets=1,
)


@pytest.mark.integration
def test_a_tiny_run_of_the_bare_ceiling_end_to_end(tmp_path: Path) -> None:
    """Real processes (the bare app, wrk, vegeta), one second per measurement; figures unchecked."""
    require_binary("wrk")
    built_binary("vegeta")
    bare: Variant = VARIANTS["bare"]
    status = execute(
        Plan(TINY, [bare], collector=False, tokens=["bare"]), results_dir=tmp_path, workdir_parent=tmp_path
    )
    assert status == 0
    report = next(tmp_path.glob("*-quick-only-bare.md")).read_text()
    result = RunResult.model_validate_json(next(tmp_path.glob("*-quick-only-bare.json")).read_text())
    assert "| bare | 1 |" in report
    assert result.saturation[0].saturation.requests > 0
    assert result.latency[0].runs[0].requests > 0
    assert set(result.latency[0].runs[0].status_codes) == {"200"}
