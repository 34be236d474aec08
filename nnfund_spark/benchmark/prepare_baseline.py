"""The simplest thing that could prepare an IDX dataset: one process writing the same splits
with pyarrow directly. The same IDX loading and split members, the same PNG encoding (OpenCV,
via the Petastorm codec), the same files and row groups as ``prepare``, but no Spark, no
manifest and no Petastorm metadata. The yardstick ``prepare`` is divided by."""
from __future__ import annotations

from pathlib import Path


def pyarrow_prepare(raw_dir: Path, out: Path, codec: str = "png", target_mb: int = 4,
                    seed: int = 42, limit: int = 0, validation_fraction: float = 0.1) -> int:
    """Single process: load, split, encode, one pq.write_table per chunk. Returns images."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nnfund_spark.data.schema import image_schema
    from nnfund_spark.data.sources.idx_source import load_idx
    from nnfund_spark.config import DataConfig
    from nnfund_spark.data.splits import make_splits
    from nnfund_spark.data.writer import encode_image, estimate_row_bytes, file_count

    source = load_idx(DataConfig(raw_dir=str(raw_dir)))
    if limit:
        source.splits = {name: (images[:limit], labels[:limit])
                         for name, (images, labels) in source.splits.items()}
    pools = {name: (np.arange(len(labels)), labels) for name, (_, labels) in source.splits.items()}
    members = make_splits(pools, validation_fraction, 0.2, seed)
    height, width = source.splits["train"][0].shape[1:3]
    schema = image_schema(height, width, 1, codec)
    row_bytes = estimate_row_bytes(schema, source.splits["train"][0])
    total = 0
    for split, (pool, indices) in members.items():
        images, labels = source.splits[pool]
        (out / split).mkdir(parents=True)
        for number, rows in enumerate(np.array_split(
                indices, file_count(len(indices), row_bytes, target_mb))):
            table = pa.table({"image": pa.array([encode_image(schema, images[i]) for i in rows],
                                                pa.binary()),
                              "index": pa.array(rows, pa.int64()),
                              "label": pa.array(labels[rows], pa.int32())})
            pq.write_table(table, out / split / f"part-{number:05d}.parquet",
                           row_group_size=len(rows))
            total += len(rows)
    return total
