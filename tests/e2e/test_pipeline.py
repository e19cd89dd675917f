"""The service's telemetry, end to end through real processes (see tests/e2e/conftest.py).

1. every service metric of docs/telemetry.md reaches Prometheus with job="prediction-api";
2. every exemplar trace id on prediction_duration_seconds, on both paths, is a whole trace in
   Jaeger (the server span with its Redis spans below it, and the prediction log's write span
   with its SQL spans, linked to the server span), fetched from its query API;
3. the scrape path and the remote-write path store the same metric names and label keys;
4. a regime shift in one symbol, served day by day, raises its drift score above 0.2 (others stay
   low), and the model monitoring dashboard's accuracy, drift, confidence and importance queries
   return data;
5. a Redis outage drives the gauge, the RedisDown alert and its notification, and recovers;
6. the drift alert (ModelDriftDetected) fires and pages.

The order matters: the Redis outage must come after the exemplar test (predictions served during
it have no Redis span), and the drift alert's `for:` runs while the outage test waits.

Run: .venv/bin/pytest tests/e2e -q (`make test` passes the binaries it built; without them the
harness runs scripts/build-*.sh itself, minutes the first time).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.schemas import Bar
from service.market.synthetic import next_bar_index, synthetic_bars_after
from tests.e2e.conftest import SEED, SERVICE_JOB, SYMBOLS, Pipeline, record_timing
from tests.harness.servers import JaegerServer

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
TELEMETRY_DOC = REPO_ROOT / "docs" / "telemetry.md"

ROUNDS = 10  # x 5 symbols = 50 predictions before the next bar arrives
# Contract metrics this test does not produce, with the reason. Empty: the traffic below (plus one
# unknown symbol for prediction_errors_total) produces every one of them.
NOT_PRODUCED: dict[str, str] = {}

# Label keys only one of the two paths writes, as documented in otel/README.md ("Scrape vs remote
# write"): the scrape writes otel_scope_schema_url when a meter has a schema URL.
SCRAPE_ONLY_LABELS = {"otel_scope_schema_url"}
SPAN_KIND_SERVER = 2  # OTLP enum value; OTLP/JSON writes enums as numbers


@pytest.fixture(scope="module")
def traffic(pipeline: Pipeline) -> dict[str, Any]:
    """~50 predictions over every symbol, one unknown symbol, then each symbol's next bar.

    The new bars resolve the predictions (model_accuracy appears) and invalidate the cached
    features, so the round after them computes features from PostgreSQL again.
    """
    as_of: dict[str, str] = {}
    with httpx.Client(base_url=pipeline.service_url, timeout=30) as client:
        for _ in range(ROUNDS):
            for symbol in SYMBOLS:
                as_of[symbol] = _predict(client, symbol)["as_of"]
        unknown = client.post("/predict", json={"symbol": "ZZZZ"})
        assert unknown.status_code == 404, unknown.text
        bars = [
            bar
            for symbol in SYMBOLS
            for bar in synthetic_bars_after(
                symbol, after=datetime.fromisoformat(as_of[symbol]), count=1, seed=SEED
            )
        ]
        assert len(bars) == len(SYMBOLS)
        body = {"bars": [Bar.from_bar_in(bar).model_dump(mode="json") for bar in bars]}
        ingested = client.post("/market-data", json=body)
        assert ingested.status_code == 200, ingested.text
        result = ingested.json()
        assert result["inserted"] == len(SYMBOLS), result
        assert result["resolved_predictions"] == ROUNDS * len(SYMBOLS), result
        after = {symbol: _predict(client, symbol)["as_of"] for symbol in SYMBOLS}
    assert all(after[s] > as_of[s] for s in SYMBOLS), (as_of, after)
    return {"as_of": after, "predictions": ROUNDS * len(SYMBOLS) + len(SYMBOLS)}


def _predict(client: httpx.Client, symbol: str) -> dict[str, Any]:
    response = client.post("/predict", json={"symbol": symbol})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- 1. the metric contract --------------------------------------------------------------------------


def contract_metrics() -> dict[str, str]:
    """Name -> kind of every row in docs/telemetry.md's "Service metrics" table."""
    section = TELEMETRY_DOC.read_text().split("## Service metrics", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`([a-z_]+)`\s*\|\s*([^|]+?)\s*\|", section, flags=re.MULTILINE)
    assert len(rows) >= 20, f"table not found or changed shape: {rows}"
    return dict(rows)


def expected_series_names(contract: dict[str, str]) -> set[str]:
    """Stored names: a histogram is stored as _bucket, _sum and _count series."""
    names: set[str] = set()
    for name, kind in contract.items():
        if name in NOT_PRODUCED:
            continue
        if kind.startswith("histogram"):
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def _is_rule_output(name: str) -> bool:
    """Recording rules (`level:metric:ops`) and alert state series also carry job="prediction-api"."""
    return ":" in name or name in {"ALERTS", "ALERTS_FOR_STATE"}


def service_series(pipeline: Pipeline, *, remote: bool = False) -> list[dict[str, str]]:
    series = pipeline.series(f'{{job="{SERVICE_JOB}"}}', remote=remote)
    return [s for s in series if not _is_rule_output(s["__name__"])]


def test_every_contract_metric_reaches_prometheus_through_the_collector(
    pipeline: Pipeline, traffic: dict[str, Any]
) -> None:
    contract = contract_metrics()
    assert set(NOT_PRODUCED) <= set(contract), "NOT_PRODUCED names a metric the contract lost"
    expected = expected_series_names(contract)
    found: set[str] = set()

    def all_present() -> bool:
        nonlocal found
        found = {s["__name__"] for s in service_series(pipeline)}
        return expected <= found

    try:
        waited = pipeline.wait(all_present, what="every contract metric in Prometheus")
    except TimeoutError as exc:
        pytest.fail(f"missing from Prometheus: {sorted(expected - found)}\n{exc}")
    record_timing("traffic sent -> every contract metric queryable", waited)

    # They came through the collector: the only scrape that can write job="prediction-api" is the
    # collector's (honor_labels keeps the service's job); the liveness job drops every sample.
    # `instance` is then the service's service.instance.id, not a scrape address.
    series = [s for s in service_series(pipeline) if s["__name__"] in expected]
    instances = {s["instance"] for s in series}
    assert len(instances) == 1, instances
    instance = instances.pop()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", instance), instance
    liveness = pipeline.prom(
        "query", query='scrape_samples_post_metric_relabeling{job="prediction-api-liveness"}'
    )
    assert [r["value"][1] for r in liveness["result"]] == ["0"], liveness
    # Labels from the contract appear on the series, e.g. symbol on predictions_total for all symbols.
    symbols = {s["symbol"] for s in series if s["__name__"] == "predictions_total"}
    assert symbols == set(SYMBOLS)
    totals = pipeline.prom("query", query=f'sum(predictions_total{{job="{SERVICE_JOB}"}})')["result"]
    assert float(totals[0]["value"][1]) >= traffic["predictions"]


# --- 2. exemplars -> traces ---------------------------------------------------------------------------


def _attribute(span: dict[str, Any], *keys: str) -> str | None:
    for attribute in span.get("attributes", []):
        if attribute["key"] in keys:
            return str(next(iter(attribute["value"].values())))
    return None


def _db_system(span: dict[str, Any]) -> str | None:
    return _attribute(span, "db.system", "db.system.name")


def _is_server(span: dict[str, Any]) -> bool:
    return span.get("kind") in (SPAN_KIND_SERVER, "SPAN_KIND_SERVER")


def _descends_from(span: dict[str, Any], ancestor: str, by_id: dict[str, dict[str, Any]]) -> bool:
    seen: set[str] = set()
    parent = span.get("parentSpanId", "")
    while parent and parent not in seen:
        if parent == ancestor:
            return True
        seen.add(parent)
        parent = by_id.get(parent, {}).get("parentSpanId", "")
    return False


class LinkedWrites:
    """The prediction log's `prediction_log.write` spans in Jaeger, by the span ids they link to.

    The writer's spans are roots of their own traces; each links to the server spans of the
    requests whose rows it wrote. Fetched once per check, traces of a write span on demand.
    """

    def __init__(self, jaeger: JaegerServer, *, since: float) -> None:
        self._jaeger = jaeger
        self._by_linked: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for span in jaeger.find_spans(SERVICE_JOB, "prediction_log.write", since=since):
            for link in span.get("links", []):
                self._by_linked[link.get("spanId", "").lower()].append(span)

    def sql_below(self, server_span_id: str) -> list[dict[str, Any]]:
        """SQL spans under every write span linking to `server_span_id`."""
        found = []
        for write in self._by_linked.get(server_span_id.lower(), []):
            spans = self._jaeger.trace_spans(write["traceId"].lower())
            by_id = {s["spanId"]: s for s in spans}
            found += [
                s
                for s in spans
                if _db_system(s) == "postgresql" and _descends_from(s, write["spanId"], by_id)
            ]
        return found

    def linked(self, server_span_id: str) -> bool:
        return server_span_id.lower() in self._by_linked


def trace_problems(spans: list[dict[str, Any]], writes: LinkedWrites) -> list[str]:
    """What a prediction trace lacks: one SERVER root with Redis spans below it, and SQL.

    The prediction's row is written off the request path by the prediction log's writer, in a
    `prediction_log.write` span linking to the server span; its SQL spans count for the request
    (a request that computed features also has SQL spans of its own, below the server span).
    """
    by_id = {span["spanId"]: span for span in spans}
    servers = [span for span in spans if _is_server(span)]
    if len(servers) != 1:
        return [f"{len(servers)} SERVER spans"]
    root = servers[0]
    problems = []
    redis = [s for s in spans if _db_system(s) == "redis"]
    if not redis:
        problems.append("no redis span")
    elif not all(_descends_from(s, root["spanId"], by_id) for s in redis):
        problems.append("a redis span is not a descendant of the SERVER span")
    own_sql = [s for s in spans if _db_system(s) == "postgresql"]
    if own_sql and not all(_descends_from(s, root["spanId"], by_id) for s in own_sql):
        problems.append("a SQL span is not a descendant of the SERVER span")
    if not writes.linked(root["spanId"]):
        problems.append("no prediction_log.write span links to the SERVER span")
    elif not writes.sql_below(root["spanId"]):
        problems.append("the linked prediction_log.write span has no SQL span")
    return problems


def exemplar_trace_ids(pipeline: Pipeline, *, remote: bool) -> set[str]:
    """Trace ids of every exemplar Prometheus holds on prediction_duration_seconds since the start."""
    data = pipeline.prom(
        "query_exemplars",
        remote=remote,
        query=f'prediction_duration_seconds_bucket{{job="{SERVICE_JOB}"}}',
        start=str(pipeline.started_at - 60),
        end=str(time.time() + 60),
    )
    return {
        exemplar["labels"]["trace_id"].lower()
        for series in data
        for exemplar in series["exemplars"]
        if "trace_id" in exemplar["labels"]
    }


@pytest.mark.parametrize("remote", [False, True], ids=["scraped", "remote-written"])
def test_exemplars_lead_to_complete_traces_in_jaeger(
    pipeline: Pipeline, traffic: dict[str, Any], remote: bool
) -> None:
    """Every exemplar's trace, fetched from the Jaeger its collector exports to, is whole.

    Scrape path: Prometheus 1's exemplars, Jaeger 1; remote-write path: Prometheus 2, Jaeger 2.
    A trace found complete is not fetched again; Jaeger answers 404 until its spans arrive.
    """
    jaeger = pipeline.remote_jaeger if remote else pipeline.jaeger
    trace_ids: set[str] = set()
    complete: set[str] = set()
    problems: dict[str, list[str]] = {}

    def exemplar_traces_complete() -> bool:
        nonlocal trace_ids
        trace_ids = exemplar_trace_ids(pipeline, remote=remote)
        writes = LinkedWrites(jaeger, since=pipeline.started_at)
        for tid in trace_ids - complete:
            spans = jaeger.trace_spans(tid)
            problems[tid] = trace_problems(spans, writes) if spans else ["not in Jaeger"]
            if not problems[tid]:
                complete.add(tid)
        return bool(trace_ids) and trace_ids <= complete

    try:
        waited = pipeline.wait(exemplar_traces_complete, what="exemplars whose traces are complete in Jaeger")
    except TimeoutError as exc:
        bad = {tid: problems.get(tid) for tid in sorted(trace_ids - complete)}
        pytest.fail(f"{len(trace_ids)} exemplar trace ids; incomplete in Jaeger: {bad}\n{exc}")
    path = "remote-written" if remote else "scraped"
    record_timing(f"{path} exemplar trace ids complete in Jaeger", waited)
    print(f"{len(trace_ids)} {path} exemplar traces fetched from Jaeger, each complete")


# --- 3. scrape path vs remote-write path ------------------------------------------------------------


def label_keys_by_name(series: list[dict[str, str]]) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = defaultdict(set)
    for labels in series:
        keys[labels["__name__"]] |= set(labels) - {"__name__"} - SCRAPE_ONLY_LABELS
    return dict(keys)


def test_remote_write_stores_the_same_names_and_label_keys(
    pipeline: Pipeline, traffic: dict[str, Any]
) -> None:
    # Compared once the scrape path holds everything the traffic produces: before that, both paths
    # can agree on a subset. Not vacuous then: the contract, span metrics and target_info are in.
    complete = expected_series_names(contract_metrics()) | {
        "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_seconds_bucket",
        "target_info",
    }
    scraped: dict[str, set[str]] = {}
    written: dict[str, set[str]] = {}

    def same() -> bool:
        nonlocal scraped, written
        scraped = label_keys_by_name(service_series(pipeline))
        written = label_keys_by_name(service_series(pipeline, remote=True))
        return complete <= set(scraped) and scraped == written

    try:
        waited = pipeline.wait(same, what="the same names and label keys on both paths")
    except TimeoutError:
        only_scraped = sorted(set(scraped) - set(written))
        only_written = sorted(set(written) - set(scraped))
        keys = {n: (scraped[n], written[n]) for n in set(scraped) & set(written) if scraped[n] != written[n]}
        missing = sorted(complete - set(scraped))
        pytest.fail(
            f"not scraped yet: {missing}\nonly scraped: {only_scraped}\n"
            f"only remote-written: {only_written}\nkeys differ: {keys}"
        )
    record_timing("remote-write path caught up with the scrape path", waited)

    # Both are the same process: the same service.instance.id became `instance` on both paths.
    instances = {s["instance"] for s in service_series(pipeline) + service_series(pipeline, remote=True)}
    assert len(instances) == 1, instances

    # The one documented value difference (otel/README.md), and why the SLO rules match the 2 s
    # bucket as le=~"2|2\\.0": a Prometheus 3 scrape stores every bound as a float, remote write
    # stores what the collector's exporter sends.
    buckets = f'prediction_duration_seconds_bucket{{job="{SERVICE_JOB}"}}'
    assert {s["le"] for s in pipeline.series(buckets)} >= {"2.0", "5.0", "0.001", "+Inf"}
    assert "2" not in {s["le"] for s in pipeline.series(buckets)}
    assert {s["le"] for s in pipeline.series(buckets, remote=True)} >= {"2", "5", "0.001", "+Inf"}
    assert "2.0" not in {s["le"] for s in pipeline.series(buckets, remote=True)}


# --- 4. drift: a regime shift served day by day, and the dashboards that show it ---------------------

SHIFTED = "NVDA"
SHIFTED_DAYS = 120  # about half of the service's 250-bar drift window
DRIFT_LINE = 0.2
MONITORING_PANELS = (
    "Model accuracy trends by symbol",
    "Current accuracy by symbol",
    "Prediction confidence distribution",
    "Mean prediction confidence",
    "Model drift detection",
    "Prediction drift",
    "Feature drift by feature",
    "Feature importance heatmap",
)


def _drift_scores(pipeline: Pipeline) -> dict[str, float]:
    result = pipeline.prom("query", query=f'model_drift_score{{job="{SERVICE_JOB}"}}')["result"]
    return {r["metric"]["symbol"]: float(r["value"][1]) for r in result}


@pytest.fixture(scope="module")
def drift_shift(pipeline: Pipeline, traffic: dict[str, Any]) -> dict[str, float]:
    """Serve SHIFTED_DAYS shifted days of one symbol: each day a new bar arrives, then a prediction."""
    after = datetime.fromisoformat(traffic["as_of"][SHIFTED])
    bars = synthetic_bars_after(
        SHIFTED, after=after, count=SHIFTED_DAYS, seed=SEED, shift_from=next_bar_index(after)
    )
    with httpx.Client(base_url=pipeline.service_url, timeout=30) as client:
        for bar in bars:
            stored = client.post(
                "/market-data", json={"bars": [Bar.from_bar_in(bar).model_dump(mode="json")]}
            )
            assert stored.status_code == 200, stored.text
            assert _predict(client, SHIFTED)["as_of"] == bar.ts.isoformat().replace("+00:00", "Z")
    return {"started": time.monotonic()}


def test_a_regime_shift_raises_the_drift_score_of_that_symbol_only(
    pipeline: Pipeline, drift_shift: dict[str, float]
) -> None:
    waited = pipeline.wait(
        lambda: _drift_scores(pipeline).get(SHIFTED, 0.0) > DRIFT_LINE,
        what=f"model_drift_score of {SHIFTED} above {DRIFT_LINE} in Prometheus",
    )
    record_timing(f"{SHIFTED_DAYS} shifted days served -> drift score above {DRIFT_LINE}", waited)
    scores = _drift_scores(pipeline)
    assert set(scores) == set(SYMBOLS), scores
    assert all(score < DRIFT_LINE for symbol, score in scores.items() if symbol != SHIFTED), scores


def test_model_monitoring_panels_return_data(pipeline: Pipeline, drift_shift: dict[str, float]) -> None:
    """Every query of the accuracy, drift, confidence and importance panels, as Grafana sends it."""
    from tests.pipeline.test_grafana import DASHBOARDS, SELECTIONS, panels, substitute

    board = DASHBOARDS["model-monitoring"]
    chosen = [panel for panel in panels(board) if panel.get("title") in MONITORING_PANELS]
    assert {panel["title"] for panel in chosen} == set(MONITORING_PANELS)
    empty: list[str] = []
    for panel in chosen:
        for target in panel.get("targets", []):
            query = substitute(target["expr"], SELECTIONS["all"])
            if not pipeline.prom("query", query=query)["result"]:
                empty.append(f"{panel['title']}: {query}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


# --- 5. Redis outage: gauge, alert, notification, recovery ------------------------------------------


def _gauge(pipeline: Pipeline, name: str) -> list[str]:
    result = pipeline.prom("query", query=f'{name}{{job="{SERVICE_JOB}"}}')["result"]
    return [r["value"][1] for r in result]


def _alert_states(pipeline: Pipeline, alertname: str) -> list[str]:
    alerts = pipeline.prom("alerts")["alerts"]
    return [a["state"] for a in alerts if a["labels"].get("alertname") == alertname]


def _notifications(pipeline: Pipeline, alertname: str, status: str) -> list[dict[str, Any]]:
    return [
        body
        for body in pipeline.sink.received()
        if isinstance(body, dict)
        and any(a["labels"].get("alertname") == alertname and a["status"] == status for a in body["alerts"])
    ]


def test_redis_outage_fires_redis_down_and_recovers(pipeline: Pipeline, traffic: dict[str, Any]) -> None:
    """Last in the file on purpose: predictions served during the outage have no Redis span, and
    the exemplar test above expects one in every exemplar trace."""
    alertname = "RedisDown"
    assert alertname in pipeline.alert_for, f"no {alertname} rule in prometheus/rules"
    hold = pipeline.alert_for[alertname]
    # Pipeline latency (export 1 s + batch 1 s + scrape 1 s + evaluation 1 s) and two busy cores.
    slack = 60.0
    assert _gauge(pipeline, "redis_connection_status") == ["1"]
    assert _alert_states(pipeline, alertname) == []
    statuses: list[int] = []

    def predicting(predicate: Any) -> Any:
        """Each poll also asks for a prediction: the service must keep answering throughout."""

        def poll() -> bool:
            response = httpx.post(f"{pipeline.service_url}/predict", json={"symbol": "AAPL"}, timeout=10)
            statuses.append(response.status_code)
            return bool(predicate())

        return poll

    started = time.monotonic()
    pipeline.redis.stop()
    waited = pipeline.wait(
        predicting(lambda: _gauge(pipeline, "redis_connection_status") == ["0"]),
        what="redis_connection_status 0",
        timeout=slack,
    )
    record_timing("Redis stopped -> redis_connection_status 0 in Prometheus", waited)
    waited = pipeline.wait(
        predicting(lambda: "firing" in _alert_states(pipeline, alertname)),
        what=f"{alertname} firing in Prometheus (for: {hold:g}s)",
        timeout=hold + slack,
    )
    record_timing(f"Redis stopped -> {alertname} firing (for: {hold:g}s)", time.monotonic() - started)
    pipeline.wait(
        predicting(lambda: bool(_notifications(pipeline, alertname, "firing"))),
        what=f"{alertname} firing notification at the webhook sink",
        timeout=slack,
    )
    record_timing(f"Redis stopped -> {alertname} notification at the sink", time.monotonic() - started)
    notified = _notifications(pipeline, alertname, "firing")[0]
    assert statuses, "no prediction was attempted during the outage"
    assert set(statuses) == {200}, f"predictions during the outage: {statuses}"
    outage_predictions = len(statuses)

    recovering = time.monotonic()
    pipeline.restart_redis()
    pipeline.wait(
        predicting(lambda: _gauge(pipeline, "redis_connection_status") == ["1"]),
        what="redis_connection_status back to 1",
        timeout=slack,
    )
    pipeline.wait(
        predicting(lambda: _alert_states(pipeline, alertname) == []),
        what=f"{alertname} resolved in Prometheus",
        timeout=slack,
    )
    record_timing(f"Redis restarted -> {alertname} resolved in Prometheus", time.monotonic() - recovering)
    receiver = next(r for r in pipeline.alertmanager_config["receivers"] if r["name"] == notified["receiver"])
    if any(webhook.get("send_resolved") for webhook in receiver.get("webhook_configs", [])):
        pipeline.wait(
            lambda: bool(_notifications(pipeline, alertname, "resolved")),
            what=f"{alertname} resolved notification at the sink ({notified['receiver']})",
            timeout=slack,
        )
        record_timing(f"Redis restarted -> {alertname} resolved notification", time.monotonic() - recovering)
    assert set(statuses) == {200}, f"predictions during outage and recovery: {statuses}"
    print(f"{outage_predictions} predictions during the outage, {len(statuses)} in all, every one 200")

    # The notification is the alert Prometheus evaluated: labels and annotations from the rule.
    alert = next(a for a in notified["alerts"] if a["labels"]["alertname"] == alertname)
    assert alert["labels"]["job"] == SERVICE_JOB
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#redisdown"
    assert notified["receiver"] == "ticket"


# --- 6. the drift alert pages ------------------------------------------------------------------------


def test_drift_alert_fires_and_pages(pipeline: Pipeline, drift_shift: dict[str, float]) -> None:
    alertname = "ModelDriftDetected"
    hold = pipeline.alert_for[alertname]
    pipeline.wait(
        lambda: bool(_notifications(pipeline, alertname, "firing")),
        what=f"{alertname} notification at the webhook sink (for: {hold:g}s)",
        timeout=hold + 120,
    )
    record_timing(f"shift served -> {alertname} at the sink", time.monotonic() - drift_shift["started"])
    notified = _notifications(pipeline, alertname, "firing")[0]
    alerts = [a for a in notified["alerts"] if a["labels"]["alertname"] == alertname]
    assert {a["labels"]["symbol"] for a in alerts} == {SHIFTED}
    assert alerts[0]["labels"]["severity"] == "critical"
    assert notified["receiver"] == "pager"
