"""The events log (.dispatch_logs/events.jsonl): its format, and reading it."""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crew import errors
from crew import logs


EVENTS_FORMAT = 1  # the "v" field of every event; raise it when a field changes meaning
LOGS_DIR = ".dispatch_logs"
EVENTS_FILE = "events.jsonl"


class EventName(enum.StrEnum):
    """Every event the dispatcher writes, in README's order (its events table lists exactly these)."""

    DISPATCHER_STARTED = "dispatcher_started"
    DISPATCHER_STOPPED = "dispatcher_stopped"
    CLAIMED = "claimed"
    WORKER_STARTED = "worker_started"
    ADOPTED = "adopted"
    WORKER_EXITED = "worker_exited"
    WORKER_TIMED_OUT = "worker_timed_out"
    WORKER_STOPPED = "worker_stopped"
    LEFT_BLOCKED = "left_blocked"
    CLAIM_LOST = "claim_lost"
    RECLAIMED = "reclaimed"
    LEFTOVER_COMMITTED = "leftover_committed"
    LEFTOVER_REFUSED = "leftover_refused"
    FOLLOWUPS_COLLECTED = "followups_collected"
    COMMITS_FOUND = "commits_found"
    NO_COMMITS = "no_commits"
    MERGE_QUEUED = "merge_queued"
    BRANCH_PUSHED = "branch_pushed"
    PUSH_REFUSED = "push_refused"
    BRANCH_CONTINUED = "branch_continued"
    MERGE_CONFLICT = "merge_conflict"
    GATE_STARTED = "gate_started"
    GATE_PASSED = "gate_passed"
    GATE_FAILED = "gate_failed"
    MAIN_CHECK_STARTED = "main_check_started"
    MAIN_CHECKED = "main_checked"
    GATE_CANCELLED = "gate_cancelled"
    CONFLICT_FILED = "conflict_filed"
    MERGED = "merged"
    MAIN_MOVED_UNDER = "main_moved_under"
    MERGED_ELSEWHERE = "merged_elsewhere"
    LOCAL_MAIN_KEPT = "local_main_kept"
    STALE_BRANCH = "stale_branch"
    CLOSED = "closed"
    ATTEMPTS_RESET = "attempts_reset"
    RELEASED = "released"
    BLOCKED = "blocked"
    BREAKER_TRIPPED = "breaker_tripped"
    RECORD_DROPPED = "record_dropped"
    EARLIER_ACTOR = "earlier_actor"
    LEFT_ALONE = "left_alone"
    MAIN_REWRITTEN = "main_rewritten"
    BRANCH_REBASED = "branch_rebased"
    BRANCH_HELD = "branch_held"
    HELD_DECIDED = "held_decided"
    REVERTED = "reverted"
    NOTIFY_FAILED = "notify_failed"
    REVIEW_AWAITED = "review_awaited"
    REVIEW_APPROVED = "review_approved"
    REVIEW_REJECTED = "review_rejected"


@dataclasses.dataclass
class Event:
    at: float  # seconds since the epoch
    name: str
    task_id: str | None
    fields: dict[str, Any]  # the event's own values, as JSON (each checked by FIELD_CHECKS as read)

    @property
    def task(self) -> str:
        """The id of the task the event is about, for an event that is about one."""
        if self.task_id is None:
            raise ValueError(f"a {self.name} event names no task")
        return self.task_id

    def get_int(self, key: str) -> int | None:
        value = self.fields.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def get_str(self, key: str) -> str | None:
        value = self.fields.get(key)
        return value if isinstance(value, str) else None

    def get_time(self, key: str) -> float | None:
        """A field that holds a time as `ts` does (ISO 8601), in seconds since the epoch."""
        value = self.fields.get(key)
        return parse_time(value) if isinstance(value, str) else None


def parse_time(text: str) -> float | None:
    """An ISO 8601 time (UTC unless it says otherwise) in seconds since the epoch; None if it is none."""
    try:
        stamp = dt.datetime.fromisoformat(text)
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).timestamp()
    except (ValueError, OverflowError):
        return None


def parse_event(line: bytes) -> Event | None:
    """One line of the log, or None when it cannot be read (a partial line after a crash)."""
    try:
        data = json.loads(line.decode("utf-8"))
        at, name, task_id = parse_time(data["ts"]), data["event"], data.get("task_id")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if at is None or not isinstance(name, str) or not (task_id is None or isinstance(task_id, str)):
        return None
    return Event(at, name, task_id, data)


def ends_mid_line(path: Path) -> bool:
    """Whether a log ends in a partial line (a crash mid-write): the next line must start afresh."""
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, os.SEEK_END) == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except FileNotFoundError:
        return False


# The values the report reads, by event, and what each must be to make sense (other events' fields
# of the same name may mean other things). An event with one that does not is skipped and
# counted, never drawn: a slot of 100,000,000 would be as many lanes.
MOST_WORKERS = 1024  # a max_workers above this is taken for a damaged line
SLOTS_UNSAID = 64  # the lanes of workers started before any dispatcher_started said max_workers
CLOCK_SLACK_SECS = 300.0  # a clock stepped back this little keeps its events, kept in order
WORKER_KINDS = ("task", "conflict", "gate")
DIFFSTAT_COUNTS = ("files", "insertions", "deletions")


def _whole(least: int, most: float = math.inf) -> Callable[[object], bool]:
    return lambda value: type(value) is int and least <= value <= most  # type(): a bool is no number


def _text(value: object) -> bool:
    return type(value) is str


def _diffstat(value: object) -> bool:
    return value is None or (type(value) is dict and all(
        type(count) is int and count >= 0 for count in map(value.get, DIFFSTAT_COUNTS, (0, 0, 0))))


FIELD_CHECKS: dict[str, dict[str, Callable[[Any], bool]]] = {
    EventName.DISPATCHER_STARTED: {"pid": _whole(1), "max_workers": _whole(1, MOST_WORKERS)},
    EventName.WORKER_STARTED: {"slot": _whole(1, MOST_WORKERS), "attempt": _whole(1), "pid": _whole(1),
                               "title": _text, "log": _text, "kind": lambda value: value in WORKER_KINDS},
    EventName.CLAIMED: {"ready_since": lambda value: type(value) is str and parse_time(value) is not None},
    EventName.MERGED: {"diffstat": _diffstat},
    EventName.GATE_FAILED: {"counts": lambda value: type(value) is bool},
    EventName.CONFLICT_FILED: {"conflict_task": _text, "title": _text,
                               "kind": lambda value: value in WORKER_KINDS},
    EventName.BLOCKED: {"reason": _text},
    EventName.LEFT_BLOCKED: {"reason": _text},
    EventName.CLAIM_LOST: {"reason": _text},
    EventName.RECLAIMED: {"previous_owner": lambda value: type(value) is str},
    EventName.RECORD_DROPPED: {"record": _text},
    EventName.BREAKER_TRIPPED: {"failures": _whole(0)},
    EventName.REVERTED: {"revert_task": _text, "reopened": lambda value: type(value) is bool},
}


def fields_make_sense(event: Event) -> bool:
    checks = FIELD_CHECKS.get(event.name)
    return checks is None or all(check(event.fields[key]) for key, check in checks.items() if key in event.fields)


class EventReader:
    """The events of a log in the order written, read a block of lines at a time (the log of a
    long history may be large), each checked for sense against its values and those before it.
    A line that cannot be read (a partial line after a crash) or makes no sense is skipped and
    counted: times go forward (within CLOCK_SLACK_SECS, and not past now), and no slot is above
    the largest max_workers seen."""

    def __init__(self, path: Path):
        self.path = path
        self.now = time.time()
        self.read = self.skipped = 0
        self.latest = float("-inf")
        self.most_workers = 0

    def __iter__(self) -> Iterator[Event]:
        try:
            for block in logs.line_blocks(self.path):
                for line in block.split(b"\n"):
                    if not line.strip():
                        continue
                    event = parse_event(line)
                    if event is None or not self.makes_sense(event):
                        self.skipped += 1
                        continue
                    self.read += 1
                    yield event
        except FileNotFoundError:
            return
        except OSError as exc:
            raise errors.UserError(f"cannot read the events log {self.path}: {exc.strerror or exc}") from None

    def makes_sense(self, event: Event) -> bool:
        if not fields_make_sense(event):
            return False
        if not self.latest - CLOCK_SLACK_SECS <= event.at <= self.now + CLOCK_SLACK_SECS:
            return False
        slot = event.get_int("slot")
        if slot is not None and slot > (self.most_workers or SLOTS_UNSAID):
            return False
        event.at = self.latest = max(event.at, self.latest)
        if event.name == EventName.DISPATCHER_STARTED:
            self.most_workers = max(self.most_workers, event.get_int("max_workers") or 0)
        return True


def read_events(path: Path) -> tuple[list[Event], int]:
    """The events in the order written, and how many lines were skipped (for a log known to be small)."""
    reader = EventReader(path)
    return list(reader), reader.skipped
