"""The loop hands its slow store reads to the store thread: a store that hangs on a read does not
stop the loop from watching its workers."""
from __future__ import annotations

import threading

from crew.dispatch import records
from crew.dispatch.conflicts import Conflicts
from crew.dispatch.ledger import Ledger
from crew.dispatch.loop import Dispatcher
from support.dispatching import add_task, events, wait_for


class HangingReads:
    """A task store whose ready() hangs, from its second call on, until `go` is set."""

    def __init__(self, store):
        self.store, self.name = store, store.name
        self.reads, self.hanging, self.go = 0, threading.Event(), threading.Event()

    def ready(self, limit=None):
        self.reads += 1
        if self.reads > 1:
            self.hanging.set()
            self.go.wait(60)
        return self.store.ready(limit)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_worker_past_its_deadline_is_ended_while_the_store_hangs_on_a_read(json_agent_setup, repo):
    # A free slot makes the loop want the ready list while the worker runs.
    _, config, store = json_agent_setup(max_workers=2, worker_timeout_secs=1, max_attempts=1)
    task = add_task(store, "Hangs", "hang")
    slow = HangingReads(store)
    dispatcher = Dispatcher(config, slow, 2, out=lambda *_: None)
    run = threading.Thread(target=dispatcher.run)
    run.start()
    try:
        wait_for(slow.hanging.is_set, "a ready read under way")
        # The read hangs until `go`, set only below: the loop noticed the deadline meanwhile.
        wait_for(lambda: events(repo, "worker_timed_out"), "the worker's timeout while the read hangs")
    finally:
        slow.go.set()
        run.join(60)
    assert not run.is_alive()
    assert [e["task_id"] for e in events(repo, "worker_timed_out")] == [task.id]
    assert store.get(task.id).status == "blocked"  # max_attempts 1: the timeout was its one attempt


def test_settle_acts_only_on_what_the_store_thread_looked_up(json_agent_setup, repo):
    _, config, store = json_agent_setup()
    original, followup = store.create("Original"), store.create("Fix failing checks: work/proj-1")
    ledger = Ledger(config, store, say=lambda message: None)
    ledger.state.pending[followup.id] = records.PendingMerge(
        kind="gate", flight=records.BranchInFlight(task_id=original.id, title="Original", branch="work/proj-1",
                                                   worktree=repo / "gone", outcome="close", note="", retries=1),
        files=[], followup_created_at=followup.created_at)
    conflicts = Conflicts(config, ledger, store)
    lookups = conflicts.lookups(busy=set())  # which tasks, read on the loop; the store is asked when it runs
    store.set_status(followup.id, "blocked", "cannot be fixed")
    # A pending merge the lookup did not cover (filed since it was asked) waits for the next one.
    assert conflicts.settle(set(), {}) is False and followup.id in ledger.state.pending
    assert conflicts.settle(set(), lookups(store)) is True  # the lookup saw it blocked: the merge gives up
    assert ledger.state.pending == {} and store.get(original.id).status == "blocked"
