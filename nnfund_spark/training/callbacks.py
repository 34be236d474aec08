"""Keras callbacks used inside Horovod ranks. Imported on executors only (they need TF)."""
from __future__ import annotations

import sys
import time

import numpy as np
import tensorflow as tf


def sharded_evaluate(model, images, labels, batch_size: int = 512) -> dict:
    """Exact loss/accuracy over the union of all ranks' shards (sums are allreduced, so unequal
    shard sizes are weighted correctly). Every rank must call it: it is a collective."""
    import horovod.tensorflow as hvd_tf

    loss_sum, correct, count = 0.0, 0.0, 0.0
    if images is not None and len(labels):
        probabilities = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
        picked = probabilities[np.arange(len(labels)), labels]
        loss_sum = float(-np.log(np.clip(picked, 1e-7, 1.0)).sum())
        correct = float((probabilities.argmax(axis=1) == labels).sum())
        count = float(len(labels))
    totals = hvd_tf.allreduce(tf.constant([loss_sum, correct, count], tf.float64), op=hvd_tf.Sum,
                              name=f"sharded_evaluate_{sharded_evaluate.calls}")
    sharded_evaluate.calls += 1
    loss_sum, correct, count = totals.numpy().tolist()
    if count == 0:
        raise ValueError("evaluation split is empty on every rank")
    return {"loss": loss_sum / count, "accuracy": correct / count, "count": int(count)}


sharded_evaluate.calls = 0


class ShardedEvaluation(tf.keras.callbacks.Callback):
    """Evaluate on each rank's validation shard at epoch end and put exact totals in the logs."""

    def __init__(self, shard, batch_size: int = 512, prefix: str = "val_"):
        super().__init__()
        self.images, self.labels = shard
        self.batch_size = batch_size
        self.prefix = prefix

    def on_epoch_end(self, epoch, logs=None):
        result = sharded_evaluate(self.model, self.images, self.labels, self.batch_size)
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
