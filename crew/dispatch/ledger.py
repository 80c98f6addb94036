"""What the dispatcher writes down: its state (through the state store), the events log, the
run's summary, and a task's fate after an attempt. Only the ledger writes events."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from crew import config as configuration
from crew import errors
from crew import files
from crew.dispatch import notify
from crew.dispatch import records
from crew.dispatch import say_once
from crew.dispatch import state_store
from crew.report import events
from crew.report.events import EventName
from crew.tasks import model as task_model


def current_task(store: task_model.TaskStore, task_id: str, created_at: str) -> task_model.Task | None:
    """The task a record was made for, or None when the store no longer has it: deleted, or
    its id now names another task (created at another time)."""
    try:
        task = store.get(task_id)
    except errors.TaskNotFound:
        return None
    return task if records.same_creation(created_at, task.created_at) else None


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

    def block(self, task_id: str, reason: str, actor: str | None = None) -> None:
        self.store.set_status(task_id, "blocked", reason, actor=actor)
        self.summary["blocked"].append({"id": task_id, "reason": reason})
        self.event(EventName.BLOCKED, task_id, reason=reason)
        self.say(f"{task_id}: blocked: {reason}")

    def attempt_failed(self, task_id: str, note: str, actor: str | None = None, counted: bool = True) -> None:
        """Release the task for another attempt, or block it after max_attempts. An attempt the
        user stopped is not counted. actor: whose claim it is."""
        with self.change():
            attempts = self.state.attempts.get(task_id, 0) + counted
            self.state.attempts[task_id] = attempts
            try:
                if counted and attempts >= self.config.max_attempts:
                    self.block(task_id, f"{note} (after {attempts} attempts)", actor)
                else:
                    self.store.release(task_id, note, actor=actor)
                    self.summary["released"].append(task_id)
                    self.event(EventName.RELEASED, task_id, reason=note)
                    self.say(f"{task_id}: released for another attempt: {note[:120]}")
            except errors.TaskNotFound:
                self.state.attempts.pop(task_id)
                self.drop_record_of_gone_task(task_id, "worker's attempt")

    def current_task(self, task_id: str, created_at: str) -> task_model.Task | None:
        return current_task(self.store, task_id, created_at)

    def drop_record_of_gone_task(self, task_id: str, what: str) -> None:
        """A record refers to a task the store no longer has: drop it (the caller does) and carry on."""
        self.event(EventName.RECORD_DROPPED, task_id, record=what)
        self.say(f"{task_id}: warning: the task is no longer in the store; dropped its {what}")

    def release_claim(self, record: records.MergeRequest | records.PendingMerge, note: str) -> None:
        """Give back the claim a dropped record held, if the task is still held by it."""
        task = self.current_task(record.task_id, record.task_created_at)
        if task is not None and task.status == "in_progress" and task.assignee == record.actor:
            self.store.release(task.id, note, actor=record.actor)
            self.event(EventName.RELEASED, task.id, reason=note)
            self.say(f"{task.id}: {note}")
