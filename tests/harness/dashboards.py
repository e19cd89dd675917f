"""The Grafana dashboards as data: every panel query, and the substitution Grafana makes before sending it.

Shared by tests/pipeline/test_grafana.py (queries against a Prometheus on backfilled data) and
tests/e2e/test_stack.py (the same queries against the live stack's Prometheus).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


DASHBOARDS = {path.stem: load_json(path) for path in DASHBOARD_FILES}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for item in board.get("panels", []):
        yield item
        yield from item.get("panels", [])


def queried_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in panels(board) if p.get("type") != "row")


def all_targets() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dashboard uid, panel, target) for every query of every panel."""
    return [
        (board["uid"], panel, target)
        for board in DASHBOARDS.values()
        for panel in queried_panels(board)
        for target in panel.get("targets", [])
    ]


def grafana_intervals(*, scrape_seconds: float, step_seconds: float, range_seconds: float) -> dict[str, str]:
    """Grafana's built-in interval variables for a panel of a dashboard over `range_seconds`.

    $__interval: the step (never below the datasource's scrape interval); $__rate_interval:
    max($__interval + scrape interval, 4 x scrape interval); $__range: the dashboard's time range.
    """
    interval = max(step_seconds, scrape_seconds)
    return {
        "__interval": f"{interval:g}s",
        "__rate_interval": f"{max(interval + scrape_seconds, 4 * scrape_seconds):g}s",
        "__range": f"{range_seconds:g}s",
    }


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace every `$name` / `${name}` with `values[name]`; a variable without a value fails."""

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in values, f"no substitution for ${name} in {expr}"
        return values[name]

    result = re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)
    assert "$" not in result
    return result
