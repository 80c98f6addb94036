"""The printing boundary: text from agents, tasks or checks made safe for a terminal, and JSON output."""
from __future__ import annotations

from typing import Any, TextIO

from crew import files
from crew import names


def show(text: str, file: TextIO | None = None, multiline: bool = False, flush: bool = False) -> None:
    """Print a line that may hold text from agents, tasks or checks: the printing boundary, where
    what a terminal would act on (escape sequences, NUL, other control characters) is shown as
    escapes instead. multiline keeps newlines and tabs."""
    print(names.for_terminal(text, multiline), file=file, flush=flush)


def print_json(data: Any) -> None:
    print(files.json_text(data, indent=2))
