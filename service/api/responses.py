"""What each operation can answer besides 200, declared once so the OpenAPI document is exact.

Every error body is `ErrorOut`. A route lists exactly the statuses it can produce; `errors(...)`
turns them into FastAPI's `responses=` mapping with a description per status (and the
`Retry-After` header on 503, which every 503 error answer carries).
"""

from __future__ import annotations

from typing import Any

from service.api.schemas import ErrorOut

RETRY_AFTER_SECONDS = 5

DESCRIPTIONS: dict[int, str] = {
    400: "The body is not valid JSON (RFC 8259: no NaN, no Infinity, no number that overflows).",
    401: "The endpoint writes data and API_KEY is set: X-API-Key is missing or wrong.",
    403: "No API_KEY is configured, and writes are accepted from loopback clients only.",
    404: "Unknown symbol (the body lists the known ones) or unknown prediction id.",
    409: "The symbol's features cannot be computed: too few bars, or a bar in the window is unusable "
    "(the body names the feature and the bar; re-post a corrected bar).",
    413: "The body or the batch is larger than the configured limit.",
    422: "The request is well-formed JSON but breaks a rule; `problems` lists every one.",
    503: "A dependency is unavailable (database, or no model loaded yet); nothing was written. "
    "Retry after the number of seconds in Retry-After.",
}

RETRY_AFTER_HEADER: dict[str, Any] = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 1},
        "required": True,
    }
}

# Statuses shared by kinds of operation.
BODY = (400, 413, 422)  # any operation that reads a JSON body
WRITE = (401, 403)  # any mutating operation (see security.py)
DATABASE = (503,)  # any operation that touches the database


def errors(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: ErrorOut for each status, with an optional specific description."""
    declared: dict[int | str, dict[str, Any]] = {}
    for code in sorted(set(statuses)):
        entry: dict[str, Any] = {
            "model": ErrorOut,
            "description": descriptions.get(f"d{code}", DESCRIPTIONS[code]),
        }
        if code == 503:
            entry["headers"] = RETRY_AFTER_HEADER
        declared[code] = entry
    return declared
