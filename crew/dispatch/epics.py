"""Closing an epic whose subtasks are all closed: looked for at a run's start and after a merge
closed a task with a parent, never on every pass (listing every task is slow with bd)."""
from __future__ import annotations

from crew.dispatch.ledger import Ledger
from crew.report.events import EventName
from crew.tasks import model as task_model


class Epics:
    def __init__(self, ledger: Ledger, store: task_model.TaskStore):
        self.ledger, self.store = ledger, store
        self.check_due = True  # an epic closed while no dispatcher ran is found at the start

    def task_closed(self, task: task_model.Task) -> None:
        """A task was closed: its epic, if it has one, may be finished."""
        self.check_due |= bool(task.deps_of("discovered-from"))

    def close_finished(self) -> None:
        if not self.check_due:
            return
        self.check_due = False
        tasks = self.store.list(None)
        for epic in (t for t in tasks if t.issue_type == "epic" and t.status != "closed"):
            children = [t for t in tasks if epic.id in t.deps_of("discovered-from")]
            if children and all(t.status == "closed" for t in children):
                self.store.close(epic.id, "all its subtasks are closed")
                self.ledger.event(EventName.CLOSED, epic.id)
                self.ledger.say(f"{epic.id}: epic closed (all {len(children)} subtasks closed)")
