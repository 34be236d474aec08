"""Keras callbacks used inside Horovod ranks. Imported on executors only (they need TF)."""
from __future__ import annotations

import sys
import time

import numpy as np
import tensorflow as tf


def sharded_evaluate(model, images, labels, num_classes: int, collectives,
                     batch_size: int = 512, split: str = "evaluation") -> dict:
    """Exact loss, accuracy and confusion matrix over the union of all ranks' shards: sums and
    counts are allreduced (``collectives``: training.collectives), so unequal shard sizes are
    weighted correctly. Every rank must call it (it is a collective), even with an empty
    shard."""
    loss_sum = 0.0
    confusion = np.zeros((num_classes, num_classes), np.float64)
    if images is not None and len(labels):
        probabilities = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
        picked = probabilities[np.arange(len(labels)), labels]
        loss_sum = float(-np.log(np.clip(picked, 1e-7, 1.0)).sum())
        np.add.at(confusion, (labels, probabilities.argmax(axis=1)), 1)
    packed = np.concatenate([[loss_sum], confusion.ravel()])
    totals = collectives.allreduce_sum(packed, name=f"sharded_evaluate_{sharded_evaluate.calls}")
    sharded_evaluate.calls += 1
    confusion = totals[1:].reshape(num_classes, num_classes).round().astype(np.int64)
    count = int(confusion.sum())
    if count == 0:
        raise ValueError(f"the {split} split is empty on every rank")
    return {"loss": float(totals[0]) / count, "accuracy": float(np.trace(confusion)) / count,
            "count": count, "confusion": confusion.tolist()}


sharded_evaluate.calls = 0


def averaged_state(model) -> list:
    """The model's floating-point state outside the gradients: batch norm's moving mean and
    variance. Each rank updates it from its own batches, so it drifts apart across ranks."""
    return [v for v in model.non_trainable_variables if v.dtype.is_floating]


class AverageModelState(tf.keras.callbacks.Callback):
    """At every epoch end, before any evaluation or checkpoint, set the model's non-trainable
    state (batch norm statistics) to its mean over the ranks: then every rank holds the model
    rank 0 checkpoints and logs, and the sharded evaluation measures that model."""

    def __init__(self, collectives):
        super().__init__()
        self.collectives = collectives

    def on_epoch_end(self, epoch, logs=None):
        self.collectives.average_variables(averaged_state(self.model),
                                           name=f"model_state_{epoch}")


class ShardedEvaluation(tf.keras.callbacks.Callback):
    """Evaluate on each rank's validation shard at epoch end and put exact totals in the logs."""

    def __init__(self, shard, num_classes: int, collectives, batch_size: int = 512,
                 prefix: str = "val_"):
        super().__init__()
        self.images, self.labels = shard
        self.num_classes = num_classes
        self.collectives = collectives
        self.batch_size = batch_size
        self.prefix = prefix
        self.last, self.last_epoch = None, None

    def on_epoch_end(self, epoch, logs=None):
        result = sharded_evaluate(self.model, self.images, self.labels, self.num_classes,
                                  self.collectives, self.batch_size,
                                  "validation" if self.prefix == "val_" else "test")
        self.last, self.last_epoch = result, epoch
        if logs is not None:
            logs[f"{self.prefix}loss"] = result["loss"]
            logs[f"{self.prefix}accuracy"] = result["accuracy"]


@tf.keras.utils.register_keras_serializable(package="nnfund_spark")
class StepTableRate(tf.keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate as a table indexed by the optimizer's step count, computed once from a
    step -> rate function (nnfund_spark.training.schedules); past the end it holds the last rate.

    It runs inside the compiled train step, so training needs no per-batch Python callback
    (any batch-level callback makes Keras call back into Python after every step). Horovod's
    gradient accumulation counts every local batch as a step, as the table does. Registered
    with Keras because hvd.DistributedOptimizer rebuilds the optimizer from its config."""

    def __init__(self, rates):
        super().__init__()
        self.rates = [float(rate) for rate in rates]
        if not self.rates:
            raise ValueError("a learning-rate table needs at least one step")
        self._table = tf.constant(self.rates, tf.float32)

    @classmethod
    def from_function(cls, rate_at, steps: int) -> "StepTableRate":
        return cls([rate_at(step) for step in range(max(1, steps))])

    def __call__(self, step):
        last = len(self.rates) - 1
        index = tf.minimum(tf.cast(step, tf.int32), last)
        return tf.gather(self._table, index)

    def rate_after(self, steps_done: int) -> float:
        """The rate the last of ``steps_done`` steps used (the first step's before any)."""
        return self.rates[min(max(steps_done - 1, 0), len(self.rates) - 1)]

    def get_config(self):
        return {"rates": self.rates}


class LearningRateLogger(tf.keras.callbacks.Callback):
    """Reports the rate the epoch's last step used as ``learning_rate`` in the epoch logs."""

    def __init__(self, schedule: StepTableRate):
        super().__init__()
        self.schedule = schedule

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            steps_done = int(self.model.optimizer.iterations.numpy())
            logs["learning_rate"] = self.schedule.rate_after(steps_done)


class DeadReluMonitor(tf.keras.callbacks.Callback):
    """Rank 0: the fraction of ReLU units that output zero for every image of a fixed
    validation batch, logged as dead_relu_fraction each epoch."""

    def __init__(self, images):
        super().__init__()
        self.images = images.astype(np.float32)

    def on_epoch_end(self, epoch, logs=None):
        from nnfund_spark.training.metrics import dead_relu_fraction
        if logs is not None:
            logs["dead_relu_fraction"] = dead_relu_fraction(self.model, self.images)["dead_fraction"]


# The metric train.target_accuracy is checked against, by train.target_split.
TARGET_METRIC = {"validation": "val_accuracy", "test": "test_accuracy"}


class EarlyStopper:
    """Stop when `metric` has not improved for `patience` epochs (patience 0: never)."""

    def __init__(self, metric: str, patience: int):
        self.metric = metric
        self.patience = patience

    def should_stop(self, history: dict) -> bool:
        values = history.get(self.metric, [])
        if not self.patience or len(values) <= self.patience:
            return False
        # A nan (a diverged epoch) is never an improvement; if every epoch is nan, none was.
        finite = [(epoch, value) for epoch, value in enumerate(values) if value == value]
        if not finite:
            return True
        better = min if self.metric.endswith("loss") else max
        best_epoch = better(finite, key=lambda pair: pair[1])[0]  # the first, on a tie
        return len(values) - 1 - best_epoch >= self.patience


class EpochClock(tf.keras.callbacks.Callback):
    """Times the training part of each epoch: placed before the evaluation callbacks, it
    stamps epoch_seconds and images_per_second into the epoch's logs before validation (or a
    per-epoch test evaluation) runs, so those figures are training throughput."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = seconds = time.time() - self.started
            logs["images_per_second"] = self.images_per_epoch / seconds


class EpochLogger(tf.keras.callbacks.Callback):
    """One line per epoch on rank 0: loss, accuracy, validation, images/s (from EpochClock's
    stamp when one ran earlier in the list, else timed here)."""

    def __init__(self, images_per_epoch: int, verbose: int = 2, job_started: float | None = None):
        # images_per_epoch counts all ranks: every example of the train split once.
        # job_started: the driver's start time; elapsed_seconds is logged from it.
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.verbose = verbose
        self.job_started = job_started
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - self.started
        if logs is not None:
            seconds = logs.setdefault("epoch_seconds", seconds)
            logs.setdefault("images_per_second", self.images_per_epoch / seconds)
            if self.job_started:
                logs["elapsed_seconds"] = time.time() - self.job_started
        if self.verbose:
            # One write per line: under mpirun each write is tagged ("[1,0]<stderr>:"), and
            # print() writes the newline separately, which left a stray tag after the line.
            sys.stderr.write(epoch_line(epoch, logs or {}, self.images_per_epoch, seconds) + "\n")
            sys.stderr.flush()


def epoch_line(epoch: int, logs: dict, images: int, seconds: float) -> str:
    """Rank 0's one-line epoch summary; metrics the epoch did not compute (no validation
    split, no per-epoch test evaluation) are left out rather than printed as nan."""
    parts = [f"epoch {epoch + 1}:"]
    for key, label in (("loss", "loss"), ("accuracy", "acc"), ("val_loss", "val_loss"),
                       ("val_accuracy", "val_acc"), ("test_accuracy", "test_acc")):
        value = logs.get(key)
        if value is not None and value == value:  # skip missing and nan
            parts.append(f"{label} {value:.4f}")
    if logs.get("learning_rate") is not None:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    parts.append(f"{images / seconds:.0f} img/s {seconds:.1f}s")
    return " ".join(parts)


class MlflowEpochLogger(tf.keras.callbacks.Callback):
    """Rank 0 only: per-epoch metrics into the run the driver opened (step = epoch, 1-based)."""

    def __init__(self, tracking_uri: str, run_id: str):
        super().__init__()
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id

    def on_epoch_end(self, epoch, logs=None):
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, epoch + 1)
                   for key, value in (logs or {}).items() if np.isscalar(value)]
        self.client.log_batch(self.run_id, metrics=metrics)


class FaultInjection(tf.keras.callbacks.Callback):
    """Test hook: kill this rank's process (SIGKILL, no cleanup, like an OOM kill or a lost
    executor) or raise, at a given epoch and batch. Only added when settings ask for it.

    With steps_per_execution > 1 Keras reports only every n-th batch, so it fires at the first
    batch reported at or after the given one."""

    def __init__(self, rank: int, target_rank: int, epoch: int, batch: int, mode: str = "kill"):
        super().__init__()
        self.active = rank == target_rank
        self.at = (epoch, batch)
        self.mode = mode
        self.epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.active and self.epoch == self.at[0] and batch >= self.at[1]:
            if self.mode == "kill":
                import os
                import signal
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure at epoch {self.epoch} batch {batch}")
