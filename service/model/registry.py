"""The model registry (MLflow) and the local cache of the versions it holds.

`ModelRegistry` logs and registers trained models, resolves the champion alias to a concrete
version and downloads that version into a local cache (`DATA_DIR/model-cache`). Serving always
loads from the cache, so the service can start from the last version it served when the
registry is down.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from service.config import Settings
from service.model.served_model import ServedModel
from service.model.training import TrainedModel
from service.monitoring.drift import ReferenceDistribution

log = logging.getLogger(__name__)


# MLflow retries an unreachable server with backoff for minutes by default; fail fast instead.
# Set before mlflow reads them; explicit environment values still win.
MLFLOW_FAIL_FAST = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # an integer for MLflow; one retry waits ~1 s
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
}


TRUSTED_SKOPS_TYPES = ["sklearn.tree._tree.Tree"]  # our own GradientBoosting trees


CACHE_POINTER = "champion.json"


class RegistryUnavailableError(RuntimeError):
    """The registry could not be reached or answered with an error."""


class ModelRegistry:
    """MLflow's model registry for one registered model name."""

    def __init__(self, settings: Settings) -> None:
        for key, value in MLFLOW_FAIL_FAST.items():
            os.environ.setdefault(key, value)
        from mlflow import MlflowClient

        self._settings = settings
        self.name = settings.MODEL_NAME
        self.alias = settings.MODEL_ALIAS
        self.tracking_uri = settings.MLFLOW_TRACKING_URI
        self._cache_dir = settings.model_cache_dir / self.name
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    # --- registry calls --------------------------------------------------------------------------

    def ping(self) -> None:
        """A cheap call that fails when the registry cannot be used."""
        self._call(lambda: self._client.search_registered_models(max_results=1))

    def champion_version(self) -> str | None:
        """The version the alias points at, or None when there is no such model or alias."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self._client.get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException as error:
            if _is_missing(error):
                return None
            raise RegistryUnavailableError(str(error)) from error
        except Exception as error:
            raise RegistryUnavailableError(str(error)) from error

    def register(self, trained: TrainedModel, *, promote: bool = True) -> str:
        """Log the run (params, metrics, importances, reference distribution) and register the model."""
        import mlflow
        import mlflow.sklearn

        experiment_id = self._experiment_id()
        with (
            _process_uris(self.tracking_uri),
            _prints_to_log(),
            mlflow.start_run(
                experiment_id=experiment_id, run_name=f"train-{trained.trained_at:%Y%m%dT%H%M%S}"
            ),
        ):
            mlflow.log_params({**trained.params, "symbols": ",".join(trained.symbols)})
            mlflow.log_metrics(
                {
                    "train_accuracy": trained.train_accuracy,
                    "validation_accuracy": trained.validation_accuracy,
                    "train_rows": trained.train_rows,
                    "validation_rows": trained.validation_rows,
                    **{f"importance.{name}": value for name, value in trained.importances.items()},
                }
            )
            mlflow.log_dict(trained.importances, "feature_importances.json")
            mlflow.log_dict(trained.reference.to_dict(), "reference_distribution.json")
            info = mlflow.sklearn.log_model(
                trained.estimator,
                name="model",
                registered_model_name=self.name,
                metadata=_metadata(trained),
                skops_trusted_types=TRUSTED_SKOPS_TYPES,
                pip_requirements=[f"scikit-learn=={_sklearn_version()}"],  # skips slow inference
            )
        version = str(info.registered_model_version)
        self._client.set_model_version_tag(
            self.name, version, "validation_accuracy", f"{trained.validation_accuracy:.4f}"
        )
        if promote:
            self.promote(version)
        return version

    def promote(self, version: str) -> None:
        self._call(lambda: self._client.set_registered_model_alias(self.name, self.alias, version))

    def versions(self) -> list[dict[str, Any]]:
        """Every registered version with its validation accuracy and aliases, newest first."""
        found = self._call(lambda: self._client.search_model_versions(f"name='{self.name}'"))
        # search results carry no aliases; the registered model has the alias -> version map.
        aliases = self._call(lambda: self._client.get_registered_model(self.name).aliases) or {}
        rows = []
        for mv in sorted(found, key=lambda mv: int(mv.version), reverse=True):
            rows.append(
                {
                    "version": str(mv.version),
                    "aliases": sorted(alias for alias, v in aliases.items() if str(v) == str(mv.version)),
                    "created_at_ms": mv.creation_timestamp,
                    "run_id": mv.run_id,
                    "validation_accuracy": _float_or_none(mv.tags.get("validation_accuracy")),
                    "status": mv.status,
                }
            )
        return rows

    def _experiment_id(self) -> str:
        experiment_name = f"{self.name}-training"
        existing = self._client.get_experiment_by_name(experiment_name)
        if existing is not None:
            return str(existing.experiment_id)
        artifact_location = (
            None if self.tracking_uri.startswith("http") else self._settings.MLFLOW_ARTIFACT_ROOT
        )
        return str(self._client.create_experiment(experiment_name, artifact_location=artifact_location))

    def _call(self, operation: Any) -> Any:
        try:
            return operation()
        except Exception as error:
            raise RegistryUnavailableError(f"{type(error).__name__}: {error}") from error

    # --- local cache -----------------------------------------------------------------------------

    def fetch(self, version: str) -> ServedModel:
        """Download the version into the cache (once: versions are immutable) and load it."""
        import mlflow

        target = self._cache_dir / version
        if not (target / "MLmodel").exists():
            self._cache_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=self._cache_dir, prefix=f".{version}-"))
            try:
                with _process_uris(self.tracking_uri):
                    self._call(
                        lambda: mlflow.artifacts.download_artifacts(
                            artifact_uri=f"models:/{self.name}/{version}", dst_path=str(staging)
                        )
                    )
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        model = self._load_local(version, source="registry")
        (self._cache_dir / CACHE_POINTER).write_text(json.dumps({"version": version}))
        return model

    def load_cached(self) -> ServedModel | None:
        """The version served last, from the cache; None when nothing was ever cached."""
        pointer = self._cache_dir / CACHE_POINTER
        if not pointer.exists():
            return None
        version = str(json.loads(pointer.read_text())["version"])
        if not (self._cache_dir / version / "MLmodel").exists():
            return None
        return self._load_local(version, source="cache")

    def _load_local(self, version: str, *, source: Literal["registry", "cache"]) -> ServedModel:
        import mlflow.sklearn
        from mlflow.models import Model

        path = self._cache_dir / version
        metadata = Model.load(str(path)).metadata or {}
        reference = metadata.get("reference")
        return ServedModel(
            name=self.name,
            version=version,
            estimator=mlflow.sklearn.load_model(str(path)),
            feature_names=tuple(metadata["feature_names"]),
            feature_set_version=str(metadata["feature_set_version"]),
            symbols=tuple(metadata["symbols"]),
            trained_at=str(metadata["trained_at"]),
            validation_accuracy=float(metadata["validation_accuracy"]),
            importances={k: float(v) for k, v in metadata["importances"].items()},
            reference=ReferenceDistribution.from_dict(reference) if reference else None,
            source=source,
        )


def _metadata(trained: TrainedModel) -> dict[str, Any]:
    from service.model.features import FEATURE_SET

    return {
        "feature_set": FEATURE_SET.name,
        "feature_set_version": FEATURE_SET.version,
        "feature_names": list(trained.feature_names),
        "symbols": list(trained.symbols),
        "trained_at": trained.trained_at.isoformat(),
        "validation_accuracy": trained.validation_accuracy,
        "importances": trained.importances,
        "reference": trained.reference.to_dict(),
    }


def _is_missing(error: Exception) -> bool:
    code = getattr(error, "error_code", "")
    return (
        code in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"}
        or "not found" in str(error).lower()
    )


def _float_or_none(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


_URI_LOCK = threading.Lock()


@contextlib.contextmanager
def _prints_to_log() -> Iterator[None]:
    """MLflow prints registration messages to stderr; send them through logging (JSON lines).

    Registration runs at bootstrap and in the CLI, before any request thread exists, so swapping
    sys.stderr for the duration is safe.
    """
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        yield
    for line in captured.getvalue().splitlines():
        if line.strip():
            log.info("mlflow: %s", line.strip())


@contextlib.contextmanager
def _process_uris(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide URIs at this registry for one call, then restore them.

    The fluent API (start_run, log_model, models:/ downloads) reads globals, not a client's URIs,
    and `set_tracking_uri` also writes os.environ; both are put back as they were.
    """
    import mlflow

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    with _URI_LOCK:
        saved_env = {name: os.environ.get(name) for name in names}
        saved = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved[0])
            mlflow.set_registry_uri(saved[1])
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
