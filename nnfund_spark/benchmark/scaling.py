"""Expected data-parallel scaling on paper: a ring all-reduce cost model (docs/SCALING.md).

    python -m nnfund_spark.benchmark.scaling [--batch 128] [--utilization 0.25] [--fp16]

Per step every rank computes its gradients (``compute_seconds``), then Horovod all-reduces them
in one fused buffer of S bytes (Horovod's tensor fusion packs every gradient of a step into
one buffer up to 64 MB). A ring all-reduce over N ranks sends and receives, per rank,
2(N-1)/N x S bytes in 2(N-1) messages (reduce-scatter, then all-gather), so

    allreduce_seconds = 2(N-1)/N x S / bandwidth + 2(N-1) x latency

Scaling efficiency = throughput of N ranks / (N x throughput of one) =
``compute / (compute + allreduce)`` when nothing overlaps (the pessimistic bound), and
``compute / max(compute, allreduce)`` when the all-reduce hides entirely behind the step's
compute (an optimistic upper bound: Horovod can only overlap it with the backward pass, about
two thirds of the compute, so reality lies in between and nearer the lower bound when the
all-reduce is long).

Everything here is arithmetic on stated assumptions; nothing is measured on a GPU.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

# Line rate (Gbit/s) -> (achieved fraction of line rate, per-message latency in seconds).
# TCP over 10/25 GbE: ~80 % of line rate and tens of microseconds per message; 100 Gbit with
# RDMA (InfiniBand / RoCE, what 100 Gbit GPU clusters use): ~90 % and a few microseconds.
NETWORKS = {10: (0.8, 50e-6), 25: (0.8, 25e-6), 100: (0.9, 5e-6)}
RANKS = (1, 2, 4, 8, 16, 32, 64)
# fp32 peak of a V100-class GPU (FLOP/s) and the per-step fixed cost of a Keras step (kernel
# launches, the Python loop, the optimizer update) that small models cannot hide.
GPU_PEAK_FLOPS = 15.7e12
STEP_OVERHEAD_SECONDS = 1.5e-3


@dataclass(frozen=True)
class ModelCost:
    name: str
    parameters: int
    macs_per_image: int  # multiply-accumulates of one forward pass

    def gradient_bytes(self, fp16: bool = False) -> int:
        """What one step all-reduces: one gradient per parameter."""
        return self.parameters * (2 if fp16 else 4)

    def compute_seconds(self, batch: int, utilization: float,
                        peak_flops: float = GPU_PEAK_FLOPS,
                        overhead: float = STEP_OVERHEAD_SECONDS) -> float:
        """Forward + backward ≈ 3 forward passes; 2 FLOPs per multiply-accumulate."""
        if not 0 < utilization <= 1:
            raise ValueError(f"utilization must be in (0, 1], got {utilization}")
        return 3 * 2 * self.macs_per_image * batch / (peak_flops * utilization) + overhead


# Counted from this package's zoo (conv and dense multiply-accumulates at 28x28x1 / 32x32x3):
# build_model("mnist_cnn", (28, 28, 1), 10) and build_model("resnet", (32, 32, 3), 10, depth=20).
MNIST_CNN = ModelCost("MNIST CNN (mnist_cnn)", 1_199_882, 11_992_448)
RESNET20 = ModelCost("CIFAR ResNet-20 (resnet, depth 20)", 271_098, 40_551_040)


def allreduce_seconds(size_bytes: float, ranks: int, gbit: float, achieved: float,
                      latency: float) -> float:
    """Ring all-reduce time of one fused buffer over ``ranks`` ranks."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if ranks == 1:
        return 0.0
    bandwidth = gbit * 1e9 / 8 * achieved  # bytes per second actually achieved
    return 2 * (ranks - 1) / ranks * size_bytes / bandwidth + 2 * (ranks - 1) * latency


def efficiency(compute: float, communication: float) -> tuple[float, float]:
    """(no-overlap, full-overlap) scaling efficiency."""
    return compute / (compute + communication), compute / max(compute, communication)


def table(model: ModelCost, batch: int, utilization: float, fp16: bool = False) -> str:
    compute = model.compute_seconds(batch, utilization)
    size = model.gradient_bytes(fp16)
    lines = [f"**{model.name}**: {model.parameters:,} parameters, {size / 1e6:.2f} MB "
             f"all-reduced per step ({'fp16' if fp16 else 'fp32'} gradients), "
             f"{model.macs_per_image / 1e6:.1f} M multiply-adds per image, "
             f"step compute {compute * 1e3:.1f} ms at batch {batch} per GPU.", "",
             "| GPUs | " + " | ".join(f"{g} Gbit: all-reduce ms / efficiency"
                                     for g in NETWORKS) + " |",
             "|---|" + "---|" * len(NETWORKS)]
    for ranks in RANKS:
        cells = []
        for gbit, (achieved, latency) in NETWORKS.items():
            seconds = allreduce_seconds(size, ranks, gbit, achieved, latency)
            no_overlap, overlap = efficiency(compute, seconds)
            cells.append(f"{seconds * 1e3:.2f} / {no_overlap:.0%}–{overlap:.0%}")
        lines.append(f"| {ranks} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="images per GPU per step")
    parser.add_argument("--utilization", type=float, default=0.25,
                        help="fraction of the GPU's fp32 peak the model's kernels reach")
    parser.add_argument("--fp16", action="store_true", help="fp16 gradient compression")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    if not 0 < args.utilization <= 1:
        parser.error(f"--utilization must be in (0, 1], got {args.utilization}")
    for model in (MNIST_CNN, RESNET20):
        print(table(model, args.batch, args.utilization, args.fp16))
    return 0


if __name__ == "__main__":
    sys.exit(main())
