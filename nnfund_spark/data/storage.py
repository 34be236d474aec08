"""Where prepared datasets live. Executors write Parquet files with pyarrow into the output
directory and the driver renames the staged directory into place, so the location must be a
path that the driver and every executor see under the same name: a local path (local mode),
a file:// URI, or a shared mount such as /dbfs/... or NFS. Remote URIs (hdfs://, s3a://, ...)
are refused with that explanation rather than half-written."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

ACCEPTED = ("a local path", "a file:// URI", "a shared mount such as /dbfs/... or NFS")


def local_path(location: str | Path) -> Path:
    """A local path or file:// URI as an absolute Path; other URI schemes are a ValueError."""
    text = str(location)
    scheme = urlparse(text).scheme
    if scheme == "file":
        text = urlparse(text).path
    elif scheme == "dbfs":  # Databricks mounts DBFS (and /Volumes) at /dbfs on every node
        text = "/dbfs/" + text.split(":", 1)[1].lstrip("/")
    elif scheme:
        raise ValueError(f"dataset location '{location}' uses {scheme}://, which prepare/train "
                         f"cannot stage and rename atomically; use {', '.join(ACCEPTED)}")
    return Path(text).expanduser().resolve()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a small text file so that a reader never sees half of it: write a sibling
    ``.partial`` file, then rename it over the target (creating the parent directory)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text)
    partial.replace(target)
    return target
