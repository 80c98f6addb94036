"""The toolkit's own files in a repository: their names, and keeping them out of `git status`."""
from __future__ import annotations

import contextlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from crew import files
from crew import git


if TYPE_CHECKING:
    from crew import config as configuration


DISPATCH_STATE_FILES = (".dispatch_state.json", ".dispatch_pending_merge_retries.json")


def exclude_toolkit_files(config: configuration.Settings) -> None:
    """Keep the toolkit's files out of `git status` for every worktree (never edits .gitignore)."""
    names = [config.task_queue_file, config.task_queue_file + ".lock", config.suggested_tasks_file,
             config.suggested_tasks_file + ".ingesting", rejected_suggestions_name(config.suggested_tasks_file),
             ".dispatch.lock", ".dispatch_*", ".current_task.txt", ".aider*"]
    # The temp files that atomic_write_text writes beside the state files, for a moment.
    names += [files.temp_file_name(n, "*") for n in (config.task_queue_file, ".dispatch_*")]
    patterns = ["/" + n if "/" not in n.strip("/") and not n.startswith(".") else n for n in names]
    exclude = config.root / ".git" / "info" / "exclude"
    existing = exclude.read_text(encoding="utf-8").splitlines() if exclude.exists() else []
    missing = [p for p in patterns if p not in existing]
    if missing:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with files.locked(exclude.with_name("exclude.dispatch.lock"), "git exclude file"):
            existing = exclude.read_text(encoding="utf-8").splitlines() if exclude.exists() else []
            heading = ["# dispatch toolkit files"] * (not existing or existing[-1] != "# dispatch toolkit files")
            lines = existing + heading + [p for p in patterns if p not in existing]
            files.atomic_write_text(exclude, "\n".join(lines) + "\n")


def rejected_suggestions_name(suggested: str) -> str:
    path = PurePosixPath(suggested)
    return str(path.with_name(f"{path.stem}.rejected{path.suffix or '.txt'}"))


def ids_outside_the_store(root: Path) -> list[str]:
    """Text that may name tasks the store no longer has: the dispatcher's state files and the
    repository's branch names (read whole; a caller picks the ids out)."""
    texts = [git.git("for-each-ref", "--format=%(refname)", "refs/heads", cwd=root, check=False).stdout]
    for name in DISPATCH_STATE_FILES:
        with contextlib.suppress(OSError):
            texts.append((root / name).read_text(encoding="utf-8", errors="replace"))
    return texts
