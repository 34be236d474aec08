"""What changes when a job runs on Databricks, as pure functions of the environment and the Spark
conf, so every rule is testable off the platform.

Only ``spark_conf_snapshot`` and ``publish_task_value`` touch a live cluster; everything else
takes plain mappings:

    env = os.environ; conf = spark_conf_snapshot(spark)
    if is_databricks(env):
        tracking = databricks_tracking(config.tracking, env, conf)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import unquote, urlparse

from nnfund_spark.config import TrackingConfig

log = logging.getLogger(__name__)


# Set by every Databricks Runtime (e.g. "14.3"); absent everywhere else.
RUNTIME_ENV = "DATABRICKS_RUNTIME_VERSION"
# Lets a user (or a test) name the workspace user when the cluster tags do not.
USER_ENV = "NNFUND_DATABRICKS_USER"
# JSON list of {"key", "value"} pairs; Databricks adds a "Creator" tag to every cluster.
ALL_TAGS_CONF = "spark.databricks.clusterUsageTags.clusterAllTags"
# The Spark conf keys the defaults read; spark_conf_snapshot collects exactly these.
CONF_KEYS = (ALL_TAGS_CONF, "spark.databricks.clusterUsageTags.clusterId",
             "spark.databricks.clusterUsageTags.sparkVersion")

# The FUSE mounts every node of a Databricks cluster sees alike. Any other plain path (the
# working directory, /tmp, /local_disk0) is each node's own disk.
SHARED_MOUNTS = ("/Volumes/", "/dbfs/")


@dataclass(frozen=True)
class DatabricksDefaults:
    runtime_version: str
    user: Optional[str]
    tracking_uri: str
    experiment: str


def runtime_version(env: Mapping[str, str]) -> Optional[str]:
    value = env.get(RUNTIME_ENV, "").strip()
    return value or None


def is_databricks(env: Mapping[str, str]) -> bool:
    return runtime_version(env) is not None


def cluster_tags(spark_conf: Mapping[str, str]) -> dict[str, str]:
    """The cluster's tags as a dict; a malformed value is an error, not an empty dict, because it
    would silently change where runs are logged."""
    raw = spark_conf.get(ALL_TAGS_CONF)
    if not raw:
        return {}
    try:
        pairs = json.loads(raw)
        return {str(p["key"]): str(p["value"]) for p in pairs}
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{ALL_TAGS_CONF} is not a JSON list of {{key, value}} objects: "
                         f"{raw[:200]!r}") from exc


def detect_user(env: Mapping[str, str], spark_conf: Mapping[str, str]) -> Optional[str]:
    """Workspace user: NNFUND_DATABRICKS_USER, else the cluster's Creator tag, else None."""
    explicit = env.get(USER_ENV, "").strip()
    if explicit:
        return explicit
    creator = cluster_tags(spark_conf).get("Creator", "").strip()
    return creator or None


def experiment_path(name: str, user: Optional[str]) -> str:
    """Workspace path for an MLflow experiment name.

    Databricks experiments are workspace objects and their parent folder must already exist, so a
    bare name goes straight into the user's home folder (/Users/<user>/<name>), or /Shared/<name>
    when the user is unknown. An absolute path is the user's explicit choice and is kept.
    """
    if not name or not name.strip():
        raise ValueError("experiment name is empty")
    if name.startswith("/"):
        return name
    if "/" in name:
        raise ValueError(f"experiment name '{name}' is neither a bare name nor an absolute "
                         f"workspace path (e.g. /Users/<user>/nnfund_spark/{name.split('/')[-1]})")
    return f"/Users/{user}/{name}" if user else f"/Shared/{name}"


def databricks_defaults(env: Mapping[str, str], spark_conf: Mapping[str, str],
                        experiment: str = "nnfund_spark") -> Optional[DatabricksDefaults]:
    """Defaults for a job on Databricks; None when env says this is not Databricks."""
    version = runtime_version(env)
    if version is None:
        return None
    user = detect_user(env, spark_conf)
    return DatabricksDefaults(
        runtime_version=version, user=user, tracking_uri="databricks",
        experiment=experiment_path(experiment, user))


def databricks_tracking(tracking: TrackingConfig, env: Mapping[str, str],
                        spark_conf: Mapping[str, str]) -> TrackingConfig:
    """The tracking config to use: unchanged off Databricks; on Databricks the workspace tracking
    server unless a URI was configured, and the experiment as a workspace path."""
    defaults = databricks_defaults(env, spark_conf, tracking.experiment)
    if defaults is None:
        return tracking
    # An explicit tracking_uri or MLFLOW_TRACKING_URI wins, as it does off Databricks.
    uri = tracking.tracking_uri or env.get("MLFLOW_TRACKING_URI") or defaults.tracking_uri
    return dataclasses.replace(tracking, tracking_uri=uri, experiment=defaults.experiment)


def _node_local_path(location: str) -> Optional[str]:
    """The filesystem path a location names when it is one (a plain path, file://, or an
    SQLite tracking URI), else None (dbfs:/, s3://, http://, databricks ...)."""
    if location.startswith("sqlite:///"):
        return location[len("sqlite:///"):]
    if location.startswith("file:"):
        return unquote(urlparse(location).path)
    return None if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", location) else location


def unshared_locations(paths: Mapping[str, Optional[str]], env: Mapping[str, str],
                       master: str, tracking_uris: Optional[Mapping[str, Optional[str]]] = None
                       ) -> list[str]:
    """``name=value`` for each location that the driver and the executors of this Databricks
    cluster would not share: a path off the shared mounts (SHARED_MOUNTS), and a tracking
    store in a file anywhere (SQLite needs the random writes and locks that the /dbfs and
    /Volumes mounts do not offer). Off Databricks, and on a single-node cluster (a local
    master), driver and executors share one disk and nothing is listed.

    The jobs read and write these from both sides: executors write a dataset the driver commits,
    rank 0 writes checkpoints and MLflow records from an executor that the driver reads."""
    if not is_databricks(env) or master.startswith("local"):
        return []
    found = []
    for name, value in paths.items():
        text = str(value).strip() if value else ""
        path = _node_local_path(text) if text else None
        if path is not None and not path.startswith(SHARED_MOUNTS):
            found.append(f"{name}={text}")
    for name, value in (tracking_uris or {}).items():
        text = str(value).strip() if value else ""
        workspace = text.split(":")[0] in ("databricks", "databricks-uc")  # not a path
        if text and not workspace and _node_local_path(text) is not None:
            found.append(f"{name}={text}")
    return found


def check_shared_locations(paths: Mapping[str, Optional[str]], env: Mapping[str, str],
                           master: str,
                           tracking_uris: Optional[Mapping[str, Optional[str]]] = None) -> None:
    """A ValueError naming every location of ``unshared_locations`` and what is accepted."""
    found = unshared_locations(paths, env, master, tracking_uris)
    if found:
        raise ValueError(
            f"on this Databricks cluster ({master}) the driver and the executors would not "
            f"share {', '.join(found)}. Datasets and predictions: a Unity Catalog volume "
            f"(/Volumes/<catalog>/<schema>/<volume>/...), /dbfs/... or a URI of shared storage "
            f"(dbfs:/, s3://, abfss://, gs://); checkpoints: /Volumes/... or /dbfs/...; MLflow "
            f"tracking: databricks or an http(s):// server, not a file. Any path works on a "
            f"single-node cluster.")


def spark_uri(path: str, env: Mapping[str, str]) -> str:
    """A URI Spark can read and write for a path given on the command line.

    URIs (scheme://..., dbfs:/...) pass through. On Databricks, FUSE paths map to their DBFS
    form (/Volumes/... -> dbfs:/Volumes/..., /dbfs/x -> dbfs:/x) so executors use the storage
    layer, not each node's FUSE mount. Elsewhere a plain path must be on a filesystem every
    executor shares (local mode, NFS); it becomes an absolute file:// URI, not percent-encoded:
    Hadoop's Path quotes the characters a URI needs quoted itself and would read an encoded
    "%20" literally.
    """
    if "://" in path or path.startswith(("dbfs:", "file:")):
        return path
    if is_databricks(env):
        if path.startswith("/Volumes/"):
            return "dbfs:" + path
        if path.startswith("/dbfs/"):
            return "dbfs:" + path[len("/dbfs"):]
    return "file://" + str(Path(path).expanduser().resolve())


# ---- helpers that touch a live session / workspace (not unit-tested off Databricks) ----------

def spark_conf_snapshot(spark) -> dict[str, str]:
    """The CONF_KEYS that are set on this session, as a plain dict for the pure functions."""
    # The runtime conf, not SparkConf: Databricks sets the clusterUsageTags there.
    values = {key: spark.conf.get(key, None) for key in CONF_KEYS}
    return {key: value for key, value in values.items() if value is not None}


def publish_task_value(key: str, value: str) -> bool:
    """Make `value` available to later tasks of a Databricks job as
    {{tasks.<this task>.values.<key>}}; returns False (and does nothing) off Databricks."""
    if not is_databricks(os.environ):
        return False
    try:
        from databricks.sdk.runtime import dbutils  # present on Databricks Runtime 13+

        dbutils.jobs.taskValues.set(key=key, value=value)
    except Exception as exc:  # noqa: BLE001 - Databricks documents set() for notebooks only
        # Best effort: a finished job must not fail here. The bundle hands the model over
        # through `train --summary-json` / `predict --model-from-summary` instead.
        log.warning("could not publish task value %s (%s: %s); later tasks can read the "
                    "train --summary-json file instead", key, type(exc).__name__, exc)
        return False
    return True
