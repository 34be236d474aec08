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


def test_each_trial_gets_its_own_checkpoint_subdirectory(tmp_path):
    """<train.checkpoint_dir>/<trial name>, also in what the Databricks location check sees."""
    from nnfund_spark.cli import _locations_both_sides_use

    sweep = load_sweep(write(tmp_path / "s.yaml", f"""
set: {{train.checkpoint_dir: "{tmp_path}/ckpt/"}}
axes: {{train.optimizer: [adam, sgd]}}
"""))
    dirs = [t.config.train.checkpoint_dir for t in sweep.trials]
    assert dirs == [f"{tmp_path}/ckpt/optimizer=adam", f"{tmp_path}/ckpt/optimizer=sgd"]
    paths, _ = _locations_both_sides_use("sweep", None, sweep, None)
    assert [paths[f"{t.name}: train.checkpoint_dir"] for t in sweep.trials] == dirs
    # without a checkpoint directory nothing is made up
    assert load_sweep(write(tmp_path / "n.yaml", "axes: {train.optimizer: [adam]}\n")
                      ).trials[0].config.train.checkpoint_dir is None
    with pytest.raises(ConfigError, match=r"trial 'output_dir=/x': with train.checkpoint_dir "
                                          r"set, the trial name is the name of its checkpoint "
                                          r"subdirectory; 'output_dir=/x' is not a directory "
                                          r"name \(no '/'"):
        load_sweep(write(tmp_path / "b.yaml", f"""
set: {{train.checkpoint_dir: "{tmp_path}/ckpt"}}
axes: {{data.output_dir: [/x]}}
"""))


def test_sweep_checkpoints_per_trial_and_resume_trial_by_trial(spark, small_mnist, tmp_path,
                                                               monkeypatch, caplog):
    """Each trial checkpoints into its own subdirectory; a failed trial keeps its error's type
    (credentials redacted) and logs its traceback; a rerun without resume is refused for every
    trial before anything trains; with train.resume=true a finished trial is skipped, an
    interrupted one continues its own MLflow run (and gets model.parameters, which the
    interrupted job never logged), and one that never started trains fresh."""
    from mlflow.tracking import MlflowClient

    from nnfund_spark.experiments.runner import SweepFailedError, run_sweep
    from nnfund_spark.training import checkpoint, launcher

    out, _ = small_mnist
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ckpt = tmp_path / "ckpt"
    base = write(tmp_path / "base.yaml", f"""
data: {{output_dir: "{out}"}}
train: {{num_proc: 1, epochs: 1, batch_size: 64, model: mlp, checkpoint_dir: "{ckpt}"}}
tracking: {{tracking_uri: "{uri}", experiment: ckpt_sweep, log_artifacts: false,
           log_model: false}}
""")
    two = write(tmp_path / "two.yaml", f"""
name: two
base: {base.name}
trials: [{{name: a, set: {{train.optimizer: adam}}}}, {{name: b, set: {{train.optimizer: sgd}}}}]
""")
    rebuild = launcher.rebuild_model

    def dies_for_b(weights, config, manifest):  # trial b's job dies after its checkpoint
        if config.train.checkpoint_dir.endswith("/b"):
            raise KeyError("history at https://user:secret@example.com/x")
        return rebuild(weights, config, manifest)

    monkeypatch.setattr(launcher, "rebuild_model", dies_for_b)
    with pytest.raises(SweepFailedError) as err:
        run_sweep(spark, load_sweep(two))
    assert "1 of 2 trials failed: b: KeyError: 'history at https://***@example.com/x'" \
        in str(err.value)
    logged = caplog.text
    assert "Traceback" in logged and "dies_for_b" in logged and "secret" not in logged
    monkeypatch.setattr(launcher, "rebuild_model", rebuild)
    a_meta, b_meta = checkpoint.latest(ckpt / "a"), checkpoint.latest(ckpt / "b")
    assert a_meta["epoch"] == b_meta["epoch"] == 1
    assert a_meta["mlflow_run_id"] != b_meta["mlflow_run_id"]

    # Without resume every trial's directory is refused before anything trains.
    with pytest.raises(ValueError, match=r"2 of 2 trials cannot run; nothing was trained: "
                                         r"a: .*already holds checkpoints.*; b: "):
        run_sweep(spark, load_sweep(two))

    three = write(tmp_path / "three.yaml", two.read_text().replace(
        "}}]", "}}, {name: c, set: {train.optimizer: rmsprop}}]"))
    sweep = load_sweep(three, ["train.resume=true"])
    sweep.trials[1].config.train.epochs = 2  # b trains one more epoch
    summary = run_sweep(spark, sweep)
    status = {r["trial"]: r["status"] for r in summary["rows"]}
    assert status == {"a": "SKIPPED", "b": "FINISHED", "c": "FINISHED"}
    runs = {r["trial"]: r["run_id"] for r in summary["rows"]}
    assert runs["a"] == a_meta["mlflow_run_id"] and runs["b"] == b_meta["mlflow_run_id"]
    client = MlflowClient(uri)
    b_run = client.get_run(runs["b"])
    assert b_run.info.status == "FINISHED" and b_run.data.tags["resumed_from_epoch"] == "1"
    assert int(b_run.data.params["model.parameters"]) > 0
    assert checkpoint.latest(ckpt / "b")["epoch"] == 2
    c_run = client.get_run(runs["c"])
    assert c_run.data.params["train.checkpoint_dir"] == f"{ckpt}/c"
    assert checkpoint.latest(ckpt / "c")["mlflow_run_id"] == runs["c"]
    assert summary["best_trial"] in ("b", "c")
