"""The API against its own OpenAPI document: schemathesis, every check, on a real server.

A real uvicorn process on a loopback port serves a private copy of the seeded data directory
(SQLite) or a fresh PostgreSQL database, with an API key set; schemathesis reads `/openapi.json`
and runs all its phases and checks (`--checks all`): no 5xx, every status and body documented,
schema-valid requests accepted, schema-violating ones rejected, writes refused without the key
(`ignored_auth`) and accepted with it. Each run prints its seed; set SCHEMATHESIS_SEED to replay.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import ManagedProcess, free_port

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG = HERE / "schemathesis.toml"
API_KEY = "contract-test-key-4f1c"
# Examples per operation and phase; 100 gives about 1,500 cases over the 11 operations.
MAX_EXAMPLES = 100
MIN_CASES = 1000


def serve(data_dir: Path, port: int, *, database_url: str, log_path: Path) -> ManagedProcess:
    env = {
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": database_url,
        "MLFLOW_TRACKING_URI": "",
        "REDIS_URL": "",
        "API_KEY": API_KEY,
        "LOG_JSON": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    argv = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = ManagedProcess("contract-api", argv, log_path=log_path, env=env, cwd=REPO)

    def healthy() -> bool:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["status"] == "ok"

    process.wait_ready(healthy, timeout=180, what="the API to serve a healthy /health")
    return process


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""  # the data directory's own SQLite file
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


def test_the_api_matches_its_openapi_document(
    seeded_data_dir: Path, tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(seeded_data_dir, data_dir)
    seed = int(os.environ.get("SCHEMATHESIS_SEED") or random.randrange(2**32))
    port = free_port()
    log_path = tmp_path / "api.log"
    with serve(data_dir, port, database_url=database_url, log_path=log_path):
        started = time.monotonic()
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file",
                str(CONFIG),
                "--no-color",
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--checks",
                "all",
                "--seed",
                str(seed),
                "--max-examples",
                str(MAX_EXAMPLES),
                "--workers",
                "1",
                "--request-timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            env={**os.environ, "STOCKPRED_CONTRACT_API_KEY": API_KEY},
        )
        elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    cases = _generated_cases(output)
    print(output[-4000:])
    print(
        f"schemathesis: seed {seed}, {cases} cases, exit {result.returncode}, {elapsed:.0f}s "
        f"(replay: SCHEMATHESIS_SEED={seed} pytest tests/contract)"
    )
    assert result.returncode == 0, f"schemathesis found failures (seed {seed}):\n{output[-8000:]}"
    assert cases >= MIN_CASES, f"only {cases} cases generated (seed {seed})"
    server_log = log_path.read_text()
    assert "Traceback" not in server_log, server_log[-4000:]
    assert '"unhandled error"' not in server_log


def _generated_cases(output: str) -> int:
    match = re.search(r"(\d+) generated", output)
    assert match, f"no case count in schemathesis' summary:\n{output[-2000:]}"
    return int(match.group(1))
