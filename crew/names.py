"""Untrusted text made safe: repository paths, titles, branch and file names, output tails for notes."""
from __future__ import annotations

import re
from pathlib import PurePosixPath

from crew import errors


# cmd.exe treats these specially; a file name with one could escape into a command line.
CMD_SPECIAL = set('&|<>^%"') | {chr(c) for c in range(32)} | {"\x7f"}


def check_repo_path(raw: str) -> str:
    """A relative file path inside the repository, normalized, or a UserError naming the problem."""
    text = raw.strip().replace("\\", "/")
    if not text:
        raise errors.UserError("empty file path")
    if bad := sorted(set(text) & CMD_SPECIAL):
        raise errors.UserError(f"file path {raw!r} contains the character {bad[0]!r}")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise errors.UserError(f"file path {raw!r} is absolute; give a path relative to the repository")
    parts = [p for p in PurePosixPath(text).parts if p != "."]
    if not parts:
        raise errors.UserError(f"file path {raw!r} names no file")
    if ".." in parts:
        raise errors.UserError(f"file path {raw!r} leaves the repository (..)")
    if parts[0].lower() == ".git":
        raise errors.UserError(f"file path {raw!r} is inside .git")
    if any(p.startswith("-") for p in parts):
        raise errors.UserError(f"file path {raw!r} begins with '-' (it would become a command-line option)")
    return "/".join(parts)


def normalize_title(title: str) -> str:
    """For duplicate detection: case and whitespace folded."""
    return " ".join(title.split()).casefold()


def cut_at_word(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0]
    return (cut if len(cut) >= limit // 2 else text[:limit]).rstrip()


def one_line_tail(text: str, lines: int = 5, limit: int = 400) -> str:
    """The end of a command's output (an agent's log, a gate's output) as one line of a task's
    note: its last non-blank lines joined by " | ", cut to `limit` characters. One line a note, so
    the next attempt's message quotes each note as one item, and no line of that output starts a
    line of the message (where it could pass for the task's own text)."""
    return " | ".join([line for line in text.splitlines() if line.strip()][-lines:])[-limit:]


def branch_name(template: str, task_id: str) -> str:
    """The template with the task id, made a valid ref name whatever the id contains."""
    name = template.replace("{task_id}", task_id)
    name = re.sub(r"[^A-Za-z0-9._/-]+", "-", name)
    name = re.sub(r"\.{2,}|/{2,}|@\{", "-", name).strip("/.-")
    return re.sub(r"\.lock$", "-lock", name) or "work"


def file_name(task_id: str) -> str:
    """A task id as one safe file or folder name (ids come from stores that users edit by hand)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", task_id).strip(".-") or "task"
