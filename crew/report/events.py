"""The events log (.dispatch_logs/events.jsonl): its format, and reading it."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path

from crew import errors


EVENTS_FORMAT = 1  # the "v" field of every event; raise it when a field changes meaning
LOGS_DIR = ".dispatch_logs"
EVENTS_FILE = "events.jsonl"


@dataclasses.dataclass
class Event:
    at: float  # seconds since the epoch
    name: str
    task_id: str | None
    fields: dict

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
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)).timestamp()
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


def read_events(path: Path) -> tuple[list[Event], int]:
    """The events in the order written, and how many lines could not be read."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise errors.UserError(f"cannot read the events log {path}: {exc.strerror or exc}") from None
    events, skipped = [], 0
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        event = parse_event(line)
        if event is None:
            skipped += 1
        else:
            events.append(event)
    return events, skipped
