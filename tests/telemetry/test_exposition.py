"""The app's `/metrics` page against docs/telemetry.md, parsed as Prometheus parses it, and promtool.

The expected names, kinds and labels are read from the doc's "Service metrics" table at test
time, so the doc and the exposition cannot drift apart silently.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings
from tests.harness import Server, built_binary, wait_until
from tests.telemetry import MONITOR_DEADLINE_SECONDS, flush_feature_keys, next_bar_batch, predict

DOC = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"
ClientFactory = Callable[..., TestClient]

# Labels the OpenTelemetry Prometheus exporter adds to every series (instrumentation scope).
SCOPE_LABELS = frozenset({"otel_scope_name", "otel_scope_version", "otel_scope_schema_url"})
# Rows for instruments defined by semantic conventions: the doc names the labels dashboards use,
# the exporter may add more (url_scheme, network_protocol_version).
SEMCONV_ROWS = frozenset({"http_server_request_duration_seconds"})
PROMTOOL_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # counter | gauge | histogram
    labels: frozenset[str]

    @property
    def family(self) -> str:
        """The family name prometheus_client's parser reports (counters lose `_total`)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


def contract_rows() -> list[Row]:
    """Rows of the "Service metrics" table of docs/telemetry.md."""
    text = DOC.read_text()
    section = text.split("## Service metrics", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`"):
            continue
        name = cells[0].strip("`")
        kind = cells[1].split()[0]
        labels_text = re.sub(r"\([^)]*\)", "", cells[2])  # drop value lists such as (`success`/`error`)
        labels = frozenset(
            part.strip() for part in labels_text.split(",") if part.strip() not in {"", "—", "-"}
        )
        rows.append(Row(name, kind, labels))
    assert len(rows) >= 20, f"parsed only {len(rows)} rows from {DOC}"
    return rows


def test_the_contract_table_parses() -> None:
    rows = {row.name: row for row in contract_rows()}
    assert rows["prediction_duration_seconds"] == Row(
        "prediction_duration_seconds", "histogram", frozenset({"symbol", "model_version", "outcome"})
    )
    assert rows["feature_store_misses_total"].labels == frozenset()
    assert {row.kind for row in rows.values()} == {"counter", "gauge", "histogram"}


@pytest.fixture
def exposition(make_client: ClientFactory, data_dir: Path, redis_server: Server) -> str:
    """The `/metrics` page once every row of the table has had a reason to appear."""
    flush_feature_keys(redis_server.url)
    settings = make_settings(data_dir, REDIS_URL=redis_server.url)
    client = make_client(settings)
    served = predict(client, "AAPL")
    predict(client, "AAPL")  # an L1 hit
    predict(client, "MSFT")  # stays pending
    assert client.post("/predict", json={"symbol": "ZZZZ"}).status_code == 404
    ingest = client.post(
        "/market-data", json=next_bar_batch("AAPL", after=served["as_of"], seed=settings.SEED)
    )
    assert ingest.status_code == 200, ingest.text
    expected = {row.family for row in contract_rows()}
    page: dict[str, str] = {}

    def complete() -> bool:
        response = client.get("/metrics")
        assert response.status_code == 200
        page["text"] = response.text
        return expected <= set(_families(response.text))

    wait_until(complete, timeout=MONITOR_DEADLINE_SECONDS, what="every contract metric on /metrics")
    return page["text"]


def _families(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_every_documented_metric_is_exposed_with_its_type_and_labels(exposition: str) -> None:
    families = _families(exposition)
    for row in contract_rows():
        family = families[row.family]
        assert family.type == row.kind, f"{row.name}: {family.type}"
        assert family.samples, row.name
        sample_names = {sample.name for sample in family.samples}
        if row.kind == "histogram":
            assert {f"{row.name}_bucket", f"{row.name}_count", f"{row.name}_sum"} <= sample_names, row.name
        else:
            assert sample_names == {row.name}, f"{row.name}: {sample_names}"
        for sample in family.samples:
            labels = set(sample.labels) - SCOPE_LABELS - {"le"}
            if row.name in SEMCONV_ROWS:
                assert labels >= row.labels, f"{row.name}: {sorted(labels)}"
            else:
                assert labels == row.labels, f"{row.name}: {sorted(labels)}"


def test_bucket_bounds_on_the_page(exposition: str) -> None:
    duration = _families(exposition)["prediction_duration_seconds"]
    bounds = sorted({float(s.labels["le"]) for s in duration.samples if s.name.endswith("_bucket")})
    assert bounds == [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, float("inf")]


def test_promtool_accepts_the_page_without_lint_problems(exposition: str) -> None:
    promtool = built_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_SECONDS,
        check=False,
    )
    problems = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, problems
    assert problems == "", problems
