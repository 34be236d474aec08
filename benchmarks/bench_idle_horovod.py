"""What does an initialised but idle Horovod cost a one-core rank?

    .venv/bin/python benchmarks/bench_idle_horovod.py [--rounds 2] [--epochs 5] [--limit 30000]

Trains the mnist_fast model (convnet, dense 128, batch 64, one TensorFlow thread) from memory
through the ranks' own per-epoch input pipeline, in two processes AT THE SAME TIME, each bound
to its own core: one calls ``hvd.init()`` first (Horovod's background thread then wakes every
HOROVOD_CYCLE_TIME, 1 ms, with nothing to reduce), the other does not. The next round swaps
the cores. Running the pair at once cancels the minute-to-minute drift of a shared machine,
which sequential runs cannot. Prints each process's median epoch and, per round, the ratio
with Horovod ÷ without. Not a test: the figures depend on the machine. The result is why a
one-rank job runs without Horovod (``nnfund_spark/training/collectives.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RAW = Path(__file__).resolve().parent.parent / "data" / "raw" / "mnist"


def child(core: int, with_horovod: bool, epochs: int, limit: int) -> dict:
    os.sched_setaffinity(0, {core})  # before TensorFlow (and Horovod) start their threads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    if with_horovod:
        import horovod.tensorflow.keras as hvd
        hvd.init()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(1)

    from nnfund_spark.config import DataConfig
    from nnfund_spark.data.prepare import split_arrays
    from nnfund_spark.data.schema import as_hwc
    from nnfund_spark.models import build_model
    from nnfund_spark.training.pipeline import epoch_dataset

    _, images, labels = split_arrays(DataConfig(raw_dir=str(RAW), limit=limit,
                                                validation_fraction=0.0))["train"]
    images, labels = as_hwc(images), labels.astype(np.int32)
    model = build_model("convnet", images.shape[1:], 10, dense_units=128)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.0015),
                  loss="sparse_categorical_crossentropy")
    steps = -(-len(labels) // 64)
    ends = [time.time()]
    for epoch in range(epochs):
        model.fit(epoch_dataset(images, labels, steps, 1, epoch, 0), initial_epoch=epoch,
                  epochs=epoch + 1, verbose=0)
        ends.append(time.time())
    walls = [b - a for a, b in zip(ends, ends[1:])][1:]  # epoch 1 pays for tracing
    return {"core": core, "horovod": with_horovod, "median_epoch_seconds":
            statistics.median(walls), "epoch_seconds": [round(w, 3) for w in walls]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--limit", type=int, default=30000)
    parser.add_argument("--child", nargs=2, metavar=("CORE", "HOROVOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1] == "1", args.epochs,
                               args.limit)))
        return 0
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        raise SystemExit("needs 2 cores: the two processes run at once, one per core")
    if not RAW.is_dir():
        raise SystemExit(f"{RAW} not found; fetch MNIST with `make data`")
    for number in range(args.rounds):
        horovod_core = cores[number % 2]
        procs = [subprocess.Popen(
            [sys.executable, __file__, "--epochs", str(args.epochs), "--limit", str(args.limit),
             "--child", str(core), "1" if core == horovod_core else "0"],
            stdout=subprocess.PIPE, text=True) for core in cores]
        results = []
        for proc in procs:
            out, _ = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"a timed process failed (exit {proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
        with_hvd = next(r for r in results if r["horovod"])
        without = next(r for r in results if not r["horovod"])
        print(json.dumps({"round": number + 1, "with_horovod": with_hvd, "without": without,
                          "ratio": round(with_hvd["median_epoch_seconds"]
                                         / without["median_epoch_seconds"], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
