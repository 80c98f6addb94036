"""The dispatcher's loop: workers are watched and refilled, branches merged, pending merges
settled, until nothing is ready or running (or, with --watch, until Ctrl-C)."""
from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from crew import config as configuration
from crew import errors
from crew import failpoints
from crew import files
from crew import names as safe_names
from crew import processes
from crew.dispatch import branch_push
from crew.dispatch import gate as gates
from crew.dispatch import parallel_gates
from crew.dispatch import records
from crew.dispatch import scheduler
from crew.dispatch import shared_queue
from crew.dispatch import store_thread
from crew.dispatch import wakeup as wakeups
from crew.dispatch import workers
from crew.dispatch import worktrees
from crew.dispatch.conflicts import Conflicts
from crew.dispatch.finish import Finisher
from crew.dispatch.leases import Leases
from crew.dispatch.ledger import Ledger
from crew.dispatch.merge_queue import MergeQueue
from crew.dispatch.recovery import Recovery
from crew.dispatch.say_once import Told
from crew.dispatch.workers import WorkerPool
from crew.report.events import EventName
from crew.tasks import model as task_model


START_WAIT_SECS = 0.2  # how long a refill may hold a merge back while its claim and worktree are under way
SIGNAL_CHECK_SECS = 0.5  # Windows: a wait on a lock is not broken by Ctrl-C, so the loop looks this often
STOP_RELEASE_SECS = 10.0  # how long a stop waits for the store to release its workers' tasks (bd: ~0.5 s a call)
STOP_KILLED_SECS = 10.0  # how long a stop waits, past the grace, for the trees it killed to be gone
# The store's answer to a batch of look-ups: each task by id, None for one it no longer has as recorded.
TasksRead = concurrent.futures.Future[dict[str, task_model.Task | None]]


class Dispatcher:
    """Owns the workers, the merge queue and the pending merges of one repository."""

    def __init__(self, config: configuration.Settings, store: task_model.TaskStore, max_workers: int,
                 watch: bool = False, out: Callable[[str], None] = print):
        # The loop sleeps until something happens: a result from the store thread or a starter
        # thread, a process of ours exiting, a signal (each posts here), or its next deadline.
        self.wakeup = wakeups.Wakeup()
        # Only the store thread touches the store: the loop hands its slow reads over and is woken
        # by their results; every other call still reads as a plain (blocking) call. While the store
        # cannot be reached, its calls wait there: the workers go on.
        store = self.serial = store_thread.SerialStore(store, self.wakeup, out)
        self.config, self.store, self.max_workers, self.watch = config, store, max_workers, watch
        self.waiting_limit = scheduler.waiting_limit(config.max_waiting_merges, max_workers,
                                                     config.merge_gate_parallelism)
        self.ledger = Ledger(config, store, out)
        # Workers recorded by an earlier run are ours until reconcile() has looked at them.
        self.pool = WorkerPool(config, self.ledger, max_workers, self.stop_now_reason, self.wakeup)
        self.conflicts = Conflicts(config, self.ledger, store)
        self.gates = [gates.Gate(config, self.ledger, self.pool.starter, self.stop_now_reason, self.wakeup, worktree)
                      for worktree in parallel_gates.gate_worktrees(config)]
        self.queue = MergeQueue(config, self.ledger, store, self.gates, self.conflicts, self.stop_now_reason,
                                self.wakeup)
        # Remote mode: every host's entries join the queue from the task store, and bd's merge slot.
        self.shared = shared_queue.SharedQueue(config, self.ledger, self.serial,
                                                 self.queue.left_to_owner) if config.remote else None
        if config.remote and config.merge_slot:
            self.queue.shared_slot = shared_queue.SharedSlot(self.serial, config.actor, self.say)
        self.breaker = scheduler.Breaker(config.breaker_failures, config.breaker_pause_secs, watch)
        self.pool.deck_waits = self.deck_waits
        self.finisher = Finisher(config, self.ledger, store, self.pool, self.queue, self.breaker)
        self.recovery = Recovery(config, self.ledger, store, self.pool)
        self.pusher = branch_push.BranchPusher(config, self.ledger, self.serial, self.wakeup) if config.remote else None
        self.finisher.pusher = self.pusher
        self.leases = Leases(self.serial, config.lease_heartbeat_secs, self.say)
        self.reclaiming: concurrent.futures.Future[list[tuple[str, str]]] | None = None
        self.next_reclaim = 0.0  # at the start, then every reclaim_interval_secs
        self.stopping = False
        self.interrupts = 0
        self.stop_signal: int | None = None
        self.next_poll = 0.0
        self.known: dict[str, task_model.Task] = {}  # tasks this run has worked on (bd calls are slow)
        # The ready tasks as last read, and how current that is: `changes` counts the passes that
        # changed something; a read taken at change N is current while nothing changed since.
        self.ready: list[task_model.Task] = []
        self.changes, self.ready_as_of = 1, 0
        self.ready_read: tuple[int, concurrent.futures.Future[list[task_model.Task]]] | None = None
        self.claimed_during_read: set[str] = set()  # the read under way was asked before these claims
        # When a ready list first held each task it holds (the report counts a refill only while
        # a task was ready): a task that leaves the list and comes back is seen anew.
        self.seen_ready: dict[str, float] = {}
        # One claim at a time: the store's answer, the task, and when a ready list first held it.
        self.claiming: tuple[concurrent.futures.Future[bool], task_model.Task, float] | None = None
        # The releases of tasks taken off the deck (the run stops, starts are held, the task was
        # edited), or claimed as starts were held: the store's answer, the task's id, and why.
        self.releasing: list[tuple[concurrent.futures.Future[task_model.Task], str, str]] = []
        # The task on deck as the store has it now (read at each poll), and the task as claimed.
        self.deck_read: tuple[task_model.Task, concurrent.futures.Future[task_model.Task]] | None = None
        self.refill_began = 0.0  # when the last claim was handed over: merges wait a moment for its start
        self.blocked_read: concurrent.futures.Future[list[task_model.Task]] | None = None
        self.settle_read: tuple[int, TasksRead] | None = None  # the pending merges' tasks
        self.settled_as_of = 0
        self.review_read: tuple[int, TasksRead] | None = None  # the tasks awaiting review
        self.reviewed_as_of = 0

    def say(self, message: str) -> None:
        self.ledger.say(message)

    # ---- what may start --------------------------------------------------------------------

    def files_of(self, task_id: str) -> list[str]:
        if task_id not in self.known:
            try:
                self.known[task_id] = self.store.get(task_id)  # an adopted worker's task
            except errors.TaskNotFound:
                return []  # deleted: its record is dropped where it is next used
        return self.known[task_id].files

    def holdings(self) -> scheduler.Holdings:
        state = self.ledger.state
        return scheduler.Holdings(list(state.workers.values()), list(state.merge_queue), dict(state.pending),
                                  self.files_of)

    def why_starts_held(self) -> str:
        return "the run is stopping" if self.stopping else "the breaker holds starts"

    def starts_held(self) -> bool:
        """Whether no worker may start now: the run is stopping, or the breaker holds starts."""
        return self.stopping or self.breaker_tripped()

    def deck_waits(self, leaving: int) -> bool:
        """Whether the task on deck may not start now: its claim was taken back while its worktree
        was being made (it is taken off once made), starts are held (a stop, the breaker), or
        the `leaving` workers, exited and not yet judged, would trip the breaker were they all
        without commits (it waits for their judging), or new work waits while branches wait to
        merge (it waits on deck until they land), counting the leaving as branches that wait to merge."""
        limit = self.waiting_limit
        lost = (deck := self.pool.on_deck()) is not None and deck.ended == records.CLAIM_LOST
        return lost or self.starts_held() or self.breaker.could_trip(leaving) or (
            bool(limit) and scheduler.merging(self.ledger.state.merge_queue, time.time()) + leaving >= limit)

    def open_slots(self) -> list[int]:
        """The free slots a claim may be made for (less the one the task on deck will take), or
        while every slot is busy, the deck's: the next task is claimed and its worktree made
        ahead, so that a worker's exit starts the next agent at once."""
        free = self.pool.free_slots()[self.pool.on_deck() is not None:]
        return free or ([workers.ON_DECK] if self.pool.deck_free() else [])

    def fill_slots(self) -> None:
        """Plan from the newest ready list and hand the first start's claim to the store thread;
        claimed() starts its worker. One claim at a time, so each plan sees the last start."""
        if self.claiming is not None or self.starts_held():
            return
        holdings = self.holdings()
        starts_held = scheduler.why_starts_held(holdings, self.waiting_limit, time.time())
        if starts_held and (self.ready or self.pool.on_deck()):
            self.ledger.say_once(Told.STARTS_HELD, f"new workers wait: {starts_held}")
        if not (slots := self.open_slots()):
            return
        ready = self.ready
        if slots == [workers.ON_DECK]:
            if self.deck_waits(self.pool.leaving()):
                return  # it would wait on deck (the workers that just exited are not yet judged)
            # A conflict or fix task works in its branch's worktree, prepared with main merged in:
            # made ahead, main would move under it, and taken off, the branch would keep that merge.
            # The others wait while starts are held, so nothing goes on deck then.
            ready = [task for task in ready if scheduler.pending_for(holdings, task) is None]
        plan = scheduler.plan_starts(ready, holdings, len(slots), self.config.avoid_file_overlap, starts_held)
        first = next((i for i, decision in enumerate(plan) if decision.start), len(plan) - 1)
        for decision in plan[:first + 1]:
            task = decision.task
            if held := scheduler.why_held(holdings, task.id):
                self.ledger.say_once(Told.NOT_STARTED_AGAIN, f"{task.id}: not started again: {held}",
                                     f"{task.id}: {held}")
        if plan and plan[first].start:
            task = plan[first].task
            self.ready = self.ready[self.ready.index(task) + 1:]
            self.claiming = (self.serial.later("claim", task.id, self.config.actor), task,
                             self.seen_ready.get(task.id, time.time()))
            self.refill_began = time.time()
            if self.ready_read is not None:
                self.claimed_during_read.add(task.id)

    def claimed(self) -> bool:
        """A claim that has come back: its worker starts (or, lost to someone else, the next is
        planned). True if it came back."""
        if self.claiming is None or not self.claiming[0].done():
            return False
        future, task, ready_since = self.claiming
        self.claiming = None
        if future.result() and self.starts_held():
            # Ctrl-C or the breaker came while the claim was in flight: nothing new starts.
            why = self.why_starts_held()
            self.say(f"{task.id}: claimed as {why}; released")
            self.releasing.append((self.serial.later("release", task.id, f"released: {why}", actor=self.config.actor),
                                   task.id, "claimed as starts were held"))
        elif future.result() and self.pusher is not None and self.pusher.claimed(task):
            # Its task names a branch another host pushed: looked at on the remote, no worker starts now.
            self.ledger.event(EventName.CLAIMED, task.id, ready_since=files.iso_time(ready_since))
            self.known[task.id] = task
        elif future.result():
            slot = self.open_slots()[0]
            self.ledger.event(EventName.CLAIMED, task.id, ready_since=files.iso_time(ready_since),
                              **({"on_deck": True} if slot == workers.ON_DECK else {}))
            failpoints.failpoint("after_claim")
            self.known[task.id] = task
            self.queue.rewritten.observe_main()  # the main its branch is made on is a main seen
            self.pool.start(slot, task, scheduler.pending_for(self.holdings(), task))
            if slot == workers.ON_DECK:
                self.say(f"{task.id}: on deck (claimed, its worktree made now): its worker starts when a slot frees")
        return True

    def clear_deck(self, why: str, release: bool = True) -> bool:
        """Take the task on deck off it, once its worktree is made (a start under way is waited
        for), when it may not start: its record and worktree go, its claim is handed back (not
        that of a task the user blocked: releasing would reopen it). A crash before the release
        leaves a claim no record names, which the next run releases. True if it was taken off."""
        deck = self.pool.on_deck()
        if deck is None or not (starting := self.pool.starting.get(workers.ON_DECK)) or not starting.done():
            return False
        release = release and deck.ended != records.CLAIM_LOST  # another holds it now
        with self.ledger.change():
            self.pool.forget(deck)
        worktrees.discard_attempt(self.config, deck)
        self.say(f"{deck.task_id}: taken off deck ({why})" + (", and released" if release else ""))
        if release:
            self.releasing.append((self.serial.later("release", deck.task_id, f"released from deck: {why}",
                                                 actor=deck.actor), deck.task_id, "taken off deck"))
        return True

    def released(self) -> None:
        """The releases of tasks taken off the deck that have come back."""
        for future, task_id, reason in [entry for entry in self.releasing if entry[0].done()]:
            self.releasing.remove((future, task_id, reason))
            if (failed := future.exception()) is None:
                self.ledger.event(EventName.RELEASED, task_id, reason=reason)
            elif not isinstance(failed, errors.TaskNotFound):
                self.say(f"{task_id}: not released ({safe_names.one_line_tail(str(failed))}); "
                         "the next run releases it")

    def read_store(self, poll_due: bool) -> bool:
        """Hand the loop's reads to the store thread (the ready list when it is older than the
        last change, and at each poll; the blocked tasks at each poll) and apply those that have
        come back. True if the ready list came back."""
        came_back = False
        if self.ready_read is not None and self.ready_read[1].done():
            self.ready_as_of, future = self.ready_read
            self.ready = [task for task in future.result() if task.id not in self.claimed_during_read]
            now = time.time()
            self.seen_ready = {task.id: self.seen_ready.get(task.id, now) for task in self.ready}
            self.ready_read, self.claimed_during_read, came_back = None, set(), True
        if self.ready_read is None and (poll_due or self.ready_as_of < self.changes):
            self.ready_read = (self.changes, self.serial.later("ready", limit=max(50, 4 * self.max_workers)))
        if self.deck_read is not None and self.deck_read[1].done():
            self.recheck_deck(*self.deck_read)
            self.deck_read = None
        if poll_due and self.deck_read is None and (deck := self.pool.deck_ready()) is not None:
            self.deck_read = (self.known[deck.task_id], self.serial.later("get", deck.task_id))
        if self.blocked_read is not None and self.blocked_read.done():
            self.stop_blocked_workers(self.blocked_read.result())
            self.blocked_read = None
        if poll_due and self.blocked_read is None and self.running():
            self.blocked_read = self.serial.later("list", ["blocked"])
        return came_back

    def settle_pending(self, due: bool) -> bool:
        """Settle the pending merges from the lookups that have come back from the store thread,
        and hand over the next lookups when they are due (the last are older than the last
        change, or the poll interval is up). True if a pending merge was settled."""
        busy = {w.task_id for w in self.ledger.state.workers.values()}
        settled = False
        if self.settle_read is not None and self.settle_read[1].done():
            self.settled_as_of, future = self.settle_read
            self.settle_read = None
            settled = self.conflicts.settle(busy, future.result())
        if self.settle_read is None and (due or self.settled_as_of < self.changes):
            if self.ledger.state.pending:
                self.settle_read = (self.changes, self.serial.batch(self.conflicts.lookups(busy)))
            else:
                self.settled_as_of = self.changes  # nothing to look up
        return settled

    def read_reviews(self, due: bool) -> bool:
        """Carry out the review decisions the store has come back with, and hand over the next
        lookups when due (as settle_pending does). True if a branch left its wait for review."""
        reviews, changed = self.queue.reviews, False
        if self.review_read is not None and self.review_read[1].done():
            self.reviewed_as_of, future = self.review_read
            self.review_read = None
            changed = reviews.carry_out(future.result())
        if self.review_read is None and (due or self.reviewed_as_of < self.changes):
            if reviews.awaiting():
                self.review_read = (self.changes, self.serial.batch(reviews.lookups()))
            else:
                self.reviewed_as_of = self.changes  # nothing awaits review
        return changed

    def breaker_tripped(self) -> bool:
        held, tripped_now = self.breaker.check(time.time())
        if tripped_now:
            self.ledger.event(EventName.BREAKER_TRIPPED, failures=self.breaker.failures_in_a_row)
            self.say(f"stopped starting workers: {self.breaker.failures_in_a_row} attempts in a row ended with no "
                     "commits (the agent or its model is likely down; see .dispatch_logs/)"
                     + (f"; trying again in {self.config.breaker_pause_secs:g} s" if self.watch else ""))
        return held

    def running(self) -> dict[str, records.Worker]:
        return {w.task_id: w for w in self.ledger.state.workers.values() if w.pid is not None and not w.ended}

    def recheck_deck(self, claimed: task_model.Task, future: concurrent.futures.Future[task_model.Task]) -> None:
        """The task on deck as the store has it now. No longer this dispatcher's claim (blocked,
        closed, reopened, taken by another, deleted), it is taken off and left as it is; edited
        since its claim (its worktree and message were made from the text as claimed), it is
        taken off and released, to be claimed again as it is now."""
        deck = self.pool.on_deck()
        if deck is None or deck.task_id != claimed.id:
            return
        try:
            now = future.result()
        except errors.TaskNotFound:
            self.clear_deck("its task was deleted", release=False)
            return
        except errors.UserError:
            return  # the store is unreachable: looked at again at the next poll
        if now.status != "in_progress":
            self.clear_deck(f"its task is {now.status}", release=False)
        elif now.assignee != deck.actor:
            self.clear_deck(f"its task is held by {now.assignee or 'no one'}", release=False)
        elif (now.title, now.description, now.labels) != (claimed.title, claimed.description, claimed.labels):
            self.clear_deck("its task was edited since its claim", release=True)

    def stop_blocked_workers(self, blocked: list[task_model.Task]) -> None:
        """A task the user blocked while its worker runs: end the worker, keep its branch, merge nothing."""
        running = self.running()
        for task in blocked:
            if worker := running.get(task.id):
                self.say(f"{task.id}: blocked while its worker ran; ending the worker (its branch is kept)")
                self.pool.end(worker, records.TASK_BLOCKED)  # finished once its tree is gone

    def renew_leases(self) -> bool:
        """Renew the claims this dispatcher holds: its running workers', the task's on deck, and
        those of the branches that wait to merge. A worker whose claim is gone is ended, its
        branch kept and not merged (the task is someone else's now); a task on deck is taken off.
        True if one was ended."""
        state, running = self.ledger.state, self.running()
        if (deck := self.pool.on_deck()) is not None:
            running[deck.task_id] = deck
        holders: list[records.MergeRequest | records.PendingMerge | records.Worker] = [
            *(request for request in state.merge_queue if not shared_queue.is_elsewhere(request)),
            *state.pending.values(), *running.values()]  # another host's entry is kept alive by that host
        claims = {held.task_id: held.actor or self.config.actor for held in holders}
        if (slot := self.queue.shared_slot) is not None and slot.held:
            claims[slot.slot_id] = self.config.actor  # bd's merge slot, a claim with a lease too
        if self.pusher is not None:  # claimed tasks whose pushed branch is being looked at on the remote
            claims.update(dict.fromkeys(self.pusher.continuing_tasks(), self.config.actor))
        lost = self.leases.step(claims, running, time.time())
        for worker, why in lost:
            if worker is deck:
                if not self.clear_deck(f"its claim was taken back: {why}", release=False):
                    # Its worktree is still being made: it never starts, and is taken off once made.
                    with self.ledger.change():
                        deck.ended = records.CLAIM_LOST
                continue
            self.say(f"{worker.task_id}: its claim was taken back ({why}); ending its worker (its branch is kept)")
            self.pool.end(worker, records.CLAIM_LOST)  # finished once its tree is gone
        return bool(lost)

    def push_branches(self) -> bool:
        """With a remote: the judged branches pushed and marked ready, the lost claims' branches
        pushed, the claimed tasks' pushed branches continued (branch_push). True if one ended."""
        if self.pusher is None:
            return False
        came_back = self.pusher.continued()
        for task, branch, tip, continuation, why in came_back:
            if continuation is branch_push.Continuation.HERE:
                self.finisher.continue_judged(task, branch, tip)
            elif continuation is branch_push.Continuation.MERGED:
                self.pusher.close_merged(task, branch, why)
                self.queue.epics.task_closed(task)
            elif continuation is branch_push.Continuation.UNREACHED:
                self.pusher.look_again(task, why)
            else:
                self.pusher.start_afresh(task, why)
        own = [request for request in self.ledger.state.merge_queue if not shared_queue.is_elsewhere(request)]
        self.pusher.judged(own, self.ledger.state.attempts)  # another host's entry is that host's to push
        return self.pusher.step(time.time()) or bool(came_back)

    def reclaim_lapsed(self) -> bool:
        """At the start and every reclaim_interval_secs, through the store thread: take back the
        tasks whose claims' leases lapsed long ago (a host that stopped), so they run again.
        True if any came back."""
        if self.reclaiming is not None and self.reclaiming.done():
            future, self.reclaiming = self.reclaiming, None
            try:
                taken = future.result()
            except errors.UserError as exc:
                self.say(f"bd reclaim failed (tried again in {self.config.reclaim_interval_secs:g} s): {exc}")
                return False
            for task_id, owner in taken:
                self.ledger.event(EventName.RECLAIMED, task_id, previous_owner=owner)
                self.say(f"{task_id}: taken back from {owner or 'no one'}, whose lease on it lapsed")
            return bool(taken)
        if self.config.reclaim_interval_secs and self.reclaiming is None and time.time() >= self.next_reclaim:
            self.next_reclaim = time.time() + self.config.reclaim_interval_secs
            self.reclaiming = self.serial.later("reclaim", self.config.reclaim_after_secs)
        return False

    # ---- the loop --------------------------------------------------------------------------

    def merges_held_until(self) -> float:
        """While a refill's claim or worktree is under way (the deck's too, which then starts the
        moment a worker exits), merges wait for it, so a quick start goes first and its agent
        works while the merge runs; but no merge waits more than
        START_WAIT_SECS from its refill or its own queueing (with many workers a refill is
        nearly always under way: merges must not starve). Where the last worktree took longer
        than that (a large checkout), merges wait for no start. 0: merges are not held."""
        preparing = any(not start.done() for start in self.pool.starting.values())
        if (self.claiming is None and not preparing) or self.pool.last_prepare_secs >= START_WAIT_SECS:
            return 0.0
        oldest = min((request.queued_at for request in self.ledger.state.merge_queue), default=self.refill_began)
        return min(self.refill_began, oldest) + START_WAIT_SECS

    def next_deadline(self, now: float) -> float:
        """When the loop must look again though nothing was posted: the next poll (adopted
        workers, which are not our children, are looked at then), a worker's or gate's timeout,
        a merge's retry, main's next read while a gate runs, the breaker's pause, a refill's hold
        on merges, and while a process tree is being ended, its next look."""
        state = self.ledger.state
        due = [self.next_poll]
        due += [worker.deadline for worker in state.workers.values() if worker.deadline and not worker.ended]
        due += [gate.deadline for gate in state.gates if gate.deadline]
        due += [request.retry_at for request in state.merge_queue]
        if (look := self.queue.next_look_at_main()) is not None:
            due.append(look)
        if self.watch and self.breaker.until is not None:
            due.append(self.breaker.until)
        if (renewal := self.leases.next_due()) is not None:
            due.append(renewal)
        if self.config.reclaim_interval_secs:
            due.append(self.next_reclaim)
        if self.pusher is not None and (push := self.pusher.next_due()) is not None:
            due.append(push)
        if self.shared is not None and (listing := self.shared.next_due()) is not None:
            due.append(listing)
        due.append(self.merges_held_until())
        if self.pool.kills or any(gate.kill is not None for gate in self.gates):
            due.append(now + processes.KILL_STEP_SECS)
        # One already past was acted on, or waits for something that posts (a gate's verdict,
        # a refill): looking again at once would be a busy loop.
        return min((moment for moment in due if moment > now), default=now + self.config.poll_interval_secs)

    def run(self) -> dict[str, Any]:
        """The run, until it is done; its summary. An error out of it (a gate worktree that cannot
        be made, say) ends the gates first: a gate is never adopted by a later run, which gates its
        request again. Workers are left running, for the next run to adopt."""
        try:
            return self.work()
        except BaseException:
            self.serial.give_up()  # a store that cannot be reached holds up no stop
            self.end_gates("the run stopped")
            if self.queue.shared_slot is not None:
                self.queue.shared_slot.give_back_now()  # held by no run once this one stops
            raise

    def work(self) -> dict[str, Any]:
        ledger = self.ledger
        self.recovery.reconcile()
        if self.pusher is not None:
            self.pusher.keep_what_was_kept()
        self.queue.epics.close_finished()
        while True:
            changed = self.pool.poll(self.finisher.finish)
            if why := self.stop_now_reason():
                self.stop_now(why)  # the store writes not done are made again by the next run
            written = ledger.writes_done()  # an outcome's or a merge's store writes, done: followed here
            changed |= written
            changed |= self.claimed()  # lost to someone else: the ready list is read again too
            changed |= self.renew_leases()
            changed |= self.push_branches()
            changed |= self.reclaim_lapsed()
            self.released()
            if (deck := self.pool.on_deck()) is not None and deck.ended == records.CLAIM_LOST:
                changed |= self.clear_deck("its claim was taken back", release=False)
            if self.stopping or self.breaker_tripped():
                changed |= self.clear_deck(self.why_starts_held())
            if changed:
                self.fill_slots()  # a freed slot is refilled before anything else
            now = time.time()
            poll_due = now >= self.next_poll
            if poll_due:  # main rewritten meanwhile is noticed while the branches that carry it run
                self.queue.rewritten.observe_main()
                changed |= self.queue.rewritten.carry_out_decisions()
            if self.shared is not None:
                state = self.ledger.state
                in_hand = {worker.task_id for worker in state.workers.values()} | set(state.pending)
                changed |= self.shared.step(in_hand | {pending.task_id for pending in state.pending.values()})
            merged = False if now < self.merges_held_until() else self.queue.step()
            merged |= self.settle_pending(changed or merged or poll_due)
            changed |= self.read_reviews(poll_due)
            if merged or written:  # a merge's task closed: its epic may be finished
                self.queue.epics.close_finished()
            changed |= merged
            self.changes += changed
            if self.read_store(poll_due) or merged:
                self.fill_slots()
            if poll_due:
                self.next_poll = time.time() + self.config.poll_interval_secs
            # Done once nothing runs or waits, and the ready list and pending merges, read since the
            # last change, started nothing.
            idle = not ledger.state.workers and not gates.any_busy(self.gates) and not self.queue.due(time.time()) \
                and not ledger.writes and self.claiming is None and self.reclaiming is None and not self.releasing \
                and not (self.pusher is not None and self.pusher.busy())
            current = self.ready_as_of == self.settled_as_of == self.reviewed_as_of == self.changes
            if idle and (self.stopping or (not changed and not self.watch and current)):
                break
            # A pass that changed something is followed by another at once: what it changed may
            # let more happen (a merge after a start, a start after a merge).
            timeout = 0.0 if changed else self.next_deadline(time.time()) - time.time()
            self.wakeup.wait(min(timeout, SIGNAL_CHECK_SECS) if processes.IS_WINDOWS else timeout)
        self.pool.starter.shutdown(wait=True)
        self.queue.mover.shutdown(wait=True)
        if self.pusher is not None:
            self.pusher.shutdown()
        if self.queue.shared_slot is not None:
            self.queue.shared_slot.give_back_now()
        self.serial.shutdown()
        gates.remove_worktrees(self.gates)
        summary = ledger.summary
        for request in ledger.state.merge_queue:
            summary["waiting"].append({"id": request.task_id, "reason": request.waiting or "in the merge queue"})
        for followup_id, pending in ledger.state.pending.items():
            summary["waiting"].append({"id": pending.task_id, "reason": f"waits for {followup_id}" + (
                f" ({scheduler.PERSON_LABEL}: a person must resolve it)" if pending.for_person else "")})
        if self.breaker_tripped():
            summary["waiting"].append({"id": None, "reason": "the breaker stopped new workers"})
        if held := self.queue.main_fails():
            summary["waiting"].append({"id": None, "reason": held})
        return summary

    # ---- stopping --------------------------------------------------------------------------

    def interrupt(self, *_: object) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            self.stopping = True
            self.say("Ctrl-C: starting nothing new; running workers will finish and merge. Ctrl-C again to stop now.")
        else:
            self.serial.give_up()  # a call waiting for the store fails, so that the stop goes ahead
        self.wakeup.post()

    def stop_signalled(self, signum: int, _frame: object) -> None:
        """SIGTERM (a service manager), SIGHUP (a closed terminal), SIGBREAK (a closed Windows
        console or Ctrl-Break, see session.hold_console_close): stop now, as at a second Ctrl-C."""
        self.stopping, self.stop_signal = True, signum
        self.serial.give_up()
        self.wakeup.post()

    def stop_now_reason(self) -> str | None:
        """Why every worker must end now, if it must: a stop signal, or a second Ctrl-C."""
        if self.stop_signal is not None:
            return f"stopped by {signal.Signals(self.stop_signal).name}"
        return "stopped by Ctrl-C" if self.interrupts >= 2 else None

    def stop_now(self, why: str) -> None:
        """End every worker, release the tasks of those it ended, and leave: their branches and
        records stay for the next run, which merges their commits, as after a timeout. Every tree
        (the gates' too) is asked to end first, then all are waited for together: one grace in all,
        not one a worker."""
        pool = self.pool
        gates.cancel_all(self.gates, why)
        ended = []
        for worker in list(self.ledger.state.workers.values()):
            # Recorded but never started: the next run releases its task. Being ended already: its kill is waited
            # for. Ended by itself, its leftover commit (or its outcome's store write) under way: the next run
            # finishes it as it ended.
            if (worker.slot not in pool.starting and worker.slot not in pool.kills
                    and worker.slot not in pool.committing and worker.slot not in pool.settling):
                pool.end(worker, why)
                ended.append(worker)
        under_way: list[concurrent.futures.Future[Any]] = [*pool.starting.values(), *pool.committing.values(),
                     *(gate.preparing for gate in self.gates if gate.preparing)]
        if self.queue.landing is not None:
            under_way.append(self.queue.landing.moving)
        if self.pusher is not None:
            under_way += self.pusher.under_way()
        left = processes.wait_for_kills([*pool.kills.values(), *self.end_threads_commands(under_way)],
                                        give_up_after=STOP_KILLED_SECS)
        gates.wait_until_ended(self.gates)
        self.clear_deck(why)
        gone = []
        for worker in ended:
            if any(kill is pool.kills.get(worker.slot) for kill in left):
                self.say(f"{worker.task_id}: its worker's process tree outlived its kill by {STOP_KILLED_SECS:g} s; "
                         "its task stays in progress, for the next run to end it and release it")
            else:
                gone.append(worker)
        self.release_stopped(gone, why)
        self.say(f"{why}: workers ended; their branches are kept for the next run")
        if self.stop_signal is not None:
            raise SystemExit(128 + self.stop_signal)  # the shell's convention: 143 for SIGTERM, 129 for SIGHUP
        raise KeyboardInterrupt

    def release_stopped(self, workers: list[records.Worker], why: str) -> None:
        """Give back the claims of the workers a stop ended, their trees gone, so that no task is
        left in progress after the stop. Their records stay: the next run merges their commits
        (and releases the task again, with the merge named). The store thread may be in a slow
        call: past STOP_RELEASE_SECS, the tasks not yet released are left for the next run."""
        asked = [(worker, self.serial.later("release", worker.task_id,
                                            f"attempt {worker.attempt} {why}; its branch {worker.branch} is kept "
                                            "for the next run", actor=worker.actor)) for worker in workers]
        concurrent.futures.wait([future for _, future in asked] + [future for future, _, _ in self.releasing],
                                timeout=STOP_RELEASE_SECS)
        self.released()
        for worker, future in asked:
            if not future.done():
                future.cancel()
                self.say(f"{worker.task_id}: not released within {STOP_RELEASE_SECS:g} s of the stop (the task "
                         "store is slow); the next run releases it")
            elif (failed := future.exception()) is not None:
                self.say(f"{worker.task_id}: not released at the stop ({safe_names.one_line_tail(str(failed))}); "
                         "the next run releases it")
            else:
                self.ledger.event(EventName.RELEASED, worker.task_id, reason=f"attempt {worker.attempt} {why}")

    def end_gates(self, why: str) -> None:
        gates.cancel_all(self.gates, why)
        processes.wait_for_kills(self.end_threads_commands([gate.preparing for gate in self.gates if gate.preparing]))
        gates.wait_until_ended(self.gates)

    @staticmethod
    def end_threads_commands(under_way: Sequence[concurrent.futures.Future[Any]]) -> list[processes.TreeKill]:
        """At a stop: the threads at work for the loop (worktrees made, main moved) wait for git,
        which runs the user's hooks, which may never end. Each git command's tree is ended, and
        any a thread starts meanwhile, until the work `under_way` is done (setup commands end at
        the stop by themselves). The kills begun are returned, to be waited for with the workers'."""
        kills = []
        while True:
            kills += processes.end_commands()
            if not concurrent.futures.wait(under_way, timeout=processes.KILL_STEP_SECS).not_done:
                return kills
