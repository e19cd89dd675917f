"""prometheus/: configs checked by the real promtool and amtool, rule conventions, the config and
rules loaded by a live Prometheus, and routing and inhibition in a live Alertmanager.

The promtool unit tests (prometheus/tests/*.test.yml) hold the behaviour of each rule; the tests
here make sure they run, that every alert and recording rule is covered by them, and that the
conventions other files depend on (runbook sections, contract names, burn-rate table) hold.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import WebhookSink, built_binary, start_alertmanager, start_prometheus, wait_until

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = PROMETHEUS_DIR / "alertmanager.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
RUNBOOK = REPO / "docs" / "runbook.md"
TELEMETRY = REPO / "docs" / "telemetry.md"

SEVERITIES = {"critical", "warning", "info"}
RECORDING_NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z0-9_]+:[a-z0-9_]+$")
ALERT_NAME = re.compile(r"^[A-Z][A-Za-z0-9]+$")  # CamelCase; MLflowDown keeps its brand spelling
BURN_RATE_ALERTS = ("PredictionAvailabilityBudgetBurn", "PredictionLatencyBudgetBurn")


# --- helpers -----------------------------------------------------------------------------------


def _run(argv: list[str], cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    """Run a checker; its full output goes into the assertion message when it fails."""
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of `kind` ("alert" or "record") across the rule files."""
    return [
        rule
        for path in RULE_FILES
        for group in _load(path)["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


def _alert_names() -> set[str]:
    return {rule["alert"] for rule in _rules("alert")}


def _unit_tests() -> list[dict[str, Any]]:
    return [test for path in TEST_FILES for test in _load(path)["tests"]]


@pytest.fixture(scope="module")
def promtool() -> str:
    return built_binary("promtool")


@pytest.fixture(scope="module")
def amtool() -> str:
    return built_binary("amtool")


def test_files_are_where_the_tests_look() -> None:
    """An empty glob would make every parametrized test below vanish instead of fail."""
    names = {path.stem for path in RULE_FILES}
    assert {"recording", "alerts-service", "alerts-model", "slo"} <= names
    assert len(TEST_FILES) == len(RULE_FILES)


# --- promtool ----------------------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config(promtool: str) -> None:
    result = _run([promtool, "check", "config", PROMETHEUS_CONFIG.name])
    _assert_ok(result)
    # The rule_files glob is resolved relative to the config: all our rule files must be found.
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout + result.stderr


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda path: path.name)
def test_promtool_accepts_the_rules(promtool: str, rule_file: Path) -> None:
    _assert_ok(_run([promtool, "check", "rules", str(rule_file)]))


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(promtool: str, test_file: Path) -> None:
    _assert_ok(_run([promtool, "test", "rules", test_file.name], cwd=test_file.parent))


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda path: path.name)
def test_each_rule_file_has_its_own_test_file(rule_file: Path) -> None:
    test_file = PROMETHEUS_DIR / "tests" / f"{rule_file.stem}.test.yml"
    assert test_file.exists(), f"no promtool test file for {rule_file.name}"
    assert f"../rules/{rule_file.name}" in _load(test_file)["rule_files"]


# --- rule conventions --------------------------------------------------------------------------


@pytest.mark.parametrize("rule", _rules("alert"), ids=lambda rule: rule["alert"])
def test_alert_rule_has_the_required_labels_and_annotations(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert ALERT_NAME.match(name), f"{name} is not CamelCase"
    assert rule.get("for"), f"{name} has no for: duration"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert "{{" not in annotations["summary"], "summary must be a fixed sentence"
    assert annotations["summary"].endswith("."), "summary must be one sentence"
    assert "{{" in annotations["description"], "description must print labels or the value"
    assert annotations["runbook_url"] == f"docs/runbook.md#{name.lower()}"


def test_runbook_has_a_section_for_every_alert() -> None:
    headings = set(re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(), flags=re.MULTILINE))
    missing = _alert_names() - headings
    assert not missing, f"docs/runbook.md lacks sections for {sorted(missing)}"


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for test in _unit_tests():
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = _alert_names()
    assert not alerts - firing, f"never tested firing: {sorted(alerts - firing)}"
    assert not alerts - silent, f"never tested silent: {sorted(alerts - silent)}"


def test_every_recording_rule_has_an_expression_test() -> None:
    tested = " ".join(case["expr"] for test in _unit_tests() for case in test.get("promql_expr_test", []))
    referenced = set(re.findall(r"[a-z_]+:[a-z0-9_]+:\w+", tested))
    untested = {rule["record"] for rule in _rules("record")} - referenced
    assert not untested, f"recording rules without a promql_expr_test: {sorted(untested)}"


def test_recording_rules_are_named_level_metric_operations() -> None:
    bad = [rule["record"] for rule in _rules("record") if not RECORDING_NAME.match(rule["record"])]
    assert not bad


def _contract_recording_rules() -> set[str]:
    """Recording rule names of the table in docs/telemetry.md.

    A cell like "`a:b:p50_rate5m` / `p95_rate5m`" abbreviates siblings: a bare name replaces the
    last part of the full name before it.
    """
    section = TELEMETRY.read_text().split("## Recording rules", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        full = ""
        for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
            full = name if ":" in name else full.rsplit(":", 1)[0] + ":" + name
            names.add(full)
    return names


def test_contract_recording_rules_exist() -> None:
    contract = _contract_recording_rules()
    assert len(contract) >= 9, "the telemetry.md table was not parsed"
    missing = contract - {rule["record"] for rule in _rules("record")}
    assert not missing, f"recording rules promised by docs/telemetry.md are missing: {sorted(missing)}"


def _burn_rate_table() -> list[tuple[str, str, str, str, str]]:
    """Rows (severity, long, short, factor, for) of the table in the comments of rules/slo.yml."""
    text = (PROMETHEUS_DIR / "rules" / "slo.yml").read_text()
    row = re.compile(r"^#\s+(critical|warning|info)\s+(\w+)\s+(\w+)\s+([\d.]+)\s+(\w+)\s", re.MULTILINE)
    return [(m[1], m[2], m[3], m[4], m[5]) for m in row.finditer(text)]


@pytest.mark.parametrize("alertname", BURN_RATE_ALERTS)
def test_burn_rate_rules_follow_the_table(alertname: str) -> None:
    table = _burn_rate_table()
    assert len(table) == 4, f"burn-rate table not found or changed shape: {table}"
    rules = [rule for rule in _rules("alert") if rule["alert"] == alertname]
    found = {
        (r["labels"]["severity"], r["labels"]["long_window"], r["labels"]["short_window"], r["for"]): r
        for r in rules
    }
    assert len(rules) == len(table)
    for severity, long, short, factor, duration in table:
        rule = found.get((severity, long, short, duration))
        assert rule is not None, f"{alertname}: no rule for row {severity} {long}/{short} for {duration}"
        expr = " ".join(rule["expr"].split())
        for window in (long, short):
            assert re.search(rf":ratio_rate{window} / \(1 - [\d.]+\) > {re.escape(factor)}(\s|$)", expr), (
                f"{alertname} {long}/{short}: window {window} does not compare with factor {factor}: {expr}"
            )


# --- prometheus.yml essentials ------------------------------------------------------------------


def test_scrape_config_keeps_service_labels_and_probes_liveness_only() -> None:
    config = _load(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"otel-collector", "otel-collector-self", "prometheus", "alertmanager"} <= set(jobs)
    assert jobs["otel-collector"]["honor_labels"] is True
    liveness = jobs["prediction-api-liveness"]
    assert liveness["static_configs"][0]["targets"] == ["api:8000"]
    drop_all = {"source_labels": ["__name__"], "regex": ".+", "action": "drop"}
    assert drop_all in liveness["metric_relabel_configs"]
    assert config["global"]["scrape_interval"] == "5s"
    assert config["storage"]["exemplars"]["max_exemplars"] > 0


# --- Alertmanager ------------------------------------------------------------------------------


def test_amtool_accepts_the_alertmanager_config(amtool: str) -> None:
    _assert_ok(_run([amtool, "check-config", ALERTMANAGER_CONFIG.name]))


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=HighLatency", "severity=critical", "job=prediction-api"], "pager"),
        (["alertname=ModerateLatency", "severity=warning", "job=prediction-api"], "ticket"),
        (["alertname=Something", "severity=info"], "blackhole"),
        (["alertname=NoSeverity"], "ticket"),
    ],
)
def test_alerts_route_by_severity(amtool: str, labels: list[str], receiver: str) -> None:
    config = f"--config.file={ALERTMANAGER_CONFIG.name}"
    result = _run([amtool, "config", "routes", "test", config, f"--verify.receivers={receiver}", *labels])
    _assert_ok(result)
    assert result.stdout.strip() == receiver


def test_every_alert_severity_has_a_route() -> None:
    routed = {
        matcher.split("=", 1)[1].strip('"')
        for route in _load(ALERTMANAGER_CONFIG)["route"]["routes"]
        for matcher in route["matchers"]
        if matcher.startswith("severity=")
    }
    used = {rule["labels"]["severity"] for rule in _rules("alert")}
    assert used <= routed


# --- live Prometheus ---------------------------------------------------------------------------


@pytest.mark.integration
def test_prometheus_loads_and_evaluates_every_rule(tmp_path: Path) -> None:
    """The real server with prometheus.yml as is: every rule evaluates without error.

    None of the compose hostnames resolve here, so the liveness probe fails and
    PredictionServiceDown must turn pending under the service's job: the probe job, the relabelling
    of its name and the alert work together.
    """
    with (
        start_prometheus(tmp_path, PROMETHEUS_CONFIG) as prometheus,
        httpx.Client(base_url=prometheus.url) as client,
    ):

        def rules() -> list[dict[str, Any]]:
            groups = client.get("/api/v1/rules").raise_for_status().json()["data"]["groups"]
            return [rule for group in groups for rule in group["rules"]]

        expected = len(_rules("alert")) + len(_rules("record"))
        # The SLO group runs every 30 s, so its first evaluation can take that long.
        wait_until(
            lambda: len(rules()) == expected and all(rule["health"] == "ok" for rule in rules()),
            timeout=60,
            what="every rule evaluated once",
        )
        errors = [(rule["name"], rule.get("lastError")) for rule in rules() if rule.get("lastError")]
        assert errors == []

        def service_down() -> list[dict[str, str]]:
            alerts = client.get("/api/v1/alerts").raise_for_status().json()["data"]["alerts"]
            return [a["labels"] for a in alerts if a["labels"]["alertname"] == "PredictionServiceDown"]

        # Before the first probe the `absent` branch is pending (no instance); the failed probe
        # then gives the alert its target.
        wait_until(
            lambda: any(labels.get("instance") == "api:8000" for labels in service_down()),
            timeout=30,
            what="PredictionServiceDown pending for api:8000",
        )
        assert {labels["job"] for labels in service_down()} == {"prediction-api"}


# --- live Alertmanager -------------------------------------------------------------------------


def _config_for_sink(sink: WebhookSink, path: Path) -> Path:
    """prometheus/alertmanager.yml with every webhook pointed at the sink and its timers shortened.

    Only the waits change (seconds instead of minutes, so the test is quick); routes, receivers
    and inhibition rules are the file's own.
    """
    config = _load(ALERTMANAGER_CONFIG)
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = sink.url
    for route in [config["route"], *config["route"].get("routes", [])]:
        for timer in ("group_wait", "group_interval"):
            if timer in route:
                route[timer] = "1s"
    path.write_text(yaml.safe_dump(config))
    return path


def _alert(alertname: str, job: str, severity: str, **labels: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": alertname, "job": job, "severity": severity, **labels},
        "annotations": {"summary": f"{alertname} posted by test_prometheus."},
    }


def _notified(sink: WebhookSink) -> list[tuple[str, str, str]]:
    """(receiver, alertname, job) of every firing alert the sink received."""
    return [
        (body["receiver"], alert["labels"]["alertname"], alert["labels"]["job"])
        for body in sink.received()
        for alert in body["alerts"]
        if alert["status"] == "firing"
    ]


@pytest.mark.integration
def test_alertmanager_inhibits_what_a_bigger_alert_explains(
    tmp_path: Path, webhook_sink: WebhookSink
) -> None:
    """Post alerts to the real Alertmanager and see which reach the webhook.

    Job prediction-api is down: its HighLatency must be held back. Job canary has a latency pair,
    a burn-rate pair and an unrelated warning: the warnings of the pairs are held back, the rest
    arrives at the receiver its severity routes to.
    """
    config = _config_for_sink(webhook_sink, tmp_path / "alertmanager.yml")
    burn = {"long_window": "1h", "short_window": "5m"}
    alerts = [
        _alert("PredictionServiceDown", "prediction-api", "critical"),
        _alert("HighLatency", "prediction-api", "critical"),
        _alert("HighLatency", "canary", "critical"),
        _alert("ModerateLatency", "canary", "warning"),
        _alert("PredictionLatencyBudgetBurn", "canary", "critical", **burn),
        _alert("PredictionLatencyBudgetBurn", "canary", "warning", long_window="1d", short_window="2h"),
        _alert("RedisDown", "canary", "warning", instance="a"),
    ]
    with (
        start_alertmanager(tmp_path, config) as alertmanager,
        httpx.Client(base_url=alertmanager.url) as client,
    ):
        client.post("/api/v2/alerts", json=alerts).raise_for_status()

        def state() -> dict[tuple[str, str, str], str]:
            found = client.get("/api/v2/alerts").raise_for_status().json()
            return {
                (a["labels"]["alertname"], a["labels"]["job"], a["labels"]["severity"]): a["status"]["state"]
                for a in found
            }

        expected_state = {
            ("PredictionServiceDown", "prediction-api", "critical"): "active",
            ("HighLatency", "prediction-api", "critical"): "suppressed",
            ("HighLatency", "canary", "critical"): "active",
            ("ModerateLatency", "canary", "warning"): "suppressed",
            ("PredictionLatencyBudgetBurn", "canary", "critical"): "active",
            ("PredictionLatencyBudgetBurn", "canary", "warning"): "suppressed",
            ("RedisDown", "canary", "warning"): "active",
        }
        try:
            wait_until(lambda: state() == expected_state, timeout=20, what="the expected alert states")
        except TimeoutError:
            assert state() == expected_state  # shows pytest's diff of what differs
            raise

        delivered = {
            ("pager", "PredictionServiceDown", "prediction-api"),
            ("pager", "HighLatency", "canary"),
            ("pager", "PredictionLatencyBudgetBurn", "canary"),
            ("ticket", "RedisDown", "canary"),
        }
        wait_until(
            lambda: delivered <= set(_notified(webhook_sink)),
            timeout=30,
            what=f"notifications {sorted(delivered)}; got {_notified(webhook_sink)}",
        )
        # The held-back alerts' groups were due at the same moment as the delivered ones.
        assert set(_notified(webhook_sink)) == delivered
        burn_warnings = [
            alert
            for body in webhook_sink.received()
            for alert in body["alerts"]
            if alert["labels"]["severity"] == "warning" and alert["labels"]["alertname"] != "RedisDown"
        ]
        assert burn_warnings == []
