"""Two Horovod ranks on local Spark, real MNIST: averaged gradients, one MLflow run read back."""
import json

import numpy as np
import pytest

from nnfund_spark.config import load_config
from nnfund_spark.training.launcher import ClusterTooSmallError, run_training
from tests.conftest import stack_controller


@pytest.fixture(scope="module")
def trained(spark, small_mnist, tmp_path_factory):
    out, manifest = small_mnist
    tracking = tmp_path_factory.mktemp("mlflow")
    config = load_config(None, [
        f"data.output_dir={out}", "train.num_proc=2", "train.epochs=2", "train.batch_size=32",
        f"tracking.tracking_uri=sqlite:///{tracking}/mlflow.db", "tracking.experiment=test_train",
        # Batch norm: its moving statistics are state outside the gradients, which the ranks
        # must agree on too (checked by the identical weights below). 114 steps: statistics
        # that move faster than Keras' default 0.99.
        "train.normalization=batch", "train.bn_momentum=0.9",
    ])
    import tempfile
    from pathlib import Path

    summary = run_training(spark, config, extra_settings={"return_shard_indices": True})
    # Rank 0's TensorBoard files went to MLflow (checked below); the local copy, named after
    # the run, is gone.
    scratch = Path(tempfile.gettempdir())
    assert not list(scratch.glob(f"nnfund-tensorboard-{summary['run_id']}-*"))
    return config, manifest, summary


def test_ranks_train_on_disjoint_shards_and_end_identical(trained):
    _, manifest, summary = trained
    ranks = sorted(summary["ranks"], key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    first, second = (set(r["train_indices"]) for r in ranks)
    # Each rank read only its shard: together they are the whole train split, no overlap ...
    assert not first & second
    assert len(first | second) == manifest["splits"]["train"]["count"]
    # ... yet the weights are bit-identical afterwards: gradients were averaged every step.
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["steps_per_epoch"] == ranks[1]["steps_per_epoch"]
    assert ranks[0]["steps_per_epoch"] == -(-max(r["train_shard_size"] for r in ranks) // 32)


def test_every_example_exactly_once_per_epoch_reshuffled(trained):
    """seen_per_epoch is what the training stream handed to the model (each batch's images
    matched back to the shard's rows as fit consumed them), not a recomputed order."""
    _, manifest, summary = trained
    ranks = sorted(summary["ranks"], key=lambda r: r["rank"])
    for rank in ranks:
        for seen in rank["seen_per_epoch"]:
            assert sorted(seen) == sorted(rank["train_indices"])  # its own shard, once each
    epochs = [ranks[0]["seen_per_epoch"][e] + ranks[1]["seen_per_epoch"][e] for e in range(2)]
    for seen in epochs:
        assert len(seen) == len(set(seen)) == manifest["splits"]["train"]["count"]
    # a new order every epoch and on every rank
    assert ranks[0]["seen_per_epoch"][0] != ranks[0]["seen_per_epoch"][1]
    assert sorted(ranks[0]["seen_per_epoch"][0]) == sorted(ranks[0]["seen_per_epoch"][1])


def test_learns_something_real(trained):
    _, _, summary = trained
    assert summary["test_count"] == 2000
    assert summary["test_accuracy"] > 0.8
    losses = summary["history"]["loss"]
    assert losses[1] < losses[0]


def test_mlflow_run_reads_back(trained, small_mnist):
    import mlflow
    from mlflow.tracking import MlflowClient

    config, manifest, summary = trained
    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 1  # one run for the job, not one per rank
    params = run.data.params
    assert params["train.epochs"] == "2" and params["train.num_proc"] == "2"
    assert params["world_size"] == "2" and params["dataset.name"] == "mnist"
    assert params["data.output_dir"] == config.data.output_dir
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    # The final test figures sit at the last epoch's step, the end of the per-epoch curves.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [2]

    tags = run.data.tags
    for key in ("nnfund_spark.version", "spark.master", "tensorflow.version", "horovod.version"):
        assert tags.get(key), key
    assert tags["device"] == "CPU" and tags["weights_identical_across_ranks"] == "True"
    # train.controller=auto (the default) ran the ranks with the controller the stack built.
    assert params["train.controller"] == "auto"
    assert tags["controller"] == summary["controller"] == stack_controller()
    # mnist_cnn's 1,199,882 with batch norm after conv 32, conv 64 and dense 128: 4 values per
    # unit (224 units: +896), and those layers drop their biases (-224).
    assert int(params["model.parameters"]) == 1_199_882 + 896 - 224

    # The artifacts a user opens in the UI.
    def listing(path=None):
        found = []
        for item in client.list_artifacts(run.info.run_id, path):
            found.extend(listing(item.path) if item.is_dir else [item.path])
        return found
    artifacts = set(listing())
    for expected in ("plots/learning_curves.png", "plots/confusion_matrix.png",
                     "tables/confusion_matrix.csv", "model_summary.txt",
                     "convolutions/first_layer_filters.png", "convolutions/activation_maps.png",
                     "convolutions/activation_stats.json", "dataset/manifest.json",
                     "plots/activation_relu.png", "ranks.json"):
        assert expected in artifacts, expected
    ranks = json.load(open(client.download_artifacts(run.info.run_id, "ranks.json")))
    assert [r["rank"] for r in ranks] == [0, 1]
    assert sum(r["train_shard_size"] for r in ranks) == manifest["splits"]["train"]["count"]
    assert any(path.startswith("tensorboard/") for path in artifacts)
    local = client.download_artifacts(run.info.run_id, "tables/confusion_matrix.csv")
    rows = [line.split(",") for line in open(local).read().splitlines()[1:]]
    matrix = np.array([[int(v) for v in row[1:]] for row in rows])
    assert matrix.shape == (10, 10) and matrix.sum() == 2000
    assert np.trace(matrix) / 2000 == pytest.approx(summary["test_accuracy"])
    stats = json.load(open(client.download_artifacts(run.info.run_id,
                                                     "convolutions/activation_stats.json")))
    assert set(stats) == {"conv1", "conv2"}
    assert stats["conv1"]["shape"] == [26, 26, 32] and stats["conv1"]["min"] >= 0.0  # ReLU

    # The logged model loads through pyfunc and reproduces the logged test accuracy exactly.
    out, _ = small_mnist
    from tests.test_prepare import read_split
    _, images, labels = read_split(out / "test")
    # (models:/m-<id> resolves in the run's tracking store, as a user of that store would)
    mlflow.set_tracking_uri(summary["tracking_uri"])
    model = mlflow.pyfunc.load_model(summary["model_uri"])
    predicted = np.asarray(model.predict(images.astype(np.float32))).argmax(axis=1)
    assert (predicted == labels).mean() == pytest.approx(summary["test_accuracy"], abs=1e-9)


def test_steps_per_execution_changes_the_calls_not_the_training(spark, small_mnist, tmp_path):
    """Seven train steps per call of the compiled function (with an epoch's 57 steps, the last
    call runs one) train exactly what one step per call trains: same weights, same history."""
    out, _ = small_mnist
    summaries = {}
    for steps in (1, 7):
        config = load_config(None, [
            f"data.output_dir={out}", "train.num_proc=1", "train.epochs=2",
            "train.batch_size=32", f"train.steps_per_execution={steps}",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "tracking.experiment=steps_per_execution", "tracking.log_artifacts=false",
            "tracking.log_model=false"])
        summaries[steps] = run_training(spark, config)
    one, seven = summaries[1], summaries[7]
    assert [one["ranks"][0]["steps_per_execution"], seven["ranks"][0]["steps_per_execution"]] \
        == [1, 7]
    assert one["ranks"][0]["steps_per_epoch"] == seven["ranks"][0]["steps_per_epoch"] == 57
    assert one["ranks"][0]["weights_sha256"] == seven["ranks"][0]["weights_sha256"]
    assert one["history"]["loss"] == seven["history"]["loss"]
    assert one["test_accuracy"] == seven["test_accuracy"] > 0.8


def test_too_few_slots_fails_fast(spark, small_mnist):
    out, _ = small_mnist
    config = load_config(None, [f"data.output_dir={out}", "train.num_proc=3"])
    with pytest.raises(ClusterTooSmallError) as err:
        run_training(spark, config)
    assert "needs 3 concurrent Spark task slots but the cluster offers 2" in str(err.value)


def test_core_slots_count_executor_cores_per_task_cpus():
    """The slot count behind the fail-fast check: executor cores / spark.task.cpus, whatever
    spark.default.parallelism says; defaultParallelism only when the cores are unknown."""
    from nnfund_spark.training.launcher import core_slots

    def never():
        raise AssertionError("not needed for this master")

    assert core_slots("local[4]", {"spark.task.cpus": "2",
                                   "spark.default.parallelism": "8"}, never, never) == 2
    assert core_slots("local[3, 2]", {}, never, never) == 3  # local[N, maxFailures]
    assert core_slots("local", {}, never, never) == 1
    assert core_slots("local-cluster[2, 3, 1024]", {}, never, never) == 6
    assert core_slots("spark://head:7077", {"spark.executor.cores": "4",
                                            "spark.task.cpus": "2"}, lambda: 3, never) == 6
    waited = []
    assert core_slots("yarn", {}, lambda: waited.append(1) or 5, lambda: 10) == 10
    assert waited == [1]  # executors are waited for before Spark's own count is read


def test_num_proc_zero_takes_every_slot_up_to_max_num_proc(monkeypatch):
    from types import SimpleNamespace

    from nnfund_spark.training import launcher

    fake = SimpleNamespace(sparkContext=SimpleNamespace(master="spark://head:7077"))
    offered = {"slots": (4, "core")}
    monkeypatch.setattr(launcher, "available_slots", lambda spark, wait_seconds: offered["slots"])
    train = load_config(None, ["train.num_proc=0"]).train
    assert launcher.resolve_num_proc(fake, train) == 4
    train.max_num_proc = 2
    assert launcher.resolve_num_proc(fake, train) == 2
    train.num_proc = 3  # an explicit count is not capped, only checked
    assert launcher.resolve_num_proc(fake, train) == 3
    train.num_proc = 5
    with pytest.raises(ClusterTooSmallError, match=r"train.num_proc=5 needs 5 concurrent Spark "
                                                   r"task slots but the cluster offers 4 \(master "
                                                   r"spark://head:7077\); lower train.num_proc"):
        launcher.resolve_num_proc(fake, train)
    offered["slots"] = (1, "GPU")
    train.num_proc = 2
    with pytest.raises(ClusterTooSmallError, match=r"needs 2 GPU slots \(executors x "
                                                   r".*offers 1 .*add GPU executors"):
        launcher.resolve_num_proc(fake, train)
    offered["slots"] = (0, "GPU")  # GPU scheduling on, no GPU executor yet
    train.num_proc, train.max_num_proc = 0, 0
    with pytest.raises(ClusterTooSmallError, match=r"train.num_proc=0 takes every one of the "
                                                   r"GPU slots .* but the cluster offers none "
                                                   r"\(master .*\); add GPU executors"):
        launcher.resolve_num_proc(fake, train)


def test_a_needed_split_that_is_empty_is_refused_before_any_rank_starts(spark, mnist_raw_dir,
                                                                         tmp_path):
    from mlflow.tracking import MlflowClient

    from nnfund_spark.config import DataConfig
    from nnfund_spark.data.prepare import prepare_dataset

    out = tmp_path / "no_validation"
    prepare_dataset(spark, DataConfig(raw_dir=str(mnist_raw_dir), output_dir=str(out),
                                      limit=300, validation_fraction=0.0))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = [f"data.output_dir={out}", f"tracking.tracking_uri={uri}"]
    cases = {
        ("train.target_accuracy=0.9",): "checked on the validation split, which is empty",
        ("train.early_stopping_patience=2",): "watches val_loss, but the validation split",
    }
    for overrides, message in cases.items():
        with pytest.raises(ValueError, match=message):
            run_training(spark, load_config(None, base + list(overrides)))
    # Refused before a run was opened: nothing in the tracking store.
    assert not MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()])
    # The same dataset trains when the target is on the test split (checked, not launched here).
    from nnfund_spark.data.manifest import read_manifest
    from nnfund_spark.training.launcher import check_splits_for
    config = load_config(None, base + ["train.target_accuracy=0.9", "train.target_split=test"])
    check_splits_for(config.train, read_manifest(out), str(out))


def test_a_model_that_cannot_be_built_is_refused_before_any_rank_starts(spark, small_mnist,
                                                                       tmp_path):
    """train.model_options values, the image geometry and the crop's bound by the image size
    are checked on the driver with the ranks' own checks, before the MLflow run opens: not by
    every rank after Spark start-up."""
    from mlflow.tracking import MlflowClient

    out, _ = small_mnist
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = [f"data.output_dir={out}", f"tracking.tracking_uri={uri}", "train.model=convnet"]
    cases = {
        "train.model_options.dense_units=1e3": r"dense_units must be an integer >= 0 .*1000.0",
        "train.model_options.filters=[16, 16, 16, 16]": r"4 conv/pool stages do not fit",
    }
    for override, message in cases.items():
        with pytest.raises(ValueError, match=r"train.model=convnet cannot be built for .*"
                                             r"mnist_small \(28x28x1 images, 10 classes\): .*"
                                             + message):
            run_training(spark, load_config(None, base + [override]))
    with pytest.raises(ValueError, match=r"train.augment: augmentation 'random_crop': padding "
                                         r"must be below the image size 28x28, got 28"):
        run_training(spark, load_config(None, base + ["train.augment.random_crop=28"]))
    assert not MlflowClient(uri).search_experiments(filter_string="name = 'nnfund_spark'")


def test_mpi_controller_without_mpi_is_refused_before_any_rank_starts(spark, small_mnist,
                                                                      tmp_path, monkeypatch):
    """train.controller=mpi on a host without mpirun must say what is missing before the MLflow
    run opens or any rank starts, instead of failing inside horovod.spark.run."""
    import shutil

    from mlflow.tracking import MlflowClient

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k:
                        None if name == "mpirun" else real_which(name, *a, **k))
    out, _ = small_mnist
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = load_config(None, [f"data.output_dir={out}", f"tracking.tracking_uri={uri}",
                                "train.controller=mpi"])
    with pytest.raises(ValueError, match=r"train.controller=mpi needs .*mpirun.*"
                                         r"or use train.controller=gloo"):
        run_training(spark, config)
    assert not MlflowClient(uri).search_experiments(filter_string="name = 'nnfund_spark'")
