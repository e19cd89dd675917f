"""When the champion moves, the retired version's per-version series disappear at once.

The model, accuracy and drift gauges are observable: each collection reports what their
callbacks yield, and they yield only the served version. Checked through the SDK's in-memory
reader and through the `/metrics` exposition, before and after the monitors refresh again.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.container import Container, build_container, train_and_register
from tests.conftest import ClientFactory, make_settings
from tests.harness import wait_until
from tests.telemetry import MONITOR_DEADLINE_SECONDS, collect, next_bar_batch, recorded_telemetry

PER_VERSION = (
    "model.info",
    "model.feature_importance",
    "model.accuracy",
    "model.resolved_predictions",
    "model.drift_score",
    "model.feature_drift",
    "model.prediction_drift",
)
PROMETHEUS_FAMILIES = (
    "model_info",
    "model_feature_importance",
    "model_accuracy",
    "model_resolved_predictions",
    "model_drift_score",
    "model_feature_drift",
    "model_prediction_drift",
)


def versions_reported(collected: dict[str, object]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name in PER_VERSION:
        instrument = collected.get(name)
        points = getattr(instrument, "points", []) if instrument is not None else []
        found[name] = {str((p.attributes or {}).get("model_version")) for p in points}
    return found


def exposed_versions(client: TestClient) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {family: set() for family in PROMETHEUS_FAMILIES}
    for line in client.get("/metrics").text.splitlines():
        family = line.split("{", 1)[0]
        if family in found and 'model_version="' in line:
            found[family].add(line.split('model_version="', 1)[1].split('"', 1)[0])
    return found


def test_promoting_a_new_version_removes_every_series_of_the_old_one(
    make_client: ClientFactory, data_dir: Path
) -> None:
    settings = make_settings(data_dir, MODEL_POLL_SECONDS=3600)  # the test swaps, not the poller
    recorded = recorded_telemetry(settings)
    client = make_client(settings, recorded.telemetry)
    container: Container = client.app.state.container  # type: ignore[attr-defined]
    old = client.get("/models/current").json()["version"]

    # Give the old version an accuracy series: a prediction, then the bar that resolves it.
    prediction = client.post("/predict", json={"symbol": "AAPL"}).json()
    batch = next_bar_batch("AAPL", after=prediction["as_of"], seed=settings.SEED)
    assert client.post("/market-data", json=batch).json()["resolved_predictions"] == 1
    wait_until(
        lambda: all(versions == {old} for versions in versions_reported(collect(recorded.reader)).values()),
        timeout=MONITOR_DEADLINE_SECONDS,
        what=f"every per-version gauge reported for version {old}",
    )

    trainer = build_container(settings)
    try:
        new = train_and_register(trainer, promote=True)
    finally:
        trainer.close()
    assert container.models.check_for_new_champion() is True

    # The very next collection, before any monitor refreshed: nothing of the old version.
    reported = versions_reported(collect(recorded.reader))
    assert all(old not in versions for versions in reported.values()), reported
    assert reported["model.info"] == {new}
    assert reported["model.feature_importance"] == {new}
    exposed = exposed_versions(client)
    assert all(old not in versions for versions in exposed.values()), exposed
    assert exposed["model_info"] == {new}

    # After the monitors refresh (the database still holds the old version's resolved rows).
    container.outcomes.refresh()
    container.drift.refresh()
    reported = versions_reported(collect(recorded.reader))
    assert all(old not in versions for versions in reported.values()), reported
    assert reported["model.drift_score"] == {new}
    assert all(old not in versions for versions in exposed_versions(client).values())
