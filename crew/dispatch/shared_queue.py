"""The merge queue's entries as bd holds them (remote mode): every host's branches judged mergeable
and pushed carry the label crew-merge-ready and their branch and tip in the task's metadata, so any
host can merge them. Listed through the store thread, at most every few seconds and only while
the queue has room; another host's entry joins this host's queue under its owner (the task's
assignee). Also bd's merge slot (config merge_slot in remote mode), taken and given back through
the store thread, never waited for."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping

from crew import config as configuration
from crew import names as safe_names
from crew.dispatch import records
from crew.dispatch import store_thread
from crew.dispatch import worktrees
from crew.dispatch.branch_push import BRANCH_KEY
from crew.dispatch.branch_push import READY_LABEL
from crew.dispatch.branch_push import TIP_KEY
from crew.dispatch.ledger import Ledger
from crew.report.events import EventName
from crew.tasks import model as task_model


LIST_EVERY_SECS = 3.0  # how often the ready entries are listed while the queue has room
SLOT_TRY_EVERY_SECS = 1.0  # how often a merge slot held by another host is asked for again
SLOT_GIVE_BACK_SECS = 10.0  # how long a stop waits for the store to give the slot back
# Another host's entry has no worktree here: its record names a folder under this one, never made.
ELSEWHERE = ".remote-entries"


@dataclasses.dataclass(frozen=True)
class Shared:
    """Another host's entry as bd holds it: its task, owner (assignee) and branch (its tip marked
    ready is read from the task again as it is decided)."""

    task: task_model.Task
    owner: str
    branch: str


def entries_to_add(tasks: Iterable[task_model.Task], known: set[str], config: configuration.Settings,
                   room: int, left: Mapping[str, str] | None = None) -> list[Shared]:
    """The entries of other hosts to add, in the store's order, at most `room`: in progress, held
    by someone else than this host (config.actor), marked with the task's own branch (a name
    another branch has, a user's or main, is never merged and deleted as the task's), not
    already known here (queued, pending or worked on by this host), and not left to their owner
    at the tip they are marked ready at (`left`: task id to tip)."""
    found: list[Shared] = []
    for task in tasks:
        branch = task.metadata.get(BRANCH_KEY, "")
        if left and task.id in left and left[task.id] == task.metadata.get(TIP_KEY, ""):
            continue  # this host cannot merge it at that tip: its owner settles it
        if (len(found) >= room or task.id in known or task.status != "in_progress" or not task.assignee
                or task.assignee == config.actor or not worktrees.is_tasks_branch(config, task.id, branch)):
            continue
        found.append(Shared(task, task.assignee, branch))
    return found[:room]


def is_elsewhere(record: records.Worker | records.MergeRequest | records.PendingMerge) -> bool:
    """Whether the record is another host's merge-queue entry (added from bd; no worktree here)."""
    return isinstance(record, records.MergeRequest) and record.worktree.parent.name == ELSEWHERE


def request_for(config: configuration.Settings, shared: Shared) -> records.MergeRequest:
    """The entry's record: its worktree a folder never made, named safely (the task id is the
    store's: a record's worktree may be removed, and must never lead out of worktree_root)."""
    flight = records.BranchInFlight(
        task_id=shared.task.id, title=safe_names.clean_title(shared.task.title), branch=shared.branch,
        worktree=config.worktree_root / ELSEWHERE / safe_names.file_name(shared.task.id),
        outcome=records.Outcome.CLOSE, note="", retries=0, counted=False, actor=shared.owner,
        task_created_at=shared.task.created_at)
    return records.MergeRequest(flight, queued_at=time.time())


class SharedQueue:
    """Adds other hosts' ready entries to this host's merge queue."""

    def __init__(self, config: configuration.Settings, ledger: Ledger, serial: store_thread.SerialStore,
                 left: dict[str, str]):
        """left: the merge queue's entries left to their owner, by task id, with their tip then."""
        self.config, self.ledger, self.serial, self.left = config, ledger, serial, left
        self.listing: concurrent.futures.Future[list[task_model.Task]] | None = None
        self.next_list = 0.0

    @property
    def requests(self) -> list[records.MergeRequest]:
        return self.ledger.state.merge_queue

    def room(self) -> int:
        """How many entries may join: the queue holds at most as many as its gates try at once, and one more."""
        return self.config.merge_gate_parallelism + 1 - len(self.requests)

    def step(self, busy: set[str]) -> bool:
        """Apply a listing that came back, and ask for the next when due. busy: the tasks this host
        has in hand otherwise (workers, pending merges). True if an entry joined the queue."""
        added = False
        if self.listing is not None and self.listing.done():
            future, self.listing = self.listing, None
            if future.exception() is None:
                added = self.add(future.result(), busy)
        if self.listing is None and time.time() >= self.next_list and self.room() > 0:
            self.next_list = time.time() + LIST_EVERY_SECS
            self.listing = self.serial.later("with_label", READY_LABEL)
        return added

    def add(self, tasks: list[task_model.Task], busy: set[str]) -> bool:
        known = busy | {request.task_id for request in self.requests}
        listed = {task.id for task in tasks}  # one no longer marked ready is forgotten: the memory stays bounded
        for task_id in [task_id for task_id in self.left if task_id not in listed]:
            del self.left[task_id]
        found = entries_to_add(tasks, known, self.config, self.room(), self.left)
        if not found:
            return False
        with self.ledger.change():
            for shared in found:
                self.ledger.state.merge_queue.append(request_for(self.config, shared))
        for shared in found:
            self.ledger.event(EventName.MERGE_QUEUED, shared.task.id, branch=shared.branch, owner=shared.owner)
        return True

    def next_due(self) -> float | None:
        return self.next_list if self.listing is None else None


class SharedSlot:
    """bd's merge slot (remote mode with merge_slot): held while this host merges (from its decision
    to its push), asked for through the store thread without waiting, and given back once nothing
    is in flight, at a stop, or when the run ends. It is a claim with a lease (see the stores'
    take_merge_slot): its lease is renewed with this host's other claims while it is held
    (`slot_id`), so a host that dies holding it loses it to `reclaim`. It stays held (its lease
    renewed) until a give-back succeeds: one that failed (the store's server dropped the call) is
    tried again, every SLOT_TRY_EVERY_SECS, else every host's merges would wait for a holder
    that no longer merges."""

    def __init__(self, serial: store_thread.SerialStore, actor: str, say: Callable[[str], None]):
        self.serial, self.actor, self.say = serial, actor, say
        self.held = False  # bd holds the slot's claim as this host's, as far as is known
        self.taken_anew = False  # just taken: another host may have moved main meanwhile, so fetch first
        self.taking: concurrent.futures.Future[tuple[bool, str, str | None]] | None = None
        self.slot_id = ""  # the slot's claim, once taken: renewed as a task's claim is
        self.giving: concurrent.futures.Future[None] | None = None
        self.returning = False  # nothing needs it: to be given back (again, after a failed try)
        self.unsure = False  # a take whose answer never came: it may be held
        self.holder: str | None = None  # another host holding it, as last asked
        self.give_back_failed = ""  # why the last give-back failed, if it did
        self.next_try = 0.0

    def settle(self) -> None:
        """Take the answers that came back: a take, or a give-back (held until one succeeds)."""
        if self.taking is not None and self.taking.done():
            future, self.taking = self.taking, None
            if future.exception() is None:
                self.held, self.slot_id, self.holder = future.result()
                self.taken_anew, self.unsure = self.held, False
            else:
                self.unsure = True
        if self.giving is not None and self.giving.done():
            gave, self.giving = self.giving, None
            if (failed := gave.exception()) is None:
                self.held = self.unsure = self.returning = False
                self.give_back_failed = ""
            else:
                self.give_back_failed = safe_names.for_terminal(safe_names.one_line_tail(str(failed)))

    def want(self) -> bool:
        """Whether the slot is held now; if not, it is asked for (again once SLOT_TRY_EVERY_SECS passed)."""
        self.settle()
        if self.giving is not None:
            return False  # a give-back under way: taken again once it is over
        if self.held:
            self.returning = False  # still held (a give-back failed): merged under as it is
            return True
        if self.taking is None and time.time() >= self.next_try:
            self.next_try = time.time() + SLOT_TRY_EVERY_SECS
            self.taking = self.serial.batch(lambda store: (
                store.take_merge_slot(self.actor), store.merge_slot_id(), store.merge_slot_holder()))
        return False

    def give_back(self) -> None:
        """Nothing in flight needs it: given back, through the store thread (tried again while it fails)."""
        self.settle()
        if self.held or self.unsure:
            self.returning = True
        if self.returning and self.giving is None and self.taking is None and time.time() >= self.next_try:
            self.next_try = time.time() + SLOT_TRY_EVERY_SECS
            self.giving = self.serial.later("give_back_merge_slot", self.actor)

    def give_back_now(self) -> None:
        """The run ends: the slot is given back (a take still under way too), tried again within
        SLOT_GIVE_BACK_SECS while it fails; said in one line if it could not be."""
        deadline = time.monotonic() + SLOT_GIVE_BACK_SECS
        if self.taking is not None:
            concurrent.futures.wait([self.taking], timeout=SLOT_GIVE_BACK_SECS)
            self.unsure |= not self.taking.done()
        while True:
            self.settle()
            if self.held or self.unsure:
                self.returning = True
            if not self.returning or time.monotonic() >= deadline:
                break
            if self.giving is None:
                self.next_try = 0.0
                self.give_back()
                if self.giving is None:
                    break
            concurrent.futures.wait([self.giving], timeout=max(0.0, deadline - time.monotonic()))
            if self.giving.done() and self.giving.exception() is not None:
                time.sleep(min(SLOT_TRY_EVERY_SECS, max(0.0, deadline - time.monotonic())))
        if self.returning:
            self.say(f"bd's merge slot could not be given back ({self.give_back_failed or 'no answer'}): "
                     "other hosts' merges wait until its lease lapses and `bd reclaim` takes it back")

    def next_due(self) -> float | None:
        if self.held and not self.returning:
            return None
        return None if self.taking is not None or self.giving is not None else self.next_try
