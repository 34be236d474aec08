"""The launcher under stress: uneven shards, a worker killed mid-epoch, resume, fake GPUs."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnfund_spark.config import load_config
from nnfund_spark.training.launcher import run_training

REPO = Path(__file__).resolve().parents[1]


def job_config(out, tmp_path, *extra):
    return load_config(None, [
        f"data.output_dir={out}", "train.num_proc=2", "train.batch_size=32",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=launcher",
        "tracking.log_artifacts=false", "tracking.log_model=false", *extra])


def test_uneven_shards_run_equal_steps_and_use_every_example(spark, small_mnist, tmp_path):
    out, _ = small_mnist
    config = job_config(out, tmp_path, "train.epochs=1")
    summary = run_training(spark, config, extra_settings={
        "shard_limits": {"1": 500}, "return_shard_indices": True})
    ranks = sorted(summary["ranks"], key=lambda r: r["rank"])
    assert ranks[1]["train_shard_size"] == 500 < ranks[0]["train_shard_size"]
    assert ranks[0]["steps_per_epoch"] == ranks[1]["steps_per_epoch"]
    for rank in ranks:
        assert len(rank["seen_per_epoch"][0]) == rank["train_shard_size"]


def test_killed_worker_fails_fast_then_resume_continues_the_same_run(spark, small_mnist,
                                                                       tmp_path):
    from mlflow.tracking import MlflowClient

    out, _ = small_mnist
    checkpoints = tmp_path / "ckpt"
    config = job_config(out, tmp_path, "train.epochs=3", f"train.checkpoint_dir={checkpoints}")
    started = time.time()
    with pytest.raises(Exception) as err:
        # rank 1 is SIGKILLed in the middle of the second epoch
        run_training(spark, config, extra_settings={
            "fault_injection": {"target_rank": 1, "epoch": 1, "batch": 10, "mode": "kill"}})
    assert time.time() - started < 240, "a dead worker must end the job, not hang it"
    assert "exit" in str(err.value).lower() or "rank" in str(err.value).lower()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (failed,) = client.search_runs([client.get_experiment_by_name("launcher").experiment_id])
    assert failed.info.status == "FAILED"
    latest = json.loads((checkpoints / (checkpoints / "latest").read_text().strip()
                         / "meta.json").read_text())
    assert latest["epoch"] == 1 and latest["mlflow_run_id"] == failed.info.run_id

    # Without resume the directory is refused (it belongs to the interrupted run) ...
    with pytest.raises(ValueError, match="set train.resume=true to continue it"):
        run_training(spark, config)
    # ... with resume the same run picks up at epoch 2 with the saved optimizer state.
    config.train.resume = True
    summary = run_training(spark, config)
    assert summary["run_id"] == failed.info.run_id
    run = client.get_run(failed.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_epoch"] == "1"
    assert [r["first_epoch"] for r in summary["ranks"]] == [1, 1]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy"))
    assert steps == [1, 2, 3]
    assert len(summary["history"]["loss"]) == 3
    assert summary["test_accuracy"] > 0.8
    with pytest.raises(ValueError, match="already holds all 3 epochs"):
        run_training(spark, config)


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
    ranks = json.load(open(client.download_artifacts(run.info.run_id, "ranks.json")))
    assert sorted(r["assigned_gpus"][0] for r in ranks) == ["0", "1"]
    for rank in ranks:
        assert rank["gpu_source"] == "spark"
        assert rank["gpu_index"] == int(rank["assigned_gpus"][0])
        assert rank["visible_gpus"] == 0 and rank["device"] == "CPU"
