"""The task model both stores share."""
from __future__ import annotations

import builtins  # the stores' method `list` hides the type's name in their class bodies
import dataclasses
import json
import re
import typing
from collections.abc import Mapping, Sequence

from crew import errors
from crew import names


BLOCKING_DEP_TYPES = ("blocks", "conditional-blocks", "waits-for")
FILE_LABEL = "file:"
SUGGESTION_LABEL = "suggestion:"
# A person reviews the task's branch before it lands (with the config key review = "labelled").
NEEDS_REVIEW_LABEL = "needs-review"
# What a store keeps in a task's metadata: names of lowercase letters and underscores (a name is
# one argument `--set-metadata key=value`, and never an option or a shell word).
METADATA_KEY = re.compile(r"[a-z_]+")
# The label bd gives its merge slot bead: a record of the merge slot, never work.
SLOT_LABEL = "gt:slot"


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
    # What a dispatcher records on its claim for every host to see (branch, tip, attempts).
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    lease_expires_at: str | None = None  # bd: when the claim's lease lapses, as bd prints it
    heartbeat_at: str | None = None  # bd: when its holder last renewed that lease (--status shows it)

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
            notes=data.get("notes") or "", metadata=_metadata(data.get("metadata")),
            lease_expires_at=data.get("lease_expires_at") or None, heartbeat_at=data.get("heartbeat_at") or None)

    def to_dict(self) -> dict[str, typing.Any]:
        return dataclasses.asdict(self)

    @property
    def files(self) -> list[str]:
        return [label[len(FILE_LABEL):] for label in self.labels if label.startswith(FILE_LABEL)]

    def deps_of(self, *types: str) -> list[str]:
        return [d["depends_on_id"] for d in self.dependencies if d["type"] in types]


def _metadata(raw: object) -> dict[str, str]:
    """A task's metadata as strings made safe: bd keeps any JSON a person set with `--metadata`."""
    if not isinstance(raw, dict):
        return {}
    return {names.clean_text(str(key)): names.clean_text(value if isinstance(value, str) else json.dumps(value))
            for key, value in raw.items()}


def checked_metadata(metadata: Mapping[str, str], unset: Sequence[str] = ()) -> dict[str, str]:
    """The metadata a store is asked to write, its values made safe; a key that is not a name of
    lowercase letters and underscores is refused in one line."""
    for key in [*metadata, *unset]:
        if not METADATA_KEY.fullmatch(key):
            raise errors.UserError(f"metadata key {key[:40]!r} must be lowercase letters and underscores")
    return {key: names.clean_text(value) for key, value in metadata.items()}


def is_merge_slot(task: Task) -> bool:
    return SLOT_LABEL in task.labels


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

    def reclaim(self, older_than_secs: float | None = None) -> builtins.list[tuple[str, str]]:
        """Take back the claims whose leases lapsed more than `older_than_secs` ago (None: the
        store's own grace, twice the lease): their holders stopped, the tasks are open again (their
        metadata kept). Each as (task id, its previous holder); a store with no leases takes none.
        The merge slot's claim is one of them (merge_slot_id())."""
        ...

    def update_claimed(self, task_id: str, owner: str, *, metadata: Mapping[str, str] | None = None,
                       unset: Sequence[str] = (), add_labels: Sequence[str] = (),
                       remove_labels: Sequence[str] = ()) -> Task | None:
        """Set and unset metadata and labels in one write, only while `owner` holds the claim
        (any actor may ask: a compare-and-swap on the assignee). The task as written, or None
        when the claim is not owner's, and nothing was written."""
        ...

    def close_claimed(self, task_id: str, owner: str, reason: str, unset: Sequence[str] = ()) -> bool:
        """Close the task, the reason appended to its notes and the metadata keys `unset` removed,
        in one write, only while `owner` holds the claim (any actor may ask). False when the claim
        is not owner's, and nothing was written."""
        ...

    def give_up_claimed(self, task_id: str, owner: str, status: str, note: str = "") -> bool:
        """Release the task (status "open": unassigned, for another attempt) or block it (status
        "blocked"), the note appended, only while it is in progress under `owner`'s claim: a
        compare-and-swap on the status and the assignee, as `owner`. False when it is not (closed,
        taken back, another's now), and nothing was written."""
        ...

    def with_label(self, label: str, statuses: Sequence[str] = ("in_progress",)) -> builtins.list[Task]: ...

    def merge_slot_id(self) -> str:
        """The id under which the merge slot's claim is held: its holder renews it with
        heartbeat(merge_slot_id(), actor), and reclaim takes it back once its lease lapses."""
        ...

    def take_merge_slot(self, actor: str) -> bool:
        """Take the one merge slot all hosts share, without waiting: True when `actor` holds it
        now (also when it already did), False when another actor does."""
        ...

    def give_back_merge_slot(self, actor: str) -> None:
        """Give the merge slot back if `actor` holds it; a slot taken back or held by another is
        left as it is."""
        ...

    def merge_slot_holder(self) -> str | None: ...

    def release(self, task_id: str, note: str = "", actor: str | None = None) -> Task: ...

    def set_status(self, task_id: str, status: str, note: str = "", actor: str | None = None) -> Task: ...

    def close(self, task_id: str, reason: str = "", force: bool = False, actor: str | None = None) -> Task: ...

    def reopen(self, task_id: str) -> Task: ...

    def add_dependency(self, task_id: str, depends_on: str, kind: str = "blocks") -> None: ...

    def add_note(self, task_id: str, text: str) -> Task: ...

    def relabel(self, task_id: str, add: Sequence[str] = (), remove: Sequence[str] = (), note: str = "") -> Task:
        """Add and remove labels and append a note, in one write."""
        ...
