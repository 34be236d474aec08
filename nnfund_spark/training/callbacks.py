"""Keras callbacks used inside Horovod ranks. Imported on executors only (they need TF)."""
from __future__ import annotations

import sys
import time

import numpy as np
import tensorflow as tf


def sharded_evaluate(model, images, labels, num_classes: int, batch_size: int = 512) -> dict:
    """Exact loss, accuracy and confusion matrix over the union of all ranks' shards: sums and
    counts are allreduced, so unequal shard sizes are weighted correctly. Every rank must call
    it (it is a collective), even with an empty shard."""
    import horovod.tensorflow as hvd_tf

    loss_sum = 0.0
    confusion = np.zeros((num_classes, num_classes), np.float64)
    if images is not None and len(labels):
        probabilities = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
        picked = probabilities[np.arange(len(labels)), labels]
        loss_sum = float(-np.log(np.clip(picked, 1e-7, 1.0)).sum())
        np.add.at(confusion, (labels, probabilities.argmax(axis=1)), 1)
    packed = np.concatenate([[loss_sum], confusion.ravel()])
    totals = hvd_tf.allreduce(tf.constant(packed, tf.float64), op=hvd_tf.Sum,
                              name=f"sharded_evaluate_{sharded_evaluate.calls}").numpy()
    sharded_evaluate.calls += 1
    confusion = totals[1:].reshape(num_classes, num_classes).round().astype(np.int64)
    count = int(confusion.sum())
    if count == 0:
        raise ValueError("evaluation split is empty on every rank")
    return {"loss": float(totals[0]) / count, "accuracy": float(np.trace(confusion)) / count,
            "count": count, "confusion": confusion.tolist()}


sharded_evaluate.calls = 0


class ShardedEvaluation(tf.keras.callbacks.Callback):
    """Evaluate on each rank's validation shard at epoch end and put exact totals in the logs."""

    def __init__(self, shard, num_classes: int, batch_size: int = 512, prefix: str = "val_"):
        super().__init__()
        self.images, self.labels = shard
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.prefix = prefix

    def on_epoch_end(self, epoch, logs=None):
        result = sharded_evaluate(self.model, self.images, self.labels, self.num_classes,
                                  self.batch_size)
        if logs is not None:
            logs[f"{self.prefix}loss"] = result["loss"]
            logs[f"{self.prefix}accuracy"] = result["accuracy"]


class WarmupCosineSchedule(tf.keras.callbacks.Callback):
    """Per-step learning rate: linear warm-up, then cosine decay (see worker.cosine_lr)."""

    def __init__(self, peak_lr, steps_per_epoch, epochs, warmup_epochs, final_fraction):
        super().__init__()
        self.peak_lr = peak_lr
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * epochs
        self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        self.final_fraction = final_fraction
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        from nnfund_spark.training.worker import cosine_lr
        step = self.epoch * self.steps_per_epoch + batch
        lr = cosine_lr(step, self.peak_lr, self.total_steps, self.warmup_steps, self.final_fraction)
        self.model.optimizer.learning_rate.assign(lr)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())


class EpochLogger(tf.keras.callbacks.Callback):
    """One line per epoch on rank 0: loss, accuracy, validation, images/s."""

    def __init__(self, images_per_epoch: int, verbose: int = 2):
        # images_per_epoch counts all ranks: every example of the train split once.
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.verbose = verbose
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - self.started
        if logs is not None:
            logs["epoch_seconds"] = seconds
            logs["images_per_second"] = self.images_per_epoch / seconds
        if self.verbose:
            logs = logs or {}
            print(f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f} "
                  f"acc {logs.get('accuracy', float('nan')):.4f} "
                  f"val_loss {logs.get('val_loss', float('nan')):.4f} "
                  f"val_acc {logs.get('val_accuracy', float('nan')):.4f} "
                  f"lr {logs.get('learning_rate', float('nan')):.2e} "
                  f"{self.images_per_epoch / seconds:.0f} img/s {seconds:.1f}s",
                  file=sys.stderr, flush=True)


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
    executor) or raise, at a given epoch and batch. Only added when settings ask for it."""

    def __init__(self, rank: int, target_rank: int, epoch: int, batch: int, mode: str = "kill"):
        super().__init__()
        self.active = rank == target_rank
        self.at = (epoch, batch)
        self.mode = mode
        self.epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.active and (self.epoch, batch) == self.at:
            if self.mode == "kill":
                import os
                import signal
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure at epoch {self.epoch} batch {batch}")
