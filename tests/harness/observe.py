"""What fault tests read off the running system: a process's memory, the service's own metrics,
the rows in its database, and the figures they print.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (VmRSS of /proc/<pid>/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def metric(base_url: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The sum of the samples named `name` whose labels include `labels`, from /metrics; None if none.

    `name` is the sample name (`model_reloads_total`, not the family `model_reloads`).
    """
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    wanted = dict(labels or {})
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and wanted.items() <= sample.labels.items()
    ]
    return sum(values) if values else None


class PredictionRow(NamedTuple):
    id: str
    symbol: str
    as_of: datetime
    created_at: datetime


def prediction_rows(database_url: str) -> list[PredictionRow]:
    """Every row of `predictions` of a PostgreSQL database (a list, so a doubled id would show)."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, connect_timeout=5) as conn:
        query = "SELECT id, symbol, as_of, created_at FROM predictions"
        return [PredictionRow(*row) for row in conn.execute(query)]


def report(name: str, **figures: object) -> None:
    """One line of figures per test, as the prediction log's fault tests print them."""
    print(f"\n[{name}] " + ", ".join(f"{key}={value}" for key, value in figures.items()))
