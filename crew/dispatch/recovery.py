"""After a crash or a restart: the records an earlier run left are looked at before anything starts."""
from __future__ import annotations

from typing import TYPE_CHECKING

from crew import config as configuration
from crew import errors
from crew import git
from crew import names as safe_names
from crew import orphans
from crew import processes
from crew.dispatch import agent
from crew.dispatch import branch_push
from crew.dispatch import outcomes
from crew.dispatch import records
from crew.dispatch import review
from crew.dispatch import shared_queue
from crew.dispatch import worktrees
from crew.dispatch.ledger import Ledger
from crew.dispatch.workers import WorkerPool
from crew.report.events import EventName
from crew.tasks import model as task_model


if TYPE_CHECKING:  # what orphans.marked finds
    import psutil

InFlight = records.Worker | records.MergeRequest | records.PendingMerge


def branches_in_flight(state: records.DispatchState) -> list[InFlight]:
    """The records of the tasks this dispatcher works on: each holds a claim and a worktree."""
    return [*state.workers.values(), *state.merge_queue, *state.pending.values()]


class Recovery:
    def __init__(self, config: configuration.Settings, ledger: Ledger, store: task_model.TaskStore, pool: WorkerPool):
        self.config, self.ledger, self.store, self.pool = config, ledger, store, pool
        self.root = config.root

    def reconcile(self) -> None:
        """Adopt live workers, begin ending those recorded as ended, release the claims no record
        accounts for; dead and ended workers are finished by the loop's passes."""
        ledger, state, actor = self.ledger, self.ledger.state, self.config.actor
        grace, left_running = self.config.worker_kill_grace_secs, []
        for gate in state.gates:  # never adopted: its request is still queued, and is gated again
            mark = records.process_mark(self.root, gate)
            # By its recorded group, even once its first process is gone (a member that dropped
            # its environment is still in it), and by its mark (a member that left the group).
            group = gate.pid if processes.is_same_process_alive(gate.pid, gate.pid_start_time) or (
                gate.pid and processes.group_carries(gate.pid, mark)) else None
            if group is not None or orphans.marked(mark, everywhere=True):
                what = f"process group {group}" if group else "its setup command, or what it left"
                ledger.say(f"{gate.task_id or self.config.main_branch}: ending the merge gate an earlier run left "
                           f"running ({what})")
                left_running.append(processes.TreeKill.begin(group, grace, mark=mark, everywhere=True))
        for worker in state.workers.values():
            if processes.is_same_process_alive(worker.pid, worker.pid_start_time) and worker.ended:
                # recorded as ended, but the kill was cut short: end it again; the loop judges it
                # as ended once its tree is gone
                self.pool.kill(worker, grace)
            elif processes.is_same_process_alive(worker.pid, worker.pid_start_time):
                ledger.event(EventName.ADOPTED, worker.task_id, pid=worker.pid)
                ledger.say(f"{worker.task_id}: adopted running worker (pid {worker.pid})")
            elif left := orphans.marked(mark := records.process_mark(self.root, worker), everywhere=True):
                if self.adopt_unrecorded_agent(worker, left):
                    continue
                # Its setup command (the worker had not started), or what its agent left running.
                ledger.say(f"{worker.task_id}: ending what its worker's attempt {worker.attempt} left running")
                left_running.append(processes.TreeKill.begin(None, grace, mark=mark, everywhere=True))
        processes.wait_for_kills(left_running)  # their worktrees are removed or used again below
        if self.config.remote is not None:
            held = {task.id: task for task in self.store.list(["in_progress"])}
            self.drop_what_others_settled(held)
            self.take_ready_labels_off(held)
        # A conflict task's own claim is not accounted for by its pending merge: only the original is.
        # Another host's merge-queue entry (remote mode) is under that host's claim, never this one's.
        claims = [(r.task_id, r.task_created_at, r.actor) for r in branches_in_flight(state)
                  if not shared_queue.is_elsewhere(r)]
        for task_id, earlier in sorted({(task_id, claimer) for task_id, _, claimer in claims if claimer != actor}):
            ledger.event(EventName.EARLIER_ACTOR, task_id, actor=earlier)
            ledger.say(f"{task_id}: claimed as {earlier} by an earlier run (the actor is {actor} now); "
                       f"finishing it as {earlier}")
        # Every name this dispatcher has claimed under: a claim made just before a crash has no
        # record yet, and must not be stranded because the hostname changed meanwhile.
        ours = {actor, *state.actors} | {claimer for _, _, claimer in claims}
        if actor not in state.actors:
            with ledger.change():  # before any claim under it
                state.actors.append(actor)
        self.claim_again_what_the_stop_released()
        for task in self.store.list(["in_progress"]):
            recorded = any(task_id == task.id and records.same_creation(created_at, task.created_at)
                           for task_id, created_at, _ in claims)
            if task.assignee in ours and not recorded:
                if not outcomes.given_up(ledger, task.id, "open",
                                         "released: the dispatcher restarted with no worker or merge for it",
                                         task.assignee):
                    continue
                ledger.event(EventName.RELEASED, task.id, reason="no record after restart")
                ledger.say(f"{task.id}: released (no worker or merge recorded for it)"
                           + (f", as {task.assignee}" if task.assignee != actor else ""))
        branches = git.git_out(self.root, "for-each-ref", "--format=%(refname)", "refs/heads").splitlines()
        state.branches = {name: owner for name, owner in state.branches.items() if f"refs/heads/{name}" in branches}
        self.prune_stray_worktrees()
        if state.gates:
            with ledger.change():
                state.gates = []

    def drop_what_others_settled(self, held: dict[str, task_model.Task]) -> None:
        """Remote mode: while this host was away, other hosts may have taken back its claims and
        finished them (merged, closed, resolved their conflicts). A record whose task is no longer
        in progress under the claim it was made under is not this host's any more: dropped, with
        nothing written to the store; its local branch is kept (a dead worker's uncommitted work
        committed to it first) and, if it holds commits the remote was not given, pushed under a
        name saying whose attempt it was, as a lost claim's branch is (the pusher's `keeping`). A
        worker still running is left to its lease's renewal, which finds the claim gone and ends it.
        held: the tasks in progress, by id."""
        ledger, state = self.ledger, self.ledger.state

        def keep(record: InFlight, given: str | None) -> None:
            """Remember the record's branch to push, unless it is at the tip given to the remote
            (`given`), or holds nothing its worker made (at its base)."""
            base = record.base if isinstance(record, records.Worker) else None
            if branch_push.worth_keeping(self.config, record.branch, base, given):
                state.keeping[record.branch] = records.KeptBranch(task_id=record.task_id, actor=record.actor)

        def ours(record: InFlight) -> bool:
            task = held.get(record.task_id)
            return task is not None and records.same_creation(record.task_created_at, task.created_at) \
                and task.assignee == record.actor
        for worker in [w for w in state.workers.values() if not ours(w)]:
            if processes.is_same_process_alive(worker.pid, worker.pid_start_time):
                continue
            self.keep_leftovers(worker)
            with ledger.change():
                if worker.kind == records.WorkerKind.TASK:  # a conflict task's branch is the one it settles
                    keep(worker, None)
                self.pool.forget(worker)
            outcomes.no_longer_ours(ledger, worker.task_id, f"worker record (branch {worker.branch} kept)")
        for request in [r for r in state.merge_queue if not shared_queue.is_elsewhere(r) and not ours(r)]:
            with ledger.change():
                keep(request, state.pushed.get(request.branch))
                state.merge_queue.remove(request)
                state.pushed.pop(request.branch, None)  # the remote's branch is the new holder's now
            outcomes.no_longer_ours(ledger, request.task_id, f"merge-queue entry (branch {request.branch} kept)")
        for followup_id, pending in [(f, p) for f, p in state.pending.items() if not ours(p)]:
            with ledger.change():
                keep(pending, state.pushed.get(pending.branch))
                del state.pending[followup_id]
                state.pushed.pop(pending.branch, None)
            outcomes.no_longer_ours(ledger, pending.task_id, f"pending merge after {followup_id} "
                                                             f"(branch {pending.branch} kept)")

    def take_ready_labels_off(self, held: dict[str, task_model.Task]) -> None:
        """Remote mode: an entry of this host's that stopped being ready (its conflict or fix task
        waits, it is held, or it awaits review) has its ready label taken off by the loop through
        the store thread, after its record changed: a crash may have come between. Taken off here,
        under the claim, where the label is still on."""
        state = self.ledger.state
        not_ready = [*state.pending.values(), *(request for request in state.merge_queue if (
            request.held or request.review == review.State.AWAITING) and not shared_queue.is_elsewhere(request))]
        for record in not_ready:
            task = held.get(record.task_id)
            if task is not None and branch_push.READY_LABEL in task.labels and task.assignee == record.actor \
                    and records.same_creation(record.task_created_at, task.created_at):
                self.store.update_claimed(task.id, record.actor, remove_labels=[branch_push.READY_LABEL])

    def keep_leftovers(self, worker: records.Worker) -> None:
        """What a dead worker left uncommitted, committed to its branch through the user's hooks
        (as a finished worker's is), so that dropping its record loses nothing."""
        worktree = worker.worktree
        if worker.kind != records.WorkerKind.TASK or not worktree.exists() or not worktrees.has_leftovers(worktree):
            return
        git.clear_interrupted_git_state(worktree)
        try:
            worktrees.commit_leftovers(worktree, f"dispatch: uncommitted work of {worker.task_id} (found after a "
                                                 "restart)", self.config.git_hook_timeout_secs)
        except errors.CommitRefused as refused:
            said = safe_names.one_line_tail(refused.stderr + "\n" + refused.stdout) or "(no output)"
            self.ledger.say(f"{worker.task_id}: the repository's git hooks refused its uncommitted changes; "
                            f"discarded: {said[:120]}")

    def adopt_unrecorded_agent(self, worker: records.Worker, left: list[psutil.Process]) -> bool:
        """A worker whose agent a crash left running before its pid was recorded (its base is
        recorded just before the start): the agent, the first started of the marked processes
        that carry its task, is adopted as a recorded one would be, never ended and run again."""
        if worker.pid is not None or not worker.base:
            return False
        if (found := orphans.eldest_with(left, agent.TASK_VARIABLE, worker.task_id)) is None:
            return False
        with self.ledger.change():
            worker.pid, worker.pid_start_time = found
            timeout = self.config.worker_timeout_secs
            worker.deadline = worker.started_at + timeout if timeout else None
        self.ledger.event(EventName.ADOPTED, worker.task_id, pid=worker.pid)
        self.ledger.say(f"{worker.task_id}: adopted running worker (pid {worker.pid}, started just before the "
                        "earlier run stopped)")
        return True

    def claim_again_what_the_stop_released(self) -> None:
        """A stop gives back its workers' claims, so that nothing is left in progress, and keeps
        their branches: their work is merged now, under their claim taken again. A task that
        changed meanwhile (taken by another, blocked, closed) is left as it is: its branch is kept,
        not merged."""
        for worker in self.ledger.state.workers.values():
            if not worker.ended_by_stop:
                continue
            task = self.ledger.current_task(worker.task_id, worker.task_created_at)
            if task is not None and task.status == "open" and not task.assignee \
                    and self.store.claim(task.id, worker.actor):
                self.ledger.event(EventName.CLAIMED, task.id, reason="to merge the work of the worker a stop ended")

    def prune_stray_worktrees(self) -> None:
        """Remove the worktrees an earlier run made and no record names (a worker's work is
        recorded before it starts, so nothing of value is in them); anything else is not ours."""
        state = self.ledger.state
        known = {r.worktree.resolve() for r in branches_in_flight(state)}
        root = self.config.worktree_root.resolve()
        owned = worktrees.dispatcher_worktrees(self.root)
        for path in sorted(owned - known):
            if root in path.parents:
                worktrees.remove_worktree(self.root, path)
        for path in sorted(root.iterdir()) if root.is_dir() else ():
            if path.resolve() not in owned | known:
                self.ledger.event(EventName.LEFT_ALONE, path=str(path))
                self.ledger.say(f"left alone: {path} is in worktree_root but the dispatcher did not make it")
