"""Health and metrics: what operators and Prometheus read. Neither is traced."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.dependencies import ContainerDep
from service.api.schemas import ComponentOut, HealthOut
from service.monitoring.health import ComponentHealth

router = APIRouter(tags=["operations"])


def _component(health: ComponentHealth) -> ComponentOut:
    state: Literal["up", "degraded", "down", "disabled"] = "up" if health.up else "down"
    if health.up and health.degraded:
        state = "degraded"
    if not health.configured:
        state = "disabled"
    return ComponentOut(status=state, latency_ms=health.latency_ms, detail=health.detail)


@router.get(
    "/health",
    operation_id="health",
    responses={503: {"model": HealthOut, "description": "The service cannot predict at all."}},
)
def health(container: ContainerDep, response: Response) -> HealthOut:
    """Per-component status from the latest background check; 503 only when predictions are impossible."""
    report = container.health.latest
    body = HealthOut(
        status=report.status,
        checked_at=report.checked_at,
        components={name: _component(c) for name, c in report.components.items()},
    )
    if report.status == "down":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return body


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Exposition."}
    },
)
def metrics(container: ContainerDep) -> Response:
    """Prometheus text exposition of every instrument (exemplars travel over OTLP only).

    Empty when OTEL_METRICS_EXPORTER leaves `prometheus` out (the default once OTLP is configured).
    """
    registry = container.telemetry.prometheus_registry
    payload = generate_latest(registry) if registry is not None else b""
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
