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


def test_mpirun_starts_with_a_silent_service_on_an_x11_port():
    """Regression: mpirun hung forever (SIGTERM ignored) when any service listened on
    127.0.0.1:6000-6009, because hwloc's GL plugin probes X displays :0-:9 there; a Horovod
    task service, which binds a random port, once landed on 6001 in our test suite. The
    launcher's environment for mpirun and the ranks leaves that plugin out."""
    import glob
    import os
    import socket
    import subprocess

    if stack_controller() != "mpi":
        pytest.skip("NNFUND_MPI=0: no mpirun on this stack")
    listener = None
    for port in range(6000, 6010):  # a free X11 port, answered by nothing (like a non-X service)
        try:
            listener = socket.create_server(("127.0.0.1", port))
            break
        except OSError:
            continue
    if listener is None:
        pytest.skip("every port 6000-6009 is taken on this host")
    with listener:
        def mpirun(env):
            try:
                return subprocess.run(["mpirun", "--allow-run-as-root", "-np", "1", "true"],
                                      env=env, timeout=10, capture_output=True).returncode
            except subprocess.TimeoutExpired:  # the child got SIGKILL from subprocess.run
                return "hung"

        assert mpirun(launcher._worker_env(mpi=True)) == 0
        # Without the setting mpirun hangs, where the plugin that probes X displays is installed
        # and no X server answers locally: the test catches the setting going missing.
        plain = {k: v for k, v in os.environ.items()
                 if k not in ("HWLOC_COMPONENTS", "DISPLAY")}
        if glob.glob("/usr/lib/*/hwloc/hwloc_gl.so") and not os.path.exists("/tmp/.X11-unix"):
            assert mpirun(plain) == "hung"


def test_a_users_own_hwloc_components_are_kept(monkeypatch):
    monkeypatch.setenv("HWLOC_COMPONENTS", "linux,x86")
    assert launcher._worker_env(mpi=True)["HWLOC_COMPONENTS"] == "linux,x86,-gl"
    monkeypatch.setenv("HWLOC_COMPONENTS", "^gl")
    assert launcher._worker_env(mpi=True)["HWLOC_COMPONENTS"] == "^gl"
    monkeypatch.delenv("HWLOC_COMPONENTS")
    assert launcher._worker_env(mpi=True)["HWLOC_COMPONENTS"] == "-gl"
    assert "HWLOC_COMPONENTS" not in launcher._worker_env(mpi=False)


EXECUTOR_PROBE = r"""
import json, sys
from pyspark.sql import SparkSession
from nnfund_spark.training import launcher

found = {}
for name, path in (("without", sys.argv[1]), ("with", sys.argv[2])):
    spark = (SparkSession.builder.master("local-cluster[1,1,1024]")
             .config("spark.executorEnv.PATH", path).config("spark.ui.enabled", "false")
             .getOrCreate())
    found[name] = {"hosts": launcher.executors_without(spark, launcher.mpi_daemon(), 2),
                   "auto": launcher.resolve_controller("auto", spark, 2)}
    try:
        found[name]["mpi"] = launcher.resolve_controller("mpi", spark, 2)
    except ValueError as exc:
        found[name]["mpi"] = str(exc)
    spark.stop()
print(json.dumps(found))
"""


def test_executors_without_open_mpi_mean_gloo_for_auto_and_a_refusal_for_mpi(tmp_path):
    """The driver has MPI, an executor (a separate process on local-cluster, with a PATH
    that holds no Open MPI) does not: auto picks Gloo, an explicit mpi is refused before any
    rank starts, naming the host; with Open MPI on the executor's PATH both give MPI."""
    import json
    import os
    import socket
    import subprocess
    import sys

    if stack_controller() != "mpi":
        pytest.skip("NNFUND_MPI=0: no MPI on this stack")
    bare = str(tmp_path)  # an executor PATH with nothing on it (its Python is absolute)
    assert launcher.mpi_daemon() == "orted"  # the stack's Open MPI 4
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, "-c", EXECUTOR_PROBE, bare, os.environ["PATH"]],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    host = socket.gethostname()
    assert found["without"]["hosts"] == [host] and found["without"]["auto"] == "gloo"
    assert found["without"]["mpi"] == (
        f"train.controller=mpi needs MPI on every executor: no orted on the executors' PATH "
        f"on {host} (mpirun starts the ranks through it; install the driver's MPI there, e.g. "
        f"openmpi-bin); or use train.controller=gloo (or auto)")
    assert found["with"] == {"hosts": [], "auto": "mpi", "mpi": "mpi"}


@pytest.mark.parametrize("version, daemon", [
    ("mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/", "orted"),
    ("mpirun (Open MPI) 5.0.3\n", "prted"),
    ("HYDRA build details:\n    Version: 4.1\n", "hydra_pmi_proxy"),
    ("Intel(R) MPI Library for Linux* OS, Version 2021.6\n", "hydra_pmi_proxy"),
    ("something else entirely\n", None),
])
def test_the_executors_are_asked_for_the_daemon_of_the_drivers_mpi(monkeypatch, version,
                                                                    daemon):
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout=version, stderr=""))
    assert launcher.mpi_daemon() == daemon


def test_mpich_or_intel_mpi_means_gloo_for_auto_and_a_refusal_for_mpi(monkeypatch, caplog):
    """horovod.spark launches ranks with Open MPI's mpirun options and environment: with
    another MPI's mpirun on the PATH, auto picks Gloo (saying why) and mpi is refused."""
    monkeypatch.setattr(launcher, "wait_for_horovod_build_check", lambda: None)
    monkeypatch.setattr(launcher, "mpi_missing", lambda: [])
    monkeypatch.setattr(launcher, "mpi_daemon", lambda: "hydra_pmi_proxy")
    with caplog.at_level("WARNING"):
        assert launcher.resolve_controller("auto") == "gloo"
    assert "using Gloo; MPI needs Open MPI's mpirun" in caplog.text
    with pytest.raises(ValueError, match=r"train.controller=mpi needs Open MPI's mpirun "
                                         r"\(horovod.spark runs ranks through Open MPI only; the "
                                         r"mpirun on this PATH is MPICH or Intel MPI\); or use "
                                         r"train.controller=gloo"):
        launcher.resolve_controller("mpi")
    monkeypatch.setattr(launcher, "mpi_daemon", lambda: "orted")
    assert launcher.resolve_controller("auto") == "mpi" == launcher.resolve_controller("mpi")
