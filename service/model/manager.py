"""The model the service serves: the champion, the cached fallback, and promotions followed live.

`ModelManager` holds the served model, swaps in a new champion found by its poller (a reference
swap: requests in flight finish on the model they started with) and reports loads as metrics.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from service.background import PeriodicTask
from service.model.registry import ModelRegistry, RegistryUnavailableError
from service.model.served_model import ServedModel
from service.telemetry.providers import Telemetry

log = logging.getLogger(__name__)


class ModelManager:
    """Holds the served model; loads the champion, falls back to the cache, follows promotions."""

    def __init__(self, *, registry: ModelRegistry, telemetry: Telemetry, poll_seconds: float) -> None:
        self._registry = registry
        self._telemetry = telemetry
        self._current: ServedModel | None = None
        self._swap_lock = threading.Lock()
        self._poller = PeriodicTask(
            "model-poller", poll_seconds, self.check_for_new_champion, run_first=False
        )
        self.last_error: str | None = None

    @property
    def current(self) -> ServedModel | None:
        return self._current

    def load_initial(self, *, train_if_missing: Any = None) -> ServedModel | None:
        """Serve the champion; train the first one when none exists; else the cached version."""
        try:
            version = self._registry.champion_version()
            if version is None and train_if_missing is not None:
                log.info("no champion registered yet: training the first model")
                version = train_if_missing()
            if version is not None:
                self._install(self._registry.fetch(version))
        except RegistryUnavailableError as error:
            self.last_error = str(error)
            log.warning("model registry unavailable at start-up", extra={"error": str(error)[:200]})
            cached = self._registry.load_cached()
            if cached is not None:
                self._install(cached)
        return self._current

    def check_for_new_champion(self) -> bool:
        """Swap to the registry's champion when it changed; True when a new model was installed."""
        try:
            version = self._registry.champion_version()
            if version is None or (self._current is not None and self._current.version == version):
                self.last_error = None
                return False
            model = self._registry.fetch(version)
        except Exception as error:  # the poller must survive anything the registry does
            self.last_error = f"{type(error).__name__}: {error}"
            self._telemetry.metrics.model_reloads.add(1, {"outcome": "failure"})
            log.warning("champion reload failed", extra={"error": self.last_error[:200]})
            return False
        self._install(model)
        self.last_error = None
        return True

    def _install(self, model: ServedModel) -> None:
        with self._swap_lock:
            previous = self._current
            self._current = model
        metrics = self._telemetry.metrics
        metrics.model_reloads.add(1, {"outcome": "success"})
        # From the next collection on, only this version's per-version series are reported.
        metrics.served_version.version = model.version
        metrics.model_info.replace([(_info_labels(model), 1)])
        metrics.model_feature_importance.replace(
            ({"feature": feature, "model_version": model.version}, importance)
            for feature, importance in model.importances.items()
        )
        log.info(
            "serving model",
            extra={
                "model_version": model.version,
                "source": model.source,
                "previous": previous and previous.version,
            },
        )

    def start_polling(self) -> None:
        self._poller.start()

    def stop(self) -> None:
        self._poller.stop()


def _info_labels(model: ServedModel) -> dict[str, str]:
    return {
        "model_name": model.name,
        "model_version": model.version,
        "feature_set_version": model.feature_set_version,
        "trained_at": model.trained_at,
        "validation_accuracy": f"{model.validation_accuracy:.4f}",
    }
