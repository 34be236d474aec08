"""Spark job body: raw image source -> Petastorm Parquet splits + manifest, written atomically.

Layout of a prepared dataset::

    <output_dir>/
        manifest.json           counts, shape, class names, mean/std, checksums, split seed
        train/ validation/ test/ one Petastorm dataset each (Parquet + Unischema metadata)

Everything is written under a hidden sibling directory first and renamed into place only when
complete, so a failed run never leaves something that looks like a valid dataset.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import shutil
import uuid
from pathlib import Path

import numpy as np

from nnfund_spark import __version__
from nnfund_spark.config import DataConfig
from nnfund_spark.data.idx import SOURCES, load_idx_dataset
from nnfund_spark.data.schema import SCHEMA_VERSION, image_schema

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SPLITS = ("train", "validation", "test")
# At least this many row groups per split (when it has enough rows) so that every Horovod rank
# of a typical job gets several row groups to shuffle between.
MIN_ROW_GROUPS = 16


class OutputExistsError(FileExistsError):
    pass


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..N-1 into (keep, held_out), holding out `fraction` of every class.

    Depends only on labels, fraction and seed (numpy's PCG64), so the same seed gives the same
    membership on any machine. Both index arrays come back sorted.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    held_out = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = int(round(len(members) * fraction))
        held_out.append(rng.permutation(members)[:count])
    held = np.sort(np.concatenate(held_out)) if held_out else np.array([], dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held, assume_unique=True)
    return keep, held


def _chunks(indices: np.ndarray, bytes_per_row: int, target_mb: int) -> list[np.ndarray]:
    """Cut a split into contiguous chunks; each becomes one Parquet file with one row group."""
    if len(indices) == 0:
        return []
    rows_by_size = max(1, (target_mb << 20) // max(1, bytes_per_row))
    rows_by_count = math.ceil(len(indices) / MIN_ROW_GROUPS)
    rows = max(1, min(rows_by_size, rows_by_count))
    return np.array_split(indices, math.ceil(len(indices) / rows))


def _write_split(spark, url: str, schema, images: np.ndarray, labels: np.ndarray,
                 indices: np.ndarray, target_mb: int) -> int:
    """Encode rows on the executors and write them as a Petastorm dataset; returns file count."""
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import dict_to_spark_row

    stored_shape = schema.fields["image"].shape
    chunks = _chunks(indices, int(np.prod(images.shape[1:])), target_mb)
    payload = [(chunk, images[chunk], labels[chunk]) for chunk in chunks]

    def encode(part):
        # Runs on executors: plain numpy in, Spark Rows out (PNG encoding happens here).
        for chunk, imgs, labs in part:
            if len(stored_shape) == 2:
                imgs = imgs[..., 0]
            for index, image, label in zip(chunk, imgs, labs):
                yield dict_to_spark_row(schema, {"index": np.int64(index), "image": image,
                                                 "label": np.int32(label)})

    with materialize_dataset(spark, url, schema, row_group_size_mb=target_mb):
        rdd = spark.sparkContext.parallelize(payload, numSlices=max(1, len(payload)))
        frame = spark.createDataFrame(rdd.mapPartitions(encode), schema.as_spark_schema())
        frame.write.mode("error").parquet(url)
    return len(payload)


def _source_checksum(source_name: str) -> str:
    digest = hashlib.sha256()
    for stem, sha in sorted(SOURCES[source_name].sha256.items()):
        digest.update(f"{stem}:{sha}\n".encode())
    return digest.hexdigest()


def prepare_dataset(spark, config: DataConfig) -> dict:
    """Prepare config.source into config.output_dir; return the manifest that was written."""
    output = Path(config.output_dir).expanduser().resolve()
    if output.exists() and not config.overwrite:
        raise OutputExistsError(f"output already exists: {output} (pass --overwrite or set "
                                f"data.overwrite=true to replace it)")
    raw = load_idx_dataset(config.source, config.raw_dir, download_missing=config.download)

    train_images, train_labels = raw["train"]
    test_images, test_labels = raw["test"]
    if config.limit:
        train_images, train_labels = train_images[:config.limit], train_labels[:config.limit]
        test_images, test_labels = test_images[:config.limit], test_labels[:config.limit]
    keep, held = stratified_split(train_labels, config.validation_fraction, config.seed)
    splits = {
        "train": (train_images, train_labels, keep),
        "validation": (train_images, train_labels, held),
        "test": (test_images, test_labels, np.arange(len(test_labels))),
    }
    height, width, channels = train_images.shape[1:]
    schema = image_schema(height, width, channels, config.image_codec)
    class_names = raw["class_names"]

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        manifest_splits = {}
        for split, (images, labels, indices) in splits.items():
            url = (staging / split).as_uri()
            files = _write_split(spark, url, schema, images, labels, indices,
                                 config.row_group_size_mb)
            counts = np.bincount(labels[indices], minlength=len(class_names))
            manifest_splits[split] = {
                "count": int(len(indices)),
                "files": files,
                "per_class": {name: int(c) for name, c in zip(class_names, counts)},
                "index_sha256": hashlib.sha256(indices.astype("<i8").tobytes()).hexdigest(),
            }
            log.info("wrote %s: %d examples in %d files", split, len(indices), files)
        pixels = train_images[keep].reshape(-1, channels).astype(np.float64) / 255.0
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "nnfund_spark_version": __version__,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {"name": config.source, "raw_dir": str(Path(config.raw_dir).resolve()),
                       "checksum_sha256": _source_checksum(config.source),
                       "limit": config.limit},
            "image_shape": [int(height), int(width), int(channels)],
            "image_codec": config.image_codec,
            "num_classes": len(class_names),
            "class_names": class_names,
            "split_seed": config.seed,
            "validation_fraction": config.validation_fraction,
            "splits": manifest_splits,
            "train_channel_mean": pixels.mean(axis=0).round(6).tolist(),
            "train_channel_std": pixels.std(axis=0).round(6).tolist(),
            "skipped": {"count": 0, "items": []},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if output.exists():  # only reachable with overwrite=True
            trash = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
            output.rename(trash)
            staging.rename(output)
            shutil.rmtree(trash)
        else:
            staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def read_manifest(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir).expanduser() / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {dataset_dir}: is it a dataset written by "
                                f"'nnfund-spark prepare'?")
    manifest = json.loads(path.read_text())
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise ValueError(f"{path}: schema version {manifest['schema_version']} is newer than this "
                         f"nnfund_spark understands ({SCHEMA_VERSION}); upgrade nnfund_spark")
    return manifest
