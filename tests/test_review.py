"""Review before merge: which branches wait for a person, and the decisions the store records."""
from __future__ import annotations

import json

import pytest

from crew.cli import tasks as tasks_cli
from crew.dispatch import review
from crew.tasks import model

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
