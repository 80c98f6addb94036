"""The dispatcher's decisions as pure functions: no git, no store, no processes, no clock."""
from __future__ import annotations

from pathlib import Path

import pytest

from crew.dispatch import review, scheduler
from crew.dispatch.records import BranchInFlight, MergeRequest, PendingMerge, Worker
from crew.tasks.model import Task

FILES = {"proj-1": ["a.py"], "proj-2": ["b.py"], "proj-3": ["c.py", "d.py"]}


def task(task_id: str, *files: str, labels=(), created_at: str = "2026-01-01T00:00:00Z") -> Task:
    return Task(id=task_id, title=f"Task {task_id}", labels=[*labels, *(f"file:{f}" for f in files)],
                created_at=created_at)


def worker(task_id: str, slot: int = 1, branch: str | None = None) -> Worker:
    return Worker(slot=slot, task_id=task_id, title="", branch=branch or f"work/{task_id}",
                  worktree=Path(f"/wt/{task_id}"), base="0" * 40, attempt=1, started_at=0.0, deadline=None)


def request(task_id: str) -> MergeRequest:
    return MergeRequest(flight(task_id, retries=0))


def pending(task_id: str, followup_created_at: str = "", kind: str = "conflict") -> PendingMerge:
    return PendingMerge(kind=kind, flight=flight(task_id, retries=1), files=[],
                        followup_created_at=followup_created_at)


def flight(task_id: str, retries: int) -> BranchInFlight:
    return BranchInFlight(task_id=task_id, title="", branch=f"work/{task_id}", worktree=Path(f"/wt/{task_id}"),
                          outcome="close", note="", retries=retries)


def holdings(workers=(), queue=(), pending_merges=None) -> scheduler.Holdings:
    return scheduler.Holdings(list(workers), list(queue), dict(pending_merges or {}),
                              lambda task_id: FILES.get(task_id, []))


@pytest.mark.parametrize("now, reason", [
    (holdings(workers=[worker("proj-1")]), "its worker is still running"),
    (holdings(queue=[request("proj-1")]), "its branch waits in the merge queue"),
    (holdings(pending_merges={"proj-9": pending("proj-1")}), "its branch waits for proj-9"),
    (holdings(workers=[worker("proj-2")], queue=[request("proj-3")]), None),
])
def test_why_a_ready_task_is_held_by_its_own_work(now, reason):
    assert scheduler.why_held(now, "proj-1") == reason


def test_a_task_for_a_person_is_never_started():
    waiting = scheduler.why_waiting(holdings(), task("proj-5", labels=[scheduler.PERSON_LABEL]), True)
    assert waiting == "it is for a person (label needs-person): no agent takes it"


def test_a_conflict_task_waits_until_its_merge_is_recorded_for_it_and_its_branch_is_free():
    conflict = task("proj-9", labels=[scheduler.CONFLICT_LABEL], created_at="2026-02-02T00:00:00Z")
    assert scheduler.why_waiting(holdings(), conflict, True) == "its merge has not been recorded yet"
    # A pending merge filed for an earlier task with this id is not this task's.
    earlier = {"proj-9": pending("proj-1", followup_created_at="2025-12-31T00:00:00Z")}
    assert scheduler.pending_for(holdings(pending_merges=earlier), conflict) is None
    assert scheduler.why_waiting(holdings(pending_merges=earlier), conflict, True) == "its merge has not been recorded yet"
    mine = {"proj-9": pending("proj-1", followup_created_at="2026-02-02T00:00:00Z")}
    assert scheduler.why_waiting(holdings(pending_merges=mine), conflict, True) is None
    # Real bd answers create in nanoseconds, and later reads rounded to the second.
    rounded = {"proj-9": pending("proj-1", followup_created_at="2026-02-02T00:00:00.467123987Z")}
    assert scheduler.pending_for(holdings(pending_merges=rounded), conflict) is rounded["proj-9"]
    busy = holdings(workers=[worker("proj-7", branch="work/proj-1")], pending_merges=mine)
    assert scheduler.why_waiting(busy, conflict, True) == "its branch is in use"


def test_a_task_waits_for_the_files_of_work_under_way_only_when_overlap_is_avoided():
    now = holdings(workers=[worker("proj-1")], queue=[request("proj-3")])
    assert scheduler.why_waiting(now, task("proj-4", "a.py"), True) == "a.py is being changed by proj-1"
    assert scheduler.why_waiting(now, task("proj-4", "d.py", "c.py"), True) == "c.py, d.py waits to merge from proj-3"
    assert scheduler.why_waiting(now, task("proj-4", "a.py"), False) is None
    assert scheduler.why_waiting(now, task("proj-4", "z.py"), True) is None
    waiting_merge = holdings(pending_merges={"proj-9": pending("proj-2")})
    assert scheduler.why_waiting(waiting_merge, task("proj-4", "b.py"), True) == "b.py waits to merge from proj-2"


def test_a_fix_task_holds_no_file_beyond_what_its_branch_task_held():
    """A fix task (proj-9, for proj-1's branch) carries the branch's changes and the files the
    checks named, a.py and b.py: running, or planned, it holds back no task on b.py."""
    fix = task("proj-9", "a.py", "b.py", labels=[scheduler.GATE_LABEL])
    files = {**FILES, "proj-9": ["a.py", "b.py"]}
    gate_pending = {"proj-9": pending("proj-1", kind="gate")}
    running = scheduler.Holdings([worker("proj-9")], [], gate_pending, lambda task_id: files.get(task_id, []))
    assert scheduler.why_waiting(running, task("proj-2", "b.py"), True) is None
    assert scheduler.why_waiting(running, task("proj-5", "a.py"), True) == "a.py waits to merge from proj-1"
    plan = scheduler.plan_starts([fix, task("proj-2", "b.py")], scheduler.Holdings(
        [], [], gate_pending, lambda task_id: files.get(task_id, [])), 2, True)
    assert [(d.task.id, d.start, d.reason) for d in plan] == [("proj-9", True, None), ("proj-2", True, None)]
    # A conflict task's files (the conflicted ones) hold as before.
    conflict_pending = {"proj-9": pending("proj-1")}
    assert scheduler.why_waiting(scheduler.Holdings([worker("proj-9")], [], conflict_pending, lambda task_id: files.get(
        task_id, [])), task("proj-2", "b.py"), True) == "b.py is being changed by proj-9"


def test_plan_starts_fills_the_free_slots_in_order_and_never_two_tasks_on_one_file():
    ready = [task("proj-4", "x.py"), task("proj-5", "a.py"), task("proj-6", "x.py", "y.py"), task("proj-7"),
             task("proj-8")]
    plan = scheduler.plan_starts(ready, holdings(workers=[worker("proj-1")]), free=2, avoid_overlap=True)
    assert [(d.task.id, d.start, d.reason) for d in plan] == [
        ("proj-4", True, None),
        ("proj-5", False, "a.py is being changed by proj-1"),
        ("proj-6", False, "x.py will be changed by proj-4"),
        ("proj-7", True, None),
        ("proj-8", False, "all worker slots are busy"),
    ]
    overlapping = scheduler.plan_starts(ready[:3], holdings(), free=3, avoid_overlap=False)
    assert [d.start for d in overlapping] == [True, True, True]
    assert [d.reason for d in scheduler.plan_starts(ready[:1], holdings(), free=0, avoid_overlap=True)] == [
        "all worker slots are busy"]


def test_new_work_waits_while_many_branches_wait_to_merge_but_not_a_task_that_drains_the_queue():
    limit = scheduler.waiting_limit(None, max_workers=2, gate_parallelism=1)
    assert limit == 4 and scheduler.waiting_limit(None, 1, gate_parallelism=6) == 6
    assert scheduler.waiting_limit(0, 2, 1) == 0 and scheduler.waiting_limit(7, 2, 1) == 7
    queue = [request(f"proj-{n}") for n in range(10, 14)]
    full = holdings(queue=queue, pending_merges={"proj-9": pending("proj-1")})
    held = scheduler.why_starts_held(full, limit, now=100.0)
    assert held == ("the merge queue is full (4 waiting, max_waiting_merges 4): "
                    "new work starts as its branches land")
    conflict = task("proj-9", labels=[scheduler.CONFLICT_LABEL])
    plan = scheduler.plan_starts([task("proj-4"), conflict], full, free=2, avoid_overlap=True, starts_held=held)
    assert [(d.task.id, d.start, d.reason) for d in plan] == [("proj-4", False, held), ("proj-9", True, None)]
    # One fewer, or no bound: new work starts.
    assert scheduler.why_starts_held(holdings(queue=queue[:3]), limit, now=100.0) is None
    assert scheduler.why_starts_held(full, 0, now=100.0) is None


def test_branches_that_cannot_merge_now_hold_no_new_work():
    """A queue that cannot drain (main held, a person's decision or review awaited) must not
    hold starts for as long as it stands."""
    pausing, for_a_person, in_review = request("proj-10"), request("proj-11"), request("proj-12")
    pausing.retry_at, for_a_person.held, in_review.review = 160.0, "left main", review.State.AWAITING
    queue = [request("proj-13"), pausing, for_a_person, in_review]
    assert scheduler.merging(queue, now=100.0) == 1
    assert scheduler.why_starts_held(holdings(queue=queue), 2, now=100.0) is None
    assert scheduler.merging(queue, now=160.0) == 2
    assert scheduler.why_starts_held(holdings(queue=queue), 2, now=160.0) is not None


def test_a_waiting_merge_pauses_twice_as_long_each_time_up_to_the_cap():
    pauses = [scheduler.next_try(waits, 2, now=100.0) - 100.0 for waits in range(1, 7)]
    assert pauses == [2, 4, 8, 16, scheduler.MERGE_WAIT_MAX_SECS, scheduler.MERGE_WAIT_MAX_SECS]


def test_the_breaker_trips_once_after_the_limit_and_stays_tripped_without_watch():
    breaker = scheduler.Breaker(limit=2, pause_secs=60, watch=False)
    breaker.attempt_ended(made_commits=False)
    assert breaker.check(now=0) == (False, False)
    breaker.attempt_ended(made_commits=False, counted=False)  # stopped by the user: says nothing
    assert breaker.check(now=0) == (False, False)
    breaker.attempt_ended(made_commits=False)
    assert breaker.check(now=0) == (True, True)
    assert breaker.check(now=1) == (True, False)
    assert breaker.check(now=10_000) == (True, False)


def test_attempts_not_yet_judged_that_would_trip_the_breaker_are_counted_as_failures():
    breaker = scheduler.Breaker(limit=2, pause_secs=60, watch=False)
    assert not breaker.could_trip(unjudged=1)
    breaker.attempt_ended(made_commits=False)
    assert not breaker.could_trip(unjudged=0)
    assert breaker.could_trip(unjudged=1)  # the next start waits to know whether it trips
    breaker.attempt_ended(made_commits=True)
    assert not breaker.could_trip(unjudged=1)


def test_the_breaker_resets_after_its_pause_with_watch_and_on_any_commit():
    breaker = scheduler.Breaker(limit=1, pause_secs=60, watch=True)
    breaker.attempt_ended(made_commits=False)
    assert breaker.check(now=100) == (True, True)
    assert breaker.check(now=159) == (True, False)
    assert breaker.check(now=160) == (False, False)
    assert breaker.failures_in_a_row == 0
    breaker.attempt_ended(made_commits=False)
    assert breaker.check(now=200) == (True, True)
    breaker.attempt_ended(made_commits=True)
    assert breaker.check(now=201) == (False, False)
    breaker.attempt_ended(made_commits=False)
    assert breaker.check(now=300) == (True, True)  # a new trip, with its own pause
    no_pause = scheduler.Breaker(limit=1, pause_secs=0, watch=True)
    no_pause.attempt_ended(made_commits=False)
    assert no_pause.check(now=5) == (False, True)  # told, and starting again at once
