"""Batch inference job body: score a prepared split with a logged MLflow model across the
executors, write the predictions atomically, and record accuracy and the confusion matrix.

Flow (driver): validate -> find the split and its manifest -> refuse an existing output -> resolve
the model URI to its source run -> download the model once and ship it with addFile -> Spark
reads the split's Parquet, mapInPandas decodes and scores (scoring.py) -> atomic Parquet write ->
accuracy and confusion matrix by a Spark groupBy over the written predictions (only the K x K
counts reach the driver) -> MLflow.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

from nnfund_spark.config import TrackingConfig
from nnfund_spark.data.prepare import MANIFEST, read_manifest
from nnfund_spark.data.storage import Location, overlapping, resolve, spark_filesystem
from nnfund_spark.databricks import spark_uri
from nnfund_spark.inference.config import PredictConfig
from nnfund_spark.inference.model import download_model, parse_model_uri, resolve_source_run
from nnfund_spark.inference.output import check_writable, write_parquet_atomically
from nnfund_spark.inference.scoring import output_schema, score_batches
from nnfund_spark.tracking.mlflow_utils import redact, resolve_tracking_uri, start_job_run

log = logging.getLogger(__name__)

def resolve_split(dataset_dir: str, split: str) -> tuple[Location, str, Location, dict]:
    """(dataset root, split name, split dir, manifest) for a dataset root or a split dir, given
    as a path or a URI (storage.resolve)."""
    given = resolve(dataset_dir)
    if not given.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {given.display}")
    if given.child(MANIFEST).is_file():
        root, split_dir = given, given.child(split)
    elif given.parent.child(MANIFEST).is_file():
        # A split directory was given: it decides the split, whatever `split` says.
        root, split, split_dir = given.parent, given.name, given
    else:
        raise FileNotFoundError(f"no {MANIFEST} in {given.display} or its parent: give a dataset "
                                f"written by 'nnfund-spark prepare' or one of its split dirs")
    manifest = read_manifest(root)
    if split not in manifest["splits"] or not split_dir.is_dir():
        raise FileNotFoundError(f"split '{split}' not found in dataset {root.display}; "
                                f"available: {', '.join(sorted(manifest['splits']))}")
    return root, split, split_dir, manifest


def _refuse_output_over_dataset(output_uri: str, root: Location) -> None:
    """--overwrite on an output that is, contains or sits inside the dataset would destroy it."""
    output = overlapping(output_uri, root)
    if output is not None:
        raise ValueError(f"output {output.display} overlaps the dataset {root.display}; choose "
                         f"a directory outside the dataset")


def confusion_counts(predictions, num_classes: int):
    """K x K matrix [label][prediction] from a Spark groupBy; only K*K rows are collected."""
    import numpy as np

    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for row in predictions.groupBy("label", "prediction").count().collect():
        label, predicted = int(row["label"]), int(row["prediction"])
        if not (0 <= label < num_classes and 0 <= predicted < num_classes):
            raise ValueError(f"label {label} / prediction {predicted} outside the dataset's "
                             f"{num_classes} classes")
        matrix[label, predicted] += int(row["count"])
    return matrix


def ship_model(spark, ref, tracking_uri: str, image_shape) -> str:
    """Download the model on the driver and register it with SparkContext.addArchive; returns
    the archive's name, which executors pass to SparkFiles.get.

    An archive, because addFile takes no local directories outside local mode. The name is
    unique per call (Spark refuses to re-register a name with new content). The zip stays in
    the session's own scratch directory until the SparkContext stops: an executor that joins
    later (autoscaling, a lost node) fetches every registered archive before its first task.
    """
    from pyspark import SparkFiles

    name = f"nnfund_model_{uuid.uuid4().hex[:12]}"
    keep = Path(SparkFiles.getRootDirectory()).parent / "nnfund_models"
    keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nnfund_predict_") as tmp:
        local_model = download_model(ref, tracking_uri, Path(tmp) / name, image_shape)
        archive = shutil.make_archive(str(keep / name), "zip", root_dir=local_model)
    spark.sparkContext.addArchive(archive)
    return Path(archive).name


def run_predict(spark, config: PredictConfig) -> dict:
    """Score config.split of the dataset with the model and write the predictions.

    Returns a summary dict: model_uri (normalised), source_run_id, dataset_dir, split,
    output_uri, count, expected_count (the manifest's), accuracy and confusion_matrix (rows =
    true label, columns = prediction; both None without labels), class_names, tracking_uri,
    mlflow_run_id (None with mlflow_run="none"), wall_seconds.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    config.validate()
    started = time.time()
    ref = parse_model_uri(config.model_uri)
    root, split, split_dir, manifest = resolve_split(config.dataset_dir, config.split)
    output_uri = spark_uri(config.output_dir, os.environ)
    _refuse_output_over_dataset(output_uri, root)
    split_uri = spark_uri(split_dir.display, os.environ)
    spark_filesystem(spark, split_uri)  # Spark reads the split: fail now if it cannot
    check_writable(spark, output_uri, config.overwrite)  # before any expensive work

    tracking_uri = resolve_tracking_uri(TrackingConfig(tracking_uri=config.tracking_uri))
    mlflow.set_tracking_uri(tracking_uri)
    if config.registry_uri:
        mlflow.set_registry_uri(config.registry_uri)
    client = MlflowClient(tracking_uri, config.registry_uri)
    source_run = resolve_source_run(client, ref, tracking_uri)
    if config.mlflow_run == "source" and source_run is None:
        # Known now: refuse before scoring and before --overwrite replaces an old output.
        raise ValueError(f"mlflow_run='source' but model '{ref.uri}' has no source run; use "
                         f"mlflow_run='new'")
    image_shape = [int(v) for v in manifest["image_shape"]]
    num_classes = int(manifest["num_classes"])

    archive = ship_model(spark, ref, tracking_uri, image_shape)
    frame = spark.read.parquet(split_uri)
    missing = {"index", "image"} - set(frame.columns)
    if missing:
        raise ValueError(f"{split_dir.display} lacks column(s) {', '.join(sorted(missing))}; "
                         f"found {', '.join(frame.columns)}")
    has_label = "label" in frame.columns
    frame = frame.select("index", "image", *(["label"] if has_label else []))
    if config.num_partitions:
        frame = frame.repartition(config.num_partitions)
    settings = {"model_archive": archive, "model_uri": ref.uri,
                "batch_size": config.batch_size, "num_classes": num_classes,
                "codec": manifest.get("image_codec", "png"), "image_shape": image_shape,
                "has_label": has_label}

    def score(batches):
        return score_batches(batches, settings)

    predictions = frame.mapInPandas(score, output_schema(has_label))
    final_uri = write_parquet_atomically(spark, predictions, output_uri, config.overwrite)

    written = spark.read.parquet(final_uri)
    count = written.count()
    expected = int(manifest["splits"][split]["count"])
    if count != expected:
        log.warning("scored %d examples but the manifest lists %d for split %s", count,
                    expected, split)
    if count == 0:
        log.warning("split %s of %s holds 0 examples: nothing was scored and accuracy is not "
                    "computed", split, root.display)
    matrix = confusion_counts(written, num_classes) if has_label else None
    accuracy = float(matrix.trace()) / count if matrix is not None and count else None
    summary = {
        "model_uri": ref.uri, "source_run_id": source_run.info.run_id if source_run else None,
        # the URI the output was checked under (file:///…, dbfs:/…), the form the "already
        # exists" refusal names, not Hadoop's qualified file:/…
        "dataset_dir": root.display, "split": split, "output_uri": output_uri, "count": count,
        "expected_count": expected, "accuracy": accuracy,
        "confusion_matrix": matrix.tolist() if matrix is not None else None,
        "class_names": manifest["class_names"], "tracking_uri": tracking_uri,
    }
    summary["mlflow_run_id"] = log_predictions(config, client, source_run, summary)
    summary["wall_seconds"] = time.time() - started
    return summary


def log_predictions(config: PredictConfig, client, source_run, summary: dict) -> Optional[str]:
    """Record the results in MLflow as config.mlflow_run says; returns the run id used."""
    import mlflow

    if config.mlflow_run == "none":
        return None
    if config.mlflow_run == "source":
        if source_run is None:
            raise ValueError(f"mlflow_run='source' but model '{summary['model_uri']}' has no "
                             f"source run; use mlflow_run='new'")
        context = mlflow.start_run(run_id=source_run.info.run_id)
    else:
        experiment = config.experiment or (
            client.get_experiment(source_run.info.experiment_id).name if source_run
            else TrackingConfig().experiment)
        context = start_job_run(TrackingConfig(experiment=experiment,
                                               run_name=f"predict-{summary['split']}"),
                                summary["tracking_uri"])
    split = summary["split"]
    with context as run:
        if config.mlflow_run == "new":
            mlflow.log_params(redact({"model_uri": summary["model_uri"], "split": split,
                                      "dataset_dir": summary["dataset_dir"],
                                      "output_uri": summary["output_uri"],
                                      "batch_size": config.batch_size}))
            mlflow.set_tags({"nnfund_spark.job": "predict",
                             "source_run_id": summary["source_run_id"] or ""})
        mlflow.log_metric(f"predict_{split}_count", summary["count"])
        if summary["accuracy"] is not None:
            mlflow.log_metric(f"predict_{split}_accuracy", summary["accuracy"])
            names = summary["class_names"]
            mlflow.log_dict({"labels": names, "rows_are": "true label",
                             "columns_are": "predicted label",
                             "matrix": summary["confusion_matrix"]},
                            f"predict/{split}/confusion_matrix.json")
            lines = ["label," + ",".join(names)] + [
                f"{name}," + ",".join(str(v) for v in row)
                for name, row in zip(names, summary["confusion_matrix"])]
            mlflow.log_text("\n".join(lines) + "\n", f"predict/{split}/confusion_matrix.csv")
    return run.info.run_id


def format_summary(summary: dict) -> str:
    """The lines `nnfund-spark predict` prints."""
    head = (f"predicted {summary['count']} {summary['split']} images with {summary['model_uri']}"
            f" -> {summary['output_uri']}")
    if summary["count"] == 0:
        return head + " (the split holds 0 examples: accuracy not computed)"
    if summary["accuracy"] is None:
        return head + " (no labels: accuracy not computed)"
    run = f", MLflow run {summary['mlflow_run_id']}" if summary["mlflow_run_id"] else ""
    return head + f"\naccuracy: {summary['accuracy']:.4f}{run}"
