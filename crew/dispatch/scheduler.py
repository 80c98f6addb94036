"""The dispatcher's decisions, as pure functions: which ready task may start and why another
waits, the breaker, and how long a waiting merge pauses. No git, no store, no clock: the caller
passes a snapshot of what is under way (`Holdings`) and the time; the dry run and the loop ask
the same questions of the same functions, so a dry run shows what a run would do.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from crew.dispatch import records
from crew.dispatch import review
from crew.dispatch.records import MergeRequest
from crew.dispatch.records import PendingMerge
from crew.dispatch.records import Worker


if TYPE_CHECKING:
    from crew.tasks.model import Task

CONFLICT_LABEL = "merge-conflict"
GATE_LABEL = "merge-gate"
PERSON_LABEL = "needs-person"  # a conflict git cannot show as text markers: no agent takes it
MERGE_WAIT_MAX_SECS = 30  # the longest a waiting merge goes untried


@dataclasses.dataclass(frozen=True)
class Holdings:
    """What is under way, as one decision sees it. files_of(task id): the files a task is
    scoped to ([] for a task the store no longer has)."""

    workers: Sequence[Worker]
    queue: Sequence[MergeRequest]
    pending: Mapping[str, PendingMerge]
    files_of: Callable[[str], Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Decision:
    """A ready task: whether it starts now, and if not, why it waits."""

    task: Task
    start: bool
    reason: str | None


def why_held(holdings: Holdings, task_id: str) -> str | None:
    """Why a task that is ready (reopened by hand, say) still has work under way, if it has:
    a second worker would share its branch and worktree, and its work would merge twice."""
    if task_id in {worker.task_id for worker in holdings.workers}:
        return "its worker is still running"
    if task_id in {request.task_id for request in holdings.queue}:
        return "its branch waits in the merge queue"
    if waits_for := [followup for followup, pending in holdings.pending.items() if pending.task_id == task_id]:
        return f"its branch waits for {waits_for[0]}"
    return None


def pending_for(holdings: Holdings, task: Task) -> PendingMerge | None:
    """The pending merge this task resolves: never one filed for an earlier task with its id."""
    pending = holdings.pending.get(task.id)
    if pending and records.same_creation(pending.followup_created_at, task.created_at):
        return pending
    return None


def held_files(holdings: Holdings, task_id: str, files: Sequence[str] | None = None) -> Sequence[str]:
    """The files a task holds against others (files: the task's, when the caller has them). A
    fix task works in its branch's worktree, whose pending merge already holds its own task's
    files: the files it carries for its agent (the branch's changes, those the checks named)
    hold nothing more."""
    pending = holdings.pending.get(task_id)
    if pending is not None and pending.kind == records.PendingKind.GATE:
        return ()
    return holdings.files_of(task_id) if files is None else files


def why_waiting(holdings: Holdings, task: Task, avoid_overlap: bool) -> str | None:
    """None when the task may start now; else the reason it waits."""
    if PERSON_LABEL in task.labels:
        return f"it is for a person (label {PERSON_LABEL}): no agent takes it"
    if held := why_held(holdings, task.id):
        return held
    conflict = pending_for(holdings, task)
    if (CONFLICT_LABEL in task.labels or GATE_LABEL in task.labels) and conflict is None:
        return "its merge has not been recorded yet"
    if conflict and conflict.branch in {worker.branch for worker in holdings.workers}:
        return "its branch is in use"
    if avoid_overlap and (files := held_files(holdings, task.id, task.files)):
        # A finished branch holds its files until it is merged: a task started from a main
        # without those changes would only make a conflict.
        holders = ([(worker.task_id, "is being changed by") for worker in holdings.workers]
                   + [(request.task_id, "waits to merge from") for request in holdings.queue]
                   + [(pending.task_id, "waits to merge from") for pending in holdings.pending.values()])
        for holder, how in holders:
            if holder != task.id and (overlap := set(held_files(holdings, holder)) & set(files)):
                return f"{', '.join(sorted(overlap))} {how} {holder}"
    return None


def waiting_limit(configured: int | None, max_workers: int, gate_parallelism: int) -> int:
    """How many branches may wait to merge before new work is held (0: no bound): by default
    twice the workers, enough to keep merges busy while every worker finishes at once, and never
    fewer than the gates that run at once, which would otherwise wait for branches."""
    return max(2 * max_workers, gate_parallelism) if configured is None else configured


def merging(queue: Iterable[MergeRequest], now: float) -> int:
    """The branches the merge queue is working through: not those held for a person, awaiting
    review or pausing while main is held, which no start can make wait longer, and which would
    otherwise hold new work for as long as they stand."""
    return sum(1 for request in queue
               if not request.held and request.review != review.State.AWAITING and request.retry_at <= now)


def why_starts_held(holdings: Holdings, limit: int, now: float) -> str | None:
    """Why new work waits, if it does: `limit` branches or more wait to merge. Agents faster than
    merges would otherwise grow the queue without bound, each branch made from a main further
    behind (more conflicts), each keeping a worktree, and each step of the dispatcher costing more."""
    if limit and (count := merging(holdings.queue, now)) >= limit:
        return (f"the merge queue is full ({count} waiting, max_waiting_merges {limit}): "
                "new work starts as its branches land")
    return None


def plan_starts(ready: Iterable[Task], holdings: Holdings, free: int, avoid_overlap: bool,
                starts_held: str | None = None) -> list[Decision]:
    """Each ready task in order, and whether it starts now: it may (why_waiting), it shares no
    file with a task this plan starts before it, and a worker slot is left for it. starts_held
    (why_starts_held) holds every task but those that settle a waiting merge (conflict and fix
    tasks), which drain the queue."""
    plan: list[Decision] = []
    starting: dict[str, str] = {}  # file -> the task this plan starts on it
    for task in ready:
        reason = why_waiting(holdings, task, avoid_overlap)
        if reason is None and starts_held and pending_for(holdings, task) is None:
            reason = starts_held
        files = held_files(holdings, task.id, task.files)
        if reason is None and avoid_overlap and (shared := [f for f in files if f in starting]):
            reason = f"{shared[0]} will be changed by {starting[shared[0]]}"
        if reason is None and free <= 0:
            reason = "all worker slots are busy"
        plan.append(Decision(task, reason is None, reason))
        if reason is None:
            free -= 1
            starting.update(dict.fromkeys(files, task.id))
    return plan


def next_try(waits: int, poll_secs: float, now: float) -> float:
    """When a merge that has waited `waits` times in a row is tried again: the pause doubles from
    the poll interval up to MERGE_WAIT_MAX_SECS, since what keeps main still (a stale lock, the
    user's rebase) may stand for hours."""
    pause: float = poll_secs * 2 ** (waits - 1)
    return now + min(pause, MERGE_WAIT_MAX_SECS)


@dataclasses.dataclass
class Breaker:
    """Stops new workers once `limit` attempts in a row ended with no commits (the agent or its
    model is likely down). Without --watch it stays tripped for the run; with it, it resets
    after `pause_secs`."""

    limit: int
    pause_secs: float
    watch: bool
    failures_in_a_row: int = 0
    until: float | None = None  # set when it trips

    def attempt_ended(self, made_commits: bool, counted: bool = True) -> None:
        """counted: False for an attempt the user stopped, which says nothing about the agent."""
        if made_commits:  # a later trip is a new one: told, and paused for in full
            self.failures_in_a_row, self.until = 0, None
        else:
            self.failures_in_a_row += counted

    def could_trip(self, unjudged: int) -> bool:
        """Whether the attempts that ended and are not yet judged would trip it, were none of them
        to have made commits: a start meanwhile would be one more than the breaker allows."""
        return self.failures_in_a_row + unjudged >= self.limit

    def check(self, now: float) -> tuple[bool, bool]:
        """(whether new workers are held back now, whether the breaker tripped just now: the
        moment to tell the user, once)."""
        if self.failures_in_a_row < self.limit:
            return False, False
        tripped_now = self.until is None
        if self.until is None:
            self.until = now + self.pause_secs
        if self.watch and now >= self.until:
            self.failures_in_a_row, self.until = 0, None
            return False, tripped_now
        return True, tripped_now
