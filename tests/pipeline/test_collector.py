"""Our collector build and its configs, against the real binary.

- every config (base alone, base + each layer) passes the binary's own `validate`;
- the binary contains exactly the components of otel/builder-config.yaml, and the configs use
  nothing else (and nothing in the manifest goes unused);
- live: OTLP from the Python SDK in, Prometheus/OpenMetrics with exemplars, span metrics and the
  capture files out (with the remote-write layer, the same series inside a real Prometheus; with
  the Jaeger layer, the trace inside a real Jaeger).

The binary comes from $OTELCOL_BIN or scripts/build-collector.sh (minutes on the first run).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.harness import (
    CollectorPorts,
    ProcessExitedError,
    Server,
    collector_binary,
    free_port,
    start_collector,
    start_jaeger,
    start_prometheus,
    wait_until,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
OTEL_DIR = REPO_ROOT / "otel"
MANIFEST = OTEL_DIR / "builder-config.yaml"
BASE_CONFIG = OTEL_DIR / "collector.yaml"
CAPTURE_LAYER = OTEL_DIR / "collector.test-capture.yaml"
REMOTE_WRITE_LAYER = OTEL_DIR / "collector.remote-write.yaml"
JAEGER_LAYER = OTEL_DIR / "collector.jaeger.yaml"
LOOPBACK = "127.0.0.1"

# Env each layer needs to validate, besides the defaults written in the files.
LAYERS: dict[str, dict[str, str]] = {
    "collector.remote-write.yaml": {},
    "collector.jaeger.yaml": {},
    "collector.otlp-forward.yaml": {
        "FORWARD_OTLP_ENDPOINT": "https://otlp.example.invalid",
        "FORWARD_OTLP_AUTH_HEADER": "Bearer test-token",
    },
    "collector.debug.yaml": {},
    "collector.test-capture.yaml": {},  # CAPTURE_DIR is added per test
}

# Component kinds as the manifest and `components` name them, and as config sections name them.
MANIFEST_KINDS = ("receivers", "processors", "exporters", "connectors", "extensions", "providers")
CONFIG_KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
SERVICE_NAME = "prediction-api"
# docs/telemetry.md: prediction_duration_seconds bucket boundaries.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
# Generous: the span-metrics connector flushes every 5 s and CI has two busy cores.
PIPELINE_TIMEOUT = 45.0
START_ATTEMPTS = 3
# Labels of the predictions_total series as Prometheus stores them, by either path. (The scrape
# also exposes otel_scope_version and otel_scope_schema_url, empty here; Prometheus drops empty
# labels, so they are not stored.)
PREDICTIONS_LABELS = {"job", "instance", "symbol", "model_version", "otel_scope_name"}


@pytest.fixture(scope="module")
def otelcol() -> str:
    """Path of the collector binary (built on first use; a failed build fails the test)."""
    return collector_binary()


def _run(argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A minimal environment so variables of the developer's shell can't change what is validated.
    base = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run(
        argv, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60, check=False
    )


def _validate(otelcol: str, configs: list[Path], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return _run([otelcol, "validate", *(f"--config={path}" for path in configs)], env)


# --- validate ----------------------------------------------------------------------------------


def test_base_config_validates(otelcol: str) -> None:
    result = _validate(otelcol, [BASE_CONFIG], {})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_base_plus_layer_validates(otelcol: str, layer: str, tmp_path: Path) -> None:
    env = {**LAYERS[layer], "CAPTURE_DIR": str(tmp_path)}
    result = _validate(otelcol, [BASE_CONFIG, OTEL_DIR / layer], env)
    assert result.returncode == 0, result.stderr


def test_all_layers_together_validate(otelcol: str, tmp_path: Path) -> None:
    """Layers that add pipelines must not clash with those that replace exporter lists."""
    env = {key: value for layer_env in LAYERS.values() for key, value in layer_env.items()}
    configs = [BASE_CONFIG, *(OTEL_DIR / layer for layer in sorted(LAYERS))]
    result = _validate(otelcol, configs, {**env, "CAPTURE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def test_validate_rejects_forward_layer_without_endpoint(otelcol: str) -> None:
    """`validate` really checks: the forward layer has no default endpoint on purpose."""
    result = _validate(otelcol, [BASE_CONFIG, OTEL_DIR / "collector.otlp-forward.yaml"], {})
    assert result.returncode != 0
    assert "otlp_http/forward" in result.stderr


# --- components ----------------------------------------------------------------------------------


def _manifest_modules() -> dict[str, set[str]]:
    """`gomod` entries ("module version") of the manifest, per kind."""
    manifest = yaml.safe_load(MANIFEST.read_text())
    return {kind: {entry["gomod"] for entry in manifest.get(kind) or []} for kind in MANIFEST_KINDS}


def _built_components(otelcol: str) -> dict[str, dict[str, str]]:
    """What the binary says it contains: kind -> {component type or scheme: "module version"}."""
    result = _run([otelcol, "components"])
    assert result.returncode == 0, result.stderr
    listing = yaml.safe_load(result.stdout)
    built: dict[str, dict[str, str]] = {}
    for kind in MANIFEST_KINDS:
        key = "scheme" if kind == "providers" else "name"
        built[kind] = {entry[key]: entry["module"] for entry in listing.get(kind) or []}
    return built


def _config_types(path: Path) -> dict[str, set[str]]:
    """Component types a config file defines, per kind (`otlp_grpc/tempo` -> `otlp_grpc`)."""
    config = yaml.safe_load(path.read_text())
    return {kind: {name.split("/")[0] for name in config.get(kind) or {}} for kind in CONFIG_KINDS}


def test_binary_contains_exactly_the_manifest(otelcol: str) -> None:
    built = _built_components(otelcol)
    for kind, modules in _manifest_modules().items():
        assert set(built[kind].values()) == modules, kind


def test_configs_use_only_built_components_and_all_of_them(otelcol: str) -> None:
    built = _built_components(otelcol)
    used: dict[str, set[str]] = {kind: set() for kind in CONFIG_KINDS}
    for path in sorted(OTEL_DIR.glob("collector*.yaml")):
        for kind, types in _config_types(path).items():
            missing = types - set(built[kind])
            assert not missing, f"{path.name} uses {kind} not in the build: {sorted(missing)}"
            used[kind] |= types
    for kind in CONFIG_KINDS:
        assert used[kind] == set(built[kind]), f"{kind} built but unused: {set(built[kind]) - used[kind]}"


def test_manifest_pins_one_release() -> None:
    """All v0.x modules share one version, all v1.x modules another (their lockstep pair)."""
    versions = {gomod.split()[1] for modules in _manifest_modules().values() for gomod in modules}
    manifest = yaml.safe_load(MANIFEST.read_text())
    versions.add(manifest["telemetry"]["gomod"].split()[1])
    beta = {version for version in versions if version.startswith("v0.")}
    stable = versions - beta
    assert len(beta) == 1, beta
    assert len(stable) <= 1, stable


# --- live pipeline -------------------------------------------------------------------------------


def collector_env(ports: CollectorPorts) -> dict[str, str]:
    # Nothing listens at the trace endpoint: the Tempo exporter queues and retries, which must not
    # hold up the other outputs of the traces pipeline.
    return ports.env(traces_endpoint=f"{LOOPBACK}:{free_port()}")


@dataclass(frozen=True)
class SentTelemetry:
    """What the fake service sent: ids to look for downstream."""

    instance_id: str
    trace_id: str
    root_span_id: str
    child_span_id: str


@contextlib.contextmanager
def _prediction_telemetry(ports: CollectorPorts) -> Iterator[SentTelemetry]:
    """Act as the service: one prediction span (with a child) and its metrics, flushed.

    Traces go over OTLP/gRPC and metrics over OTLP/HTTP so both receiver protocols are exercised.
    The histogram is recorded inside the sampled span, so the SDK attaches an exemplar with its
    trace id (default exemplar filter: trace_based). The providers stay open until the caller is
    done: shutting the meter provider down exports once more, without exemplars (the reservoir
    was emptied by the flush), and the exporter keeps only the latest point.
    """
    instance_id = f"test-{uuid.uuid4()}"
    resource = Resource.create({"service.name": SERVICE_NAME, "service.instance.id": instance_id})
    span_exporter = OTLPSpanExporter(endpoint=f"{LOOPBACK}:{ports.otlp_grpc}", insecure=True)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"http://{LOOPBACK}:{ports.otlp_http}/v1/metrics"),
        export_interval_millis=3_600_000,  # only our force_flush exports
    )
    view = View(
        instrument_name="prediction.duration",
        aggregation=ExplicitBucketHistogramAggregation(boundaries=DURATION_BUCKETS),
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader], views=[view])
    try:
        tracer = tracer_provider.get_tracer("tests.pipeline")
        meter = meter_provider.get_meter("tests.pipeline")
        duration = meter.create_histogram("prediction.duration", unit="s", description="prediction time")
        predictions = meter.create_counter("predictions", unit="{prediction}", description="served")
        labels = {"symbol": "AAPL", "model_version": "7", "outcome": "success"}
        with tracer.start_as_current_span("predict AAPL") as root:
            with tracer.start_as_current_span("feature lookup") as child:
                child_id = child.get_span_context().span_id
            duration.record(0.042, labels)
            predictions.add(1, {"symbol": "AAPL", "model_version": "7"})
            context = root.get_span_context()
        assert tracer_provider.force_flush(10_000), "spans not exported"
        assert meter_provider.force_flush(10_000), "metrics not exported"
        yield SentTelemetry(
            instance_id=instance_id,
            trace_id=format(context.trace_id, "032x"),
            root_span_id=format(context.span_id, "016x"),
            child_span_id=format(child_id, "016x"),
        )
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


def _scrape(ports: CollectorPorts) -> dict[str, list[Sample]]:
    """Samples of the collector's Prometheus endpoint in OpenMetrics, by family name."""
    response = httpx.get(
        f"http://{LOOPBACK}:{ports.prometheus}/metrics", headers={"Accept": OPENMETRICS}, timeout=5
    )
    response.raise_for_status()
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def _poll_scrape(ports: CollectorPorts, *families: str) -> dict[str, list[Sample]]:
    """Scrape until every family in `families` is exposed; return that scrape."""
    latest: dict[str, list[Sample]] = {}

    def exposed() -> bool:
        nonlocal latest
        latest = _scrape(ports)
        return all(latest.get(name) for name in families)

    wait_until(exposed, timeout=PIPELINE_TIMEOUT, interval=0.5, what=f"{families} on the exporter")
    return latest


def _exemplar_trace_ids(samples: list[Sample]) -> set[str]:
    return {sample.exemplar.labels.get("trace_id", "") for sample in samples if sample.exemplar}


def _captured_spans(path: Path) -> list[dict[str, Any]]:
    """Spans in the file exporter's output (one OTLP/JSON request per line; ids are hex)."""
    if not path.exists():
        return []
    spans = []
    for line in path.read_text().splitlines():
        for resource_spans in json.loads(line).get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                spans.extend(scope_spans.get("spans", []))
    return spans


@pytest.fixture
def live_collector(otelcol: str, tmp_path: Path) -> Iterator[tuple[Server, CollectorPorts, Path]]:
    """The base config plus the capture layer, on free loopback ports.

    A port picked free can be taken by another process before the collector binds it (tests of
    other suites run in parallel on the same machine): then pick new ports, a few times at most.
    """
    capture_dir = tmp_path / "capture"
    capture_dir.mkdir()
    for attempt in range(START_ATTEMPTS):
        ports = CollectorPorts.pick()
        env = {**collector_env(ports), "CAPTURE_DIR": str(capture_dir)}
        try:
            server = start_collector(tmp_path, [BASE_CONFIG, CAPTURE_LAYER], env, health_port=ports.health)
        except ProcessExitedError as exc:
            if "address already in use" not in str(exc) or attempt == START_ATTEMPTS - 1:
                raise
            continue
        with server:
            yield server, ports, capture_dir
        return


def test_live_metrics_exemplars_span_metrics_and_capture(
    live_collector: tuple[Server, CollectorPorts, Path],
) -> None:
    _server, ports, capture_dir = live_collector
    with _prediction_telemetry(ports) as sent:
        _assert_pipeline_outputs(ports, capture_dir, sent)


def _assert_pipeline_outputs(ports: CollectorPorts, capture_dir: Path, sent: SentTelemetry) -> None:
    identity = {"job": SERVICE_NAME, "instance": sent.instance_id}

    scraped = _poll_scrape(ports, "prediction_duration_seconds", "predictions")

    buckets = [s for s in scraped["prediction_duration_seconds"] if s.name.endswith("_bucket")]
    assert {float(s.labels["le"]) for s in buckets} == {*map(float, DURATION_BUCKETS), float("inf")}
    assert all(identity.items() <= s.labels.items() for s in buckets), buckets[0].labels
    assert all(s.labels["symbol"] == "AAPL" and s.labels["outcome"] == "success" for s in buckets)
    assert sent.trace_id in _exemplar_trace_ids(buckets), "no exemplar carries the span's trace id"
    # 0.042 s falls into the (0.025, 0.05] bucket, and only there.
    counts = {float(s.labels["le"]): s.value for s in buckets}
    assert counts[0.025] == 0
    assert counts[0.05] == 1

    totals = [s for s in scraped["predictions"] if s.name == "predictions_total"]
    assert len(totals) == 1
    assert totals[0].value == 1
    assert identity.items() <= totals[0].labels.items()
    assert {name for name, value in totals[0].labels.items() if value} == PREDICTIONS_LABELS

    # Every other resource attribute stays on target_info rather than on each series.
    assert "service_name" not in totals[0].labels
    assert any(identity.items() <= s.labels.items() for s in scraped["target_info"])

    _assert_span_metrics(ports, sent, identity)

    # The capture file holds the exported spans with their parent link.
    traces_file = capture_dir / "traces.json"

    def both_spans_captured() -> bool:
        return len([s for s in _captured_spans(traces_file) if s["traceId"] == sent.trace_id]) == 2

    wait_until(both_spans_captured, timeout=PIPELINE_TIMEOUT, what=f"trace {sent.trace_id} in {traces_file}")
    by_id = {s["spanId"]: s for s in _captured_spans(traces_file) if s["traceId"] == sent.trace_id}
    assert by_id[sent.child_span_id]["parentSpanId"] == sent.root_span_id
    assert by_id[sent.root_span_id]["name"] == "predict AAPL"

    metrics_file = capture_dir / "metrics.json"
    wait_until(
        lambda: metrics_file.exists() and '"prediction.duration"' in metrics_file.read_text(),
        timeout=PIPELINE_TIMEOUT,
        what=f"prediction.duration in {metrics_file}",
    )


def _span_samples(scraped: dict[str, list[Sample]], family: str, suffix: str) -> list[Sample]:
    """Samples of the test's root span ("predict AAPL") in a span-metrics family."""
    return [
        s
        for s in scraped.get(family, [])
        if s.name == family + suffix and s.labels.get("span_name") == "predict AAPL"
    ]


def _assert_span_metrics(ports: CollectorPorts, sent: SentTelemetry, identity: dict[str, str]) -> None:
    """Request rate/errors (calls) and latency (duration) derived from the same spans.

    The connector exports a new counter series as 0 first and the real count one flush later
    (so Prometheus' rate() sees the first increase), and keeps exemplars for one flush only:
    so poll until the count is there, collecting exemplars from every scrape on the way.
    """
    calls_family, duration_family = "traces_span_metrics_calls", "traces_span_metrics_duration_seconds"
    exemplar_trace_ids: set[str] = set()
    latest: dict[str, list[Sample]] = {}

    def counted() -> bool:
        nonlocal latest
        latest = _scrape(ports)
        exemplar_trace_ids.update(_exemplar_trace_ids(_span_samples(latest, duration_family, "_bucket")))
        calls = _span_samples(latest, calls_family, "_total")
        return bool(calls) and calls[0].value >= 1

    wait_until(counted, timeout=PIPELINE_TIMEOUT, interval=0.5, what="span-metrics calls for the root span")
    calls = _span_samples(latest, calls_family, "_total")
    assert len(calls) == 1, latest[calls_family]
    assert calls[0].value == 1
    assert identity.items() <= calls[0].labels.items()
    assert calls[0].labels["service_name"] == SERVICE_NAME
    assert calls[0].labels["status_code"] == "STATUS_CODE_UNSET"
    assert calls[0].labels["span_kind"] == "SPAN_KIND_INTERNAL"

    span_buckets = _span_samples(latest, duration_family, "_bucket")
    assert {float(s.labels["le"]) for s in span_buckets} == {*map(float, DURATION_BUCKETS), float("inf")}
    assert sent.trace_id in exemplar_trace_ids, "no span-metrics exemplar carries the span's trace id"


def test_live_ports_come_from_env(live_collector: tuple[Server, CollectorPorts, Path]) -> None:
    """Health, self-telemetry and exporter endpoints answer on the ports we chose."""
    server, ports, _capture_dir = live_collector
    assert httpx.get(f"{server.url}/", timeout=5).status_code == 200
    own = httpx.get(f"http://{LOOPBACK}:{ports.telemetry}/metrics", timeout=5)
    assert own.status_code == 200
    assert "otelcol_process_uptime" in own.text
    assert httpx.get(f"http://{LOOPBACK}:{ports.prometheus}/metrics", timeout=5).status_code == 200


# --- remote write into a real Prometheus ---------------------------------------------------------


def _prom_query(prometheus: Server, path: str, **params: str) -> Any:
    response = httpx.get(f"{prometheus.url}/api/v1/{path}", params=params, timeout=5)
    response.raise_for_status()
    return response.json()["data"]


def test_remote_write_gives_the_scrape_names_labels_and_exemplars(otelcol: str, tmp_path: Path) -> None:
    """The remote-write layer lands the same series names and labels in Prometheus (3.5 here).

    Differences the README documents are asserted too, so a release that changes them fails here:
    `le` is stored "1"/"2" as the exporter writes it (a Prometheus 3 scrape stores "1.0"/"2.0").
    """
    (tmp_path / "prometheus.yml").write_text("# remote write only: nothing to scrape\nglobal: {}\n")
    with start_prometheus(tmp_path, tmp_path / "prometheus.yml") as prometheus:
        ports = CollectorPorts.pick()
        env = {**collector_env(ports), "PROMETHEUS_REMOTE_WRITE_URL": f"{prometheus.url}/api/v1/write"}
        configs = [BASE_CONFIG, REMOTE_WRITE_LAYER]
        with (
            start_collector(tmp_path, configs, env, health_port=ports.health),
            _prediction_telemetry(ports) as sent,
        ):
            selector = f'{{job="{SERVICE_NAME}",instance="{sent.instance_id}"}}'

            def span_calls_counted() -> bool:
                query = f'traces_span_metrics_calls_total{selector[:-1]},span_name="predict AAPL"}} >= 1'
                return bool(_prom_query(prometheus, "query", query=query)["result"])

            wait_until(span_calls_counted, timeout=PIPELINE_TIMEOUT, interval=0.5, what="span metrics")

            totals = _prom_query(prometheus, "query", query=f"predictions_total{selector}")["result"]
            assert len(totals) == 1
            assert totals[0]["value"][1] == "1"
            assert set(totals[0]["metric"]) - {"__name__"} == PREDICTIONS_LABELS

            buckets = _prom_query(prometheus, "query", query=f"prediction_duration_seconds_bucket{selector}")
            les = {series["metric"]["le"] for series in buckets["result"]}
            assert les == {f"{bound:g}" for bound in DURATION_BUCKETS} | {"+Inf"}
            assert "1" in les  # not "1.0"

            query = f"prediction_duration_seconds_bucket{selector}"
            exemplars = _prom_query(prometheus, "query_exemplars", query=query, start="0", end="4102444800")
            trace_ids = {e["labels"].get("trace_id") for series in exemplars for e in series["exemplars"]}
            assert sent.trace_id in trace_ids

            info = _prom_query(prometheus, "query", query=f"target_info{selector}")["result"]
            assert len(info) == 1
            assert info[0]["metric"]["telemetry_sdk_language"] == "python"


# --- the Jaeger layer into a real Jaeger -----------------------------------------------------------


def test_jaeger_layer_delivers_the_trace_to_jaeger(otelcol: str, tmp_path: Path) -> None:
    """Base + collector.jaeger.yaml: the spans arrive in Jaeger, parent link intact, and the span
    metrics still come out (the layer repeats span_metrics/red in the list it replaces)."""
    (tmp_path / "jaeger").mkdir()
    with start_jaeger(tmp_path / "jaeger") as jaeger:
        ports = CollectorPorts.pick()
        # TRACES_OTLP_ENDPOINT (the Tempo exporter's) points nowhere: only the layer's exporter is used.
        env = {**collector_env(ports), "JAEGER_OTLP_ENDPOINT": jaeger.otlp_endpoint}
        with (
            start_collector(tmp_path, [BASE_CONFIG, JAEGER_LAYER], env, health_port=ports.health),
            _prediction_telemetry(ports) as sent,
        ):
            spans: list[dict[str, Any]] = []

            def both_spans_in_jaeger() -> bool:
                spans[:] = jaeger.trace_spans(sent.trace_id)
                return len(spans) == 2

            what = f"trace {sent.trace_id} in Jaeger"
            wait_until(both_spans_in_jaeger, timeout=PIPELINE_TIMEOUT, what=what)
            by_id = {span["spanId"]: span for span in spans}
            assert by_id[sent.child_span_id]["parentSpanId"] == sent.root_span_id
            assert by_id[sent.root_span_id]["name"] == "predict AAPL"
            assert "parentSpanId" not in by_id[sent.root_span_id]
            # The API Grafana's Jaeger datasource reads (v1 JSON): the same trace.
            legacy = httpx.get(f"{jaeger.url}/api/traces/{sent.trace_id}", timeout=10).raise_for_status()
            assert {span["spanID"] for span in legacy.json()["data"][0]["spans"]} == set(by_id)
            _poll_scrape(ports, "traces_span_metrics_calls")
