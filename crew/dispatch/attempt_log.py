"""What an attempt's log tells the next attempt: its last lines, and why an agent whose reply held
code changed nothing. Only a bounded head and tail of a log are ever read: an agent stuck in a
loop can write gigabytes."""
from __future__ import annotations

import re
from pathlib import Path

from crew import logs
from crew import names as safe_names


HEAD_BYTES = 16384  # Aider names its model and edit format in its first lines
TAIL_CHARS = 8192  # ample for a note's 400 characters and the last reply

# Aider prints e.g. "Model: ollama_chat/qwen2.5-coder:1.5b with whole edit format" at start.
EDIT_FORMAT_LINE = re.compile(r"^Model: \S+ with ([A-Za-z0-9_-]+) edit format", re.MULTILINE)
FENCE_LINE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)
# After a reply it could not apply, Aider prints this line, a link, then its reason.
NOT_CONFORMING = "The LLM did not conform to the edit format."
REASON_LIMIT = 160

NO_EDIT = "your reply held a code block but no edit was applied"
# What each of Aider's edit formats wants, said the way a small model most often gets it wrong.
EDIT_FORMAT_ADVICE = {
    "whole": "Aider's whole edit format wants the file's path alone on the line before the fence, "
             "not inside it, then the file's whole new content in the fence",
    "diff": "Aider's diff edit format wants the file's path alone on the line before the fence, then in "
            "the fence <<<<<<< SEARCH, lines copied exactly from the file, =======, their replacement, "
            ">>>>>>> REPLACE",
    "diff-fenced": "Aider's diff-fenced edit format wants the file's path as the first line inside the "
                   "fence, then <<<<<<< SEARCH, lines copied exactly from the file, =======, their "
                   "replacement, >>>>>>> REPLACE",
    "udiff": "Aider's udiff edit format wants a unified diff in the fence: --- and +++ lines naming the "
             "file, then @@ hunks whose context lines match the file exactly",
}
UNKNOWN_AGENT_ADVICE = "write the changes into the files themselves"


def read_head(path: Path, limit: int = HEAD_BYTES) -> str:
    try:
        with open(path, "rb") as log:
            return log.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_tail(path: Path, limit: int = TAIL_CHARS) -> str | None:
    """The log's last `limit` characters; None when it cannot be read."""
    try:
        return logs.read_tail(path, limit)
    except OSError:
        return None


def tail_line(path: Path) -> str:
    """The end of the attempt's log as one line of its note (and so of the next attempt's message)."""
    text = read_tail(path)
    if text is None:
        return "(no log)"
    return safe_names.one_line_tail(text) or "(empty log)"


def why_no_edit(head: str, tail: str) -> str | None:
    """Why an attempt that changed nothing did so, when its log shows a reply with code in it:
    the edit format the agent named (Aider names it in its first lines) and what that format
    wants, with the agent's own complaint if it made one. None when the log shows no code."""
    if not FENCE_LINE.search(tail):
        return None
    named = EDIT_FORMAT_LINE.search(head)
    if named is None:
        return f"{NO_EDIT}: {UNKNOWN_AGENT_ADVICE}"
    edit_format = named.group(1)
    advice = EDIT_FORMAT_ADVICE.get(edit_format, f"Aider's {edit_format} edit format did not accept it")
    reason = aider_reason(tail)
    return f"{NO_EDIT}: {advice}" + (f" (Aider said: {reason})" if reason else "")


def aider_reason(tail: str) -> str:
    """The reason Aider gave last for refusing a reply: the first line after its complaint that is
    neither blank nor a link; "" when it gave none."""
    lines = tail.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == NOT_CONFORMING]
    if not starts:
        return ""
    for line in lines[starts[-1] + 1:]:
        if line.strip() and not line.strip().startswith(("http://", "https://")):
            return safe_names.cut_at_word(line, REASON_LIMIT)
    return ""


def no_edit_hint(path: Path) -> str:
    """why_no_edit for the log at `path`, as the start of a note ("" when there is nothing to say)."""
    tail = read_tail(path)
    hint = why_no_edit(read_head(path), tail) if tail else None
    return f"{hint}; " if hint else ""
