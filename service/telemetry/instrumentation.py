"""Spans and counts for the objects the service owns: its SQL engine and its Redis client."""

from __future__ import annotations

from typing import Any

from service.telemetry.providers import Telemetry

KNOWN_TABLES = frozenset({"market_bars", "predictions", "alembic_version"})


_SQL_VERBS = {"SELECT": "select", "INSERT": "insert", "UPDATE": "update", "DELETE": "delete"}


def instrument_engine(engine: Any, telemetry: Telemetry) -> None:
    """SQL spans for every statement (contrib's EngineTracer) and `database.operations` counts.

    The contrib instrumentor's `instrument()` is a process-wide singleton; attaching its
    EngineTracer to this engine instead lets every engine (and every test) use its own provider.
    Calling this twice on one engine is harmless.
    """
    if getattr(engine, "_stockpred_instrumented", False):
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__ as contrib_version
    from sqlalchemy import event

    tracer = telemetry.tracer_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy", contrib_version)
    meter = telemetry.meter_provider.get_meter("opentelemetry.instrumentation.sqlalchemy", contrib_version)
    connections = meter.create_up_down_counter(
        "db.client.connections.usage", unit="{connection}", description="Connections by state."
    )
    EngineTracer(tracer, engine, connections)  # type: ignore[no-untyped-call]
    counter = telemetry.metrics.database_operations

    def after_execute(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        counter.add(1, {**classify_statement(statement), "outcome": "success"})

    def on_error(context: Any) -> None:
        counter.add(1, {**classify_statement(context.statement or ""), "outcome": "error"})

    event.listen(engine, "after_cursor_execute", after_execute)
    event.listen(engine, "handle_error", on_error)
    engine._stockpred_instrumented = True


def classify_statement(statement: str) -> dict[str, str]:
    """Operation and table of a SQL statement, from bounded sets (unknown tables become `other`)."""
    words = statement.replace("(", " ").replace(",", " ").split()
    if not words:
        return {"operation": "other", "table": "other"}
    operation = _SQL_VERBS.get(words[0].upper(), "other")
    table = "other"
    anchor = {"select": "FROM", "insert": "INTO", "delete": "FROM"}.get(operation)
    upper = [word.upper() for word in words]
    if operation == "update" and len(words) > 1:
        table = words[1]
    elif anchor and anchor in upper:
        position = upper.index(anchor) + 1
        table = words[position] if position < len(words) else "other"
    table = table.strip('"').lower()
    return {"operation": operation, "table": table if table in KNOWN_TABLES else "other"}


def instrument_redis_client(client: Any, telemetry: Telemetry) -> None:
    """A span per Redis command of this client only, on this app's tracer provider."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor.instrument_client(client, tracer_provider=telemetry.tracer_provider)
