"""Generate the provisioned dashboards in grafana/dashboards/ from the panel list below.

Why a generator: the two dashboards share the datasource reference, the template variables, the
links and the threshold conventions; written once here they cannot drift apart, and a query reads
as one line instead of a page of JSON. The JSON files are the build output and are committed
(Grafana's file provider reads them); tests/pipeline/test_grafana.py fails if they differ from
what this script produces.

    .venv/bin/python grafana/build_dashboards.py          # rewrite the JSON files
    .venv/bin/python grafana/build_dashboards.py --check  # exit 1 if they are stale

Metric and recording-rule names follow docs/telemetry.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

Json = dict[str, Any]

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# Grafana 10.4 writes schemaVersion 39; newer Grafana migrates it on load, older ones refuse it.
SCHEMA_VERSION = 39

# Fixed uids from provisioning/datasources/datasources.yaml.
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}

OVERVIEW_UID = "mlops-overview"
MODEL_UID = "model-monitoring"

# Panel filters. The variables are multi-value with allValue ".*", so `=~` is always right.
SYM = 'symbol=~"$symbol"'
VER = 'model_version=~"$model_version"'
SEL = f"{SYM}, {VER}"

# Seed SLOs and alert thresholds (SEED.md): p95 < 2 s is the SLO, 5 s is critical.
LATENCY_STEPS = [(None, "green"), (2, "orange"), (5, "red")]
# Cache hit rate: < 70 % critical, < 90 % warning, >= 90 % meets the SLO.
HIT_RATE_STEPS = [(None, "red"), (0.7, "orange"), (0.9, "green")]
# Error rate: > 5 % is the warning alert.
ERROR_STEPS = [(None, "green"), (0.05, "red")]
# Accuracy SLO: > 75 % for every active model.
ACCURACY_STEPS = [(None, "red"), (0.75, "green")]
# PSI bands: < 0.1 stable, 0.1-0.2 watch, 0.2 is the drift alert, >= 0.25 a significant shift.
DRIFT_STEPS = [(None, "green"), (0.1, "yellow"), (0.2, "orange"), (0.25, "red")]


# --- building blocks ---------------------------------------------------------------------------


def thresholds(steps: list[tuple[float | None, str]]) -> Json:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def target(
    ref: str,
    expr: str,
    legend: str = "__auto",
    *,
    exemplar: bool = False,
    instant: bool = False,
    fmt: str = "time_series",
) -> Json:
    """One Prometheus query. `exemplar` asks Grafana to fetch exemplars (trace links) too."""
    return {
        "datasource": PROMETHEUS,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "format": fmt,
        "exemplar": exemplar,
        "editorMode": "code",
    }


def quantile(q: float, metric: str, selector: str, by: str = "le", window: str = "$__rate_interval") -> str:
    matchers = f"{{{selector}}}" if selector else ""
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{matchers}[{window}])))"


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[Json],
    *,
    unit: str = "short",
    steps: list[tuple[float | None, str]] | None = None,
    custom: Json | None = None,
    options: Json | None = None,
    overrides: list[Json] | None = None,
    extra_defaults: Json | None = None,
    **extra: Any,
) -> Json:
    defaults: Json = {"unit": unit, "thresholds": thresholds(steps or [(None, "green")])}
    if custom:
        defaults["custom"] = custom
    defaults.update(extra_defaults or {})
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
        **extra,
    }


def timeseries(
    title: str,
    description: str,
    targets: list[Json],
    *,
    threshold_style: str = "off",
    stack: bool = False,
    **kwargs: Any,
) -> Json:
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 25 if stack else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": threshold_style},
    }
    options = {
        "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel("timeseries", title, description, targets, custom=custom, options=options, **kwargs)


def drift_timeseries(title: str, description: str, metric: str) -> Json:
    """A PSI gauge per symbol and model version, against the 0.1 / 0.2 / 0.25 bands."""
    return timeseries(
        title,
        description,
        [target("A", f"max by (symbol, model_version) ({metric}{{{SEL}}})", "{{symbol}} v{{model_version}}")],
        unit="none",
        steps=DRIFT_STEPS,
        threshold_style="line+area",
        extra_defaults={"min": 0, "decimals": 3},
    )


def heatmap(title: str, description: str, targets: list[Json], *, y_unit: str, ordinal: bool) -> Json:
    """Pre-bucketed heatmap: Grafana must not re-bucket (`calculate: false`).

    `ordinal` rows are named series (one per feature) rather than numeric `le` buckets.
    """
    options = {
        "calculate": False,
        "cellGap": 1,
        "color": {
            "mode": "scheme",
            "scheme": "Oranges",
            "scale": "exponential",
            "exponent": 0.5,
            "steps": 64,
        },
        "yAxis": {"axisPlacement": "left", "unit": y_unit},
        "rowsFrame": {"layout": "unknown" if ordinal else "le"},
        "tooltip": {"mode": "single", "yHistogram": not ordinal},
        "legend": {"show": True},
        "exemplars": {"color": "rgba(255,0,255,0.7)"},
        "filterValues": {"le": 1e-9},
    }
    return panel("heatmap", title, description, targets, options=options)


def table(
    title: str, description: str, targets: list[Json], *, transformations: list[Json], **kw: Any
) -> Json:
    options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    return panel("table", title, description, targets, options=options, transformations=transformations, **kw)


def by_name(name: str, properties: dict[str, Any]) -> Json:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def by_regexp(pattern: str, properties: dict[str, Any]) -> Json:
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def value_map(states: dict[int, tuple[str, str]]) -> list[Json]:
    """Numeric state -> (text, color) for state timelines."""
    mapped = {str(value): {"text": text, "color": color} for value, (text, color) in states.items()}
    return [{"type": "value", "options": mapped}]


class Layout:
    """Assigns ids and grid positions: panels flow left to right on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self._place({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self._newline()

    def add(self, item: Json, width: int, height: int) -> None:
        if self.x + width > 24:
            self._newline()
        self._place(item, width, height)

    def _place(self, item: Json, width: int, height: int) -> None:
        item = {
            "id": len(self.panels) + 1,
            "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            **item,
        }
        self.panels.append(item)
        self.x += width
        self.row_height = max(self.row_height, height)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
        self.x = 0
        self.row_height = 0


def variables() -> Json:
    """`symbol` and `model_version`, both multi-value; All is `.*` so new values show up at once."""

    def query_variable(name: str, label: str, query: str) -> Json:
        return {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": PROMETHEUS,
            "query": {"query": query, "refId": f"{name}-values"},
            "definition": query,
            "refresh": 2,  # on time-range change: a new model version appears without a reload
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return {
        "list": [
            query_variable("symbol", "Symbol", "label_values(predictions_total, symbol)"),
            query_variable(
                "model_version", "Model version", f"label_values(predictions_total{{{SYM}}}, model_version)"
            ),
        ]
    }


def reload_annotation() -> Json:
    """Mark champion reloads on every time panel: a step in latency or accuracy often starts there."""
    return {
        "name": "Model reloads",
        "datasource": PROMETHEUS,
        "enable": True,
        "iconColor": "purple",
        "expr": 'sum(increase(model_reloads_total{outcome="success"}[1m])) > 0',
        "step": "30s",
        "titleFormat": "Model reloaded",
        "textFormat": "A new champion model version was loaded",
    }


def dashboard(uid: str, title: str, description: str, layout: Layout, link_uid: str, link_title: str) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["mlops", "prediction-api"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,  # shared crosshair: line up latency, errors and health at one instant
        "time": {"from": "now-30m", "to": "now"},
        # 5 s = the collector export interval = the Prometheus scrape interval; faster shows nothing new.
        "refresh": "5s",
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "timezone": "browser",
        "templating": variables(),
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                reload_annotation(),
            ]
        },
        "links": [
            {
                "title": link_title,
                "type": "link",
                "url": f"/d/{link_uid}",
                "icon": "dashboard",
                "keepTime": True,
                "includeVars": True,
                "targetBlank": False,
                "tooltip": f"Open {link_title} with the same time range and variables",
            }
        ],
        "panels": layout.panels,
    }


# --- MLOps Overview ----------------------------------------------------------------------------


def prediction_log(lay: Layout) -> None:
    """The prediction log: durable spool in front of the database (README "Prediction log")."""
    lay.row("Prediction log")
    lay.add(
        timeseries(
            "Rows waiting for the database",
            "Predictions answered and durable in each instance's local spool, not yet in the predictions "
            "table. Near zero while the database takes rows; grows during a database outage. The spool's "
            "fill level (right) reaches 100 % before /predict answers 503 (PredictionLogFilling at 80 %).",
            [
                target("A", "sum by (instance) (prediction_log_spool_rows)", "{{instance}} rows"),
                target(
                    "B",
                    "max by (instance) (prediction_log_spool_size_bytes"
                    " / prediction_log_spool_capacity_bytes)",
                    "{{instance}} spool full",
                ),
            ],
            overrides=[
                by_regexp(
                    ".* spool full$",
                    {"unit": "percentunit", "custom.axisPlacement": "right", "min": 0, "max": 1},
                )
            ],
        ),
        6,
        8,
    )
    lay.add(
        timeseries(
            "Oldest row waiting",
            "Age of the oldest row not yet in the database, per instance. PredictionLogNotDraining fires "
            "above 5 minutes: accuracy and outcome resolution lag by this much.",
            [target("A", "max by (instance) (prediction_log_oldest_row_age_seconds)", "{{instance}}")],
            unit="s",
            steps=[(None, "green"), (60, "orange"), (300, "red")],
            threshold_style="line",
        ),
        6,
        8,
    )
    lay.add(
        timeseries(
            "Rows written and failed",
            "Rows per second the writer inserted into the predictions table, and rows of failed writes by "
            "reason (unavailable: retried; rejected: set aside in quarantine).",
            [
                target("A", "sum(rate(prediction_log_rows_written_total[$__rate_interval]))", "written"),
                target(
                    "B",
                    "sum by (reason) (rate(prediction_log_rows_failed_total[$__rate_interval]))",
                    "failed {{reason}}",
                ),
            ],
            unit="rps",
            overrides=[by_regexp("failed .*", {"color": {"mode": "fixed", "fixedColor": "red"}})],
        ),
        6,
        8,
    )
    lay.add(
        timeseries(
            "Group commit",
            "The writer's transaction time (p95; exemplars open the prediction_log.write trace with its SQL) "
            "and rows per transaction, and fsyncs per request of the spool: one fdatasync is shared by every "
            "request that arrived while the last ran.",
            [
                target(
                    "A",
                    quantile(0.95, "prediction_log_write_duration_seconds", ""),
                    "write p95",
                    exemplar=True,
                ),
                target(
                    "B",
                    "sum(rate(prediction_log_batch_size_sum[$__rate_interval])) / "
                    "sum(rate(prediction_log_batch_size_count[$__rate_interval]))",
                    "rows per transaction",
                ),
                target(
                    "C",
                    "sum(rate(prediction_log_spool_syncs_total[$__rate_interval])) / "
                    "sum(rate(prediction_log_spool_records_total[$__rate_interval]))",
                    "fsyncs per request",
                ),
            ],
            unit="s",
            overrides=[
                by_name("rows per transaction", {"unit": "short", "custom.axisPlacement": "right"}),
                by_name("fsyncs per request", {"unit": "short", "custom.axisPlacement": "right"}),
            ],
        ),
        6,
        8,
    )


def overview() -> Json:
    lay = Layout()
    lay.row("Traffic and latency")
    lay.add(
        timeseries(
            "Predictions per minute",
            "Predictions served per minute. The total comes from the recording rule job:predictions:rate1m "
            "(all symbols); the per-symbol lines follow the Symbol and Model version variables.",
            [
                target("A", "sum(job:predictions:rate1m) * 60", "all symbols (1m)"),
                target(
                    "B",
                    f"sum by (symbol) (rate(predictions_total{{{SEL}}}[$__rate_interval])) * 60",
                    "{{symbol}}",
                ),
            ],
            unit="reqpm",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "95th percentile response time",
            "Server-side prediction latency for the selected symbols and versions: p50, p95, p99. "
            "Dashed lines are the 2 s SLO and the 5 s critical alert. Dots are exemplars (on the p95 query "
            "only, so each request appears once): click one to open its trace in Tempo. The 5m line is the "
            "recording rule the latency alerts evaluate.",
            [
                target("A", quantile(0.95, "prediction_duration_seconds", SEL), "p95", exemplar=True),
                target("B", quantile(0.5, "prediction_duration_seconds", SEL), "p50"),
                target("C", quantile(0.99, "prediction_duration_seconds", SEL), "p99"),
                target(
                    "D", "max(job:prediction_duration_seconds:p95_rate5m)", "p95 all symbols (5m, alerting)"
                ),
            ],
            unit="s",
            steps=LATENCY_STEPS,
            threshold_style="dashed",
        ),
        12,
        8,
    )
    lay.add(
        heatmap(
            "Response time distribution",
            "Predictions per second in each latency bucket (buckets of prediction_duration_seconds; 2 s and "
            "5 s are bucket boundaries). A second band appearing above the main one means a slow path, e.g. "
            "feature-cache misses. Exemplar dots link to traces.",
            [
                target(
                    "A",
                    f"sum by (le) (rate(prediction_duration_seconds_bucket{{{SEL}}}[$__rate_interval]))",
                    "{{le}}",
                    exemplar=True,
                    fmt="heatmap",
                )
            ],
            y_unit="s",
            ordinal=False,
        ),
        12,
        8,
    )
    lay.add(
        panel(
            "piechart",
            "Predictions by symbol",
            "Share of predictions per symbol over the selected time range.",
            [
                target(
                    "A",
                    f"sum by (symbol) (increase(predictions_total{{{SEL}}}[$__range]))",
                    "{{symbol}}",
                    instant=True,
                )
            ],
            options={
                "pieType": "donut",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "legend": {"displayMode": "table", "placement": "right", "values": ["value", "percent"]},
                "tooltip": {"mode": "single"},
            },
        ),
        6,
        8,
    )
    lay.add(
        timeseries(
            "Error rate",
            "Share of prediction requests that failed. The total is the recording rule "
            "job:prediction_errors:ratio_rate5m (alert above 5 %, the red line); the stacked lines split the "
            "failures by reason.",
            [
                target("A", "max(job:prediction_errors:ratio_rate5m)", "all reasons (5m)"),
                target(
                    "B",
                    "sum by (reason) (rate(prediction_errors_total[$__rate_interval])) / scalar("
                    "sum(rate(predictions_total[$__rate_interval])) + "
                    "sum(rate(prediction_errors_total[$__rate_interval])))",
                    "{{reason}}",
                ),
            ],
            unit="percentunit",
            steps=ERROR_STEPS,
            threshold_style="dashed",
        ),
        6,
        8,
    )
    lay.add(
        timeseries(
            "HTTP requests by route",
            "Requests per second handled by the API, from the FastAPI server spans (stable HTTP semantic "
            "conventions). 4xx on the predict route are mostly unknown symbols.",
            [
                target(
                    "A",
                    "sum by (http_request_method, http_route, http_response_status_code) "
                    "(rate(http_server_request_duration_seconds_count[$__rate_interval]))",
                    "{{http_request_method}} {{http_route}} {{http_response_status_code}}",
                )
            ],
            unit="reqps",
        ),
        24,
        7,
    )

    lay.row("Feature store and database")
    lay.add(
        timeseries(
            "Feature store cache hit rate",
            "Share of feature lookups answered from a cache (L1 in-process or Redis) instead of computing "
            "features from PostgreSQL. Red below 70 % (critical alert), orange below 90 % (warning), green "
            "meets the 90 % SLO. The per-level lines show which cache answered.",
            [
                target("A", "max(job:feature_store_hit_ratio:rate5m)", "hit rate (5m)"),
                target(
                    "B",
                    "sum by (level) (rate(feature_store_hits_total[$__rate_interval])) / scalar("
                    "sum(rate(feature_store_hits_total[$__rate_interval])) + "
                    "sum(rate(feature_store_misses_total[$__rate_interval])))",
                    "answered by {{level}}",
                ),
            ],
            unit="percentunit",
            steps=HIT_RATE_STEPS,
            threshold_style="line+area",
            extra_defaults={"min": 0, "max": 1},
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Feature computation time",
            "Time to compute one symbol's features from the database, paid on every cache miss. Exemplars "
            "on p95 link to the trace with the SQL spans.",
            [
                target("A", quantile(0.95, "feature_computation_duration_seconds", ""), "p95", exemplar=True),
                target("B", quantile(0.5, "feature_computation_duration_seconds", ""), "p50"),
            ],
            unit="s",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Database operations rate",
            "SQL operations per second issued by the service, by operation and outcome (recording rule "
            "job:database_operations:rate5m). Errors are drawn in red.",
            [
                target(
                    "A",
                    "sum by (operation, outcome) (job:database_operations:rate5m)",
                    "{{operation}} {{outcome}}",
                )
            ],
            unit="ops",
            stack=True,
            overrides=[by_regexp(".* error$", {"color": {"mode": "fixed", "fixedColor": "red"}})],
        ),
        8,
        8,
    )

    prediction_log(lay)

    lay.row("Health and alerts")
    lay.add(
        panel(
            "state-timeline",
            "System health timeline",
            "Dependency checks run by the service in the background (Redis, PostgreSQL, MLflow: up/down), "
            "its own verdict (ok / degraded: a dependency is down but predictions are still served / down), "
            "and whether Prometheus can reach the API at all (the liveness probe job). With several API "
            "processes the worst one is shown.",
            [
                target("A", "min(redis_connection_status)", "Redis"),
                target("B", "min(database_connection_status)", "PostgreSQL"),
                target("C", "min(mlflow_connection_status)", "MLflow"),
                target("D", "min(service_health_status)", "Service health"),
                target("E", 'min(up{job="prediction-api-liveness"})', "API liveness (probe)"),
            ],
            extra_defaults={
                "mappings": value_map({0: ("down", "red"), 1: ("up", "green")}),
                "color": {"mode": "thresholds"},
            },
            steps=[(None, "red"), (1, "green")],
            overrides=[
                by_name(
                    "Service health",
                    {
                        "mappings": value_map(
                            {0: ("down", "red"), 1: ("degraded", "orange"), 2: ("ok", "green")}
                        ),
                        "thresholds": thresholds([(None, "red"), (1, "orange"), (2, "green")]),
                    },
                )
            ],
            options={
                "showValue": "auto",
                "mergeValues": True,
                "rowHeight": 0.8,
                "legend": {"showLegend": False},
                "tooltip": {"mode": "single"},
            },
        ),
        16,
        8,
    )
    lay.add(
        table(
            "Firing alerts",
            "Alerts Prometheus is firing now (the ALERTS series of its alert rules), by name and severity. "
            "Empty is good; Alertmanager holds silences and notification state.",
            [
                target(
                    "A",
                    'sum by (alertname, severity) (ALERTS{alertstate="firing"})',
                    instant=True,
                    fmt="table",
                )
            ],
            transformations=[
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True}, "renameByName": {"Value": "series firing"}},
                }
            ],
            overrides=[
                by_name(
                    "severity",
                    {
                        "custom.cellOptions": {"type": "color-text"},
                        "mappings": [
                            {
                                "type": "value",
                                "options": {
                                    "critical": {"color": "red", "index": 0},
                                    "warning": {"color": "orange", "index": 1},
                                },
                            }
                        ],
                    },
                )
            ],
            extra_defaults={"noValue": "no alerts firing"},
        ),
        8,
        8,
    )

    lay.row("Models")
    lay.add(
        table(
            "Model performance by version",
            "Per served model version, across all symbols: predictions per minute (recording rule "
            "job_model_version:predictions:rate5m), p95 latency over 5 minutes, and accuracy averaged over "
            "symbols weighted by resolved predictions (a version with nothing resolved yet shows no "
            "accuracy).",
            [
                target(
                    "A",
                    f"sum by (model_version) (job_model_version:predictions:rate5m{{{VER}}}) * 60",
                    instant=True,
                    fmt="table",
                ),
                target(
                    "B",
                    quantile(0.95, "prediction_duration_seconds", VER, by="model_version, le", window="5m"),
                    instant=True,
                    fmt="table",
                ),
                target(
                    "C",
                    f"sum by (model_version) (model_accuracy{{{VER}}} * model_resolved_predictions) / "
                    f"sum by (model_version) (model_resolved_predictions{{{VER}}})",
                    instant=True,
                    fmt="table",
                ),
            ],
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True},
                        "renameByName": {
                            "model_version": "model version",
                            "Value #A": "predictions / min",
                            "Value #B": "p95 latency",
                            "Value #C": "accuracy",
                        },
                    },
                },
            ],
            overrides=[
                by_name("predictions / min", {"unit": "reqpm", "decimals": 1}),
                by_name(
                    "p95 latency",
                    {
                        "unit": "s",
                        "custom.cellOptions": {"type": "color-text"},
                        "thresholds": thresholds(LATENCY_STEPS),
                    },
                ),
                by_name(
                    "accuracy",
                    {
                        "unit": "percentunit",
                        "custom.cellOptions": {"type": "color-text"},
                        "thresholds": thresholds(ACCURACY_STEPS),
                    },
                ),
            ],
        ),
        10,
        8,
    )
    lay.add(
        timeseries(
            "Throughput and p95 by model version",
            "Predictions per minute (left axis, recording rule) and p95 latency (right axis) per model "
            "version: during a rollout the new version's line should take over without a latency step. "
            "Exemplars on the p95 lines link to traces.",
            [
                target(
                    "A",
                    f"sum by (model_version) (job_model_version:predictions:rate5m{{{VER}}}) * 60",
                    "v{{model_version}} predictions/min",
                ),
                target(
                    "B",
                    quantile(0.95, "prediction_duration_seconds", SEL, by="model_version, le"),
                    "v{{model_version}} p95",
                    exemplar=True,
                ),
            ],
            unit="reqpm",
            overrides=[by_regexp(".* p95$", {"unit": "s", "custom.axisPlacement": "right"})],
        ),
        14,
        8,
    )
    return dashboard(
        OVERVIEW_UID,
        "MLOps Overview",
        "Throughput, latency, caches, database and health of the prediction API.",
        lay,
        MODEL_UID,
        "Model Monitoring",
    )


# --- Model Monitoring --------------------------------------------------------------------------


def model_monitoring() -> Json:
    lay = Layout()
    lay.row("Accuracy")
    lay.add(
        timeseries(
            "Model accuracy trends by symbol",
            "Share of resolved predictions that were right, over the service's rolling window, per symbol "
            "and version; the dashed line is the 75 % SLO. Accuracy only means something when predictions "
            "have been resolved: the dotted lines on the right axis count resolved and pending predictions, "
            "so a flat accuracy line over zero resolved predictions reads as 'no data yet', not as a model "
            "that stopped changing.",
            [
                target(
                    "A",
                    f"max without (instance) (model_accuracy{{{SEL}}})",
                    "accuracy {{symbol}} v{{model_version}}",
                ),
                target(
                    "B",
                    f"max without (instance) (model_resolved_predictions{{{SEL}}})",
                    "resolved {{symbol}} v{{model_version}}",
                ),
                target(
                    "C", f"max without (instance) (model_pending_predictions{{{SYM}}})", "pending {{symbol}}"
                ),
            ],
            unit="short",
            extra_defaults={"min": 0},
            overrides=[
                by_regexp(
                    "^accuracy .*",
                    {
                        "unit": "percentunit",
                        "max": 1,
                        "thresholds": thresholds(ACCURACY_STEPS),
                        "custom.thresholdsStyle": {"mode": "dashed"},
                        "custom.lineWidth": 2,
                    },
                ),
                by_regexp(
                    "^(resolved|pending) .*",
                    {"custom.axisPlacement": "right", "custom.lineStyle": {"fill": "dot", "dash": [0, 10]}},
                ),
            ],
        ),
        16,
        9,
    )
    lay.add(
        panel(
            "bargauge",
            "Current accuracy by symbol",
            "Latest accuracy per symbol and version against the 75 % SLO (red below).",
            [
                target(
                    "A",
                    f"max without (instance) (model_accuracy{{{SEL}}})",
                    "{{symbol}} v{{model_version}}",
                    instant=True,
                )
            ],
            unit="percentunit",
            steps=ACCURACY_STEPS,
            extra_defaults={"min": 0, "max": 1},
            options={
                "displayMode": "gradient",
                "orientation": "horizontal",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "showUnfilled": True,
            },
        ),
        8,
        9,
    )

    lay.row("Confidence")
    lay.add(
        heatmap(
            "Prediction confidence distribution",
            "Predictions per second by confidence bucket (probability of the predicted class, 0.5 to 1). "
            "Mass sliding towards 0.5 means the model is less sure of itself, often before accuracy drops.",
            [
                target(
                    "A",
                    f"sum by (le) (rate(prediction_confidence_bucket{{{SEL}}}[$__rate_interval]))",
                    "{{le}}",
                    fmt="heatmap",
                )
            ],
            y_unit="percentunit",
            ordinal=False,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Mean prediction confidence",
            "Average confidence per symbol (histogram sum / count).",
            [
                target(
                    "A",
                    f"sum by (symbol) (rate(prediction_confidence_sum{{{SEL}}}[$__rate_interval])) / "
                    f"sum by (symbol) (rate(prediction_confidence_count{{{SEL}}}[$__rate_interval]))",
                    "{{symbol}}",
                )
            ],
            unit="percentunit",
            extra_defaults={"min": 0.5, "max": 1},
        ),
        12,
        8,
    )

    lay.row("Drift")
    drift_note = (
        "Bands: green < 0.1 stable, yellow 0.1-0.2 watch, orange from 0.2 (the ModelDrift alert), red from "
        "0.25 (a significant shift by the usual PSI rule of thumb)."
    )
    lay.add(
        drift_timeseries(
            "Model drift detection",
            "model_drift_score: the largest feature PSI of each symbol's recently served inputs against the "
            "training reference. " + drift_note,
            "model_drift_score",
        ),
        12,
        8,
    )
    lay.add(
        drift_timeseries(
            "Prediction drift",
            "PSI of the served confidence distribution against the training reference: the model's output "
            "moving even when no single feature did. " + drift_note,
            "model_prediction_drift",
        ),
        12,
        8,
    )
    lay.add(
        heatmap(
            "Feature drift by feature",
            "PSI per feature (one row each, worst of the selected symbols) over time: shows which input "
            "moved when the drift score rises.",
            [target("A", f"max by (feature) (model_feature_drift{{{SEL}}})", "{{feature}}")],
            y_unit="none",
            ordinal=True,
        ),
        24,
        8,
    )

    lay.row("Served model")
    lay.add(
        table(
            "Feature importance heatmap",
            "Importance of each feature (rows) in each served model version (columns), coloured by value: "
            "compare what a new version relies on with the previous one.",
            [
                target(
                    "A",
                    f"max by (feature, model_version) (model_feature_importance{{{VER}}})",
                    instant=True,
                    fmt="table",
                )
            ],
            transformations=[
                {
                    "id": "groupingToMatrix",
                    "options": {"rowField": "feature", "columnField": "model_version", "valueField": "Value"},
                }
            ],
            extra_defaults={
                "custom": {"cellOptions": {"type": "color-background", "mode": "gradient"}},
                "color": {"mode": "continuous-BlPu"},
                "decimals": 3,
            },
            overrides=[by_regexp("^feature.*", {"custom.cellOptions": {"type": "auto"}})],
        ),
        10,
        9,
    )
    lay.add(
        table(
            "Model info",
            "What each process serves: registry version, model name, feature-set version, training time and "
            "the validation accuracy recorded at training.",
            [
                target(
                    "A",
                    "max by (model_name, model_version, feature_set_version, trained_at, "
                    "validation_accuracy) (model_info)",
                    instant=True,
                    fmt="table",
                )
            ],
            transformations=[
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value": True},
                        "indexByName": {
                            "model_name": 0,
                            "model_version": 1,
                            "feature_set_version": 2,
                            "trained_at": 3,
                            "validation_accuracy": 4,
                        },
                    },
                }
            ],
        ),
        8,
        9,
    )
    lay.add(
        panel(
            "stat",
            "Model reloads",
            "Champion reloads in the selected time range, by outcome. A failure means the service kept "
            "serving the previous version.",
            [
                target(
                    "A",
                    "sum by (outcome) (increase(model_reloads_total[$__range]))",
                    "{{outcome}}",
                    instant=True,
                )
            ],
            unit="short",
            extra_defaults={"decimals": 0, "noValue": "0"},
            overrides=[
                by_name("failure", {"color": {"mode": "fixed", "fixedColor": "red"}}),
                by_name("success", {"color": {"mode": "fixed", "fixedColor": "green"}}),
            ],
            options={
                "colorMode": "value",
                "graphMode": "none",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "textMode": "value_and_name",
            },
        ),
        6,
        9,
    )
    return dashboard(
        MODEL_UID,
        "Model Monitoring",
        "Accuracy, confidence, drift and the served model of the prediction API.",
        lay,
        OVERVIEW_UID,
        "MLOps Overview",
    )


# --- output ------------------------------------------------------------------------------------


def render(board: Json) -> str:
    """Stable text: sorted keys and a trailing newline, so regenerating is a no-op diff."""
    return json.dumps(board, indent=2, sort_keys=True) + "\n"


def outputs() -> dict[Path, str]:
    return {
        DASHBOARD_DIR / "mlops-overview.json": render(overview()),
        DASHBOARD_DIR / "model-monitoring.json": render(model_monitoring()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is stale")
    args = parser.parse_args()
    stale = [path for path, text in outputs().items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path} (run grafana/build_dashboards.py)", file=sys.stderr)
        return 1 if stale else 0
    DASHBOARD_DIR.mkdir(exist_ok=True)
    for path, text in outputs().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
