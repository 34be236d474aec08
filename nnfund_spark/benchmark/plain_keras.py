"""The plain single-process Keras baselines of ``nnfund-spark benchmark``.

Each runs as its own process, so its clock starts before TensorFlow is imported, its thread
and core settings apply from the start, and nothing of the benchmark driver (Spark, MLflow)
shares it:

    python -m nnfund_spark.benchmark.plain_keras time-to-accuracy --json OUT [options]
    python -m nnfund_spark.benchmark.plain_keras throughput --json OUT [options]

Both read exactly the images a prepared dataset holds (``data.prepare.split_arrays``: the same
source, limit, split seed and members) from the raw files, in memory.

- ``time-to-accuracy``: the keras-io ``mnist_convnet`` recipe (conv 32 → pool → conv 64 →
  pool → flatten → dropout 0.5 → dense 10 softmax; Adam at Keras' default rate; batch 128),
  trained one epoch at a time and evaluated on the test split after each epoch until the test
  accuracy reaches ``--target`` or ``--max-epochs`` (15, the recipe's own) have run.
- ``throughput``: a model of this package's zoo fitted from NumPy arrays for a fixed number of
  epochs, optionally bound to given cores with a given thread count and with a given number of
  steps per call of the train function: the "same model fed from memory" that the launcher's
  figures are divided by.

The JSON written holds absolute ``time.time()`` stamps (process start, end of each epoch, when
the target was reached), so the caller can measure both sides of a comparison from the moment
it launched them.
"""
from __future__ import annotations

import time

PROCESS_STARTED = time.time()  # before TensorFlow or NumPy are imported

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def keras_io_convnet(input_shape, num_classes: int):
    """The keras-io mnist_convnet model, written out as published (input scaled to [0, 1] by
    the caller, as the recipe does with ``x / 255``)."""
    import tensorflow as tf

    layers = tf.keras.layers
    return tf.keras.Sequential([
        tf.keras.Input(shape=input_shape),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ], name="keras_io_mnist_convnet")


def _load(args) -> dict:
    from nnfund_spark.config import DataConfig
    from nnfund_spark.data.prepare import split_arrays

    return split_arrays(DataConfig(source=args.source, raw_dir=args.raw_dir, limit=args.limit,
                                   validation_fraction=args.validation_fraction, seed=args.seed))


def _configure(tf, args) -> None:
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.keras.utils.set_random_seed(args.seed)


def _epoch_clock():
    """A Keras callback recording when each epoch ended (absolute time) in ``.ended``."""
    import tensorflow as tf

    class EpochClock(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ended = []

        def on_epoch_end(self, epoch, logs=None):
            self.ended.append(time.time())

    return EpochClock()


def time_to_accuracy(args) -> dict:
    import numpy as np
    import tensorflow as tf

    _configure(tf, args)
    splits = _load(args)
    (_, x_train, y_train), (_, x_test, y_test) = splits["train"], splits["test"]
    x_train = x_train.astype(np.float32) / 255.0
    x_test = x_test.astype(np.float32) / 255.0
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    y_train_hot = tf.keras.utils.to_categorical(y_train, num_classes)
    y_test_hot = tf.keras.utils.to_categorical(y_test, num_classes)
    data_loaded = time.time()
    model = keras_io_convnet(x_train.shape[1:], num_classes)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    epochs, reached = [], None
    for epoch in range(args.max_epochs):
        started = time.time()
        model.fit(x_train, y_train_hot, batch_size=args.batch_size, epochs=1, verbose=0)
        trained = time.time()
        _, accuracy = model.evaluate(x_test, y_test_hot, batch_size=1000, verbose=0)
        epochs.append({"epoch": epoch + 1, "train_seconds": trained - started,
                       "ended_at": time.time(), "test_accuracy": float(accuracy)})
        if accuracy >= args.target:
            reached = epochs[-1]
            break
    return {"mode": "time-to-accuracy", "recipe": "keras-io mnist_convnet",
            "process_started": PROCESS_STARTED, "data_loaded_at": data_loaded,
            "train_images": int(len(y_train)), "test_images": int(len(y_test)),
            "batch_size": args.batch_size, "target": args.target, "epochs": epochs,
            "target_epoch": reached["epoch"] if reached else None,
            "target_reached_at": reached["ended_at"] if reached else None,
            "final_test_accuracy": epochs[-1]["test_accuracy"],
            "parameters": int(model.count_params())}


def throughput(args) -> dict:
    import numpy as np
    import tensorflow as tf

    from nnfund_spark.models import build_model

    _configure(tf, args)
    splits = _load(args)
    _, x_train, y_train = splits["train"]
    x_train = x_train.astype(np.float32)  # the zoo's models scale raw pixels themselves
    model = build_model(args.model, x_train.shape[1:], int(y_train.max()) + 1,
                        **json.loads(args.model_options))
    model.compile(loss="sparse_categorical_crossentropy",
                  optimizer=tf.keras.optimizers.Adam(args.learning_rate), metrics=["accuracy"],
                  steps_per_execution=args.steps_per_execution)
    clock = _epoch_clock()
    fit_started = time.time()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
              verbose=0, callbacks=[clock])
    ends = [fit_started] + clock.ended
    return {"mode": "throughput", "model": args.model, "process_started": PROCESS_STARTED,
            "fit_started": fit_started, "epoch_ended_at": clock.ended,
            "epoch_seconds": [b - a for a, b in zip(ends, ends[1:])],
            "train_images": int(len(y_train)), "batch_size": args.batch_size,
            "threads": args.threads, "steps_per_execution": args.steps_per_execution,
            "cores": sorted(os.sched_getaffinity(0))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("time-to-accuracy", "throughput"))
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--source", default="mnist")
    parser.add_argument("--raw-dir", default="data/raw/mnist")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--model-options", default="{}", help="JSON keyword arguments")
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="TF threads (0 = TF's choice)")
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="throughput: train steps per call of the compiled train function")
    parser.add_argument("--cores", default="",
                        help="comma-separated CPU ids to bind the process to (empty = all)")
    args = parser.parse_args(argv)
    if args.cores:
        # Before TensorFlow starts any thread: every thread it creates inherits the binding.
        os.sched_setaffinity(0, {int(core) for core in args.cores.split(",")})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = (time_to_accuracy if args.mode == "time-to-accuracy" else throughput)(args)
    from nnfund_spark.data.storage import write_text_atomic
    write_text_atomic(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
