"""What does one Horovod allreduce cost on this host, by tensor size?

Run it under Horovod's own launcher (no Spark involved), one process per core:

    .venv/bin/horovodrun --gloo -np 2 -H localhost:2 .venv/bin/python benchmarks/bench_allreduce.py

Each rank binds itself to core = local rank (as ``train.cpu_binding`` does), uses one TensorFlow
thread, and times ``--repeats`` back-to-back allreduces of a float32 tensor of each size inside
a ``tf.function`` (the way gradients go through ``hvd.DistributedOptimizer``), then the eight
gradient tensors of the ``convnet`` model (dense 128, the mnist_fast preset) in one call.
Rank 0 prints milliseconds per allreduce. Not a test: the figures depend on the machine.

A training step of the MNIST convnet at batch 64 computes for about 13-18 ms on one core; the
allreduce latency printed here, paid once per step, is the scaling cost the benchmark's row 3
measures, and what ``train.backward_passes_per_step`` divides.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from nnfund_spark.training.collectives import launcher_value

# Tensor sizes in float32 elements: 4 KB, 224 KB, the convnet's 0.9 MB, 4 MB.
SIZES = (1_000, 56_000, 225_034, 1_000_000)
# The convnet (filters 32, 64; dense 128) gradient shapes, fused by Horovod into one buffer.
CONVNET_GRADIENTS = ((3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (1600, 128), (128,),
                     (128, 10), (10,))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--no-binding", action="store_true",
                        help="leave the ranks free to run on any core")
    args = parser.parse_args()
    local_rank = launcher_value("local_rank", 0)  # horovodrun --gloo or --mpi
    if not args.no_binding:
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[local_rank % len(cores)]})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tensorflow as tf
    import horovod.tensorflow as hvd

    hvd.init()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    def timed(tensors) -> float:
        @tf.function
        def reduce_all(values):
            return [hvd.allreduce(value, op=hvd.Sum) for value in values]

        for _ in range(5):  # trace, negotiate once, fill Horovod's response cache
            reduce_all(tensors)
        started = time.perf_counter()
        for _ in range(args.repeats):
            for result in reduce_all(tensors):
                result.numpy()
        return 1000 * (time.perf_counter() - started) / args.repeats

    rows = [{"tensor": f"{n * 4 / 1e6:.3f} MB", "ms": round(timed([tf.ones(n)]), 2)}
            for n in SIZES]
    rows.append({"tensor": "convnet gradients (8 tensors, 0.9 MB)",
                 "ms": round(timed([tf.ones(shape) for shape in CONVNET_GRADIENTS]), 2)})
    if hvd.rank() == 0:
        print(json.dumps({"ranks": hvd.size(), "bound": not args.no_binding,
                          "cycle_time_ms": os.environ.get("HOROVOD_CYCLE_TIME", "default"),
                          "allreduce": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
