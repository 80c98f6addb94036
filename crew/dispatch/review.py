"""Review before merge, as pure decisions: which branches wait for a person before they land, and
what a person decided about the exact branch tip they were shown. Both are read from the task's
labels, which live in the task store (any machine sees them). No git, no store, no clock here."""
from __future__ import annotations

import enum
from collections.abc import Sequence

from crew.tasks import model as task_model


AWAITING_LABEL = "awaiting-review"  # the task's branch waits for a person (`tasks.py review`)
# A person's decision names the full tip it was made on: a branch that changed since is reviewed again.
APPROVED_PREFIX = "review-approved:"
REJECTED_PREFIX = "review-rejected:"  # the next attempt starts afresh on main; the branch is kept aside
CHANGES_PREFIX = "review-changes:"  # rejected with --keep-branch: the next attempt continues the branch
REJECTED_BRANCH = "rejected/{branch}"  # where a rejected branch is kept; never merged


class Mode(enum.StrEnum):
    """The config key `review`."""
    NONE = "none"
    ALL = "all"
    LABELLED = "labelled"  # only tasks labelled needs-review


class State(enum.StrEnum):
    """A merge request's review, as the dispatcher records it."""
    NONE = ""  # none was asked
    AWAITING = "awaiting"  # out of the merge queue until a person decides
    APPROVED = "approved"  # back in the queue; lands only with the tip that was approved


class Decision(enum.StrEnum):
    NONE = "none"
    APPROVED = "approved"
    REJECTED = "rejected"
    CHANGES_REQUESTED = "changes requested"


DECISION_PREFIXES = {Decision.APPROVED: APPROVED_PREFIX, Decision.REJECTED: REJECTED_PREFIX,
                     Decision.CHANGES_REQUESTED: CHANGES_PREFIX}


def wanted(mode: str, labels: Sequence[str]) -> bool:
    """Whether the task's branches are reviewed before they land."""
    return mode == Mode.ALL or (mode == Mode.LABELLED and task_model.NEEDS_REVIEW_LABEL in labels)


def waits_for_review(mode: str, labels: Sequence[str], tip: str) -> bool:
    """Whether a branch that passed everything else (it merges cleanly, the gate passed on the very
    commit main would move to) waits for a person before main moves: review is wanted for its task
    and this exact tip was not approved."""
    return wanted(mode, labels) and APPROVED_PREFIX + tip not in labels


def decided(labels: Sequence[str], tip: str) -> Decision:
    """A person's decision on this exact tip; a rejection outweighs an approval of the same tip."""
    for decision in (Decision.REJECTED, Decision.CHANGES_REQUESTED, Decision.APPROVED):
        if DECISION_PREFIXES[decision] + tip in labels:
            return decision
    return Decision.NONE


def decision_label(decision: Decision, tip: str) -> str:
    return DECISION_PREFIXES[decision] + tip


def gate_stands(main_now: str, tip_now: str, gated_main: str, gated_tip: str) -> bool:
    """Whether the gate that passed before the review still holds for landing: main has not moved
    and the branch is the tip that was gated (and approved). Else a fresh merge is gated."""
    return bool(gated_main) and main_now == gated_main and tip_now == gated_tip


def rejected_branch_name(branch: str, taken: Sequence[str]) -> str:
    """The name a rejected branch is kept under: one no branch has yet."""
    name, n = REJECTED_BRANCH.format(branch=branch), 1
    while name in taken:
        n += 1
        name = f"{REJECTED_BRANCH.format(branch=branch)}-{n}"
    return name
