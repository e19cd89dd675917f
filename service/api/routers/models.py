"""What model is served, and what the registry holds."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from service.api.dependencies import ContainerDep
from service.api.responses import errors
from service.api.schemas import ModelOut, ModelsOut, ModelVersionOut
from service.api.strict_json import StrictJSONRoute
from service.model.registry import RegistryUnavailableError
from service.serving.predictions import ModelUnavailableError

log = logging.getLogger(__name__)

REGISTRY_UNREACHABLE = (
    "the model registry is unreachable; the served model keeps serving (details in the logs)"
)

router = APIRouter(prefix="/models", tags=["models"], route_class=StrictJSONRoute)


@router.get(
    "/current",
    operation_id="current_model",
    responses=errors(503, d503="No model is loaded yet; see /health."),
)
def current_model(container: ContainerDep) -> ModelOut:
    """The model version being served and what it was trained on."""
    model = container.models.current
    if model is None:
        raise ModelUnavailableError("no model is loaded yet; see /health")
    return ModelOut(
        name=model.name,
        version=model.version,
        alias=container.registry.alias,
        source=model.source,
        feature_set_version=model.feature_set_version,
        feature_names=list(model.feature_names),
        symbols=list(model.symbols),
        trained_at=model.trained_at,
        validation_accuracy=model.validation_accuracy,
        feature_importances=model.importances,
    )


@router.get("", operation_id="list_models")
def list_models(container: ContainerDep) -> ModelsOut:
    """Registered versions with validation accuracy; which one is champion and which is served."""
    served = container.models.current.version if container.models.current else None
    try:
        versions = container.registry.versions()
    except RegistryUnavailableError as error:
        log.warning("model registry unavailable", extra={"error": str(error)[:300]})
        return ModelsOut(
            name=container.registry.name,
            registry_reachable=False,
            served_version=served,
            versions=[],
            detail=REGISTRY_UNREACHABLE,
        )
    alias = container.registry.alias
    return ModelsOut(
        name=container.registry.name,
        registry_reachable=True,
        served_version=served,
        versions=[
            ModelVersionOut(**row, champion=alias in row["aliases"], served=row["version"] == served)
            for row in versions
        ],
    )
