"""Review before merge: which branches wait for a person, and the decisions the store records."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crew.cli import tasks as tasks_cli
from crew.dispatch import review
from crew.tasks import model
from support.dispatching import add_task, dispatch, events, main_file, merges_of, start_dispatcher, wait_until
from support.repos import ROOT, commit_file, git

TIP, OTHER = "a" * 40, "b" * 40


@pytest.mark.parametrize("mode, labels, waits", [
    ("none", [model.NEEDS_REVIEW_LABEL], False),
    ("all", [], True),
    ("labelled", [], False),
    ("labelled", [model.NEEDS_REVIEW_LABEL], True),
    ("all", [review.APPROVED_PREFIX + TIP], False),
    ("all", [review.APPROVED_PREFIX + OTHER], True),  # approved, then the branch changed
    ("labelled", [model.NEEDS_REVIEW_LABEL, review.APPROVED_PREFIX + TIP], False),
])
def test_which_branches_wait_for_review(mode, labels, waits):
    assert review.waits_for_review(mode, labels, TIP) is waits


@pytest.mark.parametrize("labels, decision", [
    ([], review.Decision.NONE),
    ([review.AWAITING_LABEL], review.Decision.NONE),
    ([review.APPROVED_PREFIX + TIP], review.Decision.APPROVED),
    ([review.APPROVED_PREFIX + OTHER], review.Decision.NONE),
    ([review.CHANGES_PREFIX + TIP], review.Decision.CHANGES_REQUESTED),
    ([review.APPROVED_PREFIX + TIP, review.REJECTED_PREFIX + TIP], review.Decision.REJECTED),
])
def test_a_decision_holds_for_the_tip_it_names(labels, decision):
    assert review.decided(labels, TIP) is decision


def test_the_gate_before_review_stands_only_on_the_same_main_and_tip():
    assert review.gate_stands("m1", TIP, "m1", TIP)
    assert not review.gate_stands("m2", TIP, "m1", TIP)
    assert not review.gate_stands("m1", OTHER, "m1", TIP)
    assert not review.gate_stands("m1", TIP, "", TIP)


def test_a_rejected_branch_is_kept_under_a_name_no_branch_has():
    assert review.rejected_branch_name("work/p-1", []) == "rejected/work/p-1"
    assert review.rejected_branch_name("work/p-1", ["rejected/work/p-1"]) == "rejected/work/p-1-2"


def test_labels_are_added_and_removed_with_a_note_in_one_write(store):
    task = store.create("reviewed", labels=["file:a.py"])
    store.relabel(task.id, add=[review.AWAITING_LABEL, review.APPROVED_PREFIX + TIP], note="awaiting review")
    store.relabel(task.id, add=[review.AWAITING_LABEL], remove=[review.APPROVED_PREFIX + TIP])
    changed = store.get(task.id)
    assert sorted(changed.labels) == sorted(["file:a.py", review.AWAITING_LABEL])
    assert "awaiting review" in changed.notes
    store.relabel(task.id, remove=[review.AWAITING_LABEL, "file:a.py"])
    assert store.get(task.id).labels == []


def test_create_review_sets_the_label(make_config, backend, capsys):
    cfg = str(make_config(**backend))
    assert tasks_cli.main(["--config", cfg, "create", "Rework the login", "--review", "--file", "a.py", "--json"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)[0]["labels"]) == ["file:a.py", model.NEEDS_REVIEW_LABEL]


# ---- with real git and a dispatcher process -------------------------------------------------

GATE = [sys.executable, "-c", "pass"]


def tasks_py(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tasks.py"), "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=120)


def run(cfg, failpoint: str | None = None) -> str:
    """One dispatcher run to its end (or, with a failpoint, its kill there): exit 1 while a branch
    awaits review (a merge waits), 0 once all landed. Its output."""
    done = dispatch(cfg, env={"DISPATCH_FAILPOINT": failpoint} if failpoint else None)
    assert done.returncode in ((77,) if failpoint else (0, 1)) and "Traceback" not in done.stderr, \
        done.stdout + done.stderr
    return done.stdout


def awaiting_review(cfg) -> list[dict]:
    listed = tasks_py(cfg, "review", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def run_until_awaiting(cfg, repo, task_id: str) -> dict:
    """A run whose branch passed its merge and gate and now awaits review: nothing landed."""
    run(cfg)
    [waiting] = awaiting_review(cfg)
    assert waiting["id"] == task_id and merges_of(repo, task_id) == 0
    return waiting


def decide(cfg, *args: str) -> None:
    decided = tasks_py(cfg, *args)
    assert decided.returncode == 0, decided.stderr


@pytest.fixture
def reviewed(agent_setup, repo):
    """(config path, store, task): review "all", a gate, and one task whose agent appends a line."""
    cfg, _config, store = agent_setup(review="all", merge_gate_command=GATE)
    task = add_task(store, "Add a feature", "append feature.txt new", "copy-message message.txt")
    return cfg, store, task


def test_a_branch_awaits_review_then_lands_once_approved(reviewed, repo):
    cfg, store, task = reviewed
    waiting = run_until_awaiting(cfg, repo, task.id)
    tip = git(repo, "rev-parse", f"refs/heads/{waiting['branch']}")
    assert waiting["tip"] == tip and waiting["gate"] == "passed" and waiting["gate_log"]
    assert waiting["diff_command"] == f"git diff main...{waiting['branch']}" and waiting["attempt_log"]
    assert waiting["diffstat"]["files"] == 2 and waiting["decision"] == "none"
    held = store.get(task.id)
    assert held.status == "in_progress" and review.AWAITING_LABEL in held.labels and tip in held.notes
    [awaited] = events(repo, "review_awaited")
    assert awaited["branch"] == waiting["branch"] and awaited["tip"] == tip
    run(cfg)  # no decision yet: it still waits, and nothing lands
    assert merges_of(repo, task.id) == 0 and len(awaiting_review(cfg)) == 1

    decide(cfg, "approve", task.id)
    assert review.APPROVED_PREFIX + tip in store.get(task.id).labels
    run(cfg)
    assert merges_of(repo, task.id) == 1 and main_file(repo, "feature.txt") == "new\n"
    assert store.get(task.id).status == "closed" and awaiting_review(cfg) == []
    assert review.AWAITING_LABEL not in store.get(task.id).labels
    [approved] = events(repo, "review_approved")
    assert approved["tip"] == tip
    assert len(events(repo, "gate_started")) == 1  # main did not move: the gate that passed stands


def test_approved_after_main_moved_is_merged_and_gated_afresh(reviewed, repo):
    cfg, store, task = reviewed
    run_until_awaiting(cfg, repo, task.id)
    commit_file(repo, "other.txt", "meanwhile\n", "a commit of the user's")
    decide(cfg, "approve", task.id)
    run(cfg)
    assert merges_of(repo, task.id) == 1 and main_file(repo, "other.txt") == "meanwhile\n"
    assert len(events(repo, "gate_started")) == 2 and len(events(repo, "gate_passed")) == 2


def test_a_branch_that_changed_after_approval_is_reviewed_again(reviewed, repo):
    cfg, store, task = reviewed
    waiting = run_until_awaiting(cfg, repo, task.id)
    decide(cfg, "approve", task.id)
    worktree = git(repo, "worktree", "list", "--porcelain").split("worktree ")[2].splitlines()[0]
    commit_file(Path(worktree), "fix.txt", "a fix\n", "a fix made after the approval")
    run(cfg)
    assert merges_of(repo, task.id) == 0
    [again] = awaiting_review(cfg)
    assert again["tip"] != waiting["tip"] and again["tip"] == git(repo, "rev-parse", f"refs/heads/{waiting['branch']}")
    refused = tasks_py(cfg, "approve", task.id, "--tip", waiting["tip"][:12])
    assert refused.returncode == 1 and "not " + waiting["tip"][:12] in refused.stderr
    decide(cfg, "approve", task.id, "--tip", again["tip"][:12])
    run(cfg)
    assert merges_of(repo, task.id) == 1 and main_file(repo, "fix.txt") == "a fix\n"


def test_rejected_the_next_attempt_starts_afresh_and_is_told_why(reviewed, repo):
    cfg, store, task = reviewed
    first = run_until_awaiting(cfg, repo, task.id)
    decide(cfg, "reject", task.id, "-r", "use a constant, not a literal")
    run(cfg)  # carried out, and the next attempt runs and awaits review in turn
    [rejected] = events(repo, "review_rejected")
    assert rejected["kept_as"] == f"rejected/{first['branch']}" and rejected["fresh"] is True
    assert git(repo, "rev-parse", f"refs/heads/rejected/{first['branch']}") == first["tip"]
    [second] = awaiting_review(cfg)
    assert second["branch"] == first["branch"] and second["tip"] != first["tip"]
    assert git(repo, "rev-list", "--count", f"main..{second['tip']}") == "2"  # afresh from main
    message = git(repo, "show", f"{second['tip']}:message.txt")
    assert "use a constant, not a literal" in message
    state = json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))
    assert state["attempts"].get(task.id, 0) == 0  # a person's decision: no attempt counted
    assert merges_of(repo, task.id) == 0 and main_file(repo, "feature.txt") is None


def test_changes_requested_the_next_attempt_continues_the_branch(reviewed, repo):
    cfg, store, task = reviewed
    first = run_until_awaiting(cfg, repo, task.id)
    decide(cfg, "reject", task.id, "-r", "add a second line", "--keep-branch")
    run(cfg)
    [rejected] = events(repo, "review_rejected")
    assert rejected["kept_as"] == first["branch"] and rejected["fresh"] is False
    [second] = awaiting_review(cfg)
    assert second["branch"] == first["branch"]
    assert subprocess.run(["git", "merge-base", "--is-ancestor", first["tip"], second["tip"]], cwd=repo).returncode == 0
    assert "refs/heads/rejected/" not in git(repo, "for-each-ref", "--format=%(refname)")
    assert "add a second line" in git(repo, "show", f"{second['tip']}:message.txt")


def test_approved_while_the_dispatcher_watches_it_lands_without_a_restart(reviewed, repo):
    cfg, store, task = reviewed
    proc = start_dispatcher(cfg, "--watch")
    try:
        wait_until(lambda: events(repo, "review_awaited"), proc, "the branch awaiting review")
        assert merges_of(repo, task.id) == 0
        decide(cfg, "approve", task.id)
        wait_until(lambda: store.get(task.id).status == "closed", proc, "the approved branch landed")
        assert merges_of(repo, task.id) == 1 and main_file(repo, "feature.txt") == "new\n"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


@pytest.mark.parametrize("backend", ["json", "fake-bd"], indirect=True)
@pytest.mark.parametrize("failpoint, decision", [
    ("awaiting_review", None),  # the store says it awaits review, the dispatcher's records not yet
    ("review_approving", "approve"),  # the approval taken up in the store, not yet in the records
    ("during_merge", "approve"),  # about to move main to the approved branch
    ("review_rejecting", "reject"),
    ("review_set_aside", "reject"),  # the rejected branch moved aside, the records not yet changed
    ("review_rejecting", "keep"),
])
def test_killed_at_each_step_of_review_nothing_lands_twice_or_unapproved(reviewed, repo, failpoint, decision):
    cfg, store, task = reviewed
    if decision is None:
        run(cfg, failpoint)
        run(cfg)  # restarted: gated again, and it awaits review again; nothing landed unapproved
        assert merges_of(repo, task.id) == 0 and main_file(repo, "feature.txt") is None
        first = awaiting_review(cfg)[0]
        decide(cfg, "approve", task.id)
    else:
        first = run_until_awaiting(cfg, repo, task.id)
        if decision == "approve":
            decide(cfg, "approve", task.id)
        else:
            decide(cfg, "reject", task.id, "-r", "not like this", *(["--keep-branch"] if decision == "keep" else []))
        run(cfg, failpoint)
        assert merges_of(repo, task.id) == 0
    run(cfg)
    if decision in (None, "approve"):
        assert merges_of(repo, task.id) == 1 and main_file(repo, "feature.txt") == "new\n"
        assert store.get(task.id).status == "closed" and awaiting_review(cfg) == []
        return
    # Rejected: carried out once the dispatcher is back; the next attempt awaits review in turn.
    assert merges_of(repo, task.id) == 0 and main_file(repo, "feature.txt") is None
    [second] = awaiting_review(cfg)
    assert second["tip"] != first["tip"]
    aside = git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/rejected")
    assert aside == (f"rejected/{first['branch']} {first['tip']}" if decision == "reject" else "")
    state = json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))
    assert state["attempts"].get(task.id, 0) == 0


def test_status_and_the_report_show_what_awaits_review_and_what_was_decided(json_agent_setup, repo):
    cfg, _config, store = json_agent_setup(review="labelled", merge_gate_command=GATE)
    reviewed = add_task(store, "Reviewed", "append r.txt r")
    store.relabel(reviewed.id, add=[model.NEEDS_REVIEW_LABEL])
    rejected = add_task(store, "Rejected once", "append x.txt x")
    store.relabel(rejected.id, add=[model.NEEDS_REVIEW_LABEL])
    unreviewed = add_task(store, "Not reviewed", "append u.txt u")
    run(cfg)
    assert merges_of(repo, unreviewed.id) == 1  # review "labelled": only the labelled tasks wait
    status = json.loads(dispatch(cfg, "--status", "--json").stdout)
    entries = {e["task_id"]: e for e in status["merge_queue"]}
    assert {entries[reviewed.id]["review"], entries[rejected.id]["review"]} == {"awaiting"}
    assert entries[reviewed.id]["awaiting_review_since"] and entries[reviewed.id]["review_tip"]
    text = dispatch(cfg, "--status").stdout
    assert f"awaiting review: {reviewed.id}" in text and f"awaiting review: {rejected.id}" in text
    listed = tasks_py(cfg, "review").stdout
    assert f"diff: git diff main...work/{reviewed.id}" in listed and "gate: passed (log " in listed
    refused = tasks_py(cfg, "approve", unreviewed.id)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "no branch of it awaits review" in refused.stderr
    assert tasks_py(cfg, "reject", reviewed.id).returncode == 2  # a rejection needs its reason
    decide(cfg, "approve", reviewed.id)
    decide(cfg, "reject", rejected.id, "-r", "not this way")
    run(cfg)
    assert merges_of(repo, reviewed.id) == 1 and merges_of(repo, rejected.id) == 0
    made = dispatch(cfg, "--report", "--json")
    page = Path(json.loads(made.stdout)["report"]).read_text(encoding="utf-8")
    assert "3 awaited review, 1 approved, 1 rejected; awaiting now: " + rejected.id in page
    assert 'data-mark="review_rejected"' in page and "made no sense" not in page


def test_with_parallel_gates_a_branch_awaiting_review_holds_back_none_behind_it(json_agent_setup, repo):
    cfg, _config, store = json_agent_setup(review="labelled", merge_gate_command=GATE, merge_gate_parallelism=2,
                                           max_workers=1)
    reviewed = add_task(store, "Reviewed first", "append r.txt r", priority=1)
    store.relabel(reviewed.id, add=[model.NEEDS_REVIEW_LABEL])
    behind = add_task(store, "Not reviewed", "append u.txt u", priority=2)
    run(cfg)
    assert merges_of(repo, behind.id) == 1 and merges_of(repo, reviewed.id) == 0
    assert [w["id"] for w in awaiting_review(cfg)] == [reviewed.id]
    decide(cfg, "approve", reviewed.id)
    run(cfg)  # main moved since its gate: merged and gated afresh, then landed
    assert merges_of(repo, reviewed.id) == 1 and main_file(repo, "r.txt") == "r\n"
