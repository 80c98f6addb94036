"""Speculative parallel gates (merge_gate_parallelism above 1, as in Zuul): the first queue entries
are gated at once, each in its own gate worktree (.gate-1, .gate-2, ...) on a speculative commit,
main with the entries ahead of it merged. speculation.plan decides, stacks makes the commits, and
main still moves only by compare-and-swap to a commit whose gate passed exactly as it is."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Protocol

from crew import config as configuration
from crew import git
from crew.dispatch import gate as gates
from crew.dispatch import main_checks
from crew.dispatch import records
from crew.dispatch import remote_main
from crew.dispatch import speculation
from crew.dispatch.ledger import Ledger
from crew.dispatch.merge_results import Decision
from crew.dispatch.merge_results import Verdict
from crew.report.events import EventName
from crew.tasks import model as task_model


STACK_CHANGED = "its stack changed: gated again on the one there is now"
PASSED_WAITS = "passed its gate: lands once every entry ahead of it has landed"


class GatedQueue(Protocol):
    """What the parallel gates ask of the merge queue that runs them: its entries, whether merges
    are held or stopping, and its steps on one entry (the merge slot, decide, land, blame a
    failure, main's own check). Its store, its conflict tasks and its gates stay its own."""

    @property
    def requests(self) -> list[records.MergeRequest]: ...

    @property
    def active(self) -> list[records.MergeRequest]: ...

    def merges_held(self) -> bool: ...

    def stop_now_reason(self) -> str | None: ...

    def main_checked(self, outcome: gates.GateOutcome) -> bool: ...

    def merge_slot_or_wait(self, request: records.MergeRequest) -> contextlib.ExitStack | None: ...

    def unchanged_task(self, request: records.MergeRequest, commit: str) -> task_model.Task | None: ...

    def land(self, request: records.MergeRequest, task: task_model.Task, base: str, commit: str,
             slot: contextlib.ExitStack, gate_log: str = "", gate_started: float = 0.0) -> bool: ...

    def blame(self, request: records.MergeRequest, failed: gates.GateOutcome) -> main_checks.Blame: ...

    def decide(self, request: records.MergeRequest, onto: str | None = None) -> Decision: ...


class ParallelGates:
    """The merge queue's steps when gates run in parallel. Gates still running are recorded in
    ledger.state.gates (a restart ends them and gates their entries again); a gate's verdict is
    kept here, in memory, until its entry lands, its failure counts, or its stack is void."""

    def __init__(self, queue: GatedQueue, config: configuration.Settings, ledger: Ledger,
                 gate_worktrees: list[gates.Gate]):
        self.queue, self.config, self.ledger, self.gates = queue, config, ledger, gate_worktrees
        self.verdicts: dict[str, gates.GateOutcome] = {}  # by task id: finished gates, passed or failed
        self.failures_unsaid: set[str] = set()  # task ids whose gate failed this step: is it counted now?
        self.stack_conflicts: set[str] = set()  # task ids whose branch conflicts with the stack ahead, not main
        # Main as last read: read again once a poll interval (a git call), and after this queue
        # changed, landed or started a gate. Planned on a main someone else moved since, a
        # landing's compare-and-swap fails and the plan is made again on main as it is.
        self.main: str | None = None
        self.main_read_at = 0.0

    def step(self) -> bool:
        """Look at the gates, then act on the plan until it leaves the queue as it is; True if
        main moved or the queue changed."""
        changed = self.poll()
        if self.queue.merges_held():
            self.forget_failures_held()
            return changed
        for _ in range(len(self.queue.requests) + 1):  # each round lands or drops an entry, or stops
            if self.queue.stop_now_reason():
                break
            acted = self.carry_out(self.plan())
            changed |= acted
            if not acted:
                break
            self.forget_main()  # the queue changed
        return changed

    def forget_failures_held(self) -> None:
        """While main fails its checks, a failed gate says nothing about its branch: each is said
        not to count (for a script reading the events) and forgotten, so its entry is gated
        again once main passes."""
        for task_id, verdict in list(self.verdicts.items()):
            if not verdict.passed:
                gates.say_failure_not_counted(self.ledger, verdict.record, gates.MAIN_FAILS_REASON)
                del self.verdicts[task_id]
        self.failures_unsaid.clear()

    def forget_main(self) -> None:
        """Main may have moved (this queue landed, or started a gate on main as it is now): the
        next plan reads it again."""
        self.main = None

    def main_now(self) -> str | None:
        now = time.time()
        if self.main is None or now >= self.main_read_at + self.config.poll_interval_secs:
            self.main, self.main_read_at = git.rev_parse(self.config.root, remote_main.main_ref(self.config)), now
        return self.main

    def poll(self) -> bool:
        """Keep each verdict that came in; a gate ended without one (cancelled, a stop) leaves none."""
        came_in = False
        for gate in self.gates:
            if not gate.busy or (outcome := gate.poll(time.time())) is None:
                continue
            if gates.is_main_check(outcome.record):
                came_in |= self.queue.main_checked(outcome)
                continue
            if outcome.passed is None:
                continue
            if outcome.passed:
                self.ledger.event(EventName.GATE_PASSED, outcome.record.task_id, commit=outcome.record.commit)
            else:
                self.failures_unsaid.add(outcome.record.task_id)
            self.verdicts[outcome.record.task_id] = outcome
            came_in = True
        return came_in

    def running(self, task_id: str) -> tuple[gates.Gate, records.GateRecord] | None:
        """The gate running for an entry (not cancelled), with its record."""
        for gate in self.gates:
            if (record := gate.record) is not None and not gate.cancelled and record.task_id == task_id:
                return gate, record
        return None

    def state_of(self, task_id: str) -> speculation.GateState | None:
        if running := self.running(task_id):
            return speculation.GateState(running[1].base, running[1].commit)
        if verdict := self.verdicts.get(task_id):
            result = speculation.GateResult.PASSED if verdict.passed else speculation.GateResult.FAILED
            return speculation.GateState(verdict.record.base, verdict.record.commit, result)
        return None

    def plan(self) -> speculation.Plan:
        requests = self.queue.active
        queued = {request.task_id for request in requests}
        self.verdicts = {task_id: v for task_id, v in self.verdicts.items() if task_id in queued}
        if requests:
            self.stack_conflicts &= queued - {requests[0].task_id}  # the first is judged against main
        entries = [speculation.Entry(request.task_id, self.state_of(request.task_id),
                                     request.task_id in self.stack_conflicts) for request in requests]
        return speculation.plan(entries, self.main_now(), self.config.merge_gate_parallelism)

    def carry_out(self, plan: speculation.Plan) -> bool:
        """True when the queue changed (an entry landed or left): plan again."""
        for task_id in plan.cancel:
            if (running := self.running(task_id)) is None:
                raise LookupError(f"no gate runs for {task_id}, which the plan cancels")  # planned from state_of
            gate, record = running
            self.ledger.event(EventName.GATE_CANCELLED, task_id, commit=record.commit, reason=STACK_CHANGED,
                              gate_secs=round(time.time() - record.started_at, 3))
            gate.cancel(STACK_CHANGED)
        for task_id in self.failures_unsaid - {plan.fail}:
            if (verdict := self.verdicts.get(task_id)) is not None:
                gates.say_failure_not_counted(self.ledger, verdict.record)
        self.failures_unsaid.clear()  # plan.fail's is said as its fix task is filed
        for task_id in plan.void:
            self.verdicts.pop(task_id)
        self.show_waiting(plan)
        if plan.land:
            return self.land(self.request(plan.land))
        if plan.fail:
            return self.count_failure(self.request(plan.fail))
        return self.start(plan.start)

    def request(self, task_id: str) -> records.MergeRequest:
        return next(request for request in self.queue.requests if request.task_id == task_id)

    def show_waiting(self, plan: speculation.Plan) -> None:
        """Why each entry waits, for --status (a merge that waits for main keeps its own reason)."""
        now, waiting = time.time(), {}
        for request in self.queue.active:
            reason = plan.waiting.get(request.task_id)
            verdict = self.verdicts.get(request.task_id)
            if reason is None and verdict is not None and verdict.passed and request.task_id != plan.land:
                reason = PASSED_WAITS
            if request.retry_at <= now and request.waiting != reason:
                waiting[request.task_id] = reason
        if waiting:  # the state is not even compared on a pass that changes nothing
            with self.ledger.change():
                for request in self.queue.active:
                    request.waiting = waiting.get(request.task_id, request.waiting)

    def land(self, request: records.MergeRequest) -> bool:
        """Main moves to the first entry's speculative commit (its gate passed on main as it is)."""
        if request.retry_at > time.time():
            return False  # main is held: it waits, and the entries behind it with it
        gated = self.verdicts[request.task_id].record
        if (slot := self.queue.merge_slot_or_wait(request)) is None:
            return False
        with slot:
            task = self.queue.unchanged_task(request, gated.commit)
            if task is None:
                del self.verdicts[request.task_id]  # decide() says what becomes of it
                return True
            # The queue changes once main has moved, or at once when the entry awaits review.
            return not self.queue.land(request, task, gated.base, gated.commit, slot, gated.log, gated.started_at)

    def count_failure(self, request: records.MergeRequest) -> bool:
        """The first entry failed on main as it is: it leaves the queue with its fix task, once
        the checks passed on main itself (until then its verdict is kept, and main is checked)."""
        if (slot := self.queue.merge_slot_or_wait(request)) is None:
            return False
        verdict = self.verdicts[request.task_id]
        with slot:
            if git.rev_parse(self.config.root, remote_main.main_ref(self.config)) != verdict.record.base:
                del self.verdicts[request.task_id]
                gates.say_failure_not_counted(self.ledger, verdict.record)
                return True  # main moved meanwhile: gated again
            if self.queue.blame(request, verdict) is not main_checks.Blame.BRANCH:
                return False
        del self.verdicts[request.task_id]
        return True

    def gated_commit(self, task_id: str) -> str | None:
        """The speculative commit of an entry gated, or being gated, which the plan stacks onto."""
        if (state := self.state_of(task_id)) is None:
            raise LookupError(f"{task_id} has no gate, yet the plan stacks onto it")  # planned from state_of
        return state.commit

    def start(self, starts: list[speculation.GateStart]) -> bool:
        """Start the planned gates in order, while a gate worktree is free: each on the speculative
        commit of the entry ahead (made now, or by its gate still running). True if the queue
        changed meanwhile (an entry left, or conflicted with its stack): plan again."""
        free = [gate for gate in self.gates if not gate.busy]
        made: dict[str, str] = {}  # task id -> the speculative commit started this step
        for start in starts:
            request = self.request(start.task_id)
            if not free or request.retry_at > time.time():
                break  # no entry behind starts: its stack holds this one
            onto = None if start.onto is None else made.get(start.onto) or self.gated_commit(start.onto)
            if (slot := self.queue.merge_slot_or_wait(request)) is None:
                break
            with slot:
                decision = self.queue.decide(request, onto)
            if decision.verdict is Verdict.STACK_CONFLICT:
                self.stack_conflicts.add(start.task_id)
                return True
            if decision.commit is None or decision.base is None:  # a CLEAN decision carries both
                return decision.verdict is not Verdict.WAITS
            free.pop(0).start(request, decision.base, decision.commit, stack=list(start.stack))
            made[start.task_id] = decision.commit
            self.forget_main()
        return False


def gate_worktrees(config: configuration.Settings) -> list[Path]:
    """One gate worktree a gate: .gate as ever, or with parallel gates .gate-1 ... .gate-N."""
    root, parallelism = config.worktree_root, config.merge_gate_parallelism
    if parallelism == 1 or not config.merge_gate_command:
        return [root / ".gate"]
    return [root / f".gate-{n}" for n in range(1, parallelism + 1)]
