"""Batch inference on local Spark, real MNIST: every Spark prediction equals the in-process Keras
prediction for the same image, the accuracy matches exactly, errors name the bad thing."""
import argparse
import json

import numpy as np
import pandas as pd
import pytest

from nnfund_spark.config import ConfigError, load_config
from nnfund_spark.inference import (PredictConfig, add_predict_arguments, parse_model_uri,
                                    predict_config_from_args, resolve_split, run_predict)
from nnfund_spark.inference.scoring import decode_images


@pytest.fixture(scope="module")
def tiny_model(small_mnist, mnist_raw_dir, tmp_path_factory):
    """LeNet-5 fitted for one epoch on 512 real training images, logged and registered, plus
    its in-process predictions on the prepared test split (the reference)."""
    import mlflow
    import tensorflow as tf
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from nnfund_spark.data.idx import load_idx_dataset
    from nnfund_spark.models import build_model
    from tests.test_prepare import read_split

    out, manifest = small_mnist
    images, labels = load_idx_dataset("mnist", mnist_raw_dir)["train"]
    tf.keras.utils.set_random_seed(0)
    model = build_model("lenet5", manifest["image_shape"], manifest["num_classes"])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images[:512].astype(np.float32), labels[:512], epochs=1, batch_size=32, verbose=0)

    store = tmp_path_factory.mktemp("mlflow_predict")
    tracking_uri = f"sqlite:///{store}/mlflow.db"
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.create_experiment("predict_test",
                                             artifact_location=(store / "artifacts").as_uri())
    example = images[:2].astype(np.float32)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.tensorflow.log_model(
            model, name="model", registered_model_name="tiny_lenet",
            signature=infer_signature(example, model.predict(example, verbose=0)))
    client = MlflowClient(tracking_uri)
    client.set_registered_model_alias("tiny_lenet", "champion", info.registered_model_version)

    index, test_images, test_labels = read_split(out / "test")
    probs = model.predict(test_images.astype(np.float32), batch_size=256, verbose=0)
    return {"run_id": run.info.run_id, "experiment_id": experiment_id,
            "tracking_uri": tracking_uri, "client": client, "index": index,
            "labels": test_labels, "probs": probs, "predicted": probs.argmax(axis=1)}


def _config(tiny_model, dataset_dir, output_dir, **kwargs):
    return PredictConfig(model_uri=kwargs.pop("model_uri", tiny_model["run_id"]),
                         dataset_dir=str(dataset_dir), output_dir=str(output_dir),
                         tracking_uri=tiny_model["tracking_uri"], **kwargs)


def _check_against_reference(output_dir, tiny_model):
    written = pd.read_parquet(output_dir).sort_values("index").reset_index(drop=True)
    np.testing.assert_array_equal(written["index"].to_numpy(), tiny_model["index"])
    np.testing.assert_array_equal(written["label"].to_numpy(), tiny_model["labels"])
    # Every single example gets the label the model predicts in-process ...
    np.testing.assert_array_equal(written["prediction"].to_numpy(), tiny_model["predicted"])
    # ... from the same probabilities (float32 on another batch split: not bit-identical).
    np.testing.assert_allclose(np.stack(written["probabilities"].to_numpy()), tiny_model["probs"],
                               rtol=0, atol=1e-5)
    return written


def test_spark_predictions_equal_in_process_predictions(spark, small_mnist, tiny_model, tmp_path):
    out, manifest = small_mnist
    summary = run_predict(spark, _config(tiny_model, out, tmp_path / "preds", batch_size=100))

    written = _check_against_reference(tmp_path / "preds", tiny_model)
    expected_accuracy = float((tiny_model["predicted"] == tiny_model["labels"]).sum()) / 2000
    assert summary["count"] == summary["expected_count"] == 2000
    assert summary["accuracy"] == expected_accuracy  # exactly: same integer counts
    expected_matrix = np.zeros((10, 10), np.int64)
    np.add.at(expected_matrix, (tiny_model["labels"], tiny_model["predicted"]), 1)
    assert summary["confusion_matrix"] == expected_matrix.tolist()
    assert set(written["model_uri"]) == {f"runs:/{tiny_model['run_id']}/model"}

    # named as the "already exists" refusal names it
    assert summary["output_uri"] == "file://" + str(tmp_path / "preds")
    fields = {f.name: f.dataType.simpleString()
              for f in spark.read.parquet(summary["output_uri"]).schema.fields}
    assert fields == {"index": "bigint", "label": "int", "prediction": "int",
                      "probabilities": "array<float>", "model_uri": "string"}
    # Atomic write: nothing hidden left beside the output.
    assert [p.name for p in tmp_path.iterdir()] == ["preds"]

    # A new MLflow run in the model's experiment holds the metric and the matrix.
    client = tiny_model["client"]
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.experiment_id == tiny_model["experiment_id"]
    assert run.info.run_id != tiny_model["run_id"] and run.info.status == "FINISHED"
    assert run.data.metrics["predict_test_accuracy"] == pytest.approx(expected_accuracy, abs=1e-12)
    assert run.data.params["model_uri"] == f"runs:/{tiny_model['run_id']}/model"
    assert run.data.tags["source_run_id"] == tiny_model["run_id"]
    matrix_file = client.download_artifacts(run.info.run_id, "predict/test/confusion_matrix.json",
                                            str(tmp_path / "dl"))
    assert json.loads(open(matrix_file).read())["matrix"] == expected_matrix.tolist()


def test_existing_output_is_refused_then_replaced(spark, small_mnist, tiny_model, tmp_path):
    out, _ = small_mnist
    target = tmp_path / "preds"
    target.mkdir()
    (target / "old.txt").write_text("earlier predictions")
    with pytest.raises(FileExistsError, match=f"output already exists: file://{target} "
                                              r"\(pass --overwrite, or "):
        run_predict(spark, _config(tiny_model, out, target))
    assert (target / "old.txt").exists()

    # With overwrite, a registry alias and a split directory given directly; log to the source.
    summary = run_predict(spark, _config(tiny_model, out / "test", target, overwrite=True,
                                         model_uri="models:/tiny_lenet@champion",
                                         mlflow_run="source"))
    assert not (target / "old.txt").exists()
    written = _check_against_reference(target, tiny_model)
    assert set(written["model_uri"]) == {"models:/tiny_lenet@champion"}
    assert summary["split"] == "test" and summary["source_run_id"] == tiny_model["run_id"]
    assert summary["mlflow_run_id"] == tiny_model["run_id"]
    source = tiny_model["client"].get_run(tiny_model["run_id"])
    assert source.data.metrics["predict_test_accuracy"] == pytest.approx(summary["accuracy"])
    assert [p.name for p in tmp_path.iterdir()] == ["preds"]


@pytest.mark.parametrize("uri, message", [
    ("runs:/" + "0" * 32 + "/model", "cannot be resolved in the MLflow store"),
    ("models:/tiny_lenet/99", "cannot be resolved in the MLflow store"),
    ("models:/no_such_model@champion", "cannot be resolved in the MLflow store"),
])
def test_unknown_model_is_named(spark, small_mnist, tiny_model, tmp_path, uri, message):
    out, _ = small_mnist
    with pytest.raises(ValueError, match=message) as err:
        run_predict(spark, _config(tiny_model, out, tmp_path / "preds", model_uri=uri))
    assert uri in str(err.value)
    assert not (tmp_path / "preds").exists()


def test_model_path_that_is_not_a_model_is_named(spark, small_mnist, tiny_model, tmp_path):
    out, _ = small_mnist
    uri = f"runs:/{tiny_model['run_id']}/no_such_artifact"
    with pytest.raises(ValueError, match="no MLflow model can be downloaded from") as err:
        run_predict(spark, _config(tiny_model, out, tmp_path / "preds", model_uri=uri))
    assert uri in str(err.value)


def test_model_uri_forms():
    run_id = "0123456789abcdef0123456789abcdef"
    assert parse_model_uri(run_id).uri == f"runs:/{run_id}/model"
    assert parse_model_uri(f"runs:/{run_id}").uri == f"runs:/{run_id}/model"
    assert parse_model_uri(f"runs:/{run_id}/best/model").uri == f"runs:/{run_id}/best/model"
    assert parse_model_uri("models:/main.ml.mnist@prod").alias == "prod"
    # MLflow 3's logged-model URI, what a training summary reports
    logged = parse_model_uri("models:/m-b101e24264ca48f9a78e03bdf6598474")
    assert logged.logged_model_id == "m-b101e24264ca48f9a78e03bdf6598474" and logged.run_id is None
    assert parse_model_uri("models:/mnist/3").version == "3"
    for bad in ("gs://bucket/model", "runs:/xyz/model", "models:/mnist", "", "models:/a/b/c"):
        with pytest.raises(ConfigError, match="is not recognised; accepted: an MLflow run id"):
            parse_model_uri(bad)


def test_missing_dataset_or_split_is_named(small_mnist, tmp_path):
    out, _ = small_mnist
    with pytest.raises(FileNotFoundError, match="dataset directory not found: .*nowhere"):
        resolve_split(str(tmp_path / "nowhere"), "test")
    with pytest.raises(FileNotFoundError, match="no manifest.json in"):
        resolve_split(str(tmp_path), "test")
    with pytest.raises(FileNotFoundError,
                       match="split 'tset' not found .* available: test, train, validation"):
        resolve_split(str(out), "tset")
    root, split, split_dir, _ = resolve_split(str(out / "validation"), "test")
    assert (root.path, split, split_dir.path) == (str(out.resolve()), "validation",
                                                  str((out / "validation").resolve()))


def test_output_over_the_dataset_is_refused(spark, small_mnist, tiny_model):
    out, _ = small_mnist
    for target in (out, out / "test" / "preds", out.parent):
        with pytest.raises(ValueError, match="overlaps the dataset"):
            run_predict(spark, _config(tiny_model, out, target, overwrite=True))


def test_decoding_matches_petastorm_codecs():
    from petastorm.codecs import CompressedImageCodec, NdarrayCodec
    from petastorm.unischema import UnischemaField

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    rgb = rng.integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    png = CompressedImageCodec("png")
    blobs = [bytes(png.encode(UnischemaField("image", np.uint8, (28, 28), png, False), g))
             for g in gray]
    np.testing.assert_array_equal(decode_images(blobs, "png", [28, 28, 1]), gray[..., None])
    blobs = [bytes(png.encode(UnischemaField("image", np.uint8, (8, 6, 3), png, False), c))
             for c in rgb]
    np.testing.assert_array_equal(decode_images(blobs, "png", [8, 6, 3]), rgb)  # RGB, not BGR
    codec = NdarrayCodec()
    blobs = [bytes(codec.encode(UnischemaField("image", np.uint8, (8, 6, 3), codec, False), c))
             for c in rgb]
    np.testing.assert_array_equal(decode_images(blobs, "ndarray", [8, 6, 3]), rgb)
    with pytest.raises(ValueError, match="example index 17: image bytes are not a decodable PNG"):
        decode_images([b"not a png"], "png", [28, 28, 1], indices=[17])
    with pytest.raises(ValueError, match=r"does not fit the manifest's image_shape \[28, 28, 1\]"):
        decode_images(blobs[:1], "ndarray", [28, 28, 1])


def test_cli_arguments_build_the_config():
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    job = load_config(None, ["data.output_dir=/data/mnist", "tracking.tracking_uri=databricks"])
    args = parser.parse_args(["--model-uri", "models:/mnist@prod", "--output-dir", "/out"])
    config = predict_config_from_args(args, job)
    assert (config.dataset_dir, config.split, config.tracking_uri) == ("/data/mnist", "test",
                                                                       "databricks")
    assert config.overwrite is False and config.mlflow_run == "new"
    args = parser.parse_args(["--model-uri", "models:/mnist/2", "--output-dir", "/out",
                              "--overwrite", "--batch-size", "0"])
    with pytest.raises(ConfigError, match="batch_size must be > 0, got 0"):
        predict_config_from_args(args, job)
    with pytest.raises(SystemExit):
        parser.parse_args(["--model-uri", "x", "--output-dir", "/o", "--mlflow-run", "both"])


def test_summary_of_an_empty_split_says_so():
    """0 examples scored (e.g. --split validation with validation_fraction=0) is reported as
    an empty split, not as a split without labels."""
    from nnfund_spark.inference import format_summary

    summary = {"count": 0, "split": "validation", "model_uri": "runs:/r/model",
               "output_uri": "file:///tmp/p", "accuracy": None, "mlflow_run_id": None}
    assert format_summary(summary).endswith("(the split holds 0 examples: accuracy not computed)")
    summary["count"] = 5
    assert format_summary(summary).endswith("(no labels: accuracy not computed)")
