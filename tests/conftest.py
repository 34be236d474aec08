"""Shared fixtures: one local Spark session for the whole run, real MNIST from data/raw."""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
import warnings
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


# What a training job starts outside the Spark JVM: mpirun, Open MPI's daemon, and Horovod's
# rank launchers (under MPI and Gloo). None may outlive the test whose job started it.
JOB_PROCESS_MARKERS = ("mpirun", "orted", "horovod.spark.task.", "horovod.spark.driver.")


def job_processes() -> list:
    """This test run's descendant processes that belong to a training job: (process, command)."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            command = " ".join(proc.cmdline())
        except psutil.Error:  # ended while we looked: nothing left to clean up
            continue
        if any(marker in command for marker in JOB_PROCESS_MARKERS):
            found.append((proc, command))
    return found


def describe_processes(found: list) -> str:
    import psutil

    lines = []
    for proc, command in found:
        try:
            state = proc.status()
        except psutil.Error:
            state = "gone"
        lines.append(f"  pid {proc.pid} ({state}): {command[:300]}")
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test():
    """After each test: a job's processes that are still running 20 s after it (a test that
    timed out, or a launcher that left one behind) are listed in a warning and killed, and
    Spark jobs still running are cancelled, so one stuck test cannot take the next ones'
    executor slots or cores."""
    yield
    deadline = time.time() + 20
    leftovers = job_processes()
    while leftovers and time.time() < deadline:
        time.sleep(0.5)
        leftovers = job_processes()
    if leftovers:
        import psutil

        warnings.warn("killed training-job processes left running after the test:\n"
                      + describe_processes(leftovers))
        for proc, _ in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    if "pyspark" in sys.modules:
        from pyspark import SparkContext

        context = SparkContext._active_spark_context
        if context is not None and context.statusTracker().getActiveJobsIds():
            time.sleep(5)  # a job that was ending as the test did
            active = context.statusTracker().getActiveJobsIds()
            if active:
                warnings.warn(f"cancelled Spark jobs left running after the test: {active}")
                context.cancelAllJobs()


# The CI run's limit is 90 minutes, set-up included. pytest.ini gives each test 15 minutes
# (pytest-timeout); this is the backstop should a timed-out test's clean-up hang too: past
# NNFUND_TEST_SESSION_LIMIT seconds (default 75 min) the run prints every thread's stack and
# the job processes still running, then exits with status 3.
SESSION_LIMIT = float(os.environ.get("NNFUND_TEST_SESSION_LIMIT", 75 * 60))


def _end_a_stuck_session():
    sys.stderr.write(f"\n\ntest run still going after {SESSION_LIMIT:.0f} s "
                     f"(NNFUND_TEST_SESSION_LIMIT): every thread's stack, then exit 3\n")
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    try:
        sys.stderr.write("job processes still running:\n"
                         + describe_processes(job_processes()) + "\n")
    finally:
        sys.stderr.flush()
        os._exit(3)


@pytest.fixture(scope="session", autouse=True)
def _session_backstop():
    timer = threading.Timer(SESSION_LIMIT, _end_a_stuck_session)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


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
