"""Untrusted text made safe: repository paths, titles, task text for the store, a commit or a
terminal, branch and file names, output tails for notes."""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

from crew import errors


# A title is one line of a list and a commit's subject: at most 500 characters, and in a store at
# most 500 bytes of UTF-8 too, since bd counts bytes (200 CJK characters are 600) and refuses more.
# A description or note reaches bd as one argument, and Linux refuses an argument over 128 KiB:
# 30,000 characters stay under it even at four UTF-8 bytes each.
TITLE_LIMIT = 500
TEXT_LIMIT = 30_000
# bd refuses a label over 255 characters; a task's file is the label `file:<path>`.
LABEL_LIMIT = 255
PATH_LIMIT = LABEL_LIMIT - len("file:")
CUT_MARK = " [...]"
LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")  # valid JSON ("\\ud83d"), but not encodable as UTF-8
# What a terminal acts on rather than shows: C0 controls, DEL, C1 controls (ESC [ is also C1's CSI).
TERMINAL_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
TERMINAL_CONTROL_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# cmd.exe treats these specially; a file name with one could escape into a command line.
CMD_SPECIAL = set('&|<>^%"') | {chr(c) for c in range(32)} | {"\x7f"}
# bd takes a task's labels as one comma-separated argument: a comma would split `file:a,b.py` in two.
LABEL_SEPARATOR = ","


def check_repo_path(raw: str) -> str:
    """A relative file path inside the repository, normalized, or a UserError naming the problem."""
    text = raw.strip().replace("\\", "/")
    if not text:
        raise errors.UserError("empty file path")
    if bad := sorted(set(text) & (CMD_SPECIAL | {LABEL_SEPARATOR})):
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
    if len(path := "/".join(parts)) > PATH_LIMIT:
        raise errors.UserError(f"file path {raw[:60]!r}... is longer than {PATH_LIMIT} characters")
    return path


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


def fenced(text: str) -> str:
    """Text quoted as a block nothing in it can end: between fences of more backticks than any
    run of backticks in it (a fence closes only on one at least as long as itself)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return "\n".join([fence, text.strip("\n"), fence])


def branch_name(template: str, task_id: str) -> str:
    """The template with the task id, made a valid ref name whatever the id contains."""
    name = template.replace("{task_id}", task_id)
    name = re.sub(r"[^A-Za-z0-9._/-]+", "-", name)
    name = re.sub(r"\.{2,}|/{2,}", "-", name)
    name = re.sub(r"(?<=/)\.", "-", name).strip("/.-")  # no part of a ref name starts with a dot
    return re.sub(r"\.lock(?=/|$)", "-lock", name) or "work"


def file_name(task_id: str) -> str:
    """A task id as one safe file or folder name (ids come from stores that users edit by hand)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", task_id).strip(".-") or "task"


def task_text_problem(text: str, limit: int) -> str | None:
    """What makes a new task's title or description unfit for the stores, as words ("contains a
    NUL byte"); None when it is fine. The commands that create tasks refuse such text; text
    already in a store is made safe where it is used (clean_text, for_terminal)."""
    if "\0" in text:
        return "contains a NUL byte"
    if LONE_SURROGATE.search(text):
        return "is not valid UTF-8"
    if len(text) > limit:
        return f"is longer than {limit:,} characters ({len(text):,})"
    return None


def title_problem(title: str) -> str | None:
    """task_text_problem for a new task's title, whose limit holds in bytes of UTF-8 too."""
    if problem := task_text_problem(title, TITLE_LIMIT):
        return problem
    if (size := len(title.encode("utf-8"))) > TITLE_LIMIT:
        return f"is longer than {TITLE_LIMIT:,} bytes of UTF-8 ({size:,})"
    return None


def clean_text(text: str, limit: int | None = TEXT_LIMIT) -> str:
    """Text fit for a store, a commit message or a file: NUL bytes removed (no command line can
    hold one), a lone surrogate replaced by U+FFFD (UTF-8 cannot encode it), cut to `limit`."""
    text = LONE_SURROGATE.sub("\ufffd", text.replace("\0", ""))
    return text if limit is None or len(text) <= limit else text[:limit - len(CUT_MARK)] + CUT_MARK


def store_title(title: str) -> str:
    """A title fit for either store: cleaned (clean_text) and at most TITLE_LIMIT bytes of UTF-8,
    cut at a character's end."""
    title = clean_text(title, None)
    if len(title.encode("utf-8")) <= TITLE_LIMIT:
        return title
    room = TITLE_LIMIT - len(CUT_MARK)
    return title.encode("utf-8")[:room].decode("utf-8", "ignore") + CUT_MARK


def store_labels(labels: Sequence[str]) -> list[str]:
    """Labels fit for either store: one bd cannot hold (a conflicted file's path, from git, over
    LABEL_LIMIT characters, which bd refuses with the whole task, or with a comma, which would
    split it) is left out."""
    return [label for label in labels if len(label) <= LABEL_LIMIT and LABEL_SEPARATOR not in label]


def clean_title(title: str) -> str:
    """A title as one safe line of at most TITLE_LIMIT characters (a commit's subject, a record),
    its control characters as escapes: `git log` prints a subject as it is, to a terminal."""
    return cut_at_word(for_terminal(" ".join(clean_text(title, None).split())), TITLE_LIMIT)


def for_terminal(text: str, multiline: bool = False) -> str:
    """Text from agents or tasks as a terminal should show it, not act on it: ESC, NUL, DEL and
    the other C0 and C1 control characters (and lone surrogates, which no terminal encoding
    holds) become `\\x1b`-style escapes. multiline keeps newlines and tabs."""
    pattern = TERMINAL_CONTROL if multiline else TERMINAL_CONTROL_ONE_LINE
    return pattern.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)
