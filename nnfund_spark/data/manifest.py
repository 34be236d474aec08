"""The manifest: one JSON file next to the splits that says what the dataset is, and its MLflow
logging. Training reads image_shape, num_classes, splits.*.count and source.{name,
checksum_sha256}; everything else is for people and for reproducing the data."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import warnings
import numpy as np

from nnfund_spark import __version__
from nnfund_spark.data.schema import SCHEMA_VERSION

MANIFEST = "manifest.json"


def split_entry(indices: np.ndarray, labels: np.ndarray, class_names: list, files: dict) -> dict:
    indices = np.sort(np.asarray(indices, np.int64))
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(class_names))
    return {
        "count": int(len(indices)),
        "files": files["files"],
        "row_groups": files["row_groups"],
        "bytes": files["bytes"],
        "per_class": {name: int(c) for name, c in zip(class_names, counts)},
        # Membership fingerprint: equal hashes mean byte-identical split membership.
        "index_sha256": hashlib.sha256(indices.astype("<i8").tobytes()).hexdigest(),
    }


def build_manifest(config, source: dict, class_names: list, image_shape: list, splits: dict,
                   mean: list, std: list, skipped: dict, test_split: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "nnfund_spark_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "image_shape": [int(v) for v in image_shape],
        "image_codec": config.image_codec,
        "color_mode": config.color_mode,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "split_seed": config.seed,
        "validation_fraction": config.validation_fraction,
        # "official": the source's own test set; "stratified": test_fraction of the source.
        "test_split": test_split,
        "test_fraction": config.test_fraction if test_split == "stratified" else None,
        "row_group_size_mb": config.row_group_size_mb,
        "min_row_groups": config.min_row_groups,
        "splits": splits,
        "train_channel_mean": mean,
        "train_channel_std": std,
        "skipped": skipped,
    }


def write_manifest(directory, manifest: dict) -> None:
    """Write manifest.json into `directory` (a storage.Location, a path or a URI)."""
    from nnfund_spark.data.storage import resolve
    resolve(directory).child(MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(dataset_dir) -> dict:
    """The manifest of a prepared dataset (a storage.Location, a path or a URI). A directory
    without one is not a dataset, or one whose commit was interrupted."""
    from nnfund_spark.data.storage import resolve
    root = resolve(dataset_dir)
    path = root.child(MANIFEST)
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {root.display}: is it a dataset written by "
                                f"'nnfund-spark prepare' (and did that run finish)?")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:  # json.JSONDecodeError, or bytes that are not UTF-8
        raise ValueError(f"{path.display} is not a readable manifest ({exc}); re-prepare the "
                         f"dataset with 'nnfund-spark prepare --overwrite'") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"{path.display} is not a manifest (a JSON object was expected); "
                         f"re-prepare the dataset with 'nnfund-spark prepare --overwrite'")
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise ValueError(f"{path.display}: schema version {manifest['schema_version']} is newer than this "
                         f"nnfund_spark understands ({SCHEMA_VERSION}); upgrade nnfund_spark")
    return manifest


def manifest_digest(manifest: dict) -> str:
    """32 hex digits identifying the prepared data (source content, split membership, storage);
    MLflow keeps at most 36 characters of a dataset digest."""
    parts = [manifest["source"]["checksum_sha256"], manifest["image_codec"],
             json.dumps(manifest["image_shape"])]
    parts += [manifest["splits"][s]["index_sha256"] for s in sorted(manifest["splits"])]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def log_manifest_to_mlflow(manifest: dict, dataset_uri: str | None = None,
                           context: str = "training") -> bool:
    """Log the manifest to the active MLflow run: artifact dataset/manifest.json plus a dataset
    input (name, digest, source) that the MLflow UI shows on the run. Returns False, logging
    nothing, when no run is active (prepare runs on its own outside any run)."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    if mlflow.active_run() is None:
        return False
    mlflow.log_dict(manifest, "dataset/manifest.json")
    from nnfund_spark.tracking.mlflow_utils import redact_uri

    uri = redact_uri(dataset_uri or manifest["source"].get("raw_dir") or manifest["source"]["name"])
    source = _dataset_source(uri)
    dataset = MetaDataset(source=source, name=manifest["source"]["name"],
                          digest=manifest_digest(manifest))
    mlflow.log_input(dataset, context=context)
    return True


def _dataset_source(uri: str):
    """MLflow's source for a dataset URI; schemes MLflow has no resolver for (s3a://, abfss://,
    ...) become a Spark dataset source with that path, which is how Spark reads it."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.spark_dataset_source import SparkDatasetSource
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():
        # MLflow registers its local-path source class twice and warns that a path matches
        # "both"; it then picks that class, which is the right one.
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
        try:
            return resolve_dataset_source(uri)
        except MlflowException:
            if "://" not in uri:
                raise
            return SparkDatasetSource(path=uri)
