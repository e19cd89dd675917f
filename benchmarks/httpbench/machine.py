"""The set-up a run measured on, for the top of its results: machine, versions, server flags.

A figure without its machine and versions cannot be compared with the next run's; this is what
makes two results files diffable.
"""

from __future__ import annotations

import glob
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "sqlalchemy",
    "psycopg",
    "redis",
    "scikit-learn",
    "mlflow",
)

SERVER_FLAGS = (
    "stockpred serve --host 127.0.0.1 --port P --workers W -> uvicorn.run(service.api.app:create_app, "
    "factory=True, log_config=None, access_log=False, timeout_graceful_shutdown=10); loop and http "
    "'auto' (uvloop, httptools); the ceiling: python -m benchmarks.bare_app with the same uvicorn.run flags"
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def filesystem(path: Path) -> str:
    """The filesystem type under `path`: the prediction log fsyncs there (tmpfs would flatter)."""
    result = _run(["stat", "-f", "-c", "%T", str(path)])
    return result or "unknown"


def tool_version(argv: list[str]) -> str:
    """First line a tool prints about its version ('unknown' if it will not say)."""
    output = _run(argv)
    return output.splitlines()[0] if output else "unknown"


def _run(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (result.stdout or result.stderr).strip()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def postgres_version() -> str:
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    return tool_version([binaries[0], "--version"]) if binaries else "not installed"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def describe(*, wrk: str, vegeta: str, otelcol: str | None, workdir: Path) -> dict[str, Any]:
    """Everything the results file states about the set-up."""
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "collector": tool_version([otelcol, "--version"]) if otelcol else "not used",
        "wrk": tool_version([wrk, "-v"]),
        "vegeta": " ".join(tool_version([vegeta, "-version"]).split()[:2]),
        "redis": tool_version(["redis-server", "--version"]),
        "postgres": postgres_version(),
        "workdir_filesystem": filesystem(workdir),
        "load_average_at_start": load_average(),
        "server_flags": SERVER_FLAGS,
    }
