"""Branches awaiting a person's review: they passed everything else (a clean merge, the gate on the
very commit main would move to) and step out of the merge queue until a person decides. The
decision is recorded in the task store (`tasks.py approve` / `reject`, as labels naming the tip
shown) and carried out here by the dispatcher: now if it runs, else at its next run."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from crew import config as configuration
from crew import errors
from crew import failpoints
from crew import files
from crew import git
from crew.dispatch import outcomes
from crew.dispatch import records
from crew.dispatch import review
from crew.dispatch import worktrees
from crew.dispatch.ledger import Ledger
from crew.dispatch.ledger import current_task
from crew.dispatch.state_store import read_state
from crew.report.events import EventName
from crew.tasks import model as task_model


SHORT = 10
AWAITING_REASON = "awaiting review since {since}: see `py tasks.py review`"


@dataclasses.dataclass
class Waiting:
    """A branch awaiting review, as `tasks.py review` shows it."""

    id: str
    title: str
    branch: str
    tip: str
    since: str
    diffstat: dict[str, int] | None
    gate: str  # "passed" on review_commit, or "none" (no merge_gate_command)
    gate_log: str
    attempt_log: str
    diff_command: str
    decision: str  # recorded and not yet carried out, else "none"


def awaiting(state: records.DispatchState) -> list[records.MergeRequest]:
    return [request for request in state.merge_queue if request.review == review.State.AWAITING]


def waiting_list(config: configuration.Settings, state: records.DispatchState,
                 store: task_model.TaskStore) -> list[Waiting]:
    """What waits for a person, read from the dispatcher's records, git and the store."""
    shown = []
    for request in awaiting(state):
        task = current_task(store, request.task_id, request.task_created_at)
        decision = review.decided(task.labels, request.review_tip) if task else review.Decision.NONE
        shown.append(Waiting(
            id=request.task_id, title=request.title, branch=request.branch, tip=request.review_tip,
            since=files.iso_time(request.review_since),
            diffstat=git.merge_diffstat(config.root, request.review_commit, request.review_tip),
            gate="passed" if request.review_gate_log else "none", gate_log=request.review_gate_log,
            attempt_log=request.attempt_log, diff_command=f"git diff {config.main_branch}...{request.branch}",
            decision=str(decision)))
    return shown


def record_decision(config: configuration.Settings, store: task_model.TaskStore, task_id: str,
                    decision: review.Decision, reason: str = "", tip_shown: str | None = None) -> records.MergeRequest:
    """A person's decision on the branch tip awaiting review, written to the task store (a label
    naming the tip, and a note the next attempt reads): the dispatcher carries it out."""
    request = next((r for r in awaiting(read_state(config)) if r.task_id == task_id), None)
    if request is None:
        raise errors.UserError(f"{task_id}: no branch of it awaits review (see `py tasks.py review`)")
    tip = request.review_tip
    if tip_shown is not None and not (len(tip_shown) >= 4 and tip.startswith(tip_shown.lower())):
        raise errors.UserError(f"{task_id}: {request.branch} awaits review at {tip[:SHORT]}, not {tip_shown}: "
                               "look at it again (`py tasks.py review`)")
    task = store.get(task_id)
    if (earlier := review.decided(task.labels, tip)) not in (review.Decision.NONE, decision):
        raise errors.UserError(f"{task_id}: {request.branch} at {tip[:SHORT]} was {earlier} already")
    if decision is review.Decision.APPROVED:
        note = f"Review approved: {request.branch} at {tip}"
    else:
        next_attempt = (f"the next attempt continues on {request.branch}"
                        if decision is review.Decision.CHANGES_REQUESTED
                        else f"the next attempt starts afresh from {config.main_branch}")
        note = f"Review rejected ({request.branch} at {tip[:SHORT]}; {next_attempt}): {reason}"
    others = [review.decision_label(other, tip) for other in review.DECISION_PREFIXES if other is not decision]
    store.relabel(task_id, add=[review.decision_label(decision, tip)], remove=others, note=note)
    return request


class Reviews:
    """The dispatcher's side: a branch steps out of the queue to await review, and the decisions
    read from the store (off the loop, see lookups) are carried out."""

    def __init__(self, config: configuration.Settings, ledger: Ledger, store: task_model.TaskStore):
        self.config, self.ledger, self.store, self.root = config, ledger, store, config.root

    def awaiting(self) -> list[records.MergeRequest]:
        return awaiting(self.ledger.state)

    def await_review(self, request: records.MergeRequest, task: task_model.Task, base: str, commit: str, tip: str,
                     gate_log: str) -> None:
        """The branch passed everything else: it leaves the queue (holding no gate and no place)
        until a person decides. The store is written first: a crash before the save gates and
        awaits again (a second note), never lands."""
        main = self.config.main_branch
        checked = f"its gate passed on {commit[:SHORT]}" if gate_log else "no gate is configured"
        self.store.relabel(task.id, add=[review.AWAITING_LABEL],
                           note=f"Awaiting review: {request.branch} at {tip} (it merges cleanly into {main} at "
                                f"{base[:SHORT]}; {checked})")
        failpoints.failpoint("awaiting_review")
        with self.ledger.change():
            request.review, request.review_tip, request.review_since = review.State.AWAITING, tip, time.time()
            request.review_base, request.review_commit, request.review_gate_log = base, commit, gate_log
            request.waiting, request.retry_at, request.waits = AWAITING_REASON.format(
                since=files.iso_time(request.review_since)), 0.0, 0
        self.ledger.event(EventName.REVIEW_AWAITED, task.id, branch=request.branch, tip=tip, commit=commit,
                          log=gate_log or None)
        self.ledger.say(f"{task.id}: {request.branch} awaits review (`py tasks.py review`; approve with "
                        f"`py tasks.py approve {task.id}`)")

    def lookups(self) -> Callable[[task_model.TaskStore], dict[str, task_model.Task | None]]:
        """What carry_out needs from the store, as work for the store thread (SerialStore.batch)."""
        wanted = {request.task_id: request.task_created_at for request in self.awaiting()}
        return lambda store: {task_id: current_task(store, task_id, created_at)
                              for task_id, created_at in wanted.items()}

    def carry_out(self, tasks: dict[str, task_model.Task | None]) -> bool:
        """Act on what the store says of each branch awaiting review; True if any left the wait.
        A task that changed, or a branch that moved while it waited, goes back to the queue:
        decide() says what becomes of it, and land() has it reviewed again."""
        changed = False
        for request in self.awaiting():
            if request.task_id not in tasks:
                continue  # awaiting since the lookup: looked at next time
            task = tasks[request.task_id]
            if task is None or task.status != "in_progress" or task.assignee != request.actor:
                self.requeue(request, task)
            elif (decision := review.decided(task.labels, request.review_tip)) is review.Decision.APPROVED:
                self.approved(request, task)
            elif decision is not review.Decision.NONE:
                self.rejected(request, task, decision)
            elif git.rev_parse(self.root, f"refs/heads/{request.branch}") != request.review_tip:
                self.requeue(request, task)
            else:
                continue
            changed = True
        return changed

    def requeue(self, request: records.MergeRequest, task: task_model.Task | None) -> None:
        if task is not None and review.AWAITING_LABEL in task.labels:
            self.store.relabel(task.id, remove=[review.AWAITING_LABEL])
        with self.ledger.change():
            request.review, request.waiting = review.State.NONE, None

    def approved(self, request: records.MergeRequest, task: task_model.Task) -> None:
        """Back in the queue: it lands as approved, after a fresh merge and gate if main moved."""
        self.store.relabel(task.id, remove=[review.AWAITING_LABEL])
        failpoints.failpoint("review_approving")
        with self.ledger.change():
            request.review, request.waiting, request.retry_at = review.State.APPROVED, None, 0.0
        self.ledger.event(EventName.REVIEW_APPROVED, task.id, branch=request.branch, tip=request.review_tip,
                          awaited_secs=round(time.time() - request.review_since, 1))
        self.ledger.say(f"{task.id}: {request.branch} approved at {request.review_tip[:SHORT]}; "
                        "back in the merge queue")

    def rejected(self, request: records.MergeRequest, task: task_model.Task, decision: review.Decision) -> None:
        """Sent back: the task is released (a person's decision: no attempt counted). By default
        the branch is kept aside under a rejected/ name, never merged, and the next attempt starts
        afresh from main; with changes requested the next attempt continues on the branch. Each
        step may be repeated after a crash: the request is dropped only once the branch is aside."""
        self.store.relabel(task.id, remove=[review.AWAITING_LABEL])
        failpoints.failpoint("review_rejecting")
        worktrees.remove_worktree(self.root, request.worktree)
        fresh = decision is review.Decision.REJECTED
        kept_as = self.set_aside(request) if fresh else request.branch
        if fresh:
            self.ledger.state.branches.pop(request.branch, None)  # the next attempt makes a new branch
        self.ledger.drop_request(request)  # saves the state
        self.ledger.event(EventName.REVIEW_REJECTED, task.id, branch=request.branch, tip=request.review_tip,
                          kept_as=kept_as, fresh=fresh)
        next_attempt = (f"starts afresh from {self.config.main_branch} (the rejected branch is kept as {kept_as}, "
                        "never merged)" if fresh else f"continues on {request.branch}")
        outcomes.release_claim(self.ledger, request, f"released: its branch was rejected in review; the next attempt "
                                                     f"{next_attempt}")

    def set_aside(self, request: records.MergeRequest) -> str:
        """The rejected branch under a name that says so (found again if a crash came after the move)."""
        heads = dict(line.split(" ", 1)[::-1] for line in git.git_out(
            self.root, "for-each-ref", "--format=%(objectname) %(refname:short)", "refs/heads").splitlines())
        if heads.get(request.branch):
            name = review.rejected_branch_name(request.branch, list(heads))
            git.git("branch", "-m", request.branch, name, cwd=self.root)
            failpoints.failpoint("review_set_aside")
            return name
        aside = review.REJECTED_BRANCH.format(branch=request.branch)
        return next((name for name, tip in heads.items()
                     if name.startswith(aside) and tip == request.review_tip), aside)
