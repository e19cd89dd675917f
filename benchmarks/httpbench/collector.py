"""The collector's sustained rate: how many spans per second it takes before it refuses or drops.

Payloads are real: a telemetry-on service is pointed at a local sink for a few seconds of load,
and the OTLP/HTTP export requests its SDK sends (protobuf trace batches, metric exports) are
kept byte for byte. vegeta then replays the trace batches into the run's collector (base config
plus the Jaeger layer, Jaeger behind it, as in the tests) at growing fixed rates. Each replayed
copy gets fresh trace ids, and there are more distinct traces in the rotation than Jaeger's
in-memory store keeps (deploy/jaeger.yaml, max_traces): a repeated trace id would make Jaeger
append to the old trace forever instead of evicting it, which no real load does. A step passes
when every request got a 2xx, the collector's own counters (its telemetry port) show nothing
refused or failed at the receiver and nothing failed to enqueue or send at the Jaeger exporter,
and everything accepted has left for Jaeger within a few seconds after the step. The sustained
rate is the last passing step; the load generator, the collector and Jaeger share the machine.
"""

from __future__ import annotations

import contextlib
import http.server
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from benchmarks.httpbench.load import run_vegeta, summarise_vegeta, vegeta_csv, vegeta_targets
from benchmarks.httpbench.results import CollectorResult, CollectorStep
from benchmarks.httpbench.runner import Runner, log
from benchmarks.httpbench.stack import REPO_ROOT
from benchmarks.httpbench.variants import Variant
from tests.harness.process import LOOPBACK, free_port

PROTOBUF = "application/x-protobuf"
DRAIN_SECONDS = 5.0
# The generator must really offer the rate; below this share the step measures the generator.
ACHIEVED_SHARE = 0.95
CAPTURE_VARIANT = Variant(name="capture", kind="service", telemetry="on")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
JAEGER_CONFIG = REPO_ROOT / "deploy" / "jaeger.yaml"


# --- capture -------------------------------------------------------------------------------------


@dataclass
class Capture:
    """OTLP/HTTP requests as the SDK sent them, by path."""

    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, body: bytes) -> None:
        with self.lock:
            self.bodies.setdefault(path, []).append(body)


@contextlib.contextmanager
def otlp_sink() -> Iterator[tuple[str, Capture]]:
    """A local OTLP/HTTP endpoint that keeps every request and answers 200 (an empty response)."""
    capture = Capture()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            capture.add(self.path, self.rfile.read(length))
            self.send_response(200)
            self.send_header("Content-Type", PROTOBUF)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, name="otlp-sink", daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}", capture
    finally:
        server.shutdown()
        server.server_close()


def spans_of(payload: bytes) -> list[bytes]:
    """The trace id of every span in one OTLP trace export request."""
    request = ExportTraceServiceRequest.FromString(payload)
    return [span.trace_id for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


def capture_payloads(runner: Runner) -> Capture:
    """A few seconds of saturation on a telemetry-on /predict server exporting to the sink.

    Stopping the server flushes its span processor and metric reader, so nothing is left behind.
    """
    with otlp_sink() as (endpoint, capture):
        with runner.stack.serve(CAPTURE_VARIANT, "capture", otlp_endpoint=endpoint) as running:
            seconds = max(3, runner.shape.saturation_seconds // 2)
            runner.wrk(running, seconds=seconds, connections=runner.shape.connections)
        return capture


def jaeger_max_traces() -> int:
    """How many traces Jaeger's in-memory store keeps before it evicts the oldest."""
    config = yaml.safe_load(JAEGER_CONFIG.read_text())
    backends = config["extensions"]["jaeger_storage"]["backends"]
    return int(next(iter(backends.values()))["memory"]["max_traces"])


def with_fresh_trace_ids(payload: bytes, rng: random.Random) -> bytes:
    """The same export request with every trace id replaced (consistently within the request)."""
    request = ExportTraceServiceRequest.FromString(payload)
    fresh: dict[bytes, bytes] = {}
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.trace_id = fresh.setdefault(span.trace_id, rng.randbytes(16))
    encoded: bytes = request.SerializeToString()
    return encoded


def replay_pool(traces: list[bytes], *, distinct_traces: int, seed: int = 9) -> list[bytes]:
    """Copies of the captured batches with fresh ids, holding more than `distinct_traces` traces."""
    per_round = sum(len(set(spans_of(body))) for body in traces)
    rounds = math.ceil(distinct_traces * 1.1 / max(1, per_round))
    rng = random.Random(seed)
    return [with_fresh_trace_ids(body, rng) for _ in range(rounds) for body in traces]


# --- the collector's own counters ---------------------------------------------------------------------


def collector_counters(url: str) -> dict[str, float]:
    """The collector's self-metrics that say whether spans were refused, dropped or sent."""
    text = httpx.get(url, timeout=10).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.group(1).removesuffix("_total"), match.group(2) or "", match.group(3)
        key = _counter_key(name, labels)
        if key is not None:
            totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def _counter_key(name: str, labels: str) -> str | None:
    """Which of our totals a sample adds to (None: not one we read)."""
    if name in ("otelcol_receiver_accepted_spans",):
        return "accepted"
    if name in ("otelcol_receiver_refused_spans", "otelcol_receiver_failed_spans"):
        return "refused"
    if name.startswith("otelcol_processor") and name.endswith("refused_spans"):
        return "refused"
    jaeger = "jaeger" in labels
    if name == "otelcol_exporter_sent_spans" and jaeger:
        return "exported"
    if name == "otelcol_exporter_send_failed_spans" and jaeger:
        return "send_failed"
    if name == "otelcol_exporter_enqueue_failed_spans" and jaeger:
        return "enqueue_failed"
    return None


def _diff(after: dict[str, float], before: dict[str, float], key: str) -> int:
    return int(after.get(key, 0.0) - before.get(key, 0.0))


# --- the ramp ----------------------------------------------------------------------------------------


def ramp(runner: Runner, capture: Capture, *, start_spans_per_s: float = 1000.0) -> CollectorResult:
    """Offer growing rates of the captured trace batches until a step fails."""
    traces = [body for body in capture.bodies.get("/v1/traces", []) if spans_of(body)]
    if not traces:
        raise RuntimeError("the capture holds no trace payloads")
    trace_ids = [trace_id for body in traces for trace_id in spans_of(body)]
    spans_per_payload = len(trace_ids) / len(traces)
    metrics = capture.bodies.get("/v1/metrics", [])
    pool = replay_pool(traces, distinct_traces=jaeger_max_traces())
    targets = runner.scratch / "collector-targets.json"
    targets.write_text(vegeta_targets(f"{runner.stack.otlp_http_url}/v1/traces", pool, PROTOBUF))
    steps: list[CollectorStep] = []
    rate = max(1.0, start_spans_per_s / spans_per_payload)
    limit = f"no failure up to {runner.shape.collector_max_steps} steps"
    for _ in range(runner.shape.collector_max_steps):
        step = offer(runner, targets, rate, spans_per_payload)
        steps.append(step)
        log(
            f"collector: {step.offered_spans_per_s:.0f} spans/s offered -> "
            f"{'ok' if step.ok else 'FAIL: ' + step.why}"
        )
        if not step.ok:
            limit = step.why
            break
        rate *= runner.shape.collector_growth
    passing = [s.offered_spans_per_s for s in steps if s.ok]
    return CollectorResult(
        payloads=len(traces),
        replayed_payloads=len(pool),
        spans_per_payload=spans_per_payload,
        bytes_per_payload=sum(len(b) for b in traces) / len(traces),
        spans_per_trace=len(trace_ids) / len(set(trace_ids)),
        metric_exports=len(metrics),
        bytes_per_metric_export=sum(len(b) for b in metrics) / len(metrics) if metrics else 0.0,
        steps=steps,
        sustained_spans_per_s=max(passing) if passing else None,
        limit=limit,
    )


def offer(runner: Runner, targets: Path, rate: float, spans_per_payload: float) -> CollectorStep:
    """One step: vegeta at `rate` payloads per second, then the collector's counters."""
    url = runner.stack.collector_self_url
    before = collector_counters(url)
    output = runner.scratch / "collector-step.bin"
    seconds = runner.shape.collector_step_seconds
    exact = run_vegeta(
        runner.tools.vegeta,
        targets,
        output,
        rate=rate,
        seconds=seconds,
        timeout=runner.shape.request_timeout_seconds,
    )
    load = summarise_vegeta(vegeta_csv(runner.tools.vegeta, output), label="collector", offered_rps=exact)
    after, drained = _wait_drained(url, before)
    step = CollectorStep(
        offered_requests_per_s=exact,
        offered_spans_per_s=exact * spans_per_payload,
        achieved_requests_per_s=load.achieved_rps,
        non_2xx=sum(n for code, n in load.status_codes.items() if not code.startswith("2")),
        p99_ms=load.p99_ms,
        accepted=_diff(after, before, "accepted"),
        refused=_diff(after, before, "refused"),
        send_failed=_diff(after, before, "send_failed"),
        enqueue_failed=_diff(after, before, "enqueue_failed"),
        exported=_diff(after, before, "exported"),
        drained=drained,
        ok=False,
    )
    why = _failure(step)
    return step.model_copy(update={"ok": not why, "why": why})


def _wait_drained(url: str, before: dict[str, float]) -> tuple[dict[str, float], bool]:
    """Counters once every accepted span was exported (or DRAIN_SECONDS passed)."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while True:
        after = collector_counters(url)
        accepted = _diff(after, before, "accepted")
        if _diff(after, before, "exported") >= accepted:
            return after, True
        if time.monotonic() >= deadline:
            return after, False
        time.sleep(0.25)


def _failure(step: CollectorStep) -> str:
    """Why a step failed, or "" if it passed; the first reason that applies."""
    reasons: list[tuple[bool, Callable[[], str]]] = [
        (step.non_2xx > 0, lambda: f"{step.non_2xx} requests answered non-2xx"),
        (step.refused > 0, lambda: f"receiver refused {step.refused} spans"),
        (step.enqueue_failed > 0, lambda: f"exporter queue full: {step.enqueue_failed} spans dropped"),
        (step.send_failed > 0, lambda: f"exporter failed to send {step.send_failed} spans"),
        (
            not step.drained,
            lambda: f"backlog: {step.accepted - step.exported} spans not exported after the step",
        ),
        (
            step.achieved_requests_per_s < ACHIEVED_SHARE * step.offered_requests_per_s,
            lambda: (
                f"load generator reached only {step.achieved_requests_per_s:.0f} of "
                f"{step.offered_requests_per_s:.0f} req/s (limit of this machine, not of the collector)"
            ),
        ),
    ]
    return next((describe() for failed, describe in reasons if failed), "")
