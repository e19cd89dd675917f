"""The prediction service itself as a real process: `stockpred serve` on a free loopback port.

Fault tests kill it, stop its database and restart it; `ServiceProcess.restart` starts the same
command again on the same port and data directory, as a supervisor would.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.harness.process import LOOPBACK, ManagedProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
STOCKPRED = REPO_ROOT / ".venv" / "bin" / "stockpred"
SERVICE_START_TIMEOUT = 120.0

# Background checks every half second, so health follows an outage at once in tests. No market
# feed: the tests decide which bars arrive.
FAST_SERVICE_ENV = {
    "LOG_JSON": "false",
    "HEALTH_CHECK_INTERVAL_SECONDS": "0.5",
    "MONITOR_INTERVAL_SECONDS": "1",
    "MARKET_FEED": "off",
}


@dataclass
class ServiceProcess:
    process: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def health(self) -> dict[str, object]:
        body: dict[str, object] = httpx.get(f"{self.url}/health", timeout=5).json()
        return body

    def wait_ready(self, statuses: Collection[str] = ("ok",), timeout: float = SERVICE_START_TIMEOUT) -> None:
        def ready() -> bool:
            return self.health()["status"] in statuses

        self.process.wait_ready(ready, timeout=timeout, what=f"/health status in {sorted(statuses)}")

    def restart(self, statuses: Collection[str] = ("ok",)) -> None:
        """Start the same command again (after a kill or a stop) and wait until it serves."""
        if self.process.is_running():
            self.process.stop()
        self.process = self.process.restarted()
        self.wait_ready(statuses)

    def stop(self) -> None:
        self.process.stop()


def start_service(
    workdir: Path, env: Mapping[str, str], *, statuses: Collection[str] = ("ok",), workers: int = 1
) -> ServiceProcess:
    """`stockpred serve` with `env` (DATA_DIR, DATABASE_URL, ...) on top of FAST_SERVICE_ENV."""
    assert STOCKPRED.exists(), f"{STOCKPRED} missing: create the venv (make install)"
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [str(STOCKPRED), "serve", "--host", LOOPBACK, "--port", str(port), "--workers", str(workers)]
    process = ManagedProcess(
        "stockpred",
        argv,
        log_path=workdir / "service.log",
        env={**FAST_SERVICE_ENV, **env},
        cwd=workdir,  # no stray .env from the checkout
    )
    service = ServiceProcess(process, port)
    try:
        service.wait_ready(statuses)
    except BaseException:
        process.stop()
        raise
    return service
