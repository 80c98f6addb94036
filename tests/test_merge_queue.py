"""The merge queue: merge slot, conflict tasks, retries, rebase, the gate, and crash safety."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crew.dispatch import status as run_status
from crew.dispatch.merge_queue import MergeQueue
from support.dispatching import (add_task, assert_clean_finish, conflicting_pair, dispatch, events, main_file, merge_subjects,
                                 merges_of, run_in_process, run_with_a_person_on_followups)
from support.repos import commit_file, git


def test_ten_branches_merge_in_queue_order(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(max_workers=1)
    tasks = [add_task(store, f"Step {i}", f"append step{i}.txt {i}") for i in range(10)]
    assert dispatch(cfg).returncode == 0
    queued = [e["task_id"] for e in events(repo, "merge_queued")]
    assert queued == [t.id for t in tasks]
    assert [s.rsplit("(", 1)[1].rstrip(")") for s in merge_subjects(repo)] == queued


def queue_depths(repo: Path) -> list[int]:
    """The number of branches in the merge queue after each event that changes it."""
    depth, depths = 0, []
    for event in events(repo):
        if event["event"] in ("merge_queued", "merged"):
            depth += 1 if event["event"] == "merge_queued" else -1
            depths.append(depth)
    return depths


def test_new_work_waits_while_a_branch_waits_to_merge_and_starts_once_it_lands(json_agent_setup, repo):
    """Agents faster than merges (a slow gate): with max_waiting_merges 1, the next task starts
    only once the branch ahead has landed, and the run still finishes every task."""
    gate = [sys.executable, "-c", "import time; time.sleep(2)"]
    cfg, config, store = json_agent_setup(max_workers=1, max_waiting_merges=1, merge_gate_command=gate)
    tasks = [add_task(store, f"Step {i}", f"append step{i}.txt {i}") for i in range(4)]
    seen = []  # what --status and --dry-run say as the run says it holds new work

    def look(message: str) -> None:
        if message.startswith("new workers wait:"):
            seen.append((run_status.status(config, store)["starts_held"],
                         [item["reason"] for item in run_status.dry_run(config, store, 1)]))

    summary = run_in_process(config, store, look, max_workers=1)
    assert sorted(summary["merged"]) == sorted(t.id for t in tasks)
    assert max(queue_depths(repo)) == 1
    held = "the merge queue is full (1 waiting, max_waiting_merges 1): new work starts as its branches land"
    assert [m for m in summary["said"] if m.startswith("new workers wait:")] == [f"new workers wait: {held}"]
    # The next task went on deck while the queue was empty, and waits there: two are left ready.
    assert seen == [(held, [held, held])]


def test_merge_keeps_the_users_uncommitted_changes(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    (repo / "README.md").write_text("# proj\nmy unsaved edit\n", encoding="utf-8")
    (repo / "scratch.txt").write_text("untracked notes\n", encoding="utf-8")
    task = add_task(store, "Add a file", "append feature.txt new")
    assert dispatch(cfg).returncode == 0
    assert merges_of(repo, task.id) == 1
    assert (repo / "README.md").read_text(encoding="utf-8") == "# proj\nmy unsaved edit\n"
    assert (repo / "scratch.txt").read_text(encoding="utf-8") == "untracked notes\n"
    assert (repo / "feature.txt").read_text(encoding="utf-8") == "new\n"


def test_a_fast_forward_that_would_overwrite_the_users_change_waits(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    before = git(repo, "rev-parse", "main")
    (repo / "README.md").write_text("# proj\nthe user's own edit\n", encoding="utf-8")
    task = add_task(store, "Edit the readme", "append README.md agent line")
    proc = dispatch(cfg, "--json")
    assert proc.returncode == 1
    waiting = json.loads(proc.stdout)["waiting"]
    assert waiting[0]["id"] == task.id and "README.md would be overwritten" in waiting[0]["reason"]
    assert git(repo, "rev-parse", "main") == before
    assert (repo / "README.md").read_text(encoding="utf-8") == "# proj\nthe user's own edit\n"
    # Once the user has committed their edit, the next run merges (main only moves forward).
    git(repo, "commit", "-qam", "user edit")
    proc = dispatch(cfg)
    if proc.returncode:  # the user's commit and the branch touch the same line: a conflict task
        assert "Resolve merge conflict" in proc.stdout
    else:
        assert merges_of(repo, task.id) == 1
    assert "the user's own edit" in (repo / "README.md").read_text(encoding="utf-8")


def test_conflict_becomes_a_task_the_agent_resolves_then_the_branch_merges(agent_setup, repo):
    commit_file(repo, "settings.ini", "[ui]\ncolor=blue\n")
    cfg, config, store = agent_setup()
    red, green = conflicting_pair(store)
    proc = dispatch(cfg, "--json")
    assert proc.returncode == 0, proc.stderr
    conflict = next(t for t in store.list(None) if t.title.startswith("Resolve merge conflict: "))
    loser, winner = (red, green) if conflict.title.endswith(red.id) else (green, red)
    assert conflict.title == f"Resolve merge conflict: work/{loser.id}"
    assert conflict.status == "closed" and "merge-conflict" in conflict.labels
    assert "file:settings.ini" in conflict.labels and conflict.deps_of("discovered-from") == [loser.id]
    assert "settings.ini" in conflict.description and loser.title in conflict.description
    for task in (red, green):
        assert store.get(task.id).status == "closed" and merges_of(repo, task.id) == 1
    # The dispatcher merged main into the loser's branch; the scripted resolver keeps both sides
    # of each conflict, the branch's (ours) first, then main's.
    color = {red.id: "red", green.id: "green"}
    assert main_file(repo, "settings.ini") == f"[ui]\ncolor={color[loser.id]}\ncolor={color[winner.id]}\n"
    assert "dispatch: merge main into" in git(repo, "log", "--format=%s", "main")
    assert_clean_finish(repo, Path(config.worktree_root))


def test_conflict_task_closed_by_hand_retries_the_merge(json_agent_setup, repo):
    commit_file(repo, "settings.ini", "[ui]\ncolor=blue\n")
    cfg, config, store = json_agent_setup()
    red, green = conflicting_pair(store)
    conflict_id, summary = run_with_a_person_on_followups(config, store)
    pending = json.loads((repo / ".dispatch_pending_merge_retries.json").read_text(encoding="utf-8"))
    assert set(pending) == {conflict_id}
    entry = pending[conflict_id]
    assert entry["kind"] == "conflict" and entry["files"] == ["settings.ini"]
    assert set(entry) >= {"kind", "branch", "task_id", "worktree", "main_commit", "files", "created_at", "retries"}
    assert summary["waiting"] == [{"id": entry["task_id"], "reason": f"waits for {conflict_id}"}]
    # The human resolves it in the branch's worktree and closes the task with tasks.py.
    worktree = Path(entry["worktree"])
    git(worktree, "merge", "-q", "main", "-X", "ours", "-m", "merge main, keep mine")
    commit_file(worktree, "settings.ini", "[ui]\ncolor=purple\n", "settle on purple")
    store.close(conflict_id, "resolved by hand")
    summary = run_in_process(config, store)
    assert summary["merged"] == [entry["task_id"]] and summary["waiting"] == []
    assert main_file(repo, "settings.ini") == "[ui]\ncolor=purple\n"
    assert json.loads((repo / ".dispatch_pending_merge_retries.json").read_text(encoding="utf-8")) == {}


def file_human_conflict(config, store, repo, path, branch_text, main_text):
    """A task changes `path` while someone changes it on main (main_text None: deletes it); the
    dispatcher files the conflict. Returns (the task, the conflict task, the summary)."""
    task = add_task(store, f"Change {path}", "sleep 1", f"append {path} {branch_text}")

    def someone_changes_main(message):
        if message.startswith(f"{task.id}: started worker"):
            if main_text is None:
                git(repo, "rm", "-q", path)
                git(repo, "commit", "-qm", f"remove {path}")
            else:
                commit_file(repo, path, main_text, f"replace {path}")

    summary = run_in_process(config, store, someone_changes_main)
    conflict = next(t for t in store.list(None) if t.title.startswith("Resolve merge conflict"))
    return task, conflict, summary


def test_a_modify_delete_conflict_is_left_to_a_person_and_merges_once_they_commit(json_agent_setup, repo):
    commit_file(repo, "old.txt", "line\n")
    cfg, config, store = json_agent_setup()
    branch_tip = []
    editor, conflict, summary = file_human_conflict(config, store, repo, "old.txt", "more", None)
    branch = f"work/{editor.id}"
    branch_tip.append(git(repo, "rev-parse", branch))
    # No agent took it, and the dispatcher committed neither side on the branch.
    assert conflict.status == "open" and {"merge-conflict", "needs-person", "file:old.txt"} <= set(conflict.labels)
    assert summary["merged"] == [] and "needs-person" in summary["waiting"][0]["reason"]
    assert "dispatch: merge main" not in git(repo, "log", "--format=%s", branch)
    assert main_file(repo, "old.txt") is None
    # Both sides' blobs and the commands are in the task.
    assert "modify/delete" in conflict.description
    assert f"{branch} {git(repo, 'rev-parse', branch + ':old.txt')}" in conflict.description
    assert "main (deleted)" in conflict.description and "git merge main" in conflict.description
    # The person settles it in the branch's worktree (main's side: the file stays deleted).
    pending = json.loads((repo / ".dispatch_pending_merge_retries.json").read_text(encoding="utf-8"))
    worktree = Path(pending[conflict.id]["worktree"])
    assert f"cd {worktree}" in conflict.description
    subprocess.run(["git", "merge", "-q", "main"], cwd=worktree, capture_output=True)
    git(worktree, "rm", "-q", "old.txt")
    git(worktree, "commit", "-q", "--no-edit")
    store.close(conflict.id, "kept the deletion")
    summary = run_in_process(config, store)
    assert summary["merged"] == [editor.id] and merges_of(repo, editor.id) == 1
    assert main_file(repo, "old.txt") is None


def test_a_binary_conflict_task_closed_with_no_commit_blocks_the_task_and_keeps_main(json_agent_setup, repo):
    commit_file(repo, "logo.png", "\x00logo v1\n")
    cfg, config, store = json_agent_setup()
    task, conflict, summary = file_human_conflict(config, store, repo, "logo.png", "branch", "\x00logo v2\n")
    assert "needs-person" in conflict.labels and "binary" in conflict.description
    store.close(conflict.id, "nothing to do")  # a person closes it without resolving
    summary = run_in_process(config, store)
    [blocked] = summary["blocked"]
    assert blocked["id"] == task.id and "closed with no commit" in blocked["reason"]
    assert store.get(task.id).status == "blocked" and merges_of(repo, task.id) == 0
    assert main_file(repo, "logo.png") == "\x00logo v2\n"
    assert git(repo, "branch", "--list", "--format=%(refname:short)", f"work/{task.id}") == f"work/{task.id}"


def test_a_text_conflict_task_closed_with_no_commit_blocks_the_task(json_agent_setup, repo):
    commit_file(repo, "settings.ini", "[ui]\ncolor=blue\n")
    cfg, config, store = json_agent_setup()
    conflicting_pair(store)
    filed_id, _ = run_with_a_person_on_followups(config, store)
    store.close(filed_id, "closed without resolving")
    summary = run_in_process(config, store)
    [blocked] = summary["blocked"]
    assert "closed with no commit" in blocked["reason"] and "branch work/" in blocked["reason"]
    assert merges_of(repo, blocked["id"]) == 0
    assert len([t for t in store.list(None) if t.title.startswith("Resolve")]) == 1


def test_a_resolution_committed_before_the_conflict_worker_starts_counts(json_agent_setup, repo):
    commit_file(repo, "settings.ini", "[ui]\ncolor=blue\n")
    cfg, config, store = json_agent_setup()
    conflicting_pair(store)
    filed_id, _ = run_with_a_person_on_followups(config, store)
    pending = json.loads((repo / ".dispatch_pending_merge_retries.json").read_text(encoding="utf-8"))[filed_id]
    worktree = Path(pending["worktree"])
    git(worktree, "merge", "-q", "main", "-X", "ours", "-m", "merge main, keep mine")  # resolved by a person,
    store.release(filed_id, actor="a-human")  # who hands the task back: its worker has nothing left to do
    summary = run_in_process(config, store)
    assert summary["merged"] == [pending["task_id"]] and store.get(filed_id).status == "closed"


def test_auto_rebase_merges_what_a_rebase_makes_clean(json_agent_setup, repo):
    commit_file(repo, "f.txt", "v0\n")
    cfg, config, store = json_agent_setup(on_conflict="auto_rebase")
    # Both make the same first change; the second branch then changes it again. A merge
    # conflicts (v0 -> v1 against v0 -> v2); a rebase drops the already-applied commit.
    same = add_task(store, "To v1", "replace f.txt v0 v1", priority=1)
    further = add_task(store, "To v1 then v2", "sleep 1", "replace f.txt v0 v1", "replace f.txt v1 v2", priority=1)
    assert dispatch(cfg).returncode == 0
    assert merges_of(repo, same.id) == 1 and merges_of(repo, further.id) == 1
    assert main_file(repo, "f.txt") == "v2\n"
    assert not any(t.title.startswith("Resolve") for t in store.list(None))


def test_auto_rebase_falls_back_to_a_conflict_task(json_agent_setup, repo):
    commit_file(repo, "settings.ini", "[ui]\ncolor=blue\n")
    cfg, config, store = json_agent_setup(on_conflict="auto_rebase")
    conflicting_pair(store)
    proc = dispatch(cfg)
    assert proc.returncode == 0
    assert "rebase of work/" in proc.stdout and "conflicts too" in proc.stdout
    assert any(t.title.startswith("Resolve merge conflict") for t in store.list(None))


GATE = [sys.executable, "-c", "import pathlib, sys; sys.exit(1 if 'bad' in pathlib.Path('f.txt').read_text() else 0)"]


def test_a_failing_gate_leaves_main_alone_and_files_a_fix_task(json_agent_setup, repo):
    commit_file(repo, "f.txt", "ok\n")
    cfg, config, store = json_agent_setup(merge_gate_command=GATE)
    before = git(repo, "rev-parse", "main")
    task = add_task(store, "Break it", "append f.txt bad")
    filed_id, summary = run_with_a_person_on_followups(config, store)
    assert git(repo, "rev-parse", "main") == before
    fix = store.get(filed_id)
    assert fix.title == f"Fix failing checks: work/{task.id}" and "merge-gate" in fix.labels
    assert "merge_gate_command exited 1" in fix.description
    pending = json.loads((repo / ".dispatch_pending_merge_retries.json").read_text(encoding="utf-8"))
    assert pending[fix.id]["kind"] == "gate"
    assert summary["waiting"][0]["id"] == task.id


NAMING_GATE = [sys.executable, "-c", """\
import os, pathlib, sys
if 'bad' in pathlib.Path('f.txt').read_text():
    print('FAILED tests/test_f.py::test_f - f.txt says bad')
    print(f'  File "{os.path.join(os.getcwd(), "lib", "util.py")}", line 3, in check')
    print('see ../outside.py /etc/passwd .git/config missing/gone.py tests/')
    sys.exit(1)
"""]


def test_a_fix_task_carries_the_branch_changes_and_the_files_the_checks_name(json_agent_setup, repo):
    for name in ("f.txt", "tests/test_f.py", "lib/util.py"):
        commit_file(repo, name, "ok\n")
    cfg, config, store = json_agent_setup(merge_gate_command=NAMING_GATE)
    add_task(store, "Break it", "append f.txt bad", "append notes.md more")
    filed_id, summary = run_with_a_person_on_followups(config, store)
    # The branch's changed files the output names, its other changes, then the other named
    # files the branch has (a path in the gate worktree made relative); the rest is dropped.
    assert store.get(filed_id).files == ["f.txt", "notes.md", "tests/test_f.py", "lib/util.py"]


def test_a_passing_gate_merges_and_main_moving_during_the_gate_is_recomputed(json_agent_setup, repo, tmp_path):
    commit_file(repo, "f.txt", "ok\n")
    flag = tmp_path / "moved-once"
    # The first gate run moves main behind the dispatcher's back, as another tool might.
    gate = [sys.executable, "-c",
            "import pathlib, subprocess, sys\n"
            f"flag = pathlib.Path({str(flag)!r})\n"
            "if not flag.exists():\n"
            "    flag.write_text('x')\n"
            f"    root = {str(repo)!r}\n"
            "    pathlib.Path(root, 'other.txt').write_text('someone else\\n')\n"
            "    subprocess.run(['git', 'add', 'other.txt'], cwd=root, check=True)\n"
            "    subprocess.run(['git', 'commit', '-qm', 'someone else'], cwd=root, check=True)\n"
            "sys.exit(0)\n"]
    cfg, config, store = json_agent_setup(merge_gate_command=gate)
    task = add_task(store, "Good change", "append f.txt fine")
    assert dispatch(cfg).returncode == 0
    assert merges_of(repo, task.id) == 1
    assert main_file(repo, "other.txt") == "someone else\n" and main_file(repo, "f.txt") == "ok\nfine\n"
    assert git(repo, "log", "-1", "--format=%s", "main^1") == "someone else"


def test_one_gate_at_a_time_on_a_main_that_moved_is_ended_at_once_and_gated_again(json_agent_setup, repo, tmp_path):
    flag = tmp_path / "moved-once"
    # The first gate run moves main behind the dispatcher's back, then would run for 20 s.
    gate = [sys.executable, "-c",
            "import pathlib, subprocess, time\n"
            f"flag = pathlib.Path({str(flag)!r})\n"
            "if not flag.exists():\n"
            "    flag.write_text('x')\n"
            f"    subprocess.run(['git', 'commit', '-q', '--allow-empty', '-m', 'someone else'], cwd={str(repo)!r})\n"
            "    time.sleep(20)\n"]
    cfg, config, store = json_agent_setup(merge_gate_command=gate)
    task = add_task(store, "Good change", "append f.txt fine")
    assert dispatch(cfg).returncode == 0
    assert merges_of(repo, task.id) == 1 and git(repo, "log", "-1", "--format=%s", "main^1") == "someone else"
    first, again = events(repo, "gate_started")
    (cancelled,) = events(repo, "gate_cancelled")
    assert (cancelled["task_id"], cancelled["commit"]) == (task.id, first["commit"]) and again["commit"] != first["commit"]
    assert "main moved" in cancelled["reason"] and cancelled["gate_secs"] > 0  # the work it wasted


def test_a_stale_branch_is_never_merged(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Soon closed", "sleep 1", "append stale.txt x")
    summary = run_in_process(config, store, lambda m: "started worker" in m and store.close(task.id, "not needed"))
    assert main_file(repo, "stale.txt") is None and merges_of(repo, task.id) == 0
    assert git(repo, "branch", "--list", "--format=%(refname:short)", f"work/{task.id}") == f"work/{task.id}"
    assert "not merged: the task is now closed" in summary["waiting"][0]["reason"]


def test_new_marker_blocks_are_refused_but_existing_marker_lines_merge(json_agent_setup, repo):
    commit_file(repo, "docs.md", "How conflicts look:\n<<<<<<< ours\nx\n=======\ny\n>>>>>>> theirs\n")
    cfg, config, store = json_agent_setup(max_workers=1)
    fine = add_task(store, "Edit the docs", "append docs.md More docs.")
    marked = store.create("Leave markers", "AGENT: append bad.txt <<<<<<< HEAD\nAGENT: append bad.txt a\n"
                                           "AGENT: append bad.txt =======\nAGENT: append bad.txt b\n"
                                           "AGENT: append bad.txt >>>>>>> other")
    filed_id, _ = run_with_a_person_on_followups(config, store)
    assert merges_of(repo, fine.id) == 1 and main_file(repo, "docs.md").endswith("More docs.\n")
    assert merges_of(repo, marked.id) == 0 and main_file(repo, "bad.txt") is None
    conflict = store.get(filed_id)
    assert conflict.title == f"Resolve merge conflict: work/{marked.id}" and "file:bad.txt" in conflict.labels


def test_main_moved_between_merge_and_advance_is_recomputed(json_agent_setup, repo, monkeypatch):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Racing", "append race.txt mine")
    real_advance = MergeQueue.advance_main
    moved = []

    def someone_else_moves_main_first(self, old, new):
        if not moved:
            moved.append(commit_file(repo, "theirs.txt", "theirs\n", "someone else's commit"))
        return real_advance(self, old, new)

    monkeypatch.setattr(MergeQueue, "advance_main", someone_else_moves_main_first)
    summary = run_in_process(config, store)
    assert summary["merged"] == [task.id]
    assert git(repo, "rev-parse", "main^1") == moved[0]  # their commit kept, ours on top
    assert main_file(repo, "theirs.txt") == "theirs\n" and main_file(repo, "race.txt") == "mine\n"


def test_main_not_checked_out_advances_by_compare_and_swap(json_agent_setup, repo):
    git(repo, "checkout", "-q", "-b", "elsewhere")
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Detached", "append d.txt d")
    assert dispatch(cfg).returncode == 0
    assert merges_of(repo, task.id) == 1 and not (repo / "d.txt").exists()  # the checkout untouched


@pytest.mark.parametrize("failpoint", ["during_merge", "after_conflict_task", "during_gate", "after_claim"])
def test_killed_during_merging_then_restarted_merges_everything_once(json_agent_setup, repo, failpoint):
    commit_file(repo, "settings.ini", "[ui]\ncolor=blue\n")
    gate = [sys.executable, "-c", "import sys; sys.exit(0)"]
    cfg, config, store = json_agent_setup(merge_gate_command=gate)
    red, green = conflicting_pair(store)
    other = add_task(store, "Unrelated", "append u.txt u")
    for nth in (1, 2, 3):  # die at the step's first, then second, then third occurrence in a run
        dispatch(cfg, env={"DISPATCH_FAILPOINT": f"{failpoint}:{nth}"})
    proc = dispatch(cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for task in (red, green, other):
        assert store.get(task.id).status == "closed" and merges_of(repo, task.id) == 1
    conflicts = [t for t in store.list(None) if t.title.startswith("Resolve merge conflict")]
    assert len(conflicts) == 1
    assert_clean_finish(repo, Path(config.worktree_root))


def test_merge_conflicts_past_max_merge_retries_block_the_task(json_agent_setup, repo):
    commit_file(repo, "settings.ini", "[ui]\ncolor=blue\n")
    cfg, config, store = json_agent_setup(max_merge_retries=1)
    red, green = conflicting_pair(store)
    filed_id, _ = run_with_a_person_on_followups(config, store)
    pending = json.loads((repo / ".dispatch_pending_merge_retries.json").read_text(encoding="utf-8"))
    commit_file(Path(pending[filed_id]["worktree"]), "unrelated.txt", "x\n")  # a commit that resolves nothing
    store.close(filed_id, "closed without resolving")
    summary = run_in_process(config, store)
    loser = next(b for b in summary["blocked"])
    assert "still does not merge after 1 conflict or check tasks" in loser["reason"]
    assert loser["reason"].endswith("; the last conflict was in settings.ini")  # the next attempt is told
    assert git(repo, "branch", "--list", "--format=%(refname:short)", f"work/{loser['id']}") == f"work/{loser['id']}"
