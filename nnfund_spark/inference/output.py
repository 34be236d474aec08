"""Atomic Parquet output through Hadoop's FileSystem API, so the same code commits to file://,
hdfs://, dbfs:/ and the object stores Spark itself writes to.

Spark writes the predictions under a hidden sibling directory; only a complete write is renamed
to the requested name. On HDFS and local disks the rename is atomic; on object stores (s3a, abfss,
dbfs:/Volumes) it is a copy, but readers still never see a half-written directory under the final
name, because the copy starts only after Spark's own commit succeeded.
"""
from __future__ import annotations

import logging
import uuid

log = logging.getLogger(__name__)


class OutputExistsError(FileExistsError):
    pass


def _fs(spark, uri: str):
    from nnfund_spark.data.storage import spark_filesystem
    return spark_filesystem(spark, uri)


def exists(spark, uri: str) -> bool:
    fs, path = _fs(spark, uri)
    return bool(fs.exists(path))


def check_writable(spark, uri: str, overwrite: bool) -> None:
    if exists(spark, uri) and not overwrite:
        raise OutputExistsError(f"output already exists: {uri} (pass --overwrite, or "
                                f"PredictConfig(overwrite=True), to replace it)")


def _sibling(spark, uri: str, tag: str) -> tuple[str, str]:
    """(hidden sibling URI tagged `tag`, the fully qualified form of `uri`)."""
    fs, path = _fs(spark, uri)
    qualified = fs.makeQualified(path)
    parent, name = qualified.getParent(), qualified.getName()
    return str(parent.suffix(f"/.{name}.{tag}-{uuid.uuid4().hex[:8]}")), str(qualified)


def write_parquet_atomically(spark, frame, uri: str, overwrite: bool) -> str:
    """Write `frame` as Parquet at `uri`; returns the fully qualified URI written.

    Raises OutputExistsError when `uri` exists and overwrite is False. An existing output is
    moved aside first and deleted only after the new one is in place.
    """
    check_writable(spark, uri, overwrite)
    staging, final = _sibling(spark, uri, "tmp")
    fs, staging_path = _fs(spark, staging)
    _, final_path = _fs(spark, final)
    try:
        frame.write.mode("error").parquet(staging)
        trash_path = None
        if fs.exists(final_path):
            # Checked again here: another job may have written it while we were computing.
            if not overwrite:
                raise OutputExistsError(f"output appeared while predicting: {final}")
            trash_path = _fs(spark, _sibling(spark, uri, "old")[0])[1]
            if not fs.rename(final_path, trash_path):
                raise OSError(f"could not move the existing output {final} aside to {trash_path}")
        if not fs.rename(staging_path, final_path):
            if trash_path is not None:
                fs.rename(trash_path, final_path)  # put the previous output back
            raise OSError(f"could not rename {staging} to {final}")
        if trash_path is not None:
            fs.delete(trash_path, True)
    finally:
        if fs.exists(staging_path):
            fs.delete(staging_path, True)
    log.info("wrote predictions to %s", final)
    return final
