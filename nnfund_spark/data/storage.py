"""Where prepared datasets live: a local path, a file:// URI, or any filesystem URI that fsspec
knows (s3://, s3a://, gs://, abfss://, hdfs://, ...), passed through to Spark and Petastorm.

Our own file operations (manifest, Petastorm metadata, the Parquet files executors write, the
commit of a finished dataset) go through fsspec, the library Petastorm itself uses for remote
URIs; Spark reads and writes the same URIs through Hadoop's FileSystem. So a remote location
needs two things on the cluster: the fsspec package for its scheme (s3fs for s3/s3a, gcsfs for
gs, adlfs for abfs(s); pyarrow's libhdfs for hdfs) and the Hadoop connector Spark uses for it
(hadoop-aws for s3a, ...). Credentials come from the environment (instance roles, AWS_* variables,
~/.aws), never from our config, so they cannot leak into logs or MLflow params.

Committing a dataset: a local directory is renamed into place (atomic). Object stores have no
directory rename, so there the staged files are copied into place with manifest.json LAST and
the staging prefix deleted after; every reader requires the manifest, so a commit interrupted
half-way leaves a prefix that train/predict refuse, never a dataset that looks complete.
"""
from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

ACCEPTED = ("a local path", "a file:// URI", "a shared mount such as /dbfs/... or NFS",
            "an fsspec URI such as s3a://bucket/prefix, gs://..., hdfs://namenode/path")
# fsspec package that provides each common scheme, for the error when it is missing.
PACKAGE_FOR = {"s3": "s3fs", "s3a": "s3fs", "s3n": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
               "abfs": "adlfs", "abfss": "adlfs", "az": "adlfs", "hdfs": "pyarrow (libhdfs)"}


class StorageError(ValueError):
    """A dataset location that cannot be used; the message names it and what is accepted."""


@dataclass(frozen=True)
class Location:
    """A directory or file on some filesystem: `uri` for Spark and Petastorm, `fs` + `path`
    (fsspec) for our own reads and writes."""
    fs: object
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return urlparse(self.uri).scheme == "file"

    @property
    def display(self) -> str:
        """What messages show: the plain path when local, else the URI."""
        return self.path if self.is_local else self.uri

    @property
    def spark_uri(self) -> str:
        """The form to hand Spark (Hadoop's Path): a local path as an unencoded file:// URI,
        since Hadoop quotes what a URI needs quoted itself and would read the "%20" of `uri`
        as a literal directory name; any other URI as it is."""
        return "file://" + self.path if self.is_local else self.uri

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def child(self, *names: str) -> "Location":
        path = posixpath.join(self.path, *names)
        if self.is_local:  # a percent-encoded file:// URI, as Spark and resolve() expect
            return Location(self.fs, path, Path(path).as_uri())
        return Location(self.fs, path, "/".join([self.uri.rstrip("/"), *names]))

    @property
    def parent(self) -> "Location":
        path = posixpath.dirname(self.path.rstrip("/"))
        if self.is_local:
            return Location(self.fs, path, Path(path).as_uri())
        return Location(self.fs, path, self.uri.rstrip("/").rsplit("/", 1)[0])

    def sibling(self, name: str) -> "Location":
        return self.parent.child(name)

    def overlaps(self, other: "Location") -> bool:
        """True when one of the two is, contains or lies inside the other."""
        a, b = self.uri.rstrip("/") + "/", other.uri.rstrip("/") + "/"
        return a.startswith(b) or b.startswith(a)

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def read_text(self) -> str:
        with self.fs.open(self.path, "rb") as handle:
            return handle.read().decode()

    def write_text(self, text: str) -> None:
        """Write a small text file that no reader sees half of: locally a ``.partial`` sibling
        renamed over the target; on an object store a single PUT, which is all-or-nothing."""
        if self.is_local:
            write_text_atomic(self.path, text)
            return
        with self.fs.open(self.path, "wb") as handle:
            handle.write(text.encode())

    def makedirs(self) -> None:
        self.fs.makedirs(self.path, exist_ok=True)

    def remove_tree(self) -> None:
        if self.is_local:
            shutil.rmtree(self.path, ignore_errors=False)
        elif self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)

    def files(self, suffix: str = "") -> list["Location"]:
        """Files directly inside this directory whose names end with `suffix`, sorted."""
        if not self.fs.exists(self.path):
            return []
        names = sorted(posixpath.basename(entry["name"].rstrip("/"))
                       for entry in self.fs.ls(self.path, detail=True)
                       if entry["type"] == "file")
        return [self.child(n) for n in names if n.endswith(suffix)]

    def size(self) -> int:
        return int(self.fs.size(self.path))

    def open(self, mode: str = "rb"):
        return self.fs.open(self.path, mode)


def resolve(location: "str | Path | Location") -> Location:
    """The Location for a dataset path or URI (see the module docstring for what is accepted);
    a Location is returned as it is.

    Local paths resolve to absolute ones (file:// URIs for Spark); dbfs:/x maps to the /dbfs/x
    FUSE mount every Databricks node has; any other scheme goes to fsspec.
    """
    if isinstance(location, Location):
        return location
    text = str(location).strip()
    if not text:
        raise StorageError(f"empty dataset location; use {', '.join(ACCEPTED)}")
    scheme = urlparse(text).scheme
    if scheme == "file":
        text = unquote(urlparse(text).path)
    elif scheme == "dbfs":
        # Databricks mounts DBFS at /dbfs on every node, and Unity Catalog volumes at /Volumes
        # (dbfs:/Volumes/... is the same volume as /Volumes/..., not /dbfs/Volumes/...).
        rest = "/" + text.split(":", 1)[1].lstrip("/")
        text = rest if rest.startswith("/Volumes/") else "/dbfs" + rest
    elif scheme and len(scheme) > 1:  # (one letter is a Windows drive, not a scheme)
        return _remote(text, scheme)
    from fsspec.implementations.local import LocalFileSystem
    path = Path(text).expanduser().resolve()
    return Location(LocalFileSystem(), str(path), path.as_uri())


def _remote(text: str, scheme: str) -> Location:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(text)
    except ImportError as exc:
        package = PACKAGE_FOR.get(scheme, f"the fsspec implementation of {scheme}://")
        raise StorageError(f"dataset location '{text}': {scheme}:// needs {package} installed on "
                           f"the driver and every executor ({exc})") from exc
    except ValueError as exc:
        raise StorageError(f"dataset location '{text}': unknown scheme {scheme}://; use "
                           f"{', '.join(ACCEPTED)}") from exc
    except OSError as exc:  # pyarrow's HDFS client: no JVM or no libhdfs on this node
        if scheme not in ("hdfs", "viewfs"):
            raise
        raise StorageError(f"dataset location '{text}': {scheme}:// goes through pyarrow's "
                           f"libhdfs, which needs a JVM and Hadoop on every node: set "
                           f"JAVA_HOME, HADOOP_HOME and CLASSPATH=$(hadoop classpath --glob) "
                           f"({exc})") from exc
    path = path.rstrip("/")
    if "/" not in path.strip("/") and scheme not in ("hdfs", "viewfs", "memory"):
        raise StorageError(f"dataset location '{text}' is a bucket root; give a prefix inside "
                           f"the bucket (e.g. {scheme}://bucket/datasets/mnist)")
    return Location(fs, path, text.rstrip("/"))


def overlapping(location: str, other: Location) -> "Location | None":
    """`location` resolved when it is, contains or lies inside `other`; else None. A location
    on another filesystem than `other` cannot overlap it and is not resolved (this node may not
    even know its scheme: Spark alone reads or writes such a location)."""
    scheme = urlparse(location).scheme
    if scheme not in ("", "file", "dbfs") and scheme != urlparse(other.uri).scheme:
        return None
    resolved = resolve(location)
    return resolved if resolved.overlaps(other) else None


def local_path(location: str | Path) -> Path:
    """A local path or file:// URI as an absolute Path; a remote URI is a StorageError (for
    the few things that must be local, e.g. checkpoints written with Keras)."""
    resolved = resolve(location)
    if not resolved.is_local:
        raise StorageError(f"'{location}' must be a local path, a file:// URI or a shared "
                           f"mount (/dbfs/..., NFS); {urlparse(resolved.uri).scheme}:// is "
                           f"not supported here")
    return Path(resolved.path)


def spark_filesystem(spark, uri: str):
    """(Hadoop FileSystem, Path) through which Spark reads and writes `uri`. A scheme Spark's
    Hadoop has no connector for is a StorageError that says which one to add, instead of a Java
    stack trace from deep inside a read or write."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    try:
        return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path
    except Exception as exc:  # py4j.protocol.Py4JJavaError; its text holds the Java cause
        text = str(exc)
        if "No FileSystem for scheme" not in text and "ClassNotFoundException" not in text:
            raise
        scheme = urlparse(uri).scheme
        hadoop = jvm.org.apache.hadoop.util.VersionInfo.getVersion()
        hint = (f"add --packages org.apache.hadoop:hadoop-aws:{hadoop} to spark-submit"
                if scheme in ("s3a", "s3", "s3n") else
                f"put the Hadoop connector for {scheme}:// (built for Hadoop {hadoop}) on "
                f"Spark's classpath")
        raise StorageError(f"Spark cannot open '{uri}': its Hadoop {hadoop} has no FileSystem "
                           f"for {scheme}:// here; {hint}, or use a path every node mounts "
                           f"(local mode, NFS, /dbfs)") from exc


def staging_for(final: Location) -> Location:
    """A fresh hidden sibling of `final` to write into before committing."""
    return final.sibling(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")


def commit(staging: Location, final: Location, last: str | None = None) -> None:
    """Put the finished `staging` directory at `final`, replacing what is there.

    Local: rename (atomic); an existing `final` is first renamed aside, then deleted. If
    putting `staging` in place fails, the old dataset is renamed back before the error is
    raised, so a failed --overwrite never loses it.
    Remote: `final`'s `last` file (the manifest) is deleted first, so the old dataset stops
    being valid before any of its files change; then the old files are deleted, the staged
    files copied with `last` copied at the very end, and the staging prefix removed.
    """
    if final.is_local:
        target = Path(final.path)
        if target.exists():
            trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, trash)
            try:
                os.rename(staging.path, target)
            except BaseException as exc:
                try:
                    os.rename(trash, target)  # put the old dataset back, then report the failure
                except OSError as restore:
                    raise OSError(f"replacing {target} failed ({exc}) and the old dataset could "
                                  f"not be put back ({restore}); it is kept at {trash}") from exc
                raise
            shutil.rmtree(trash)
        else:
            os.rename(staging.path, target)
        return
    fs = final.fs
    if last and fs.exists(final.child(last).path):
        fs.rm(final.child(last).path)
    final.remove_tree()
    sources = sorted(fs.find(staging.path))
    marker = staging.child(last).path if last else None
    for source in sorted(sources, key=lambda s: s == marker):  # the marker last
        relative = posixpath.relpath(source, staging.path)
        fs.copy(source, posixpath.join(final.path, relative))
    staging.remove_tree()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a small text file so that a reader never sees half of it: write a sibling
    ``.partial`` file, then rename it over the target (creating the parent directory)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text)
    partial.replace(target)
    return target
