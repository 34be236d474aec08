"""Shared fixtures: one local Spark session for the whole run, real MNIST from data/raw."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_RAW = REPO / "data" / "raw" / "mnist"


@pytest.fixture(scope="session")
def mnist_raw_dir() -> Path:
    if not (MNIST_RAW / "t10k-labels-idx1-ubyte").exists() and \
            not (MNIST_RAW / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.fail(f"real MNIST is missing from {MNIST_RAW}: run `make data` "
                    f"(or `bash scripts/get_data.sh mnist`) first")
    return MNIST_RAW


@pytest.fixture(autouse=True)
def _no_mlflow_state_leaks_between_tests():
    """The jobs set MLflow's process-wide tracking URI (as a job should); between tests it is
    reset, and a run a failing test left active is ended, so no test sees another's store."""
    yield
    if "mlflow" in sys.modules:
        import mlflow
        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    scratch = tmp_path_factory.mktemp("spark")
    session = (SparkSession.builder.master("local[2]").appName("nnfund_spark-tests")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.local.dir", str(scratch / "local"))
               .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
               .config("spark.driver.memory", "2g")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def small_mnist(spark, mnist_raw_dir, tmp_path_factory):
    """A prepared Petastorm dataset of the first 2,000 train / 2,000 test real MNIST images."""
    from nnfund_spark.config import DataConfig
    from nnfund_spark.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("datasets") / "mnist_small"
    config = DataConfig(raw_dir=str(mnist_raw_dir), output_dir=str(out), limit=2000)
    manifest = prepare_dataset(spark, config)
    return out, manifest


def stack_controller() -> str:
    """The controller train.controller=auto must pick on our stack: `make setup` installs
    Open MPI and builds Horovod with MPI unless NNFUND_MPI=0 asked for Gloo only."""
    return "gloo" if os.environ.get("NNFUND_MPI") == "0" else "mpi"
