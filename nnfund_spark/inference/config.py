"""PredictConfig: what a batch inference job scores, with what, and where the results go.

Kept free of Spark/TensorFlow/Petastorm imports so the command line can build and validate it
before anything heavy loads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from nnfund_spark.config import ConfigError
from nnfund_spark.inference.model import parse_model_uri

# Where the metrics go: a new run in the model's experiment, the run that logged the model, or
# nowhere (e.g. a scoring job without labels that only needs the output files).
MLFLOW_RUN_CHOICES = ("new", "source", "none")


@dataclass
class PredictConfig:
    # Which model: see nnfund_spark.inference.model.ACCEPTED_MODEL_URIS.
    model_uri: str
    # A prepared dataset root (holding manifest.json) or one split directory inside it.
    dataset_dir: str
    # Where the predictions Parquet goes (a path or a URI Spark can write).
    output_dir: str
    # The split to score when dataset_dir is a root; the official test split by default.
    split: str = "test"
    # Images per model.predict call on an executor; bounds executor memory, not the result.
    batch_size: int = 256
    # Replace an existing output_dir; off so a typo cannot destroy earlier predictions.
    overwrite: bool = False
    # None: MLFLOW_TRACKING_URI when set, else ./mlflow.db (as for training).
    tracking_uri: Optional[str] = None
    # None: MLflow's default for the tracking URI; "databricks-uc" for Unity Catalog models.
    registry_uri: Optional[str] = None
    mlflow_run: str = "new"
    # For mlflow_run="new": None puts the run in the experiment of the model's source run.
    experiment: Optional[str] = None
    # 0: one task per Parquet split Spark chooses; more spreads scoring over more executors.
    num_partitions: int = 0

    def validate(self) -> "PredictConfig":
        parse_model_uri(self.model_uri)
        for name in ("dataset_dir", "output_dir", "split"):
            if not str(getattr(self, name) or "").strip():
                raise ConfigError(f"predict: {name} must not be empty")
        if self.batch_size <= 0:
            raise ConfigError(f"predict: batch_size must be > 0, got {self.batch_size}")
        if self.num_partitions < 0:
            raise ConfigError(f"predict: num_partitions must be >= 0, got {self.num_partitions}")
        if self.mlflow_run not in MLFLOW_RUN_CHOICES:
            raise ConfigError(f"predict: mlflow_run '{self.mlflow_run}' is not one of "
                              f"{', '.join(MLFLOW_RUN_CHOICES)}")
        return self
