"""A red main is not a branch's fault, as pure decisions: a branch's failed gate is blamed on the
branch (a fix task filed, a retry counted) only once merge_gate_command has passed on main as it
is; while main itself fails, merges are held and no fix task is filed. No git, no clock."""
from __future__ import annotations

import enum

from crew.dispatch.records import MainCheck


class Blame(enum.Enum):
    """Whose fault a branch's failed gate on `base` (main as it was) is."""

    BRANCH = "branch"  # main passed as it is: a fix task is filed, a retry counted
    MAIN = "main"  # main fails too: no fix task, no retry counted; the merges are held
    CHECK_MAIN = "check main"  # main's own verdict is not known: check main first, the failure waits


class Merges(enum.Enum):
    """Whether the merge queue may go on, as main's last check stands."""

    GO = "go"  # main passed, or is not known to fail (a failure is blamed only after a check)
    HELD = "held"  # main fails its checks: nothing is gated or merged
    RECHECK = "recheck"  # main failed, but main_recheck_secs have passed: check it again


def blame(check: MainCheck | None, base: str) -> Blame:
    if check is None or check.commit != base:
        return Blame.CHECK_MAIN
    return Blame.BRANCH if check.passed else Blame.MAIN


def merges(check: MainCheck | None, main: str | None, now: float, recheck_secs: float) -> Merges:
    """A failure holds the merges until main moves (a failure from the environment, a missing
    tool, never moves main: so it is also checked again every recheck_secs). A main that moved
    is not known to fail: its branches are gated, and a failure checks it then."""
    if check is None or check.passed or check.commit != main:
        return Merges.GO
    return Merges.RECHECK if now >= check.checked_at + recheck_secs else Merges.HELD
