"""The server set-ups a run compares, and how each one is forced into the state it claims.

A variant is one way of serving: which program (the bare ceiling or `stockpred serve`), how many
uvicorn workers, which database, which feature-store level answers, telemetry on or off, and
which endpoint the load hits. Every variant runs as its own real process, started afresh for
every measurement.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

Kind = Literal["bare", "service"]
Backend = Literal["sqlite", "postgresql"]
Cache = Literal["l1", "redis", "computed", "none"]
TelemetryMode = Literal["on", "off", "none"]

# Fifty tickers: enough for /predict/batch with 50 symbols (MAX_BATCH_SYMBOLS defaults to 50).
# The first five are the service's default symbols, which /predict rotates over (the load).
SYMBOLS: tuple[str, ...] = (
    "AAPL", "AMZN", "GOOGL", "MSFT", "NVDA", "META", "TSLA", "BRK.B", "JPM", "V",
    "JNJ", "WMT", "PG", "MA", "UNH", "HD", "XOM", "CVX", "KO", "PEP",
    "ABBV", "MRK", "LLY", "AVGO", "COST", "ORCL", "ADBE", "CRM", "NFLX", "AMD",
    "INTC", "CSCO", "QCOM", "TXN", "IBM", "BA", "CAT", "GE", "MMM", "HON",
    "DIS", "NKE", "MCD", "SBUX", "T", "VZ", "PFE", "BAC", "WFC", "GS",
)  # fmt: skip
PREDICT_SYMBOLS = SYMBOLS[:5]

# "Never expires" within a run, and "expired by the next request" (the setting must be > 0).
TTL_FOREVER_SECONDS = 86_400.0
TTL_NEVER_SECONDS = 1e-6


class Variant(BaseModel):
    """One server set-up and the endpoint it is loaded on."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Kind
    workers: int = 1
    backend: Backend = "sqlite"
    cache: Cache = "l1"
    telemetry: TelemetryMode = "on"
    batch: int = 0  # 0: POST /predict; N: POST /predict/batch with N symbols
    # Also run the one-connection closed loop that exposes periodic export stalls.
    stall_probe: bool = False
    # Share of traces kept (OTEL_TRACES_SAMPLER=parentbased_traceidratio below 1).
    sample_ratio: float = 1.0
    # OTEL_METRICS_EXPORTER when telemetry is on (None: the service's default, otlp with a collector).
    metrics_exporter: str | None = None
    # HTTP_INSTRUMENTATION: FastAPI's own telemetry or the contrib instrumentation.
    http_instrumentation: Literal["native", "contrib"] = "native"
    # Not part of a default run; only when named (by name or the `sampled` tag) in --only.
    extra: bool = False

    @property
    def path(self) -> str:
        return "/predict/batch" if self.batch else "/predict"

    @property
    def predictions_per_request(self) -> int:
        return self.batch or 1

    @property
    def needs_redis(self) -> bool:
        return self.cache == "redis" or self.backend == "postgresql"

    @property
    def tags(self) -> frozenset[str]:
        """What `--only` matches besides the name: kind, cache level, telemetry, backend, workers."""
        tags = {self.name, self.kind, f"w{self.workers}", f"telemetry-{self.telemetry}"}
        if self.kind == "service":
            tags |= {self.cache, self.backend}
        if self.backend == "postgresql":
            tags.add("pg")
        if self.batch:
            tags.add("batch")
        if self.sample_ratio < 1:
            tags.add("sampled")
        if self.http_instrumentation == "contrib":
            tags.add("contrib")
        return frozenset(tags)

    @property
    def serves_metrics(self) -> bool:
        """Whether its /metrics has an exposition to measure (the prometheus reader is on)."""
        return self.telemetry == "on" and "prometheus" in (self.metrics_exporter or "")

    def telemetry_env(self) -> dict[str, str]:
        """Outlets and instrumentation beyond the defaults, as the service's variables."""
        env = dict(self.sampler_env())
        if self.metrics_exporter is not None:
            env["OTEL_METRICS_EXPORTER"] = self.metrics_exporter
        if self.http_instrumentation != "native":
            env["HTTP_INSTRUMENTATION"] = self.http_instrumentation
        return env

    def sampler_env(self) -> dict[str, str]:
        """The SDK's standard sampler variables, which the service leaves to the SDK to read."""
        if self.sample_ratio >= 1:
            return {}
        return {
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": f"{self.sample_ratio:g}",
        }

    def bodies(self) -> list[str]:
        """The JSON request bodies the load rotates over.

        /predict: the five default symbols, one per request. /predict/batch: consecutive windows
        of `batch` symbols covering all fifty (one body of fifty for batch=50).
        """
        if not self.batch:
            return [json.dumps({"symbol": symbol}) for symbol in PREDICT_SYMBOLS]
        windows = range(0, len(SYMBOLS) - self.batch + 1, self.batch)
        return [json.dumps({"symbols": list(SYMBOLS[start : start + self.batch])}) for start in windows]

    def forcing(self) -> str:
        """How this variant is put into its state, in words for the results file."""
        workers = f"--workers {self.workers}"
        if self.kind == "bare":
            return (
                f"python -m benchmarks.bare_app {workers}: constant PredictionOut, no telemetry, no storage"
            )
        parts = [f"stockpred serve {workers}", f"cache {self.cache}: {CACHE_FORCING[self.cache]}"]
        parts.append(TELEMETRY_FORCING[self.telemetry])
        if self.telemetry == "on" and self.telemetry_env():
            parts.append(" ".join(f"{k}={v}" for k, v in self.telemetry_env().items()))
        if self.backend == "postgresql":
            parts.append(
                "DATABASE_URL=postgresql+psycopg://... (a fresh database, seeded by the service at "
                "start-up) and REDIS_URL: compose's set-up"
            )
        return "; ".join(parts)


CACHE_FORCING: dict[Cache, str] = {
    "l1": f"FEATURE_L1_TTL_SECONDS={TTL_FOREVER_SECONDS:g}: after warm-up every lookup is an L1 hit",
    "redis": (
        f"FEATURE_L1_TTL_SECONDS={TTL_NEVER_SECONDS:g} (L1 entries expire at once), REDIS_URL set, "
        f"FEATURE_REDIS_TTL_SECONDS={int(TTL_FOREVER_SECONDS)}: every lookup after the first is a Redis hit"
    ),
    "computed": (
        f"FEATURE_L1_TTL_SECONDS={TTL_NEVER_SECONDS:g}, no REDIS_URL: no cache can answer, "
        "every lookup reads the newest bars from the database and computes"
    ),
    "none": "no feature store",
}

TELEMETRY_FORCING: dict[TelemetryMode, str] = {
    "on": "telemetry on: OTLP/HTTP to the run's collector (traces -> Jaeger); metrics over OTLP only",
    "off": "telemetry off: OTEL_SDK_DISABLED=true (no-op providers, empty /metrics)",
    "none": "no telemetry",
}


def all_variants(cores: int | None = None) -> list[Variant]:
    """Every variant of a full run, in the order rows appear in the table."""
    n = cores or os.cpu_count() or 2
    return [
        Variant(name="bare", kind="bare", cache="none", telemetry="none"),
        Variant(name=f"bare-w{n}", kind="bare", workers=n, cache="none", telemetry="none"),
        Variant(name="l1-off", kind="service", telemetry="off", stall_probe=True),
        Variant(name="l1-on", kind="service", telemetry="on", stall_probe=True),
        # The other HTTP instrumentation, and both metric outlets (what aggregating twice costs;
        # the service's /metrics is measured here).
        Variant(name="l1-on-contrib", kind="service", http_instrumentation="contrib"),
        Variant(name="l1-on-both", kind="service", metrics_exporter="otlp,prometheus"),
        Variant(name="redis-on", kind="service", cache="redis"),
        Variant(name="computed-on", kind="service", cache="computed"),
        Variant(name="batch10-on", kind="service", batch=10),
        Variant(name="batch50-on", kind="service", batch=50),
        Variant(name=f"l1-on-w{n}", kind="service", workers=n),
        Variant(name="pg-l1-on", kind="service", backend="postgresql"),
        # What the README calls the knob for telemetry's cost; run with --only sampled.
        Variant(name="l1-on-sampled10", kind="service", sample_ratio=0.1, extra=True),
    ]


def select(variants: Sequence[Variant], only: Iterable[str]) -> list[Variant]:
    """The variants any of the tokens names (a variant name or one of its tags).

    No tokens: every variant but the extras. Extras only by their name or the `sampled` tag, so
    `--only l1` keeps meaning the default L1 variants.
    """
    tokens = {token.strip() for token in only if token.strip()}
    if not tokens:
        return [variant for variant in variants if not variant.extra]
    chosen = [variant for variant in variants if _chosen(variant, tokens)]
    known = set().union(*(variant.tags for variant in variants)) | {"collector"}
    unknown = tokens - known
    if unknown:
        raise ValueError(f"--only: unknown {sorted(unknown)}; known: {sorted(known)}")
    return chosen


def _chosen(variant: Variant, tokens: set[str]) -> bool:
    if variant.extra:
        return bool(tokens & {variant.name, "sampled"})
    return bool(variant.tags & tokens)
