"""Stopping: signals, a task blocked or reopened while its worker runs, a hanging setup command or gate."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from crew import processes
from crew.dispatch import records
from crew.dispatch.loop import Dispatcher
from support.dispatching import (DISPATCH, add_task, dispatch, events, has_commit, main_file, merges_of,
                                 start_dispatcher, start_dispatcher_with_a_worker, wait_until)
from support.repos import ROOT, git

posix_only = pytest.mark.skipif(os.name == "nt", reason="uses POSIX signals and sh")
windows_only = pytest.mark.skipif(os.name != "nt", reason="Windows console events")

# A command that starts a grandchild and waits for it, recording its own pid (= its process group).
HANG = 'echo $$ > "$0"; sleep 60 & wait'


def state(repo: Path) -> dict:
    return json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))


def tasks_cli(cfg: Path, *args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "tasks.py"), "--config", str(cfg), *args], check=True,
                   capture_output=True)


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[str, str]:
    """The dispatcher's output once it has exited; it is killed (and the test fails) if it hangs."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the dispatcher did not exit within {timeout} s")


@posix_only
@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])  # names: Windows has no SIGHUP
def test_sigterm_and_sighup_end_the_workers_and_keep_their_branches(json_agent_setup, repo, name):
    signum = getattr(signal, name)
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Stubborn", "append partial.txt partial", "hang")
    proc = start_dispatcher(cfg)
    wait_until(lambda: has_commit(repo, f"work/{task.id}"), proc, "the agent's commit")
    if signum == signal.SIGHUP:  # the terminal is gone: every write the dispatcher makes now fails
        proc.stdout.close()
        proc.stderr.close()
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
    assert code == 128 + signum  # 143, 129
    assert not processes.group_alive(events(repo, "worker_started")[0]["pid"])
    assert git(repo, "branch", "--list", "--format=%(refname:short)", f"work/{task.id}") == f"work/{task.id}"
    recorded = state(repo)
    assert recorded["dispatcher"] is None
    assert [(w["task_id"], w["ended"]) for w in recorded["workers"]] == [(task.id, f"stopped by {name}")]
    assert store.get(task.id).status == "open"  # released by the stop: the next run claims it again to merge the work


@windows_only
def test_ctrl_break_on_windows_ends_the_workers_and_keeps_their_branches(json_agent_setup, repo):
    # A closed console arrives the same way (CTRL_CLOSE_EVENT), but cannot be sent from a test.
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Stubborn", "append partial.txt partial", "hang")
    proc = subprocess.Popen([sys.executable, str(DISPATCH), "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)
    wait_until(lambda: has_commit(repo, f"work/{task.id}"), proc, "the agent's commit")
    proc.send_signal(signal.CTRL_BREAK_EVENT)
    finish(proc)
    assert proc.returncode == 128 + signal.SIGBREAK
    assert git(repo, "branch", "--list", "--format=%(refname:short)", f"work/{task.id}") == f"work/{task.id}"
    assert [(w["task_id"], w["ended"]) for w in state(repo)["workers"]] == [(task.id, "stopped by SIGBREAK")]


@posix_only
def test_blocking_a_running_task_ends_its_worker_keeps_its_branch_and_merges_nothing(json_agent_setup, repo):
    # worker_timeout_secs only bounds the test when the block goes unnoticed (the bug).
    cfg, config, store = json_agent_setup(worker_timeout_secs=10)
    task = add_task(store, "Wrong way round", "append wrong.txt wrong", "hang")
    proc = start_dispatcher(cfg, "--json")
    wait_until(lambda: has_commit(repo, f"work/{task.id}"), proc, "the agent's commit")
    tasks_cli(cfg, "block", task.id, "-r", "the approach is wrong")
    out, err = finish(proc)
    assert proc.returncode == 1, err
    assert [e["reason"] for e in events(repo, "worker_stopped")] == [records.TASK_BLOCKED]
    assert events(repo, "worker_timed_out") == [] and events(repo, "merged") == []
    assert not processes.group_alive(events(repo, "worker_started")[0]["pid"])
    assert json.loads(out)["blocked"] == [{"id": task.id, "reason": (
        f"blocked while its worker ran; the worker was ended, its branch work/{task.id} kept and not merged")}]
    assert main_file(repo, "wrong.txt") is None
    assert git(repo, "show", f"work/{task.id}:wrong.txt") == "wrong"  # the work is kept on its branch
    final = store.get(task.id)
    assert final.status == "blocked" and "the approach is wrong" in final.notes
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert state(repo)["workers"] == [] and state(repo)["attempts"] == {}


@posix_only
def test_a_task_reopened_while_its_worker_runs_is_not_started_twice(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(max_workers=2)
    task = add_task(store, "Reopened", "append r.txt r", "sleep 3")
    proc = start_dispatcher_with_a_worker(cfg, repo)
    tasks_cli(cfg, "reopen", task.id)
    plan = json.loads(dispatch(cfg, "--dry-run", "--json").stdout)
    assert plan == [{"id": task.id, "title": task.title, "start": False, "reason": "its worker is still running"}]
    out, err = finish(proc, timeout=90)
    assert proc.returncode == 0, out + err
    assert f"{task.id}: not started again: its worker is still running" in out
    # One worker at a time: the reopened task ran again only after its first worker had finished
    # (its branch was kept unmerged, since the task was no longer claimed, and continued).
    timeline = [e["event"] for e in events(repo) if e["event"] in ("worker_started", "worker_exited")]
    assert timeline == ["worker_started", "worker_exited", "worker_started", "worker_exited"]
    assert merges_of(repo, task.id) == 1 and store.get(task.id).status == "closed"
    assert main_file(repo, "r.txt") == "r\nr\n"


@posix_only
def test_a_hanging_setup_command_is_ended_as_a_tree_at_its_timeout(json_agent_setup, repo, tmp_path):
    pidfile = tmp_path / "setup.pid"
    cfg, config, store = json_agent_setup(worktree_setup_command=["sh", "-c", HANG, str(pidfile)],
                                          worktree_setup_timeout_secs=1, max_attempts=1, worker_kill_grace_secs=1)
    task = add_task(store, "Never set up", "append x.txt x")
    proc = dispatch(cfg, timeout=60)
    assert proc.returncode == 1
    final = store.get(task.id)
    assert final.status == "blocked" and "worktree_setup_command timed out after 1 s" in final.notes
    assert not processes.group_alive(int(pidfile.read_text()))  # the sleep 60 too


def ctrl_c_twice_while_it_hangs(json_agent_setup, tmp_path: Path, setting: str, name: str) -> tuple:
    """A task appends to `name` while the command in `setting` hangs with a grandchild; Ctrl-C
    twice once the command runs. (the store, the task, the command's process group), once the
    dispatcher has exited 130."""
    pidfile = tmp_path / "hanging.pid"
    cfg, config, store = json_agent_setup(**{setting: ["sh", "-c", HANG, str(pidfile)]})
    task = add_task(store, f"Write {name}", f"append {name} {name}")
    proc = start_dispatcher(cfg)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), proc, f"the {setting}")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    finish(proc)
    assert proc.returncode == 130
    return store, task, int(pidfile.read_text())


@posix_only
def test_a_second_ctrl_c_ends_a_hanging_setup_command(json_agent_setup, repo, tmp_path):
    store, task, setup = ctrl_c_twice_while_it_hangs(json_agent_setup, tmp_path, "worktree_setup_command", "s.txt")
    assert not processes.group_alive(setup)
    # Recorded but never started: the next run releases it and runs it, counting no attempt.
    assert [w["pid"] for w in state(repo)["workers"]] == [None]
    cfg2, *_ = json_agent_setup()
    assert dispatch(cfg2).returncode == 0
    assert store.get(task.id).status == "closed" and main_file(repo, "s.txt") == "s.txt\n"


@posix_only
def test_a_second_ctrl_c_ends_a_hanging_gate(json_agent_setup, repo, tmp_path):
    store, task, gate = ctrl_c_twice_while_it_hangs(json_agent_setup, tmp_path, "merge_gate_command", "g.txt")
    assert not processes.group_alive(gate)
    assert [e["task_id"] for e in state(repo)["merge_queue"]] == [task.id]  # gated again by the next run
    assert main_file(repo, "g.txt") is None


@posix_only
def test_a_gate_left_running_by_a_killed_dispatcher_is_ended_and_the_branch_merges_once(
        json_agent_setup, repo, tmp_path):
    pidfile, flag = tmp_path / "gate.pids", tmp_path / "gated-once"
    # Each gate adds its pid (its process group) to the file; the first one hangs with a grandchild,
    # the restarted dispatcher's gate passes at once.
    gate = ["sh", "-c", 'echo $$ >> "$0"; [ -e "$1" ] && exit 0; touch "$1"; sleep 60 & wait', str(pidfile), str(flag)]
    cfg, config, store = json_agent_setup(merge_gate_command=gate)
    task = add_task(store, "Gated", "append g.txt g")
    proc = start_dispatcher(cfg)
    wait_until(lambda: flag.exists() and pidfile.read_text().strip(), proc, "the gate")
    proc.kill()  # SIGKILL: no handler runs, the gate outlives its dispatcher
    proc.communicate()
    first_gate = int(pidfile.read_text().split()[0])
    assert processes.group_alive(first_gate)
    result = dispatch(cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not processes.group_alive(first_gate)
    assert merges_of(repo, task.id) == 1 and store.get(task.id).status == "closed"
    assert state(repo)["gates"] == [] and len(pidfile.read_text().split()) == 2  # gated again, once


# A worker that outlives the terminate signal; on it, it counts the workers (pid files) still alive.
DEAF_WORKER = ('dir=$0 me=$1; '
               'on_term() { alive=0; for f in "$dir"/*.pid; do kill -0 "$(cat "$f")" 2>/dev/null && alive=$((alive+1)); '
               'done; echo $alive >> "$dir/$me.term"; }; '
               'trap on_term TERM; echo $$ > "$dir/$me.pid"; while :; do sleep 0.1; done')


@posix_only
def test_a_stop_now_asks_every_worker_to_end_before_it_kills_any(json_agent_setup, repo, tmp_path):
    # Ended one after the other, each worker would outlive its grace before the next heard of the
    # stop: three workers would take three graces, and the later ones would count fewer alive.
    signals = tmp_path / "signals"
    signals.mkdir()
    cfg, config, store = json_agent_setup(worker_command=["sh", "-c", DEAF_WORKER, str(signals), "{task_id}"],
                                          max_workers=3, worker_kill_grace_secs=3)
    tasks = [add_task(store, f"Deaf {n}") for n in range(3)]
    proc = start_dispatcher(cfg)
    wait_until(lambda: len(list(signals.glob("*.pid"))) == 3, proc, "three workers")
    proc.send_signal(signal.SIGTERM)
    finish(proc)
    assert proc.returncode == 143
    # Each worker heard the stop while all three were alive: all were asked before any was killed.
    assert {t.id: (signals / f"{t.id}.term").read_text().split() for t in tasks} == {t.id: ["3"] for t in tasks}
    assert not any(processes.group_alive(e["pid"]) for e in events(repo, "worker_started"))
    assert sorted(w["ended"] for w in state(repo)["workers"]) == ["stopped by SIGTERM"] * 3


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@posix_only
def test_a_daemon_that_left_the_workers_group_is_ended_with_it_and_a_failing_gate_still_fails(
        json_agent_setup, repo, tmp_path):
    # The agent leaves a helper that called setsid and ignores SIGTERM (a test server it started).
    # The dispatcher reaps such orphans itself on Linux: the gate's exit status must still be its own.
    pid_file = tmp_path / "daemon.pid"
    cfg, config, store = json_agent_setup(max_merge_retries=0,
                                          merge_gate_command=[sys.executable, "-c", "import sys; sys.exit(1)"])
    task = add_task(store, "Serves", f"daemon {pid_file}", "append served.txt s")
    result = dispatch(cfg)
    daemon = int(pid_file.read_text(encoding="utf-8"))
    left_running = running(daemon)
    if left_running:
        os.kill(daemon, signal.SIGKILL)
    assert not left_running, "the worker's daemon outlived its worker"
    assert "Traceback" not in result.stderr, result.stderr
    assert [e["task_id"] for e in events(repo, "gate_failed")][:1] == [task.id]
    assert merges_of(repo, task.id) == 0 and main_file(repo, "served.txt") is None


def test_ctrl_c_while_a_claim_is_in_flight_starts_no_worker_and_releases_the_task(json_agent_setup, repo,
                                                                                   monkeypatch):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Claimed as the user pressed Ctrl-C", "append a.txt one")
    dispatcher = Dispatcher(config, store, 2, out=lambda message: None)
    claim = store.claim

    def claim_then_ctrl_c(*args, **kwargs):
        claimed = claim(*args, **kwargs)
        dispatcher.interrupt()  # the user's Ctrl-C, while the claim's answer is on its way back
        return claimed

    monkeypatch.setattr(store, "claim", claim_then_ctrl_c)
    dispatcher.run()
    assert [e["event"] for e in events(repo) if e.get("task_id") == task.id] == ["released"]
    assert store.get(task.id).status == "open" and not state(repo)["workers"]
