"""What the dispatcher writes down: its state (through the state store), the events log and the
run's summary (a task's fate after an attempt is outcomes.py's). Only the ledger writes events."""
from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from typing import Any

from crew import config as configuration
from crew import errors
from crew import files
from crew.dispatch import notify
from crew.dispatch import records
from crew.dispatch import say_once
from crew.dispatch import state_store
from crew.dispatch import store_thread
from crew.report import events
from crew.report.events import EventName
from crew.tasks import model as task_model


# A store write's steps (each a call of its own), and what the loop does once they are all done.
StoreStep = Callable[[task_model.TaskStore], Any]
Written = Callable[[list[concurrent.futures.Future[Any]]], None]


def current_task(store: task_model.TaskStore, task_id: str, created_at: str) -> task_model.Task | None:
    """The task a record was made for, or None when the store no longer has it: deleted, or
    its id now names another task (created at another time)."""
    try:
        task = store.get(task_id)
    except errors.TaskNotFound:
        return None
    return task if records.same_creation(created_at, task.created_at) else None


def raise_failed(futures: list[concurrent.futures.Future[Any]]) -> None:
    """What follows store writes that need nothing more: an error among them is raised, as a call's would be."""
    for future in futures:
        future.result()


class Ledger:
    """The state of one dispatcher (`state`), saved as it changes, and this run's summary."""

    def __init__(self, config: configuration.Settings, store: task_model.TaskStore, say: Callable[[str], None]):
        self.config, self.store, self.say = config, store, say
        self.logs = config.root / events.LOGS_DIR
        self.states = state_store.StateStore(config)
        self.state = self.states.state
        self.change = self.states.change  # the one way to change the state: it saves what changed
        # Task ids merged and released; {"id", "reason"} of those blocked, and of those waiting.
        self.summary: dict[str, list[Any]] = {"merged": [], "released": [], "blocked": [], "waiting": []}
        self.say_once = say_once.SayOnce(say)
        self.notifier = notify.Notifier(config, self.notify_failed)
        self.event_lock = threading.Lock()  # notifiers report their failures from their own threads
        # The store writes handed to the store thread, in order, each with what follows it on the loop.
        self.writes: list[tuple[list[concurrent.futures.Future[Any]], Written]] = []

    def event(self, name: EventName, task_id: str | None = None, **fields: Any) -> None:
        """One line of .dispatch_logs/events.jsonl; README lists every event and its fields. A person
        is told of those that need one (notify_command)."""
        event = {"v": events.EVENTS_FORMAT, "ts": files.now_iso(), "event": name, "task_id": task_id, **fields}
        line = files.json_text(event)
        path = self.logs / events.EVENTS_FILE
        with self.event_lock:
            self.logs.mkdir(exist_ok=True)
            if events.ends_mid_line(path):
                line = "\n" + line  # a crash mid-write left a partial line: keep this one whole
            files.append_text(path, line + "\n")
        self.notifier.consider(event)

    def notify_failed(self, event: dict[str, Any], reason: str) -> None:
        self.event(EventName.NOTIFY_FAILED, event.get("task_id"), notice=event.get("event"), reason=reason)
        self.say(f"notify_command failed for {event.get('event')}: {reason[:200]}")

    def drop_request(self, request: records.MergeRequest) -> None:
        """Take a branch's request out of the merge queue."""
        with self.change():
            self.state.merge_queue = [r for r in self.state.merge_queue if r.branch != request.branch]

    def store_later(self, steps: Sequence[StoreStep], then: Written) -> None:
        """The store writes an event makes, handed to the store thread (the loop never waits for
        a store that is slow or cannot be reached), each step a call of its own, so that one tried
        again is tried alone and those before it are not made twice; then(their futures, which may
        hold errors) runs on the loop once all are done (writes_done), in the order handed over.
        The caller keeps the record the writes settle in the state until then: a restart makes
        them again. On a plain store (no loop) they are done, and then() run, before this returns."""
        futures = [store_thread.hand_over(self.store, step) for step in steps]
        if not self.writes and all(future.done() for future in futures):
            then(futures)
        else:
            self.writes.append((futures, then))

    def writes_done(self) -> bool:
        """Follow each store write that is done, in the order handed over; True if any was."""
        followed = False
        while self.writes and all(future.done() for future in self.writes[0][0]):
            futures, then = self.writes.pop(0)
            then(futures)
            followed = True
        return followed

    def current_task(self, task_id: str, created_at: str) -> task_model.Task | None:
        return current_task(self.store, task_id, created_at)

    def drop_record_of_gone_task(self, task_id: str, what: str) -> None:
        """A record refers to a task the store no longer has: drop it (the caller does) and carry on."""
        self.event(EventName.RECORD_DROPPED, task_id, record=what)
        self.say(f"{task_id}: warning: the task is no longer in the store; dropped its {what}")
