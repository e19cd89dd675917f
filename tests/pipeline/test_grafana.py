"""Grafana provisioning and dashboards: structure without a server, every query against a real Prometheus.

Grafana itself can't run here (no Docker, no Grafana package), so these tests check what Grafana
would send: each panel's PromQL, after substituting the variables Grafana substitutes, must be
accepted by Prometheus 3.5 (the release compose.yaml runs) and return data for a TSDB shaped like
docs/telemetry.md.

Live data: an OpenMetrics file with every contract metric (30 minutes at 15 s steps, ending a
minute ago) is turned into TSDB blocks with `promtool tsdb create-blocks-from openmetrics`, then
Prometheus is started on them. Backfilled data has no recording-rule outputs, so the recording
rules of prometheus/rules/*.yml are backfilled too, by Prometheus's own tool: `promtool tsdb
create-blocks-from rules` evaluates them against the running server over the same window; the
resulting blocks are moved into the data directory and Prometheus is restarted. Dashboards are
then queried with the rule names as they are, exactly as Grafana does.

Exemplars can't be backfilled (promtool drops them), so a second Prometheus scrapes an in-test
OpenMetrics endpoint whose buckets carry exemplars; every exemplar-enabled panel query must return
them with the trace-id label the Grafana datasource links to Tempo.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import Server, built_binary, free_port, start_prometheus, wait_until
from tests.harness.dashboards import (
    DASHBOARD_FILES,
    DASHBOARDS,
    all_targets,
    grafana_intervals,
    panels,
    queried_panels,
)
from tests.harness.dashboards import substitute as substitute_values

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
DATASOURCES_FILE = GRAFANA / "provisioning" / "datasources" / "datasources.yaml"
JAEGER_CONFIG = REPO / "deploy" / "jaeger.yaml"
PROVIDERS_FILE = GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml"
TELEMETRY_DOC = REPO / "docs" / "telemetry.md"
RULES_DIR = REPO / "prometheus" / "rules"
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"

# What the seed (SEED.md) promises on each dashboard; other panels may be added around them.
SEED_PANELS = {
    "mlops-overview": [
        "Predictions per minute",
        "95th percentile response time",
        "Feature store cache hit rate",
        "Database operations rate",
        "Predictions by symbol",
        "Response time distribution",
        "System health timeline",
        "Model performance by version",
    ],
    "model-monitoring": [
        "Model accuracy trends by symbol",
        "Prediction confidence distribution",
        "Model drift detection",
        "Feature importance heatmap",
    ],
}

# Series Prometheus makes itself rather than the service: the scrape health and the alert state.
BUILTIN_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Grafana query-variable helpers, which never reach Prometheus as PromQL.
GRAFANA_TEMPLATE_FUNCTIONS = {"label_values", "label_names", "metrics", "query_result"}

# --- loading ------------------------------------------------------------------------------------


def datasources() -> list[dict[str, Any]]:
    return yaml.safe_load(DATASOURCES_FILE.read_text())["datasources"]  # type: ignore[no-any-return]


def datasource(uid: str) -> dict[str, Any]:
    return next(ds for ds in datasources() if ds["uid"] == uid)


@dataclass(frozen=True)
class ContractMetric:
    name: str
    kind: str  # counter, gauge or histogram


def contract_metrics() -> dict[str, ContractMetric]:
    """The metric table of docs/telemetry.md: `| \\`name\\` | kind | labels | meaning |`."""
    found = {}
    for line in TELEMETRY_DOC.read_text().splitlines():
        match = re.match(r"^\|\s*`([a-zA-Z_][a-zA-Z0-9_]*)`\s*\|\s*(counter|gauge|histogram)\b", line)
        if match:
            found[match[1]] = ContractMetric(match[1], match[2])
    return found


def rule_files() -> list[Path]:
    return sorted([*RULES_DIR.glob("*.yml"), *RULES_DIR.glob("*.yaml")])


# --- PromQL name extraction -----------------------------------------------------------------------

_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_PROMQL_OPERATORS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects (a small lexer, enough for the queries we write)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, regexes
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    keywords = "|".join(_PROMQL_KEYWORDS)
    text = re.sub(rf"\b({keywords})\s*\([^)]*\)", " ", text)  # grouping label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*", text):
        word = match[0]
        is_call = text[match.end() :].lstrip().startswith("(")
        if is_call or word.lower() in _PROMQL_OPERATORS or word in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def contract_name(series: str, contract: dict[str, ContractMetric]) -> str | None:
    """The contract metric a series name belongs to (histograms expose _bucket/_sum/_count)."""
    if series in contract and contract[series].kind != "histogram":
        return series
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and base in contract and contract[base].kind == "histogram":
            return base
    return None


def test_metric_name_lexer() -> None:
    """The lexer the name checks rely on: functions, grouping labels and matchers are not names."""
    expr = (
        'histogram_quantile(0.95, sum by (le, symbol) (rate(a_bucket{symbol=~"$symbol"}[$__rate_interval])))'
        ' / on (job) group_left (x) job:b:rate5m{job="j"} and ignoring(y) c offset 5m'
    )
    assert metric_names(expr) == {"a_bucket", "job:b:rate5m", "c"}


# --- structure (no server) ----------------------------------------------------------------------


def build_module() -> Any:
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_json_is_the_generator_output() -> None:
    """The JSON Grafana loads must be what build_dashboards.py makes, or a review reads the wrong thing."""
    expected = build_module().outputs()
    assert sorted(expected) == DASHBOARD_FILES, "dashboards directory holds files the generator doesn't make"
    for path, text in expected.items():
        assert path.read_text() == text, (
            f"{path.name} is stale: run .venv/bin/python grafana/build_dashboards.py"
        )


def test_dashboards_have_fixed_unique_uids() -> None:
    uids = [board["uid"] for board in DASHBOARDS.values()]
    assert sorted(uids) == ["mlops-overview", "model-monitoring"]
    assert {path.stem for path in DASHBOARD_FILES} == set(uids), "file name should be the uid"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_settings(name: str) -> None:
    board = DASHBOARDS[name]
    assert board["refresh"] == "5s"
    assert board["schemaVersion"] >= 39
    assert board["title"]
    assert board["description"]
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    titles = [panel["title"] for panel in queried_panels(board)]
    assert len(titles) == len(set(titles)), f"duplicate panel titles in {name}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_seed_panels_exist(name: str) -> None:
    titles = {panel["title"] for panel in queried_panels(DASHBOARDS[name])}
    missing = [title for title in SEED_PANELS[name] if title not in titles]
    assert not missing, f"{name} lacks seed panels {missing}"


def test_dashboards_link_to_each_other() -> None:
    for board in DASHBOARDS.values():
        others = {other["uid"] for other in DASHBOARDS.values()} - {board["uid"]}
        urls = {link.get("url") for link in board["links"]}
        assert {f"/d/{uid}" for uid in others} <= urls, f"{board['uid']} links to {urls}"
        assert all(link.get("keepTime") and link.get("includeVars") for link in board["links"])


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_template_variables(name: str) -> None:
    variables = {var["name"]: var for var in DASHBOARDS[name]["templating"]["list"]}
    assert variables["symbol"]["query"]["query"] == "label_values(predictions_total, symbol)"
    assert variables["model_version"]["query"]["query"].startswith("label_values(predictions_total")
    assert variables["model_version"]["query"]["query"].endswith(", model_version)")
    for var in variables.values():
        assert var["datasource"]["uid"] in provisioned_uids()
        # Panels filter with =~, and All as ".*" lets a new symbol or version show up at once.
        assert (var["multi"], var["includeAll"], var["allValue"]) == (True, True, ".*"), var["name"]


def provisioned_uids() -> set[str]:
    return {ds["uid"] for ds in datasources()}


def test_every_datasource_reference_is_provisioned() -> None:
    uids = provisioned_uids()
    for board in DASHBOARDS.values():
        for panel in queried_panels(board):
            assert panel["datasource"]["uid"] in uids, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids, (panel["title"], target["refId"])
        for annotation in board["annotations"]["list"]:
            if not annotation.get("builtIn"):
                assert annotation["datasource"]["uid"] in uids, annotation["name"]


def test_every_panel_queries_something_and_explains_itself() -> None:
    for uid, panel, target in all_targets():
        assert target.get("expr", "").strip(), f"{uid}/{panel['title']}/{target['refId']} has no expr"
    for board in DASHBOARDS.values():
        for panel in queried_panels(board):
            assert panel["targets"], f"{panel['title']} has no targets"
            assert len(panel.get("description", "")) > 20, f"{panel['title']} needs a description"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']} has no unit"
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), f"{panel['title']} repeats a refId"


def test_latency_panels_show_exemplars() -> None:
    """Latency graphs link to traces; exemplars only exist on raw bucket series, not on rule outputs."""
    latency_panels = [
        panel
        for board in DASHBOARDS.values()
        for panel in queried_panels(board)
        if panel["type"] in {"timeseries", "heatmap"}
        and any("duration_seconds_bucket" in target["expr"] for target in panel["targets"])
    ]
    assert len(latency_panels) >= 4
    for panel in latency_panels:
        assert any(target["exemplar"] for target in panel["targets"]), f"{panel['title']}: exemplars off"
    for _, panel, target in all_targets():
        if target["exemplar"]:
            assert re.search(r"[a-z_]+_bucket[{[]", target["expr"]), (
                f"{panel['title']}: exemplar on non-bucket"
            )


def test_heatmaps_of_histograms_use_heatmap_format() -> None:
    for _, panel, target in all_targets():
        if panel["type"] == "heatmap" and "_bucket" in target["expr"]:
            assert target["format"] == "heatmap", panel["title"]
            assert "by (le)" in target["expr"], panel["title"]
            assert panel["options"]["calculate"] is False, "Prometheus buckets must not be re-bucketed"


def test_every_metric_name_is_in_the_contract_or_a_rule() -> None:
    """A typo in a metric name shows as an empty panel in Grafana; here it fails."""
    contract = contract_metrics()
    assert len(contract) >= 20, "could not read the metric table of docs/telemetry.md"
    rules = recording_rules_by_name()
    unknown = []
    for uid, panel, target in all_targets():
        for name in metric_names(target["expr"]):
            if name in BUILTIN_SERIES or contract_name(name, contract):
                continue
            if ":" in name and name in rules:
                continue
            unknown.append(f"{uid}/{panel['title']}/{target['refId']}: {name}")
    for board in DASHBOARDS.values():
        for annotation in board["annotations"]["list"]:
            for name in metric_names(annotation.get("expr", "")):
                if not contract_name(name, contract):
                    unknown.append(f"{board['uid']}/annotation {annotation['name']}: {name}")
    assert not unknown, (
        f"names neither in docs/telemetry.md nor recorded by {RULES_DIR}/*.yml "
        f"(rule files found: {[p.name for p in rule_files()]}):\n" + "\n".join(unknown)
    )


def test_prometheus_datasource() -> None:
    prom = datasource("prometheus")
    assert prom["type"] == "prometheus"
    assert prom["url"] == "http://prometheus:9090"
    scrape_interval = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    # Grafana's smallest $__interval, and the base of $__rate_interval, is the scrape interval.
    assert prom["jsonData"]["timeInterval"] == scrape_interval == "5s"
    destinations = prom["jsonData"]["exemplarTraceIdDestinations"]
    # The collector's prometheus exporter names the exemplar label trace_id (otlptranslator); each
    # trace backend gets a link, with a label that says which.
    assert [(d["name"], d["datasourceUid"]) for d in destinations] == [
        ("trace_id", "tempo"),
        ("trace_id", "jaeger"),
    ]
    assert [d["urlDisplayLabel"] for d in destinations] == ["Open trace in Tempo", "Open trace in Jaeger"]
    assert {d["datasourceUid"] for d in destinations} <= provisioned_uids()


def test_tempo_and_alertmanager_datasources() -> None:
    tempo = datasource("tempo")
    assert tempo["type"] == "tempo"
    assert tempo["url"] == "http://tempo:3200"
    to_metrics = tempo["jsonData"]["tracesToMetrics"]
    assert to_metrics["datasourceUid"] == "prometheus"
    assert to_metrics["queries"]
    for item in to_metrics["queries"]:
        # Grafana expands env vars in provisioning files: a literal `$` has to be written `$$`.
        assert "$$__tags" in item["query"], item["name"]
        assert not re.search(r"(?<!\$)\$(?!\$)", item["query"]), f"unescaped $ in {item['name']}"
    assert datasource("alertmanager")["type"] == "alertmanager"


def test_jaeger_datasource() -> None:
    """Jaeger's query API at the port deploy/jaeger.yaml listens on, with Tempo's span -> metrics
    links (one YAML anchor, so the two cannot drift apart)."""
    jaeger = datasource("jaeger")
    assert jaeger["type"] == "jaeger"
    query_endpoint = yaml.safe_load(JAEGER_CONFIG.read_text())["extensions"]["jaeger_query"]["http"][
        "endpoint"
    ]
    port = re.fullmatch(r"\$\{env:\w+:-[\d.]+:(\d+)\}", query_endpoint)
    assert port, query_endpoint
    assert jaeger["url"] == f"http://jaeger:{port[1]}"
    assert jaeger["jsonData"]["tracesToMetrics"] == datasource("tempo")["jsonData"]["tracesToMetrics"]
    assert jaeger["editable"] is False


def test_dashboard_provider() -> None:
    providers = yaml.safe_load(PROVIDERS_FILE.read_text())["providers"]
    assert [(p["type"], p["folder"], p["options"]["path"]) for p in providers] == [
        ("file", "MLOps", "/var/lib/grafana/dashboards")
    ]


# --- synthetic data shaped like the contract ----------------------------------------------------

STEP = 15  # seconds between samples
WINDOW = 30 * 60  # seconds of data
STEPS = WINDOW // STEP
SYMBOLS = ("AAPL", "MSFT")
VERSIONS = ("1", "2")
FEATURES = ("return_1d", "volatility_5d", "rsi_14")
SERVICE = {"job": "prediction-api", "instance": "api-0"}
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
CONFIDENCE_BOUNDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
DEFAULT_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

Labels = dict[str, str]
Sample = tuple[str, Labels, float]


@dataclass(frozen=True)
class Family:
    """One metric family: its OpenMetrics name and type, and its samples at step i (0..STEPS-1)."""

    name: str
    kind: str
    samples: Callable[[int], list[Sample]]


def grid(**axes: tuple[str, ...]) -> list[Labels]:
    """All combinations of label values, each with the service's job and instance."""
    combos: list[Labels] = [dict(SERVICE)]
    for label, values in axes.items():
        combos = [{**combo, label: value} for combo in combos for value in values]
    return combos


def counter(name: str, label_sets: list[Labels], per_step: Callable[[Labels, int], float]) -> Family:
    """A counter that grows by per_step(labels, i) each step; `name` is the contract's `*_total`."""
    family = name.removesuffix("_total")

    def samples(i: int) -> list[Sample]:
        return [(name, labels, sum(per_step(labels, k) for k in range(i + 1))) for labels in label_sets]

    return Family(family, "counter", samples)


def gauge(name: str, label_sets: list[Labels], value: Callable[[Labels, int], float | None]) -> Family:
    def samples(i: int) -> list[Sample]:
        return [(name, labels, v) for labels in label_sets if (v := value(labels, i)) is not None]

    return Family(name, "gauge", samples)


def histogram(
    name: str,
    label_sets: list[Labels],
    bounds: tuple[float, ...],
    cdf: Callable[[float], float],
    *,
    per_step: float,
    mean: float,
) -> Family:
    """Cumulative buckets from a fixed distribution; per_step observations arrive each step."""

    def samples(i: int) -> list[Sample]:
        out: list[Sample] = []
        for n, labels in enumerate(label_sets):
            total = float(int(per_step * (1 + 0.25 * n) * (i + 1)))
            for bound in bounds:
                out.append(
                    (f"{name}_bucket", {**labels, "le": repr(float(bound))}, math.floor(total * cdf(bound)))
                )
            out.append((f"{name}_bucket", {**labels, "le": "+Inf"}, total))
            out.append((f"{name}_count", labels, total))
            out.append((f"{name}_sum", labels, total * mean))
        return out

    return Family(name, "histogram", samples)


def log_logistic(median: float, shape: float = 2.5) -> Callable[[float], float]:
    return lambda x: 1.0 / (1.0 + (median / x) ** shape)


def synthetic_families() -> list[Family]:
    """Every metric of docs/telemetry.md, plus the liveness `up` and an `ALERTS` series."""
    symbols = grid(symbol=SYMBOLS, model_version=VERSIONS)
    wave = lambda i, phase=0.0: math.sin(i / 12 + phase)  # noqa: E731 - tiny shared shape
    dependency_down = range(50, 56)  # a Redis outage: health degraded, hit rate dips
    return [
        counter("predictions_total", symbols, lambda ls, i: 2 + SYMBOLS.index(ls["symbol"])),
        histogram(
            "prediction_duration_seconds",
            grid(symbol=SYMBOLS, model_version=VERSIONS, outcome=("success", "error")),
            LATENCY_BOUNDS,
            log_logistic(0.03),
            per_step=20,
            mean=0.04,
        ),
        histogram(
            "prediction_confidence",
            symbols,
            CONFIDENCE_BOUNDS,
            lambda b: min(1.0, max(0.0, (b - 0.5) / 0.5)) ** 0.7,
            per_step=20,
            mean=0.68,
        ),
        counter(
            "prediction_errors_total",
            grid(reason=("unknown_symbol", "invalid_input", "no_data", "model_unavailable", "internal")),
            lambda ls, i: 0.5 if ls["reason"] == "unknown_symbol" else 0.05,
        ),
        gauge("model_accuracy", symbols, lambda ls, i: 0.76 + 0.04 * wave(i, SYMBOLS.index(ls["symbol"]))),
        gauge("model_resolved_predictions", symbols, lambda ls, i: float(min(i, 60))),
        gauge("model_pending_predictions", grid(symbol=SYMBOLS), lambda ls, i: float(5 + i % 7)),
        gauge("model_drift_score", symbols, lambda ls, i: 0.05 + 0.22 * i / STEPS),
        gauge(
            "model_feature_drift",
            grid(symbol=SYMBOLS, feature=FEATURES, model_version=VERSIONS),
            lambda ls, i: (0.03 + 0.2 * i / STEPS) * (1 + FEATURES.index(ls["feature"])) / 3,
        ),
        gauge("model_prediction_drift", symbols, lambda ls, i: 0.04 + 0.02 * wave(i)),
        gauge(
            "model_feature_importance",
            grid(feature=FEATURES, model_version=VERSIONS),
            lambda ls, i: (1 + FEATURES.index(ls["feature"])) / 6,
        ),
        gauge(
            "model_info",
            [
                {
                    **SERVICE,
                    "model_version": version,
                    "model_name": "stock-direction",
                    "feature_set_version": "v1",
                    "trained_at": f"2025-01-0{version}T00:00:00Z",
                    "validation_accuracy": "0.78",
                }
                for version in VERSIONS
            ],
            lambda ls, i: 1.0,
        ),
        counter(
            "model_reloads_total",
            grid(outcome=("success", "failure")),
            lambda ls, i: 1.0 if ls["outcome"] == "success" and i in (40, 80) else 0.0,
        ),
        counter(
            "feature_store_hits_total",
            grid(level=("l1", "redis")),
            lambda ls, i: 6.0 if ls["level"] == "l1" else (0.0 if i in dependency_down else 3.0),
        ),
        counter("feature_store_misses_total", grid(), lambda ls, i: 4.0 if i in dependency_down else 0.8),
        histogram(
            "feature_computation_duration_seconds",
            grid(),
            DEFAULT_BOUNDS,
            log_logistic(0.08),
            per_step=1,
            mean=0.1,
        ),
        counter(
            "database_operations_total",
            [
                {**SERVICE, "operation": op, "table": table, "outcome": outcome}
                for op, table, outcome in (
                    ("select", "prices", "success"),
                    ("insert", "predictions", "success"),
                    ("update", "predictions", "success"),
                    ("select", "prices", "error"),
                )
            ],
            lambda ls, i: 0.1 if ls["outcome"] == "error" else 3.0,
        ),
        gauge("redis_connection_status", grid(), lambda ls, i: 0.0 if i in dependency_down else 1.0),
        gauge("database_connection_status", grid(), lambda ls, i: 1.0),
        gauge("mlflow_connection_status", grid(), lambda ls, i: 1.0),
        gauge("service_health_status", grid(), lambda ls, i: 1.0 if i in dependency_down else 2.0),
        *prediction_log_families(),
        histogram(
            "http_server_request_duration_seconds",
            [
                {
                    **SERVICE,
                    "http_route": route,
                    "http_request_method": method,
                    "http_response_status_code": code,
                }
                for route, method, code in (
                    ("/predict/{symbol}", "POST", "200"),
                    ("/predict/{symbol}", "POST", "404"),
                    ("/health", "GET", "200"),
                )
            ],
            DEFAULT_BOUNDS,
            log_logistic(0.03),
            per_step=10,
            mean=0.04,
        ),
        gauge(
            "up",
            [{"job": "prediction-api-liveness", "instance": "api:8000"}],
            lambda ls, i: 0.0 if i in range(100, 103) else 1.0,
        ),
        gauge(
            "ALERTS",
            [{"alertname": "ModerateLatency", "alertstate": "firing", "severity": "warning"}],
            lambda ls, i: 1.0 if i >= STEPS // 2 else None,
        ),
    ]


def prediction_log_families() -> list[Family]:
    """The prediction log: a database outage from step 60 to 70 fills the spool, then it drains."""
    outage = range(60, 70)
    spooled = lambda ls, i: 40.0 * (i - 59) if i in outage else 0.0  # noqa: E731
    return [
        gauge("prediction_log_queue_depth", grid(), lambda ls, i: float(i % 3)),
        gauge("prediction_log_spool_rows", grid(), spooled),
        gauge("prediction_log_spool_size_bytes", grid(), lambda ls, i: 330.0 * spooled(ls, i)),
        gauge("prediction_log_spool_capacity_bytes", grid(), lambda ls, i: 64.0 * 1024 * 1024),
        gauge(
            "prediction_log_oldest_row_age_seconds",
            grid(),
            lambda ls, i: 15.0 * (i - 59) if i in outage else 0.01,
        ),
        counter("prediction_log_rows_written_total", grid(), lambda ls, i: 0.0 if i in outage else 20.0),
        counter(
            "prediction_log_rows_failed_total",
            grid(reason=("unavailable", "rejected")),
            lambda ls, i: 5.0 if ls["reason"] == "unavailable" and i in outage else 0.0,
        ),
        histogram(
            "prediction_log_batch_size",
            grid(),
            (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            log_logistic(6.0),
            per_step=4,
            mean=6.0,
        ),
        histogram(
            "prediction_log_write_duration_seconds",
            grid(),
            DEFAULT_BOUNDS,
            log_logistic(0.002),
            per_step=4,
            mean=0.003,
        ),
        counter("prediction_log_spool_syncs_total", grid(), lambda ls, i: 12.0),
        counter("prediction_log_spool_records_total", grid(), lambda ls, i: 20.0),
    ]


def format_labels(labels: Labels) -> str:
    escaped = (f'{key}="{value}"' for key, value in labels.items())
    return "{" + ",".join(escaped) + "}"


def openmetrics(families: list[Family], start: int) -> str:
    """Families one after the other (OpenMetrics forbids interleaving), each series in time order."""
    lines = []
    for family in families:
        lines.append(f"# TYPE {family.name} {family.kind}")
        for i in range(STEPS):
            timestamp = start + i * STEP
            for name, labels, value in family.samples(i):
                lines.append(f"{name}{format_labels(labels)} {float(value)!r} {timestamp}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def test_synthetic_data_covers_the_contract() -> None:
    """The live tests are only as good as their data: every contract metric must be in it."""
    sample_names = {name for family in synthetic_families() for name, _, _ in family.samples(1)}
    contract = contract_metrics()
    covered = {contract_name(name, contract) for name in sample_names}
    assert set(contract) <= covered, f"synthetic data lacks {set(contract) - covered}"


# --- Grafana's variable substitution ------------------------------------------------------------

# Selections to try: Grafana's All (allValue ".*") and one concrete value of each variable.
SELECTIONS = {
    "all": {"symbol": ".*", "model_version": ".*"},
    "one": {"symbol": "AAPL", "model_version": "2"},
}


def substitute(expr: str, selection: dict[str, str]) -> str:
    """Replace what Grafana replaces before the query leaves it.

    $__interval: the step (Grafana's min interval is the scrape interval, 15 s in this data);
    $__rate_interval: max($__interval + scrape interval, 4 x scrape interval) = 60 s here;
    $__range: the dashboard time range = the data window.
    """
    builtins = {
        **grafana_intervals(scrape_seconds=STEP, step_seconds=STEP, range_seconds=WINDOW),
        "__tags": 'job="prediction-api"',  # Tempo's tracesToMetrics: service.name -> job
    }
    return substitute_values(expr, {**builtins, **selection})


def test_substitute() -> None:
    assert substitute('rate(x{symbol=~"$symbol"}[$__rate_interval])', SELECTIONS["one"]) == (
        'rate(x{symbol=~"AAPL"}[60s])'
    )


# --- a real Prometheus loaded with the synthetic data -------------------------------------------


@dataclass(frozen=True)
class LoadedPrometheus:
    server: Server
    start: int
    end: int


def run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def write_config(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(body))
    return path


def api(server: Server, path: str, params: dict[str, Any]) -> dict[str, Any]:
    """GET a Prometheus API path; a rejected query fails the test with Prometheus's own error."""
    response = httpx.get(f"{server.url}{path}", params=params, timeout=30)
    assert response.status_code == 200, f"{params}: {response.text}"
    body: dict[str, Any] = response.json()
    assert body["status"] == "success", f"{params}: {response.text}"
    return body


def query(server: Server, expr: str, *, start: int, end: int) -> dict[str, Any]:
    return api(server, "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": STEP})


def instant(server: Server, expr: str, *, at: int) -> dict[str, Any]:
    return api(server, "/api/v1/query", {"query": expr, "time": at})


def has_data(server: Server, expr: str, *, start: int, end: int) -> bool:
    return bool(query(server, expr, start=start, end=end)["data"]["result"])


@dataclass(frozen=True)
class RecordingRule:
    group: dict[str, Any]  # the group it came from (name, interval)
    rule: dict[str, Any]


def recording_rules_by_name() -> dict[str, RecordingRule]:
    found = {}
    for path in rule_files():
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if "record" in rule:
                    found[rule["record"]] = RecordingRule(group, rule)
    return found


def backfill_levels(used: set[str]) -> list[list[RecordingRule]]:
    """The rules `used` needs, split into levels: level n reads only raw series and levels < n.

    promtool evaluates rules by querying a running Prometheus, so a rule that reads another rule
    (e.g. a ratio over a recorded denominator) only gets data once the rule it reads has been
    backfilled and loaded. Unknown names are left out; the tests that query them fail by name.
    """
    rules = recording_rules_by_name()
    level: dict[str, int] = {}

    def depth(name: str, seen: tuple[str, ...] = ()) -> int:
        assert name not in seen, f"recording rules depend on each other in a cycle: {seen}"
        if name not in level:
            deps = metric_names(rules[name].rule["expr"]) & rules.keys()
            level[name] = 1 + max((depth(dep, (*seen, name)) for dep in deps), default=-1)
        return level[name]

    for name in used & rules.keys():
        depth(name)
    levels: list[list[RecordingRule]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name, n in sorted(level.items()):
        levels[n].append(rules[name])
    return levels


def write_rule_file(path: Path, rules: list[RecordingRule]) -> Path:
    """The given rules, verbatim, in their original groups (the group interval is the eval step)."""
    groups: dict[str, dict[str, Any]] = {}
    for item in rules:
        name = item.group["name"]
        group = groups.setdefault(name, {k: v for k, v in item.group.items() if k != "rules"} | {"rules": []})
        group["rules"].append(item.rule)
    return write_config(path, {"groups": list(groups.values())})


def backfill_rules(
    server: Server, rules: list[RecordingRule], out: Path, *, start: int, end: int
) -> list[Path]:
    """`promtool tsdb create-blocks-from rules` against `server`; returns the new block directories."""
    rule_file = write_rule_file(out.with_suffix(".rules.yml"), rules)
    # --eval-interval only applies to groups without their own interval; STEP matches the raw data.
    run(
        [
            built_binary("promtool"),
            "tsdb",
            "create-blocks-from",
            "rules",
            f"--url={server.url}",
            f"--start={start}",
            f"--end={end}",
            f"--output-dir={out}",
            f"--eval-interval={STEP}s",
            str(rule_file),
        ]
    )
    return [block for block in out.iterdir() if (block / "meta.json").exists()]


def dashboard_rule_names() -> set[str]:
    names = {name for _, _, target in all_targets() for name in metric_names(target["expr"])}
    return {name for name in names if ":" in name}


@pytest.fixture(scope="module")
def loaded_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedPrometheus]:
    """Prometheus (our 3.5 build) on backfilled contract data and backfilled recording-rule outputs."""
    promtool = built_binary("promtool")
    workdir = tmp_path_factory.mktemp("grafana-prometheus")
    # start_prometheus keeps its TSDB here (--storage.tsdb.path): blocks go in before it starts.
    data_dir = workdir / "prometheus-data"
    # End a minute ago on a step boundary: every sample is in a block, none lies in the future.
    end = int(time.time()) // STEP * STEP - 60
    start = end - (STEPS - 1) * STEP
    source = workdir / "synthetic.om"
    source.write_text(openmetrics(synthetic_families(), start))
    run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data_dir)])
    # No scrape jobs and no rule files: the data must stay exactly what was backfilled.
    config = write_config(workdir / "prometheus.yml", {"global": {"scrape_interval": f"{STEP}s"}})

    server = start_prometheus(workdir, config)
    try:
        wait_until(
            lambda: has_data(server, "predictions_total", start=start, end=end),
            timeout=30,
            what="backfilled blocks to be queryable",
        )
        for n, rules in enumerate(backfill_levels(dashboard_rule_names())):
            blocks = backfill_rules(server, rules, workdir / f"rule-blocks-{n}", start=start, end=end)
            # Prometheus scans its data directory for new blocks only once a minute; a restart
            # loads them at once. Overlapping blocks are allowed by default since 2.39.
            server.stop()
            for block in blocks:
                shutil.move(block, data_dir / block.name)
            server = start_prometheus(workdir, config)
        yield LoadedPrometheus(server, start, end)
    finally:
        server.stop()


def target_cases() -> list[Any]:
    cases = []
    for uid, panel, target in all_targets():
        for selection in SELECTIONS:
            case_id = f"{uid}/{panel['title']}/{target['refId']}/{selection}"
            cases.append(pytest.param(panel, target, selection, id=case_id))
    return cases


@pytest.mark.integration
@pytest.mark.parametrize(("panel", "target", "selection"), target_cases())
def test_panel_query_returns_data(
    loaded_prometheus: LoadedPrometheus, panel: dict[str, Any], target: dict[str, Any], selection: str
) -> None:
    """What Grafana would send for this target is valid PromQL and finds data."""
    prom = loaded_prometheus
    expr = substitute(target["expr"], SELECTIONS[selection])
    body = query(prom.server, expr, start=prom.start, end=prom.end)
    assert body["data"]["result"], f"{panel['title']}: no data for {expr}"
    if target["instant"]:
        # Tables, pies and stats ask for one instant: the end of the time range.
        assert instant(prom.server, expr, at=prom.end)["data"]["result"], f"{panel['title']}: no data at end"


@pytest.mark.integration
def test_recording_rules_have_outputs(loaded_prometheus: LoadedPrometheus) -> None:
    """Every recording rule a dashboard uses was backfilled from its real expression and has data."""
    prom = loaded_prometheus
    used = {name for _, _, target in all_targets() for name in metric_names(target["expr"]) if ":" in name}
    assert used, "dashboards are expected to use the recording rules of docs/telemetry.md"
    empty = [name for name in sorted(used) if not has_data(prom.server, name, start=prom.start, end=prom.end)]
    assert not empty, f"recording rules without output (defined in {RULES_DIR}?): {empty}"


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_annotation_queries_return_data(loaded_prometheus: LoadedPrometheus, name: str) -> None:
    prom = loaded_prometheus
    for annotation in DASHBOARDS[name]["annotations"]["list"]:
        if annotation.get("expr"):
            expr = substitute(annotation["expr"], SELECTIONS["all"])
            assert has_data(prom.server, expr, start=prom.start, end=prom.end), annotation["name"]


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_variable_queries_find_the_label_values(loaded_prometheus: LoadedPrometheus, name: str) -> None:
    """label_values(selector, label) is /api/v1/label/<label>/values?match[]=selector in Grafana."""
    prom = loaded_prometheus
    expected = {"symbol": set(SYMBOLS), "model_version": set(VERSIONS)}
    for var in DASHBOARDS[name]["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
        assert match, var["query"]["query"]
        selector = substitute(match[1], SELECTIONS["all"])
        response = httpx.get(
            f"{prom.server.url}/api/v1/label/{match[2]}/values",
            params={"match[]": selector, "start": prom.start, "end": prom.end},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert set(response.json()["data"]) == expected[var["name"]]


@pytest.mark.integration
def test_tempo_traces_to_metrics_queries_return_data(loaded_prometheus: LoadedPrometheus) -> None:
    """The span -> metrics links of the Tempo datasource query the same Prometheus."""
    prom = loaded_prometheus
    queries = datasource("tempo")["jsonData"]["tracesToMetrics"]["queries"]
    assert queries
    for item in queries:
        # In the file `$$` stands for a literal `$` (Grafana expands env vars in provisioning files).
        expr = substitute(item["query"].replace("$$", "$"), {})
        assert has_data(prom.server, expr, start=prom.start, end=prom.end), item["name"]


# --- exemplars: scraped, because backfill drops them --------------------------------------------


def exposition_with_exemplars(trace_ids: Iterator[str]) -> str:
    """The last step of the synthetic histograms, as a scrape target would serve it, with exemplars.

    Every bucket line gets an exemplar in the shape the collector's prometheus exporter writes
    (`trace_id` and `span_id` labels, hex). Counters and gauges aren't needed for exemplar queries.
    """
    now = time.time()
    lines = []
    for family in synthetic_families():
        if family.kind != "histogram":
            continue
        lines.append(f"# TYPE {family.name} histogram")
        for name, labels, value in family.samples(STEPS - 1):
            line = f"{name}{format_labels(labels)} {float(value)!r}"
            if name.endswith("_bucket"):
                trace_id = next(trace_ids)
                line += f' # {{trace_id="{trace_id}",span_id="{trace_id[:16]}"}} 0.02 {now:.3f}'
            lines.append(line)
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def openmetrics_endpoint(text: str) -> Iterator[str]:
    """Serve `text` as OpenMetrics on a free loopback port; yields host:port."""
    body = text.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def exemplar_targets() -> list[Any]:
    return [
        pytest.param(target, id=f"{uid}/{panel['title']}/{target['refId']}")
        for uid, panel, target in all_targets()
        if target["exemplar"]
    ]


@pytest.fixture(scope="module")
def scraping_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Prometheus scraping a target whose histogram buckets carry trace exemplars."""
    workdir = tmp_path_factory.mktemp("grafana-exemplars")
    trace_ids = (f"{n:032x}" for n in range(1, 1_000_000))
    with openmetrics_endpoint(exposition_with_exemplars(trace_ids)) as address:
        config = write_config(
            workdir / "prometheus.yml",
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    # honor_labels keeps job/instance as the exposition says, like the collector's.
                    {
                        "job_name": "exemplars",
                        "honor_labels": True,
                        "static_configs": [{"targets": [address]}],
                    }
                ],
            },
        )
        with start_prometheus(workdir, config) as server:
            yield server


@pytest.mark.integration
@pytest.mark.parametrize("target", exemplar_targets())
def test_exemplar_queries_return_trace_ids(scraping_prometheus: Server, target: dict[str, Any]) -> None:
    """Grafana asks /api/v1/query_exemplars with the panel query; the answer must hold trace ids."""
    label = datasource("prometheus")["jsonData"]["exemplarTraceIdDestinations"][0]["name"]
    expr = substitute(target["expr"], SELECTIONS["one"])
    found: list[dict[str, Any]] = []

    def exemplars_arrived() -> bool:
        now = time.time()
        response = httpx.get(
            f"{scraping_prometheus.url}/api/v1/query_exemplars",
            params={"query": expr, "start": now - 300, "end": now + 60},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        found[:] = [e for series in response.json()["data"] for e in series["exemplars"]]
        return bool(found)

    wait_until(exemplars_arrived, timeout=30, interval=0.5, what=f"exemplars for {expr}")
    for exemplar in found:
        assert re.fullmatch(r"[0-9a-f]{32}", exemplar["labels"][label]), exemplar
