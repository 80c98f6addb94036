"""What the merge queue's steps conclude: decide()'s verdict on a request, and what moving main did.
Read by the merge queue and by the parallel gates, which decide() requests of it; never written
to disk."""
from __future__ import annotations

import dataclasses
import enum

from crew.tasks import model as task_model


class Verdict(enum.Enum):
    CLEAN = "clean"  # its merge commit is made on `base`: to gate or land
    CONFLICT = "conflict"  # handed back as a task, or rebased
    STACK_CONFLICT = "stack conflict"  # it merges onto main, not onto the speculative commit it was to be stacked on
    WAITS = "waits"  # main is held
    MERGED = "merged"  # before a crash: only the bookkeeping was left
    DROPPED = "dropped"  # its task or branch is gone, or the task changed


@dataclasses.dataclass
class Decision:
    """What decide() made of a request; a CLEAN one carries its task, `base` and merge `commit`
    (a STACK_CONFLICT its task only)."""

    verdict: Verdict
    task: task_model.Task | None = None
    base: str | None = None
    commit: str | None = None


class Move(enum.Enum):
    DONE = "ok"  # main is at the new commit
    RACED = "moved"  # someone else moved main first: recompute on the main that is there
    STAYS = "stays"  # main did not move: `reason` says why, and the merge waits
    REJECTED = "rejected"  # remote mode: the push found the remote's main (or the branch) moved: fetch, recompute
    REFUSED = "refused"  # remote mode: the remote itself refuses main to move (branch protection, its hook): `reason`


@dataclasses.dataclass(frozen=True)
class MainMove:
    """What advance_main did: a move, and why main stays when it does (said to the user)."""

    move: Move
    reason: str = ""
    local_kept: str = ""  # remote mode: why the user's local main was not fast-forwarded, said once

    @classmethod
    def stays(cls, reason: str) -> MainMove:
        return cls(Move.STAYS, reason)


DONE, RACED, REJECTED = MainMove(Move.DONE), MainMove(Move.RACED), MainMove(Move.REJECTED)
