"""The launcher's MPI teardown watch, against Horovod's own shell executor (which runs mpirun)."""
import threading
import time

import psutil

from nnfund_spark.training.reaper import MpirunReaper


def fake_mpirun(tmp_path, helper: str, exit_code: int):
    """An executable named mpirun that starts `helper` in the background (it inherits the
    output pipes, as Horovod's rsh agent does), runs a second, then exits with exit_code."""
    script = tmp_path / "mpirun"
    script.write_text(f"#!/bin/sh\n{helper} &\nsleep 1\nexit {exit_code}\n")
    script.chmod(0o755)
    return str(script)


def run_in_thread(command):
    from horovod.runner.common.util import safe_shell_exec

    result = {}
    thread = threading.Thread(target=lambda: result.update(rc=safe_shell_exec.execute(command)),
                              daemon=True)
    thread.start()
    return thread, result


def sleepers(seconds: str):
    return [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] == ["sleep", seconds]]


def test_a_process_mpirun_leaves_behind_is_killed_so_its_exit_code_is_reported(tmp_path):
    command = fake_mpirun(tmp_path, "sleep 397", 137)
    # Without the watch, Horovod's executor waits for the helper to close the pipe: here,
    # for as long as it runs.
    thread, result = run_in_thread(command)
    thread.join(8)
    assert thread.is_alive() and "rc" not in result
    for proc in sleepers("397"):
        proc.kill()
    thread.join(10)
    assert result["rc"] == 137
    # With it, the helper is killed `grace` seconds after mpirun ended, and named.
    started = time.monotonic()
    with MpirunReaper(grace=2, poll=0.1) as reaper:
        thread, result = run_in_thread(command)
        thread.join(60)
    assert result.get("rc") == 137
    assert time.monotonic() - started < 30
    assert len(reaper.killed) == 1 and reaper.killed[0].endswith("sleep 397")
    assert not sleepers("397")


def test_only_what_mpirun_started_is_touched(tmp_path):
    import subprocess

    # A process of the driver's own that mpirun did not start, still running after the grace.
    bystander = subprocess.Popen(["sleep", "398"])
    try:
        command = fake_mpirun(tmp_path, "sleep 0.2", 0)
        with MpirunReaper(grace=0.5, poll=0.1) as reaper:
            thread, result = run_in_thread(command)
            thread.join(30)
            time.sleep(1.5)  # past the grace: the watch has looked at the ended mpirun
        assert result["rc"] == 0 and reaper.killed == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
