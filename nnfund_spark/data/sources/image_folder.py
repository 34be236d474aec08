"""Image folders, root/<class_name>/**/*.jpg|jpeg|png of any size, read by Spark.

The driver only ever holds metadata (paths, sizes, labels, per-file checksums and pixel sums,
bad-item reasons). Pixels stay on the executors: binaryFile reads the bytes, a Python task
decodes, converts and resizes them and encodes the stored image; that result is cached, the
driver decides splits and bad items from the metadata, and one job writes every split.

Labels are the sorted class-folder names (recorded in the manifest). Hidden files and folders
(names starting with "." or "_") are ignored, as Spark's file listing ignores them.
"""
from __future__ import annotations

import functools
import hashlib
import math
from collections import Counter
from pathlib import Path

import numpy as np

from nnfund_spark.data import bad_input as bi
from nnfund_spark.data.idx import DataSourceError
from nnfund_spark.data.images import formats_for
from nnfund_spark.data.manifest import build_manifest, split_entry
from nnfund_spark.data.schema import image_schema
from nnfund_spark.data.splits import make_splits
from nnfund_spark.data.storage import spark_filesystem
from nnfund_spark.data.writer import SPLIT_COLUMN, file_count, row_spark_schema

# Enough files per decode task that task start-up (~10-50 ms) is small against decoding them.
FILES_PER_TASK = 1000
# Encoded bytes of a split up to which its files are balanced by a shuffle (see _write).
SHUFFLE_LIMIT = 1 << 30
_DECODED = ("index long, label int, image binary, channels int, sha256 string, bad_kind string, "
            "bad_detail string, px_sum array<long>, px_sumsq array<long>")


def list_classes(spark, raw_dir: str) -> tuple[str, list[str]]:
    """(qualified root URI, sorted class-folder names) through Hadoop's FileSystem, so the same
    code lists local, HDFS, S3 or DBFS roots; fails clearly on a missing or empty root."""
    if "://" not in raw_dir and not raw_dir.startswith(("dbfs:", "file:")):
        raw_dir = str(Path(raw_dir).expanduser().resolve())
    fs, root = spark_filesystem(spark, raw_dir)
    if not fs.exists(root):
        raise DataSourceError(f"image folder not found: {raw_dir} (expected "
                              f"<root>/<class_name>/*.jpg|png)")
    if not fs.getFileStatus(root).isDirectory():
        raise DataSourceError(f"{raw_dir} is a file; data.raw_dir must be a folder with one "
                              f"sub-folder of images per class")
    classes = sorted(s.getPath().getName() for s in fs.listStatus(root) if s.isDirectory()
                     and not s.getPath().getName().startswith((".", "_")))
    if not classes:
        raise DataSourceError(f"{raw_dir}: no class folders (empty source); expected "
                              f"<root>/<class_name>/*.jpg|png with at least one class")
    return fs.makeQualified(root).toString().rstrip("/"), classes


def _display(path: str) -> str:
    """A path as messages and the manifest show it: local paths plain, remote URIs without any
    inline credentials."""
    from nnfund_spark.tracking.mlflow_utils import redact_uri

    return path[len("file:"):] if path.startswith("file:") else redact_uri(path)


def _from_uri(uri: str) -> str:
    """A file-index URI (file:///a%20b) in the form of binaryFile's path column (file:/a b)."""
    from urllib.parse import unquote
    path = unquote(uri)
    return "file:/" + path[len("file:///"):] if path.startswith("file:///") else path


def list_files(spark, root: str, classes: list[str], config) -> tuple:
    """(binaryFile DataFrame of the root, [(path, index, label), ...] to decode, [BadItem, ...]
    found from names and sizes). Indices are positions in the sorted listing of every file."""
    frame = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
    listing = frame.select("path", "length").collect()  # no `content`: no bytes are read
    every = frame._jdf.inputFiles()
    if len(every) > len(listing):
        # Spark's scan skips 0-byte files; only its file index lists them. Walking the index
        # costs one py4j call per file, so it happens only when such files exist.
        seen = {path for path, _ in listing}
        listing += [(p, 0) for p in map(_from_uri, every) if p not in seen]
    label_of = {name: i for i, name in enumerate(classes)}
    exts = {e.lower() for e in config.extensions}
    candidates, bad, per_class = [], [], Counter()
    for index, (path, length) in enumerate(sorted(listing)):
        relative = path[len(root) + 1:].split("/")
        if len(relative) < 2 or relative[0] not in label_of:
            bad.append(bi.BadItem(_display(path), bi.NOT_IN_CLASS_FOLDER,
                                  "files must sit in <root>/<class_name>/"))
            continue
        per_class[relative[0]] += 1
        if config.limit and per_class[relative[0]] > config.limit:
            continue  # data.limit: only the first N files of each class are looked at
        suffix = Path(relative[-1]).suffix.lower()
        if suffix not in exts:
            bad.append(bi.BadItem(_display(path), bi.UNSUPPORTED_FORMAT,
                                  f"extension '{suffix}'; accepted: {', '.join(sorted(exts))}"))
        elif length == 0:
            bad.append(bi.BadItem(_display(path), bi.EMPTY_FILE, "0 bytes; expected an image"))
        else:
            candidates.append((path, index, label_of[relative[0]]))
    empty = [name for name in classes if per_class[name] == 0]
    if empty:
        raise DataSourceError(f"{_display(root)}: empty class folder(s) {', '.join(empty[:5])}: "
                              f"every class folder needs images (remove it or add some)")
    return frame, candidates, bad


def _decode_rows(schemas: dict, color_mode: str, size: tuple, formats: tuple, rows):
    # Runs on the executors: one file's bytes in, its stored image and metadata out.
    from nnfund_spark.data.images import ImageDecodeError, decode_image, error_name
    from nnfund_spark.data.writer import encode_image

    for path, index, label, content in rows:
        digest = hashlib.sha256(content).hexdigest()
        try:
            image = decode_image(bytes(content), color_mode, size, formats)
        except ImageDecodeError as exc:
            yield (index, label, None, 0, digest, exc.kind, str(exc), [0, 0, 0], [0, 0, 0])
            continue
        except MemoryError:
            raise  # the executor, not the file, is the problem
        except Exception as exc:  # noqa: BLE001 - any other failure on one file is that file's
            # A malformed file can make a decoder raise anything (struct.error, IndexError,
            # cv2.error, ...): record it as this file's problem rather than fail the job
            # without naming the file; the driver reports it with the file's path.
            yield (index, label, None, 0, digest, bi.CORRUPT,
                   f"cannot decode: {error_name(exc)}: {exc}", [0, 0, 0], [0, 0, 0])
            continue
        flat = image.reshape(-1, image.shape[-1]).astype(np.int64)
        sums = flat.sum(axis=0).tolist() + [0] * (3 - image.shape[-1])
        squares = (flat * flat).sum(axis=0).tolist() + [0] * (3 - image.shape[-1])
        yield (index, label, encode_image(schemas[image.shape[-1]], image), image.shape[-1],
               digest, None, None, sums, squares)


def _pack_metadata(rows):
    # Runs on the executors: a partition's metadata as a few numpy arrays, so the driver holds
    # ~100 bytes per file instead of one Python Row object each.
    rows = list(rows)
    numbers = np.array([r[:4] for r in rows], np.int64).reshape(-1, 4)
    sums = np.array([r[4] + r[5] for r in rows], np.int64).reshape(-1, 6)
    yield numbers, sums, [r[6] for r in rows], [(r[0], r[7], r[8]) for r in rows if r[7]]


def _collect_metadata(decoded) -> dict:
    """Per decoded file, sorted by index: label, stored bytes, channels (0 = bad), pixel sums
    and squares, content sha256; plus the decode errors."""
    from pyspark.sql import functions as F

    packed = (decoded.select("index", "label", F.coalesce(F.length("image"), F.lit(0)),
                             "channels", "px_sum", "px_sumsq", "sha256", "bad_kind", "bad_detail")
              .rdd.mapPartitions(_pack_metadata).collect())
    numbers = np.concatenate([p[0] for p in packed] or [np.zeros((0, 4), np.int64)])
    sums = np.concatenate([p[1] for p in packed] or [np.zeros((0, 6), np.int64)])
    shas = np.array([sha for p in packed for sha in p[2]], dtype=object)
    order = np.argsort(numbers[:, 0], kind="stable")
    numbers, sums, shas = numbers[order], sums[order], shas[order]
    return {"index": numbers[:, 0], "label": numbers[:, 1], "nbytes": numbers[:, 2],
            "channels": numbers[:, 3], "sums": sums[:, :3], "squares": sums[:, 3:],
            "sha256": shas, "errors": [e for p in packed for e in p[3]]}


def _channel_rule(meta: dict, path_of: dict, color_mode: str, wanted: tuple) -> tuple:
    """(channel count of the dataset, mask of usable files, BadItems for the other count)."""
    good = meta["channels"] > 0
    if color_mode != "keep" or not good.any():
        return wanted[0], good, []
    count = Counter(meta["channels"][good].tolist())
    # The commoner channel count wins (ties: grayscale); files with the other are bad input.
    chosen = max(count, key=lambda c: (count[c], -c))
    wrong = good & (meta["channels"] != chosen)
    bad = [bi.BadItem(path_of[int(i)], bi.WRONG_CHANNELS,
                      f"{int(c)} channel(s) but {count[chosen]} of {int(good.sum())} images "
                      f"have {chosen} (color_mode keep needs one count); set data.color_mode "
                      f"to grayscale or rgb to convert")
           for i, c in zip(meta["index"][wrong], meta["channels"][wrong])]
    return chosen, good & ~wrong, bad


def _write(spark, decoded, members: dict, meta: dict, schema, staging, target_mb: int,
           min_groups: int):
    """One write job for all splits; each split's file count is computed from its byte size."""
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    from nnfund_spark.data.writer import write_frame_splits

    assign = spark.createDataFrame([(int(i), split) for split, (_, ids) in members.items()
                                    for i in ids], f"index long, {SPLIT_COLUMN} string")
    rows = (decoded.join(F.broadcast(assign), "index")
            .select(*row_spark_schema(schema).fieldNames()))
    available, parts = decoded.rdd.getNumPartitions(), []
    for split, (_, ids) in members.items():
        split_bytes = int(meta["nbytes"][np.searchsorted(meta["index"], ids)].sum())
        files = file_count(len(ids), split_bytes // max(1, len(ids)) + 16, target_mb,
                           min_groups)
        frame = rows.filter(F.col(SPLIT_COLUMN) == split)
        # Range-partitioning on the unique index gives files of contiguous index ranges and
        # near-equal rows (even Horovod shards, every file non-empty) for the price of a sample
        # and a shuffle of the split's encoded rows: cheap up to SHUFFLE_LIMIT. Above it,
        # coalescing the many cached partitions moves no data and still gives files even to
        # within about one partition's worth of rows.
        if split_bytes <= SHUFFLE_LIMIT or available < files:
            parts.append(frame.repartitionByRange(files, "index"))
        else:
            parts.append(frame.coalesce(files))
    return write_frame_splits(functools.reduce(DataFrame.union, parts), staging, schema,
                              {split: len(ids) for split, (_, ids) in members.items()}, target_mb)


def prepare_image_folder(spark, config, staging) -> dict:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    try:
        formats = formats_for(config.extensions)
    except ValueError as exc:
        raise DataSourceError(str(exc)) from exc
    spark_filesystem(spark, staging.spark_uri)  # Spark's Parquet writer writes the splits there
    root, classes = list_classes(spark, config.raw_dir)
    files, candidates, bad = list_files(spark, root, classes, config)
    total = len(candidates) + len(bad)
    path_of = {index: _display(path) for path, index, _ in candidates}
    size = tuple(config.image_size)
    wanted = {"grayscale": (1,), "rgb": (3,), "keep": (1, 3)}[config.color_mode]
    schemas = {c: image_schema(size[0], size[1], c, config.image_codec) for c in wanted}

    # Spark cuts many small files into many tiny partitions (spark.sql.files.openCostInBytes);
    # merge them to about FILES_PER_TASK files per task, but keep at least as many partitions
    # as the largest split may need files, so large splits can be coalesced (see _write).
    needed = file_count(len(candidates), size[0] * size[1] * max(wanted),
                        config.row_group_size_mb, config.min_row_groups)
    tasks = max(needed, math.ceil(len(candidates) / FILES_PER_TASK),
                spark.sparkContext.defaultParallelism)
    table = spark.createDataFrame(candidates, "path string, index long, label int")
    # Broadcast join: the (path, index, label) table goes to every executor, file bytes never move.
    joined = files.join(F.broadcast(table), "path").select("path", "index", "label", "content")
    if joined.rdd.getNumPartitions() > tasks:
        joined = joined.coalesce(tasks)
    decode = functools.partial(_decode_rows, schemas, config.color_mode, size, formats)
    decoded = spark.createDataFrame(joined.rdd.mapPartitions(decode), _DECODED,
                                    verifySchema=False).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        meta = _collect_metadata(decoded)
        bad += [bi.BadItem(path_of[i], kind, detail) for i, kind, detail in meta["errors"]]
        channels, good, wrong = _channel_rule(meta, path_of, config.color_mode, wanted)
        bad += wrong
        bi.check_bad_items(bad, total, config.max_bad_fraction, f"files in {_display(root)}")
        missing = [name for c, name in enumerate(classes) if not (meta["label"][good] == c).any()]
        if missing:
            raise DataSourceError(f"{_display(root)}: no usable images in class folder(s) "
                                  f"{', '.join(missing[:5])} (all are bad input)")
        members = make_splits({"train": (meta["index"][good], meta["label"][good])},
                              config.validation_fraction, config.test_fraction, config.seed)
        stats = _write(spark, decoded, members, meta, schemas[channels], staging,
                       config.row_group_size_mb, config.min_row_groups)
    finally:
        decoded.unpersist()
    return _manifest(config, root, classes, size, channels, members, meta, stats, path_of,
                     bi.skipped_summary(bad, total, config.max_bad_fraction))


def _manifest(config, root, classes, size, channels, members, meta, stats, path_of, skipped):
    splits = {}
    for split, (_, ids) in members.items():
        splits[split] = split_entry(ids, meta["label"][np.searchsorted(meta["index"], ids)],
                                    classes, stats[split])
    train = np.searchsorted(meta["index"], members["train"][1])
    pixels = max(1, len(train) * size[0] * size[1]) * 255.0
    mean = meta["sums"][train, :channels].sum(axis=0) / pixels
    var = meta["squares"][train, :channels].sum(axis=0) / (pixels * 255.0) - mean ** 2
    # Content checksum: every used file's path under the root and its SHA-256, in index order.
    digest = hashlib.sha256()
    prefix = len(_display(root)) + 1
    for i in sorted(int(i) for _, ids in members.values() for i in ids):
        at = int(np.searchsorted(meta["index"], i))
        digest.update(f"{path_of[i][prefix:]}:{meta['sha256'][at]}\n".encode())
    source = {"name": "image_folder", "format": "image_folder", "raw_dir": _display(root),
              "checksum_sha256": digest.hexdigest(), "checksums_verified": False,
              "limit": config.limit, "label_order": "sorted class-folder names",
              "image_size": list(size)}
    return build_manifest(config, source, classes, [size[0], size[1], channels], splits,
                          mean.round(6).tolist(), np.sqrt(np.maximum(var, 0)).round(6).tolist(),
                          skipped, "stratified")
