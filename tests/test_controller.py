"""Which controller (Gloo or MPI) a job's ranks use, and refusing one this host cannot run."""
import shutil

import pytest

from nnfund_spark.training import launcher
from tests.conftest import stack_controller


def test_gloo_is_used_when_asked_whatever_is_installed():
    assert launcher.resolve_controller("gloo") == "gloo"


def test_auto_picks_what_the_stack_built():
    """make setup builds Horovod with MPI and installs mpirun: auto must find both."""
    expected = stack_controller()
    if expected == "mpi":
        assert launcher.mpi_missing() == []
    assert launcher.resolve_controller("auto") == expected


def test_without_mpirun_auto_falls_back_to_gloo_and_mpi_is_refused(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k:
                        None if name == "mpirun" else real_which(name, *a, **k))
    assert launcher.resolve_controller("auto") == "gloo"
    with pytest.raises(ValueError, match=r"train.controller=mpi needs .*mpirun on the "
                                         r"driver's PATH .*apt-get install openmpi-bin.*or "
                                         r"use train.controller=gloo"):
        launcher.resolve_controller("mpi")


def test_a_horovod_without_mpi_is_named(monkeypatch):
    import horovod.common.util

    monkeypatch.setattr(horovod.common.util, "mpi_built", lambda verbose=False: False)
    assert launcher.resolve_controller("auto") == "gloo"
    with pytest.raises(ValueError, match=r"needs Horovod built with MPI \(reinstall it with "
                                         r"HOROVOD_WITH_MPI=1"):
        launcher.resolve_controller("mpi")
