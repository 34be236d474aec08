"""Building the SparkSession for the command-line entry points (library code never does)."""
from __future__ import annotations

import os
import sys

from nnfund_spark.config import SparkConfig

# When nothing else chooses a master (plain `python jobs/train.py` or `nnfund-spark`), run
# locally on every core; spark-submit and Databricks set spark.master themselves.
DEFAULT_LOCAL_MASTER = "local[*]"


def build_session(config: SparkConfig, master: str | None = None):
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    master = master or config.master
    # Python workers must run the interpreter that has TensorFlow/Horovod (a venv's python,
    # not whatever `python3` is first on PATH). spark-submit users set PYSPARK_PYTHON.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(config.app_name)
    if master:
        builder = builder.master(master)
    elif not SparkConf().contains("spark.master"):
        builder = builder.master(DEFAULT_LOCAL_MASTER)
    # Horovod ranks print their own per-epoch lines; Spark's progress bar would interleave.
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    for key, value in config.conf.items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()
