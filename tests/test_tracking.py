"""MLflow behaviour that teams rely on: failures recorded, secrets never logged, HTTP server."""
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from nnfund_spark.config import load_config
from nnfund_spark.tracking.mlflow_utils import redact
from nnfund_spark.training.launcher import WorkerError, run_training
from tests.test_spark_submit import free_port

SECRET = "SuperSecret-123"


def test_redact_hides_credential_keys_and_uri_passwords():
    params = {"spark.conf.spark.hadoop.fs.s3a.secret.key": SECRET,
              "spark.conf.spark.hadoop.fs.s3a.access.key": "AKIA-something",
              "spark.conf.fs.azure.account.key.acct.dfs.core.windows.net": SECRET,
              "tracking.tracking_uri": f"https://alice:{SECRET}@mlflow.example.com",
              "spark.conf.spark.hadoop.fs.s3a.encryption.key": SECRET,
              "spark.conf.spark.hadoop.fs.s3a.server-side-encryption.key": SECRET,
              "spark.conf.spark.io.encryption.keySizeBits": 256,
              "db.password": SECRET, "api_token": SECRET, "train.epochs": 3,
              "tracking.run_name": "keep me", "data.output_dir": "s3a://bucket/path"}
    safe = redact(params)
    assert SECRET not in repr(safe) and "AKIA" not in repr(safe)
    assert safe["tracking.tracking_uri"] == "https://***@mlflow.example.com"
    assert safe["train.epochs"] == 3 and safe["tracking.run_name"] == "keep me"
    assert safe["spark.conf.spark.io.encryption.keySizeBits"] == 256  # a size, not a key
    assert safe["data.output_dir"] == "s3a://bucket/path"


def test_redact_covers_slashes_in_secrets_azure_sas_keys_and_spares_author():
    from nnfund_spark.data.sources.image_folder import _display
    from nnfund_spark.tracking.mlflow_utils import redact_uri

    slashed = f"wJalr/{SECRET}/K7MDENG"  # AWS secret keys may hold '/'
    params = {"data.raw_dir": f"s3a://AKIAEXAMPLE:{slashed}@bucket/mnist",
              "tracking.tracking_uri": f"https://bob:pa/{SECRET}@mlflow.example.com/x",
              "spark.conf.spark.hadoop.fs.azure.sas.box.acct.blob.core.windows.net": SECRET,
              "train.model_options.author": "keep me"}
    safe = redact(params)
    assert SECRET not in repr(safe) and "AKIA" not in repr(safe)
    assert safe["data.raw_dir"] == "s3a://***@bucket/mnist"
    assert safe["tracking.tracking_uri"] == "https://***@mlflow.example.com/x"
    assert safe["train.model_options.author"] == "keep me"
    # what the spark.master tag, the dataset input and image-folder messages go through
    assert redact_uri(f"spark://u:{slashed}@host:7077") == "spark://***@host:7077"
    assert _display(f"s3a://k:{slashed}@bucket/imgs/a.png") == "s3a://***@bucket/imgs/a.png"
    assert _display("file:/data/imgs/a b.png") == "/data/imgs/a b.png"


def test_failed_job_leaves_a_failed_run_with_the_error(spark, small_mnist, tmp_path):
    from mlflow.tracking import MlflowClient

    out, _ = small_mnist
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = load_config(None, [f"data.output_dir={out}", f"tracking.tracking_uri={uri}",
                                "tracking.experiment=failing"])
    # The dataset the driver checked is gone by the time the ranks read it: every worker
    # raises at start-up.
    gone = tmp_path / "gone" / "train"
    with pytest.raises(WorkerError) as err:
        run_training(spark, config, extra_settings={"split_urls": {"train": gone.as_uri()}})
    # the workers' own error, not just Horovod's "a process exited with non-zero status"
    assert str(gone) in str(err.value)
    assert "rank 0:" in str(err.value) and "rank 1:" in str(err.value)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("failing")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("WorkerError: training failed on 2 rank(s)")


def test_error_tags_and_cli_errors_carry_no_credentials(tmp_path, monkeypatch, capsys):
    """An error message can quote a location with inline credentials: the run's error tag,
    a rank's error tag and the CLI's error line show it without them."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from nnfund_spark import cli
    from nnfund_spark.config import TrackingConfig
    from nnfund_spark.tracking.mlflow_utils import start_job_run
    from nnfund_spark.training import worker

    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"
    location = f"s3a://AKIAEXAMPLE:{secret}@bucket/datasets/mnist/train"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(FileNotFoundError):
        with start_job_run(TrackingConfig(experiment="secrets"), uri) as run:
            raise FileNotFoundError(f"cannot open {location}")
    tags = MlflowClient(uri).get_run(run.info.run_id).data.tags
    assert tags["error"] == "FileNotFoundError: cannot open s3a://***@bucket/datasets/mnist/train"

    def fail(settings):
        raise OSError(f"reading {location} failed")

    monkeypatch.setattr(worker, "_train", fail)
    with pytest.raises(OSError):
        worker.train_worker({"mlflow_run_id": run.info.run_id, "tracking_uri": uri})
    tags = MlflowClient(uri).get_run(run.info.run_id).data.tags
    assert tags["error.rankunknown"] == "OSError: reading s3a://***@bucket/datasets/mnist/train failed"
    assert secret not in str(tags) and "AKIAEXAMPLE" not in str(tags)
    mlflow.set_tracking_uri(None)

    # The CLI's error line: a dataset location with credentials that this host cannot open
    # (hdfs:// without Hadoop; no network involved), whose error quotes the location.
    monkeypatch.setattr("nnfund_spark.spark.build_session", lambda *a, **k: _NoSpark())
    code = cli.main(["train", "--set", f"data.output_dir=hdfs://hdfsuser:{secret}@nn:8020/mnist",
                     "--set", f"tracking.tracking_uri={uri}"])
    err = capsys.readouterr().err
    assert code == 1 and "dataset location 'hdfs://***@nn:8020/mnist'" in err, err
    assert secret not in err and "hdfsuser" not in err


class _NoSpark:
    """Enough of a SparkSession for a job that fails before it uses Spark."""

    class sparkContext:  # noqa: N801 - mirrors the attribute name
        @staticmethod
        def getConf():
            return None

    def stop(self):
        pass


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("mlflow server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
        time.sleep(1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_training_against_a_tracking_server_and_no_secret_logged(spark, small_mnist, mlflow_server,
                                                                  monkeypatch):
    from mlflow.tracking import MlflowClient

    out, _ = small_mnist
    monkeypatch.setenv("DATABRICKS_TOKEN", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    config = load_config(None, [
        f"data.output_dir={out}", "train.num_proc=1", "train.epochs=1", "train.batch_size=64",
        f"tracking.tracking_uri={mlflow_server}", "tracking.experiment=over_http",
        "spark.conf={spark.hadoop.fs.s3a.secret.key: %s}" % SECRET])
    summary = run_training(spark, config)

    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.num_proc"] == "1"
    # one rank, no gradient accumulation: Horovod is not started (collectives.Solo)
    assert [(r["horovod"], r["allreduce_gradients"]) for r in summary["ranks"]] == [(False, False)]
    assert run.data.params["spark.conf.spark.hadoop.fs.s3a.secret.key"] == "***"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "tables", "tensorboard", "dataset", "model_summary.txt"} <= names

    # no secret anywhere: params, tags, or the text artifacts
    everything = repr(run.data.params) + repr(run.data.tags)
    for path in ("model_summary.txt", "dataset/manifest.json", "tables/confusion_matrix.csv"):
        everything += open(client.download_artifacts(run.info.run_id, path)).read()
    assert SECRET not in everything

    import mlflow
    import numpy as np
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(summary["model_uri"])
    assert np.asarray(model.predict(np.zeros((2, 28, 28, 1), np.float32))).shape == (2, 10)


def test_logging_the_model_prints_no_progress_bar(tmp_path, capfd, caplog):
    """MLflow checks the input example by predicting with the logged model; the job's stdout
    must still end with our own lines only (no progress bar, no Keras warning that the
    inference model was saved uncompiled), and Keras' own settings are left as they were."""
    import logging

    import mlflow
    import tensorflow as tf

    from nnfund_spark.training.launcher import log_keras_model

    model = tf.keras.Sequential([tf.keras.Input((4, 4, 1)), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(2)])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    level = logging.getLogger("tensorflow").level
    with mlflow.start_run() as run:
        info = log_keras_model(model, {"image_shape": [4, 4, 1]})
    out = capfd.readouterr().out
    assert "step" not in out and "ETA" not in out, out
    assert "compiled" not in caplog.text, caplog.text
    assert logging.getLogger("tensorflow").level == level
    assert tf.keras.utils.is_interactive_logging_enabled()
    assert info.run_id == run.info.run_id
    loaded = mlflow.tensorflow.load_model(info.model_uri)
    assert loaded.input_shape == (None, 4, 4, 1)


def test_artifacts_without_a_test_split_and_no_figure_left_open(tmp_path):
    """Only the confusion matrix needs the test split (confusion None: there is none); the
    curves, summary, activation plot and conv views are still logged, and every figure is
    closed once logged."""
    import matplotlib.pyplot as plt
    import mlflow
    import numpy as np

    from nnfund_spark.models.zoo import build_model
    from nnfund_spark.tracking.run_logging import log_training_artifacts

    model = build_model("lenet5", (28, 28, 1), 10)
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "accuracy": [0.5, 0.8],
               "val_accuracy": [0.4, 0.7]}
    images = np.zeros((2, 28, 28, 1), dtype=np.float32)
    plt.close("all")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with mlflow.start_run() as run:
        log_training_artifacts(model, history, None, [str(i) for i in range(10)], images)
    assert plt.get_fignums() == []
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    logged = {a.path for folder in ("", "plots", "convolutions")
              for a in client.list_artifacts(run.info.run_id, folder or None)}
    assert {"model_summary.txt", "plots/learning_curves.png", "plots/activation_relu.png",
            "convolutions/first_layer_filters.png", "convolutions/activation_maps.png",
            "convolutions/activation_stats.json"} <= logged
    assert "plots/confusion_matrix.png" not in logged and "tables" not in logged


def test_a_dataset_without_test_split_still_gets_its_artifacts(spark, tmp_path):
    """data.test_fraction=0: no confusion matrix, but curves, summary, activation plot and the
    conv views (activation maps on validation images) are logged."""
    from mlflow.tracking import MlflowClient

    from nnfund_spark.config import DataConfig
    from nnfund_spark.data.prepare import prepare_dataset
    from tests.test_sources_image_folder import make_folder

    root, out = tmp_path / "images", tmp_path / "ds"
    make_folder(root)
    manifest = prepare_dataset(spark, DataConfig(
        source="image_folder", raw_dir=str(root), output_dir=str(out), image_size=[28, 28],
        color_mode="grayscale", validation_fraction=0.25, test_fraction=0.0))
    assert manifest["splits"]["test"]["count"] == 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = load_config(None, [
        f"data.output_dir={out}", "train.num_proc=1", "train.epochs=1", "train.batch_size=8",
        "train.model=lenet5", f"tracking.tracking_uri={uri}", "tracking.log_model=false"])
    summary = run_training(spark, config)
    assert summary["test_count"] == 0
    client = MlflowClient(uri)
    logged = {a.path for folder in (None, "plots", "convolutions")
              for a in client.list_artifacts(summary["run_id"], folder)}
    assert {"model_summary.txt", "plots/learning_curves.png", "plots/activation_relu.png",
            "convolutions/first_layer_filters.png", "convolutions/activation_maps.png"} <= logged
    assert "plots/confusion_matrix.png" not in logged and "tables" not in logged
