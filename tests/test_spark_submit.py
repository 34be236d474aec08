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
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(REPO)], check=True, capture_output=True)
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
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["splits"]["test"]["count"] == 1500

    proc = spark_submit(tmp_path, wheel, "train.py", "-c", "mnist",
                        "--set", f"data.output_dir={dataset}", "--set", "train.epochs=1",
                        "--set", "train.batch_size=32", "--set", "tracking.log_artifacts=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy:" in proc.stdout
    # the default tracking store is created in the working directory
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist_cnn").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"

    # Batch inference with the logged model reproduces training's test accuracy exactly.
    predictions = tmp_path / "predictions"
    proc = spark_submit(tmp_path, wheel, "predict.py", "-c", "mnist",
                        "--set", f"data.output_dir={dataset}", "--model-uri", run.info.run_id,
                        "--output-dir", str(predictions))
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pyarrow.parquet as pq
    table = pq.read_table(predictions)
    assert table.num_rows == 1500
    correct = sum(p == l for p, l in zip(table.column("prediction").to_pylist(),
                                           table.column("label").to_pylist()))
    assert correct / 1500 == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-12)

    proc = spark_submit(tmp_path, wheel, "train.py", "-c", "mnist", "--set", "train.epohcs=1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "unknown config key 'train.epohcs'" in proc.stderr + proc.stdout, proc.stderr[-3000:]
