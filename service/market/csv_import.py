"""Bars from CSV files: `timestamp,open,high,low,close,volume[,symbol]`."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from service.storage.market_bars import BarIn

CSV_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")


class CsvFormatError(ValueError):
    """A CSV row that cannot become a bar; carries the line number."""


def read_csv_bars(path: Path, *, default_symbol: str | None = None) -> Iterator[BarIn]:
    """Bars from a CSV with a header: timestamp,open,high,low,close,volume[,symbol].

    Timestamps are ISO 8601 (a date alone means that day's close at 21:00 UTC).
    """
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        missing = [column for column in CSV_COLUMNS if column not in header]
        if missing:
            raise CsvFormatError(f"{path}: missing columns {missing}; expected {list(CSV_COLUMNS)}")
        for line_number, raw in enumerate(reader, start=2):
            row = {key.strip().lower(): (value or "").strip() for key, value in raw.items() if key}
            symbol = (row.get("symbol") or default_symbol or "").upper()
            if not symbol:
                raise CsvFormatError(f"{path}:{line_number}: no symbol column and no --symbol given")
            try:
                yield BarIn(
                    symbol=symbol,
                    ts=parse_timestamp(row["timestamp"]),
                    open=float(row["open"]),
                    high=float(row["high"]),
                    low=float(row["low"]),
                    close=float(row["close"]),
                    volume=float(row["volume"]),
                )
            except ValueError as error:
                raise CsvFormatError(f"{path}:{line_number}: {error}") from error


def parse_timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if len(text) == 10:  # a plain date
        value = value.replace(hour=21)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
