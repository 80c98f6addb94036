"""Speculative parallel gates, as pure decisions: which queue entries are gated now and
on what, which one lands, whose failure counts, which gates are void. No git, no clock, no store.

Zuul's rule. Entry k is gated on a speculative commit: main with the entries ahead of it merged
in, each a merge commit on the one before, assuming they will all pass. So each entry's commit is
a merge onto the speculative commit of the nearest entry ahead that is in its stack (or onto
main), and a gate's stack still holds exactly when that commit is still the one there. Main only
ever moves to the speculative commit of the first entry, once its gate passed on main as it is:
so main holds only commits that passed the gate exactly as they are.

- An entry known to have failed (its gate failed on a stack that still holds) leaves the stacks
  of those behind it at once; its failure counts (it leaves the queue) only once it is first,
  every entry ahead having landed or left: until then it may be the fault of one ahead, and if
  that one leaves, it is gated again without it.
- An entry whose branch conflicts with the stack ahead of it but not with main waits, out of the
  stacks, until it is first; then it is judged against main as any other.
- A gate whose stack no longer holds (main moved, an entry ahead was gated again, left, or came
  back) is cancelled, and its entry is gated again on the stack there is now.
- At most `parallelism` gates run at once; they go to the first entries that need one, in
  order, and none goes to an entry behind one that waits for a free gate (its stack would hold
  an entry nobody has gated).
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence


class GateResult(enum.Enum):
    GATING = "gating"
    PASSED = "passed"
    FAILED = "failed"


WAITS_FOR_GATE = "waits for a free gate"
WAITS_FOR_AHEAD = "failed; its failure counts once every entry ahead of it has landed"
CONFLICTS_WITH_STACK = "conflicts with the entries ahead of it (not with main): waits for them to land"


@dataclasses.dataclass(frozen=True)
class GateState:
    """An entry's gate: the commit its speculative commit was merged onto (`parent`: main, or the
    speculative commit of the entry ahead), that commit, and how the gate stands."""

    parent: str
    commit: str
    result: GateResult = GateResult.GATING


@dataclasses.dataclass(frozen=True)
class Entry:
    """A merge-queue entry taking part in the gates, in queue order. conflicts_with_stack: its
    branch did not merge onto the stack it was last built on, though it does onto main."""

    task_id: str
    gate: GateState | None = None
    conflicts_with_stack: bool = False


@dataclasses.dataclass(frozen=True)
class GateStart:
    """Gate `task_id` now on a merge of its branch onto the speculative commit of `onto` (a task
    id; None: main itself). `stack`: the entries ahead of it in its speculative commit, in order."""

    task_id: str
    onto: str | None
    stack: tuple[str, ...]


@dataclasses.dataclass
class Plan:
    """What to do now, in this order: end the `cancel` gates (their stacks no longer hold) and
    forget the `void` results (finished gates whose stacks no longer hold), land `land` (main
    moves to its speculative commit) or count `fail`'s failure, then start `start` in order.
    After a landing or a counted failure the queue has changed: plan again.
    `waiting`: why each entry neither gating nor passed waits, for --status."""

    start: list[GateStart] = dataclasses.field(default_factory=list)
    cancel: list[str] = dataclasses.field(default_factory=list)
    void: list[str] = dataclasses.field(default_factory=list)
    land: str | None = None
    fail: str | None = None
    waiting: dict[str, str] = dataclasses.field(default_factory=dict)


def plan(entries: Sequence[Entry], main: str | None, parallelism: int) -> Plan:
    """The plan for the entries (queue order; only those taking part: a merge that waits until
    later is not among them) on `main` (its commit now; None: it cannot be read), with at most
    `parallelism` gates."""
    decided = Plan()
    onto: str | None = None  # the entry the next stack member merges onto; None: main
    commit: str | None = main  # that entry's speculative commit; None: not known (gated again now)
    stack: list[str] = []
    needs_gate: list[GateStart] = []
    running = 0
    for position, entry in enumerate(entries):
        first = position == 0
        if entry.conflicts_with_stack and not first:
            decided.waiting[entry.task_id] = CONFLICTS_WITH_STACK  # and it has no gate: it did not merge
            continue
        gate = entry.gate
        if gate is not None and commit is not None and gate.parent == commit:
            if gate.result is GateResult.FAILED:
                if first:
                    decided.fail = entry.task_id
                else:
                    decided.waiting[entry.task_id] = WAITS_FOR_AHEAD
                continue  # out of the stacks behind it
            if gate.result is GateResult.PASSED and first:
                decided.land = entry.task_id
            running += gate.result is GateResult.GATING
            commit = gate.commit
        else:
            if gate is not None:
                (decided.cancel if gate.result is GateResult.GATING else decided.void).append(entry.task_id)
            needs_gate.append(GateStart(entry.task_id, onto, tuple(stack)))
            commit = None  # its new speculative commit is made when it starts
        onto = entry.task_id
        stack.append(entry.task_id)
    # Each entry that needs a gate has every earlier one in its stack: once the gates run out,
    # none behind may start either.
    free = max(parallelism - running, 0)
    decided.start.extend(needs_gate[:free])
    decided.waiting.update({start.task_id: WAITS_FOR_GATE for start in needs_gate[free:]})
    return decided
