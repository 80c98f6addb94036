"""The loop never waits on the gate: while a 60 s gate runs, a worker past its deadline is ended,
a freed slot is refilled, and Ctrl-C is answered. Order only: the figures are
scripts/bench_dispatch.py --only responsiveness's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from crew import processes
from support.dispatching import DISPATCH, add_task, events, run_with_a_person_on_followups
from support.repos import git
from support.scripts import benchkit

GATE_SECS = 60  # benchkit.SLOW_GATE: everything below must happen well before it ends


@pytest.mark.skipif(os.name == "nt", reason="sends SIGINT")
def test_a_timeout_a_refill_and_ctrl_c_all_happen_while_the_gate_runs(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(**benchkit.RESPONSIVENESS_SETTINGS)
    ids = {title: store.create(title, cues).id for title, cues in benchkit.RESPONSIVENESS_TASKS}
    proc = subprocess.Popen([sys.executable, str(DISPATCH), "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def quick_exit_and_then_a_start(log: list[dict]) -> bool:
        exited = [i for i, e in enumerate(log) if e["event"] == "worker_exited" and e["task_id"] == ids["Quick"]]
        return bool(exited) and any(e["event"] == "worker_started" for e in log[exited[0]:])

    deadline = time.monotonic() + GATE_SECS / 2
    while not (any(e["event"] == "worker_timed_out" for e in events(repo))
               and quick_exit_and_then_a_start(events(repo))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no timeout and refill while the gate ran; dispatcher exit {proc.returncode}\n{out}\n{err}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=GATE_SECS / 2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("Ctrl-C twice did not stop the dispatcher while the gate ran")
    assert proc.returncode == 130

    log = events(repo)
    names = [(e["event"], e["task_id"]) for e in log]
    gate_started = names.index(("gate_started", ids["Gated"]))
    assert names.index(("worker_timed_out", ids["Hangs"])) > gate_started
    assert names.index(("worker_exited", ids["Quick"])) > gate_started
    assert quick_exit_and_then_a_start(log)
    # The stop ended the gate: no verdict, nothing merged, its process tree gone.
    assert not [name for name, _ in names if name in ("gate_passed", "gate_failed", "merged")]
    assert not processes.group_alive(log[gate_started]["pid"])


def test_a_gate_past_its_timeout_is_ended_and_files_a_fix_task(json_agent_setup, repo):
    # Slow on the branch only: on main itself (checked before the failure is blamed on the branch) it passes.
    slow_on_the_branch = [sys.executable, "-c", "import os, time; os.path.exists('slow.txt') and time.sleep(60)"]
    cfg, config, store = json_agent_setup(merge_gate_command=slow_on_the_branch, merge_gate_timeout_secs=1)
    before = git(repo, "rev-parse", "main")
    task = add_task(store, "Slow checks", "append slow.txt s")
    filed_id, _ = run_with_a_person_on_followups(config, store)
    fix = store.get(filed_id)
    assert fix.title == f"Fix failing checks: work/{task.id}"
    assert "merge_gate_command timed out after 1 s" in fix.description
    assert git(repo, "rev-parse", "main") == before
    [started] = events(repo, "gate_started")
    assert [e["passed"] for e in events(repo, "main_checked")] == [True]
    assert processes.process_start_time(started["pid"]) is None  # ended and reaped
