"""The embedded store: task_queue.json."""
from __future__ import annotations

import builtins  # the stores' method `list` hides the type's name in their class bodies
import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from crew import errors
from crew import files
from crew import names
from crew.tasks import model


ID_COUNTER = "id_counter"  # task_queue.json: the highest id number ever given
MERGE_SLOT = "merge_slot_holder"  # task_queue.json: the actor holding the merge slot, if one does
# A task of task_queue.json, or the whole file: hand-written files are checked key by key
# (_normalize_entry), so their values are whatever JSON holds until then.
JsonObject = dict[str, Any]


def _open_blockers(entry: JsonObject, by_id: dict[str, JsonObject]) -> list[str]:
    """The tasks that block this one and are not closed (a dangling reference never blocks:
    it could never be closed)."""
    return [dep["depends_on_id"] for dep in entry.get("dependencies") or ()
            if dep.get("type", "blocks") in model.BLOCKING_DEP_TYPES and dep.get("depends_on_id") in by_id
            and by_id[dep["depends_on_id"]].get("status", "open") != "closed"]


def _normalize_entry(entry: JsonObject) -> str | None:
    """Bring a hand-written task to the normal form the store writes (README, "task_queue.json"):
    null means "not given", a priority may be a digit in a string, a dependency may be a bare id.
    Returns what cannot be read that way."""
    for key in ("status", "priority", "created_at", "dependencies"):
        if key in entry and entry[key] is None:
            del entry[key]
    priority = entry.get("priority", 2)
    if isinstance(priority, str) and priority.strip() in ("0", "1", "2", "3", "4"):
        entry["priority"] = priority = int(priority)
    if not (type(priority) is int and 0 <= priority <= 4):
        return f"\"priority\" must be 0-4 (0 highest), got {json.dumps(priority)}"
    for key in ("status", "created_at"):
        if not isinstance(entry.get(key, ""), str):
            return f"\"{key}\" must be a string, got {json.dumps(entry[key])}"
    deps = entry.get("dependencies", [])
    if not isinstance(deps, list):
        return f"\"dependencies\" must be a list, got {json.dumps(deps)}"
    for i, given in enumerate(deps):
        dep = {"depends_on_id": given, "type": "blocks"} if isinstance(given, str) else given
        deps[i] = dep
        if not (isinstance(dep, dict) and isinstance(dep.get("depends_on_id"), str)
                and isinstance(dep.get("type", "blocks"), str)):
            return f"dependency {json.dumps(dep)} must be a task id or {{\"depends_on_id\": ID, \"type\": TYPE}}"
    return None


def _dependency_cycle(entries: list[JsonObject]) -> list[str] | None:
    """A chain of blocking dependencies that comes back to where it started, if there is one."""
    waits_for = {e["id"]: [d["depends_on_id"] for d in e.get("dependencies", ()) if d.get("type", "blocks")
                           in model.BLOCKING_DEP_TYPES] for e in entries if e.get("dependencies")}
    on_path_or_done: dict[str, bool] = {}  # True while on the current chain, False once explored
    for start in waits_for:
        if start in on_path_or_done:
            continue
        path, next_deps = [start], [iter(waits_for[start])]
        on_path_or_done[start] = True
        while path:  # depth first without recursion: chains can be thousands of tasks long
            dep = next(next_deps[-1], None)
            if dep is None:
                on_path_or_done[path.pop()] = False
                next_deps.pop()
            elif on_path_or_done.get(dep):
                return [*path[path.index(dep):], dep]
            elif dep not in on_path_or_done:
                on_path_or_done[dep] = True
                path.append(dep)
                next_deps.append(iter(waits_for.get(dep, ())))
    return None


def _entry_is_ready(entry: JsonObject, by_id: dict[str, JsonObject]) -> bool:
    """bd's notion of ready: open, not an epic, no open blocker, parent not blocked."""
    if entry.get("status", "open") != "open" or entry.get("issue_type") == "epic":
        return False
    if _open_blockers(entry, by_id):
        return False
    return not any(dep.get("type") == "parent-child" and dep.get("depends_on_id") in by_id
                   and by_id[dep["depends_on_id"]].get("status", "open") in ("blocked", "deferred")
                   for dep in entry.get("dependencies") or ())


StatKey = tuple[int, int, int]  # a file's mtime (ns), size and inode


class JsonTaskStore:
    """The embedded store: task_queue.json, changed only under its lock by atomic replace."""

    name = "json"

    def __init__(self, path: Path, prefix: str, actor: str,
                 names_elsewhere: Callable[[], builtins.list[str]] | None = None):
        """names_elsewhere: text that may name tasks this store no longer has (the records others
        keep of its tasks, read whole: the ids are picked out here), read only to seed the ids of a
        file without its counter."""
        self.path, self.prefix, self.actor = path, prefix, actor
        self.names_elsewhere = names_elsewhere or builtins.list
        self.lock_path = path.with_name(path.name + ".lock")
        # The parsed file and the stat it was read at: parsing 10,000 tasks costs more than
        # anything else, and os.replace gives every new version a new inode, so a stat that
        # still matches means nobody has written since.
        self._cache: tuple[StatKey | None, JsonObject] | None = None
        # The cache is shared by the threads of one process (the dispatcher's store thread and
        # its loop); the file lock orders processes.
        self._threads = threading.RLock()

    def _stat_key(self) -> StatKey | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> JsonObject:
        key = self._stat_key()
        if key is not None and self._cache and self._cache[0] == key:
            return self._cache[1]
        data = files.read_json_file(self.path, {"tasks": []})
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
            raise errors.UserError(f"{self.path} is corrupt: expected an object with a \"tasks\" list; "
                                   "fix or move it (it was left untouched)")
        seen = set()
        for i, entry in enumerate(data["tasks"]):
            if not (isinstance(entry, dict) and isinstance(entry.get("id"), str)
                    and isinstance(entry.get("title"), str)):
                raise errors.UserError(f"{self.path} is corrupt: task #{i + 1} needs a string \"id\" and \"title\"; "
                                       "fix or move it (it was left untouched)")
            problem = "two tasks have this id" if entry["id"] in seen else _normalize_entry(entry)
            if problem:
                raise errors.UserError(f"{self.path}: task {entry['id']}: {problem}; "
                                       "fix it (the file was left untouched)")
            seen.add(entry["id"])
        if cycle := _dependency_cycle(data["tasks"]):
            raise errors.UserError(f"{self.path}: task {cycle[0]} waits for itself through the dependency cycle "
                                   f"{' -> '.join(cycle)}, so none of them could ever run; remove one of those "
                                   "dependencies (the file was left untouched)")
        self._cache = (key, data) if key else None
        return data

    def _save(self, data: JsonObject) -> None:
        text = files.json_text(data)
        # One task a line, so the file stays readable and diffable. `}, {"id"` cannot occur
        # inside a JSON string (its quotes would be escaped), so this only splits between tasks.
        text = text.replace('"tasks": [{"id"', '"tasks": [\n{"id"').replace('}, {"id"', '},\n{"id"')
        files.atomic_write_text(self.path, text + "\n")
        self._cache = (self._stat_key(), data)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[JsonObject]:
        """The whole file ("tasks", and the id counter), saved when the block ends without error."""
        with self._threads, files.locked(self.lock_path, "task queue"):
            data = self._load()
            try:
                yield data
            except BaseException:
                self._cache = None  # the entries may be half-changed: read the file again
                raise
            self._save(data)

    def _entries(self) -> list[JsonObject]:
        if not self.path.exists():  # no lock file left behind in a repository the toolkit never wrote to
            return []
        with self._threads, files.locked(self.lock_path, "task queue"):
            tasks: list[JsonObject] = self._load()["tasks"]  # a list, as _load checks
            return tasks

    @staticmethod
    def _find(entries: list[JsonObject], task_id: str) -> JsonObject:
        for entry in entries:
            if entry["id"] == task_id:
                return entry
        raise errors.TaskNotFound(f"no task with id {task_id!r}")

    def _update(self, task_id: str, note: str = "", **changes: Any) -> model.Task:
        with self._transaction() as data:
            return self._change(self._find(data["tasks"], task_id), note, **changes)

    @staticmethod
    def _change(entry: JsonObject, note: str = "", **changes: Any) -> model.Task:
        entry.update(changes, updated_at=files.now_iso())
        if note := names.clean_text(note):
            entry["notes"] = f"{entry['notes']}\n{note}" if entry.get("notes") else note
        return model.Task.from_dict(entry)

    # The TaskStore protocol (crew.tasks.model), as BdTaskStore offers it.
    def create(self, title: str, description: str = "", **fields: Any) -> model.Task:
        return self.create_many([model.NewTask(title, description, **fields)])[0]

    def create_many(self, specs: Sequence[model.NewTask]) -> list[model.Task]:
        """All or nothing: one transaction."""
        with self._transaction() as data:
            entries = data["tasks"]
            highest = self._highest_id_number(data)
            stamp, created = files.now_iso(), []
            for spec in specs:
                highest += 1
                task = model.Task(id=f"{self.prefix}-{highest}", title=names.store_title(spec.title),
                                  description=names.clean_text(spec.description),
                                  priority=spec.priority, issue_type=spec.issue_type,
                                  labels=names.store_labels(spec.labels), created_at=stamp, updated_at=stamp)
                for kind, target in spec.deps:
                    other = self._find(entries, target)
                    if kind == "blocks":
                        other.setdefault("dependencies", []).append({"depends_on_id": task.id, "type": "blocks"})
                    else:
                        task.dependencies.append({"depends_on_id": target,
                                                  "type": "blocks" if kind == "blocked-by" else kind})
                entries.append({k: v for k, v in task.to_dict().items() if v not in ("", [], {}, None)})
                created.append(task)
            data[ID_COUNTER] = highest
            return created

    def _highest_id_number(self, data: JsonObject) -> int:
        """The highest id number ever given. It never goes down, so a deleted task's id never
        comes back: a new task with it would inherit the old one's branch, records and merges.
        A file without the counter (older, or written by hand) starts past every id in use in
        the store and in names_elsewhere."""
        pattern = re.compile(re.escape(self.prefix) + r"-(\d+)(?!\d)")
        texts, counter = [e["id"] for e in data["tasks"]], data.get(ID_COUNTER)
        if type(counter) is not int:
            texts, counter = texts + self.names_elsewhere(), 0
        return max([int(n) for text in texts for n in pattern.findall(text)] + [counter])

    def get(self, task_id: str) -> model.Task:
        return model.Task.from_dict(self._find(self._entries(), task_id))

    def list(self, statuses: Sequence[str] | None = None) -> list[model.Task]:
        return [model.Task.from_dict(e) for e in self._entries()
                if statuses is None or e.get("status", "open") in statuses]

    def ready(self, limit: int | None = None) -> builtins.list[model.Task]:
        entries = self._entries()
        by_id = {e["id"]: e for e in entries}
        ready = sorted((e for e in entries if _entry_is_ready(e, by_id)),
                       key=lambda e: (e.get("priority", 2), e.get("created_at", ""), e["id"]))
        return [model.Task.from_dict(e) for e in ready[:limit]]

    def claim(self, task_id: str, actor: str) -> bool:
        with self._transaction() as data:
            entries = data["tasks"]
            entry = self._find(entries, task_id)
            if entry.get("status", "open") != "open" or entry.get("assignee") not in (None, "", actor):
                return False
            entry.update(status="in_progress", assignee=actor, updated_at=files.now_iso())
            return True

    def heartbeat(self, task_id: str, actor: str) -> str | None:
        """A claim here has no lease (one machine, one dispatcher): nothing to renew, never lost."""
        return None

    def reclaim(self, older_than_secs: float | None = None) -> builtins.list[tuple[str, str]]:
        return []

    def update_claimed(self, task_id: str, owner: str, *, metadata: Mapping[str, str] | None = None,
                       unset: Sequence[str] = (), add_labels: Sequence[str] = (),
                       remove_labels: Sequence[str] = ()) -> model.Task | None:
        changes = model.checked_metadata(metadata or {}, unset)
        with self._transaction() as data:
            entry = self._find(data["tasks"], task_id)
            if (entry.get("assignee") or "") != owner:
                return None
            kept = {k: v for k, v in model.Task.from_dict(entry).metadata.items() if k not in unset}
            labels = [label for label in entry.get("labels") or [] if label not in remove_labels]
            added = [label for label in dict.fromkeys(names.store_labels(add_labels)) if label not in labels]
            return self._change(entry, metadata={**kept, **changes}, labels=labels + added)

    def close_claimed(self, task_id: str, owner: str, reason: str, unset: Sequence[str] = ()) -> bool:
        """As bd's guarded update closes: the reason is a note, the assignee stays."""
        with self._transaction() as data:
            entries = data["tasks"]
            entry = self._find(entries, task_id)
            if (entry.get("assignee") or "") != owner:
                return False
            self._refuse_open_blockers(entry, entries)
            kept = {k: v for k, v in model.Task.from_dict(entry).metadata.items() if k not in unset}
            self._change(entry, reason, status="closed", closed_at=files.now_iso(), metadata=kept)
            return True

    def give_up_claimed(self, task_id: str, owner: str, status: str, note: str = "") -> bool:
        with self._transaction() as data:
            entry = self._find(data["tasks"], task_id)
            if entry.get("status", "open") != "in_progress" or (entry.get("assignee") or "") != owner:
                return False
            self._change(entry, note, status=status, **({"assignee": ""} if status == "open" else {}))
            return True

    def with_label(self, label: str, statuses: Sequence[str] = ("in_progress",)) -> builtins.list[model.Task]:
        return [model.Task.from_dict(e) for e in self._entries()
                if e.get("status", "open") in statuses and label in (e.get("labels") or ())]

    def merge_slot_id(self) -> str:
        """No task holds it here: the file records its holder (MERGE_SLOT), and no lease lapses."""
        return f"{self.prefix}-merge-slot"

    def take_merge_slot(self, actor: str) -> bool:
        with self._transaction() as data:
            if data.get(MERGE_SLOT) not in (None, actor):
                return False
            data[MERGE_SLOT] = actor
            return True

    def give_back_merge_slot(self, actor: str) -> None:
        with self._transaction() as data:
            if data.get(MERGE_SLOT) == actor:
                del data[MERGE_SLOT]

    def merge_slot_holder(self) -> str | None:
        if not self.path.exists():
            return None
        with self._threads, files.locked(self.lock_path, "task queue"):
            holder = self._load().get(MERGE_SLOT)
            return holder if isinstance(holder, str) and holder else None

    def release(self, task_id: str, note: str = "", actor: str | None = None) -> model.Task:
        """Refused, as bd refuses it, while another actor holds the task: only its holder (`actor`,
        else the store's) gives a claim back. Closing is not refused: a person may close any task."""
        with self._transaction() as data:
            entry = self._find(data["tasks"], task_id)
            holder = entry.get("assignee") or ""
            if entry.get("status", "open") == "in_progress" and holder not in ("", actor or self.actor):
                raise errors.UserError(f"cannot release {task_id}: held by {holder!r}")
            return self._change(entry, note, status="open", assignee="")

    def set_status(self, task_id: str, status: str, note: str = "", actor: str | None = None) -> model.Task:
        return self._update(task_id, note, status=status)

    def close(self, task_id: str, reason: str = "", force: bool = False, actor: str | None = None) -> model.Task:
        with self._transaction() as data:
            entries = data["tasks"]
            entry = self._find(entries, task_id)
            if not force:
                self._refuse_open_blockers(entry, entries)
            entry.update(status="closed", closed_at=files.now_iso(), close_reason=names.clean_text(reason),
                         updated_at=files.now_iso())
            return model.Task.from_dict(entry)

    @staticmethod
    def _refuse_open_blockers(entry: JsonObject, entries: builtins.list[JsonObject]) -> None:
        if blockers := _open_blockers(entry, {e["id"]: e for e in entries}):
            raise errors.UserError(f"cannot close {entry['id']}: it is blocked by open tasks {', '.join(blockers)} "
                                   "(use --force to close it anyway)")

    def reopen(self, task_id: str) -> model.Task:
        return self._update(task_id, status="open", closed_at="", close_reason="", assignee="")

    def add_dependency(self, task_id: str, depends_on: str, kind: str = "blocks") -> None:
        with self._transaction() as data:
            entries = data["tasks"]
            self._find(entries, depends_on)
            entry = self._find(entries, task_id)
            deps = entry.setdefault("dependencies", [])
            if not any(d.get("depends_on_id") == depends_on and d.get("type") == kind for d in deps):
                deps.append({"depends_on_id": depends_on, "type": kind})
                if cycle := _dependency_cycle(entries):
                    raise errors.UserError(f"{task_id} cannot wait for {depends_on}: that makes the cycle "
                                           f"{' -> '.join(cycle)}, and none of them could ever run")

    def add_note(self, task_id: str, text: str) -> model.Task:
        return self._update(task_id, text)

    def relabel(self, task_id: str, add: Sequence[str] = (), remove: Sequence[str] = (), note: str = "") -> model.Task:
        with self._transaction() as data:
            entry = self._find(data["tasks"], task_id)
            labels = [label for label in entry.get("labels") or [] if label not in remove]
            return self._change(entry, note, labels=labels + [label for label in add if label not in labels])
