"""--status and --dry-run: read the records (also while a dispatcher runs), never write them.
--status also lists every host's claims as the task store has them (with bd on a shared server,
each host's running tasks and leases), read within a bound: a store that does not answer is one
line, and this host's own records are shown all the same."""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from crew import config as configuration
from crew import errors
from crew import git
from crew import processes
from crew.dispatch import branch_push
from crew.dispatch import records
from crew.dispatch import revert
from crew.dispatch import review
from crew.dispatch import scheduler
from crew.dispatch import state_store
from crew.dispatch import store_thread
from crew.tasks import model as task_model


STORE_READ_SECS = 30.0  # --status's bound on reading the task store (bd retries a busy database for a while)
_FRACTION = re.compile(r"(\.\d{1,6})\d*")  # bd's stand-in writes nanoseconds; Python reads microseconds

Read = TypeVar("Read")


@dataclasses.dataclass
class Claim:
    """A task in progress as the store has it: who holds it, its lease, and its branch if it waits to merge."""

    task_id: str
    title: str
    holder: str
    this_host: bool
    lease_expires_at: str | None
    lease_lapsed: bool
    heartbeat_at: str | None
    merge_ready: bool
    branch: str | None
    tip: str | None


def iso(epoch: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else None


def epoch(stamp: str) -> float | None:
    """A store's timestamp ("2026-01-02T03:04:05Z", with or without a fraction) as seconds, None if unreadable."""
    try:
        moment = datetime.datetime.fromisoformat(_FRACTION.sub(r"\1", stamp.strip()).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)).timestamp()


def claim(task: task_model.Task, actor: str, now: float) -> Claim:
    expires = task.lease_expires_at
    lapsed = expires is not None and (when := epoch(expires)) is not None and when <= now
    ready = branch_push.READY_LABEL in task.labels
    branch, tip = (task.metadata.get(branch_push.BRANCH_KEY), task.metadata.get(branch_push.TIP_KEY)) if ready \
        else (None, None)
    return Claim(task.id, task.title, task.assignee, task.assignee == actor, expires, lapsed, task.heartbeat_at,
                 ready, branch, tip)


def bounded(read: Callable[[], Read], limit: float) -> Read | str:
    """read()'s result within `limit` seconds, or why not, in one line: it failed, or did not
    answer in time (its thread is left to end by itself: --status ends soon after)."""
    answer: concurrent.futures.Future[Read] = concurrent.futures.Future()

    def reading() -> None:
        try:
            answer.set_result(read())
        except Exception as exc:  # handed to the caller: why the store was not read
            answer.set_exception(exc)

    threading.Thread(target=reading, name="status-store", daemon=True).start()
    try:
        return answer.result(timeout=limit)
    except concurrent.futures.TimeoutError:
        return f"it did not answer within {limit:g} s"
    except errors.UserError as exc:
        return store_thread.unreachable(exc) or str(exc)


def status(config: configuration.Settings, store: task_model.TaskStore,
           store_limit: float = STORE_READ_SECS) -> dict[str, Any]:
    state = state_store.read_state(config)
    dispatcher = state.dispatcher
    if dispatcher and not processes.is_same_process_alive(dispatcher.pid, dispatcher.pid_start_time):
        dispatcher = None
    read = bounded(lambda: store.list(None), store_limit)
    every = read if isinstance(read, list) else []
    counts = dict(collections.Counter(task.status for task in every))
    now = time.time()
    return {
        "store_unreachable": None if isinstance(read, list) else read,
        "claims": [dataclasses.asdict(claim(task, config.actor, now)) for task in every
                   if task.status == "in_progress"],
        "dispatcher": {"pid": dispatcher.pid, "started_at": dispatcher.started_at} if dispatcher else None,
        "workers": [{"slot": w.slot, "task_id": w.task_id, "title": w.title, "branch": w.branch,
                     "worktree": str(w.worktree), "pid": w.pid, "started_at": iso(w.started_at),
                     "deadline": iso(w.deadline), "log": w.log, "on_deck": w.slot == records.ON_DECK and w.pid is None}
                    for w in state.workers.values()],
        "merge_queue": [{"task_id": r.task_id, "branch": r.branch, "outcome": r.outcome, "waiting": r.waiting,
                         "held": r.held is not None, **review_state(r)}
                        for r in state.merge_queue],
        "main_branch": config.main_branch,
        "gates": [{"task_id": g.task_id, "branch": g.branch, "stack": g.stack, "commit": g.commit,
                   "worktree": str(g.worktree), **gate_state(g, dispatcher is not None, alive(g)), "pid": g.pid,
                   "elapsed_secs": round(time.time() - g.started_at, 1), "log": g.log} for g in state.gates],
        "pending_merges": [{"followup_task": followup, **pending.to_json()}
                           for followup, pending in state.pending.items()],
        "main_check": main_check(config, state.main_check),
        "reverts": [{"task_id": task.id, "reverts": revert.reverted_task(task.labels), "status": task.status,
                     "merges": revert.merges_to_revert(task.labels)}
                    for task in every if task.status != "closed" and revert.reverted_task(task.labels)],
        "starts_held": scheduler.why_starts_held(
            scheduler.Holdings(list(state.workers.values()), state.merge_queue, state.pending, lambda _: []),
            scheduler.waiting_limit(config.max_waiting_merges, config.max_workers, config.merge_gate_parallelism),
            time.time()),
        "counts": counts,
    }


def review_state(request: records.MergeRequest) -> dict[str, Any]:
    """Its review: "review" (null: none asked, "awaiting" out of the queue until a person decides,
    "approved" back in it), the tip shown and since when it awaits."""
    awaiting = request.review == review.State.AWAITING
    return {"review": request.review or None, "review_tip": request.review_tip or None,
            "awaiting_review_since": iso(request.review_since) if awaiting else None}


def main_check(config: configuration.Settings, check: records.MainCheck | None) -> dict[str, Any] | None:
    """merge_gate_command's last verdict on main itself; "holds_merges" while main is still
    the commit that failed."""
    if check is None:
        return None
    current = git.rev_parse(config.root, config.main_branch) == check.commit
    return {"commit": check.commit, "passed": check.passed, "checked_at": iso(check.checked_at),
            "current": current, "holds_merges": current and not check.passed, "output": check.output}


def alive(gate: records.GateRecord) -> bool:
    return processes.is_same_process_alive(gate.pid, gate.pid_start_time)


def gate_state(gate: records.GateRecord, dispatcher_running: bool, process_alive: bool) -> dict[str, Any]:
    """What a recorded gate is doing, as far as the records and the process table tell: its
    "state" (preparing, gating, ending, not running) and, when that needs saying, "reason"."""
    if not dispatcher_running:
        reason = "the dispatcher is not running"
        if process_alive:
            reason += f"; its process {gate.pid} is still alive, and the next run ends it"
        return {"state": "not running", "reason": reason}
    if gate.ending:
        return {"state": "ending", "reason": gate.ending}
    return {"state": "gating" if gate.pid else "preparing", "reason": None}


def dry_run(config: configuration.Settings, store: task_model.TaskStore, max_workers: int) -> list[dict[str, Any]]:
    """What a run would start now, and why each other ready task waits."""
    state = state_store.read_state(config)
    known: dict[str, list[str]] = {}

    def files_of(task_id: str) -> list[str]:
        if task_id not in known:
            try:
                known[task_id] = store.get(task_id).files
            except errors.TaskNotFound:
                known[task_id] = []  # deleted: the run drops its record
        return known[task_id]

    holdings = scheduler.Holdings(list(state.workers.values()), state.merge_queue, state.pending, files_of)
    limit = scheduler.waiting_limit(config.max_waiting_merges, max_workers, config.merge_gate_parallelism)
    starts_held = scheduler.why_starts_held(holdings, limit, time.time())
    plan = scheduler.plan_starts(store.ready(limit=max(50, 4 * max_workers)), holdings,
                                 max_workers - len(state.workers), config.avoid_file_overlap, starts_held)
    return [{"id": d.task.id, "title": d.task.title, "start": d.start, "reason": d.reason} for d in plan]
