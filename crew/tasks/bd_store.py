"""Tasks in beads, through the bd CLI (see docs/bd-contract.md)."""
from __future__ import annotations

import builtins  # the stores' method `list` hides the type's name in their class bodies
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from crew import errors
from crew import names
from crew import processes
from crew.tasks import model


# Dolt allows one writer at a time; beads' own tests retry these with backoff.
_BD_LOCK_ERRORS = ("one writer at a time", "database is locked", "locked by another dolt process")
_BD_RETRIES = 10
_BD_NOT_FOUND = re.compile(r"no issues? found matching", re.IGNORECASE)
# A heartbeat's answer once the claim is no longer the caller's: reclaimed, taken by another, closed.
_BD_CLAIM_GONE = re.compile(r"issue (already claimed by .*|not claimable: .*)", re.IGNORECASE)
# `update --if-assignee` whose claim is not the one named: nothing written, exit 13.
_BD_GUARD_MISMATCH = 13


class BdTaskStore:
    """Tasks in beads, through the `bd` CLI (see docs/bd-contract.md)."""

    name = "bd"

    def __init__(self, command: str, root: Path, actor: str, timeout: float = 120):
        resolved = shutil.which(command)
        if not resolved:
            raise errors.UserError(f"task_backend is \"bd\" but the bd command {command!r} was not found on PATH; "
                                   "install beads (see README) or set task_backend to \"json\"")
        self.executable, self.root, self.actor = resolved, root, actor
        # A bd that never answers (a Dolt server that takes the connection and then hangs) is ended:
        # every wait has a bound. Its write may have happened, so the call fails, never repeated.
        self.timeout = timeout
        self._merge_slot: str | None = None  # the slot bead's id, once made or found
        # npm installs bd as a .cmd wrapper on Windows: its arguments pass through cmd.exe.
        self.through_cmd = processes.IS_WINDOWS and resolved.lower().endswith((".cmd", ".bat"))

    def _call(self, *args: str, actor: str | None = None) -> Any:
        # Every call runs as the store's actor: real bd refuses to release a claim held by
        # another actor, and claims must be this dispatcher's own.
        argv = [self.executable, *args, "--actor", actor or self.actor, "--json"]
        if self.through_cmd and (bad := [a for a in args if set(a) & names.CMD_SPECIAL or "!" in a]):
            raise errors.UserError(f"bd resolves to a cmd.exe wrapper ({self.executable}) and the text {bad[0][:40]!r} "
                                   "would reach cmd.exe; set bd_command to the real bd.exe")
        env = {k: v for k, v in os.environ.items() if k != "BD_JSON_ENVELOPE"}
        delay = 0.5
        for attempt in range(_BD_RETRIES + 1):
            # Through cmd.exe, bd is a child of the wrapper: a timeout ends both.
            result = processes.run(*argv, cwd=self.root, check=False, env=env, error=errors.BdError,
                                   timeout=self.timeout, tree=self.through_cmd)
            if result.returncode == 0:
                return _unwrap_bd_json(result.stdout, argv)
            message = _bd_error_message(result)
            if attempt < _BD_RETRIES and any(m in message.lower() for m in _BD_LOCK_ERRORS):
                time.sleep(delay)
                delay = min(delay * 2, 8)
                continue
            error = errors.BdTaskNotFound if _BD_NOT_FOUND.search(message) else errors.BdError
            raise error(argv, result.returncode, result.stdout, result.stderr, message)
        raise AssertionError("unreachable")

    def _tasks(self, *args: str, actor: str | None = None) -> list[model.Task]:
        out = self._call(*args, actor=actor)
        return [model.Task.from_dict(item) for item in (out if isinstance(out, list) else [out])]

    def create(self, title: str, description: str = "", **fields: Any) -> model.Task:
        return self.create_many([model.NewTask(title, description, **fields)])[0]

    def create_many(self, specs: Sequence[model.NewTask]) -> list[model.Task]:
        """One `bd create` each; a failure part-way says which were created."""
        created: list[model.Task] = []
        for spec in specs:
            args = ["create", names.store_title(spec.title), "-p", str(spec.priority),
                    "-t", spec.issue_type]
            if spec.description:
                args += ["-d", names.clean_text(spec.description)]
            if labels := names.store_labels(spec.labels):
                args += ["-l", ",".join(labels)]
            if spec.deps:
                args += ["--deps", ",".join(f"{kind}:{target}" for kind, target in spec.deps)]
            try:
                created.append(self._tasks(*args)[0])
            except errors.UserError as exc:
                if not created:
                    raise
                raise model.PartialCreateError(created, exc) from exc
        return created

    def get(self, task_id: str) -> model.Task:
        tasks = self._tasks("show", task_id)
        if not tasks:
            raise errors.TaskNotFound(f"no task with id {task_id!r}")
        return tasks[0]

    def list(self, statuses: Sequence[str] | None = None) -> list[model.Task]:
        tasks = self._tasks("list", "--limit", "0", "--status", ",".join(statuses) if statuses else "all")
        return [t for t in tasks if (statuses is None or t.status in statuses) and not model.is_merge_slot(t)]

    def ready(self, limit: int | None = None) -> builtins.list[model.Task]:
        # Epics and the merge slot's bead are never work; ask for everything so a limit is not used
        # up by them.
        return [t for t in self._tasks("ready", "--limit", "0")
                if t.issue_type != "epic" and not model.is_merge_slot(t)][:limit]

    def with_label(self, label: str, statuses: Sequence[str] = ("in_progress",)) -> builtins.list[model.Task]:
        tasks = self._tasks("list", "--limit", "0", "--label", label, "--status", ",".join(statuses))
        return [t for t in tasks if t.status in statuses and label in t.labels and not model.is_merge_slot(t)]

    def claim(self, task_id: str, actor: str) -> bool:
        try:
            claimed = self._tasks("update", task_id, "--claim", actor=actor)
        except errors.BdError as exc:
            if any(words in str(exc).lower() for words in ("already claimed", "cannot claim", "not claimable")):
                return False
            raise
        return bool(claimed) and claimed[0].assignee == actor

    def heartbeat(self, task_id: str, actor: str) -> str | None:
        """Renew `actor`'s lease on its claim. None when renewed; else bd's words for why the claim
        is no longer the actor's (reclaimed, taken by another, closed or deleted)."""
        try:
            self._call("heartbeat", task_id, actor=actor)
        except errors.BdTaskNotFound:
            return f"no task {task_id} any more"
        except errors.BdError as exc:
            if gone := _BD_CLAIM_GONE.search(str(exc)):
                return gone.group(1)
            raise
        return None

    def reclaim(self, older_than_secs: float | None = None) -> builtins.list[tuple[str, str]]:
        """`bd reclaim`: leases that expired more than `older_than_secs` ago (None: bd's own grace,
        twice the lease)."""
        grace = [] if older_than_secs is None else ["--older-than", f"{max(0, round(older_than_secs))}s"]
        out = self._call("reclaim", *grace)
        taken = out.get("reclaimed") if isinstance(out, dict) else None
        return [(str(item.get("id")), str(item.get("previous_owner") or "")) for item in taken or []
                if isinstance(item, dict) and item.get("id")]

    def update_claimed(self, task_id: str, owner: str, *, metadata: Mapping[str, str] | None = None,
                       unset: Sequence[str] = (), add_labels: Sequence[str] = (),
                       remove_labels: Sequence[str] = ()) -> model.Task | None:
        """`bd update ID --set-metadata k=v ... --if-assignee OWNER`, as the store's actor."""
        changes = [*(arg for key, value in model.checked_metadata(metadata or {}, unset).items()
                     for arg in ("--set-metadata", f"{key}={value}")),
                   *(arg for key in unset for arg in ("--unset-metadata", key)),
                   *(arg for label in names.store_labels(add_labels) for arg in ("--add-label", label)),
                   *(arg for label in remove_labels for arg in ("--remove-label", label))]
        if not metadata and not unset:
            # bd's guard covers field updates only, never a label edit alone: the claim's holder,
            # set to itself, is the field that puts the label edit under the guard.
            changes += ["-a", owner]
        tasks = self._guarded(task_id, owner, *changes)
        return tasks[0] if tasks else None

    def close_claimed(self, task_id: str, owner: str, reason: str, unset: Sequence[str] = ()) -> bool:
        """`bd update ID -s closed --append-notes REASON [--unset-metadata KEY ...] --if-assignee
        OWNER`: `bd close` has no guard and refuses another actor's claim, and `update` has no close
        reason, so the reason is a note of the same one write."""
        removed = [arg for key in unset for arg in ("--unset-metadata", key)]
        return self._guarded(task_id, owner, "-s", "closed", *_append_notes(reason), *removed) is not None

    def give_up_claimed(self, task_id: str, owner: str, status: str, note: str = "") -> bool:
        """`bd update ID -s open -a "" (or -s blocked) --append-notes NOTE --if-status in_progress
        --if-assignee OWNER --actor OWNER` (bd lets only the holder unassign a claim)."""
        unassign = ["-a", ""] if status == "open" else []
        return self._guarded(task_id, owner, "-s", status, *unassign, *_append_notes(note), "--if-status",
                             "in_progress", actor=owner) is not None

    def _guarded(self, task_id: str, owner: str, *changes: str,
                 actor: str | None = None) -> builtins.list[model.Task] | None:
        """An update written only while `owner` holds the claim; None when it does not."""
        try:
            return self._tasks("update", task_id, *changes, "--if-assignee", owner, actor=actor)
        except errors.BdError as exc:
            if exc.returncode == _BD_GUARD_MISMATCH:
                return None
            raise

    def merge_slot_id(self) -> str:
        """The slot bead, made on first use: `bd merge-slot create` makes it once and then names it."""
        if self._merge_slot is None:
            try:
                out = self._call("merge-slot", "create")
            except errors.BdError:  # another host made it at the same moment: it exists now
                out = self._call("merge-slot", "check")
            if not (isinstance(out, dict) and out.get("id")):
                raise errors.BdError([self.executable, "merge-slot", "create"], 0, json.dumps(out), "",
                                     "bd merge-slot named no slot")
            self._merge_slot = str(out["id"])
        return self._merge_slot

    def take_merge_slot(self, actor: str) -> bool:
        """A claim of the slot bead (`update --claim`), which takes a lease as a task's does: bd's
        own merge slot (`merge-slot acquire`) has none, and a host that died would keep it.
        `bd merge-slot acquire` and `check` see such a claim as the slot taken."""
        return self.claim(self.merge_slot_id(), actor)

    def give_back_merge_slot(self, actor: str) -> None:
        """`bd update SLOT -s open -a "" --if-assignee ACTOR --actor ACTOR` (bd lets only the holder
        unassign a claim): `bd merge-slot release` would free a slot another actor holds."""
        self._guarded(self.merge_slot_id(), actor, "-s", "open", "-a", "", actor=actor)

    def merge_slot_holder(self) -> str | None:
        """Its claim's holder, or who took it with `bd merge-slot acquire` (the bead's metadata).
        Asking makes nothing: a slot never made has no holder (`merge-slot check` names it anyway)."""
        if self._merge_slot is None:
            found = self._call("merge-slot", "check")
            if not isinstance(found, dict) or found.get("error") or not found.get("id"):
                return None
            self._merge_slot = str(found["id"])
        slot = self.get(self._merge_slot)
        if slot.status != "in_progress":
            return None
        return slot.assignee or slot.metadata.get("holder") or None

    def release(self, task_id: str, note: str = "", actor: str | None = None) -> model.Task:
        return self._tasks("update", task_id, "-s", "open", "-a", "", *_append_notes(note),
                           actor=actor)[0]

    def set_status(self, task_id: str, status: str, note: str = "", actor: str | None = None) -> model.Task:
        return self._tasks("update", task_id, "-s", status, *_append_notes(note),
                           actor=actor)[0]

    def close(self, task_id: str, reason: str = "", force: bool = False, actor: str | None = None) -> model.Task:
        return self._tasks("close", task_id, *(["-r", names.clean_text(reason)] if reason else []),
                           *(["--force"] if force else []), actor=actor)[0]

    def reopen(self, task_id: str) -> model.Task:
        return self._tasks("reopen", task_id)[0]

    def add_dependency(self, task_id: str, depends_on: str, kind: str = "blocks") -> None:
        self._call("dep", "add", task_id, depends_on, "-t", kind)

    def add_note(self, task_id: str, text: str) -> model.Task:
        return self._tasks("update", task_id, *_append_notes(text))[0]

    def relabel(self, task_id: str, add: Sequence[str] = (), remove: Sequence[str] = (), note: str = "") -> model.Task:
        changes = [*(arg for label in add for arg in ("--add-label", label)),
                   *(arg for label in remove for arg in ("--remove-label", label))]
        return self._tasks("update", task_id, *changes, *_append_notes(note))[0]


def _append_notes(note: str) -> list[str]:
    return ["--append-notes", note] if (note := names.clean_text(note)) else []


def _unwrap_bd_json(stdout: str, argv: list[str]) -> Any:
    try:
        data = json.loads(stdout) if stdout.strip() else []
    except json.JSONDecodeError:
        raise errors.BdError(argv, 0, stdout, "", "bd printed output that is not JSON") from None
    if isinstance(data, dict) and "data" in data and "schema_version" in data:
        data = data["data"]
    return data


def _bd_error_message(result: processes.Completed) -> str:
    # The JSON error may follow a line of text ("Error updating ID: ...") in the same stream.
    for stream in (result.stdout, result.stderr):
        start = stream.find("{")
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            data = json.loads(stream[start:]) if start >= 0 else None
            if isinstance(data, dict) and data.get("error"):
                # Batch commands (update, close) put each id's own reason under "failed".
                details = [f"{f.get('id')}: {f.get('error')}" for f in data.get("failed") or [] if isinstance(f, dict)]
                return "; ".join([str(data["error"]), *details])
    # bd follows some errors with advice ("Try:\n  bd dolt start"): its own "Error:" line says more.
    lines = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
    return next((line for line in lines if line.startswith("Error: ")), lines[-1])
