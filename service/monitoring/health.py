"""Component health, checked in the background and read by `/health` and the status gauges.

Every probe has a deadline (`PROBE_TIMEOUT_SECONDS`): a dependency that hangs (a stopped server
whose kernel still accepts connections, a black-holed network) would otherwise hold the check
forever, and `/health` and the status gauges would go on repeating their last answer ("up") for as
long as it hangs.

Overall status: `down` when the service cannot predict (no model, or the prediction log's spool
is full), `degraded` when a dependency is down or the log is spooling but predictions are still
served (database: rows wait in the spool, features come from L1 and Redis; Redis: L1 and
computation take over; MLflow: the loaded model keeps serving), `ok` otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import redis

from service.background import PeriodicTask
from service.model.manager import ModelManager
from service.model.registry import ModelRegistry
from service.storage.database import Database
from service.storage.prediction_log.log import PredictionLog
from service.telemetry.providers import Telemetry

log = logging.getLogger(__name__)

# Well above a healthy probe (milliseconds) and above the registry's own fail-fast bound for a
# refused connection (MLflow: one retry after ~1 s); below the 5 s check interval of production.
PROBE_TIMEOUT_SECONDS = 3.0

Status = Literal["ok", "degraded", "down"]
STATUS_VALUE: dict[Status, int] = {"ok": 2, "degraded": 1, "down": 0}


@dataclass(frozen=True)
class ComponentHealth:
    up: bool
    latency_ms: float | None = None
    detail: str | None = None
    configured: bool = True
    degraded: bool = False  # up, but not as it should be (the prediction log while spooling)


@dataclass(frozen=True)
class HealthReport:
    status: Status
    components: dict[str, ComponentHealth]
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def timed_check(name: str, probe: Callable[[], Any]) -> ComponentHealth:
    """Up or down with latency; why it is down goes to the log, not to anonymous callers."""
    started = time.perf_counter()
    try:
        probe()
    except Exception as error:
        log.warning(
            "health check failed",
            extra={"component": name, "error": type(error).__name__, "reason": str(error)[:300]},
        )
        return ComponentHealth(up=False, latency_ms=_ms(started), detail=f"{name} unreachable (see the logs)")
    return ComponentHealth(up=True, latency_ms=_ms(started))


class ProbeTimeoutError(TimeoutError):
    """The probe did not return within its deadline (or an earlier one still has not)."""


class BoundedProbe:
    """Runs a probe in a daemon thread and waits for it at most `timeout` seconds.

    A probe that hangs keeps its thread; until it returns, each check reports the component down
    at once without starting another, so at most one thread per component is ever stuck (and,
    being a daemon, it never holds up the process's exit).
    """

    def __init__(self, name: str, probe: Callable[[], Any], timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
        self._name = name
        self._probe = probe
        self._timeout = timeout
        self._stuck: threading.Thread | None = None

    def __call__(self) -> None:
        if self._stuck is not None and self._stuck.is_alive():
            raise ProbeTimeoutError(f"the previous {self._name} check has still not returned")
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self._probe()
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=run, name=f"health-probe-{self._name}", daemon=True)
        thread.start()
        thread.join(self._timeout)
        if thread.is_alive():
            self._stuck = thread
            raise ProbeTimeoutError(f"no answer from {self._name} within {self._timeout:g} s")
        if errors:
            raise errors[0]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class HealthMonitor:
    def __init__(
        self,
        *,
        database: Database,
        prediction_log: PredictionLog,
        redis_client: redis.Redis | None,
        registry: ModelRegistry,
        models: ModelManager,
        telemetry: Telemetry,
        interval_seconds: float,
    ) -> None:
        self._prediction_log = prediction_log
        self._database_probe = BoundedProbe("database", database.ping)
        self._mlflow_probe = BoundedProbe("mlflow", registry.ping)
        self._redis_probe = BoundedProbe("redis", redis_client.ping) if redis_client is not None else None
        self._models = models
        self._telemetry = telemetry
        self._task = PeriodicTask("health-monitor", interval_seconds, self.check_now)
        self._latest: HealthReport | None = None

    @property
    def latest(self) -> HealthReport:
        return self._latest or self.check_now()

    def check_now(self) -> HealthReport:
        components = {
            "database": timed_check("database", self._database_probe),
            "prediction_log": self._prediction_log_health(),
            "redis": self._redis_health(),
            "mlflow": timed_check("mlflow", self._mlflow_probe),
            "model": self._model_health(),
        }
        report = HealthReport(status=overall(components), components=components)
        self._latest = report
        self._export(report)
        return report

    def _redis_health(self) -> ComponentHealth:
        if self._redis_probe is None:
            return ComponentHealth(up=False, detail="REDIS_URL not set: L1 cache only", configured=False)
        return timed_check("redis", self._redis_probe)

    def _prediction_log_health(self) -> ComponentHealth:
        status = self._prediction_log.status()
        detail = (
            f"{status.spool_rows} rows ({status.spool_bytes} of {status.capacity_bytes} bytes) "
            f"wait in the spool, the oldest {status.oldest_age_seconds:.1f} s"
        )
        if status.state == "down":
            return ComponentHealth(up=False, detail=f"spool full: {detail}; predictions answer 503")
        return ComponentHealth(up=True, detail=detail, degraded=status.state == "degraded")

    def _model_health(self) -> ComponentHealth:
        model = self._models.current
        if model is None:
            # last_error holds the registry's exception text: logged by the manager, not shown here.
            return ComponentHealth(up=False, detail="no model loaded (see the logs)")
        return ComponentHealth(up=True, detail=f"{model.name} version {model.version} (from {model.source})")

    def _export(self, report: HealthReport) -> None:
        metrics = self._telemetry.metrics
        components = report.components
        metrics.database_status.set(int(components["database"].up))
        metrics.mlflow_status.set(int(components["mlflow"].up))
        if components["redis"].configured:  # no series at all when Redis is not part of the set-up
            metrics.redis_status.set(int(components["redis"].up))
        metrics.health_status.set(STATUS_VALUE[report.status])

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stop()


def overall(components: dict[str, ComponentHealth]) -> Status:
    if not components["model"].up or not components["prediction_log"].up:
        return "down"
    if any(not c.up or c.degraded for c in components.values() if c.configured):
        return "degraded"
    return "ok"
