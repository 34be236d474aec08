"""The jobs as users submit them: the real spark-submit, from a scratch working directory,
with the built wheel; and the wheel alone carries everything a job needs."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from a copy of the source (pip builds in the tree it is given: in the
    checkout it would leave a build/ directory whose stale files a later wheel could pick up)."""
    import shutil

    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source") / "nnfund_spark"
    skipped_at_root = {".git", ".venv", "data", "build", "mlruns", "mlartifacts", "mlflow.db",
                       "spark-warehouse"}

    def skipped(directory, names):  # checkout leftovers at the root only (nnfund_spark/data stays)
        at_root = Path(directory) == REPO
        return {name for name in names if name == "__pycache__" or name.endswith(".egg-info")
                or (at_root and (name in skipped_at_root or name.startswith("benchmark-results")))}

    shutil.copytree(REPO, source, ignore=skipped)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(source)], check=True, capture_output=True)
    (built,) = out.glob("nnfund_spark-*.whl")
    return built


def test_wheel_alone_has_code_conf_and_entry_point(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    # -S: no site processing, so the development (editable) install is invisible; only the
    # wheel's files and the third-party packages are importable.
    env = dict(os.environ, PYTHONPATH=f"{target}:{sysconfig.get_paths()['purelib']}")
    code = ("import nnfund_spark, json; from nnfund_spark.config import load_config;"
            "from nnfund_spark.experiments.sweep import load_sweep;"
            "print(json.dumps([nnfund_spark.__file__, load_config('mnist').train.model,"
            " len(load_sweep('experiments/optimizers').trials)]))")
    proc = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    location, model, trials = json.loads(proc.stdout)
    assert location.startswith(str(target))
    assert model == "mnist_cnn" and trials == 7
    entry_points = next(target.glob("nnfund_spark-*.dist-info")) / "entry_points.txt"
    assert "nnfund-spark = nnfund_spark.cli:run" in entry_points.read_text()
    # Every module of the package is in the wheel (nnfund_spark/data included).
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "nnfund_spark").rglob("*.py")}
    assert {p.relative_to(target).as_posix()
            for p in (target / "nnfund_spark").rglob("*.py")} == modules


def spark_submit(workdir, wheel, job, *args, timeout=600):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    # a fresh user shell: no tracking URI left in the environment by in-process MLflow calls
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [str(BIN / "spark-submit"), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
         "--py-files", str(wheel), str(REPO / "jobs" / job), *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def test_prepare_train_with_spark_submit_from_a_scratch_directory(wheel, tmp_path,
                                                                  mnist_raw_dir):
    from mlflow.tracking import MlflowClient

    dataset = tmp_path / "ds"
    proc = spark_submit(tmp_path, wheel, "prepare_dataset.py", "-c", "mnist",
                        "--set", f"data.raw_dir={mnist_raw_dir}",
                        "--set", f"data.output_dir=file://{dataset}", "--set", "data.limit=1500")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[:3000]
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["splits"]["test"]["count"] == 1500

    proc = spark_submit(tmp_path, wheel, "train.py", "-c", "mnist",
                        "--set", f"data.output_dir={dataset}", "--set", "train.epochs=1",
                        "--set", "train.batch_size=32", "--set", "tracking.log_artifacts=false",
                        "--summary-json", "summary.json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[:3000]
    assert "test accuracy:" in proc.stdout
    # the default tracking store is created in the working directory
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist_cnn").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    # the job ran on spark-submit's master, not one of its own
    assert run.data.tags["spark.master"] == "local[2]"

    # Batch inference with the logged model reproduces training's test accuracy exactly. The
    # model is found through the training summary (how the Databricks bundle's predict task
    # finds it), and the output directory's name has a space (Spark gets it unencoded).
    assert json.loads((tmp_path / "summary.json").read_text())["run_id"] == run.info.run_id
    predictions = tmp_path / "my predictions"
    proc = spark_submit(tmp_path, wheel, "predict.py", "-c", "mnist",
                        "--set", f"data.output_dir={dataset}",
                        "--model-from-summary", "summary.json", "--output-dir", str(predictions))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[:3000]
    import pyarrow.parquet as pq
    table = pq.read_table(predictions)
    assert table.num_rows == 1500
    correct = sum(p == l for p, l in zip(table.column("prediction").to_pylist(),
                                           table.column("label").to_pylist()))
    assert correct / 1500 == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-12)

    proc = spark_submit(tmp_path, wheel, "train.py", "-c", "mnist", "--set", "train.epohcs=1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "unknown config key 'train.epohcs'" in proc.stderr + proc.stdout, proc.stderr[-3000:]


_HANDED_OUT: set = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers the tests start), never
    one this test session handed out before (the kernel may offer a just-closed port again)."""
    import socket

    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@pytest.fixture
def standalone_cluster(tmp_path):
    """A one-node Spark standalone cluster (a master and a 2-core worker, separate JVMs from
    the installed PySpark), as `spark-class ... Master/Worker` start it on real machines."""
    import time
    import urllib.request

    port, ui = free_port(), free_port()
    env = dict(os.environ, SPARK_LOG_DIR=str(tmp_path), SPARK_LOCAL_IP="127.0.0.1")
    logs = tmp_path / "cluster-logs"
    logs.mkdir()
    processes, log_files = [], []

    def start(name, *args):
        log_files.append(open(logs / f"{name}.log", "w"))
        processes.append(subprocess.Popen([str(BIN / "spark-class"), *args], env=env,
                                          stdout=log_files[-1], stderr=subprocess.STDOUT))

    master = f"spark://127.0.0.1:{port}"
    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
              "--port", str(port), "--webui-port", str(ui))
        start("worker", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
              "--cores", "2", "--memory", "4g", "--webui-port", str(free_port()),
              "--work-dir", str(tmp_path / "worker"), master)
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=5) as reply:
                    if json.load(reply).get("aliveworkers", 0) >= 1:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise AssertionError("the standalone worker did not register within 120 s:\n"
                                     + "\n".join(p.read_text()[-2000:] for p in logs.iterdir()))
            time.sleep(1)
        yield master, tmp_path / "worker"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in log_files:
            log.close()


def test_train_on_a_standalone_cluster_in_client_mode(standalone_cluster, wheel, small_mnist,
                                                      tmp_path):
    """The driver in spark-submit (client deploy mode, the only one Spark offers Python
    applications on standalone clusters), the ranks in an executor JVM the worker launched in
    its own work directory, the package shipped as the wheel on --py-files."""
    from mlflow.tracking import MlflowClient

    master, worker_dir = standalone_cluster
    dataset, _ = small_mnist
    scratch = tmp_path / "driver"
    scratch.mkdir()
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [str(BIN / "spark-submit"), "--master", master, "--deploy-mode", "client",
         "--total-executor-cores", "2", "--executor-cores", "2", "--executor-memory", "3g",
         "--conf", "spark.ui.enabled=false", "--py-files", str(wheel),
         str(REPO / "jobs" / "train.py"), "-c", "mnist",
         "--set", f"data.output_dir={dataset}", "--set", "train.num_proc=2",
         "--set", "train.epochs=1", "--set", "train.batch_size=32",
         "--set", "tracking.log_artifacts=false"],
        cwd=scratch, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[:3000]
    client = MlflowClient(f"sqlite:///{scratch}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist_cnn").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    assert run.data.tags["spark.master"] == master
    assert run.data.tags["weights_identical_across_ranks"] == "True"
    assert run.data.metrics["test_accuracy"] > 0.7
    # The ranks ran in the worker's executor, not in the driver's process or directory.
    (app,) = [p for p in worker_dir.iterdir() if p.name.startswith("app-")]
    assert any(app.rglob("stderr"))
