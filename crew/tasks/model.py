"""The task model both stores share."""
from __future__ import annotations

import builtins  # the stores' method `list` hides the type's name in their class bodies
import dataclasses
import typing
from collections.abc import Sequence

from crew import errors


BLOCKING_DEP_TYPES = ("blocks", "conditional-blocks", "waits-for")
FILE_LABEL = "file:"
SUGGESTION_LABEL = "suggestion:"
# A person reviews the task's branch before it lands (with the config key review = "labelled").
NEEDS_REVIEW_LABEL = "needs-review"


@dataclasses.dataclass
class Task:
    id: str
    title: str
    description: str = ""
    status: str = "open"
    priority: int = 2
    issue_type: str = "task"
    labels: list[str] = dataclasses.field(default_factory=list)
    assignee: str = ""
    dependencies: list[dict[str, str]] = dataclasses.field(default_factory=list)  # depends_on_id, type
    created_at: str = ""
    updated_at: str = ""
    closed_at: str = ""
    close_reason: str = ""
    notes: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, typing.Any]) -> Task:
        """From a task_queue.json entry or any bd output shape (list edges or show's linked issues)."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not isinstance(data.get("title"), str):
            raise ValueError("a task needs a string 'id' and 'title'")
        deps = []
        for dep in data.get("dependencies") or []:
            target = dep.get("depends_on_id") or dep.get("id")
            kind = dep.get("type") or dep.get("dependency_type") or "blocks"
            if target:
                deps.append({"depends_on_id": target, "type": kind})
        priority = data.get("priority", 2)
        return cls(
            id=data["id"], title=data["title"], description=data.get("description") or "",
            status=data.get("status") or "open",
            priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else 2,
            issue_type=data.get("issue_type") or "task", labels=list(data.get("labels") or []),
            assignee=data.get("assignee") or "", dependencies=deps,
            created_at=data.get("created_at") or "", updated_at=data.get("updated_at") or "",
            closed_at=data.get("closed_at") or "", close_reason=data.get("close_reason") or "",
            notes=data.get("notes") or "")

    def to_dict(self) -> dict[str, typing.Any]:
        return dataclasses.asdict(self)

    @property
    def files(self) -> list[str]:
        return [label[len(FILE_LABEL):] for label in self.labels if label.startswith(FILE_LABEL)]

    def deps_of(self, *types: str) -> list[str]:
        return [d["depends_on_id"] for d in self.dependencies if d["type"] in types]


@dataclasses.dataclass
class NewTask:
    """What a caller gives to create a task. `deps` are (type, id) pairs, read the way
    `bd create --deps type:id` reads them: "blocks:ID" is reversed (the new task blocks ID)."""

    title: str
    description: str = ""
    priority: int = 2
    issue_type: str = "task"
    labels: Sequence[str] = ()
    deps: Sequence[tuple[str, str]] = ()


class PartialCreateError(errors.UserError):
    """Creating several tasks failed part-way: says which were created."""

    def __init__(self, created: list[Task], cause: Exception):
        self.created = created
        ids = ", ".join(t.id for t in created) or "none"
        super().__init__(f"{cause} (tasks created before the failure: {ids})")


class TaskStore(typing.Protocol):
    """What every task store offers (JsonTaskStore, BdTaskStore). `actor` names whose claim a call
    acts for; both stores refuse to release a task another actor holds."""

    name: str  # "json" or "bd"

    def create(self, title: str, description: str = "", *, priority: int = 2, issue_type: str = "task",
               labels: Sequence[str] = (), deps: Sequence[tuple[str, str]] = ()) -> Task: ...

    def create_many(self, specs: Sequence[NewTask]) -> list[Task]: ...

    def get(self, task_id: str) -> Task: ...  # TaskNotFound when absent

    def list(self, statuses: Sequence[str] | None = None) -> list[Task]: ...

    def ready(self, limit: int | None = None) -> builtins.list[Task]: ...

    def claim(self, task_id: str, actor: str) -> bool: ...

    def heartbeat(self, task_id: str, actor: str) -> str | None:
        """Renew the lease of `actor`'s claim on the task (a store with no leases renews nothing).
        None while the claim is the actor's; else why it is not any more (reclaimed after its
        lease expired, taken by another actor, closed, deleted)."""
        ...

    def reclaim(self) -> builtins.list[tuple[str, str]]:
        """Take back the claims whose leases lapsed long ago (their holders stopped): the tasks are
        open again. Each as (task id, its previous holder); a store with no leases takes none."""
        ...

    def release(self, task_id: str, note: str = "", actor: str | None = None) -> Task: ...

    def set_status(self, task_id: str, status: str, note: str = "", actor: str | None = None) -> Task: ...

    def close(self, task_id: str, reason: str = "", force: bool = False, actor: str | None = None) -> Task: ...

    def reopen(self, task_id: str) -> Task: ...

    def add_dependency(self, task_id: str, depends_on: str, kind: str = "blocks") -> None: ...

    def add_note(self, task_id: str, text: str) -> Task: ...

    def relabel(self, task_id: str, add: Sequence[str] = (), remove: Sequence[str] = (), note: str = "") -> Task:
        """Add and remove labels and append a note, in one write."""
        ...
