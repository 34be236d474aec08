"""How fast is `prepare` against the simplest thing that could work?

Prepares full MNIST (70,000 images) with the Spark job (`prepare_dataset`, local[2] by default)
and with the single-process pyarrow baseline of `nnfund_spark.benchmark.prepare_baseline`.
Runs alternate (baseline, Spark, baseline, ...) so load from other processes hits both alike;
medians are reported. `nnfund-spark benchmark` measures the same ratio among its others.

    .venv/bin/python benchmarks/bench_prepare.py [--runs 3] [--master local[2]] [--codec png]

Not a test: the figures depend on the machine. The target is Spark time <= 3x baseline time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnfund_spark.benchmark.prepare_baseline import pyarrow_prepare  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw-dir", default=str(REPO / "data" / "raw" / "mnist"))
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--codec", default="png", choices=("png", "ndarray"))
    parser.add_argument("--row-group-size-mb", type=int, default=4)
    args = parser.parse_args()

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from nnfund_spark.config import DataConfig
    from nnfund_spark.data.prepare import prepare_dataset

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    started = time.perf_counter()
    spark = (SparkSession.builder.master(args.master).appName("bench_prepare")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", "2g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    print(f"Spark session start: {time.perf_counter() - started:.1f} s (not counted below)")

    scratch = Path(tempfile.mkdtemp(prefix="bench_prepare-"))
    times = {"baseline": [], "spark": []}
    images = 0
    try:
        for run in range(args.runs):
            out = scratch / f"baseline-{run}"
            started = time.perf_counter()
            images = pyarrow_prepare(Path(args.raw_dir), out, args.codec, args.row_group_size_mb, 42)
            times["baseline"].append(time.perf_counter() - started)

            config = DataConfig(raw_dir=args.raw_dir, output_dir=str(scratch / f"spark-{run}"),
                                image_codec=args.codec, row_group_size_mb=args.row_group_size_mb)
            started = time.perf_counter()
            manifest = prepare_dataset(spark, config)
            times["spark"].append(time.perf_counter() - started)
            count = sum(info["count"] for info in manifest["splits"].values())
            if count != images:
                raise RuntimeError(f"Spark wrote {count} images, the baseline {images}")
            print(f"run {run + 1}: baseline {times['baseline'][-1]:.2f} s, "
                  f"spark {times['spark'][-1]:.2f} s", flush=True)
    finally:
        spark.stop()
        shutil.rmtree(scratch)

    base, job = statistics.median(times["baseline"]), statistics.median(times["spark"])
    print(f"\n{images} images, {args.codec}, master {args.master}, median of {args.runs} runs:")
    print(f"  baseline (1 process, pyarrow): {base:6.2f} s  {images / base:8.0f} images/s")
    print(f"  Spark prepare_dataset:         {job:6.2f} s  {images / job:8.0f} images/s")
    print(f"  ratio Spark / baseline: {job / base:.2f}x (target <= 3x); "
          f"first Spark run {times['spark'][0]:.2f} s (Python workers start)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
