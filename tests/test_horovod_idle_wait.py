"""The Horovod that `make setup` builds carries scripts/horovod-0.28.1-idle-wait.patch: with
HOROVOD_IDLE_WAIT=1 its background thread sleeps while nothing is queued, and a queued tensor
still wakes it at once. The two-rank training tests run with it on (the launcher's default)."""
from __future__ import annotations

import json
import subprocess
import sys

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


def _probe(idle_wait: str) -> dict:
    env = launcher._worker_env(mpi=False)
    env["HOROVOD_IDLE_WAIT"] = idle_wait
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_idle_wait_sleeps_while_idle_and_wakes_on_a_queued_tensor():
    polling, waiting = _probe("0"), _probe("1")
    # Polling: the thread wakes about every millisecond (HOROVOD_CYCLE_TIME), ~1,000 switches
    # in the idle second. Idle wait: only the 100 ms safety recheck and other threads' few.
    assert polling["idle_switches"] > 300, polling
    assert waiting["idle_switches"] * 5 < polling["idle_switches"], (waiting, polling)
    # A tensor queued after idleness wakes the thread at once (one 1 ms cycle to gather the
    # step's tensors), not at the next 100 ms recheck.
    assert waiting["median_allreduce_s"] < 0.02, waiting


def test_workers_get_idle_wait_unless_the_user_set_it(monkeypatch):
    monkeypatch.delenv("HOROVOD_IDLE_WAIT", raising=False)
    assert launcher._worker_env(mpi=True)["HOROVOD_IDLE_WAIT"] == "1"
    assert launcher._worker_env(mpi=False)["HOROVOD_IDLE_WAIT"] == "1"
    monkeypatch.setenv("HOROVOD_IDLE_WAIT", "0")
    assert launcher._worker_env(mpi=False)["HOROVOD_IDLE_WAIT"] == "0"
