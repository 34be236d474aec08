"""Writing Petastorm splits with Spark, and the Petastorm metadata that makes them readable.

Two writers, one result (Parquet files with one row group each, plus `_common_metadata` holding
the pickled Unischema and the row groups per file, which is what Petastorm readers expect):

- write_array_splits: in-memory sources. Chunks go to Spark tasks, which PNG-encode them and
  write each chunk as one Parquet file with pyarrow. One Spark stage for all splits, no per-row
  Python -> JVM conversion and no sort; about 3x faster than the DataFrame writer here.
- write_frame_splits: DataFrames (image folders), written by Spark's Parquet writer.

Petastorm's own `materialize_dataset` would run one more Spark job per split to count row
groups and list every split twice; reading the footers of a few dozen files on the driver is
faster and writes the same metadata. Output locations are storage.Location objects: a path
every node sees under the same name (local mode, NFS, /dbfs) or a URI on a shared filesystem
(s3a://, hdfs://, ...); executors get the URI and open it with fsspec themselves.
"""
from __future__ import annotations

import functools
import json
import math
import pickle

import numpy as np

# At least this many row groups per split (or one per row when it has fewer rows): every
# Horovod rank reads its own row groups of every split, so a 2-rank job gets 8 to shuffle
# between, and up to 16 ranks can read even a tiny split.
MIN_ROW_GROUPS = 16
# Chunks per task in write_array_splits: enough tasks to balance the cores, few enough that
# task start-up stays small against the encoding work.
TASKS_PER_CORE = 2
SPLIT_COLUMN = "split"


class SparkWriteError(RuntimeError):
    """The Spark job that encodes and writes the splits failed; the cause is chained."""


class MissingRowsError(SparkWriteError):
    """A split's Parquet files (as the driver sees them) hold fewer or more rows than were
    written to it: typically executors wrote to a directory the driver does not share."""


def row_spark_schema(schema):
    from pyspark.sql.types import StringType, StructField, StructType
    fields = list(schema.as_spark_schema().fields)
    return StructType(fields + [StructField(SPLIT_COLUMN, StringType(), False)])


def row_arrow_schema(schema):
    """The Arrow schema Spark would write for the Unischema (same types and nullability)."""
    import pyarrow as pa
    from pyspark.sql.types import BinaryType, IntegerType, LongType

    types = {LongType: pa.int64(), IntegerType: pa.int32(), BinaryType: pa.binary()}
    return pa.schema([pa.field(f.name, types[type(f.dataType)], nullable=f.nullable)
                      for f in schema.as_spark_schema().fields])


def encode_image(schema, image: np.ndarray) -> bytes:
    """H x W x C uint8 -> the stored bytes of the `image` field (PNG or npy per the Unischema)."""
    field = schema.fields["image"]
    if len(field.shape) == 2:  # PNG grayscale is stored 2-D (see schema.py)
        image = image[..., 0]
    return bytes(field.codec.encode(field, image))


def estimate_row_bytes(schema, images: np.ndarray, sample: int = 256) -> int:
    """Mean stored bytes of one row, from encoding an evenly spaced sample of the images."""
    if len(images) == 0:
        return 1
    picks = np.linspace(0, len(images) - 1, min(sample, len(images))).astype(int)
    return max(1, int(np.mean([len(encode_image(schema, images[i])) for i in picks])) + 16)


def file_count(count: int, row_bytes: int, target_mb: int,
               min_groups: int = MIN_ROW_GROUPS) -> int:
    """Files (= row groups) for a split: none above target_mb, at least min_groups (Horovod
    ranks get whole row groups, so this bounds how many ranks can share the split)."""
    if count == 0:
        return 1
    by_size = math.ceil(count * row_bytes / (target_mb << 20))
    return max(1, by_size, min(min_groups, count))


def _write_chunks(schema, staging_uri: str, chunks) -> list:
    # Runs on the executors: encode each chunk and write it as one file with one row group.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nnfund_spark.data.storage import resolve

    staging = resolve(staging_uri)
    arrow_schema = row_arrow_schema(schema)
    written = []
    for split, name, indices, images, labels in chunks:
        columns = {"image": pa.array([encode_image(schema, im) for im in images], pa.binary()),
                   "index": pa.array(indices, pa.int64()), "label": pa.array(labels, pa.int32())}
        table = pa.table([columns[f.name] for f in arrow_schema], schema=arrow_schema)
        target = staging.child(split, name)
        target.parent.makedirs()
        with target.open("wb") as handle:
            pq.write_table(table, handle, row_group_size=max(1, len(indices)))
        written.append(target.uri)
    return written


def write_array_splits(spark, staging, schema, plan: dict, target_mb: int,
                       min_groups: int = MIN_ROW_GROUPS) -> dict:
    """Write every split of an in-memory source in ONE Spark stage.

    plan: {split: (indices, images, labels)} with images already converted (uint8 NHWC).
    Each split is cut into contiguous chunks, one file (and one row group) each; chunks are
    dealt round-robin to a few tasks per core. Returns {split: file stats} (see finish_split).
    """
    row_bytes = max(estimate_row_bytes(schema, images) for _, images, _ in plan.values())
    chunks = []
    for split, (indices, images, labels) in plan.items():
        for number, rows in enumerate(np.array_split(
                np.arange(len(indices)),
                file_count(len(indices), row_bytes, target_mb, min_groups))):
            if len(rows):
                chunks.append((split, f"part-{number:05d}.parquet", indices[rows], images[rows],
                               labels[rows]))
    tasks = max(1, min(len(chunks), spark.sparkContext.defaultParallelism * TASKS_PER_CORE))
    groups = [chunks[i::tasks] for i in range(tasks)]
    write = functools.partial(_write_chunks, schema, staging.uri)
    try:
        spark.sparkContext.parallelize(groups, tasks).map(write).collect()
    except Exception as exc:  # py4j/PySpark wrap task errors in several exception types
        raise SparkWriteError(f"writing {', '.join(plan)} failed: {_first_line(exc)}") from exc
    file_schema = row_arrow_schema(schema)
    stats = {}
    for split, (indices, _, _) in plan.items():
        staging.child(split).makedirs()
        stats[split] = finish_split(staging.child(split), schema, file_schema, len(indices))
    return stats


def write_frame_splits(frame, staging, schema, splits: dict, target_mb: int) -> dict:
    """Write a DataFrame of rows (Unischema columns + split) partitioned by split, in one job,
    then move <staging>/.rows/split=<name> to <staging>/<name> and add Petastorm metadata.

    splits: {split: rows it must hold}, checked against what the driver finds written."""
    from nnfund_spark.data.storage import commit

    rows_dir = staging.child(".rows")
    try:
        (frame.write.mode("error").partitionBy(SPLIT_COLUMN)
         # Per-write Hadoop options: row groups of target_mb, no Parquet summary files
         # (Petastorm keeps its own metadata), without touching the session's config.
         .option("parquet.block.size", str(target_mb << 20))
         .option("parquet.summary.metadata.level", "NONE")
         .parquet(rows_dir.spark_uri))  # unencoded: Hadoop reads "%20" literally
    except Exception as exc:  # py4j/PySpark wrap executor errors in several exception types
        raise SparkWriteError(f"writing {', '.join(splits)} failed: "
                              f"{_first_line(exc)}") from exc
    stats = {}
    for split in splits:
        target = staging.child(split)
        written = rows_dir.child(f"{SPLIT_COLUMN}={split}")
        if written.is_dir():
            commit(written, target)
        else:  # Spark writes no directory for a split without rows
            target.makedirs()
        stats[split] = finish_split(target, schema, row_arrow_schema(schema), splits[split])
    if rows_dir.exists():
        rows_dir.remove_tree()
    return stats


def finish_split(split_dir, schema, file_schema, expected_rows: int) -> dict:
    """Write Petastorm's _common_metadata for one split (a storage.Location); return its files,
    row groups, bytes.

    file_schema: the Arrow schema of an empty file, written when the split has no rows.
    expected_rows: rows written to the split; MissingRowsError when its files hold another count.
    """
    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import ROW_GROUPS_PER_FILE_KEY, UNISCHEMA_KEY

    files = [f for f in split_dir.files(".parquet") if not f.name.startswith((".", "_"))]
    if not files and expected_rows:
        _check_rows(split_dir, 0, expected_rows)
    if not files:
        # An empty split (e.g. validation_fraction=0) still gets a valid Parquet file with the
        # schema and no row group, so it reads as "no rows" rather than "no dataset".
        empty = split_dir.child("part-00000.parquet")
        with empty.open("wb") as handle:
            pq.ParquetWriter(handle, file_schema).close()
        files = [empty]
    row_groups, size, rows, arrow_schema = {}, 0, 0, None
    for file in files:
        with file.open("rb") as handle:
            meta = pq.read_metadata(handle)
        row_groups[file.name] = meta.num_row_groups
        rows += meta.num_rows
        arrow_schema = arrow_schema or meta.schema.to_arrow_schema()
        size += file.size()
    _check_rows(split_dir, rows, expected_rows)
    metadata = dict(arrow_schema.metadata or {})
    metadata[UNISCHEMA_KEY] = pickle.dumps(schema)
    metadata[ROW_GROUPS_PER_FILE_KEY] = json.dumps(row_groups).encode()
    with split_dir.child("_common_metadata").open("wb") as handle:
        pq.write_metadata(arrow_schema.with_metadata(metadata), handle)
    return {"files": len(files), "row_groups": sum(row_groups.values()), "bytes": size}


def _check_rows(split_dir, found: int, expected: int) -> None:
    if found != expected:
        raise MissingRowsError(
            f"split '{split_dir.name}': the driver finds {found} rows in {split_dir.display} but "
            f"{expected} were written; the executors most likely wrote their files where the "
            f"driver cannot see them. data.output_dir must be one location shared by the driver "
            f"and every executor (local mode, NFS, /dbfs, or a URI such as s3a://...), not a "
            f"node-local disk")


def _first_line(exc: Exception) -> str:
    """The Python error raised inside a task (e.g. 'ValueError: ...') out of the Java stack trace
    Spark wraps it in; else the first line of the message."""
    import re

    text = str(exc).strip()
    python_errors = [line.strip() for line in text.splitlines()
                     if re.match(r"^[A-Za-z_][\w.]*(Error|Exception): ", line.strip())
                     and not line.strip().startswith(("org.", "java.", "py4j.", "scala."))]
    if python_errors:
        return python_errors[-1][:500]
    return text.splitlines()[0][:500] if text else type(exc).__name__
