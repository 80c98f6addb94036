"""The merge queue: finished branches merge into main one at a time, in order, behind the merge
slot; main moves only from the commit the merge was computed on."""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import filelock

from crew import config as configuration
from crew import errors
from crew import failpoints
from crew import git
from crew import names as safe_names
from crew import processes
from crew.dispatch import branch_push
from crew.dispatch import conflicts as conflict_tasks
from crew.dispatch import epics
from crew.dispatch import gate as gates
from crew.dispatch import main_checks
from crew.dispatch import merge_results
from crew.dispatch import outcomes
from crew.dispatch import parallel_gates
from crew.dispatch import records
from crew.dispatch import remote_main
from crew.dispatch import revert
from crew.dispatch import review
from crew.dispatch import reviews as awaiting_review
from crew.dispatch import rewritten_main
from crew.dispatch import scheduler
from crew.dispatch import shared_queue
from crew.dispatch import stacks
from crew.dispatch import wakeup as wakeups
from crew.dispatch import worktrees
from crew.dispatch.ledger import Ledger
from crew.dispatch.ledger import StoreStep
from crew.dispatch.ledger import raise_failed
from crew.dispatch.merge_results import Decision
from crew.dispatch.merge_results import MainMove
from crew.dispatch.merge_results import Verdict
from crew.dispatch.say_once import Told
from crew.report.events import EventName
from crew.tasks import model as task_model


MERGE_SLOT_HELD = "the merge slot is held by another process"
FILES_NAMED = 10  # files in the way a waiting merge names; the rest are counted
MAIN_FAILS = "{main} fails its checks at {commit}: merges wait until it passes"
# What git says when the user's untracked or ignored files are where a fast-forward writes: a
# file at a path it writes or where it makes a folder, or a folder where it makes a file.
UNTRACKED_IN_THE_WAY = ("untracked working tree files would be", "would lose untracked files")


def files_in_the_way(checkout: Path, files: Sequence[str]) -> str:
    """Why a merge waits for the user's untracked or ignored files, the first few named."""
    named = ", ".join(files[:FILES_NAMED]) + (f" and {len(files) - FILES_NAMED} more" if len(files) > FILES_NAMED
                                              else "")
    return (f"{named or 'some files'} in {checkout} would be overwritten by the merge (untracked or ignored there); "
            "move them away and the merge will go ahead")


@dataclasses.dataclass
class Landing:
    """Main being moved to a merge commit, on a thread of its own: the user's hooks run in the
    move (a post-merge hook in their checkout), and the loop must not wait for them. The merge
    slot stays held until the move is over."""

    request: records.MergeRequest
    task: task_model.Task
    base: str  # main before the move: the merge commit's first parent
    tip: str  # the branch's tip: its second parent
    commit: str
    slot: contextlib.ExitStack
    moving: concurrent.futures.Future[MainMove]  # advance_main's outcome (remote mode: advance_remote's)
    gate_started: float = 0.0  # when the gate that passed on `commit` started (0: no gate)


class MergeQueue:
    def __init__(self, config: configuration.Settings, ledger: Ledger, store: task_model.TaskStore,
                 all_gates: list[gates.Gate], conflicts: conflict_tasks.Conflicts,
                 stop_now_reason: Callable[[], str | None], wakeup: wakeups.Wakeup):
        """all_gates: one gate, or with merge_gate_parallelism above 1 that many, run speculatively."""
        self.config, self.ledger, self.store, self.conflicts = config, ledger, store, conflicts
        self.gate, self.all_gates = all_gates[0], all_gates
        # A branch's failure on main as it is, waiting for main's own check (one gate at a time).
        self.failure_waiting: gates.GateOutcome | None = None
        self.speculative = parallel_gates.ParallelGates(self, config, ledger, all_gates) if len(all_gates) > 1 else None
        self.stop_now_reason = stop_now_reason
        self.root = config.root
        self.landing: Landing | None = None
        self.mover = wakeups.PostingExecutor(wakeup, 1, "move-main")  # the loop is woken once main has moved
        # Rebases run on the starter threads, as worktree set-ups and gate preparations do.
        self.rewritten = rewritten_main.RewrittenMain(config, ledger, self.gate.starter)
        self.reviews = awaiting_review.Reviews(config, ledger, store)
        self.epics = epics.Epics(ledger, store)  # closed after a merge closed their last subtask
        # Where main is read: the local branch, or in remote mode the remote's main as last fetched.
        self.main = remote_main.main_ref(config)
        self.shared_slot: shared_queue.SharedSlot | None = None  # remote mode with merge_slot: bd's slot
        self.fetching: concurrent.futures.Future[git.FetchFailure | None] | None = None
        self.fetched_at = 0.0
        self.fetch_started = 0.0  # when the fetch under way began
        self.fetch_began = 0.0  # when the fetch the remote's main is read from now began
        # This host's entries whose task was found closed by another host, and when it was seen.
        self.closed_seen: dict[str, float] = {}
        self.fetch_now = True  # the remote's main is not known, or a push found it moved
        self.fetched: set[str] = set()  # the branches the last fetch asked for
        self.fetch_failed: str | None = None
        # Other hosts' entries this host left to their owner (it cannot merge them here), by task
        # id, with the tip they were left at: not added to the queue again until that tip changes.
        self.left_to_owner: dict[str, str] = {}
        self.bookkeeping: set[str] = set()  # the branches merged whose store writes are under way

    @property
    def requests(self) -> list[records.MergeRequest]:
        return self.ledger.state.merge_queue

    @property
    def active(self) -> list[records.MergeRequest]:
        """The requests that are tried: all but those held for a person's decision or review, and
        those merged whose store writes are under way."""
        return [request for request in self.requests if not request.held and request.review != review.State.AWAITING
                and request.branch not in self.bookkeeping]

    def add(self, worker: records.Worker, outcome: records.Outcome, note: str, counted: bool = True) -> None:
        with self.ledger.change():
            self.requests.append(records.MergeRequest(records.BranchInFlight.left_by(worker, outcome, note, counted),
                                                      queued_at=time.time()))
        self.ledger.event(EventName.MERGE_QUEUED, worker.task_id, branch=worker.branch)

    def due(self, now: float) -> list[records.MergeRequest]:
        """The requests that may be tried now (a waiting one pauses until its retry_at)."""
        return [request for request in self.active if request.retry_at <= now]

    def step(self) -> bool:
        """Merge queued branches in order; True if main moved or the queue changed. Never waits
        for the gate: while it runs it is looked at, and nothing behind its request merges.
        Remote mode: bd's merge slot (with merge_slot) is given back once nothing is in flight."""
        progressed = self.merge_step()
        if self.shared_slot is not None and self.landing is None and self.fetching is None \
                and not gates.any_busy(self.all_gates):
            self.shared_slot.give_back()
        return progressed

    def remote_busy(self) -> bool:
        """Remote mode: whether the merges wait now, for bd's merge slot (merge_slot true) or for
        the remote to be fetched (when entries are due and the last fetch is older than
        FETCH_EVERY_SECS, asks for branches not fetched yet, or a push found main moved)."""
        if not self.due(time.time()) and not gates.any_busy(self.all_gates):
            return False
        if self.shared_slot is not None:
            if not self.shared_slot.want():
                if (holder := self.shared_slot.holder) and holder != self.config.actor:
                    self.ledger.say_once(Told.MERGE_WAITS, f"merges wait: bd's merge slot is held by {holder} "
                                         "(taken when it is given back, or once its lease lapses and it is "
                                         "taken back)", f"slot {holder}")
                return True
            self.fetch_now |= self.shared_slot.taken_anew  # the last holder may have moved main
            self.shared_slot.taken_anew = False
        if self.fetching is not None:
            if not self.fetching.done():
                return True
            future, self.fetching = self.fetching, None
            failure = future.result()
            self.fetched_at, self.fetch_failed = time.time(), failure.reason if failure is not None else None
            if self.fetch_failed:
                self.fetch_now = True
                self.ledger.say_once(Told.MERGE_WAITS, f"merges wait: {self.fetch_failed}", self.fetch_failed)
            else:
                self.fetch_began = self.fetch_started
            return bool(self.fetch_failed)
        branches = [request.branch for request in self.active]
        if (self.fetch_now or not self.fetched.issuperset(branches)
                or time.time() >= self.fetched_at + remote_main.FETCH_EVERY_SECS):
            if self.fetch_failed and time.time() < self.fetched_at + remote_main.FETCH_EVERY_SECS:
                return True
            # An ask for a fetch made while this one runs (main found moved meanwhile) is not
            # answered by it: this one may have read the remote before that move.
            self.fetched, self.fetch_started, self.fetch_now = set(branches), time.time(), False
            self.fetching = self.mover.submit(remote_main.fetch, self.root, self.config.remote or "",
                                              self.config.main_branch, branches)
            return True
        return False

    def merge_step(self) -> bool:
        if (landing := self.landing) is not None:  # nothing merges while main moves: each merge is computed on main
            if landing.moving.done():
                if self.speculative:
                    self.speculative.forget_main()  # it moved, or someone else's move stopped ours
                return self.landed(landing)
            return self.speculative.poll() if self.speculative else False
        if self.config.remote is not None and self.remote_busy():
            return self.speculative.poll() if self.speculative else False
        if self.speculative:
            return self.speculative.step()
        if self.gate.busy:
            self.gate.cancel_if_main_moved(time.time())
            outcome = self.gate.poll(time.time())
            if outcome is None:
                return False
            return self.main_checked(outcome) if gates.is_main_check(outcome.record) else self.after_gate(outcome)
        if self.merges_held():
            return False
        progressed = False
        for request in self.active:
            if self.stop_now_reason():
                break  # no gate is started while stopping now
            if request.retry_at > time.time():
                continue
            progressed |= self.merge(request)
            if self.gate.busy or self.landing is not None:
                break  # queue order: the requests behind a gating or landing one wait for it
        return progressed

    def next_look_at_main(self) -> float | None:
        """While a gate runs, when main is read next (a gate whose main moved is ended then); in
        remote mode also, while entries wait, when the remote is fetched or bd's merge slot asked for next."""
        slot = self.shared_slot.next_due() if self.shared_slot is not None else None
        if self.config.remote is not None and (self.active or (slot is not None and self.shared_slot is not None
                                                               and self.shared_slot.returning)):
            fetch = self.fetched_at + remote_main.FETCH_EVERY_SECS if self.fetching is None and self.active else None
            if (remote := min((due for due in (slot, fetch) if due is not None), default=None)) is not None:
                return min(remote, self.local_look_at_main() or remote)
        return self.local_look_at_main()

    def local_look_at_main(self) -> float | None:
        if self.speculative:
            return self.speculative.main_read_at + self.config.poll_interval_secs \
                if gates.any_busy(self.speculative.gates) else None
        if self.gate.busy and not self.gate.cancelled:
            return self.gate.main_looked_at + self.config.poll_interval_secs
        return None

    def merge_slot(self) -> contextlib.AbstractContextManager[object] | None:
        """The merge slot, taken without waiting (a process holding it must not stall the loop):
        a context that holds it, or None when another process has it. In remote mode bd's slot,
        if any, is held by step() before anything merges: the compare-and-swap push is the guard."""
        if not self.config.merge_slot or self.config.remote is not None:
            return contextlib.nullcontext()
        try:
            return filelock.FileLock(str(self.root / ".dispatch_merge.lock")).acquire(timeout=0)
        except filelock.Timeout:
            return None

    def merge_slot_or_wait(self, request: records.MergeRequest) -> contextlib.ExitStack | None:
        """The merge slot, held (a landing keeps it: see land), or None when another process
        holds it: the request then waits."""
        if (slot := self.merge_slot()) is None:
            self.merge_waits(request, MERGE_SLOT_HELD)
            return None
        held = contextlib.ExitStack()
        held.enter_context(slot)
        return held

    def merge(self, request: records.MergeRequest) -> bool:
        """Decide the request's merge and land it, or hand its merge commit to the gate."""
        if (slot := self.merge_slot_or_wait(request)) is None:
            return False
        with slot:
            decision = self.decide(request)
            task, base, commit = decision.task, decision.base, decision.commit
            if commit is None or task is None or base is None:  # a CLEAN decision carries all three
                return decision.verdict is not Verdict.WAITS
            if request.review == review.State.APPROVED and review.gate_stands(
                    base, git.rev_parse(self.root, f"{commit}^2") or "", request.review_base,
                    request.review_tip) and git.rev_parse(self.root, request.review_commit):
                # Approved as gated, and neither main nor the branch moved since: that very commit lands.
                return not self.land(request, task, base, request.review_commit, slot, request.review_gate_log)
            if self.config.merge_gate_command:
                self.gate.start(request, base, commit)
                return False
            return not self.land(request, task, base, commit, slot)

    def decide(self, request: records.MergeRequest, onto: str | None = None) -> Decision:
        """What becomes of a request now, with the merge slot held: its merge commit on main, or
        on `onto` (the speculative commit of the entry ahead of it) when given (verdict CLEAN),
        or what was done instead. Git and the store only, no process of ours."""
        root, main, ledger = self.root, self.main, self.ledger
        main_now = git.rev_parse(root, main)
        if self.config.remote is None and main_now and self.rewritten.holds_back(request, main_now):
            return Decision(Verdict.WAITS)  # rebased without the commits that left main first, off the loop
        task = ledger.current_task(request.task_id, request.task_created_at)
        if task is None:
            self.drop(request)
            worktrees.remove_worktree(root, request.worktree)
            ledger.drop_record_of_gone_task(request.task_id, f"merge of {request.branch} (the branch is kept)")
            return Decision(Verdict.DROPPED)
        tip = git.rev_parse(root, self.tip_ref(request))
        if self.config.remote is not None:
            if (fate := self.remote_fate(request, task, tip, main_now)) is not None:
                return fate
        elif tip is None:
            self.drop(request)
            outcomes.block(ledger, request.task_id, f"its branch {request.branch} is gone", request.actor)
            return Decision(Verdict.DROPPED)
        if tip is None:
            raise LookupError(f"{request.branch}: no tip, yet merged")  # remote_fate settled a branch gone
        if git.is_ancestor(root, tip, main):  # merged before a crash: only the bookkeeping is left
            merge = git.merge_of(root, tip, main)  # None: landed by hand without a merge commit
            # Main holds the branch's tip, so it exists: read as a commit that must be there.
            self.finish_merge(request, task, merge or git.git_out(root, "rev-parse", "--verify", main + "^{commit}"),
                              merge_commit=merge is not None)
            return Decision(Verdict.MERGED)
        if self.closed_before_the_fetch(request, task):
            return Decision(Verdict.WAITS)
        if task.status != "in_progress" or task.assignee != request.actor:
            return self.stale(request, task)
        if self.config.remote is None and (held := self.why_main_is_held()):  # known before anything is computed
            self.merge_waits(request, held)
            return Decision(Verdict.WAITS)
        base = main_now  # read once: a main moved since is found by the move's compare-and-swap
        if base is None:
            raise errors.UserError(f"the branch {main} is gone: no merge can be made onto it")
        if marked := git.new_marker_files(root, base, tip):
            if shared_queue.is_elsewhere(request):
                return self.leave_to_owner(request, "it adds conflict markers", tip)
            self.unready(request)
            self.conflicts.file(request, marked, base, "the branch adds conflict markers")
            return Decision(Verdict.CONFLICT)
        merged = stacks.merge_onto(root, onto or base, base, tip,
                                   f"Merge {request.branch}: {request.title} ({request.task_id})")
        if merged.with_main and (conflict := merged.conflict) is not None:  # with_main: its conflict is there
            if shared_queue.is_elsewhere(request):
                return self.leave_to_owner(request, f"it conflicts with {self.config.main_branch}", tip)
            self.unready(request)
            self.conflicts.file(request, conflict.files, base, conflict.messages, merged=conflict)
            return Decision(Verdict.CONFLICT)
        if merged.commit is None:
            return Decision(Verdict.STACK_CONFLICT, task)
        return Decision(Verdict.CLEAN, task, onto or base, merged.commit)

    def closed_before_the_fetch(self, request: records.MergeRequest, task: task_model.Task) -> bool:
        """Remote mode: this host's entry whose task another host closed, seen so before the remote
        was fetched again: that host may have merged it (it moves the remote's main, then closes
        the task), so the entry waits for a fetch begun after the close was seen, and is decided
        on what that fetch brings (merged there, or not merged: the task changed)."""
        if self.config.remote is None or shared_queue.is_elsewhere(request) or task.status != "closed":
            return False
        seen = self.closed_seen.setdefault(request.task_id, time.time())
        if self.fetch_began > seen:
            return False
        self.fetch_now = True
        return True

    def stale(self, request: records.MergeRequest, task: task_model.Task) -> Decision:
        """Not merged: the task is no longer in progress under the claim its branch was made (or
        marked ready) under. The branch is kept."""
        ledger = self.ledger
        self.drop(request)
        if shared_queue.is_elsewhere(request):
            # Another host's entry, settled meanwhile (merged by a host whose view of the remote's
            # main is newer than this one's, or taken back): its owner's to report, nothing waits here.
            ledger.event(EventName.STALE_BRANCH, task.id, branch=request.branch)
            ledger.say(f"{task.id}: not merged here: the task is now {task.status} ({task.assignee or 'unassigned'})")
            return Decision(Verdict.DROPPED)
        ledger.summary["waiting"].append({"id": task.id, "reason": f"not merged: the task is now {task.status}"
                                          f" ({task.assignee or 'unassigned'}); branch {request.branch} kept"})
        ledger.event(EventName.STALE_BRANCH, task.id, branch=request.branch)
        ledger.say(f"{task.id}: not merged: the task changed meanwhile ({task.status}); branch kept")
        worktrees.remove_worktree(self.root, request.worktree)
        return Decision(Verdict.DROPPED)

    def tip_ref(self, request: records.MergeRequest) -> str:
        """Where the branch is read: the local branch, or in remote mode the remote's as fetched."""
        return f"refs/heads/{request.branch}" if self.config.remote is None else remote_main.fetched_ref(request.branch)

    def remote_fate(self, request: records.MergeRequest, task: task_model.Task, tip: str | None,
                    main_now: str | None) -> Decision | None:
        """Remote mode: what becomes of an entry on the remote as fetched; None: merge it (`tip`)."""
        own = not shared_queue.is_elsewhere(request)
        expected = (git.rev_parse(self.root, f"refs/heads/{request.branch}") if own
                    else task.metadata.get(branch_push.TIP_KEY)) or ""
        # The tip judged mergeable decides, when known: a branch left on the remote under that name
        # at a tip main has (an earlier attempt's) is not this entry merged.
        judged = expected or tip
        in_main = main_now is not None and judged is not None and git.is_ancestor(self.root, judged, main_now)
        fate = remote_main.entry_fate(tip, expected, in_main, own)
        if fate is remote_main.EntryFate.MERGE:
            return None
        if fate is remote_main.EntryFate.NOT_YET:
            if task.status != "in_progress" or task.assignee != request.actor:
                return self.stale(request, task)
            # Its push (and marking ready) is under way: it stays due, decided again at each fetch,
            # and the run does not end before it lands (no pause that grows, as a held main's).
            reason = f"its branch is not on {self.config.remote} at the tip judged mergeable yet"
            with self.ledger.change():
                request.waiting = reason
            self.ledger.say_once(Told.MERGE_WAITS, f"{request.task_id}: merge waits: {reason}",
                                 f"{request.task_id}: {reason}")
            return Decision(Verdict.WAITS)
        if fate is remote_main.EntryFate.MERGED and own and task.status == "in_progress" \
                and task.assignee == request.actor and main_now is not None:
            # This host pushed it and stopped before the bookkeeping: only that is left.
            merge = git.merge_of(self.root, tip or expected, main_now)
            self.finish_merge(request, task, merge or main_now, merge_commit=merge is not None)
            return Decision(Verdict.MERGED)
        if fate is remote_main.EntryFate.MERGED:
            self.ledger.event(EventName.MERGED_ELSEWHERE, request.task_id, branch=request.branch)
            self.ledger.say(f"{request.task_id}: {request.branch} is on {self.config.remote}'s "
                            f"{self.config.main_branch} already; not merged again")
        elif fate is remote_main.EntryFate.UNMARKED:
            return self.leave_to_owner(request, "no tip is marked ready to merge (crew_tip), and whatever "
                                       f"{self.config.remote} has is not what its owner judged mergeable", "")
        else:
            self.ledger.say(f"{request.task_id}: {request.branch} is gone from {self.config.remote}; "
                            "left to its owner")
        self.drop(request)
        if own:
            worktrees.remove_worktree(self.root, request.worktree)
        return Decision(Verdict.DROPPED)

    def leave_to_owner(self, request: records.MergeRequest, why: str, tip: str) -> Decision:
        """Another host's entry that cannot merge as it is: its owner settles it (a conflict or fix
        task of its own); it leaves this host's queue, and is not added again at this `tip`."""
        self.ledger.say(f"{request.task_id}: not merged here: {why}; left to {request.actor}, whose branch it is")
        self.left_to_owner[request.task_id] = tip
        self.drop(request)
        return Decision(Verdict.DROPPED)

    def unready(self, request: records.MergeRequest) -> None:
        """Remote mode: this host's entry goes to a conflict or fix task, to review, or is held: it
        is no longer ready for any host to merge (its label removed, guarded by its claim), so
        other hosts stop trying it. It is marked again once pushed at a new tip."""
        if self.config.remote is None or shared_queue.is_elsewhere(request):
            return
        owner = request.actor or self.config.actor

        def written(futures: list[concurrent.futures.Future[Any]]) -> None:
            if (exc := futures[0].exception()) is not None:
                if not isinstance(exc, errors.UserError):
                    raise exc
                self.ledger.say(f"{request.task_id}: could not mark it no longer ready to merge ({exc}); other "
                                "hosts leave it to this one")
        # Through the store thread, after any marking of it handed over before: the loop goes on
        # meanwhile, and the label is off once both are done.
        self.ledger.store_later([lambda store: store.update_claimed(request.task_id, owner,
                                                                    remove_labels=[branch_push.READY_LABEL])],
                                written)

    def refused(self, request: records.MergeRequest, tip: str, reason: str) -> bool:
        """Remote mode: the remote itself refuses its main to move (branch protection, its
        pre-receive hook): trying again would gate again and be refused again. This host's entry
        is held for a person's decision (`tasks.py held`), said once with the remote's words;
        another host's is left to its owner."""
        remote, main = self.config.remote, self.config.main_branch
        words = safe_names.for_terminal(reason)
        self.ledger.event(EventName.PUSH_REFUSED, request.task_id, branch=main, reason=words)
        why = f"{remote} refused to move its {main}: {words}"
        if shared_queue.is_elsewhere(request):
            self.leave_to_owner(request, why, tip)
            return False
        self.unready(request)
        self.ledger.say_once(Told.MERGE_WAITS, f"{request.task_id}: {request.branch} not merged: {why}; held for a "
                             "person's decision (`tasks.py held`)", f"{request.task_id}: {why}")
        def noted(futures: list[concurrent.futures.Future[Any]]) -> None:
            with contextlib.suppress(errors.UserError):  # the hold stands, and is said, without the note
                raise_failed(futures)
        self.ledger.store_later([lambda store: store.add_note(request.task_id, why)], noted)
        with self.ledger.change():
            request.held = request.waiting = why
        return False

    def after_gate(self, outcome: gates.GateOutcome) -> bool:
        """Act on the gate's verdict under the merge slot. Whatever changed while it ran (main,
        the branch, the task) sends the request back to decide() and the gate."""
        gated = outcome.record
        request = next((r for r in self.requests if r.branch == gated.branch), None)
        if request is None or outcome.passed is None:
            return False  # ended by a stop: the request stays queued and is gated again
        if outcome.passed:
            self.ledger.event(EventName.GATE_PASSED, request.task_id, commit=gated.commit)
        if (slot := self.merge_slot_or_wait(request)) is None:
            return False
        with slot:
            if git.rev_parse(self.root, self.main) != gated.base:
                if not outcome.passed:
                    gates.say_failure_not_counted(self.ledger, gated)
                elif self.config.remote is not None:  # another host landed first, found by a fetch
                    self.moved_under(request, gated.base, gated.started_at)
                return False  # main moved while the gate ran: recompute and gate again
            if not outcome.passed:
                blame = self.blame(request, outcome)
                self.failure_waiting = outcome if blame is main_checks.Blame.CHECK_MAIN else None
                return blame is main_checks.Blame.BRANCH  # a fix task filed: the request left the queue
            if (task := self.unchanged_task(request, gated.commit)) is None:
                return False  # decide() says what becomes of it now
            return not self.land(request, task, gated.base, gated.commit, slot, gated.log, gated.started_at)

    def blame(self, request: records.MergeRequest, failed: gates.GateOutcome) -> main_checks.Blame:
        """A gate failed on main as it is (the merge slot held): blamed on the branch (its fix
        task filed) only once the checks passed on main itself; until main's verdict is known its
        check is started (when a gate worktree is free) and the failure waits for it; a main that
        fails too holds the merges, and no fix task is filed."""
        record = failed.record
        blame = main_checks.blame(self.ledger.state.main_check, record.base)
        if blame is main_checks.Blame.BRANCH and shared_queue.is_elsewhere(request):
            self.leave_to_owner(request, "its gate failed", git.rev_parse(self.root, f"{record.commit}^2") or "")
        elif blame is main_checks.Blame.BRANCH:
            self.unready(request)
            self.conflicts.file(request, [], record.base, failed.output, kind=records.PendingKind.GATE,
                                commit=record.commit)
        elif blame is main_checks.Blame.MAIN:
            gates.say_failure_not_counted(self.ledger, record, gates.MAIN_FAILS_REASON)
            self.merge_waits(request, self.main_fails())
        elif (not any(gate.record is not None and gates.is_main_check(gate.record) for gate in self.all_gates)
              and (free := next((gate for gate in self.all_gates if not gate.busy), None))):
            self.ledger.say(f"{request.task_id}: checks failed on {request.branch}; checking "
                            f"{self.config.main_branch} itself before blaming the branch")
            free.check_main(record.base)
        return blame

    def main_checked(self, outcome: gates.GateOutcome) -> bool:
        """Main's own check is over: its verdict holds until main moves. A branch's failure that
        waited for it is judged now."""
        record, main = outcome.record, self.config.main_branch
        if outcome.passed is not None:
            # Kept for --status and said on the terminal: one line, its control bytes made safe.
            tail = safe_names.for_terminal(safe_names.one_line_tail(outcome.output))
            with self.ledger.change():
                self.ledger.state.main_check = records.MainCheck(record.commit, outcome.passed, time.time(), tail)
            self.ledger.event(EventName.MAIN_CHECKED, None, commit=record.commit, passed=outcome.passed, log=record.log)
            if not outcome.passed:
                self.ledger.say_once(Told.MAIN_FAILS, f"{self.main_fails()}; no fix task is filed meanwhile (checked "
                                     f"again when {main} moves, and every {self.config.main_recheck_secs:g} s); the "
                                     f"checks' output ends: {tail}", record.commit)
            elif self.ledger.say_once.told_any(Told.MAIN_FAILS):
                self.ledger.say(f"{main} passes its checks at {record.commit[:conflict_tasks.MERGE_SHORT]}: "
                                "merges go on")
        waiting, self.failure_waiting = self.failure_waiting, None
        return self.after_gate(waiting) if waiting is not None else True

    def main_fails(self) -> str | None:
        """Why the merges are held, when main's last check failed and main is still that commit."""
        check = self.ledger.state.main_check
        if check is None or check.passed or git.rev_parse(self.root, self.main) != check.commit:
            return None
        return MAIN_FAILS.format(main=self.config.main_branch, commit=check.commit[:conflict_tasks.MERGE_SHORT])

    def merges_held(self) -> bool:
        """While main fails its checks, nothing is gated or merged: each due request waits,
        saying why. Main is checked again once main_recheck_secs have passed; a main that
        moved is not known to fail, and its branches are gated again."""
        check = self.ledger.state.main_check
        if check is None or check.passed:
            return False  # known before any git call
        main = git.rev_parse(self.root, self.main)
        held = main_checks.merges(check, main, time.time(), self.config.main_recheck_secs)
        if held is main_checks.Merges.GO:
            return False
        if held is main_checks.Merges.RECHECK and main is not None and not gates.any_busy(self.all_gates):
            self.all_gates[0].check_main(main)
        for request in self.due(time.time()):
            self.merge_waits(request, self.main_fails())
        return True

    def unchanged_task(self, request: records.MergeRequest, commit: str) -> task_model.Task | None:
        """The request's task, if neither it nor the branch changed since `commit` (the branch's
        merge) was made; None: decide() says what becomes of it now."""
        task = self.ledger.current_task(request.task_id, request.task_created_at)
        if (task is None or task.status != "in_progress" or task.assignee != request.actor
                or git.rev_parse(self.root, self.tip_ref(request)) != git.rev_parse(self.root, f"{commit}^2")):
            return None
        return task

    def land(self, request: records.MergeRequest, task: task_model.Task, base: str, commit: str,
             slot: contextlib.ExitStack, gate_log: str = "", gate_started: float = 0.0) -> bool:
        """Begin moving main from `base` to the merge commit, off the loop; `slot` (the merge slot,
        held) is the landing's from now on. landed() finishes the request once main has moved.
        Every landing passes here: a branch that waits for a person's review (its task's labels,
        read just now, approve no other tip) steps out of the queue instead, and False is returned.
        gate_log: the log of the gate that passed on `commit` ("" with no gate); gate_started: when it started.
        Remote mode: main moves on the remote (advance_remote)."""
        tip = git.rev_parse(self.root, f"{commit}^2") or ""
        if review.waits_for_review(self.config.review, task.labels, tip):
            self.unready(request)
            self.reviews.await_review(request, task, base, commit, tip, gate_log)
            return False
        failpoints.failpoint("during_merge")
        if self.config.remote is None:
            moving = self.mover.submit(self.advance_main, base, commit)
        else:
            moving = self.mover.submit(self.advance_remote, request, base, tip, commit)
        self.landing = Landing(request, task, base, tip, commit, slot.pop_all(), moving, gate_started)
        return True

    def landed(self, landing: Landing) -> bool:
        """The move is over (`landing` was this queue's): the request is merged, or waits, or (main
        moved meanwhile) is decided again on the next step. True unless it waits."""
        self.landing = None
        with landing.slot:
            moved: MainMove = landing.moving.result()
            if moved.move is merge_results.Move.REJECTED:
                return self.moved_under(landing.request, landing.base, landing.gate_started)
            if moved.move is merge_results.Move.RACED:
                self.fetch_now = True
                return True
            if moved.move is merge_results.Move.STAYS:
                return self.merge_waits(landing.request, moved.reason)
            if moved.move is merge_results.Move.REFUSED:
                return self.refused(landing.request, landing.tip, moved.reason)
            failpoints.failpoint("after_main_moved")  # a restart finds the branch merged: bookkeeping only
            if self.config.merge_gate_command:  # main is now a commit that passed the checks exactly as it is
                self.ledger.state.main_check = records.MainCheck(landing.commit, True, time.time())
            self.finish_merge(landing.request, landing.task, landing.commit, parents=(landing.base, landing.tip))
            if moved.local_kept:
                self.local_main_kept(moved.local_kept)
            if self.config.remote is not None:
                return True  # the local main seen is the user's own, followed by the checkout's fast-forward
            # Main moved on from the main last seen: nothing left it. Remembered after the merge is
            # told (one synced write less before it): a crash between leaves main seen at the
            # merge's parent, from which main descends, and that is all a restart would find.
            self.rewritten.observe(landing.commit, parent=landing.base)
            return True

    def moved_under(self, request: records.MergeRequest, base: str, gate_started: float) -> bool:
        """Remote mode: the remote's main (or the branch) moved since the fetch the merge was made on
        (the push was rejected, or a fetch found it after the gate passed); the gate's work is
        wasted. Fetched again, and decided again."""
        self.fetch_now = True
        gate_secs = round(time.time() - gate_started, 3) if gate_started else 0.0
        self.ledger.event(EventName.MAIN_MOVED_UNDER, request.task_id, branch=request.branch, base=base,
                          gate_secs=gate_secs)
        self.ledger.say(f"{request.task_id}: {self.config.remote}'s {self.config.main_branch} moved while "
                        "its merge was gated; merged and gated again on it")
        return True

    def local_main_kept(self, why: str) -> None:
        """The user's local main was not fast-forwarded to the remote's: said once a run, as an event too."""
        if not self.ledger.say_once.told_any(Told.LOCAL_MAIN_KEPT):
            self.ledger.event(EventName.LOCAL_MAIN_KEPT, None, reason=why)
        self.ledger.say_once(Told.LOCAL_MAIN_KEPT, why)

    def advance_remote(self, request: records.MergeRequest, base: str, tip: str, commit: str) -> MainMove:
        """Remote mode, off the loop: if the task is still in progress and held by the owner seen
        (read through the store thread), move the remote's main from `base` to `commit` and delete
        the branch in one compare-and-swap push; then follow with the user's local main where that
        loses nothing. A task that changed is RACED: decide() says what becomes of it."""
        try:
            task = self.store.get(request.task_id)
        except errors.TaskNotFound:
            return merge_results.RACED
        if task.status != "in_progress" or task.assignee != request.actor:
            return merge_results.RACED
        moved = remote_main.push_merge(self.root, self.config.remote or "", self.config.main_branch, request.branch,
                                       base, tip, commit, self.config.git_hook_timeout_secs)
        if moved.move is not merge_results.Move.DONE:
            return moved
        return MainMove(merge_results.Move.DONE, local_kept=self.follow_remote(commit))

    def follow_remote(self, commit: str) -> str:
        """Fast-forward the user's local main to the remote's new main only where that loses
        nothing (local main an ancestor; the checkout's fast-forward, with its compare-and-swap
        and its refusals): "" when it followed, or why it was left as it is."""
        main = self.config.main_branch
        local = git.rev_parse(self.root, f"refs/heads/{main}")
        if local is None or local == commit:
            return ""
        if not git.is_ancestor(self.root, local, commit):
            return remote_main.local_main_kept(self.config, local)
        try:
            moved = self.advance_main(local, commit)
        except errors.GitError as exc:
            return f"your {main} was not fast-forwarded to {self.config.remote}'s: {git.first_line(str(exc))}"
        if moved.move is merge_results.Move.STAYS:
            return f"your {main} was not fast-forwarded to {self.config.remote}'s: {moved.reason}"
        return ""

    def merge_waits(self, request: records.MergeRequest, reason: str | None) -> bool:
        """Try the merge again later, after a pause that grows: what keeps main still (a stale
        lock, the user's rebase) may stand for hours. Each reason is said once."""
        with self.ledger.change():
            request.waits += 1
            request.retry_at = scheduler.next_try(request.waits, self.config.poll_interval_secs, time.time())
            self.ledger.say_once(Told.MERGE_WAITS, f"{request.task_id}: merge waits: {reason}",
                                 f"{request.task_id}: {reason}")
            request.waiting = reason
        return False

    def why_main_is_held(self) -> str | None:
        """What keeps main from moving that is known before merging: an operation of the user's
        on it in some worktree, or a lock on its ref."""
        main = self.config.main_branch
        if busy := git.operation_on_branch(self.root, main):
            return f"{busy}; merges into {main} wait until it is finished or aborted"
        ref_lock = self.root / ".git" / "refs" / "heads" / f"{main}.lock"
        return git.stale_lock_reason(ref_lock) if ref_lock.exists() else None

    def advance_main(self, old: str, new: str) -> MainMove:
        """Move main from `old` to `new` only: done, raced (someone else moved it) or why it stays."""
        main = self.config.main_branch
        if held := self.why_main_is_held():  # it may have begun while the merge was computed
            return MainMove.stays(held)
        checkout, timeout = git.checkout_of_branch(self.root, main), self.config.git_hook_timeout_secs
        result: processes.Completed | None
        try:
            if checkout is None:
                result = git.git("update-ref", f"refs/heads/{main}", new, old, cwd=self.root, check=False,
                                 timeout=timeout)
            else:
                result = git.fast_forward_checkout(checkout, main, old, new, timeout)
                if result is None:
                    return merge_results.RACED  # the folder is not on main at `old` any more: recompute
        except errors.GitError as exc:
            if exc.returncode is not None:
                raise
            # A hook past git_hook_timeout_secs, ended: a post-merge hook runs once main has moved.
            result = processes.Completed(exc.argv, -1, exc.stdout, str(exc))
        # Only the ref itself says whether main moved: the folder may have been switched to
        # another branch a moment ago, and then the fast-forward moved that branch instead.
        now = git.rev_parse(self.root, main)
        if now == new:
            return merge_results.DONE
        if now != old or result.returncode == 0:
            return merge_results.RACED  # recompute on the main that is there now, and try again
        return MainMove.stays(self.why_main_stays(checkout, result))

    def why_main_stays(self, checkout: Path | None, result: processes.Completed) -> str:
        """What keeps git from moving main, when nobody else moved it: said as what it is."""
        if held := self.why_main_is_held():
            return held
        main = self.config.main_branch
        output = result.stderr + result.stdout
        if checkout is None:
            return f"git cannot update refs/heads/{main}: {git.first_line(output)}"
        index_lock = Path(git.git_out(checkout, "rev-parse", "--absolute-git-dir")) / "index.lock"
        if index_lock.exists():
            return git.stale_lock_reason(index_lock)
        files_named = [line.strip() for line in output.splitlines() if line.startswith("\t")]
        if any(said in output for said in UNTRACKED_IN_THE_WAY):
            return files_in_the_way(checkout, files_named)
        if files_named or "would be overwritten" in output:
            return (f"your uncommitted changes in {checkout} to {', '.join(files_named) or 'some files'} would be "
                    "overwritten; commit or stash them and the merge will go ahead")
        return f"git cannot fast-forward {main} in {checkout}: {git.first_line(output)}"

    def finish_merge(self, request: records.MergeRequest, task: task_model.Task, commit: str,
                     merge_commit: bool = True, parents: tuple[str, str] | None = None) -> None:
        """merge_commit: `commit` merged the branch; else it is only main's tip, which may be any
        commit (another task's merge): it is not recorded as the task's, so no revert undoes it.
        parents: `commit`'s own, main's and the branch's tip, when this dispatcher made and landed
        it (not read again from git)."""
        ledger, task_id, short = self.ledger, request.task_id, commit[:conflict_tasks.MERGE_SHORT]
        if parents is not None:
            diffstat = git.merge_diffstat(self.root, commit, parents[1], parents)
        else:
            diffstat = git.merge_diffstat(self.root, commit, git.rev_parse(self.root, self.tip_ref(request))
                                          or git.rev_parse(self.root, f"refs/heads/{request.branch}"))
        ledger.event(EventName.MERGED, task_id, branch=request.branch, commit=commit, diffstat=diffstat)
        ledger.say(f"{task_id}: merged {request.branch} into {self.config.main_branch} ({short})")
        # Its store writes go through the store thread, the request kept queued (and out of the
        # merges tried) until they are done: a restart finds it merged and makes them again.
        self.bookkeeping.add(request.branch)
        steps: list[StoreStep] = []
        if merge_commit and revert.merged_label(commit) not in task.labels:  # what `tasks.py revert` undoes
            steps.append(lambda store: store.relabel(task_id, add=[revert.merged_label(commit)]))
        fate = outcomes.merged_fate(request.outcome, task.status)
        if fate == outcomes.MergedFate.RETRY:
            ledger.store_later(steps, raise_failed)
            outcomes.attempt_failed(ledger, task_id, f"{request.note} (merge {short})", request.actor,
                                    counted=request.counted, then=lambda: self.merge_settled(request))
            return
        closing = len(steps)  # the close's step: whether it closed the task
        if fate == outcomes.MergedFate.CLOSE:
            reason = f"merged into {self.config.main_branch} as {short}" + (f"; {request.note}" if request.note else "")
            if self.config.remote is None:
                steps.append(lambda store: store.close(task_id, reason, actor=request.actor) or True)
            else:  # another host's claim too, guarded; the branch it names is merged: never continued
                steps.append(lambda store: store.close_claimed(task_id, request.actor, reason,
                                                               unset=branch_push.MERGED_KEYS))
        landed_for_good = fate in (outcomes.MergedFate.CLOSE, outcomes.MergedFate.SETTLE)
        if landed_for_good and revert.reverted_task(task.labels):
            steps.append(lambda store: revert.after_landing(store, ledger, task, commit))

        def written(futures: list[concurrent.futures.Future[Any]]) -> None:
            results = [future.result() for future in futures]  # an error is raised, as a call's would be
            if fate == outcomes.MergedFate.CLOSE:
                if results[closing]:
                    ledger.event(EventName.CLOSED, task_id)
                self.epics.task_closed(task)
            if landed_for_good:
                outcomes.merged(ledger, task_id)
            self.merge_settled(request)
        ledger.store_later(steps, written)

    def merge_settled(self, request: records.MergeRequest) -> None:
        """A merged request's store writes are done: it leaves the queue, then its worktree and
        branch go. In that order: another merge may be landing meanwhile, and a run killed as it
        lands must not find this request with its branch gone (a worktree left is pruned at the
        restart)."""
        self.bookkeeping.discard(request.branch)
        self.drop(request)
        if not shared_queue.is_elsewhere(request):  # another host's has neither worktree nor branch here
            worktrees.remove_worktree(self.root, request.worktree)
            if self.config.delete_merged_branches:
                git.git("branch", "-D", request.branch, cwd=self.root, check=False)

    def drop(self, request: records.MergeRequest) -> None:
        self.closed_seen.pop(request.task_id, None)
        self.ledger.drop_request(request)
        if self.config.remote is not None:
            remote_main.forget(self.root, request.branch)
