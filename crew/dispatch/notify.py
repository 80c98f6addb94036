"""A word when a person is needed: notify_command is run with one event as JSON on its stdin and
a one-line summary in place of `{summary}` in its arguments. Each notifier runs on a thread of its
own, a few at once, so a slow one never holds up the loop; past notify_timeout_secs its process
tree is ended. A notifier that fails is reported once (the event notify_failed), never retried."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from crew import config as configuration
from crew import errors
from crew import files
from crew import names
from crew import processes
from crew.report import events
from crew.report.events import EventName


RUN_ENDED = "run_ended"  # not in the events log: the notice of a run's end, with its summary and report
SUMMARY_LIMIT = 200  # characters: a desktop popup or a phone's lock screen shows about this much
AT_ONCE = 4  # notifiers running at once; a notice past that is not sent (and said so)
PLACEHOLDER = "{summary}"
OUTPUT_READ = 2000  # characters: the end of a failed notifier's output, for the reason given
# cmd.exe reads these in the arguments of a .bat or .cmd notifier: the summary never holds them.
_CMD_SAFE = str.maketrans({'"': "'", **dict.fromkeys("&|<>^%", " ")})


def wanted(event: dict[str, Any]) -> bool:
    """Whether an event is one a person is told of: something waits for them, or the run ended."""
    name = event.get("event")
    if name == EventName.MAIN_CHECKED:
        return event.get("passed") is False
    if name == EventName.CONFLICT_FILED:
        return event.get("for_person") is True
    return name in (EventName.BLOCKED, EventName.BREAKER_TRIPPED, EventName.REVIEW_AWAITED, RUN_ENDED)


def _what(event: dict[str, Any]) -> str:
    task, name = event.get("task_id"), event.get("event")
    if name == EventName.BLOCKED:
        return f"{task} blocked: {event.get('reason', '')}"
    if name == EventName.BREAKER_TRIPPED:
        return f"new workers stopped: {event.get('failures')} attempts in a row made no commits"
    if name == EventName.MAIN_CHECKED:
        return f"main fails its checks at {str(event.get('commit', ''))[:10]}; merges are held"
    if name == EventName.CONFLICT_FILED:
        return f"{task}: {event.get('conflict_task')} needs a person: {event.get('title', '')}"
    if name == EventName.REVIEW_AWAITED:
        return f"{task} waits for review: {event.get('branch', '')} (tasks.py review)"
    if name == RUN_ENDED:
        counts = ", ".join(f"{len(event.get('summary', {}).get(key, []))} {key}"
                           for key in ("merged", "blocked", "waiting"))
        return f"run ended: {counts}; report {event.get('report') or 'not written'}"
    return f"{task or ''} {name}".strip()


def summary(event: dict[str, Any], repository: str) -> str:
    """One line, fit for a command line: control bytes escaped, cmd.exe's special characters
    replaced, at most SUMMARY_LIMIT characters; it starts with "[" so no program reads it as an option."""
    text = names.for_terminal(f"[{repository}] {_what(event)}").translate(_CMD_SAFE)
    return names.cut_at_word(text, SUMMARY_LIMIT)


def command_line(command: list[str], line: str) -> list[str]:
    return [arg.replace(PLACEHOLDER, line) for arg in command]


def run_ended(summary_of_run: dict[str, Any], report: str | None, interrupted: bool) -> dict[str, Any]:
    return {"v": events.EVENTS_FORMAT, "ts": files.now_iso(), "event": RUN_ENDED, "task_id": None,
            "summary": summary_of_run, "report": report, "interrupted": interrupted}


class Notifier:
    """Runs notify_command for the events a person is told of. failed(event, reason) is called,
    from the notifier's thread, once for each notice that could not be given."""

    def __init__(self, config: configuration.Settings, failed: Callable[[dict[str, Any], str], None]):
        # Empty: no notify_command, nothing is told.
        self.command: list[str] = config.notify_command or []
        self.timeout = config.notify_timeout_secs
        self.root, self.failed = config.root, failed
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def consider(self, event: dict[str, Any]) -> None:
        """Tell of the event if it is one to tell of; never waits for the notifier."""
        if not self.command or not wanted(event):
            return
        with self.lock:
            self.threads = [thread for thread in self.threads if thread.is_alive()]
            if len(self.threads) >= AT_ONCE:
                busy = True
            else:
                busy = False
                thread = threading.Thread(target=self.give, args=(event,), name="notify", daemon=True)
                self.threads.append(thread)
                thread.start()
        if busy:
            self.failed(event, f"not sent: {AT_ONCE} notifiers were still running")

    def give(self, event: dict[str, Any]) -> None:
        """Run the notifier for one event and wait for it (on a thread of its own, or at the run's end)."""
        line = summary(event, self.root.name)
        payload = files.json_text({**event, "notice": line})
        try:
            result = processes.run_detached_output(*command_line(self.command, line), cwd=self.root, input=payload,
                                                   timeout=self.timeout, output_chars=OUTPUT_READ)
        except (errors.CommandError, OSError) as exc:
            self.failed(event, names.for_terminal(str(exc)))
            return
        if result.returncode != 0:
            said = names.one_line_tail(result.stdout, lines=3, limit=300)
            self.failed(event, f"exited with {result.returncode}" + (f": {said}" if said else ""))

    def close(self, last: dict[str, Any] | None = None) -> None:
        """At the run's end: wait for the notifiers still running (each is bounded by the timeout,
        after which its tree is ended), so `last` is told after them; then tell it here (the loop is over)."""
        with self.lock:
            running = list(self.threads)
        for thread in running:
            thread.join()
        if self.command and last is not None:
            self.give(last)
