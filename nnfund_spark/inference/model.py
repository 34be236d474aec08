"""Which MLflow model a predict job scores: URI forms, the run behind them, the download."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nnfund_spark.config import ConfigError

ACCEPTED_MODEL_URIS = ("an MLflow run id (32 hex digits, meaning runs:/<id>/model), "
                       "runs:/<run_id>[/<artifact path>], models:/<name>/<version>, "
                       "models:/<name>@<alias>, models:/m-<id> (a logged model, MLflow 3)")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_RUNS_URI = re.compile(r"^runs:/([0-9a-f]{32})(/[^\s]*)?$")
_MODELS_VERSION = re.compile(r"^models:/([^/@\s]+)/([0-9]+)$")
# MLflow 3 names every logged model models:/m-<id>; train's summary reports that form.
_LOGGED_MODEL = re.compile(r"^models:/(m-[0-9a-f]+)$")
_MODELS_ALIAS = re.compile(r"^models:/([^/@\s]+)@([^/@\s]+)$")


@dataclass(frozen=True)
class ModelRef:
    uri: str                      # normalised: what MLflow loads
    run_id: Optional[str] = None  # runs:/ URIs name their run directly
    name: Optional[str] = None    # models:/ URIs name a registered model ...
    version: Optional[str] = None  # ... and a version
    alias: Optional[str] = None   # ... or an alias
    logged_model_id: Optional[str] = None  # models:/m-<id>: a logged model (MLflow 3)


def parse_model_uri(text: str) -> ModelRef:
    uri = (text or "").strip()
    if _RUN_ID.match(uri):
        return ModelRef(f"runs:/{uri}/model", run_id=uri)
    match = _RUNS_URI.match(uri)
    if match:
        path = (match.group(2) or "").strip("/") or "model"
        return ModelRef(f"runs:/{match.group(1)}/{path}", run_id=match.group(1))
    match = _LOGGED_MODEL.match(uri)
    if match:
        return ModelRef(uri, logged_model_id=match.group(1))
    match = _MODELS_VERSION.match(uri)
    if match:
        return ModelRef(uri, name=match.group(1), version=match.group(2))
    match = _MODELS_ALIAS.match(uri)
    if match:
        return ModelRef(uri, name=match.group(1), alias=match.group(2))
    raise ConfigError(f"model URI '{text}' is not recognised; accepted: {ACCEPTED_MODEL_URIS}")


def resolve_source_run(client, ref: ModelRef, tracking_uri: str):
    """The MLflow run that logged the model, or None for a registered version without one."""
    from mlflow.exceptions import MlflowException

    try:
        if ref.logged_model_id is not None:
            run_id = client.get_logged_model(ref.logged_model_id).source_run_id
            if not run_id:
                return None
        elif ref.run_id is None:
            version = (client.get_model_version_by_alias(ref.name, ref.alias) if ref.alias
                       else client.get_model_version(ref.name, ref.version))
            if not version.run_id:
                return None
            run_id = version.run_id
        else:
            run_id = ref.run_id
        return client.get_run(run_id)
    except MlflowException as exc:
        raise ValueError(f"model URI '{ref.uri}' cannot be resolved in the MLflow store "
                         f"{tracking_uri}: {exc.message}") from exc


def download_model(ref: ModelRef, tracking_uri: str, destination: Path, image_shape) -> Path:
    """Download the model once on the driver into `destination` (which must not exist yet) and
    check that it can score these images."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    staging = destination.parent / f"{destination.name}.download"
    staging.mkdir(parents=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=ref.uri, dst_path=str(staging), tracking_uri=tracking_uri))
    except (MlflowException, OSError) as exc:
        raise ValueError(f"no MLflow model can be downloaded from '{ref.uri}': {exc}") from exc
    # MLflow picks the directory name (e.g. .../model); the caller needs `destination`.
    local = local.rename(destination)
    if not (local / "MLmodel").is_file():
        raise ValueError(f"'{ref.uri}' is not an MLflow model directory (no MLmodel file)")
    meta = Model.load(str(local))
    if "python_function" not in meta.flavors:
        raise ValueError(f"model '{ref.uri}' has no python_function flavor (flavors: "
                         f"{', '.join(meta.flavors)}); it cannot be scored generically")
    inputs = meta.signature.inputs if meta.signature is not None else None
    if inputs is not None and inputs.is_tensor_spec() and len(inputs.inputs) == 1:
        shape = list(inputs.inputs[0].shape)
        if len(shape) != len(image_shape) + 1 or any(
                want not in (-1, have) for want, have in zip(shape[1:], image_shape)):
            raise ValueError(f"model '{ref.uri}' expects input shape {shape} but the dataset's "
                             f"images are {list(image_shape)}")
    return local
