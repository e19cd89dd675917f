"""Collector faults under a steady load: the collector stopped, then slow, then black-holed.

One real `stockpred serve` exporting OTLP/HTTP (metrics every second, spans batched) to a real
collector (otel/collector.yaml + collector.jaeger.yaml, traces into a real Jaeger) through a
LatencyProxy. Telemetry leaves the service in background threads: the BatchSpanProcessor's queue
is bounded (OTEL_BSP_MAX_QUEUE_SIZE, 2048 spans by default; spans beyond it are dropped) and every
export gives up after OTEL_EXPORTER_OTLP_TIMEOUT (10 s by default), so a dead or slow collector
must cost dropped telemetry, never request latency or unbounded memory.

Each test names its promise and prints its figures: latency before and during, the service's
resident memory before and after, and how long telemetry took to reach Jaeger again.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.harness import (
    CollectorPorts,
    JaegerServer,
    Server,
    create_database,
    drop_database,
    start_collector,
    start_jaeger,
    wait_until,
)
from tests.harness.latency_proxy import LatencyProxy
from tests.harness.load import (
    Latency,
    Outcome,
    SteadyLoad,
    assert_within_noise,
    between,
    ok_ids,
    server_errors,
)
from tests.harness.observe import MIB, report, rss_bytes
from tests.harness.service import ServiceProcess, start_service

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTOR_CONFIGS = [REPO_ROOT / "otel" / name for name in ("collector.yaml", "collector.jaeger.yaml")]
RATE = 30.0
# An export waits 4 s for a collector slowed by 2 s each way and 10 s (its timeout) for a
# black-holed one: a request that waited on one would take seconds.
NOISE_CEILING_MS = 1000.0
# A quarter of the default span queue (2048), so that it fills within the black-hole phase (the
# service ends some 60-100 spans a second at this rate) and the test sees the bound hold, spans
# dropped, memory flat, rather than a queue still filling up.
SPAN_QUEUE = 512
# The full queue at a generous 8 KiB a span is 4 MiB (16 MiB for the default 2048); 32 MiB leaves
# the rest for the allocator's noise on a loaded machine. Anything that grew with the outage
# itself (a buffer per failed export, a retry list) would pass it within seconds at this rate.
RSS_GROWTH_BOUND = 32 * MIB
# Once the queue is full, the last part of the black-hole phase may not grow by more than this.
PLATEAU_BOUND = 4 * MIB
TELEMETRY_RESUME_TIMEOUT = 45.0


@dataclass
class CollectorStack:
    service: ServiceProcess
    proxy: LatencyProxy
    collector: Server
    ports: CollectorPorts
    jaeger: JaegerServer
    workdir: Path

    def restart_collector(self) -> float:
        """Start the collector again on the same ports; seconds until its health check answers."""
        started = time.monotonic()
        self.collector = start_collector(
            self.workdir,
            COLLECTOR_CONFIGS,
            _collector_env(self.ports, self.jaeger),
            health_port=self.ports.health,
        )
        return time.monotonic() - started

    def rss(self) -> int:
        return rss_bytes(self.service.process.pid)

    def seconds_until_a_new_trace_reaches_jaeger(self) -> float:
        """Predict once, then poll Jaeger for that request's trace (it crosses proxy and collector)."""
        started = time.monotonic()
        response = httpx.post(f"{self.service.url}/predict", json={"symbol": "AAPL"}, timeout=10)
        trace_id = response.json()["trace_id"]
        wait_until(
            lambda: bool(self.jaeger.trace_spans(trace_id)),
            timeout=TELEMETRY_RESUME_TIMEOUT,
            interval=0.5,
            what=f"trace {trace_id} in Jaeger",
        )
        return time.monotonic() - started

    def collector_has_service_metrics(self) -> bool:
        text = httpx.get(f"http://127.0.0.1:{self.ports.prometheus}/metrics", timeout=5).text
        return any(line.startswith("predictions_total{") for line in text.splitlines())


def _collector_env(ports: CollectorPorts, jaeger: JaegerServer) -> dict[str, str]:
    return {**ports.env(traces_endpoint=jaeger.otlp_endpoint), "JAEGER_OTLP_ENDPOINT": jaeger.otlp_endpoint}


@pytest.fixture(scope="module")
def stack(
    seeded_data_dir: Path,
    postgres_server: Server,
    redis_server: Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CollectorStack]:
    workdir = tmp_path_factory.mktemp("faults-collector")
    database = f"faults_collector_{uuid.uuid4().hex[:8]}"
    database_url = create_database(postgres_server, database)
    (workdir / "jaeger").mkdir()
    ports = CollectorPorts.pick()
    jaeger = start_jaeger(workdir / "jaeger")
    with jaeger:
        collector = start_collector(
            workdir, COLLECTOR_CONFIGS, _collector_env(ports, jaeger), health_port=ports.health
        )
        proxy = LatencyProxy(ports.otlp_http).start()
        data_dir = workdir / "data"
        shutil.copytree(seeded_data_dir, data_dir)
        service: ServiceProcess | None = None
        stack: CollectorStack | None = None
        try:
            service = start_service(
                workdir / "service",
                {
                    "DATA_DIR": str(data_dir),
                    "DATABASE_URL": database_url,
                    "REDIS_URL": redis_server.url.replace("/0", "/14"),
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{proxy.address}",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "OTEL_METRIC_EXPORT_INTERVAL": "1000",
                    "OTEL_BSP_SCHEDULE_DELAY": "500",
                    "OTEL_BSP_MAX_QUEUE_SIZE": str(SPAN_QUEUE),
                    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(SPAN_QUEUE // 2),
                },
            )
            stack = CollectorStack(service, proxy, collector, ports, jaeger, workdir)
            stack.seconds_until_a_new_trace_reaches_jaeger()  # the whole path works before any fault
            yield stack
        finally:
            if service is not None:
                service.stop()
            proxy.close()
            (stack.collector if stack is not None else collector).stop()
            drop_database(postgres_server, database)


def _warm_up(load: SteadyLoad, answered: int = 30) -> None:
    wait_until(lambda: len(ok_ids(load.snapshot())) >= answered, timeout=30, what=f"{answered} answers")


def _wait(load: SteadyLoad, seconds: float, what: str) -> tuple[float, float]:
    start = load.elapsed()
    wait_until(lambda: load.elapsed() > start + seconds, timeout=seconds + 10, what=what)
    return start, load.elapsed()


def _assert_every_request_answered(outcomes: list[Outcome]) -> None:
    assert not server_errors(outcomes), server_errors(outcomes)[:3]
    assert all(o.status == 200 for o in outcomes), [o for o in outcomes if o.status != 200][:3]


def test_collector_stopped_under_load_keeps_latency_and_memory_and_telemetry_resumes_on_restart(
    stack: CollectorStack,
) -> None:
    """The collector stopped for 8 s under load: 0 5xx, latency within noise, memory bounded;
    started again, the same service's spans reach Jaeger and its metrics the collector again."""
    with SteadyLoad(stack.service.url, rate=RATE, threads=8) as load:
        _warm_up(load)
        before = _wait(load, 3, "baseline")
        rss_before = stack.rss()
        stack.collector.stop()
        stopped = _wait(load, 8, "predictions with the collector stopped")
        rss_after = stack.rss()
        collector_start = stack.restart_collector()
        resumed_after = stack.seconds_until_a_new_trace_reaches_jaeger()
        wait_until(stack.collector_has_service_metrics, timeout=30, what="metrics in the restarted collector")
        after = _wait(load, 2, "load after recovery")
        outcomes = load.stop()

    _assert_every_request_answered(outcomes)
    latency = {
        name: Latency.of(between(outcomes, *span))
        for name, span in (("before", before), ("stopped", stopped), ("after", after))
    }
    assert_within_noise("stopped", latency["stopped"], latency["before"], ceiling_ms=NOISE_CEILING_MS)
    assert rss_after - rss_before < RSS_GROWTH_BOUND, (rss_before, rss_after)
    report(
        "collector-stopped",
        requests=len(outcomes),
        server_errors=0,
        **{f"latency_{name}": value for name, value in latency.items()},
        rss_before_mib=round(rss_before / MIB, 1),
        rss_after_outage_mib=round(rss_after / MIB, 1),
        collector_restart_seconds=round(collector_start, 1),
        trace_in_jaeger_after_restart_s=round(resumed_after, 2),
    )


def test_a_slow_or_black_holed_collector_never_moves_request_latency_and_memory_stays_bounded(
    stack: CollectorStack,
) -> None:
    """The collector slow (2 s each way), then black-holed for longer than an export's timeout:
    0 5xx, latency within noise, memory bounded; restored, a new trace reaches Jaeger."""
    with SteadyLoad(stack.service.url, rate=RATE, threads=8) as load:
        _warm_up(load)
        before = _wait(load, 3, "baseline")
        rss_before = stack.rss()
        log_offset = stack.service.process.log_size()
        stack.proxy.set_delay(2.0)
        slow = _wait(load, 6, "predictions with a slow collector")
        rss_slow = stack.rss()
        stack.proxy.blackhole()
        _wait(load, 6, "the span queue to fill")
        rss_full = stack.rss()
        hung = _wait(load, 6, "predictions with a black-holed collector")  # 12 s: > the 10 s export timeout
        rss_hung = stack.rss()
        # The SDK logs "Queue full, dropping Span." when it drops (it filters repeats of a line).
        dropped_lines = stack.service.process.log_tail(100_000, since=log_offset).count("Queue full")
        stack.proxy.reset_connections()
        stack.proxy.pass_through()
        resumed_after = stack.seconds_until_a_new_trace_reaches_jaeger()
        after = _wait(load, 2, "load after recovery")
        outcomes = load.stop()

    _assert_every_request_answered(outcomes)
    spans = {"before": before, "slow_2s": slow, "black_holed": hung, "after": after}
    latency = {name: Latency.of(between(outcomes, *span)) for name, span in spans.items()}
    for name in ("slow_2s", "black_holed"):
        assert_within_noise(name, latency[name], latency["before"], ceiling_ms=NOISE_CEILING_MS)
    assert dropped_lines > 0, "the span queue reached its bound (spans were dropped)"
    assert max(rss_slow, rss_full, rss_hung) - rss_before < RSS_GROWTH_BOUND, (rss_before, rss_full, rss_hung)
    assert rss_hung - rss_full < PLATEAU_BOUND, (rss_full, rss_hung)
    report(
        "collector-slow-and-black-holed",
        requests=len(outcomes),
        server_errors=0,
        **{f"latency_{name}": value for name, value in latency.items()},
        rss_before_mib=round(rss_before / MIB, 1),
        rss_slow_mib=round(rss_slow / MIB, 1),
        rss_queue_full_mib=round(rss_full / MIB, 1),
        rss_black_holed_mib=round(rss_hung / MIB, 1),
        queue_full_log_lines=dropped_lines,
        rss_bound_mib=RSS_GROWTH_BOUND // MIB,
        trace_in_jaeger_after_restore_s=round(resumed_after, 2),
        proxied_bytes_to_collector=stack.proxy.stats.bytes_up,
    )
