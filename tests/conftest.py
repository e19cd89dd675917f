"""Fixtures shared by the service tests.

Training and registering the first model takes seconds, so one seeded data directory (synthetic
market in SQLite, a champion in a SQLite-backed MLflow store, the model cache) is built once per
session and copied for each test that needs its own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.container import Container, bootstrap, build_container
from service.telemetry.providers import Telemetry

pytest_plugins = ["tests.harness.fixtures"]

# Background loops run fast in tests so that polling assertions finish quickly.
FAST_INTERVALS: dict[str, Any] = {
    "HEALTH_CHECK_INTERVAL_SECONDS": 0.2,
    "MONITOR_INTERVAL_SECONDS": 0.2,
    "MODEL_POLL_SECONDS": 0.5,
    "REDIS_RETRY_AFTER_SECONDS": 0.2,
    # No synthetic bars arriving on their own: tests add the bars they mean to (feed tests run it).
    "MARKET_FEED": "off",
}


# Empty means "derive from DATA_DIR"; given explicitly so that the process environment (which
# `mlflow.set_tracking_uri` writes to) never leaks one test's servers into another's settings.
ISOLATED_URLS: dict[str, Any] = {"DATABASE_URL": "", "MLFLOW_TRACKING_URI": "", "REDIS_URL": None}


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test: everything under `data_dir`, no .env file, fast background loops."""
    values: dict[str, Any] = {
        "DATA_DIR": data_dir,
        "LOG_JSON": False,
        **ISOLATED_URLS,
        **FAST_INTERVALS,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def _restore_mlflow_environment() -> Iterator[None]:
    """MLflow keeps its tracking URI (and our fail-fast defaults) in os.environ; undo per test."""
    saved = {key: value for key, value in os.environ.items() if key.startswith("MLFLOW_")}
    yield
    for key in [key for key in os.environ if key.startswith("MLFLOW_")]:
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture(scope="session")
def seeded_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded market + registered champion, built once; copy it (`data_dir`) before writing to it."""
    root = tmp_path_factory.mktemp("seeded") / "data"
    container = build_container(make_settings(root))
    try:
        bootstrap(container)
        assert container.models.current is not None, "bootstrap did not produce a champion"
    finally:
        container.close()
    return root


@pytest.fixture
def data_dir(seeded_data_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the seeded data directory."""
    target = tmp_path / "data"
    shutil.copytree(seeded_data_dir, target)
    return target


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return make_settings(data_dir)


@pytest.fixture
def container(settings: Settings) -> Iterator[Container]:
    """A bootstrapped container with its prediction log running but no periodic tasks."""
    built = build_container(settings)
    bootstrap(built)
    built.prediction_log.start()
    yield built
    built.close()


ClientFactory = Callable[..., TestClient]

# Requests come from a loopback address, as from `curl localhost` (TestClient's default
# "testclient" is no address at all): with no API_KEY set, loopback clients may write.
LOOPBACK_CLIENT = ("127.0.0.1", 50000)


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """Builds TestClients (lifespan entered) and closes them at teardown."""
    opened: list[TestClient] = []

    def build(settings: Settings, telemetry: Telemetry | None = None) -> TestClient:
        client = TestClient(
            create_app(settings, telemetry), raise_server_exceptions=False, client=LOOPBACK_CLIENT
        )
        client.__enter__()
        opened.append(client)
        return client

    yield build
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory, settings: Settings) -> TestClient:
    return make_client(settings)
