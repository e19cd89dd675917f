"""Test harness: start real servers on loopback for integration and end-to-end tests.

Read in this order:
- `process.py`  free ports, polling with a deadline, finding binaries, child processes with logs.
- `servers.py`  one `start_*` per program (Redis, PostgreSQL, MLflow, Prometheus, Alertmanager,
  collector, Jaeger), and `built_binary` for the programs scripts/ builds from source.
- `webhook.py`  an HTTP sink that records what Alertmanager sends.
- `service.py`  the prediction service itself as a process (`stockpred serve`), restartable.
- `load.py`     a steady, bounded load (predictions, or a mixed plan) whose every outcome is recorded,
  and latency percentiles per phase.
- `latency_proxy.py` a TCP proxy that makes a real server slow or hung on demand (fault tests).
- `observe.py`  what fault tests read: a process's RSS, the service's metrics, the predictions table.
- `market.py`   the synthetic market's next bars, for `POST /market-data`.
- `fixtures.py` the pytest plugin: shared servers as fixtures, and server logs shown on failure.
"""

from tests.harness.process import (
    ManagedProcess,
    ProcessExitedError,
    distinct_free_ports,
    free_port,
    in_ci,
    require_binary,
    wait_until,
)
from tests.harness.servers import (
    CollectorPorts,
    JaegerServer,
    Server,
    built_binary,
    collector_binary,
    crash_postgres,
    create_database,
    drop_database,
    dump_logs,
    postgres_url,
    restart_postgres,
    start_alertmanager,
    start_collector,
    start_jaeger,
    start_mlflow,
    start_postgres,
    start_prometheus,
    start_redis,
    wait_mlflow,
)
from tests.harness.webhook import WebhookSink

__all__ = [
    "CollectorPorts",
    "JaegerServer",
    "ManagedProcess",
    "ProcessExitedError",
    "Server",
    "WebhookSink",
    "built_binary",
    "collector_binary",
    "crash_postgres",
    "create_database",
    "distinct_free_ports",
    "drop_database",
    "dump_logs",
    "free_port",
    "in_ci",
    "postgres_url",
    "require_binary",
    "restart_postgres",
    "start_alertmanager",
    "start_collector",
    "start_jaeger",
    "start_mlflow",
    "start_postgres",
    "start_prometheus",
    "start_redis",
    "wait_mlflow",
    "wait_until",
]
