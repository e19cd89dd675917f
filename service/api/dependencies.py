"""Dependencies, named once: routes ask for what they need by type."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.container import Container
from service.serving.feature_store import FeatureStore
from service.serving.predictions import PredictionService


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool,
# a thread hop per request for what is an attribute lookup.


async def container_dependency(request: Request) -> Container:
    return get_container(request)


async def predictions_dependency(request: Request) -> PredictionService:
    return get_container(request).predictions


async def feature_store_dependency(request: Request) -> FeatureStore:
    return get_container(request).feature_store


ContainerDep = Annotated[Container, Depends(container_dependency)]
PredictionsDep = Annotated[PredictionService, Depends(predictions_dependency)]
FeatureStoreDep = Annotated[FeatureStore, Depends(feature_store_dependency)]
