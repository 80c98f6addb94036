"""Ending a process tree without waiting for it (processes.TreeKill), on real process trees."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from crew import orphans
from crew import processes

pytestmark = pytest.mark.skipif(processes.IS_WINDOWS, reason="POSIX process groups (Windows uses taskkill /T)")


def start_tree(tmp_path: Path, script: str) -> tuple[subprocess.Popen, int]:
    """`sh -c script` in its own group, once its background `sleep` runs; returns (sh, sleep's pid)."""
    proc = processes.start_process(["sh", "-c", script], tmp_path, None, tmp_path / "tree.log", "a test tree")
    deadline = time.monotonic() + 30
    while not (children := psutil.Process(proc.pid).children()):
        assert time.monotonic() < deadline, "the tree's sleep did not start within 30 s"
        time.sleep(0.01)
    return proc, children[0].pid


def alive(pid: int) -> bool:
    """A zombie is dead already, however late PID 1 reaps it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def poll_until_ended(kill: processes.TreeKill, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not kill.poll():
        assert time.monotonic() < deadline, f"the tree did not end within {limit} s"
        time.sleep(0.01)


def test_a_tree_that_obeys_ends_within_its_grace(tmp_path):
    proc, sleeper = start_tree(tmp_path, "sleep 60 & wait")
    kill = processes.TreeKill.begin(proc.pid, grace=60, proc=proc)
    poll_until_ended(kill, 30)
    assert not kill.forced  # ended by the terminate signal, not killed
    assert proc.returncode is not None and not alive(sleeper)
    assert not processes.group_alive(proc.pid)


def test_begin_returns_at_once_and_a_tree_that_ignores_terminate_is_killed_after_the_grace(tmp_path):
    proc, sleeper = start_tree(tmp_path, "trap '' TERM; sleep 60 & wait")
    kill = processes.TreeKill.begin(proc.pid, grace=60, proc=proc)
    # The tree ignores SIGTERM and the grace is far off: begin did not wait, and nothing was killed.
    assert not kill.poll() and not kill.forced
    assert processes.group_alive(proc.pid)
    kill.deadline = time.monotonic()  # the grace is over
    poll_until_ended(kill, 30)
    assert kill.forced
    assert proc.returncode is not None and not alive(sleeper)


def test_kill_tree_waits_until_the_whole_tree_has_ended(tmp_path):
    proc, sleeper = start_tree(tmp_path, "trap '' TERM; sleep 60 & wait")
    processes.kill_tree(proc.pid, 0.2, proc)
    assert proc.returncode is not None and not processes.group_alive(proc.pid)
    assert not alive(sleeper)


def test_reaping_orphans_never_takes_the_exit_status_of_a_command_of_ours():
    # The dispatcher, a subreaper, reaps the dead children no Popen owns. A failing command it
    # runs meanwhile (a gate, a git call) must still read as failed, never as exit 0.
    stop = threading.Event()

    def reap_until_stopped() -> None:
        while not stop.is_set():
            orphans.reap_orphans()
            time.sleep(0)  # let the commands' thread take the lock: Python's locks are not fair

    reaper = threading.Thread(target=reap_until_stopped)
    reaper.start()
    try:
        codes = [processes.run("sh", "-c", "exit 3", check=False).returncode for _ in range(30)]
    finally:
        stop.set()
        reaper.join()
    assert codes == [3] * 30
