"""Adversarial review of the watched gate and the parallel gates (issue 13): what an ordinary
user does to them (a gate command that is not in the gate worktree, a .gate folder deleted
mid-run) ends the run with one line, or the gate goes on, never with a traceback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

import pytest

from dispatch_helpers import DISPATCH, add_task, dispatch, events, merge_subjects


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_gate_command_missing_from_the_gate_worktree_fails_the_gate_not_the_run(json_agent_setup, repo, parallelism):
    # The user's check script sits untracked in their folder: preflight finds it there, but the
    # gate worktree is a clean checkout of the merge commit, where it is not.
    script = repo / "check.sh"
    script.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    script.chmod(0o755)
    cfg, config, store = json_agent_setup(max_workers=2, merge_gate_command=["./check.sh"],
                                          merge_gate_parallelism=parallelism)
    for i in range(2):
        add_task(store, f"M{i}", "sleep 0.1", f"append m{i}.txt line {i}", files=[f"m{i}.txt"])
    result = dispatch(cfg)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    # As a gate that exits 127: each entry fails its gate, and after the fix tasks is blocked (exit 1).
    assert result.returncode == 1, result.stderr[-3000:]
    failed = [e for e in events(repo) if e["event"] == "gate_failed"]
    assert failed and not merge_subjects(repo)  # each gate failed, and nothing reached main ungated
    fix = [t for t in store.list() if t.title.startswith("Fix failing checks")]
    assert fix and "could not start" in fix[0].description


# The gate: its worktree folder is deleted while it runs (as a user tidying up would), then it passes.
DELETES_ITS_WORKTREE = "import os, shutil; shutil.rmtree(os.getcwd())"


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_gate_worktree_deleted_mid_run_is_made_again_for_the_next_gate(json_agent_setup, repo, parallelism):
    cfg, config, store = json_agent_setup(max_workers=3, merge_gate_command=[sys.executable, "-c", DELETES_ITS_WORKTREE],
                                          merge_gate_parallelism=parallelism)
    tasks = [add_task(store, f"D{i}", f"sleep {0.3 * i:.1f}", f"append d{i}.txt line {i}", files=[f"d{i}.txt"])
             for i in range(3)]
    result = dispatch(cfg)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(merge_subjects(repo)) == len(tasks)


# The setup command: in a gate worktree, while the flag file exists, it records its pid and hangs
# (a slow `npm install`); elsewhere, and once the flag is gone, it does nothing.
HANGS_IN_A_GATE = r"""
import os, pathlib, sys, time
flag, pid_file = map(pathlib.Path, sys.argv[1:3])
if pathlib.Path.cwd().name.startswith(".gate") and flag.exists():
    pid_file.write_text(str(os.getpid()), encoding="utf-8")
    time.sleep(120)
"""


def wait_for(predicate, what: str, limit: float = 60):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.mark.skipif(os.name == "nt", reason="kill -9 of the dispatcher alone needs POSIX signals")
@pytest.mark.xfail(strict=True, reason="a gate's worktree_setup_command has no recorded pid (the gate record's pid "
                                       "is None until the gate command starts): a restart cannot end it")
def test_killed_during_a_gate_worktree_setup_a_restart_ends_the_setup_command(json_agent_setup, repo, tmp_path):
    flag, pid_file = tmp_path / "hang", tmp_path / "setup.pid"
    flag.write_text("the first run's gate setup hangs", encoding="utf-8")
    cfg, config, store = json_agent_setup(
        max_workers=1, merge_gate_command=[sys.executable, "-c", "pass"],
        worktree_setup_command=[sys.executable, "-c", HANGS_IN_A_GATE, str(flag), str(pid_file)])
    task = add_task(store, "S", "append s.txt line 1", files=["s.txt"])
    proc = subprocess.Popen([sys.executable, str(DISPATCH), "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        setup = psutil.Process(int(wait_for(lambda: pid_file.exists() and pid_file.read_text(encoding="utf-8"),
                                            "the gate's setup command")))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    flag.unlink()
    try:
        result = dispatch(cfg)
        left_running = setup.is_running() and setup.status() != psutil.STATUS_ZOMBIE
    finally:
        if setup.is_running():
            setup.kill()
    assert result.returncode == 0 and merge_subjects(repo) and store.get(task.id).status == "closed"
    assert not left_running, "the setup command the killed dispatcher left in .gate is still running"
