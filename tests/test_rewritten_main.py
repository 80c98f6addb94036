"""Main rewritten under the dispatcher (a user's reset or amend while workers run): the commits
that left main never come back through the dispatcher's branches."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crew import failpoints
from crew.dispatch import records
from support.dispatching import add_task, dispatch, events, main_file, merges_of, run_in_process
from support.repos import ROOT, commit_file, git


def on_main(repo, commit: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", commit, "main"], cwd=repo).returncode == 0


def drop_from_main_once(repo, commit: str):
    """A failpoint's action: the user resets main to before `commit`, the first time only."""
    def drop():
        if git(repo, "rev-parse", "main") == commit:
            git(repo, "reset", "-q", "--hard", "HEAD~1")
    return drop


def tasks_py(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tasks.py"), "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=60)


def test_the_commits_a_branch_carries_and_the_reason_that_names_them():
    from crew.dispatch import rewritten_main as rewritten
    assert rewritten.carried({"b" * 40, "d" * 40}, ["a" * 40, "b" * 40, "c" * 40, "d" * 40]) == ["b" * 40, "d" * 40]
    assert rewritten.carried(set(), ["a" * 40]) == []
    many = [f"{n:040x}" for n in range(12)]
    assert rewritten.commit_list(many[:2]) == f"{many[0][:10]}, {many[1][:10]}"
    assert rewritten.commit_list(many).endswith(f"{many[9][:10]} and 2 more")
    reason = rewritten.held_reason("proj-1", "work/proj-1", "main", many[:1], "CONFLICT (content): in a.txt")
    assert "\n" not in reason and many[0][:10] in reason and "CONFLICT (content): in a.txt" in reason
    assert "`py tasks.py held proj-1 --merge`" in reason and "`--discard`" in reason


PASSING_GATE = [sys.executable, "-c", "pass"]


@pytest.mark.parametrize("settings", [{}, {"merge_gate_command": PASSING_GATE, "merge_gate_parallelism": 2}],
                         ids=["no gate", "parallel gates"])
def test_a_commit_the_user_drops_while_a_worker_runs_never_comes_back_and_the_work_lands(
        json_agent_setup, repo, monkeypatch, settings):
    secret = commit_file(repo, "secret.txt", "token\n", "the user's commit, with a secret")
    cfg, config, store = json_agent_setup(**settings)
    task = add_task(store, "Add a file", "append feature.txt new")
    # The worker's branch is made on main with the secret; the user drops it right after.
    monkeypatch.setitem(failpoints._armed, "after_worktree", drop_from_main_once(repo, secret))
    summary = run_in_process(config, store)
    assert summary["merged"] == [task.id] and store.get(task.id).status == "closed"
    assert not on_main(repo, secret) and main_file(repo, "feature.txt") == "new\n"
    assert "secret.txt" not in git(repo, "ls-tree", "-r", "--name-only", "main").split()
    [rewritten] = events(repo, "main_rewritten")
    assert rewritten["old"] == secret and rewritten["commits"] == [secret]
    [rebased] = events(repo, "branch_rebased")
    assert rebased["task_id"] == task.id and rebased["commits"] == [secret]


def test_the_last_main_seen_outlasts_a_restart(json_agent_setup, repo):
    secret = commit_file(repo, "secret.txt", "token\n", "the user's commit, with a secret")
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Add a file", "append feature.txt new")
    killed = dispatch(cfg, env={"DISPATCH_FAILPOINT": "after_worker_exit"})
    assert killed.returncode == 77, killed.stderr
    state = json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))
    assert state["version"] == records.STATE_VERSION and state["main_seen"] == secret
    git(repo, "reset", "-q", "--hard", "HEAD~1")  # while no dispatcher runs
    assert dispatch(cfg).returncode == 0
    assert merges_of(repo, task.id) == 1 and not on_main(repo, secret)
    assert main_file(repo, "feature.txt") == "new\n"


@pytest.mark.parametrize("decision", ["--merge", "--discard"])
def test_a_branch_that_does_not_rebase_without_the_dropped_commit_is_held_until_a_person_decides(
        json_agent_setup, repo, monkeypatch, decision):
    secret = commit_file(repo, "notes.txt", "secret-line\n", "the user's commit, with a secret")
    cfg, config, store = json_agent_setup()
    # The worker changes the very line the user then drops: its commit needs the dropped one.
    task = add_task(store, "Change the notes", "replace notes.txt secret-line worker-line")
    monkeypatch.setitem(failpoints._armed, "after_worktree", drop_from_main_once(repo, secret))
    summary = run_in_process(config, store)
    monkeypatch.delitem(failpoints._armed, "after_worktree")
    assert summary["merged"] == [] and not on_main(repo, secret)
    [waiting] = [w for w in summary["waiting"] if w["id"] == task.id]
    reason = waiting["reason"]
    assert reason.startswith("held: ") and secret[:10] in reason and f"py tasks.py held {task.id} --merge" in reason
    assert "\n" not in reason and any(reason in line for line in summary["said"])
    assert reason in store.get(task.id).notes
    [held] = events(repo, "branch_held")
    assert held["task_id"] == task.id and held["commits"] == [secret] and held["reason"] == reason
    status = json.loads(dispatch(cfg, "--status", "--json").stdout)
    [entry] = status["merge_queue"]
    assert entry["held"] and entry["waiting"] == reason
    listed = tasks_py(cfg, "held")
    assert listed.returncode == 0 and task.id in listed.stdout and reason in listed.stdout
    held_tip = git(repo, "rev-parse", held["branch"])
    assert dispatch(cfg).returncode == 1 and not on_main(repo, secret)  # still held: nobody decided
    refused = tasks_py(cfg, "held", "proj-999", "--merge")
    assert refused.returncode == 1 and refused.stderr.strip() == "error: proj-999: no branch of it is held"

    decided = tasks_py(cfg, "held", task.id, decision)
    assert decided.returncode == 0, decided.stderr
    assert dispatch(cfg).returncode == 0
    [made] = events(repo, "held_decided")
    assert made["decision"] == decision.lstrip("-")
    assert merges_of(repo, task.id) == 1 and store.get(task.id).status == "closed"
    if decision == "--merge":  # as it is: the person chose to bring the commit back
        assert on_main(repo, held_tip) and main_file(repo, "notes.txt") == "worker-line\n"
    else:  # a fresh attempt on main as it is now
        assert not on_main(repo, secret) and not on_main(repo, held_tip)
        assert "discarded" in store.get(task.id).notes
    assert json.loads((repo / ".dispatch_held_decisions.json").read_text(encoding="utf-8")) == {}
