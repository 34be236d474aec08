"""What `train.input: stream` costs and saves against the default `memory`, on this machine.

    .venv/bin/python benchmarks/bench_stream_input.py --dataset data/petastorm/mnist \
        [--rounds 2] [--epochs 4] [--window 4]

Two figures, each as a ratio against the in-memory path measured the same way:

1. **Memory.** A fresh process per contender reads one rank's shard of the train split (rank 0
   of 1: the whole split) and walks one epoch of batches: ``memory`` holds the decoded shard
   (``read_shard``), ``stream`` a StreamedShard of ``--window`` row groups (default 4). The
   figure is the process's peak resident memory above that of a process that only imported
   the same modules (pyarrow, OpenCV, the split's Unischema).
2. **Throughput.** ``nnfund-spark train`` with one rank bound to one core and one TensorFlow
   thread, the two inputs alternating for ``--rounds`` rounds; the median images/s of rank 0's
   epochs after the first (which pays for tracing).

Not a test: the figures depend on the machine and its load. Prints a small table.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PEAK = r"""
import json, resource, sys
import numpy as np
import cv2, pyarrow.parquet  # what every contender loads: the baseline holds them too
from nnfund_spark.training.pipeline import (StreamedShard, read_shard, split_metadata,
                                            steps_per_epoch)
mode, url = sys.argv[1], sys.argv[2]
split_metadata(url)
held = 0
if mode == "memory":
    index, images, labels = read_shard(url, 0, 1)
    steps = steps_per_epoch([len(index)], 64)
    for part in np.array_split(np.arange(len(index)), steps):
        held += int(images[part].astype(np.float32).sum() > 0)
elif mode == "stream":
    shard = StreamedShard(url, 0, 1, window=int(sys.argv[3]))
    for images, labels in shard.batches(steps_per_epoch([shard.count], 64), 42, 0, 0):
        held += int(images.astype(np.float32).sum() > 0)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "batches": held}))
"""


def peak_mb(mode: str, url: str, window: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PEAK, mode, url, str(window)], check=True,
                         capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def epoch_rates(dataset: str, mode: str, epochs: int, window: int, work: Path) -> list[float]:
    log = work / f"train_{mode}.log"
    cmd = [sys.executable, "-m", "nnfund_spark.cli", "train", "-c", "mnist_fast",
           "--master", "local[1]", "--set", f"data.output_dir={dataset}",
           "--set", "train.num_proc=1", "--set", "train.cpu_binding=true",
           "--set", "train.cores_per_rank=1", "--set", "train.intra_op_threads=1",
           "--set", f"train.epochs={epochs}", "--set", f"train.input={mode}",
           "--set", f"train.stream_window={window}",
           "--set", f"tracking.tracking_uri=sqlite:///{work}/mlflow.db",
           "--set", "tracking.log_model=false", "--set", "tracking.log_artifacts=false"]
    with open(log, "w") as handle:
        subprocess.run(cmd, check=True, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    rates = [float(m) for m in re.findall(r"epoch \d+: .* (\d+) img/s", log.read_text())]
    if len(rates) != epochs:
        raise RuntimeError(f"expected {epochs} epoch lines in {log}, found {len(rates)}")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="data/petastorm/mnist")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--window", type=int, default=4, help="train.stream_window")
    args = parser.parse_args()
    dataset = Path(args.dataset).resolve()
    url = (dataset / "train").as_uri()

    base = peak_mb("none", url, args.window)["peak_mb"]
    memory = {mode: peak_mb(mode, url, args.window)["peak_mb"] - base
              for mode in ("memory", "stream")}
    rates: dict = {"memory": [], "stream": []}
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as work:
        for _ in range(args.rounds):
            for mode in ("memory", "stream"):
                rates[mode].extend(epoch_rates(str(dataset), mode, args.epochs, args.window,
                                                     Path(work))[1:])
    speed = {mode: statistics.median(values) for mode, values in rates.items()}
    print(f"train split of {dataset}; {args.rounds} rounds of {args.epochs} epochs per input; "
          f"stream window {args.window} row groups")
    print("| input | peak memory above imports (MB) | images/s (median, epochs 2+) |")
    print("|---|---|---|")
    for mode in ("memory", "stream"):
        print(f"| {mode} | {memory[mode]:.0f} | {speed[mode]:.0f} |")
    print(f"stream / memory: memory {memory['stream'] / memory['memory']:.2f}x, "
          f"throughput {speed['stream'] / speed['memory']:.2f}x")
    print(json.dumps({"memory_mb": memory, "images_per_second": speed, "rates": rates}))


if __name__ == "__main__":
    main()
