"""What a run says once on the terminal (a wait that may last, a hook that keeps failing): said
the first time, then kept quiet for the rest of the run."""
from __future__ import annotations

import enum
from collections.abc import Callable


class Told(enum.Enum):
    """What a message said once is about; with it, the subject that makes it new (a task, a commit)."""

    STARTS_HELD = "starts held"  # once a run: the merge queue may fill and drain all run long
    NOT_STARTED_AGAIN = "not started again"  # a task's branch waits: by task and reason
    MAIN_FAILS = "main fails"  # main fails its checks: by main's commit
    MERGE_WAITS = "merge waits"  # by task and reason
    GATE_HOOK_FAILED = "gate hook failed"  # once a run: the gate worktree's post-checkout hook failed
    PUSH_WAITS = "push waits"  # a branch not pushed or marked ready yet: by branch and reason
    LOCAL_MAIN_KEPT = "local main kept"  # once a run: the user's main has commits the remote's lacks


class SayOnce:
    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.told: set[tuple[Told, str]] = set()

    def __call__(self, kind: Told, message: str, subject: str = "") -> None:
        if (kind, subject) not in self.told:
            self.told.add((kind, subject))
            self.say(message)

    def told_any(self, kind: Told) -> bool:
        return any(told == kind for told, _ in self.told)
