"""What a dispatcher run says on the console: its progress as it goes, its summary, its exit code.
The dispatch command and the demo both print a run this way."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from crew import console
from crew.dispatch import session


def progress_printer(as_json: bool) -> Callable[[str], None]:
    """What a run says as it goes: on stdout, or on stderr when stdout is for the JSON summary."""
    def say(msg: str) -> None:
        try:
            console.show(msg, file=sys.stderr if as_json else sys.stdout, flush=True)
        except OSError:  # the terminal is gone (SIGHUP): carry on, and stop on time, without it
            session.detach_output()
    return say


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(summary)
        return
    print()
    console.show(f"merged: {', '.join(summary['merged']) or 'none'}")
    if summary["released"]:
        console.show(f"released for another attempt: {', '.join(summary['released'])}")
    for item in summary["blocked"]:
        console.show(f"blocked: {item['id']}: {item['reason']}")
    for item in summary["waiting"]:
        console.show(f"waiting: {item['id'] or '-'}: {item['reason']}")
    if summary.get("report"):
        console.show(f"report: {summary['report']}")


def exit_code(summary: dict[str, Any], interrupted: bool) -> int:
    if interrupted:
        return 130
    return 1 if summary["blocked"] or summary["waiting"] else 0
