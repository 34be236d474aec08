"""What a rank needs from Horovod between steps: who it is, and a few collectives.

Horovod's background thread wakes every ``HOROVOD_CYCLE_TIME`` (1 ms) for as long as Horovod is
initialised, whether or not anything is being reduced. A rank bound to one core pays for every
wake-up: with nothing to reduce at all (a single rank, no gradient accumulation), an idle
``hvd.init()`` made a 1-core MNIST rank 7-16 % slower here, in four side-by-side runs (one
process per core, at the same time, cores swapped between runs). So a job of one rank whose
optimizer is not wrapped by Horovod (see ``worker.distribute_optimizer``) runs with ``Solo``: the
same answers Horovod gives at size 1, computed locally, and no background thread. Every other
job uses ``HorovodCollectives``.
"""
from __future__ import annotations

import os

import numpy as np


def needs_horovod(size: int, backward_passes_per_step: int) -> bool:
    """Horovod is started unless the job is one rank that never allreduces inside a step
    (gradient accumulation goes through Horovod's optimizer even at size 1)."""
    return size > 1 or backward_passes_per_step > 1


# Where a rank's launcher says who it is, before Horovod is initialised: Horovod's Gloo launcher
# exports HOROVOD_*, mpirun (horovod.spark.run with MPI) exports OMPI_COMM_WORLD_*.
_LAUNCHER_ENV = {"rank": ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK"),
                 "size": ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE"),
                 "local_rank": ("HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
                 "local_size": ("HOROVOD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE")}


def launcher_value(name: str, default: int) -> int:
    """This process's rank, size, local_rank or local_size as its launcher exported it."""
    for variable in _LAUNCHER_ENV[name]:
        if variable in os.environ:
            return int(os.environ[variable])
    return default


def start(backward_passes_per_step: int = 1):
    """The collectives for this rank, from the world size its launcher exported."""
    size = launcher_value("size", 1)
    if needs_horovod(size, backward_passes_per_step):
        return HorovodCollectives()
    return Solo()


class Solo:
    """A world of one rank: every collective is the identity."""

    horovod = False
    rank, size, local_rank, local_size = 0, 1, 0, 1

    def allgather_object(self, value) -> list:
        return [value]

    def allreduce_sum(self, values: np.ndarray, name: str) -> np.ndarray:
        return np.asarray(values)

    def broadcast_variables(self, variables) -> None:
        return None

    def average_variables(self, variables, name: str) -> None:
        return None

    def metric_average_callbacks(self) -> list:
        return []


class HorovodCollectives:
    """Horovod's own collectives (``hvd.init()`` on construction)."""

    horovod = True

    def __init__(self):
        import horovod.tensorflow.keras as hvd

        hvd.init()
        self._hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()

    def allgather_object(self, value) -> list:
        import horovod.tensorflow as hvd_tf

        return hvd_tf.allgather_object(value)

    def allreduce_sum(self, values: np.ndarray, name: str) -> np.ndarray:
        import horovod.tensorflow as hvd_tf
        import tensorflow as tf

        return hvd_tf.allreduce(tf.constant(values), op=hvd_tf.Sum, name=name).numpy()

    def broadcast_variables(self, variables) -> None:
        import horovod.tensorflow as hvd_tf

        hvd_tf.broadcast_variables(variables, root_rank=0)

    def average_variables(self, variables, name: str) -> None:
        """Set each variable to its mean over the ranks (one grouped allreduce)."""
        import horovod.tensorflow as hvd_tf

        if not variables:
            return
        averaged = hvd_tf.grouped_allreduce([v.read_value() for v in variables],
                                            op=hvd_tf.Average, name=name)
        for variable, value in zip(variables, averaged):
            variable.assign(value)

    def metric_average_callbacks(self) -> list:
        # Report train metrics averaged over ranks, not rank 0's alone.
        return [self._hvd.callbacks.MetricAverageCallback()]
