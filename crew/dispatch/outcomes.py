"""A task's fate after an attempt or a merge, applied in one place: closed, released for another
attempt (counted or not), or blocked; and the claim a dropped record held, given back."""
from __future__ import annotations

import concurrent.futures
import enum
from collections.abc import Callable
from typing import Any

from crew import config as configuration
from crew import errors
from crew.dispatch import branch_push
from crew.dispatch import records
from crew.dispatch import store_thread
from crew.dispatch.ledger import Ledger
from crew.dispatch.ledger import StoreStep
from crew.dispatch.ledger import raise_failed
from crew.report.events import EventName
from crew.tasks import model as task_model


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


def close(ledger: Ledger, task_id: str, reason: str, actor: str | None = None,
          then: Callable[[], None] | None = None) -> None:
    """Close the task. With `then`, as attempt_failed's: the close goes through the store thread,
    and is told, and then() run, on the loop once it is written."""
    def closed(futures: list[concurrent.futures.Future[Any]]) -> None:
        raise_failed(futures)
        ledger.event(EventName.CLOSED, task_id)
        if then is not None:
            then()
    def step(store: task_model.TaskStore) -> task_model.Task:
        return store.close(task_id, reason, actor=actor)
    if then is None:
        closed([store_thread.hand_over(ledger.store, step)])
    else:
        ledger.store_later([step], closed)


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


def give_up(store: task_model.TaskStore, config: configuration.Settings, task_id: str, status: str, note: str,
            actor: str | None) -> bool:
    """The store write of given_up: False when, in remote mode, the task was no longer in progress
    under the claim, and nothing was written."""
    if config.remote is None:
        if status == "open":
            store.release(task_id, note, actor=actor)
        else:
            store.set_status(task_id, status, note, actor=actor)
        return True
    return store.give_up_claimed(task_id, actor or config.actor, status, note)


def given_up(ledger: Ledger, task_id: str, status: str, note: str, actor: str | None) -> bool:
    """Release (status "open") or block the task; in remote mode only while it is in progress under
    the claim (a compare-and-swap: another host may have closed or taken it meanwhile). False, and
    said, when it was not, and nothing was written."""
    if give_up(ledger.store, ledger.config, task_id, status, note, actor):
        return True
    no_longer_ours(ledger, task_id, "attempt's outcome")
    return False


def settled(ledger: Ledger, task_id: str, status: str, note: str, ours: bool) -> None:
    """Say what became of the task once given up (`ours`: it was still this claim's, and written)."""
    if not ours:
        no_longer_ours(ledger, task_id, "attempt's outcome")
    elif status == "blocked":
        ledger.summary["blocked"].append({"id": task_id, "reason": note})
        ledger.event(EventName.BLOCKED, task_id, reason=note)
        ledger.say(f"{task_id}: blocked: {note}")
    else:
        ledger.summary["released"].append(task_id)
        ledger.event(EventName.RELEASED, task_id, reason=note)
        ledger.say(f"{task_id}: released for another attempt: {note[:120]}")


def block(ledger: Ledger, task_id: str, reason: str, actor: str | None = None,
          then: Callable[[], None] | None = None) -> None:
    """Block the task (see given_up). With `then`, as attempt_failed's."""
    if then is not None:
        give_up_later(ledger, task_id, "blocked", reason, actor, then)
    elif given_up(ledger, task_id, "blocked", reason, actor):
        settled(ledger, task_id, "blocked", reason, True)


def attempt_failed(ledger: Ledger, task_id: str, note: str, actor: str | None = None, counted: bool = True,
                   then: Callable[[], None] | None = None) -> None:
    """Release the task for another attempt, or block it after max_attempts. An attempt the
    user stopped is not counted. actor: whose claim it is. With `then`: the store writes go
    through the store thread (a store that is slow or cannot be reached never holds up the
    loop); the attempt is counted in the state, and then() run, on the loop once they are done,
    in one change: the caller drops its record there, so that a restart before it finds the
    record and judges the attempt again, counted once."""
    attempts = ledger.state.attempts.get(task_id, 0) + counted
    status = "blocked" if counted and attempts >= ledger.config.max_attempts else "open"
    if status == "blocked":
        note = f"{note} (after {attempts} attempts)"
    give_up_later(ledger, task_id, status, note, actor, then, attempts, counted)


def give_up_later(ledger: Ledger, task_id: str, status: str, note: str, actor: str | None,
                  then: Callable[[], None] | None, attempts: int | None = None, counted: bool = False) -> None:
    """given_up's writes (and in remote mode the count of `attempts`, when a counted attempt's)
    through the store thread; once done, on the loop, in one change: the count recorded, what
    became of the task said, then(). With no `then`, done now (the caller waits for the store)."""
    config = ledger.config
    steps: list[StoreStep] = []
    if counted and config.remote is not None:  # the next host to claim it counts them too
        steps.append(lambda store: store.update_claimed(task_id, actor or config.actor,
                                                        metadata={branch_push.ATTEMPTS_KEY: str(attempts)}))
    steps.append(lambda store: give_up(store, config, task_id, status, note, actor))

    def written(futures: list[concurrent.futures.Future[Any]]) -> None:
        with ledger.change():
            if any(isinstance(future.exception(), errors.TaskNotFound) for future in futures):
                ledger.state.attempts.pop(task_id, None)
                ledger.drop_record_of_gone_task(task_id, "worker's attempt")
            else:
                ours = [future.result() for future in futures][-1]  # any other error is raised
                if attempts is not None:
                    ledger.state.attempts[task_id] = attempts
                settled(ledger, task_id, status, note, ours)
            if then is not None:
                then()
    if then is None:
        written([store_thread.hand_over(ledger.store, step) for step in steps])
    else:
        ledger.store_later(steps, written)


def release_claim(ledger: Ledger, record: records.MergeRequest | records.PendingMerge, note: str) -> None:
    """Give back the claim a dropped record held, if the task is still held by it."""
    task = ledger.current_task(record.task_id, record.task_created_at)
    if task is not None and task.status == "in_progress" and task.assignee == record.actor \
            and given_up(ledger, task.id, "open", note, record.actor):
        ledger.event(EventName.RELEASED, task.id, reason=note)
        ledger.say(f"{task.id}: {note}")
