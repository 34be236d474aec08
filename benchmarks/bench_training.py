"""Training throughput on this machine: plain in-memory Keras vs Horovod-on-Spark with
Petastorm input, 1 and 2 ranks at 1 intra-op thread each. Prints a Markdown table and ratios.

    .venv/bin/python benchmarks/bench_training.py [--limit 20000] [--epochs 2]

Steady-state figures come from the last epoch (the first pays for tracing and warm-up).
It prepares its own dataset (first --limit MNIST training images) in a temporary directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plain_keras(raw_dir: Path, limit: int, epochs: int, batch_size: int) -> dict:
    """The baseline: one process, arrays in memory, the same model and batching, 1 thread."""
    import numpy as np
    import tensorflow as tf

    from nnfund_spark.data.idx import load_idx_dataset
    from nnfund_spark.data.prepare import stratified_split
    from nnfund_spark.models import build_model
    from nnfund_spark.training.pipeline import epoch_dataset

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    images, labels = load_idx_dataset("mnist", raw_dir)["train"]
    images, labels = images[:limit], labels[:limit].astype(np.int32)
    keep, _ = stratified_split(labels, 0.1, 42)
    images, labels = images[keep], labels[keep]
    model = build_model("mnist_cnn", (28, 28, 1), 10)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    steps = -(-len(labels) // batch_size)
    seconds = []
    for epoch in range(epochs):
        started = time.time()
        model.fit(epoch_dataset(images, labels, steps, 42, epoch, 0), verbose=0)
        seconds.append(time.time() - started)
    return {"images": len(labels), "epoch_seconds": seconds,
            "images_per_second": len(labels) / seconds[-1]}


def horovod_run(dataset: Path, num_proc: int, epochs: int, batch_size: int, tmp: Path) -> dict:
    from nnfund_spark.cli import main  # noqa: F401  (same code path as the console script)
    from nnfund_spark.config import load_config
    from nnfund_spark.spark import build_session
    from nnfund_spark.training.launcher import run_training

    config = load_config(None, [
        f"data.output_dir={dataset}", f"train.num_proc={num_proc}", f"train.epochs={epochs}",
        f"train.batch_size={batch_size}", "train.intra_op_threads=1",
        "train.scale_lr_by_workers=false", "train.verbose=0",
        f"tracking.tracking_uri=sqlite:///{tmp}/bench.db", "tracking.experiment=bench",
        "tracking.log_model=false", "tracking.log_artifacts=false"])
    spark = build_session(config.spark, f"local[{max(2, num_proc)}]")
    try:
        started = time.time()
        summary = run_training(spark, config)
        wall = time.time() - started
    finally:
        spark.stop()
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp}/bench.db")
    history = client.get_metric_history(summary["run_id"], "images_per_second")
    epoch_seconds = client.get_metric_history(summary["run_id"], "epoch_seconds")
    rank0 = next(r for r in summary["ranks"] if r["rank"] == 0)
    return {"images_per_second": max(history, key=lambda m: m.step).value,
            "epoch_seconds": [m.value for m in sorted(epoch_seconds, key=lambda m: m.step)],
            "read_seconds": rank0["read_seconds"], "wall_seconds": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--raw-dir", default=str(REPO / "data/raw/mnist"))
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    with tempfile.TemporaryDirectory(prefix="nnfund-bench-") as tmp:
        tmp = Path(tmp)
        from nnfund_spark.config import DataConfig
        from nnfund_spark.data.prepare import prepare_dataset
        from nnfund_spark.spark import build_session
        from nnfund_spark.config import SparkConfig
        spark = build_session(SparkConfig(), "local[2]")
        try:
            prepare_dataset(spark, DataConfig(raw_dir=args.raw_dir, output_dir=str(tmp / "ds"),
                                              limit=args.limit))
        finally:
            spark.stop()
        figures = {
            "plain_in_memory_1_thread": plain_keras(Path(args.raw_dir), args.limit, args.epochs,
                                                    args.batch_size),
            "horovod_petastorm_1_rank": horovod_run(tmp / "ds", 1, args.epochs, args.batch_size, tmp),
            "horovod_petastorm_2_ranks": horovod_run(tmp / "ds", 2, args.epochs, args.batch_size, tmp),
        }
    plain = figures["plain_in_memory_1_thread"]["images_per_second"]
    one = figures["horovod_petastorm_1_rank"]["images_per_second"]
    two = figures["horovod_petastorm_2_ranks"]["images_per_second"]
    ratios = {"2 ranks / 1 rank (target >= 1.8)": two / one,
              "Horovod+Petastorm 1 rank / plain in-memory (target >= 0.95)": one / plain}
    print(f"\n| run | images/s (last epoch) | epoch seconds |")
    print("|---|---|---|")
    for name, fig in figures.items():
        print(f"| {name} | {fig['images_per_second']:.0f} | "
              f"{', '.join(f'{s:.1f}' for s in fig['epoch_seconds'])} |")
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    for name in ("horovod_petastorm_1_rank", "horovod_petastorm_2_ranks"):
        fig = figures[name]
        print(f"{name}: shard read {fig['read_seconds']:.1f}s, whole job {fig['wall_seconds']:.1f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
