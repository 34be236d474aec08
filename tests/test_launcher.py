"""The launcher under stress: uneven shards, a worker killed mid-epoch, resume, fake GPUs."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnfund_spark.config import load_config
from nnfund_spark.training.launcher import WorkerError, run_training
from tests.conftest import stack_controller

REPO = Path(__file__).resolve().parents[1]


def job_config(out, tmp_path, *extra):
    return load_config(None, [
        f"data.output_dir={out}", "train.num_proc=2", "train.batch_size=32",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=launcher",
        "tracking.log_artifacts=false", "tracking.log_model=false", *extra])


def kill_rank_1_mid_epoch(spark, config, tmp_path, epoch, message):
    """Run the job with rank 1 SIGKILLed at batch 10 of `epoch`; the job must end (no hang)
    with an error matching `message`, which the run's error tag also records. Returns the
    MLflow client and the job's one run."""
    from mlflow.tracking import MlflowClient

    started = time.time()
    with pytest.raises(RuntimeError, match=message) as err:
        run_training(spark, config, extra_settings={
            "fault_injection": {"target_rank": 1, "epoch": epoch, "batch": 10, "mode": "kill"}})
    assert time.time() - started < 240, "a dead worker must end the job, not hang it"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("launcher").experiment_id])
    assert run.data.tags["error"].startswith(f"{type(err.value).__name__}: ")
    return client, run


# What ends the job when rank 1 dies: under MPI, mpirun reports the SIGKILL (128 + 9); under
# Gloo, the surviving rank's allreduce fails and it records that on the run (a killed rank
# records nothing), or, if Horovod stops rank 0 first, Horovod names the killed process. Under
# MPI too, rank 0's failed allreduce may be recorded before mpirun stops it.
KILLED_UNDER_MPI = (r"(?s)mpirun failed with exit code 137"
                    r"|training failed on 1 rank\(s\): rank 0: .*Allreduce")
KILLED_UNDER_GLOO = (r"(?s)training failed on 1 rank\(s\): rank 0: .*Allreduce"
                     r"|Process name: 1\nExit code: 137")


@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_uneven_shards_run_equal_steps_and_use_every_example(spark, small_mnist, tmp_path,
                                                             controller):
    if controller == "mpi" and stack_controller() != "mpi":
        pytest.skip("NNFUND_MPI=0: this Horovod was built without MPI")
    out, _ = small_mnist
    config = job_config(out, tmp_path, "train.epochs=1", f"train.controller={controller}")
    summary = run_training(spark, config, extra_settings={
        "shard_limits": {"1": 500}, "return_shard_indices": True})
    assert summary["controller"] == controller
    ranks = sorted(summary["ranks"], key=lambda r: r["rank"])
    assert ranks[1]["train_shard_size"] == 500 < ranks[0]["train_shard_size"]
    assert ranks[0]["steps_per_epoch"] == ranks[1]["steps_per_epoch"]
    # Every example of each shard went to the model once (what the stream yielded, matched
    # back by pixels), the cut rank's 500 included.
    for rank in ranks:
        assert len(rank["train_indices"]) == rank["train_shard_size"]
        assert sorted(rank["seen_per_epoch"][0]) == sorted(rank["train_indices"])
    assert not set(ranks[0]["train_indices"]) & set(ranks[1]["train_indices"])


def test_streamed_input_uses_every_example_once_per_epoch_with_uneven_shards(spark, small_mnist,
                                                                             tmp_path):
    """train.input=stream (each rank re-reads its row groups every epoch, 2 decoded at a time)
    with rank 1 cut to 500 examples: equal steps, each rank's shard handed to the model once
    per epoch in a new order, disjoint shards, and the model learns."""
    out, _ = small_mnist
    config = job_config(out, tmp_path, "train.epochs=2", "train.input=stream",
                        "train.stream_window=2")
    summary = run_training(spark, config, extra_settings={
        "shard_limits": {"1": 500}, "return_shard_indices": True})
    ranks = sorted(summary["ranks"], key=lambda r: r["rank"])
    assert [r["input"] for r in ranks] == ["stream", "stream"]
    assert ranks[1]["train_shard_size"] == 500 < ranks[0]["train_shard_size"]
    assert ranks[0]["steps_per_epoch"] == ranks[1]["steps_per_epoch"]
    for rank in ranks:
        assert len(rank["train_indices"]) == rank["train_shard_size"]
        for seen in rank["seen_per_epoch"]:
            assert sorted(seen) == sorted(rank["train_indices"])
        assert rank["seen_per_epoch"][0] != rank["seen_per_epoch"][1]
    assert not set(ranks[0]["train_indices"]) & set(ranks[1]["train_indices"])
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert summary["test_accuracy"] > 0.8


def test_killed_worker_fails_fast_then_resume_continues_the_same_run(spark, small_mnist,
                                                                       tmp_path):
    out, _ = small_mnist
    checkpoints = tmp_path / "ckpt"
    # 4 steps per call, so the kill after batch 10 lands mid-epoch (batch 11 of 29)
    config = job_config(out, tmp_path, "train.epochs=3", f"train.checkpoint_dir={checkpoints}",
                        "train.steps_per_execution=4")
    # rank 1 is SIGKILLed in the middle of the second epoch (default controller: the
    # stack's, MPI; the Gloo case is the next test)
    client, failed = kill_rank_1_mid_epoch(
        spark, config, tmp_path, epoch=1,
        message=KILLED_UNDER_MPI if stack_controller() == "mpi" else KILLED_UNDER_GLOO)
    assert failed.info.status == "FAILED"
    latest = json.loads((checkpoints / (checkpoints / "latest").read_text().strip()
                         / "meta.json").read_text())
    assert latest["epoch"] == 1 and latest["mlflow_run_id"] == failed.info.run_id

    assert latest["shape"] == {"world_size": 2, "batch_size": 32, "steps_per_epoch": 29}
    # Without resume the directory is refused (it belongs to the interrupted run) ...
    with pytest.raises(ValueError, match="set train.resume=true to continue it"):
        run_training(spark, config)
    # ... and so is a resume with another number of ranks or batch size (the schedule's
    # table and the optimizer's step count were laid out for 2 x 32), before any rank starts.
    config.train.resume = True
    for setting, wrong, message in (("num_proc", 1, "trained with 2 ranks, this job has 1"),
                                    ("batch_size", 16, "trained with 32 images per rank per "
                                                       "step, this job has 16")):
        kept = getattr(config.train, setting)
        setattr(config.train, setting, wrong)
        with pytest.raises(ValueError, match=f"{message}; resume with train.{setting}={kept}"):
            run_training(spark, config)
        setattr(config.train, setting, kept)
    # ... and so is a resume that would train something else than the run's params say (the
    # checkpoint stores the train.* settings that define the training), naming each change.
    assert latest["recipe"]["learning_rate"] == config.train.learning_rate
    assert "epochs" not in latest["recipe"] and "num_proc" not in latest["recipe"]
    config.train.learning_rate, config.train.optimizer = 0.1, "sgd"
    with pytest.raises(ValueError, match=r"ckpt: resume must train what the checkpointed run "
                                         r"trained; changed: train.learning_rate: 0.001 in the "
                                         r"checkpointed run, 0.1 now; train.optimizer: 'adam' "
                                         r"in the checkpointed run, 'sgd' now\. Set these back"):
        run_training(spark, config)
    config.train.learning_rate, config.train.optimizer = 0.001, "adam"
    # ... and a training split that now gives another number of steps per epoch is refused by
    # the ranks, which count the steps (the checkpoint says 30 for this one attempt).
    meta_path = checkpoints / (checkpoints / "latest").read_text().strip() / "meta.json"
    saved = meta_path.read_text()
    meta_path.write_text(json.dumps({**latest, "shape": {**latest["shape"],
                                                         "steps_per_epoch": 30}}))
    with pytest.raises(WorkerError, match="rank 0: ValueError: resume: the checkpoint's run had "
                                          "30 steps per epoch, this job has 29 "):
        run_training(spark, config)
    meta_path.write_text(saved)
    refused = client.get_run(failed.info.run_id)
    assert refused.info.status == "FAILED" and "30 steps per epoch" in refused.data.tags["error"]
    # ... with resume (given as a file:// URI this time, which the ranks also accept) the
    # same run picks up at epoch 2 with the saved optimizer state.
    config.train.checkpoint_dir = checkpoints.as_uri()
    summary = run_training(spark, config)
    assert summary["run_id"] == failed.info.run_id
    run = client.get_run(failed.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_epoch"] == "1"
    # the last attempt's error is kept aside, not left as this finished run's error
    assert "error" in failed.data.tags and "error" not in run.data.tags
    assert run.data.tags["resumed_after_error"] == refused.data.tags["error"]
    assert not [key for key in run.data.tags if key.startswith("error.rank")]
    assert [r["first_epoch"] for r in summary["ranks"]] == [1, 1]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy"))
    assert steps == [1, 2, 3]
    assert len(summary["history"]["loss"]) == 3
    # one wall-time point per job that finished: the resumed one, at its last epoch
    assert [m.step for m in client.get_metric_history(run.info.run_id,
                                                      "train_wall_seconds")] == [3]
    # The clock continues across the resume: epoch 2 (the resumed job's first) ends at least
    # its own duration after the interrupted job's last completed epoch.
    elapsed, durations = summary["history"]["elapsed_seconds"], summary["history"]["epoch_seconds"]
    assert elapsed[1] >= elapsed[0] + durations[1] and elapsed[2] >= elapsed[1] + durations[2]
    assert summary["test_accuracy"] > 0.8
    with pytest.raises(ValueError, match="already holds all 3 epochs"):
        run_training(spark, config)
    # More epochs, but a target the finished epochs already met: nothing to resume.
    config.train.epochs, config.train.target_accuracy = 5, 0.5
    first = next(i + 1 for i, v in enumerate(summary["history"]["val_accuracy"]) if v >= 0.5)
    with pytest.raises(ValueError, match=f"reached train.target_accuracy=0.5 \\(val_accuracy\\) "
                                         f"at epoch {first}"):
        run_training(spark, config)


def test_killed_worker_ends_a_gloo_job_too(spark, small_mnist, tmp_path):
    out, _ = small_mnist
    config = job_config(out, tmp_path, "train.epochs=2", "train.controller=gloo",
                        "train.steps_per_execution=4")
    _, failed = kill_rank_1_mid_epoch(spark, config, tmp_path, epoch=0,
                                      message=KILLED_UNDER_GLOO)
    assert failed.info.status == "FAILED" and failed.data.tags["controller"] == "gloo"


def test_resume_refuses_a_run_that_early_stopping_ended(tmp_path):
    from nnfund_spark.config import load_config
    from nnfund_spark.training.launcher import _refuse_finished_by_history

    train = load_config(None, ["train.early_stopping_patience=2", "train.epochs=9",
                               f"train.checkpoint_dir={tmp_path}"]).train
    improving = {"history": {"val_loss": [0.9, 0.5, 0.4, 0.3]}}
    _refuse_finished_by_history(train, improving)  # still improving: resumable
    stalled = {"history": {"val_loss": [0.9, 0.5, 0.6, 0.7]}}
    with pytest.raises(ValueError, match="early stopping already ended the run "
                                         r"\(val_loss has not improved for 2 epochs\)"):
        _refuse_finished_by_history(train, stalled)


def test_resume_errors_name_the_checkpoint_directory_and_what_to_do(tmp_path):
    from nnfund_spark.training.launcher import resume_point

    train = load_config(None, ["train.resume=true", "train.epochs=3"]).train
    with pytest.raises(ValueError, match="train.resume=true needs train.checkpoint_dir"):
        resume_point(train)
    train.checkpoint_dir = str(tmp_path / "ckpt")
    advice = (r"; set train.checkpoint_dir to the interrupted run's checkpoint directory, or "
              r"train.resume=false to start a new run")
    with pytest.raises(ValueError, match=r"train.resume=true but .*ckpt does not exist" + advice):
        resume_point(train)
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(ValueError, match=r"train.resume=true but .*ckpt holds no checkpoint"
                                         + advice):
        resume_point(train)
    # 'latest' naming a checkpoint that is gone, or whose meta.json is damaged
    (tmp_path / "ckpt" / "latest").write_text("epoch-0002\n")
    with pytest.raises(ValueError, match=r"ckpt: 'latest' names the checkpoint 'epoch-0002', "
                                         r"whose meta.json cannot be read \(.*No such file"):
        resume_point(train)
    (tmp_path / "ckpt" / "epoch-0002").mkdir()
    (tmp_path / "ckpt" / "epoch-0002" / "meta.json").write_text('{"epoch": 2, "hist')
    with pytest.raises(ValueError, match=r"whose meta.json cannot be read \(Unterminated"):
        resume_point(train)
    # ... and a run that is not resuming is refused the directory just the same
    train.resume = False
    with pytest.raises(ValueError, match="meta.json cannot be read"):
        resume_point(train)


def test_checkpoints_keep_the_two_newest_and_latest_names_a_complete_one(tmp_path):
    import tensorflow as tf

    from nnfund_spark.training import checkpoint

    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    model.compile("adam", "mse")
    model.fit(tf.zeros((4, 3)), tf.zeros((4, 2)), verbose=0)
    for epoch in (1, 2, 3):
        checkpoint.save(tmp_path, epoch, model, {"loss": [0.0] * epoch}, "run", shape={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002", "epoch-0003", "latest"]
    meta = checkpoint.latest(tmp_path)
    assert meta["epoch"] == 3 and meta["path"] == str(tmp_path / "epoch-0003")
    # A write that fails half-way leaves the previous checkpoint the latest, and no staging.
    with pytest.raises(AttributeError):  # a "model" without an optimizer
        checkpoint.save(tmp_path, 4, object(), {}, "run")
    assert checkpoint.latest(tmp_path)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002", "epoch-0003", "latest"]


def test_each_rank_pins_the_gpu_spark_assigned(small_mnist, tmp_path):
    """local-cluster with a fake GPU discovery script: Spark hands each barrier task a GPU
    address and the rank selects exactly that one (no GPU here, so nothing is really used)."""
    out, _ = small_mnist
    script = tmp_path / "gpus.sh"
    script.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0", "1"]}\'\n')
    script.chmod(0o755)
    gpu_conf = {"spark.worker.resource.gpu.amount": 2,
                "spark.worker.resource.gpu.discoveryScript": str(script),
                "spark.executor.resource.gpu.amount": 2,
                "spark.executor.resource.gpu.discoveryScript": str(script),
                "spark.task.resource.gpu.amount": 1,
                "spark.executor.cores": 2, "spark.ui.enabled": "false"}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run(
        [sys.executable, "-m", "nnfund_spark.cli", "train", "--master", "local-cluster[1,2,2048]",
         "--set", f"data.output_dir={out}", "--set", "train.num_proc=0",
         "--set", "train.epochs=1", "--set", "train.batch_size=64",
         "--set", f"tracking.tracking_uri={uri}", "--set", "tracking.experiment=gpus",
         "--set", "tracking.log_artifacts=false", "--set", "tracking.log_model=false",
         "--set", "spark.conf=" + json.dumps(gpu_conf)],
        capture_output=True, text=True, timeout=400, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gpus").experiment_id])
    assert run.data.params["world_size"] == "2"  # num_proc=0: one rank per GPU slot
    # auto chose the stack's controller with the executor a process of its own, where MPI is
    # chosen only after the executors answer the probe for mpirun's daemon
    assert run.data.tags["controller"] == stack_controller()
    ranks = json.load(open(client.download_artifacts(run.info.run_id, "ranks.json")))
    assert sorted(r["assigned_gpus"][0] for r in ranks) == ["0", "1"]
    for rank in ranks:
        assert rank["gpu_source"] == "spark"
        assert rank["gpu_index"] == int(rank["assigned_gpus"][0])
        assert rank["visible_gpus"] == 0 and rank["device"] == "CPU"


def test_gradient_accumulation_exchanges_every_k_batches(spark, small_mnist, tmp_path):
    """train.backward_passes_per_step=2: ranks sum two batches locally, then average across
    ranks and update once; the ranks still end with identical weights and the model learns."""
    out, _ = small_mnist
    config = job_config(out, tmp_path, "train.epochs=2", "train.backward_passes_per_step=2")
    summary = run_training(spark, config)
    ranks = summary["ranks"]
    assert [r["backward_passes_per_step"] for r in ranks] == [2, 2]
    assert all(r["allreduce_gradients"] and r["horovod"] for r in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert summary["test_accuracy"] > 0.8
    assert summary["history"]["loss"][1] < summary["history"]["loss"][0]


ACCUMULATION_CHECK = r"""
import json
import numpy as np
import tensorflow as tf
import horovod.tensorflow.keras as hvd
from nnfund_spark.training.worker import distribute_optimizer

hvd.init()
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 20)).astype(np.float32)
y = rng.integers(0, 3, 256)

def fit(batch, k, steps_per_execution=1):
    tf.keras.utils.set_random_seed(1)
    model = tf.keras.Sequential([tf.keras.Input((20,)), tf.keras.layers.Dense(16, "relu"),
                                 tf.keras.layers.Dense(3)])
    plain = tf.keras.optimizers.SGD(0.1)
    optimizer = distribute_optimizer(plain, hvd.size(), k)
    model.compile(optimizer, tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)
    model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0)
    return model.get_weights(), optimizer is plain

every_step, kept_plain = fit(64, 1)
accumulated, wrapped_plain = fit(16, 4)
# 16 local batches an epoch, 5 per call of the train function: the sums straddle the calls.
looped, _ = fit(16, 4, steps_per_execution=5)

def difference(weights):
    return max(float(np.abs(a - b).max()) for a, b in zip(every_step, weights))

print(json.dumps({"size": hvd.size(), "kept_plain": kept_plain, "wrapped_plain": wrapped_plain,
                  "max_difference": difference(accumulated),
                  "max_difference_looped": difference(looped)}))
"""


def test_accumulating_k_batches_equals_one_batch_k_times_larger():
    """Four accumulated batches of 16 give the same SGD weights as batches of 64 (same order),
    also when five steps run per call of the train function (steps_per_execution); a single rank without accumulation keeps the plain optimizer (no allreduce at all)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", ACCUMULATION_CHECK], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["size"] == 1
    assert result["kept_plain"] is True and result["wrapped_plain"] is False
    assert result["max_difference"] < 1e-5
    assert result["max_difference_looped"] < 1e-5


def test_a_rank_whose_error_cannot_be_tagged_still_raises_its_own(monkeypatch, tmp_path, capfd):
    """Recording a rank's error on the MLflow run is best effort: when the store cannot be
    reached, the rank's own exception still propagates, and stderr says why the tag is missing."""
    from nnfund_spark.training import worker

    def fails(settings):
        raise KeyError("history")
    monkeypatch.setattr(worker, "_train", fails)
    unreachable = f"sqlite:///{tmp_path}/no-such-directory/mlflow.db"
    with pytest.raises(KeyError, match="history"):
        worker.train_worker({"mlflow_run_id": "0" * 32, "tracking_uri": unreachable})
    assert "could not record its error on the MLflow run" in capfd.readouterr().err


def test_rank_seeds_are_unrelated_across_ranks_and_resumes():
    from nnfund_spark.training.worker import derived_seed

    assert derived_seed(42, 0, 0) == 42  # rank 0's initial weights: plain Keras' with seed 42
    seeds = {(rank, first): derived_seed(42, rank, first) for rank in range(8)
             for first in range(4)}
    assert len(set(seeds.values())) == len(seeds)  # no two ranks or resumes share a stream
    assert derived_seed(42, 1, 0) == derived_seed(42, 1, 0) != derived_seed(43, 1, 0)
    # the augmentation layers take base + 1..5: no layer of one rank shares another's seed
    layer_seeds = [{seeds[rank, 0] + k for k in range(1, 6)} for rank in range(8)]
    assert sum(len(s) for s in layer_seeds) == len(set().union(*layer_seeds))
