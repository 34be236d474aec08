"""The `nnfund-spark predict` flags, kept beside the job so cli.py only wires them in.

Shared settings come from the usual job config (-c / --set): the dataset defaults to
data.output_dir, MLflow to tracking.tracking_uri, Spark to the spark section. Only what is
specific to scoring is a flag here.
"""
from __future__ import annotations

import argparse

from nnfund_spark.config import ConfigError, JobConfig
from nnfund_spark.inference.model import ACCEPTED_MODEL_URIS
from nnfund_spark.inference.config import MLFLOW_RUN_CHOICES, PredictConfig

_DEFAULTS = PredictConfig(model_uri="", dataset_dir="", output_dir="")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model-uri", help=f"the model to score with: {ACCEPTED_MODEL_URIS}")
    model.add_argument("--model-from-summary", metavar="PATH",
                       help="score with the model a `train --summary-json PATH` run logged "
                            "(how one job's predict task finds its train task's model)")
    parser.add_argument("--output-dir", required=True,
                        help="where the predictions Parquet goes (path or URI)")
    parser.add_argument("--dataset-dir",
                        help="prepared dataset root or split dir (default: data.output_dir)")
    parser.add_argument("--split", default=_DEFAULTS.split,
                        help=f"split to score when --dataset-dir is a root "
                             f"(default: {_DEFAULTS.split})")
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size,
                        help=f"images per model call on an executor "
                             f"(default: {_DEFAULTS.batch_size})")
    parser.add_argument("--num-partitions", type=int, default=_DEFAULTS.num_partitions,
                        help="repartition the split before scoring (default: 0 = as read)")
    # Its own dest: the shared `overwrite` flag of `prepare` means data.overwrite.
    parser.add_argument("--overwrite", dest="predict_overwrite", action="store_true",
                        help="replace an existing --output-dir")
    parser.add_argument("--mlflow-run", choices=MLFLOW_RUN_CHOICES, default=_DEFAULTS.mlflow_run,
                        help="log accuracy/confusion matrix to a new run in the model's "
                             "experiment (new), to the run that logged the model (source), "
                             "or not at all (none)")
    parser.add_argument("--experiment",
                        help="experiment for --mlflow-run new (default: the model's own)")
    parser.add_argument("--registry-uri",
                        help="MLflow model registry URI for models:/ (e.g. databricks-uc)")


def predict_config_from_args(args: argparse.Namespace, config: JobConfig) -> PredictConfig:
    """PredictConfig from parsed flags + the resolved job config; raises ConfigError (exit 2)."""
    return PredictConfig(
        model_uri=args.model_uri or model_uri_from_summary(args.model_from_summary),
        dataset_dir=args.dataset_dir or config.data.output_dir,
        output_dir=args.output_dir,
        split=args.split,
        batch_size=args.batch_size,
        overwrite=bool(args.predict_overwrite),
        tracking_uri=config.tracking.tracking_uri,
        registry_uri=args.registry_uri,
        mlflow_run=args.mlflow_run,
        experiment=args.experiment,
        num_partitions=args.num_partitions,
    ).validate()


def model_uri_from_summary(path: str) -> str:
    """The model_uri of a training job's summary JSON (``train --summary-json``); ConfigError
    naming the file when it cannot be read or logged no model."""
    import json
    from pathlib import Path

    try:
        summary = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model-from-summary {path}: cannot read a training summary "
                          f"({exc}); give the file `train --summary-json` wrote") from exc
    uri = summary.get("model_uri") if isinstance(summary, dict) else None
    if not uri:
        raise ConfigError(f"--model-from-summary {path}: the training job logged no model "
                          f"(model_uri is {uri!r}; it ran with tracking.log_model=false?)")
    return str(uri)
