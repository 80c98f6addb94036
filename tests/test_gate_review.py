"""The watched gate and the parallel gates against an ordinary user: what an ordinary
user does to them (a gate command that is not in the gate worktree, a .gate folder deleted
mid-run) ends the run with one line, or the gate goes on, never with a traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

import pytest

from crew import processes
from support.dispatching import (DISPATCH, add_task, dispatch, events, merge_subjects, merges_of, start_dispatcher, wait_for,
                                 wait_until)


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
    # As a gate that exits 127, on main itself too: main fails its checks, so no branch is blamed
    # (no fix task), and the merges wait (exit 1).
    assert result.returncode == 1, result.stderr[-3000:]
    failed = [e for e in events(repo) if e["event"] == "gate_failed"]
    assert failed and not merge_subjects(repo)  # each gate failed, and nothing reached main ungated
    assert not [t for t in store.list() if t.title.startswith("Fix failing checks")]
    said = next(line for line in result.stdout.splitlines() if line.startswith("main fails its checks at "))
    assert "merge_gate_command could not start in the gate worktree" in said


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


# The setup command: in a gate worktree (or a worker's), while the flag file exists, it records its
# pid and hangs (a slow `npm install`); elsewhere, and once the flag is gone, it does nothing.
HANGS_IN_SETUP = r"""
import os, pathlib, sys, time
flag, pid_file, where = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
if pathlib.Path.cwd().name.startswith(".gate") == (where == "gate") and flag.exists():
    pid_file.write_text(str(os.getpid()), encoding="utf-8")
    time.sleep(120)
"""


@pytest.mark.skipif(os.name == "nt", reason="kill -9 of the dispatcher alone needs POSIX signals")
@pytest.mark.parametrize("where", ["gate", "worker"])
def test_killed_during_a_worktree_setup_a_restart_ends_the_setup_command(json_agent_setup, repo, tmp_path, where):
    flag, pid_file = tmp_path / "hang", tmp_path / "setup.pid"
    flag.write_text("the first run's setup command hangs", encoding="utf-8")
    cfg, config, store = json_agent_setup(
        max_workers=1, merge_gate_command=[sys.executable, "-c", "pass"],
        worktree_setup_command=[sys.executable, "-c", HANGS_IN_SETUP, str(flag), str(pid_file), where])
    task = add_task(store, "S", "append s.txt line 1", files=["s.txt"])
    proc = subprocess.Popen([sys.executable, str(DISPATCH), "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        setup = psutil.Process(int(wait_for(lambda: pid_file.exists() and pid_file.read_text(encoding="utf-8"),
                                            f"the {where}'s setup command")))
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
    assert not left_running, f"the setup command the killed dispatcher left in the {where}'s worktree still runs"


@pytest.mark.skipif(os.name == "nt", reason="uses POSIX signals and sh")
def test_a_second_ctrl_c_ends_every_parallel_gate(json_agent_setup, repo, tmp_path):
    pids = tmp_path / "gates.pids"
    cfg, config, store = json_agent_setup(max_workers=3, merge_gate_parallelism=3, worker_kill_grace_secs=1,
                                          merge_gate_command=["sh", "-c", 'echo $$ >> "$0"; sleep 60 & wait', str(pids)])
    tasks = [add_task(store, f"C{i}", f"append c{i}.txt line {i}", files=[f"c{i}.txt"]) for i in range(3)]
    proc = start_dispatcher(cfg)
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 3, proc, "three gates")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 130
    assert not [pid for pid in map(int, pids.read_text().split()) if processes.group_alive(pid)]
    assert not merge_subjects(repo)
    assert sorted(e["task_id"] for e in json.loads((repo / ".dispatch_state.json").read_text())["merge_queue"]) == \
        sorted(t.id for t in tasks)


# A reference-transaction hook: the moment main has moved for the Nth time (N in the count file),
# the dispatcher is killed (-9), before it can record the merge.
KILLS_THE_DISPATCHER = r"""
import json, os, pathlib, signal, sys
if sys.argv[1] != "committed" or not any(line.split()[2] == "refs/heads/main" for line in sys.stdin if line.strip()):
    sys.exit(0)
count = pathlib.Path(sys.argv[2])
left = int(count.read_text()) - 1
count.write_text(str(left))
if left == 0:
    state = json.loads(pathlib.Path(".dispatch_state.json").read_text(encoding="utf-8"))
    os.kill(state["dispatcher"]["pid"], signal.SIGKILL)
"""


@pytest.mark.skipif(os.name == "nt", reason="kill -9 of the dispatcher alone needs POSIX signals")
@pytest.mark.parametrize("parallelism", [1, 3])
def test_killed_the_instant_main_moved_a_restart_lands_each_entry_once_and_never_a_failed_one(
        json_agent_setup, repo, tmp_path, parallelism):
    count = tmp_path / "moves"
    count.write_text("2", encoding="utf-8")
    (tmp_path / "kill.py").write_text(KILLS_THE_DISPATCHER, encoding="utf-8")
    hook = repo / ".git" / "hooks" / "reference-transaction"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "kill.py"}" "$1" "{count}"\n', encoding="utf-8")
    hook.chmod(0o755)
    cfg, config, store = json_agent_setup(
        max_workers=4, merge_gate_parallelism=parallelism, max_merge_retries=0,
        merge_gate_command=[sys.executable, "-c", "import os, sys, time; time.sleep(0.3); sys.exit(os.path.exists('k2.txt'))"])
    tasks = [add_task(store, f"K{i}", f"sleep {0.2 * i:.1f}", f"append k{i}.txt line {i}", files=[f"k{i}.txt"])
             for i in range(4)]
    first = dispatch(cfg)
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    hook.unlink()
    second = dispatch(cfg)
    assert "Traceback" not in second.stderr, second.stderr
    order = [t.id for t in tasks]
    assert [merges_of(repo, t) for t in order] == [1, 1, 0, 1]
    assert [store.get(t).status for t in order] == ["closed", "closed", "blocked", "closed"]




# The setup command: fails in .gate-2, once the gate in .gate-1 runs (it writes the pid file).
FAILS_IN_GATE_2 = r"""
import pathlib, sys, time
if pathlib.Path.cwd().name == ".gate-2":
    deadline = time.monotonic() + 30
    while not pathlib.Path(sys.argv[1]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(1)
"""

@pytest.mark.skipif(os.name == "nt", reason="uses sh")
def test_a_setup_command_failing_in_one_gate_worktree_stops_the_run_and_ends_the_other_gates(
        json_agent_setup, repo, tmp_path):
    pids = tmp_path / "gates.pids"
    cfg, config, store = json_agent_setup(max_workers=2, merge_gate_parallelism=2, worker_kill_grace_secs=1,
                                          worktree_setup_command=[sys.executable, "-c", FAILS_IN_GATE_2, str(pids)],
                                          merge_gate_command=["sh", "-c", 'echo $$ >> "$0"; sleep 30 & wait', str(pids)])
    for i in range(2):
        add_task(store, f"C{i}", f"append c{i}.txt line {i}", files=[f"c{i}.txt"])
    try:
        result = dispatch(cfg)
        alive = [pid for pid in map(int, pids.read_text().split()) if processes.group_alive(pid)]
    finally:
        for pid in map(int, pids.read_text().split()) if pids.exists() else ():
            if processes.group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "worktree_setup_command exited 1 in the gate worktree" in result.stderr
    assert not merge_subjects(repo)
    assert not alive, "the gate in .gate-1 outlived the dispatcher that stopped"


# The gate: the first one starts a helper in its process group (a test server), then exits once
# the release file exists; later ones pass at once.
LEAVES_A_HELPER = ('echo $$ >> "$0"; [ -e "$1" ] && exit 0; touch "$1"; sleep 60 > /dev/null 2>&1 & '
                   'i=0; while [ ! -e "$2" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; exit 0')


@pytest.mark.skipif(os.name == "nt", reason="kill -9 of the dispatcher alone needs POSIX signals")
def test_a_helper_left_by_a_gate_that_ended_while_the_dispatcher_was_dead_is_ended_on_restart(
        json_agent_setup, repo, tmp_path):
    pids, flag, release = tmp_path / "gate.pids", tmp_path / "gated-once", tmp_path / "release"
    cfg, config, store = json_agent_setup(merge_gate_command=["sh", "-c", LEAVES_A_HELPER, str(pids), str(flag),
                                                              str(release)])
    task = add_task(store, "Gated", "append h.txt h")
    proc = start_dispatcher(cfg)
    wait_until(lambda: pids.exists() and pids.read_text().strip(), proc, "the gate")
    proc.kill()  # SIGKILL: the gate outlives its dispatcher
    proc.communicate()
    group = int(pids.read_text().split()[0])
    leader = psutil.Process(group)
    release.write_text("the gate's own process exits now", encoding="utf-8")
    wait_for(lambda: not leader.is_running() or leader.status() == psutil.STATUS_ZOMBIE, "the gate's exit")
    try:
        result = dispatch(cfg)
        left_running = processes.group_alive(group)
    finally:
        if processes.group_alive(group):
            os.killpg(group, signal.SIGKILL)
    assert result.returncode == 0 and merges_of(repo, task.id) == 1
    assert not left_running, "the helper the first gate left in its group still runs"
