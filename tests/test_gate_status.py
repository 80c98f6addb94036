"""--status tells what a recorded gate is doing: gating, ending (cancelled or timed out, its
process tree still dying), or not running at all (its dispatcher is gone)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from support.dispatching import DISPATCH, add_task, dispatch, events, merge_subjects, wait_until
from support.repos import commit_file
from crew.dispatch import records
from crew.dispatch import status as run_status

# The gate: records its pid, then, while the flag file exists, runs on and ignores SIGTERM (a test
# runner finishing its teardown); once the flag is gone it passes.
DIES_SLOWLY = r"""
import os, pathlib, signal, sys, time
flag, pid_file = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pid_file.write_text(str(os.getpid()), encoding="utf-8")
while flag.exists():
    time.sleep(0.05)
"""


def gate_record(**fields) -> records.GateRecord:
    return records.GateRecord(**{"task_id": "t-1", "branch": "work/t-1", "base": "b" * 40, "commit": "c" * 40,
                                 "worktree": "/w/.gate", "log": ".dispatch_logs/gate.log", "pid": 42,
                                 "pid_start_time": 1.0, "started_at": 0.0, "deadline": None, **fields})


def test_a_gate_state_is_what_the_records_and_the_process_table_say():
    assert run_status.gate_state(gate_record(pid=None), True, False)["state"] == "preparing"
    assert run_status.gate_state(gate_record(), True, True) == {"state": "gating", "reason": None}
    assert run_status.gate_state(gate_record(ending="main moved"), True, True) == {"state": "ending",
                                                                                   "reason": "main moved"}
    for ending in (None, "main moved"):
        gone = run_status.gate_state(gate_record(ending=ending), False, False)
        assert gone == {"state": "not running", "reason": "the dispatcher is not running"}
    left = run_status.gate_state(gate_record(), False, True)
    assert left["state"] == "not running" and "its process 42 is still alive" in left["reason"]


def run_until_gating(json_agent_setup, tmp_path):
    """A dispatcher, as a process, whose one task's gate is running (and ignores SIGTERM while the
    flag file exists): (config path, task, flag, the dispatcher)."""
    flag, pid_file = tmp_path / "slow", tmp_path / "gate.pid"
    flag.write_text("the gate ignores SIGTERM while this exists", encoding="utf-8")
    cfg, config, store = json_agent_setup(max_workers=1, worker_kill_grace_secs=120, merge_gate_command=[
        sys.executable, "-c", DIES_SLOWLY, str(flag), str(pid_file)])
    task = add_task(store, "Gated", "append g.txt line", files=["g.txt"])
    proc = subprocess.Popen([sys.executable, str(DISPATCH), "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: pid_file.exists(), proc, "the gate started")
    except BaseException:
        flag.unlink()  # whatever started of the gate exits
        raise
    return cfg, task, flag, proc


def gate_status(cfg) -> tuple[dict, str]:
    as_json = json.loads(dispatch(cfg, "--status", "--json").stdout)["gates"]
    return as_json, dispatch(cfg, "--status").stdout


@pytest.mark.skipif(os.name == "nt", reason="the gate ignores SIGTERM, a POSIX signal")
def test_status_shows_a_cancelled_gate_still_dying_as_ending(json_agent_setup, repo, tmp_path):
    cfg, task, flag, proc = run_until_gating(json_agent_setup, tmp_path)
    try:
        commit_file(repo, "other.txt", "the user commits on main\n")  # the gate's merge is void now
        wait_until(lambda: events(repo, "gate_cancelled"), proc, "the gate cancelled")
        gates, text = gate_status(cfg)
        flag.unlink()  # the gate ends; the merge is gated again, on the new main, and passes
        proc.wait(timeout=120)
    finally:
        flag.unlink(missing_ok=True)
        proc.kill()
        proc.wait()
    assert [(g["task_id"], g["state"]) for g in gates] == [(task.id, "ending")]
    assert gates[0]["reason"].startswith("main moved")
    assert "ending (main moved" in text and "gating" not in text
    assert proc.returncode == 0 and len(merge_subjects(repo)) == 1


@pytest.mark.skipif(os.name == "nt", reason="kill -9 of the dispatcher alone needs POSIX signals")
def test_status_shows_a_dead_dispatchers_gate_as_not_running(json_agent_setup, repo, tmp_path):
    cfg, task, flag, proc = run_until_gating(json_agent_setup, tmp_path)
    try:
        os.kill(proc.pid, signal.SIGKILL)  # the gate, in its own process group, lives on
        proc.wait()
        gates, text = gate_status(cfg)
    finally:
        flag.unlink(missing_ok=True)  # the orphaned gate exits
        proc.kill()
        proc.wait()
    assert [(g["task_id"], g["state"]) for g in gates] == [(task.id, "not running")]
    assert gates[0]["reason"].startswith("the dispatcher is not running")
    assert "dispatcher: not running" in text and "gating" not in text
