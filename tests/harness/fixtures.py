"""pytest plugin: shared real servers as fixtures, and their logs printed when a test fails.

Enabled from tests/conftest.py with `pytest_plugins = ["tests.harness.fixtures"]`.

Redis and PostgreSQL are session-scoped (starting PostgreSQL costs seconds); tests that need
isolation get a fresh database (`fresh_postgres_url`) or flush Redis themselves. A test that must
stop or restart a server starts its own with `start_*` instead of touching the shared one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.harness.process import ManagedProcess, all_processes
from tests.harness.servers import (
    Server,
    create_database,
    drop_database,
    start_postgres,
    start_redis,
)
from tests.harness.webhook import WebhookSink

# Lines of each server log attached to a failed test's report.
FAILURE_LOG_LINES = 80

# Per test: how far each already-running process's log had got when the test began, so a failure
# shows only what the servers logged during that test.
_LOG_OFFSETS = pytest.StashKey[dict[ManagedProcess, int]]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_LOG_OFFSETS] = {process: process.log_size() for process in all_processes()}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, add a report section per server that logged during the test.

    pytest prints report sections under the failure, as it does for captured output. The report
    is also kept as `item.rep_<phase>` for fixtures that want to know how the test went.
    """
    report: pytest.TestReport = yield
    setattr(item, f"rep_{report.when}", report)
    if report.failed:
        offsets = item.stash.get(_LOG_OFFSETS, {})
        for process in all_processes():
            since = offsets.get(process, 0)  # started during the test: show from the beginning
            if process.log_size() > since:
                tail = process.log_tail(FAILURE_LOG_LINES, since=since)
                report.sections.append((f"{process.name} log ({process.log_path})", tail))
    return report  # type: ignore[return-value]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Redis shared by the session; `.url` is `redis://127.0.0.1:PORT/0`."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A PostgreSQL shared by the session, with role and database `stockpred`."""
    with start_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def fresh_postgres_url(postgres_server: Server) -> Iterator[str]:
    """SQLAlchemy URL of an empty database made for this test and dropped after it."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres_server, name)
    yield url
    drop_database(postgres_server, name)


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    """A fresh HTTP sink recording POSTed JSON, e.g. as an Alertmanager webhook receiver."""
    with WebhookSink() as sink:
        yield sink
