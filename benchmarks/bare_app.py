"""The ceiling of `make bench`: a bare FastAPI app served exactly like `stockpred serve`.

Everything `/predict` costs that is not our work: uvicorn with the same flags (`log_config=None`,
`access_log=False`, the same graceful-shutdown timeout, uvloop and httptools picked by uvicorn's
`auto`), FastAPI routing, the service's own request model (`PredictRequest`, whose symbol
validator runs) and a response of the `PredictionOut` model serialised through the route's
return annotation. The route is a plain `def`, like the service's, so it also pays the hop to the
thread pool. No telemetry: FastAPI's native instrumentation is switched off explicitly.

What it leaves out is what the benchmark measures: feature lookup, inference, the prediction
log, metrics and spans.

Run: python -m benchmarks.bare_app --host 127.0.0.1 --port 8001 [--workers 2]
"""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime

import uvicorn
from fastapi import FastAPI

from service.api.schemas import PredictionOut, PredictRequest

# Same as service.config.Settings.SHUTDOWN_GRACE_SECONDS' default, rounded as service/cli.py does.
GRACEFUL_SHUTDOWN_SECONDS = math.ceil(10.0)

# One constant answer of /predict's shape; only `symbol` follows the request.
ANSWER = PredictionOut(
    prediction_id="00000000-0000-4000-8000-000000000000",
    symbol="AAPL",
    direction="up",
    confidence=0.65,
    probability_up=0.65,
    model_name="stock-direction",
    model_version="1",
    feature_set="price_momentum",
    feature_set_version="1",
    as_of=datetime(2024, 7, 26, 21, tzinfo=UTC),
    served_from="l1",
    trace_id=None,
)


def create_app() -> FastAPI:
    """The app factory uvicorn imports in every worker (`factory=True`, as the service does)."""
    app = FastAPI(
        title="bare ceiling",
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )

    @app.post("/predict")
    def predict(body: PredictRequest) -> PredictionOut:
        return ANSWER.model_copy(update={"symbol": body.symbol})

    @app.get("/health")
    def health() -> dict[str, str]:
        """What the harness polls for readiness (the service answers `status` the same way)."""
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "benchmarks.bare_app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


if __name__ == "__main__":
    main()
