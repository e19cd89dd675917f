"""Command line: `stockpred serve | seed | import-csv | train | promote | advance | migrate`."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from service.config import Settings, get_settings
from service.container import (
    Container,
    bootstrap,
    build_container,
    ingest_bars,
    seed_if_empty,
    train_and_register,
)
from service.market.csv_import import CsvFormatError, parse_timestamp, read_csv_bars
from service.market.ingestion import InvalidBatchError
from service.market.synthetic import next_bar_index, synthetic_bars_after
from service.storage.market_bars import last_bar
from service.storage.migrations import upgrade_to_head
from service.telemetry.exporters import metric_exporters
from service.telemetry.logs import configure_logging

WORKER_HEALTHCHECK_SECONDS = 60

app = typer.Typer(help="Stock-direction prediction service.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


@contextmanager
def _container(settings: Settings) -> Iterator[Container]:
    container = build_container(settings)
    try:
        upgrade_to_head(container.database.engine)
        yield container
    finally:
        container.close()


@contextmanager
def _step(message: str) -> Iterator[None]:
    started = time.perf_counter()
    with console.status(message):
        yield
    console.print(f"[green]✓[/green] {message} ({time.perf_counter() - started:.1f}s)")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
) -> None:
    """Prepare what is missing (schema, data, champion model), then serve the API."""
    settings = get_settings()
    configure_logging(settings)
    if workers > 1 and "prometheus" in metric_exporters():
        # Each worker has its own registry and a scrape reaches one of them at random: counters
        # would appear to reset on every scrape. Through OTLP each worker is its own instance.
        console.print(
            f"[red]error:[/red] with --workers {workers} /metrics would show one worker per scrape; "
            "set OTEL_METRICS_EXPORTER=otlp (with OTEL_EXPORTER_OTLP_ENDPOINT), where every worker "
            "exports its own series (service.instance.id), or run one worker per port"
        )
        raise typer.Exit(2)
    if workers > 1:
        # Bootstrap once here so that workers do not race to migrate, seed or train.
        container = build_container(settings)
        try:
            with _step("bootstrapping (schema, data, champion model)"):
                bootstrap(container)
        finally:
            container.close()
    # uvicorn re-raises SIGTERM after its graceful shutdown; a stop we asked for is a clean exit.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "service.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        # SIGTERM: stop accepting, answer what is in flight (at most this long), then the lifespan
        # closes the prediction log (SHUTDOWN_FLUSH_SECONDS) and everything else.
        timeout_graceful_shutdown=math.ceil(settings.SHUTDOWN_GRACE_SECONDS),
        # With --workers N the supervisor kills a worker that misses its health ping (5 s by
        # default); a worker starting up imports scikit-learn, pandas and MLflow first, which on
        # two busy cores takes longer than that (seen: three workers killed in one start).
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
    )


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


@app.command()
def migrate() -> None:
    """Apply database migrations."""
    settings = get_settings()
    with _step("migrating"), _container(settings):
        pass


@app.command()
def seed(
    force: Annotated[bool, typer.Option(help="Seed even when bars exist (idempotent upsert).")] = False,
) -> None:
    """Store the deterministic synthetic market for the configured symbols."""
    settings = get_settings()
    with _container(settings) as container, _step(f"seeding {len(settings.SYMBOLS)} symbols"):
        if force:
            from service.market.synthetic import synthetic_bars

            for symbol in settings.SYMBOLS:
                ingest_bars(container, synthetic_bars(symbol, count=settings.SEED_DAYS, seed=settings.SEED))
        else:
            stored = seed_if_empty(container)
            if not stored:
                console.print("database already has bars; use --force to re-seed")


@app.command("import-csv")
def import_csv(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV file to import.")],
    symbol: Annotated[str | None, typer.Option(help="Symbol for files without a symbol column.")] = None,
) -> None:
    """Import bars from CSV: timestamp,open,high,low,close,volume[,symbol]. All or nothing."""
    settings = get_settings()
    try:
        bars = list(read_csv_bars(path, default_symbol=symbol))
    except CsvFormatError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    with _container(settings) as container, _step(f"importing {len(bars)} bars from {path}"):
        try:
            result = ingest_bars(container, bars)
        except InvalidBatchError as error:
            console.print(f"[red]rejected, nothing written:[/red] {error}")
            raise typer.Exit(2) from error
    console.print(
        f"inserted {result.inserted}, updated {result.updated}, symbols {', '.join(result.symbols)}"
    )


@app.command()
def train(
    promote: Annotated[bool, typer.Option(help="Point the champion alias at the new version.")] = True,
) -> None:
    """Train on the stored bars, log to MLflow and register a new model version."""
    settings = get_settings()
    with _container(settings) as container, _step("training and registering"):
        version = train_and_register(container, promote=promote)
    console.print(f"registered {settings.MODEL_NAME} version {version}" + (" as champion" if promote else ""))


@app.command()
def promote(version: Annotated[str, typer.Argument(help="Registered version to make champion.")]) -> None:
    """Point the champion alias at a version; running services pick it up on their next poll."""
    settings = get_settings()
    with _container(settings) as container:
        container.registry.promote(version)
    console.print(f"{settings.MODEL_NAME}@{settings.MODEL_ALIAS} -> version {version}")


@app.command()
def advance(
    days: Annotated[int, typer.Option(min=1, help="Bars to append per symbol.")] = 1,
    shift_symbol: Annotated[str | None, typer.Option(help="Put this symbol in the shifted regime.")] = None,
    shift_since: Annotated[
        str | None, typer.Option(help="First shifted day, YYYY-MM-DD (default: the first new bar).")
    ] = None,
) -> None:
    """Append the next synthetic bars (resolves predictions they decide).

    With --shift-symbol the symbol's new bars follow the shifted regime (a drift demonstration);
    give later calls the same --shift-since so the shifted path continues where it left off.
    """
    settings = get_settings()
    with _container(settings) as container:
        bars = []
        for symbol in settings.SYMBOLS:
            with container.database.session() as session:
                newest = last_bar(session, symbol=symbol)
            if newest is None:
                continue
            shift = None
            if symbol == shift_symbol:
                day_before = parse_timestamp(shift_since) - timedelta(days=1) if shift_since else newest.ts
                shift = next_bar_index(day_before)
            bars += synthetic_bars_after(
                symbol, after=newest.ts, count=days, seed=settings.SEED, shift_from=shift
            )
        try:
            result = ingest_bars(container, bars)
        except InvalidBatchError as error:
            console.print(f"[red]rejected, nothing written:[/red] {error}")
            raise typer.Exit(2) from error
    console.print(f"appended {result.inserted} bars, resolved {result.resolved_predictions} predictions")


if __name__ == "__main__":
    app()
