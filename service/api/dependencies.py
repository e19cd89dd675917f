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


def get_predictions(request: Request) -> PredictionService:
    return get_container(request).predictions


def get_feature_store(request: Request) -> FeatureStore:
    return get_container(request).feature_store


ContainerDep = Annotated[Container, Depends(get_container)]
PredictionsDep = Annotated[PredictionService, Depends(get_predictions)]
FeatureStoreDep = Annotated[FeatureStore, Depends(get_feature_store)]
