"""The store writes the loop makes at events (a merge landed, an attempt's outcome, an entry taken
out of the ready ones) go through the store thread: while the store cannot be reached the loop
goes on (workers past their timeout are ended), and once it is back every write is made, once."""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import threading
import time
import types
from pathlib import Path

import pytest
from support.dispatching import add_task
from support.dispatching import events
from support.dispatching import merges_of
from support.dispatching import start_dispatcher
from support.dispatching import wait_until
from support.repos import commit_file
from support.repos import git
from test_slow_hooks import install_hook
from test_store_down import bd_down_while

from crew.dispatch import branch_push
from crew.dispatch import records
from crew.dispatch import revert
from crew.dispatch import scheduler
from crew.dispatch import store_thread
from crew.dispatch import wakeup as wakeups
from crew.dispatch import workers
from crew.dispatch.conflicts import Conflicts
from crew.dispatch.finish import Finisher
from crew.dispatch.ledger import Ledger
from crew.dispatch.merge_queue import MergeQueue
from crew.dispatch.recovery import Recovery


pytestmark = pytest.mark.skipif(os.name == "nt", reason="the bd wrapper and the hook are scripts run through #!")


@contextlib.contextmanager
def queue_on_a_busy_store_thread(config, store):
    """A merge queue whose store calls go through a store thread, as the dispatcher's do, that
    thread busy (a slow call, or one waiting out an outage) until `hold` is set."""
    wakeup = wakeups.Wakeup()
    serial = store_thread.SerialStore(store, wakeup, lambda message: None)
    ledger = Ledger(config, serial, lambda message: None)
    no_gate = types.SimpleNamespace(starter=concurrent.futures.ThreadPoolExecutor(1))
    queue = MergeQueue(config, ledger, serial, all_gates=[no_gate], conflicts=Conflicts(config, ledger, serial),
                       stop_now_reason=lambda: None, wakeup=wakeup)
    hold = threading.Event()
    try:
        busy = serial.batch(lambda _: hold.wait(60))
        yield types.SimpleNamespace(serial=serial, ledger=ledger, queue=queue, wakeup=wakeup, hold=hold, busy=busy)
    finally:
        hold.set()
        serial.shutdown()
        no_gate.starter.shutdown()


def writes_followed(on, what: str) -> None:
    """The store thread let go, and the loop's part of each write handed over done."""
    on.hold.set()
    deadline = time.monotonic() + 60
    while on.ledger.writes:
        on.ledger.writes_done()
        assert time.monotonic() < deadline, f"{what} never written"
        on.wakeup.wait(0.1)


def timed_out(repo: Path, task_id: str) -> bool:
    return any(e["task_id"] == task_id for e in events(repo, "worker_timed_out"))


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_workers_past_their_timeout_are_ended_while_the_store_is_down_at_a_merge_and_an_outcome(
        agent_setup, repo, tmp_path):
    flag, go = tmp_path / "server-down", tmp_path / "go"
    # The store goes down as the first task's merge lands (main's fast-forward runs the user's
    # post-merge hook), once the test says so: its task's close waits for the store from then on.
    install_hook(repo, "post-merge", f'i=0; while [ ! -e "{go}" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); '
                                     f'done; echo down > "{flag}"')
    cfg, _, store = agent_setup(bd_command=str(bd_down_while(tmp_path, flag)), max_workers=2, max_attempts=1,
                                worker_timeout_secs=20)
    merges = add_task(store, "Merges", "append a.txt a", files=["a.txt"], priority=0)
    hangs = add_task(store, "Hangs", "hang", files=["b.txt"], priority=1)
    later = add_task(store, "Hangs later", "hang", files=["c.txt"], priority=2)  # starts in the first one's slot
    proc = start_dispatcher(cfg)
    try:
        wait_until(lambda: any(e["task_id"] == later.id for e in events(repo, "worker_started")), proc,
                   "the third worker started")
        assert not timed_out(repo, hangs.id)
        go.write_text("go", encoding="utf-8")
        wait_until(flag.exists, proc, "the store down as the merge lands")
        # Ended though the merge's bookkeeping waits for the store; and the second is ended too,
        # though the first one's outcome (blocked) waits for it as well.
        wait_until(lambda: timed_out(repo, hangs.id) and timed_out(repo, later.id), proc,
                   "both hanging workers ended while the store is down", timeout=120)
        assert flag.exists()
        names = [(e["event"], e["task_id"]) for e in events(repo)]
        assert names.index(("merged", merges.id)) < names.index(("worker_timed_out", hangs.id))
        assert ("closed", merges.id) not in names  # written once the store is back, not before
        flag.unlink()
        out, err = proc.communicate(timeout=180)
    finally:
        go.write_text("go", encoding="utf-8")
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert out.count("the task store cannot be reached") == 1, out + err
    assert out.count("the task store is reachable again") == 1, out + err
    merged = store.get(merges.id)
    assert merged.status == "closed" and merges_of(repo, merges.id) == 1
    assert [label for label in merged.labels if label.startswith(revert.MERGED_PREFIX)], merged
    for task in (hangs, later):
        assert store.get(task.id).status == "blocked", out + err
    names = [(e["event"], e["task_id"]) for e in events(repo)]
    assert names.count(("closed", merges.id)) == 1
    assert names.count(("blocked", hangs.id)) == names.count(("blocked", later.id)) == 1


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
@pytest.mark.parametrize("why", ["a conflict", "the remote refused it"])
def test_an_entry_taken_out_of_the_ready_ones_never_waits_for_the_store_and_follows_its_marking(
        config, store, repo, tmp_path, why):
    """Remote mode: the ready label is taken off through the store thread, after the marking handed
    over before it (the pusher's), so the label is off once both are written, however they were
    timed; the loop does not wait for either (nor, when the remote refused the push of its merge,
    for the note that says so)."""
    config = dataclasses.replace(config, remote="origin")
    task = store.create("Conflicts")
    assert store.claim(task.id, config.actor)
    request = records.MergeRequest(records.BranchInFlight(
        task_id=task.id, title=task.title, branch=f"work/{task.id}", worktree=tmp_path / "w",
        outcome=records.Outcome.CLOSE, note="", retries=0, actor=config.actor, task_created_at=task.created_at))
    with queue_on_a_busy_store_thread(config, store) as on:
        on.serial.later("update_claimed", task.id, config.actor, add_labels=[branch_push.READY_LABEL])  # the marking
        if why == "a conflict":
            on.queue.unready(request)
        else:
            on.queue.refused(request, "", "protected branch")
            assert request.held
        assert not on.busy.done()  # it returned while the store thread was still busy
        writes_followed(on, "the label's removal")
        assert branch_push.READY_LABEL not in store.get(task.id).labels
        assert ("protected branch" in store.get(task.id).notes) is (why != "a conflict")


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_restart_takes_off_the_ready_label_a_crash_left_on_an_entry_that_stopped_being_ready(
        config, store, repo, tmp_path):
    """Remote mode: the label's removal is written after the entry's record changed (here: its
    conflict task was filed); a dispatcher killed between leaves it on, and its restart takes it off."""
    config = dataclasses.replace(config, remote="origin")
    waits, merges = store.create("Conflicts"), store.create("Still ready")
    for task in (waits, merges):
        assert store.claim(task.id, config.actor)
        store.update_claimed(task.id, config.actor, add_labels=[branch_push.READY_LABEL])
    ledger = Ledger(config, store, lambda message: None)

    def flight(task) -> records.BranchInFlight:
        return records.BranchInFlight(task_id=task.id, title=task.title, branch=f"work/{task.id}",
                                      worktree=tmp_path / task.id, outcome=records.Outcome.CLOSE, note="", retries=0,
                                      actor=config.actor, task_created_at=task.created_at)
    with ledger.change():
        ledger.state.pending["proj-conflict"] = records.PendingMerge(kind=records.PendingKind.CONFLICT,
                                                                     flight=flight(waits), files=["a.txt"])
        ledger.state.merge_queue.append(records.MergeRequest(flight(merges)))
    pool = workers.WorkerPool(config, ledger, 1, lambda: None, wakeups.Wakeup())
    try:
        Recovery(config, ledger, store, pool).reconcile()
    finally:
        pool.starter.shutdown()
    assert branch_push.READY_LABEL not in store.get(waits.id).labels
    assert branch_push.READY_LABEL in store.get(merges.id).labels  # still for any host to merge
    assert store.get(waits.id).status == "in_progress" and list(ledger.state.pending) == ["proj-conflict"]


@pytest.mark.parametrize("backend", ["json"], indirect=True)
def test_a_resolved_conflict_tasks_close_never_waits_for_the_store_and_its_worker_keeps_its_record_until_written(
        config, store, repo, tmp_path):
    original, resolver = store.create("Conflicted"), store.create("Resolve merge conflict")
    for task in (original, resolver):
        assert store.claim(task.id, config.actor)
    base = git(repo, "rev-parse", "main")
    git(repo, "checkout", "-q", "-b", "work/conflicted")
    commit_file(repo, "resolved.txt", "resolved\n")
    git(repo, "checkout", "-q", "main")
    worker = records.Worker(slot=1, task_id=resolver.id, title=resolver.title, branch="work/conflicted",
                            worktree=tmp_path / "w", base=base, attempt=1, started_at=time.time(), deadline=None,
                            kind=records.WorkerKind.CONFLICT, actor=config.actor, task_created_at=resolver.created_at)
    with queue_on_a_busy_store_thread(config, store) as on:
        ledger = on.ledger
        pool = workers.WorkerPool(config, ledger, 1, lambda: None, on.wakeup)
        finisher = Finisher(config, ledger, on.serial, pool, on.queue, scheduler.Breaker(3, 60, False))
        with ledger.change():
            ledger.state.workers[1] = worker
            ledger.state.pending[resolver.id] = records.PendingMerge(
                kind=records.PendingKind.CONFLICT, files=["a.txt"], flight=records.BranchInFlight(
                    task_id=original.id, title=original.title, branch="work/conflicted", worktree=tmp_path / "w",
                    outcome=records.Outcome.CLOSE, note="", retries=0, actor=config.actor,
                    task_created_at=original.created_at))
        try:
            finisher.finish_conflict_worker(worker, commits=1)
            assert not on.busy.done()  # it returned while the store thread was still busy
            assert ledger.state.workers == {1: worker}  # kept until its task's close is written
            writes_followed(on, "the close")
        finally:
            pool.starter.shutdown()
        assert store.get(resolver.id).status == "closed" and ledger.state.workers == {}
        assert [e["task_id"] for e in events(repo, "closed")] == [resolver.id]
