"""Suggestion lines become tasks: parsing, duplicate detection, the crash-safe file hand-over."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

from crew import config as configuration
from crew import errors
from crew import failpoints
from crew import files as statefiles
from crew import names
from crew import workspace
from crew.tasks import model


MAX_TITLE = 200
_FROM_PREFIX = re.compile(r"^\[from:([^\]\s]+)\]\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclasses.dataclass
class Suggestion:
    text: str
    title: str
    description: str
    files: list[str]
    source_task: str | None


@dataclasses.dataclass
class IngestResult:
    created: list[str] = dataclasses.field(default_factory=list)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    plan: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self, dry_run: bool) -> dict[str, Any]:
        return {"plan" if dry_run else "created": self.plan if dry_run else self.created, "skipped": self.skipped}


def parse_suggestion(text: str) -> Suggestion:
    """One line's text into its parts; a ValueError names what is wrong with it."""
    if problem := names.task_text_problem(text, names.TEXT_LIMIT):
        raise ValueError(problem)
    if _CONTROL.search(text):
        raise ValueError("contains control characters")
    source = None
    if match := _FROM_PREFIX.match(text):
        source, text = match.group(1), text[match.end():]
    parts = [p.strip() for p in text.split(" -- ")]
    files: list[str] = []
    if len(parts) > 1 and parts[-1].lower().startswith("files:"):
        raw = parts.pop()[len("files:"):]
        try:
            files = [names.check_repo_path(f.strip()) for f in raw.split(",") if f.strip()]
        except errors.UserError as exc:
            raise ValueError(str(exc)) from None
    title, description = parts[0], " -- ".join(parts[1:])
    if not title:
        raise ValueError("has no title")
    if len(title) > MAX_TITLE or len(title.encode("utf-8")) > names.TITLE_LIMIT:  # the store's limit is in bytes
        description = title + ("\n\n" + description if description else "")
        title = names.cut_at_word(title, MAX_TITLE)
    return Suggestion(text, title, description, files, source)


class Ingester:
    """Creates tasks from suggestion lines, remembering what the store already has."""

    def __init__(self, store: model.TaskStore, dry_run: bool = False):
        self.store, self.dry_run = store, dry_run
        tasks = store.list(None)
        self.known_ids = {t.id for t in tasks}
        self.by_hash = {label[len(model.SUGGESTION_LABEL):]: t.id for t in tasks for label in t.labels
                        if label.startswith(model.SUGGESTION_LABEL)}
        self.open_titles = {names.normalize_title(t.title): t.id for t in tasks
                            if t.status in ("open", "in_progress")}
        self.result = IngestResult()
        self.pending: list[model.NewTask] = []

    def add_line(self, raw: bytes) -> bytes | None:
        """Handle one line; returns the raw bytes when the line must go to the rejected file."""
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.result.skipped.append({"line": raw.decode("utf-8", "replace").strip(),
                                        "reason": "not valid UTF-8 (moved to the rejected file)"})
            return raw
        if not text or text.startswith("#"):
            return None
        try:
            suggestion = parse_suggestion(text)
        except ValueError as exc:
            self.result.skipped.append({"line": text, "reason": f"{exc} (moved to the rejected file)"})
            return raw
        digest = suggestion_hash(text)
        if digest in self.by_hash:
            self.result.skipped.append({"line": text, "reason": f"already ingested as {self.by_hash[digest]}"})
            return None
        if existing := self.open_titles.get(names.normalize_title(suggestion.title)):
            self.result.skipped.append({"line": text, "reason": f"same title as open task {existing}"})
            return None
        self._create(suggestion, digest)
        return None

    def _create(self, suggestion: Suggestion, digest: str) -> None:
        description = suggestion.description
        deps = []
        if suggestion.source_task in self.known_ids:
            deps.append(("discovered-from", suggestion.source_task))
        elif suggestion.source_task:
            description += f"\n\n(Suggested while working on {suggestion.source_task}, which no longer exists.)"
        if suggestion.files:
            description += ("\n\n" if description else "") + "Files: " + ", ".join(suggestion.files)
        labels = [model.FILE_LABEL + f for f in suggestion.files] + [model.SUGGESTION_LABEL + digest]
        self.pending.append(model.NewTask(suggestion.title, description.strip(), labels=labels, deps=deps))
        if self.dry_run:
            self.result.plan.append({"title": suggestion.title, "description": description.strip(),
                                     "files": suggestion.files, "deps": [f"{k}:{t}" for k, t in deps]})
        self.by_hash[digest] = "(this run)"
        self.open_titles[names.normalize_title(suggestion.title)] = "(this run)"

    def flush(self) -> None:
        """Create the pending tasks, in one transaction where the store has them."""
        if self.pending and not self.dry_run:
            created = self.store.create_many(self.pending)
            self.result.created += [t.id for t in created]
            for task in created:
                for label in task.labels:
                    if label.startswith(model.SUGGESTION_LABEL):
                        self.by_hash[label[len(model.SUGGESTION_LABEL):]] = task.id
                self.open_titles[names.normalize_title(task.title)] = task.id
            failpoints.failpoint("ingest_after_create")
        self.pending = []


def _rename_aside(source: Path, target: Path) -> bool:
    """Atomically move the suggestions file aside; False when there is none."""
    for attempt in range(40):
        try:
            os.replace(source, target)
            return True
        except FileNotFoundError:
            return False
        except PermissionError:
            # Windows: a writer has it open right now; appends are short, so wait a moment.
            if attempt == 39:
                raise errors.UserError(f"{source} stays open in another program; close it and try again") from None
            time.sleep(0.05)
    return False


def _process_file(ingester: Ingester, path: Path, rejected_path: Path) -> None:
    """Every line of a renamed-aside file, then the file is removed (nothing is dropped)."""
    done = 0
    while True:
        # A writer that opened the file before the rename may still append to it: read again
        # until nothing new arrives, so a late line is handled too.
        data = path.read_bytes()
        if len(data) == done:
            break
        end = data.rfind(b"\n", done) + 1
        if end <= done:
            # Only an unterminated last line: give its writer a moment to finish it.
            time.sleep(0.05)
            if path.stat().st_size != len(data):
                continue
            end = len(data)
        rejected = [bad for raw in data[done:end].split(b"\n")
                    if (bad := ingester.add_line(raw.rstrip(b"\r"))) is not None]
        ingester.flush()
        _append_rejected(rejected_path, rejected)
        done = end
    failpoints.failpoint("ingest_before_delete")
    path.unlink()


def _append_rejected(path: Path, lines: list[bytes]) -> None:
    if not lines:
        return
    # A rerun after a crash sees the same lines again: keep the rejected file free of repeats.
    existing = set(path.read_bytes().split(b"\n")) if path.exists() else set()
    new = [line for line in lines if line not in existing]
    if new:
        with open(path, "ab") as fh:
            fh.write(b"".join(line + b"\n" for line in new))


def ingest(config: configuration.Settings, store: model.TaskStore, path: Path | None = None,
           dry_run: bool = False) -> IngestResult:
    """Ingest the suggestions file (and any leftover of a killed run) into the store."""
    path = path or config.path("suggested_tasks_file")
    ingesting = path.with_name(path.name + ".ingesting")
    rejected = path.with_name(Path(workspace.rejected_suggestions_name(path.name)).name)
    with statefiles.locked(config.root / ".dispatch_ingest.lock", "suggestion ingest"):
        ingester = Ingester(store, dry_run)
        if dry_run:
            for source in (ingesting, path):
                if source.exists():
                    for raw in source.read_bytes().split(b"\n"):
                        ingester.add_line(raw.rstrip(b"\r"))
            return ingester.result
        if ingesting.exists():
            _process_file(ingester, ingesting, rejected)
        if _rename_aside(path, ingesting):
            failpoints.failpoint("ingest_after_rename")
            _process_file(ingester, ingesting, rejected)
        return ingester.result


def suggestion_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()[:16]
