"""Driver side of training: check the cluster, open the MLflow run, launch Horovod on Spark,
record the results and the model."""
from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path

from nnfund_spark import __version__
from nnfund_spark.config import JobConfig, flatten, to_dict
from nnfund_spark.data.prepare import SPLITS, read_manifest
from nnfund_spark.tracking.mlflow_utils import redact, resolve_tracking_uri, start_job_run

log = logging.getLogger(__name__)


class ClusterTooSmallError(RuntimeError):
    pass


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
        "verbose": train.verbose,
    }


def log_keras_model(weights, config: JobConfig, manifest: dict):
    """Rebuild the architecture on the driver, load rank 0's weights, log it as 'model'."""
    import mlflow
    import numpy as np
    import tensorflow as tf
    from mlflow.models import infer_signature

    from nnfund_spark.models import build_model

    model = build_model(config.train.model, manifest["image_shape"], manifest["num_classes"],
                        dropout=config.train.dropout, dense_dropout=config.train.dense_dropout)
    model.set_weights(weights)
    example = np.zeros((2, *manifest["image_shape"]), np.float32)
    signature = infer_signature(example, model.predict(example, verbose=0))
    del tf  # imported for its side effect of initialising Keras before mlflow's flavor
    return mlflow.tensorflow.log_model(model, name="model", signature=signature,
                                       input_example=example)


def run_training(spark, config: JobConfig, extra_settings: dict | None = None) -> dict:
    """Train config.train.model on the prepared dataset at config.data.output_dir.

    Returns a summary: run id, test accuracy, per-rank results (without weights).
    """
    import horovod.spark
    import mlflow

    dataset_dir = Path(config.data.output_dir).expanduser().resolve()
    manifest = read_manifest(dataset_dir)
    check_slots(spark, config.train.num_proc)
    tracking_uri = resolve_tracking_uri(config.tracking)

    with start_job_run(config.tracking, tracking_uri) as run:
        params = redact(flatten(to_dict(config)))
        params.update({"world_size": config.train.num_proc,
                       "dataset.name": manifest["source"]["name"],
                       "dataset.checksum": manifest["source"]["checksum_sha256"],
                       "dataset.train_count": manifest["splits"]["train"]["count"]})
        mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
        mlflow.set_tags({"nnfund_spark.version": __version__,
                         "spark.master": spark.sparkContext.master,
                         "python": platform.python_version()})
        mlflow.log_dict(manifest, "dataset/manifest.json")

        settings = worker_settings(config, manifest, dataset_dir)
        settings.update({"tracking_uri": tracking_uri, "mlflow_run_id": run.info.run_id})
        settings.update(extra_settings or {})
        from nnfund_spark.training.worker import train_worker

        started = time.time()
        # Horovod: one barrier task per rank; Gloo rendezvous through the driver.
        results = horovod.spark.run(train_worker, args=(settings,),
                                    num_proc=config.train.num_proc,
                                    start_timeout=config.train.start_timeout,
                                    use_gloo=True, verbose=1,
                                    env=_worker_env())
        wall = time.time() - started
        rank0 = next(r for r in results if r["rank"] == 0)
        mlflow.log_metrics({"test_loss": rank0["test_loss"],
                            "test_accuracy": rank0["test_accuracy"],
                            "train_wall_seconds": wall})
        mlflow.set_tag("weights_identical_across_ranks",
                       str(len({r["weights_sha256"] for r in results}) == 1))
        model_uri = None
        if config.tracking.log_model:
            model_uri = log_keras_model(rank0["weights"], config, manifest).model_uri

    for result in results:
        result.pop("weights", None)
    return {"run_id": run.info.run_id, "tracking_uri": tracking_uri, "model_uri": model_uri,
            "test_accuracy": rank0["test_accuracy"], "test_loss": rank0["test_loss"],
            "test_count": rank0["test_count"], "history": rank0["history"],
            "wall_seconds": wall, "ranks": results}


def _worker_env() -> dict:
    """Environment for the rank processes: the driver's, minus variables that would make every
    rank grab all cores (threads are set per rank in the worker)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env
