"""Building the SparkSession for the command-line entry points (library code never does)."""
from __future__ import annotations

import os
import sys

from nnfund_spark.config import SparkConfig

# When nothing chooses a master, Spark's own launcher defaults to local[*] (plain
# `python jobs/train.py` or `nnfund-spark`). spark-submit and Databricks set spark.master in the
# driver JVM, which Python cannot see before the session exists: setting a master here would
# override theirs, so only an explicit --master or spark.master in the config is applied.


def build_session(config: SparkConfig, master: str | None = None):
    from pyspark.sql import SparkSession

    master = master or config.master
    # Python workers must run the interpreter that has TensorFlow/Horovod (a venv's python,
    # not whatever `python3` is first on PATH). spark-submit users set PYSPARK_PYTHON.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(config.app_name)
    if master:
        builder = builder.master(master)
    # Horovod ranks print their own per-epoch lines; Spark's progress bar would interleave.
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    for key, value in config.conf.items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()
