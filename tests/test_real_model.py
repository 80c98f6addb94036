"""End to end on a real coder model: Qwen2.5-Coder 1.5B Instruct (Q4_K_M) in the real Ollama,
the real Aider, real git; nothing scripted.

DISPATCH_REAL_OLLAMA names the ollama binary (scripts/install_ollama.sh), whose model store holds
the model (scripts/install_model.sh); DISPATCH_REAL_AIDER names Aider. `.ci/run` sets both. One
small repository with pytest tests (scripts/bench_goals/units, the benchmark's first goal) and
one goal: split by the model, dispatched with the default Aider worker command on the same
model, one worker, the repository's tests as merge_gate_command. The test asserts the toolkit's
promises, not the model's skill, and prints how many subtasks merged.

It takes at most RUN_BOUND_SECS: at the bound it stops the dispatcher as a person would (Ctrl-C
twice) and checks that the work in flight was kept and nothing was left in progress.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crew import config as configuration
from crew import tasks
from support.dispatching import events, wait_until
from support.repos import ROOT, git
from support.tools import require_real_tool
from support.scripts import benchkit

sys.path.insert(0, str(ROOT / "scripts"))
import bench_model  # noqa: E402

pytestmark = [pytest.mark.real_tool, pytest.mark.slow,
              pytest.mark.skipif(os.name == "nt", reason="scripts/install_ollama.sh is POSIX")]

REAL_OLLAMA = os.environ.get("DISPATCH_REAL_OLLAMA", "")
REAL_AIDER = os.environ.get("DISPATCH_REAL_AIDER", "")
GOAL = "units"
# 15 minutes on 2 cores for the split and the run; the checks after it take seconds.
RUN_BOUND_SECS = 15 * 60
# The run after the stop finishes what the stop left; should its Ctrl-C come after a new worker
# started, that worker runs to its end (worker_timeout_secs) and its gate (120 s) first.
RESTARTS, RESTART_SECS = 2, 300 + 120 + 60
TEST_TIMEOUT_SECS = RUN_BOUND_SECS + bench_model.STOP_GRACE_SECS + RESTARTS * RESTART_SECS + 180


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """The install's Ollama serving its model store, which must hold the model."""
    binary = Path(REAL_OLLAMA) if REAL_OLLAMA else None
    require_real_tool(bool(binary) and binary.is_file(),
                      "DISPATCH_REAL_OLLAMA does not name an ollama binary (scripts/install_ollama.sh builds one)")
    server = benchkit.OllamaServe(binary, tmp_path_factory.mktemp("ollama-qwen"))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        require_real_tool(f"{bench_model.MODEL}" in server.models(),
                          f"{bench_model.MODEL} is not in {binary.parent / 'models'} (scripts/install_model.sh installs it)")
        yield server
    finally:
        server.stop()


def run_tests_on(repo: Path, commit: str, where: Path) -> subprocess.CompletedProcess:
    """The repository's tests on `commit`, in a worktree of its own."""
    git(repo, "worktree", "add", "-q", "--detach", str(where), commit)
    try:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=where,
                              capture_output=True, text=True, timeout=120)
    finally:
        git(repo, "worktree", "remove", "--force", str(where))


def finish_what_the_stop_left(config: Path, repo: Path, env: dict) -> None:
    """Run the dispatcher again and press Ctrl-C once it has started: it finishes the stopped
    workers' records and starts nothing new. A Ctrl-C that lands before its handler is set
    (between the start event and the next statement) ends that run at once: then again."""
    for _ in range(RESTARTS):
        seen = len(events(repo, "dispatcher_started"))
        proc = subprocess.Popen([sys.executable, str(ROOT / "dispatch_workers.py"), "--config", str(config)], cwd=repo,
                                env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_until(lambda: len(events(repo, "dispatcher_started")) > seen, proc, "the restart", RESTART_SECS)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=RESTART_SECS)[0]
        assert "Traceback" not in output and proc.returncode == 130, output
        if "starting nothing new" in output:
            return
    pytest.fail(f"no restart took its Ctrl-C as a person's: {output}")


@pytest.mark.timeout(TEST_TIMEOUT_SECS)
def test_a_real_model_splits_and_codes_a_goal_and_the_toolkit_keeps_its_promises(qwen, tmp_path):
    require_real_tool(bool(REAL_AIDER) and Path(REAL_AIDER).is_file(),
                      "DISPATCH_REAL_AIDER does not name an aider executable (scripts/install_aider.sh installs one)")
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "BROWSER": "true",  # Aider writes its settings under HOME
           "PATH": str(Path(REAL_AIDER).parent) + os.pathsep + os.environ["PATH"]}
    run = bench_model.run_goal(GOAL, tmp_path, bench_model.settings(qwen.url, bench_model.MODEL, RUN_BOUND_SECS),
                               RUN_BOUND_SECS, env)
    figures = bench_model.figures(run)
    print(f"\n{figures['merged']} of {figures['subtasks']} subtasks merged in {figures['minutes']:.1f} min "
          f"({'stopped at the bound' if run.stopped else 'ended by itself'}): {figures}")
    store = tasks.open_task_store(configuration.load_config(str(run.config)))

    # A valid plan, or a one-line refusal that creates nothing.
    assert "Traceback" not in run.split.stderr
    if not run.plan_valid:
        lines = run.split.stderr.splitlines()  # with --json, its progress lines go to stderr too
        assert run.split.returncode == 1 and [l for l in lines if l.startswith("error:")] == lines[-1:], lines
        assert store.list(None) == [] and run.dispatch_code is None
        return
    subtasks = [store.get(i) for i in run.created]
    assert subtasks and all(t.title and t.files for t in subtasks)

    # The run ended by itself (0: all merged, 1: some blocked) within the bound, or was stopped
    # there (130); never a traceback.
    assert "Traceback" not in run.dispatch_output, run.dispatch_output[-3000:]
    assert run.dispatch_code in ((130,) if run.stopped else (0, 1)), run.dispatch_output[-3000:]

    # Work in flight at the stop is kept: each worker the stop ended left its branch, and its
    # task was released by the stop (the stop itself runs no git step).
    repo = run.repo
    if run.stopped:
        for stopped in events(repo, "worker_stopped"):
            [started] = [e for e in events(repo, "worker_started") if e["task_id"] == stopped["task_id"]][-1:]
            assert git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{started['branch']}"), started["branch"]
            assert store.get(stopped["task_id"]).status != "in_progress", stopped
        # A branch the stop found in the merge queue keeps its task's claim: the person runs the
        # dispatcher again and presses Ctrl-C once: it finishes what the stop left (merges the
        # queue and the stopped workers' commits) and starts nothing new.
        finish_what_the_stop_left(run.config, repo, env)

    # Main only ever moved to commits whose tests pass: each commit main moved to, from the events.
    moved_to = [e["commit"] for e in events(repo, "merged")]
    first_parents = git(repo, "rev-list", "--first-parent", "main").splitlines()[:-1]  # all but the initial commit
    assert sorted(first_parents) == sorted(moved_to)
    for n, commit in enumerate(moved_to):
        result = run_tests_on(repo, commit, tmp_path / f"check-{n}")
        assert result.returncode == 0, f"main moved to {commit}, whose tests fail:\n{result.stdout[-2000:]}"

    # No task lost or left in progress; every blocked task says why. A task stays in progress
    # only while its branch waits on an open conflict or fix task (the restart's gate may fail
    # on the commit the stop left): its pending merge names that task.
    everything = store.list(None)
    assert {t.id for t in subtasks} <= {t.id for t in everything}
    status = {t.id: t.status for t in everything}
    pending = repo / ".dispatch_pending_merge_retries.json"
    waiting = {merge["task_id"] for followup, merge in
               (json.loads(pending.read_text(encoding="utf-8")) if pending.exists() else {}).items()
               if status.get(followup) == "open"}
    assert [i for i, s in status.items() if s == "in_progress" and i not in waiting] == []
    blocked_why = {e["task_id"]: e.get("reason") for e in events(repo, "blocked")}
    for task in everything:
        if task.status == "blocked":
            assert blocked_why.get(task.id), f"{task.id} is blocked and says not why"
    for task_id in {e["task_id"] for e in events(repo, "merged")}:
        assert store.get(task_id).status in ("closed", "open")  # open: partial work merged, the task released

    # The report shows the attempts and the tokens (Aider prints its counts when a reply ends:
    # an attempt ended by the timeout or the stop may have none).
    report = bench_model.read_report(run)
    attempted = {e["task_id"] for e in events(repo, "worker_started")}
    assert attempted and attempted == {a.task_id for a in report.attempts}
    if any(a.ended == "exited" for a in report.attempts):
        assert sum(row.tokens.sent for row in report.tasks.values() if row.tokens) > 0
    page = (repo / ".dispatch_logs" / "report.html").read_text(encoding="utf-8")
    assert all(task_id in page for task_id in attempted)
