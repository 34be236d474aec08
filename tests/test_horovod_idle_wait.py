"""The Horovod that `make setup` builds carries scripts/horovod-0.28.1-idle-wait.patch: with
HOROVOD_IDLE_WAIT=1 its background thread sleeps while nothing is queued, and a queued tensor
still wakes it at once. The two-rank training tests run with it on (the launcher's default)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from nnfund_spark.training import launcher

# Runs in a fresh interpreter (Horovod's thread lives for the whole process): an idle second
# of hvd.init() counted in context switches of all the process's threads, then 20 allreduces
# each queued after 30 ms of idleness, timed.
_PROBE = r"""
import glob, json, statistics, time
import horovod.tensorflow as hvd
import tensorflow as tf

def switches():
    total = 0
    for status in glob.glob("/proc/self/task/*/status"):
        try:
            with open(status) as f:
                total += sum(int(line.split()[1]) for line in f
                             if line.startswith(("voluntary_ctxt_switches",
                                                 "nonvoluntary_ctxt_switches")))
        except FileNotFoundError:
            pass
    return total

hvd.init()
x = tf.ones([1000])
hvd.allreduce(x, name="warm")
time.sleep(0.3)
before = switches()
time.sleep(1.0)
idle = switches() - before
waits = []
for i in range(20):
    time.sleep(0.03)
    start = time.perf_counter()
    y = hvd.allreduce(x, name=f"t{i}")
    waits.append(time.perf_counter() - start)
assert float(y[0]) == 1.0
print(json.dumps({"idle_switches": idle, "median_allreduce_s": statistics.median(waits)}))
"""


def _probe(idle_wait: str, hold_ms: str | None = None) -> dict:
    env = launcher._worker_env(mpi=False)
    env["HOROVOD_IDLE_WAIT"] = idle_wait
    if hold_ms is None:
        env.pop("HOROVOD_IDLE_WAIT_HOLD", None)  # the patch's default: one cycle
    else:
        env["HOROVOD_IDLE_WAIT_HOLD"] = hold_ms
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_idle_wait_sleeps_while_idle_and_wakes_on_a_queued_tensor():
    polling, waiting = _probe("0"), _probe("1")
    # Polling: the thread wakes about every millisecond (HOROVOD_CYCLE_TIME), ~1,000 switches
    # in the idle second. Idle wait: only the 100 ms heartbeat and other threads' few.
    assert polling["idle_switches"] > 300, polling
    assert waiting["idle_switches"] * 5 < polling["idle_switches"], (waiting, polling)
    # A tensor queued after idleness wakes the thread at once (one 1 ms cycle to gather the
    # step's tensors), not at the next 100 ms heartbeat.
    assert waiting["median_allreduce_s"] < 0.02, waiting


def test_the_hold_after_a_wake_up_is_the_one_asked_for():
    # Woken by a queued tensor, the thread waits HOROVOD_IDLE_WAIT_HOLD ms before its first
    # cycle: a 30 ms hold shows in every allreduce, a 0 ms hold leaves it well under that.
    long_hold, no_hold = _probe("1", "30"), _probe("1", "0")
    assert long_hold["median_allreduce_s"] >= 0.029, long_hold
    assert no_hold["median_allreduce_s"] < 0.015, no_hold


def test_workers_get_idle_wait_unless_the_user_set_it(monkeypatch):
    monkeypatch.delenv("HOROVOD_IDLE_WAIT", raising=False)
    monkeypatch.delenv("HOROVOD_IDLE_WAIT_HOLD", raising=False)
    for mpi in (True, False):
        env = launcher._worker_env(mpi=mpi)
        assert env["HOROVOD_IDLE_WAIT"] == "1"
        assert env["HOROVOD_IDLE_WAIT_HOLD"] == "0.25"
    monkeypatch.setenv("HOROVOD_IDLE_WAIT", "0")
    monkeypatch.setenv("HOROVOD_IDLE_WAIT_HOLD", "1")
    env = launcher._worker_env(mpi=False)
    assert (env["HOROVOD_IDLE_WAIT"], env["HOROVOD_IDLE_WAIT_HOLD"]) == ("0", "1")


# Two ranks under mpirun: both allreduce once, then rank 0 allreduces a tensor rank 1 never
# submits while rank 1's Horovod sits idle. Horovod's stall check must still see it and, with
# a shutdown time set, end rank 0's wait with an error; rank 1 waits for rank 0's verdict file.
_STALL_PROBE = r"""
import json, pathlib, sys, time
import horovod.tensorflow as hvd
import tensorflow as tf

verdict = pathlib.Path(sys.argv[1])
hvd.init()
hvd.allreduce(tf.ones([4]), name="together")
if hvd.rank() == 0:
    start = time.perf_counter()
    try:
        hvd.allreduce(tf.ones([4]), name="only_rank_0")
        outcome = "completed"
    except Exception as error:
        outcome = f"{type(error).__name__}: {error}"
    verdict.write_text(json.dumps({"seconds": time.perf_counter() - start, "outcome": outcome}))
else:
    deadline = time.monotonic() + 40
    while not verdict.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
"""


def test_idle_rank_keeps_the_stall_check_working(tmp_path):
    import horovod.tensorflow as hvd

    if not (hvd.mpi_built() and shutil.which("mpirun")):
        pytest.skip("needs Horovod built with MPI and mpirun (the stack make setup builds)")
    env = launcher._worker_env(mpi=True)
    env.update(HOROVOD_IDLE_WAIT="1", HOROVOD_STALL_CHECK_TIME_SECONDS="1",
               HOROVOD_STALL_SHUTDOWN_TIME_SECONDS="2", CUDA_VISIBLE_DEVICES="")
    verdict = tmp_path / "verdict.json"
    done = subprocess.run(["mpirun", "--allow-run-as-root", "-np", "2", sys.executable, "-c",
                           _STALL_PROBE, str(verdict)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert verdict.exists(), (done.returncode, done.stderr[-3000:])
    result = json.loads(verdict.read_text())
    # Rank 1 idles in its 100 ms heartbeat, so rank 0's cycles go on: the stall check warns
    # after 1 s and shuts Horovod down after 2 s. Without the heartbeat rank 0 would wait for
    # rank 1 for its whole 40 s.
    assert result["outcome"] != "completed", result
    assert "shut down" in result["outcome"].lower(), result
    assert result["seconds"] < 20, result
    # The stall check's own report: rank 1 is the one missing, and Horovod shut down for it.
    assert "Missing ranks:\n1!:" in done.stderr, done.stderr[-3000:]
    assert "Will shutdown" in done.stderr, done.stderr[-3000:]
