"""The command line rejects bad input with a message and a non-zero exit, before touching Spark."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "nnfund_spark.cli", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_unknown_key_exits_2_and_names_it():
    proc = run("train", "--set", "train.epohcs=3")
    assert proc.returncode == 2
    assert "unknown config key 'train.epohcs'" in proc.stderr
    # ... and says what is accepted there
    assert "valid keys here:" in proc.stderr and "epochs" in proc.stderr.split("valid keys here:")[1]


def test_print_config_shows_resolved_values():
    proc = run("train", "-c", "conf/mnist.yaml", "--set", "train.epochs=3", "--print-config")
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)
    assert resolved["train"]["epochs"] == 3
    assert resolved["tracking"]["experiment"] == "mnist_cnn"


def test_missing_raw_data_fails_cleanly(tmp_path):
    out = tmp_path / "out"
    proc = run("prepare", "--master", "local[1]", "--set", f"data.raw_dir={tmp_path / 'nothing'}",
               "--set", f"data.output_dir={out}")
    assert proc.returncode == 1
    assert "raw data directory not found" in proc.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind


def test_train_on_a_directory_that_is_not_a_dataset_exits_1_naming_it(tmp_path):
    (tmp_path / "not_a_dataset").mkdir()
    proc = run("train", "--master", "local[1]",
               "--set", f"data.output_dir={tmp_path / 'not_a_dataset'}",
               "--set", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (f"no manifest.json in {tmp_path / 'not_a_dataset'}: is it a dataset written by "
            f"'nnfund-spark prepare'") in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before any MLflow run


def test_a_bad_sweep_file_exits_2_naming_it(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("axes: {train.optimizer: [adam, adamm]}\n")
    proc = run("sweep", "-c", str(sweep))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "train.optimizer: 'adamm' is not one of" in proc.stderr and "adam" in proc.stderr


class _FakeSpark:
    """Stands in for the session on a pretend Databricks cluster (no JVM needed)."""

    class conf:  # noqa: N801 - mirrors spark.conf
        @staticmethod
        def get(key, default=None):
            return {"spark.databricks.clusterUsageTags.clusterOwnerUserName":
                    "ada@example.com"}.get(key, default)

    class sparkContext:  # noqa: N801 - mirrors spark.sparkContext
        master = "spark://10.0.0.1:7077"  # a cluster with executors on other nodes

    def stop(self):
        raise AssertionError("a Databricks session is never stopped by the job")


def test_databricks_tracking_reaches_predict_and_bad_experiments_exit_2(monkeypatch, capsys):
    """On Databricks: predict uses the workspace tracking server like train does, each sweep
    trial keeps its own tracking settings, and an experiment name the workspace cannot place is
    a config error (exit 2), not a traceback."""
    import nnfund_spark.inference as inference
    import nnfund_spark.spark as spark_module
    from nnfund_spark import cli

    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "14.3")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(spark_module, "build_session", lambda conf, master: _FakeSpark())
    seen = {}
    monkeypatch.setattr(inference, "run_predict",
                        lambda spark, config: seen.setdefault("config", config) and {})
    monkeypatch.setattr(inference, "format_summary", lambda summary: "scored")
    model = "runs:/" + "a" * 32 + "/model"
    assert cli.main(["predict", "--model-uri", model, "--dataset-dir", "/dbfs/ds",
                     "--output-dir", "/dbfs/preds"]) == 0
    assert seen["config"].tracking_uri == "databricks"

    assert cli.main(["train", "--set", "tracking.experiment=team/mnist"]) == 2
    assert "config error: tracking.experiment: experiment name 'team/mnist'" in \
        capsys.readouterr().err


def test_databricks_refuses_node_local_paths_before_any_work(monkeypatch, capsys):
    """On a Databricks cluster with executors, a path off /Volumes and /dbfs is each node's own
    disk: every job names each such location and exits 2 before it starts anything."""
    import nnfund_spark.inference as inference
    import nnfund_spark.spark as spark_module
    from nnfund_spark import cli
    from nnfund_spark.training import launcher

    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "14.3")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(spark_module, "build_session", lambda conf, master: _FakeSpark())

    def started(*args):
        raise AssertionError("the job started")

    monkeypatch.setattr(launcher, "run_training", started)
    monkeypatch.setattr(inference, "run_predict", started)
    volume = "/Volumes/main/ml/vol"
    assert cli.main(["train", "--set", "data.output_dir=data/petastorm/mnist",
                     "--set", f"train.checkpoint_dir={volume}/ckpt"]) == 2
    err = capsys.readouterr().err
    assert "would not share data.output_dir=data/petastorm/mnist. Datasets" in err
    assert "checkpoint_dir=" not in err and "tracking_uri=" not in err  # volume, workspace
    assert cli.main(["train", "--set", f"data.output_dir={volume}/ds", "--set",
                     "train.checkpoint_dir=/local_disk0/ckpt", "--set",
                     "tracking.tracking_uri=sqlite:///mlflow.db"]) == 2
    err = capsys.readouterr().err
    assert "train.checkpoint_dir=/local_disk0/ckpt, tracking.tracking_uri=sqlite:///mlflow.db" \
        in err and "data.output_dir=" not in err
    assert cli.main(["predict", "--model-uri", "models:/m/1", "--dataset-dir", "dbfs:/ds",
                     "--output-dir", "preds"]) == 2
    err = capsys.readouterr().err
    assert "share --output-dir=preds. " in err and "--dataset-dir=" not in err
    # the dataset named by the config, not by a flag the user did not give
    assert cli.main(["predict", "--model-uri", "models:/m/1", "--set", "data.output_dir=ds",
                     "--output-dir", f"{volume}/preds"]) == 2
    assert "share data.output_dir=ds. " in capsys.readouterr().err
    assert cli.main(["prepare", "--set", "data.output_dir=/tmp/ds"]) == 2
    assert "share data.output_dir=/tmp/ds. " in capsys.readouterr().err
    # a sweep names each trial's location (and starts none of them)
    import nnfund_spark.experiments.runner as runner
    monkeypatch.setattr(runner, "run_sweep", started)
    assert cli.main(["sweep", "-c", "experiments/optimizers", "--set",
                     "data.output_dir=/tmp/ds"]) == 2
    err = capsys.readouterr().err
    assert "sgd: data.output_dir=/tmp/ds" in err and "adam: data.output_dir=/tmp/ds" in err
    # a single-node cluster: driver and executors are one machine
    monkeypatch.setattr(_FakeSpark.sparkContext, "master", "local[*, 4]")
    monkeypatch.setattr(launcher, "run_training", lambda spark, config: (_ for _ in ()).throw(
        RuntimeError("reached training")))
    assert cli.main(["train", "--set", "data.output_dir=data/petastorm/mnist"]) == 1
    assert "reached training" in capsys.readouterr().err


def test_model_from_summary_reads_the_training_summary(tmp_path):
    from nnfund_spark.config import ConfigError, load_config
    from nnfund_spark.inference.cli_args import model_uri_from_summary, predict_config_from_args
    from nnfund_spark.cli import _parser

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"model_uri": "runs:/" + "b" * 32 + "/model", "run_id": "x"}))
    args = _parser().parse_args(["predict", "--model-from-summary", str(summary),
                                 "--output-dir", str(tmp_path / "out")])
    config = predict_config_from_args(args, load_config(None, []))
    assert config.model_uri == "runs:/" + "b" * 32 + "/model"
    summary.write_text(json.dumps({"model_uri": None}))
    with pytest.raises(ConfigError, match="logged no model .*tracking.log_model=false"):
        model_uri_from_summary(str(summary))
    summary.write_text("{not json")
    with pytest.raises(ConfigError, match="summary.json: cannot read a training summary"):
        model_uri_from_summary(str(summary))
    with pytest.raises(ConfigError, match="nope.json: cannot read"):
        model_uri_from_summary(str(tmp_path / "nope.json"))
    # exactly one of the two ways to name the model
    with pytest.raises(SystemExit):
        _parser().parse_args(["predict", "--model-uri", "m", "--model-from-summary", "s",
                              "--output-dir", "o"])


def test_publishing_a_task_value_is_best_effort(monkeypatch, caplog):
    """Databricks documents task values for notebooks only: a wheel task that cannot set one
    warns and goes on (the model reaches predict through the summary file)."""
    import sys
    import types

    from nnfund_spark import databricks

    class Refusing:
        class jobs:  # noqa: N801 - mirrors dbutils.jobs
            class taskValues:  # noqa: N801
                @staticmethod
                def set(key, value):
                    raise RuntimeError("only in notebooks")

    module = types.ModuleType("databricks.sdk.runtime")
    module.dbutils = Refusing
    monkeypatch.setitem(sys.modules, "databricks.sdk.runtime", module)
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "14.3")
    assert databricks.publish_task_value("model_uri", "runs:/x/model") is False
    assert "could not publish task value model_uri (RuntimeError: only in notebooks)" in caplog.text
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION")
    assert databricks.publish_task_value("model_uri", "runs:/x/model") is False


def test_the_ui_hint_names_a_command_that_runs_and_no_credentials(tmp_path, monkeypatch):
    """The printed `mlflow ui` command is the one beside this Python (a virtualenv's bin is on
    no PATH unless activated), plain `mlflow` when there is none; servers and Databricks get
    their own UI, without passwords."""
    import sys

    from nnfund_spark.cli import _ui_hint

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert _ui_hint("sqlite:////data/mlflow.db") == \
        "MLflow UI: mlflow ui --backend-store-uri sqlite:////data/mlflow.db"
    (tmp_path / "mlflow").write_text("#!/bin/sh\n")
    assert _ui_hint("sqlite:////data/mlflow.db") == \
        f"MLflow UI: {tmp_path / 'mlflow'} ui --backend-store-uri sqlite:////data/mlflow.db"
    assert _ui_hint("https://ada:s3cret@mlflow.example.com") == (
        "MLflow UI: https://***@mlflow.example.com (the tracking server's own UI)")
    assert _ui_hint("databricks") == "MLflow UI: the Databricks workspace's Experiments page"
