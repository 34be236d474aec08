"""Sweeps: validated before anything trains; a parent run with child runs and a comparison."""
from pathlib import Path

import pytest

from nnfund_spark.config import ConfigError
from nnfund_spark.experiments.sweep import best_trial, load_sweep

REPO = Path(__file__).resolve().parents[1]


def write(path, text):
    path.write_text(text)
    return path


def test_shipped_sweeps_load():
    files = sorted((REPO / "conf" / "experiments").glob("*.yaml"))
    assert {f.stem for f in files} >= {"optimizers", "learning_rates", "batch_sizes",
                                       "activations", "architectures"}
    for path in files:
        sweep = load_sweep(path)
        assert len(sweep.trials) >= 2
        # trials differ only in the keys they vary: same data, seed and budget
        for trial in sweep.trials:
            assert trial.config.data.output_dir == sweep.trials[0].config.data.output_dir
            assert trial.config.train.seed == sweep.trials[0].config.train.seed
            if "train.epochs" not in sweep.varied_keys:
                assert trial.config.train.epochs == sweep.trials[0].config.train.epochs
    optimizers = load_sweep(REPO / "conf/experiments/optimizers.yaml")
    assert [t.config.train.optimizer for t in optimizers.trials] == [
        "sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam"]
    assert optimizers.trials[0].config.train.model == "mlp"


def test_grid_axes_make_every_combination(tmp_path):
    sweep = load_sweep(write(tmp_path / "s.yaml", """
axes:
  train.optimizer: [adam, sgd]
  train.batch_size: [32, 64, 128]
set: {train.epochs: 2}
"""))
    assert len(sweep.trials) == 6
    assert sweep.varied_keys == ["train.batch_size", "train.optimizer"]
    assert {t.config.train.epochs for t in sweep.trials} == {2}
    assert sweep.trials[0].name == "optimizer=adam,batch_size=32"


@pytest.mark.parametrize("text, message", [
    ("axes: {train.optimizer: [adam]}\nbogus: 1\n", "unknown sweep key(s) bogus"),
    ("axes: {train.optimizer: []}\n", "non-empty lists"),
    ("name: x\n", "needs 'axes' or 'trials'"),
    ("trials: [{name: a, set: {train.optimzer: sgd}}]\n",
     "trial 'a': unknown config key 'train.optimzer'"),
    ("trials: [{name: a, set: {train.optimizer: sgd}}, {name: a, set: {train.epochs: 2}}]\n",
     "trial names must be unique"),
    ("trials: [{name: a, sett: {}}]\n", "must be a mapping with 'set'"),
    ("axes: {train.optimizer: [adam]}\nselect_metric: val_acc\n",
     "select_metric 'val_acc' is not one of val_accuracy, val_loss"),
    ("axes: {train.optimizer: [adam]}\nregister_best: 42\n",
     "register_best must be a Model Registry name (a string) or null, got 42"),
    ("- {name: a}\n", "a sweep file is a mapping with keys"),
    ("axes: {train.optimizer: [adam]}\naxes: {train.epochs: [2]}\n",
     "key 'axes' is given twice"),
])
def test_bad_sweeps_are_rejected(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path / "s.yaml", text))
    assert message in str(err.value)


def test_best_trial_respects_metric_direction():
    results = [
        {"trial": "a", "status": "FINISHED", "test_accuracy": 0.9, "test_loss": 0.3,
         "history": {"val_accuracy": [0.8, 0.91], "val_loss": [0.5, 0.2]}},
        {"trial": "b", "status": "FINISHED", "test_accuracy": 0.95, "test_loss": 0.2,
         "history": {"val_accuracy": [0.85, 0.9], "val_loss": [0.4, 0.25]}},
        {"trial": "c", "status": "FAILED"},
    ]
    assert best_trial(results, "val_accuracy")["trial"] == "a"
    assert best_trial(results, "test_accuracy")["trial"] == "b"
    assert best_trial(results, "val_loss")["trial"] == "a"
    # a diverged trial (nan) never wins, in either direction
    diverged = {"trial": "d", "status": "FINISHED", "test_accuracy": float("nan"),
                "history": {"val_accuracy": [float("nan")], "val_loss": [float("nan")]}}
    assert best_trial([diverged, *results], "val_loss")["trial"] == "a"
    assert best_trial([*results, diverged], "val_accuracy")["trial"] == "a"
    assert best_trial([diverged], "val_loss") is None


def test_two_trial_sweep_makes_parent_children_and_comparison(spark, small_mnist, tmp_path):
    from mlflow.tracking import MlflowClient

    from nnfund_spark.experiments.runner import run_sweep

    out, _ = small_mnist
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = write(tmp_path / "base.yaml", f"""
data: {{output_dir: "{out}"}}
train: {{num_proc: 1, epochs: 2, batch_size: 64, model: lenet5}}
tracking: {{tracking_uri: "{uri}", experiment: tiny_sweep, log_artifacts: false}}
""")
    sweep = load_sweep(write(tmp_path / "sweep.yaml", f"""
name: tiny
base: {base.name}
axes: {{train.optimizer: [adam, sgd]}}
register_best: tiny_best
"""))
    summary = run_sweep(spark, sweep)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny_sweep")
    runs = client.search_runs([experiment.experiment_id])
    parent = client.get_run(summary["parent_run_id"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert sorted(r.data.params["train.optimizer"] for r in children) == ["adam", "sgd"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert parent.data.tags["sweep.varied_keys"] == "train.optimizer"
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert names == {"comparison/final_metrics.csv", "comparison/final_metrics.md",
                     "comparison/loss_curves.png"}
    table = open(client.download_artifacts(parent.info.run_id,
                                           "comparison/final_metrics.csv")).read().splitlines()
    assert table[0].startswith("trial,status,test_accuracy")
    assert len(table) == 3
    # The best trial is the child with the highest last-epoch val_accuracy (select_metric's
    # default), read back from the children themselves; its model is the one registered.
    scores = {r.data.tags["sweep.trial"]: r.data.metrics["val_accuracy"] for r in children}
    top = max(scores.values())
    best = parent.data.tags["sweep.best_trial"]
    assert best == summary["best_trial"] and scores[best] == top
    assert parent.data.tags["sweep.registered_model"] == "tiny_best v1"
    version = client.get_model_version("tiny_best", "1")
    assert version.run_id == parent.data.tags["sweep.best_run_id"]
    assert client.get_run(version.run_id).data.tags["sweep.trial"] == best


def test_a_trial_that_cannot_build_its_model_stops_the_sweep_before_anything_trains(
        spark, small_mnist, tmp_path):
    """Model option values are checked against the dataset's images for every trial before the
    parent run opens: a sweep is not refused hours in, at its last trial."""
    from mlflow.tracking import MlflowClient

    from nnfund_spark.experiments.runner import run_sweep

    out, _ = small_mnist
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = load_sweep(write(tmp_path / "sweep.yaml", f"""
name: widths
set: {{data.output_dir: "{out}", train.model: convnet, tracking.tracking_uri: "{uri}"}}
axes: {{train.model_options.filters: [[8], [8, 8, 8, 8]]}}
"""))
    with pytest.raises(ValueError, match=r"1 of 2 trials cannot run; nothing was trained: "
                                         r"filters=\[8, 8, 8, 8\]: .*convnet: 4 "
                                         r"conv/pool stages do not fit \(28, 28, 1\) images"):
        run_sweep(spark, sweep)
    assert not MlflowClient(uri).search_experiments(filter_string="name = 'nnfund_spark'")
