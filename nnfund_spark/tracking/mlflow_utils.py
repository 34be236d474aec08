"""Where MLflow runs go and how a job opens its single run.

Default: an embedded SQLite store ``./mlflow.db`` with artifacts in ``./mlartifacts`` (both in
the working directory), so nothing needs a server; ``tracking.tracking_uri`` in config or the
``MLFLOW_TRACKING_URI`` environment variable point elsewhere (a server, ``databricks``).
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from nnfund_spark.config import TrackingConfig

# Keys whose values are never logged: they hold credentials.
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential|auth)", re.I)


def resolve_tracking_uri(tracking: TrackingConfig, workdir: Optional[Path] = None) -> str:
    if tracking.tracking_uri:
        return tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    workdir = (workdir or Path.cwd()).resolve()
    return f"sqlite:///{workdir / 'mlflow.db'}"


def _artifact_location(tracking_uri: str) -> Optional[str]:
    """For the embedded SQLite store keep artifacts beside the database, not in ./mlruns of
    whatever directory a worker happens to run in."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def redact(params: dict) -> dict:
    return {key: ("***" if _SECRET_KEY.search(key) and value else value)
            for key, value in params.items()}


@contextmanager
def start_job_run(tracking: TrackingConfig, tracking_uri: str) -> Iterator:
    """Open the job's one MLflow run; on error it ends FAILED with the error recorded as a tag."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        experiment_id = mlflow.create_experiment(tracking.experiment,
                                                 artifact_location=_artifact_location(tracking_uri))
    else:
        experiment_id = experiment.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=tracking.run_name) as run:
        try:
            yield run
        except BaseException as exc:
            mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
            raise
