"""Bounded teardown of an MPI job on the driver.

horovod.spark.run starts mpirun through Horovod's shell executor, which forwards mpirun's
output and returns mpirun's exit code only once every writer of the output pipes has closed
them. The processes mpirun starts on the driver inherit those pipes: Horovod's rsh agent (one
per host, which runs Open MPI's daemon inside a Spark task and waits for it), for one. If such a
process outlives mpirun, for instance because the daemon of a host whose rank was killed does
not exit, the launcher would wait on the pipe forever and never report the failure.

MpirunReaper watches the driver's mpirun processes while a job runs and remembers what each
started; once an mpirun has ended, whatever it started that is still running `grace` seconds
later is named in the log and killed. A look (the driver's process tree, from /proc) costs
about 4 ms; one a second is below a percent of a core. That closes the pipes, Horovod reports mpirun's exit code,
and the launcher cancels the Spark job and raises the rank's error as usual.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

# Long enough for mpirun's own clean-up (its daemons end their ranks, then themselves) to finish
# in the normal case, short against the minutes a test or a user would wait for an error.
DEFAULT_GRACE_SECONDS = 30.0


def _is_mpirun(proc) -> bool:
    import psutil

    try:
        return proc.name() == "mpirun"
    except psutil.Error:
        return False


def _ended(proc) -> bool:
    import psutil

    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _describe(proc) -> str:
    import psutil

    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}"


class MpirunReaper:
    """Use as a context manager around horovod.spark.run (see the module's docstring)."""

    def __init__(self, grace: float = DEFAULT_GRACE_SECONDS, poll: float = 1.0):
        self.grace, self.poll = grace, poll
        self.killed: list[str] = []  # what was killed, for the caller and the tests
        self._mpiruns: dict = {}  # pid -> (mpirun process, {pid: process it started})
        self._ended_at: dict = {}  # pid -> when that mpirun was first seen ended
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mpirun-reaper", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def _watch(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.poll):
            try:
                self._look(me)
            except Exception:  # noqa: BLE001 - the watch must outlive one bad look, not hide it
                log.exception("mpirun teardown watch: one look failed; watching on")

    def _look(self, me) -> None:
        import psutil

        for proc in me.children(recursive=True):
            if proc.pid not in self._mpiruns and _is_mpirun(proc):
                self._mpiruns[proc.pid] = (proc, {})
        now = time.monotonic()
        for pid, (mpirun, started) in self._mpiruns.items():
            if not _ended(mpirun):
                try:
                    started.update({p.pid: p for p in mpirun.children(recursive=True)})
                except psutil.Error:
                    pass  # it ended while we looked: the next look sees it ended
                continue
            ended_at = self._ended_at.setdefault(pid, now)
            if now - ended_at < self.grace:
                continue
            for child in list(started.values()):
                if not _ended(child):
                    self._kill(child, now - ended_at)
            started.clear()

    def _kill(self, proc, seconds: float) -> None:
        import psutil

        description = _describe(proc)
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            return
        self.killed.append(description)
        log.warning("mpirun ended %.0f s ago but a process it started was still running and "
                    "holding its output open; killed it so the job's failure can be reported: "
                    "%s", seconds, description)
