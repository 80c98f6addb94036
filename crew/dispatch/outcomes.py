"""A task's fate after an attempt or a merge, applied in one place: closed, released for another
attempt (counted or not), or blocked; and the claim a dropped record held, given back."""
from __future__ import annotations

import enum

from crew import errors
from crew.dispatch import branch_push
from crew.dispatch import records
from crew.dispatch.ledger import Ledger
from crew.report.events import EventName


class MergedFate(enum.StrEnum):
    """What a merge does to its task."""

    CLOSE = "close"  # close it: the branch was its finished work
    SETTLE = "settle"  # it is closed already: only record it merged
    RETRY = "retry"  # release it for another attempt (the ended worker's work may be partial)
    KEEP = "keep"  # leave it: it is no longer held for this attempt


def merged_fate(outcome: records.Outcome, status: str) -> MergedFate:
    """What becomes of a task whose branch merged, given what its request asked and its status now."""
    if outcome == records.Outcome.CLOSE:
        return MergedFate.SETTLE if status == "closed" else MergedFate.CLOSE
    return MergedFate.RETRY if status == "in_progress" else MergedFate.KEEP


def close(ledger: Ledger, task_id: str, reason: str, actor: str | None = None) -> None:
    ledger.store.close(task_id, reason, actor=actor)
    ledger.event(EventName.CLOSED, task_id)


def merged(ledger: Ledger, task_id: str) -> None:
    """The task's branch is in main: its attempts are settled, and what this run said of it
    before (a branch kept when it was reopened) too."""
    ledger.summary["merged"].append(task_id)
    ledger.summary["waiting"] = [w for w in ledger.summary["waiting"] if w["id"] != task_id]
    ledger.state.attempts.pop(task_id, None)


def no_longer_ours(ledger: Ledger, task_id: str, what: str) -> None:
    """Remote mode: the task is not in progress under this host's claim any more (closed, taken
    back, another host's): the record is dropped, nothing written to the store for it, and its
    local branch kept."""
    ledger.event(EventName.RECORD_DROPPED, task_id, record=what, reason="no longer this host's")
    ledger.say(f"{task_id}: no longer in progress under this host's claim (another host or a person settled it); "
               f"dropped its {what}, nothing written to the store")


def given_up(ledger: Ledger, task_id: str, status: str, note: str, actor: str | None) -> bool:
    """Release (status "open") or block the task; in remote mode only while it is in progress under
    the claim (a compare-and-swap: another host may have closed or taken it meanwhile). False, and
    said, when it was not, and nothing was written."""
    if ledger.config.remote is None:
        if status == "open":
            ledger.store.release(task_id, note, actor=actor)
        else:
            ledger.store.set_status(task_id, status, note, actor=actor)
        return True
    if ledger.store.give_up_claimed(task_id, actor or ledger.config.actor, status, note):
        return True
    no_longer_ours(ledger, task_id, "attempt's outcome")
    return False


def block(ledger: Ledger, task_id: str, reason: str, actor: str | None = None) -> None:
    if not given_up(ledger, task_id, "blocked", reason, actor):
        return
    ledger.summary["blocked"].append({"id": task_id, "reason": reason})
    ledger.event(EventName.BLOCKED, task_id, reason=reason)
    ledger.say(f"{task_id}: blocked: {reason}")


def attempt_failed(ledger: Ledger, task_id: str, note: str, actor: str | None = None, counted: bool = True) -> None:
    """Release the task for another attempt, or block it after max_attempts. An attempt the
    user stopped is not counted. actor: whose claim it is."""
    with ledger.change():
        attempts = ledger.state.attempts.get(task_id, 0) + counted
        ledger.state.attempts[task_id] = attempts
        try:
            if counted and ledger.config.remote is not None:  # the next host to claim it counts them too
                ledger.store.update_claimed(task_id, actor or ledger.config.actor,
                                            metadata={branch_push.ATTEMPTS_KEY: str(attempts)})
            if counted and attempts >= ledger.config.max_attempts:
                block(ledger, task_id, f"{note} (after {attempts} attempts)", actor)
            else:
                if not given_up(ledger, task_id, "open", note, actor):
                    return
                ledger.summary["released"].append(task_id)
                ledger.event(EventName.RELEASED, task_id, reason=note)
                ledger.say(f"{task_id}: released for another attempt: {note[:120]}")
        except errors.TaskNotFound:
            ledger.state.attempts.pop(task_id)
            ledger.drop_record_of_gone_task(task_id, "worker's attempt")


def release_claim(ledger: Ledger, record: records.MergeRequest | records.PendingMerge, note: str) -> None:
    """Give back the claim a dropped record held, if the task is still held by it."""
    task = ledger.current_task(record.task_id, record.task_created_at)
    if task is not None and task.status == "in_progress" and task.assignee == record.actor \
            and given_up(ledger, task.id, "open", note, record.actor):
        ledger.event(EventName.RELEASED, task.id, reason=note)
        ledger.say(f"{task.id}: {note}")
