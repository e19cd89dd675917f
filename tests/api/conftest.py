"""The API tests run twice: on SQLite (the embedded default) and on a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from tests.conftest import ClientFactory, make_settings


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def backend_settings(request: pytest.FixtureRequest, data_dir: Path) -> Settings:
    if request.param == "sqlite":
        return make_settings(data_dir, MAX_BATCH_BARS=50, MAX_BATCH_SYMBOLS=3)
    database_url = request.getfixturevalue("fresh_postgres_url")
    return make_settings(data_dir, DATABASE_URL=database_url, MAX_BATCH_BARS=50, MAX_BATCH_SYMBOLS=3)


@pytest.fixture
def api(make_client: ClientFactory, backend_settings: Settings) -> TestClient:
    return make_client(backend_settings)
