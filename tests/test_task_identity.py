"""A task is its id and its creation time, and a claim belongs to the actor that made it."""
from __future__ import annotations

import json
from pathlib import Path

from support.dispatching import (add_task, conflicting_pair, dispatch, events, main_file, merges_of, run_in_process,
                                 run_with_a_person_on_followups)
from support.repos import commit_file, git


def delete_task(repo: Path, task_id: str) -> None:
    """What a user does by hand: take the task out of task_queue.json."""
    path = repo / "task_queue.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["tasks"] = [t for t in data["tasks"] if t["id"] != task_id]
    path.write_text(json.dumps(data), encoding="utf-8")


# ---- a reused id inherits nothing ----------------------------------------------------------------

def test_a_deleted_tasks_id_is_never_given_again(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    for title in ("one", "two", "three"):
        store.create(title)
    delete_task(repo, "proj-3")
    assert store.create("four").id == "proj-4"
    # A file without the counter (older, or written by hand) starts past every id in use
    # anywhere: the dispatcher's state files and the branches.
    (repo / "task_queue.json").write_text(json.dumps({"tasks": [{"id": "proj-1", "title": "one"}]}), encoding="utf-8")
    (repo / ".dispatch_pending_merge_retries.json").write_text('{"proj-7": {}}', encoding="utf-8")
    git(repo, "branch", "work/proj-9")
    assert store.create("five").id == "proj-10"


def test_a_new_task_never_continues_a_branch_it_was_not_made_for(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    # An abandoned kept branch of a deleted task, and a new task with the same id (written by hand).
    git(repo, "checkout", "-q", "-b", "work/proj-1")
    commit_file(repo, "abandoned.txt", "old work\n")
    git(repo, "checkout", "-q", "main")
    (repo / "task_queue.json").write_text(json.dumps({"tasks": [
        {"id": "proj-1", "title": "New work", "description": "AGENT: append new.txt fresh"}]}), encoding="utf-8")
    proc = dispatch(cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert main_file(repo, "new.txt") == "fresh\n"
    assert main_file(repo, "abandoned.txt") is None  # the old commits were not merged under the new title
    assert [e["branch"] for e in events(repo, "worker_started")] == ["work/proj-1-2"]
    assert git(repo, "log", "-1", "--format=%s", "work/proj-1") == "edit abandoned.txt"  # kept as it was


def test_a_new_task_with_a_deleted_conflict_tasks_id_is_not_its_resolver(json_agent_setup, repo):
    commit_file(repo, "settings.ini", "[ui]\ncolor=blue\n")
    cfg, config, store = json_agent_setup()
    red, green = conflicting_pair(store)
    conflict_id, _ = run_with_a_person_on_followups(config, store)
    pending = json.loads((repo / ".dispatch_pending_merge_retries.json").read_text(encoding="utf-8"))[conflict_id]
    # The conflict task is deleted and its id comes back for unrelated work (bd, or a hand edit).
    data = json.loads((repo / "task_queue.json").read_text(encoding="utf-8"))
    data["tasks"] = [t for t in data["tasks"] if t["id"] != conflict_id] + [
        {"id": conflict_id, "title": "Unrelated", "description": "AGENT: append unrelated.txt mine",
         "created_at": "2099-01-01T00:00:00Z"}]
    (repo / "task_queue.json").write_text(json.dumps(data), encoding="utf-8")
    summary = run_in_process(config, store)
    started = {e["task_id"]: e["branch"] for e in events(repo, "worker_started")}
    assert started[conflict_id] != pending["branch"]  # it ran on a branch of its own, not the conflict's
    assert main_file(repo, "unrelated.txt") == "mine\n"
    assert any("no longer in the store" in line for line in summary["said"])
    assert store.get(conflict_id).status == "closed" and merges_of(repo, conflict_id) == 1


# ---- a task deleted while a record refers to it --------------------------------------------------

def test_a_task_deleted_while_queued_to_merge_is_dropped_with_a_warning(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(max_workers=1)
    doomed = add_task(store, "Doomed", "append doomed.txt d", priority=0)
    other = add_task(store, "Other", "append other.txt o", priority=1)
    killed = dispatch(cfg, env={"DISPATCH_FAILPOINT": "during_merge"})
    assert killed.returncode == 77, killed.stderr
    delete_task(repo, doomed.id)
    runs = [dispatch(cfg), dispatch(cfg)]  # every start, not only the first, carries on
    assert [run.returncode for run in runs] == [0, 0], runs[0].stdout + runs[0].stderr
    assert f"{doomed.id}: warning: the task is no longer in the store" in runs[0].stdout
    assert [e["task_id"] for e in events(repo, "record_dropped")] == [doomed.id]
    assert main_file(repo, "doomed.txt") is None and main_file(repo, "other.txt") == "o\n"
    assert git(repo, "branch", "--list", f"work/{doomed.id}")  # its work is kept
    assert store.get(other.id).status == "closed"


def test_a_conflict_task_deleted_while_its_merge_waits_releases_the_original(json_agent_setup, repo):
    commit_file(repo, "settings.ini", "[ui]\ncolor=blue\n")
    cfg, config, store = json_agent_setup()
    red, green = conflicting_pair(store)
    conflict_id, _ = run_with_a_person_on_followups(config, store)
    original = json.loads((repo / ".dispatch_pending_merge_retries.json").read_text(encoding="utf-8"))[conflict_id]
    delete_task(repo, conflict_id)
    summary = run_in_process(config, store)
    assert any(line.startswith(f"{conflict_id}: warning: the task is no longer in the store") for line in summary["said"])
    # The original is not left claimed with nothing to wait for: it was released (and ran again).
    assert [e["reason"] for e in events(repo, "released") if e["task_id"] == original["task_id"]][0] == (
        f"released: its conflict task {conflict_id} was deleted; branch {original['branch']} kept")
    assert store.get(original["task_id"]).status != "in_progress"
    assert git(repo, "branch", "--list", original["branch"])
    assert json.loads((repo / ".dispatch_pending_merge_retries.json").read_text(encoding="utf-8")) == {}


# ---- the actor changed across a restart ----------------------------------------------------------

def test_a_claim_made_under_an_earlier_actor_is_finished_under_it(agent_setup, repo):
    cfg, config, store = agent_setup(actor="dispatch@old-host")
    task = add_task(store, "Before the rename", "append before.txt b")
    killed = dispatch(cfg, env={"DISPATCH_FAILPOINT": "during_merge"})
    assert killed.returncode == 77, killed.stderr
    assert store.get(task.id).assignee == "dispatch@old-host"
    cfg, config, store = agent_setup(actor="dispatch@new-host")  # the machine was renamed
    again = dispatch(cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{task.id}: claimed as dispatch@old-host by an earlier run" in again.stdout
    assert store.get(task.id).status == "closed" and merges_of(repo, task.id) == 1


def test_a_failed_attempt_under_an_earlier_actor_is_released_under_it(agent_setup, repo):
    cfg, config, store = agent_setup(actor="dispatch@old-host", max_attempts=3)
    task = add_task(store, "Crashes", "crash")
    killed = dispatch(cfg, env={"DISPATCH_FAILPOINT": "after_worker_exit"})
    assert killed.returncode == 77, killed.stderr
    cfg, config, store = agent_setup(actor="dispatch@new-host", max_attempts=3, breaker_failures=9)
    again = dispatch(cfg)
    assert again.returncode == 1, again.stdout + again.stderr
    final = store.get(task.id)
    assert final.status == "blocked" and "(after 3 attempts)" in final.notes
    assert [e["reason"][:9] for e in events(repo, "released")] == ["attempt 1", "attempt 2"]


def test_a_task_deleted_while_its_worker_ran_is_dropped_with_a_warning(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Doomed", "crash")
    killed = dispatch(cfg, env={"DISPATCH_FAILPOINT": "after_worker_exit"})
    assert killed.returncode == 77, killed.stderr
    delete_task(repo, task.id)
    again = dispatch(cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{task.id}: warning: the task is no longer in the store" in again.stdout
    assert json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))["workers"] == []


def test_a_claim_made_just_before_a_crash_under_an_earlier_actor_is_released(agent_setup, repo):
    cfg, config, store = agent_setup(actor="dispatch@old-host")
    task = add_task(store, "Claimed, then the crash", "append claimed.txt c")
    killed = dispatch(cfg, env={"DISPATCH_FAILPOINT": "after_claim"})  # claimed, nothing recorded yet
    assert killed.returncode == 77, killed.stderr
    cfg, config, store = agent_setup(actor="dispatch@new-host")
    again = dispatch(cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{task.id}: released (no worker or merge recorded for it), as dispatch@old-host" in again.stdout
    assert store.get(task.id).status == "closed" and merges_of(repo, task.id) == 1
