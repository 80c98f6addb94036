"""Undo: `tasks.py revert` files a revert task whose branch reverts the task's recorded merges,
newest first; it lands through the merge queue, and only then is the task reopened."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crew.dispatch import revert
from crew.report import events as event_log
from crew.report import model as report_model
from crew.report import page
from crew.tasks import model
from support.dispatching import add_task, dispatch, events, main_file
from support.repos import ROOT, commit_file, git

A, B = "a" * 40, "b" * 40


def tasks_cli(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tasks.py"), "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=60)


def main_merges(repo) -> list[str]:
    """The merge commits on main's first-parent line, newest first."""
    return git(repo, "rev-list", "--first-parent", "--merges", "main").split()


def test_a_revert_task_names_the_merges_newest_first_and_links_the_original():
    task = model.Task("p-1", "Add \x1b[2J a", priority=1, labels=[revert.merged_label(A), "merged:short", "file:x"])
    assert revert.recorded_merges(task.labels) == [A]  # only full commit ids count
    spec = revert.revert_task(task, [B, A], "broke the build", keep_closed=False)
    assert spec.title.startswith("Revert p-1: Add") and spec.priority == 1 and spec.deps == [("related", "p-1")]
    assert revert.reverted_task(spec.labels) == "p-1" and revert.merges_to_revert(spec.labels) == [B, A]
    assert revert.reason_of(spec.description) == "broke the build"
    assert revert.KEEP_CLOSED_LABEL in revert.revert_task(task, [A], "", keep_closed=True).labels
    assert revert.merges_to_revert([revert.REVERTS_PREFIX + A]) == []  # not a revert task without revert-of


def test_a_merged_task_is_reverted_through_the_queue_then_reopened_with_the_reason(agent_setup, repo):
    cfg, config, store = agent_setup()
    task = add_task(store, "Add a", "append a.txt from a")
    assert dispatch(cfg).returncode == 0
    merged = store.get(task.id)
    assert revert.recorded_merges(merged.labels) == main_merges(repo)  # the full id, recorded as it landed
    filed = tasks_cli(cfg, "revert", task.id, "-r", "broke the build")
    assert filed.returncode == 0, filed.stderr
    proc = tasks_cli(cfg, "revert", "nope-99")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    undo = [t for t in store.list(None) if revert.reverted_task(t.labels) == task.id]
    assert len(undo) == 1 and undo[0].title == f"Revert {task.id}: Add a"
    status = json.loads(dispatch(cfg, "--status", "--json").stdout)
    assert status["reverts"] == [{"task_id": undo[0].id, "reverts": task.id, "status": "open",
                                  "merges": main_merges(repo)}]
    assert f"  revert: {undo[0].id} undoes {task.id} (1 merge), open" in dispatch(cfg, "--status").stdout
    again = tasks_cli(cfg, "revert", task.id, "-r", "x")
    assert again.returncode == 1 and f"being reverted already by {undo[0].id}" in again.stderr
    assert store.get(task.id).status == "closed"  # not reopened before the revert has landed
    # The reopened task runs again in the same run: on a main without its first change.
    proc = dispatch(cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reverted = events(repo, "reverted")
    assert [(e["task_id"], e["revert_task"], e["reopened"]) for e in reverted] == [(task.id, undo[0].id, True)]
    names = [(e["event"], e["task_id"]) for e in events(repo) if e["event"] in ("reverted", "claimed")]
    assert names.index(("reverted", task.id)) < names.index(("claimed", task.id), 1)
    final = store.get(task.id)
    assert f"reverted on main by {undo[0].id}" in final.notes and final.notes.count("broke the build") == 1
    assert store.get(undo[0].id).status == "closed"
    # Its one recorded merge is the new attempt's; the reverted one is no longer the task's.
    assert revert.recorded_merges(final.labels) == [main_merges(repo)[0]]
    assert main_file(repo, "a.txt") == "from a\n"


def test_revert_close_leaves_the_task_closed_and_a_multi_merge_task_is_reverted_newest_first(agent_setup, repo):
    cfg, config, store = agent_setup()
    commit_file(repo, "a.txt", "base\n")
    task = add_task(store, "Grow a", "append a.txt more")
    assert dispatch(cfg).returncode == 0
    store.reopen(task.id)  # a second attempt merges more on top: the task landed in two steps
    assert dispatch(cfg).returncode == 0
    assert main_file(repo, "a.txt") == "base\nmore\nmore\n"
    recorded = revert.recorded_merges(store.get(task.id).labels)
    assert sorted(recorded) == sorted(main_merges(repo)) and len(recorded) == 2
    proc = tasks_cli(cfg, "revert", task.id, "-r", "wrong approach", "--close")
    assert proc.returncode == 0, proc.stderr
    assert dispatch(cfg).returncode == 0
    assert main_file(repo, "a.txt") == "base\n"
    undo = next(t for t in store.list(None) if revert.reverted_task(t.labels) == task.id)
    reverts = git(repo, "log", "--reverse", "--format=%s%n%b", f"{main_merges(repo)[1]}..main^2").split("\n")
    # Newest merge first, each by its recorded id.
    assert [line.split()[3].rstrip(",.") for line in reverts if line.startswith("This reverts commit")] == \
        main_merges(repo)[1:3]
    assert store.get(undo.id).status == "closed" and store.get(task.id).status == "closed"
    assert "wrong approach; left closed" in store.get(task.id).notes
    assert [e["reopened"] for e in events(repo, "reverted")] == [False]
    report = report_model.build_report(event_log.EventReader(repo / ".dispatch_logs" / "events.jsonl"),
                                       repo / ".dispatch_logs")
    row = report.tasks[task.id]
    assert (row.outcome, row.detail) == ("reverted", f"undone on main by {undo.id}")
    assert [m.task_id for m in report.marks if m.kind == "reverted"] == [task.id]
    assert f'<b class="o-reverted">1 reverted</b>' in page.render_summary(report)


def test_a_revert_that_conflicts_with_later_work_becomes_a_conflict_task(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    commit_file(repo, "a.txt", "one\n")
    task = add_task(store, "One to two", "replace a.txt one two")
    assert dispatch(cfg).returncode == 0
    commit_file(repo, "a.txt", "three\n", "later work on the same line")
    assert tasks_cli(cfg, "revert", task.id, "--close").returncode == 0
    assert dispatch(cfg).returncode == 0
    undo = next(t for t in store.list(None) if revert.reverted_task(t.labels) == task.id)
    filed = events(repo, "conflict_filed")
    assert [(e["task_id"], e["kind"]) for e in filed] == [(undo.id, "conflict")]
    # The scripted resolver keeps both sides; the revert then landed, and the task stays closed.
    assert store.get(undo.id).status == "closed" and [e["task_id"] for e in events(repo, "reverted")] == [task.id]
    assert "<<<<<<<" not in main_file(repo, "a.txt")


def test_a_task_without_a_recorded_merge_is_not_reverted(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Never merged", "append a.txt a")
    proc = tasks_cli(cfg, "revert", task.id)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: {task.id} has no merge on main recorded (the dispatcher records each merge "
                           "it lands); nothing to revert\n")
    assert len(store.list(None)) == 1


def test_a_merge_bookkept_after_a_crash_is_recorded_by_its_own_commit_not_main_s_tip(agent_setup, repo):
    cfg, config, store = agent_setup()
    task = add_task(store, "Add a", "append a.txt a")
    killed = dispatch(cfg, env={"DISPATCH_FAILPOINT": "after_main_moved"})
    assert killed.returncode == 77, killed.stdout + killed.stderr
    merge = main_merges(repo)[0]
    assert revert.recorded_merges(store.get(task.id).labels) == []  # killed before its bookkeeping
    commit_file(repo, "later.txt", "a person's commit on top\n")
    assert dispatch(cfg).returncode == 0
    assert store.get(task.id).status == "closed"
    assert revert.recorded_merges(store.get(task.id).labels) == [merge]


def test_a_revert_that_conflicts_without_markers_is_left_to_a_person(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(max_attempts=1)
    commit_file(repo, "c.txt", "one\n")
    task = add_task(store, "One to two", "replace c.txt one two")
    assert dispatch(cfg).returncode == 0
    git(repo, "rm", "-q", "c.txt")
    git(repo, "commit", "-q", "-m", "later work deletes c.txt")
    assert tasks_cli(cfg, "revert", task.id).returncode == 0
    dispatch(cfg)
    undo = next(t for t in store.list(None) if revert.reverted_task(t.labels) == task.id)
    assert store.get(undo.id).status == "blocked"
    assert "conflicts without conflict markers in c.txt" in store.get(undo.id).notes
    assert store.get(task.id).status == "closed" and events(repo, "reverted") == []
    assert main_file(repo, "c.txt") is None


def test_reverting_a_revert_brings_the_change_back_and_the_revert_task_stays_closed(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Add a", "append a.txt from a")
    assert dispatch(cfg).returncode == 0
    assert tasks_cli(cfg, "revert", task.id, "--close").returncode == 0
    assert dispatch(cfg).returncode == 0 and main_file(repo, "a.txt") is None
    undo = next(t for t in store.list(None) if revert.reverted_task(t.labels) == task.id)
    redo = tasks_cli(cfg, "revert", undo.id, "-r", "it was fine")
    assert redo.returncode == 0, redo.stderr
    proc = dispatch(cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A revert task reopened would run its reverter again and take the change out once more.
    assert main_file(repo, "a.txt") == "from a\n"
    assert store.get(undo.id).status == "closed" and store.get(task.id).status == "closed"
    assert [(e["task_id"], e["reopened"]) for e in events(repo, "reverted")] == [(task.id, False), (undo.id, False)]


def test_a_branch_merged_by_hand_without_a_merge_commit_records_no_other_task_s_merge(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(review="labelled")
    task = add_task(store, "Add a", "append a.txt from a")
    store.relabel(task.id, add=[model.NEEDS_REVIEW_LABEL])
    assert dispatch(cfg).returncode == 1  # its branch awaits review
    [waiting] = json.loads(tasks_cli(cfg, "review", "--json").stdout)
    git(repo, "merge", "-q", "--ff-only", waiting["branch"])  # the user lands it by hand: no merge commit
    other = add_task(store, "Add b", "append b.txt from b")
    assert dispatch(cfg).returncode == 1 and main_file(repo, "b.txt") == "from b\n"
    assert tasks_cli(cfg, "approve", task.id).returncode == 0
    proc = dispatch(cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert store.get(task.id).status == "closed"
    # main's tip is the other task's merge: recorded on this task, `tasks.py revert` would undo that one.
    assert revert.recorded_merges(store.get(task.id).labels) == []
    assert revert.recorded_merges(store.get(other.id).labels) == [main_merges(repo)[0]]
    refused = tasks_cli(cfg, "revert", task.id)
    assert refused.returncode == 1 and "has no merge on main recorded" in refused.stderr


def merged(repo, name: str, text: str) -> str:
    """A branch writing `name`, merged into main (checked out) with a merge commit: that commit."""
    git(repo, "checkout", "-q", "-b", f"work-{name}")
    commit_file(repo, name, text)
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", f"merge {name}", f"work-{name}")
    return git(repo, "rev-parse", "HEAD")


def reverter(repo, merges: list[str]) -> subprocess.CompletedProcess:
    """The reverter, run in `repo`'s checked-out branch as the dispatcher runs it in a worktree."""
    return subprocess.run([sys.executable, "-m", revert.REVERTER_MODULE, *merges], cwd=repo, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_retried_reverter_goes_on_past_the_merges_its_branch_reverted_already(repo):
    merges = [merged(repo, "a.txt", "a.txt\n")]
    merges.insert(0, merged(repo, "b.txt", "b.txt\n"))  # newest first
    git(repo, "checkout", "-q", "-b", "revert-branch")
    git(repo, "revert", "--no-edit", "-m", "1", merges[0])  # an earlier attempt's work, ended after one revert

    done = reverter(repo, merges)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (repo / "a.txt").exists() and not (repo / "b.txt").exists()
    assert git(repo, "rev-list", "--count", "main..HEAD") == "2" and git(repo, "status", "--porcelain") == ""
    assert f"{merges[0]} is undone on this branch already" in done.stdout


def test_a_reverter_that_gives_up_leaves_none_of_its_reverts_to_land_as_the_whole(repo):
    commit_file(repo, "c.txt", "base\n")
    merges = [merged(repo, "c.txt", "changed\n")]
    git(repo, "rm", "-q", "c.txt")
    git(repo, "commit", "-q", "-m", "c.txt deleted since")
    merges.insert(0, merged(repo, "b.txt", "b\n"))  # newest first
    git(repo, "checkout", "-q", "-b", "revert-branch")
    start = git(repo, "rev-parse", "HEAD")
    done = reverter(repo, merges)
    # The newest merge's revert alone, committed, would land as the task's whole revert.
    assert done.returncode == 1 and "a person must revert it" in done.stdout
    assert git(repo, "rev-parse", "HEAD") == start and git(repo, "status", "--porcelain") == ""


def test_a_reverted_task_that_is_blocked_is_said_to_be_left_so_not_reopened(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Add a", "append a.txt from a")
    assert dispatch(cfg).returncode == 0
    assert tasks_cli(cfg, "revert", task.id).returncode == 0
    store.reopen(task.id)
    store.set_status(task.id, "blocked", "a person looks at it")
    proc = dispatch(cfg)
    assert main_file(repo, "a.txt") is None, proc.stdout + proc.stderr
    assert store.get(task.id).status == "blocked"
    assert [e["reopened"] for e in events(repo, "reverted")] == [False]
    assert "; reopened" not in proc.stdout and "left blocked" in store.get(task.id).notes


def test_a_reverter_whose_commit_with_markers_a_hook_refuses_leaves_none_of_its_reverts(repo):
    commit_file(repo, "c.txt", "base\n")
    merges = [merged(repo, "c.txt", "changed\n")]
    commit_file(repo, "c.txt", "changed again since\n")
    merges.insert(0, merged(repo, "b.txt", "b\n"))  # newest first
    hook = repo / ".git" / "hooks" / "pre-commit"  # as pre-commit's check-merge-conflict does
    hook.parent.mkdir(exist_ok=True)
    hook.write_text("#!/bin/sh\n! git diff --cached | grep -q '^+<<<<<<< '\n", encoding="utf-8")
    hook.chmod(0o755)
    git(repo, "checkout", "-q", "-b", "revert-branch")
    start = git(repo, "rev-parse", "HEAD")
    done = reverter(repo, merges)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert git(repo, "rev-parse", "HEAD") == start and git(repo, "status", "--porcelain") == ""


def test_a_reverter_killed_after_some_of_its_reverts_lands_none_of_them_and_blocks_its_task(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    merges = [merged(repo, "a.txt", "a\n")]
    merges.insert(0, merged(repo, "b.txt", "b\n"))  # newest first
    task = add_task(store, "Add a and b", "append a.txt a")
    store.relabel(task.id, add=[revert.merged_label(commit) for commit in merges])
    store.close(task.id, "merged in two steps")
    assert tasks_cli(cfg, "revert", task.id, "-r", "wrong approach").returncode == 0
    undo = next(t for t in store.list(None) if revert.reverted_task(t.labels) == task.id)
    # Its first revert committed, the reverter is killed (as by the OOM killer): git's parent.
    hook = repo / ".git" / "hooks" / "post-commit"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f'#!/bin/sh\nexec "{Path(sys.executable).as_posix()}" - <<"PY"\nimport os, pathlib, psutil\n'
                    f'mark = pathlib.Path("{(repo / "killed").as_posix()}")\nif not mark.exists():\n'
                    "    mark.touch()\n    psutil.Process(os.getppid()).parent().kill()\nPY\n", encoding="utf-8")
    hook.chmod(0o755)
    proc = dispatch(cfg)
    assert [e["code"] for e in events(repo, "worker_exited")][:1] != [0], proc.stdout + proc.stderr
    # The newer merge's revert alone would pass for the whole revert: nothing of it lands.
    assert events(repo, "merged") == [] and events(repo, "reverted") == []
    assert main_file(repo, "a.txt") == "a\n" and main_file(repo, "b.txt") == "b\n"
    assert store.get(undo.id).status == "blocked" and store.get(task.id).status == "closed"
    assert "the reverter exited" in store.get(undo.id).notes
    assert git(repo, "rev-list", "--count", f"main..work/{undo.id}") == "1"  # kept: a retry goes on past it
