"""Where MLflow runs go and how a job opens its single run.

Default: an embedded SQLite store ``./mlflow.db`` with artifacts in ``./mlartifacts`` (both in
the working directory), so nothing needs a server; ``tracking.tracking_uri`` in config or the
``MLFLOW_TRACKING_URI`` environment variable point elsewhere (a server, ``databricks``).
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from nnfund_spark.config import TrackingConfig

# Keys whose values are never logged: they hold credentials (e.g. spark.conf entries such as
# spark.hadoop.fs.s3a.secret.key or a Databricks token).
# ("auth" but not "author"; "sas" as a word of a dotted key, as in Azure's
# spark.hadoop.fs.azure.sas.<container>.<account>.blob.core.windows.net.)
# A key ending in "key" as a word (fs.s3a.encryption.key, fs.s3a.server-side-encryption.key:
# an SSE-C key) is a credential too.
_SECRET_KEY = re.compile(r"(token|secret|passw|credential|auth(?!or)|private|access[._-]?key|"
                         r"api[._-]?key|sas[._-]?key|account[._-]?key|encryption[._-]?key([._-]|$)|"
                         r"(^|[._-])key$|(^|[._-])sas([._-]|$))", re.I)
# user:password@ in URIs (a tracking server or storage URL with inline credentials). Everything
# up to the first @ goes: secrets such as AWS secret keys may contain '/', so the user info is
# not assumed to stop at one (a URI whose path holds an @ loses more than it must, never less).
_URI_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^@\s]+@", re.I)


@contextmanager
def quiet_model_loading() -> Iterator[None]:
    """Keras' warnings while MLflow loads a logged model ("No training configuration found in
    save file, so the model was *not* compiled", "compiled metrics have yet to be built") at
    ERROR level only: the logged model is for inference (predict, pyfunc), never compiled, and
    the warnings would otherwise land in every job's and every scoring executor's log."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def redact_uri(text: str) -> str:
    """text with the user info of every URI in it replaced by ***."""
    return _URI_USERINFO.sub(lambda m: m.group("scheme") + "***@", text)


def error_text(exc: BaseException, limit: int) -> str:
    """``Type: message`` of an exception for an MLflow tag, at most ``limit`` characters,
    without the inline credentials a quoted location may hold."""
    return redact_uri(f"{type(exc).__name__}: {exc}")[:limit]


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
    """Params safe to log: credential-looking keys get '***', URIs lose inline user:password."""
    safe = {}
    for key, value in params.items():
        if _SECRET_KEY.search(key) and value not in (None, ""):
            safe[key] = "***"
        elif isinstance(value, str):
            safe[key] = redact_uri(value)
        else:
            safe[key] = value
    return safe


def ensure_experiment(name: str, tracking_uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        return mlflow.create_experiment(name, artifact_location=_artifact_location(tracking_uri))
    return experiment.experiment_id


@contextmanager
def start_job_run(tracking: TrackingConfig, tracking_uri: str, run_name: Optional[str] = None,
                  run_id: Optional[str] = None) -> Iterator:
    """Open the job's one MLflow run (nested under the active run, if any: sweeps); on error it
    ends FAILED with the error message recorded in the 'error' tag."""
    import mlflow

    experiment_id = ensure_experiment(tracking.experiment, tracking_uri)
    nested = mlflow.active_run() is not None
    if run_id:  # resuming: continue the interrupted run rather than starting over
        context = mlflow.start_run(run_id=run_id, nested=nested)
    else:
        context = mlflow.start_run(experiment_id=experiment_id,
                                   run_name=run_name or tracking.run_name, nested=nested)
    with context as run:
        try:
            yield run
        except BaseException as exc:
            mlflow.set_tag("error", error_text(exc, 5000))
            raise


def git_commit(start: Optional[Path] = None) -> Optional[str]:
    """The commit of the checkout this package runs from, or None (installed wheel, no git)."""
    import subprocess
    start = start or Path(__file__).resolve().parent
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=start, capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and len(commit) == 40 else None


def tensorflow_version() -> str:
    """TensorFlow's version from the installed distribution's metadata: importing TensorFlow
    on the driver just for a tag would cost seconds before the ranks can start."""
    from importlib import metadata

    for distribution in ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-macos"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    import tensorflow as tf
    return tf.__version__


def run_tags(spark) -> dict:
    """Provenance tags: what code and which stack produced the run."""
    import platform

    import horovod
    import pyspark

    from nnfund_spark import __version__
    tags = {
        "nnfund_spark.version": __version__,
        "spark.master": redact_uri(spark.sparkContext.master),
        "spark.version": pyspark.__version__,
        "tensorflow.version": tensorflow_version(),
        "horovod.version": horovod.__version__,
        "python.version": platform.python_version(),
    }
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
    return tags
