"""Driver side of training: check the cluster, open the MLflow run, launch Horovod on Spark,
record the results and the model."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from nnfund_spark.config import JobConfig, flatten, to_dict
from nnfund_spark.data.prepare import SPLITS, read_manifest
from nnfund_spark.tracking.mlflow_utils import (redact, resolve_tracking_uri, run_tags,
                                                start_job_run)

log = logging.getLogger(__name__)


class ClusterTooSmallError(RuntimeError):
    pass


class WorkerError(RuntimeError):
    """A Horovod rank failed; the message carries the rank's own exception."""


def raise_worker_errors(run_id: str, tracking_uri: str, cause: Exception) -> None:
    """Re-raise Horovod's failure with the error each failed rank recorded on the run."""
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(tracking_uri).get_run(run_id).data.tags
    errors = sorted((k, v) for k, v in tags.items() if k.startswith("error.rank"))
    if not errors:
        raise cause
    detail = "; ".join(f"rank {k[len('error.rank'):]}: {v}" for k, v in errors)
    raise WorkerError(f"training failed on {len(errors)} rank(s): {detail}") from cause


def check_slots(spark, num_proc: int) -> int:
    """Fail fast if Spark cannot run num_proc tasks at once (a barrier stage would wait forever)."""
    slots = spark.sparkContext.defaultParallelism
    if slots < num_proc:
        raise ClusterTooSmallError(
            f"train.num_proc={num_proc} needs {num_proc} concurrent Spark task slots but the "
            f"cluster offers {slots} (master {spark.sparkContext.master}); lower train.num_proc "
            f"or give Spark more cores/executors (e.g. --master local[{num_proc}])")
    return slots


def worker_settings(config: JobConfig, manifest: dict, dataset_dir: Path) -> dict:
    """Plain values only: this dict is pickled to every executor."""
    train = config.train
    return {
        "split_urls": {split: (dataset_dir / split).as_uri() for split in SPLITS},
        "manifest": {"image_shape": manifest["image_shape"],
                     "num_classes": manifest["num_classes"]},
        "model": train.model, "optimizer": train.optimizer,
        "learning_rate": train.learning_rate, "scale_lr_by_workers": train.scale_lr_by_workers,
        "warmup_epochs": train.warmup_epochs, "final_lr_fraction": train.final_lr_fraction,
        "batch_size": train.batch_size, "epochs": train.epochs,
        "dropout": train.dropout, "dense_dropout": train.dense_dropout,
        "seed": train.seed, "intra_op_threads": train.intra_op_threads,
        "verbose": train.verbose, "mixed_precision": train.mixed_precision, "xla": train.xla,
        "fp16_allreduce": train.fp16_allreduce,
    }


def rebuild_model(weights, config: JobConfig, manifest: dict):
    """The trained Keras model on the driver: the same architecture with rank 0's weights."""
    from nnfund_spark.models import build_model

    model = build_model(config.train.model, manifest["image_shape"], manifest["num_classes"],
                        dropout=config.train.dropout, dense_dropout=config.train.dense_dropout)
    model.set_weights(weights)
    return model


def log_keras_model(model, manifest: dict):
    """Log as 'model' with the MLflow TensorFlow flavor, signature and input example."""
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    example = np.zeros((2, *manifest["image_shape"]), np.float32)
    signature = infer_signature(example, model.predict(example, verbose=0))
    return mlflow.tensorflow.log_model(model, name="model", signature=signature,
                                       input_example=example)


def sample_images(split_url: str, count: int = 4):
    """The first `count` images of a split (one row group read), for the activation-map view."""
    import numpy as np
    from petastorm import make_reader

    from nnfund_spark.data.schema import as_hwc
    images = []
    with make_reader(split_url, schema_fields=["image"], num_epochs=1, shuffle_row_groups=False,
                     reader_pool_type="dummy") as reader:
        for row in reader:
            images.append(row.image)
            if len(images) == count:
                break
    return as_hwc(np.stack(images))


def run_training(spark, config: JobConfig, extra_settings: dict | None = None,
                 run_name: str | None = None) -> dict:
    """Train config.train.model on the prepared dataset at config.data.output_dir.

    Opens exactly one MLflow run (nested under the active run when called from a sweep).
    Returns a summary: run id, model URI, test metrics, history, per-rank results (no weights).
    """
    import horovod.spark
    import mlflow

    from nnfund_spark.tracking.run_logging import log_training_artifacts

    dataset_dir = Path(config.data.output_dir).expanduser().resolve()
    manifest = read_manifest(dataset_dir)
    check_slots(spark, config.train.num_proc)
    tracking_uri = resolve_tracking_uri(config.tracking)

    with start_job_run(config.tracking, tracking_uri, run_name) as run:
        params = redact(flatten(to_dict(config)))
        params.update({"world_size": config.train.num_proc,
                       "dataset.name": manifest["source"]["name"],
                       "dataset.checksum": manifest["source"]["checksum_sha256"],
                       "dataset.train_count": manifest["splits"]["train"]["count"]})
        mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
        mlflow.set_tags(run_tags(spark))
        mlflow.log_dict(manifest, "dataset/manifest.json")

        settings = worker_settings(config, manifest, dataset_dir)
        settings.update({"tracking_uri": tracking_uri, "mlflow_run_id": run.info.run_id})
        settings.update(extra_settings or {})
        from nnfund_spark.training.worker import train_worker

        started = time.time()
        # Horovod: one barrier task per rank; Gloo rendezvous through the driver.
        try:
            results = horovod.spark.run(train_worker, args=(settings,),
                                        num_proc=config.train.num_proc,
                                        start_timeout=config.train.start_timeout,
                                        use_gloo=True, verbose=1, env=_worker_env())
        except Exception as exc:
            raise_worker_errors(run.info.run_id, tracking_uri, exc)
        wall = time.time() - started
        rank0 = next(r for r in results if r["rank"] == 0)
        mlflow.log_metrics({"test_loss": rank0["test_loss"],
                            "test_accuracy": rank0["test_accuracy"],
                            "train_wall_seconds": wall})
        mlflow.set_tags({"device": rank0["device"],
                         "weights_identical_across_ranks":
                             str(len({r["weights_sha256"] for r in results}) == 1)})
        model = rebuild_model(rank0["weights"], config, manifest)
        mlflow.log_param("model.parameters", model.count_params())
        model_uri = None
        if config.tracking.log_model:
            model_uri = log_keras_model(model, manifest).model_uri
        if config.tracking.log_artifacts:
            log_training_artifacts(model, rank0["history"], rank0["test_confusion"],
                                   manifest["class_names"],
                                   sample_images(settings["split_urls"]["test"]))

    for result in results:
        result.pop("weights", None)
    return {"run_id": run.info.run_id, "tracking_uri": tracking_uri, "model_uri": model_uri,
            "test_accuracy": rank0["test_accuracy"], "test_loss": rank0["test_loss"],
            "test_count": rank0["test_count"], "history": rank0["history"],
            "parameters": model.count_params(), "wall_seconds": wall, "ranks": results}


def _worker_env() -> dict:
    """Environment for the rank processes: the driver's, minus variables that would make every
    rank grab all cores (threads are set per rank in the worker)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env
