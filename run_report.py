"""A picture of the dispatcher's runs: one self-contained HTML file made from the events log.

It reads only `.dispatch_logs/events.jsonl` and the worker logs its events name, so it can be made
at any time: while a dispatcher runs, after a crash, or long after. The page has no network
assets and no script: inline CSS and SVG, every task and log text escaped.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
import os
import re
import statistics
import time
import urllib.parse
from pathlib import Path

import common

EVENTS_FORMAT = 1  # the "v" field of every event; raise it when a field changes meaning
LOGS_DIR = ".dispatch_logs"
EVENTS_FILE = "events.jsonl"
REPORT_FILE = "report.html"

# Aider prints e.g. "Tokens: 2.1k sent, 345 received." (cache counts may sit between the two).
TOKENS_LINE = re.compile(r"Tokens:\s*([\d.]+)\s*([kKmM]?)\s+sent\b.*?([\d.]+)\s*([kKmM]?)\s+received\b")
TOKEN_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}

# What an attempt's bar is coloured by: a conflict resolver or gate fixer by its kind, others by outcome.
CATEGORIES = {
    "merged": ("merged", "#2f9e5b"),
    "released": ("released (no work merged)", "#e3a21a"),
    "blocked": ("blocked", "#d64541"),
    "timed_out": ("timed out", "#8e5ccf"),
    "stopped": ("stopped (Ctrl-C, a signal, blocked by hand)", "#5b6b82"),
    "conflict": ("conflict resolver", "#3b7fc4"),
    "gate": ("gate fixer", "#139e9e"),
    "open": ("running, or cut short by a crash", "#9aa0a6"),
}


# --------------------------------------------------------------------------------------------
# Reading the events log
# --------------------------------------------------------------------------------------------


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


def parse_event(line: bytes) -> Event | None:
    """One line of the log, or None when it cannot be read (a partial line after a crash)."""
    try:
        data = json.loads(line.decode("utf-8"))
        stamp = dt.datetime.fromisoformat(data["ts"])
        name, task_id = data["event"], data.get("task_id")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(name, str) or not (task_id is None or isinstance(task_id, str)):
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return Event(stamp.timestamp(), name, task_id, data)


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
        raise common.UserError(f"cannot read the events log {path}: {exc.strerror or exc}") from None
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


# --------------------------------------------------------------------------------------------
# The report's data model
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Tokens:
    sent: int = 0
    received: int = 0

    def __add__(self, other: "Tokens") -> "Tokens":
        return Tokens(self.sent + other.sent, self.received + other.received)


@dataclasses.dataclass
class Attempt:
    """One worker run: a bar on the timeline."""

    task_id: str
    title: str
    number: int
    slot: int
    kind: str  # "task", or "conflict" / "gate": a conflict resolver or gate fixer
    start: float
    log: Path | None
    end: float | None = None  # None: still running when the log ends, or cut short by a crash
    outcome: str = "open"  # open, queued, merged, released, blocked, resolved, lost
    ended: str = "exited"  # or "timed_out", "stopped": the dispatcher ended it
    merged_work: bool = False  # its commits reached main

    @property
    def category(self) -> str:
        if self.kind in ("conflict", "gate"):
            return self.kind
        if self.ended != "exited":
            return self.ended
        return self.outcome if self.outcome in CATEGORIES else "open"

    @property
    def duration(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - self.start)


@dataclasses.dataclass
class TaskRow:
    task_id: str
    title: str
    kind: str = "task"
    outcome: str = "waiting"  # merged, resolved, blocked, waiting, dropped (deleted from the store)
    detail: str = ""  # what it waits for, or why it is blocked
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    queue_wait: float = 0.0
    diffstat: dict | None = None
    tokens: Tokens | None = None
    logs: list[tuple[str, Path]] = dataclasses.field(default_factory=list)  # (label, path)

    @property
    def agent_time(self) -> float:
        return sum(a.duration or 0.0 for a in self.attempts)


@dataclasses.dataclass
class Mark:
    """Something that happened at one moment: a merge, a conflict filed, a gate run, a breaker trip."""

    at: float
    kind: str  # merged, conflict, gate_passed, gate_failed, breaker
    task_id: str | None
    text: str


@dataclasses.dataclass
class Run:
    """One dispatcher process, from its start to its stop or its last event (a crash)."""

    start: float
    end: float
    pid: int | None = None
    max_workers: int | None = None
    stopped: bool = False  # it recorded its own end; False after a crash or while it runs


@dataclasses.dataclass
class Conflict:
    task_id: str  # the task whose branch did not merge
    conflict_task: str
    kind: str  # conflict or gate
    ended: str = "open"  # open, resolved and merged, resolved, blocked


@dataclasses.dataclass
class Report:
    events: int
    skipped_lines: int
    runs: list[Run]
    attempts: list[Attempt]
    tasks: dict[str, TaskRow]
    marks: list[Mark]
    queue_depth: list[tuple[float, int]]  # (time, depth) at each change
    conflicts: list[Conflict]
    refills: list[float]  # a worker's end to the next start, seconds
    merge_latencies: list[float]  # queued to merged, seconds
    slots: int

    @property
    def start(self) -> float:
        return self.runs[0].start if self.runs else 0.0

    @property
    def end(self) -> float:
        return self.runs[-1].end if self.runs else 0.0

    @property
    def wall_time(self) -> float:
        """Time a dispatcher was running, summed over runs (a pause between runs is not counted)."""
        return sum(run.end - run.start for run in self.runs)

    @property
    def agent_time(self) -> float:
        return sum(a.duration or 0.0 for a in self.attempts)

    @property
    def merged_agent_time(self) -> float:
        return sum(a.duration or 0.0 for a in self.attempts if a.merged_work)

    def count(self, outcome: str) -> int:
        return sum(1 for t in self.tasks.values() if t.kind == "task" and t.outcome == outcome)


def log_path(logs_dir: Path, event: Event) -> Path | None:
    """The attempt's log as the event names it (relative to the repository root), else the one log
    per task of event logs written before events named it. Never a file outside .dispatch_logs."""
    named = event.get_str("log")
    if named:
        path = (logs_dir.parent / named).resolve()
    elif event.task_id and re.fullmatch(r"[A-Za-z0-9._-]+", event.task_id):
        path = (logs_dir / f"{event.task_id}.log").resolve()
    else:
        return None
    return path if path.is_relative_to(logs_dir.resolve()) else None


def tokens_in_log(path: Path) -> Tokens | None:
    """The sum of the token counts an agent printed in its log; None when it printed none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = None
    for match in TOKENS_LINE.finditer(text):
        sent = float(match.group(1)) * TOKEN_SUFFIX[match.group(2).lower()]
        received = float(match.group(3)) * TOKEN_SUFFIX[match.group(4).lower()]
        found = (found or Tokens()) + Tokens(round(sent), round(received))
    return found


class _Builder:
    """Walks the events once, in the order they were written."""

    TASKLESS = ("breaker_tripped",)  # every other handler is about one task

    def __init__(self, logs_dir: Path):
        self.logs_dir = logs_dir
        self.runs: list[Run] = []
        self.attempts: list[Attempt] = []
        self.open: dict[str, Attempt] = {}  # task id -> its running attempt
        self.last: dict[str, Attempt] = {}  # task id -> its latest attempt
        self.tasks: dict[str, TaskRow] = {}
        self.marks: list[Mark] = []
        self.queued: dict[str, float] = {}  # task id -> when it entered the merge queue
        self.queue_depth: list[tuple[float, int]] = []
        self.conflicts: dict[str, Conflict] = {}  # conflict task id -> the conflict
        self.ends: list[float] = []  # worker ends not yet followed by a start
        self.refills: list[float] = []
        self.merge_latencies: list[float] = []
        self.slots = 0

    def task(self, task_id: str) -> TaskRow:
        if task_id not in self.tasks:
            self.tasks[task_id] = TaskRow(task_id, title=task_id)
        return self.tasks[task_id]

    def run_of(self, event: Event) -> Run:
        if not self.runs or (self.runs[-1].stopped and event.name != "dispatcher_stopped"):
            self.runs.append(Run(event.at, event.at))  # events from before runs were marked
        return self.runs[-1]

    def add(self, e: Event) -> None:
        if e.name == "dispatcher_started":
            self.runs.append(Run(e.at, e.at, e.get_int("pid"), e.get_int("max_workers")))
            self.slots = max(self.slots, e.get_int("max_workers") or 0)
            self.ends.clear()  # a refill is measured within one run
        run = self.run_of(e)
        run.end = max(run.end, e.at)
        if e.name == "dispatcher_stopped":
            run.stopped = True
        handler = getattr(self, "on_" + e.name, None)
        if handler is not None and (e.task_id is not None or e.name in self.TASKLESS):
            handler(e)

    # ---- workers -----------------------------------------------------------------------

    def on_worker_started(self, e: Event) -> None:
        if (stale := self.open.pop(e.task_id, None)) is not None:
            stale.end, stale.outcome = e.at, "lost"  # its end was never recorded (a crash)
        row = self.task(e.task_id)
        row.title = e.get_str("title") or row.title
        kind = e.get_str("kind") or "task"
        row.kind = kind
        slot = e.get_int("slot") or 1
        self.slots = max(self.slots, slot)
        attempt = Attempt(e.task_id, row.title, e.get_int("attempt") or len(row.attempts) + 1, slot, kind, e.at,
                          log_path(self.logs_dir, e))
        self.attempts.append(attempt)
        row.attempts.append(attempt)
        self.open[e.task_id] = self.last[e.task_id] = attempt
        row.outcome, row.detail = "waiting", "running"
        if self.ends:
            self.refills.append(e.at - self.ends.pop(0))

    def end_attempt(self, e: Event, ended: str = "exited") -> None:
        attempt = self.open.pop(e.task_id, None)
        if attempt is not None:
            attempt.end, attempt.ended = e.at, ended
            self.ends.append(e.at)

    def on_worker_exited(self, e: Event) -> None:
        self.end_attempt(e)

    def on_worker_timed_out(self, e: Event) -> None:
        self.end_attempt(e, "timed_out")

    def on_worker_stopped(self, e: Event) -> None:
        self.end_attempt(e, "stopped")  # a second Ctrl-C, SIGTERM or its task blocked by hand ended it

    def on_commits_found(self, e: Event) -> None:
        if (attempt := self.last.get(e.task_id)) is not None:
            attempt.outcome = "queued"

    # ---- the merge queue ---------------------------------------------------------------

    def depth_changed(self, at: float) -> None:
        self.queue_depth.append((at, len(self.queued)))

    def leave_queue(self, e: Event) -> None:
        if (since := self.queued.pop(e.task_id, None)) is not None:
            self.task(e.task_id).queue_wait += e.at - since
            self.depth_changed(e.at)
            if e.name == "merged":
                self.merge_latencies.append(e.at - since)

    def on_merge_queued(self, e: Event) -> None:
        if e.task_id not in self.queued:
            self.queued[e.task_id] = e.at
            self.depth_changed(e.at)
        self.task(e.task_id).outcome, self.task(e.task_id).detail = "waiting", "in the merge queue"

    def on_merged(self, e: Event) -> None:
        self.leave_queue(e)
        row = self.task(e.task_id)
        row.outcome, row.detail = "merged", ""
        diffstat = e.fields.get("diffstat")
        if isinstance(diffstat, dict):
            row.diffstat = diffstat  # a retried merge's last is the one on main
        if (attempt := self.last.get(e.task_id)) is not None and attempt.outcome in ("queued", "open", "released"):
            attempt.outcome, attempt.merged_work = "merged", True
        for conflict in self.conflicts.values():  # its resolvers' work reached main with it
            if conflict.task_id == e.task_id and conflict.ended == "resolved":
                conflict.ended = "resolved and merged"
                for resolver in self.tasks.get(conflict.conflict_task, TaskRow("", "")).attempts:
                    resolver.merged_work = resolver.outcome == "resolved"
        self.marks.append(Mark(e.at, "merged", e.task_id, f"merged {e.task_id}: {row.title}"))

    def on_merge_conflict(self, e: Event) -> None:
        self.leave_queue(e)

    def on_gate_failed(self, e: Event) -> None:
        self.leave_queue(e)
        self.marks.append(Mark(e.at, "gate_failed", e.task_id, f"checks failed on {e.task_id}"))

    def on_gate_passed(self, e: Event) -> None:
        self.marks.append(Mark(e.at, "gate_passed", e.task_id, f"checks passed on {e.task_id}"))

    def on_stale_branch(self, e: Event) -> None:
        self.leave_queue(e)
        row = self.task(e.task_id)
        row.outcome, row.detail = "waiting", "not merged: the task changed meanwhile; branch kept"

    def on_conflict_filed(self, e: Event) -> None:
        conflict_task = e.get_str("conflict_task") or "?"
        kind = e.get_str("kind") or "conflict"
        self.conflicts.setdefault(conflict_task, Conflict(e.task_id, conflict_task, kind))
        self.task(conflict_task).kind = kind
        self.task(conflict_task).title = e.get_str("title") or conflict_task
        row = self.task(e.task_id)
        row.outcome, row.detail = "waiting", f"waits for {conflict_task}"
        what = "merge conflict" if kind == "conflict" else "failing checks"
        self.marks.append(Mark(e.at, "conflict", e.task_id, f"{what} on {e.task_id}: filed {conflict_task}"))

    # ---- how a task ends ---------------------------------------------------------------

    def on_released(self, e: Event) -> None:
        row = self.task(e.task_id)
        row.outcome, row.detail = "waiting", "released for another attempt"
        attempt = self.last.get(e.task_id)
        if attempt is not None and attempt.outcome in ("open", "queued"):
            attempt.outcome = "released"
        elif attempt is not None and attempt.ended != "exited" and attempt.outcome == "merged":
            how = "timed-out" if attempt.ended == "timed_out" else "stopped"
            row.detail = f"its {how} attempt's work merged; released for another attempt"

    def on_blocked(self, e: Event) -> None:
        self.leave_queue(e)
        row = self.task(e.task_id)
        row.outcome, row.detail = "blocked", e.get_str("reason") or ""
        if (attempt := self.last.get(e.task_id)) is not None and attempt.outcome in ("open", "queued", "released"):
            attempt.outcome = "blocked"
        for conflict in self.conflicts.values():
            if e.task_id in (conflict.task_id, conflict.conflict_task) and conflict.ended in ("open", "resolved"):
                conflict.ended = "blocked"

    def on_record_dropped(self, e: Event) -> None:
        """The task was deleted from the store: its merge-queue entry or pending merge was dropped."""
        self.leave_queue(e)
        row = self.task(e.task_id)
        row.outcome, row.detail = "dropped", f"deleted from the store; dropped its {e.get_str('record') or 'record'}"
        for conflict in self.conflicts.values():
            if conflict.conflict_task == e.task_id and conflict.ended == "open":
                conflict.ended = "dropped"

    on_left_blocked = on_blocked  # blocked by hand while it ran: the event carries the reason

    def on_closed(self, e: Event) -> None:
        """A conflict or fix task resolved by its worker (a merged task is closed after `merged`)."""
        if e.task_id in self.conflicts:
            self.conflicts[e.task_id].ended = "resolved"
            row = self.task(e.task_id)
            row.outcome, row.detail = "resolved", ""
            if (attempt := self.last.get(e.task_id)) is not None:
                attempt.outcome = "resolved"

    def on_breaker_tripped(self, e: Event) -> None:
        failures = e.get_int("failures")
        self.marks.append(Mark(e.at, "breaker", None, f"breaker tripped after {failures} failed attempts in a row"))

    # ---- the end -----------------------------------------------------------------------

    def finish(self, events: int, skipped: int) -> Report:
        for row in self.tasks.values():
            logs = [p for p in dict.fromkeys(a.log for a in row.attempts if a.log is not None) if p.is_file()]
            if len(logs) > 1 and len(logs) == len(row.attempts):  # one log per attempt
                row.logs = [(f"attempt {a.number}", a.log) for a in row.attempts]
            else:
                row.logs = [("log", path) for path in logs]
            counts = [t for t in map(tokens_in_log, logs) if t is not None]
            row.tokens = sum(counts, Tokens()) if counts else None
        return Report(events, skipped, self.runs, self.attempts, self.tasks, self.marks, self.queue_depth,
                      list(self.conflicts.values()), self.refills, self.merge_latencies, max(self.slots, 1))


def build_report(events: list[Event], skipped: int, logs_dir: Path) -> Report:
    builder = _Builder(logs_dir)
    for event in events:
        builder.add(event)
    return builder.finish(len(events), skipped)


# --------------------------------------------------------------------------------------------
# Rendering: HTML with an inline SVG timeline
# --------------------------------------------------------------------------------------------


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def duration_text(secs: float | None) -> str:
    if secs is None:
        return "–"
    if secs < 1:
        return f"{secs * 1000:.0f} ms"
    if secs < 60:
        return f"{secs:.1f} s"
    if secs < 3600:
        return f"{int(secs // 60)} min {int(secs % 60):02d} s"
    return f"{int(secs // 3600)} h {int(secs % 3600 // 60):02d} min"


def count_text(n: int) -> str:
    return f"{n / 1_000_000:.1f}M" if n >= 1_000_000 else f"{n / 1000:.1f}k" if n >= 1000 else str(n)


def clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def median_text(values: list[float]) -> str:
    return duration_text(statistics.median(values)) if values else "–"


WIDTH, LEFT, RIGHT = 1160, 112, 16  # the timeline's size in SVG units; lanes start after LEFT
LANE_H, MAIN_H, AXIS_H, QUEUE_H = 30, 26, 22, 56
CUT_W = 30  # an idle pause between runs is drawn this wide, whatever its length
CUT_MIN_SECS, CUT_MIN_SHARE = 30.0, 0.15  # a pause is cut when longer than both of these


def tick_text(secs: float) -> str:
    if secs < 60:
        return f"{secs:g} s"
    return f"{secs / 60:g} min" if secs < 3600 else f"{secs / 3600:g} h"


def tick_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400):
        if span / step <= 10:
            return step
    return 86400 * max(1, round(span / 86400 / 10))


@dataclasses.dataclass
class TimeScale:
    """Where a moment is drawn. Runs side by side: a pause between two runs in which no worker
    ran (no adopted worker spans it) is cut to CUT_W, so a run this morning and one tonight both
    stay readable."""

    pieces: list[tuple[float, float, float]]  # (from, to, x of from): time drawn to scale
    scale: float  # SVG units per second

    @classmethod
    def of(cls, report: Report, end: float) -> "TimeScale":
        span = end - report.start
        cuts = [(before.end, after.start) for before, after in zip(report.runs, report.runs[1:])
                if after.start - before.end > max(CUT_MIN_SECS, span * CUT_MIN_SHARE)
                and not any(a.start < after.start and (a.end or end) > before.end for a in report.attempts)]
        shown = span - sum(stop - start for start, stop in cuts)
        scale = (WIDTH - LEFT - RIGHT - CUT_W * len(cuts)) / max(shown, 1e-6)
        pieces, x, at = [], float(LEFT), report.start
        for start, stop in cuts:
            pieces.append((at, start, x))
            x += (start - at) * scale + CUT_W
            at = stop
        pieces.append((at, end, x))
        return cls(pieces, scale)

    def x(self, at: float) -> float:
        for start, stop, x in reversed(self.pieces):
            if at >= start:
                return x + (min(at, stop) - start) * self.scale
        return self.pieces[0][2]

    def ticks(self) -> list[tuple[float, str]]:
        """(x, label): each piece counts from its own start, labelled with its clock time."""
        step = tick_step(sum(stop - start for start, stop, _ in self.pieces))
        cut = len(self.pieces) > 1
        found = []
        for start, stop, x in self.pieces:
            found.append((x, time.strftime("%H:%M:%S", time.gmtime(start)) if cut else "0 s"))
            tick = step
            while (start + tick - stop) * self.scale < -45:  # no label crowds the next piece's
                found.append((x + tick * self.scale, ("+" if cut else "") + tick_text(tick)))
                tick += step
        return found

    def cuts(self) -> list[tuple[float, float, float]]:
        """(x, from, to) of each pause that was cut."""
        return [(x - CUT_W, before[1], start) for before, (start, _, x) in zip(self.pieces, self.pieces[1:])]


def render_axis(scale: TimeScale, bottom: float) -> list[str]:
    return [f'<line class="grid" x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" y2="{bottom}"/>'
            f'<text class="tick" x="{x:.1f}" y="{AXIS_H - 8}">{esc(label)}</text>' for x, label in scale.ticks()]


def render_cuts(scale: TimeScale, bottom: float) -> list[str]:
    out = []
    for x, start, stop in scale.cuts():
        out.append(f'<g class="cut"><title>{esc(duration_text(stop - start))} with no dispatcher and no worker '
                   f'running, not drawn to scale</title><rect x="{x + 3:.1f}" y="{AXIS_H}" width="{CUT_W - 6}" '
                   f'height="{bottom - AXIS_H}"/><text x="{x + CUT_W / 2:.1f}" y="{bottom + 12}">'
                   f'{esc(duration_text(stop - start))}</text></g>')
    return out


def bar_label(a: Attempt, width: float) -> str:
    """What fits in a bar: id and title, or the id alone, or nothing (the tooltip has it all)."""
    label, fits = f"{a.task_id} {a.title}", int((width - 8) / 6.4)
    if len(label) <= fits:
        return label
    if fits > len(a.task_id) + 2:
        return label[:fits - 1] + "…"
    return a.task_id if fits >= len(a.task_id) else ""


def render_lanes(report: Report, scale: TimeScale, end: float, top: float) -> list[str]:
    out = []
    for slot in range(1, report.slots + 1):
        y = top + (slot - 1) * LANE_H
        out.append(f'<g class="lane" data-lane="{slot}"><rect class="lane-bg" x="{LEFT}" y="{y}" '
                   f'width="{WIDTH - LEFT - RIGHT}" height="{LANE_H - 4}"/>'
                   f'<text class="lane-name" x="8" y="{y + LANE_H / 2 + 2}">worker {slot}</text></g>')
    for a in report.attempts:
        y = top + (a.slot - 1) * LANE_H
        left = scale.x(a.start)
        width = max(scale.x(a.end if a.end is not None else end) - left, 3.0)
        tip = (f"{a.task_id}: {a.title}\nattempt {a.number}, {CATEGORIES[a.category][0]}"
               + (f" ({a.outcome})" if a.kind != "task" else "") + f"\n{duration_text(a.duration)}"
               + f"\nworker {a.slot}, from {clock(a.start)}")
        out.append(f'<g class="bar c-{a.category}" data-task="{esc(a.task_id)}" data-attempt="{a.number}" '
                   f'data-slot="{a.slot}" data-outcome="{esc(a.outcome)}"><title>{esc(tip)}</title>'
                   f'<rect x="{left:.1f}" y="{y + 1}" width="{width:.1f}" height="{LANE_H - 6}" rx="3"/>'
                   f'<text x="{left + 4:.1f}" y="{y + LANE_H / 2 + 2}">{esc(bar_label(a, width))}</text></g>')
    return out


def render_marks(report: Report, scale: TimeScale, bottom: float) -> list[str]:
    """Merges, conflicts and gate runs on the main line; breaker trips and restarts across every lane."""
    mid = AXIS_H + MAIN_H / 2
    out = [f'<text class="lane-name" x="8" y="{mid + 4}">main</text>'
           f'<line class="main-line" x1="{LEFT}" y1="{mid}" x2="{WIDTH - RIGHT}" y2="{mid}"/>']
    for m in report.marks:
        x = scale.x(m.at)
        if m.kind == "merged":
            shape = f'<path d="M{x:.1f},{mid - 7} l6,7 l-6,7 l-6,-7 z"/>'
        elif m.kind == "conflict":
            shape = f'<path d="M{x - 5:.1f},{mid - 5} l10,10 m0,-10 l-10,10"/>'
        elif m.kind in ("gate_passed", "gate_failed"):
            shape = f'<circle cx="{x:.1f}" cy="{mid}" r="4.5"/>'
        else:  # the breaker stops every lane
            shape = f'<line x1="{x:.1f}" y1="{AXIS_H}" x2="{x:.1f}" y2="{bottom}"/>'
        out.append(f'<g class="mark m-{m.kind}" data-mark="{m.kind}"><title>{esc(m.text)}\n{clock(m.at)}'
                   f'</title>{shape}</g>')
    for i, run in enumerate(report.runs[1:], start=2):
        x = scale.x(run.start)
        out.append(f'<g class="restart" data-run="{i}"><title>dispatcher restarted (run {i}, pid {run.pid}) at '
                   f'{clock(run.start)}</title><line x1="{x:.1f}" y1="{AXIS_H}" x2="{x:.1f}" y2="{bottom}"/>'
                   f'<text x="{x + 3:.1f}" y="{AXIS_H + 9}">restart</text></g>')
    return out


def render_queue(report: Report, scale: TimeScale, top: float) -> list[str]:
    """The merge queue's depth over time, as a step chart."""
    deepest = max((d for _, d in report.queue_depth), default=0)
    unit, base = (QUEUE_H - 6) / max(deepest, 1), top + QUEUE_H
    points, depth = [f"{LEFT},{base}"], 0
    for at, new_depth in report.queue_depth:
        x = scale.x(at)
        points += [f"{x:.1f},{base - depth * unit:.1f}", f"{x:.1f},{base - new_depth * unit:.1f}"]
        depth = new_depth
    points += [f"{WIDTH - RIGHT},{base - depth * unit:.1f}", f"{WIDTH - RIGHT},{base}"]
    return [f'<text class="lane-name" x="8" y="{top + 16}">merge queue</text>'
            f'<text class="tick" x="8" y="{top + 30}">(max {deepest})</text>'
            f'<rect class="lane-bg" x="{LEFT}" y="{top}" width="{WIDTH - LEFT - RIGHT}" height="{QUEUE_H}"/>'
            f'<polygon class="queue" points="{" ".join(points)}"><title>branches waiting to merge '
            f'(at most {deepest})</title></polygon>']


def render_timeline(report: Report) -> str:
    end = max([report.end, report.start + 1] + [a.end or a.start for a in report.attempts])
    scale = TimeScale.of(report, end)
    lanes_top = AXIS_H + MAIN_H
    queue_top = lanes_top + report.slots * LANE_H + 14
    height = queue_top + QUEUE_H + 18
    return "\n".join([f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
                      f'role="img" aria-label="timeline">', *render_axis(scale, queue_top + QUEUE_H),
                      *render_lanes(report, scale, end, lanes_top), *render_queue(report, scale, queue_top),
                      *render_cuts(scale, queue_top + QUEUE_H), *render_marks(report, scale, queue_top + QUEUE_H),
                      "</svg>"])


def legend() -> str:
    items = [f'<span class="key"><i class="sw c-{name}"></i>{esc(text)}</span>'
             for name, (text, _) in CATEGORIES.items()]
    items += ['<span class="key"><i class="sym">◆</i>merged into main</span>',
              '<span class="key"><i class="sym bad">✕</i>conflict or failed checks: a task filed</span>',
              '<span class="key"><i class="sym">●</i>gate run (green passed, red failed)</span>',
              '<span class="key"><i class="sym warn">┆</i>breaker tripped</span>',
              '<span class="key"><i class="sym">│</i>dispatcher restarted</span>']
    return '<div class="legend">' + "".join(items) + "</div>"


def link(path: Path, report_dir: Path, label: str) -> str:
    """A relative link, so the report and its logs can move together; absolute across Windows drives."""
    try:
        href = urllib.parse.quote(os.path.relpath(path, report_dir).replace(os.sep, "/"))
    except ValueError:  # another drive: no relative path exists
        href = path.as_uri()
    return f'<a href="{esc(href)}">{esc(label)}</a>'


def render_table(report: Report, report_dir: Path) -> str:
    rows = []
    order = sorted(report.tasks.values(), key=lambda t: (t.attempts[0].start if t.attempts else report.end))
    for t in order:
        stat = t.diffstat or {}
        files = stat.get("files", 0)
        change = (f'{files} file{"" if files == 1 else "s"} <span class="ins">+{stat.get("insertions", 0)}</span> '
                  f'<span class="del">−{stat.get("deletions", 0)}</span>') if stat else ""
        tokens = f"{count_text(t.tokens.sent)} / {count_text(t.tokens.received)}" if t.tokens else ""
        kind = {"task": "", "conflict": "conflict resolver", "gate": "gate fixer"}.get(t.kind, t.kind)
        outcome = f'<span class="o-{esc(t.outcome)}">{esc(t.outcome)}</span>' + (
            f'<div class="detail">{esc(common.cut_at_word(t.detail, 240))}</div>' if t.detail else "")
        rows.append(
            f'<tr data-task="{esc(t.task_id)}"><td class="id">{esc(t.task_id)}</td><td>{esc(t.title)}'
            + (f' <span class="kind">{esc(kind)}</span>' if kind else "") + f"</td><td>{outcome}</td>"
            f'<td class="num">{len(t.attempts)}</td>'
            f'<td class="num">{duration_text(t.agent_time) if t.attempts else "–"}</td>'
            f'<td class="num">{duration_text(t.queue_wait) if t.queue_wait else "–"}</td>'
            f'<td class="num">{tokens}</td><td class="num">{change}</td>'
            f'<td>{" ".join(link(p, report_dir, label) for label, p in t.logs)}</td></tr>')
    return ('<table class="tasks"><thead><tr><th>task</th><th>title</th><th>outcome</th><th>attempts</th>'
            '<th>agent time</th><th>queue wait</th><th>tokens sent / received</th><th>change</th><th>logs</th>'
            '</tr></thead><tbody>' + "\n".join(rows) + "</tbody></table>")


def render_summary(report: Report) -> str:
    merged, blocked, dropped = report.count("merged"), report.count("blocked"), report.count("dropped")
    waiting = sum(1 for t in report.tasks.values() if t.kind == "task") - merged - blocked - dropped
    agent = report.agent_time
    share = f"{report.merged_agent_time / agent:.0%}" if agent else "–"
    restarts = len(report.runs) - 1
    ended: dict[str, int] = {}
    for conflict in report.conflicts:
        ended[conflict.ended] = ended.get(conflict.ended, 0) + 1
    conflicts = (f"{len(report.conflicts)} filed: " + ", ".join(f"{n} {how}" for how, n in sorted(ended.items()))
                 if report.conflicts else "none")
    tokens = [t.tokens for t in report.tasks.values() if t.tokens]
    total = sum(tokens, Tokens())
    items = [
        ("tasks", f'<b class="o-merged">{merged} merged</b> · <b class="o-blocked">{blocked} blocked</b> · '
                  f'<b class="o-waiting">{waiting} waiting</b>'
                  + (f" · {dropped} deleted from the store" if dropped else "")),
        ("wall time", esc(duration_text(report.wall_time))
         + (f" over {len(report.runs)} runs ({restarts} restart{'s' if restarts > 1 else ''})" if restarts else "")),
        ("agent time", esc(f"{duration_text(agent)} in {len(report.attempts)} attempts; {share} ended in merged work")),
        ("median refill", esc(median_text(report.refills) + " from a worker's end to the next start")),
        ("median merge latency", esc(median_text(report.merge_latencies) + " from the merge queue to main")),
        ("conflicts", esc(conflicts)),
        ("tokens", esc(f"{count_text(total.sent)} sent, {count_text(total.received)} received") if tokens
         else "none printed in the agents' logs"),
    ]
    return '<dl class="summary">' + "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in items) + "</dl>"


STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 20px 28px; color: #1f2328; }
h1 { font-size: 20px; margin: 0 0 2px; } h2 { font-size: 16px; margin: 22px 0 8px; }
.sub { color: #59636e; margin: 0 0 12px; } .warn-box { background: #fff4d6; padding: 6px 10px; border-radius: 4px; }
.summary { display: flex; flex-wrap: wrap; gap: 8px; margin: 0; }
.summary div { background: #f3f5f7; border-radius: 6px; padding: 6px 12px; }
.summary dt { font-size: 12px; color: #59636e; } .summary dd { margin: 0; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 6px 0; font-size: 13px; }
.key { white-space: nowrap; } .sw { display: inline-block; width: 14px; height: 12px; border-radius: 2px;
  margin-right: 5px; vertical-align: -1px; } .sym { font-style: normal; margin-right: 5px; color: #2f9e5b; }
.sym.bad { color: #d64541; } .sym.warn { color: #e8590c; }
.timeline-box { overflow-x: auto; } svg.timeline { font-size: 12px; max-width: 100%; height: auto; }
.grid { stroke: #e4e7eb; } .tick { fill: #59636e; font-size: 11px; } .lane-name { fill: #1f2328; font-weight: 600; }
.lane-bg { fill: #f6f8fa; } .main-line { stroke: #9aa0a6; stroke-width: 2; }
.bar text { fill: #fff; font-size: 11.5px; pointer-events: none; } .bar:hover rect { stroke: #1f2328; stroke-width: 2; }
.mark.m-merged path { fill: #2f9e5b; } .mark.m-conflict path { stroke: #d64541; stroke-width: 3; }
.mark.m-gate_passed circle { fill: #2f9e5b; } .mark.m-gate_failed circle { fill: #d64541; }
.mark.m-breaker line { stroke: #e8590c; stroke-width: 2; stroke-dasharray: 5 3; }
.restart line { stroke: #3d4349; stroke-width: 1.5; } .restart text { fill: #3d4349; font-size: 11px; }
.queue { fill: #c9d6e3; stroke: #5b7a99; }
.cut rect { fill: #fff; stroke: #9aa0a6; stroke-dasharray: 3 3; } .cut text { fill: #59636e; font-size: 11px;
  text-anchor: middle; }
table.tasks { border-collapse: collapse; width: 100%; font-size: 13px; }
.tasks th { text-align: left; background: #f3f5f7; font-weight: 600; }
.tasks th, .tasks td { padding: 5px 8px; border-bottom: 1px solid #e4e7eb; vertical-align: top; }
.tasks .num { text-align: right; white-space: nowrap; } .tasks .id { white-space: nowrap; font-family: monospace; }
.kind { font-size: 11px; background: #e7eef7; border-radius: 3px; padding: 0 4px; white-space: nowrap; }
.detail { color: #59636e; font-size: 12px; max-width: 420px; } .ins { color: #2f9e5b; } .del { color: #d64541; }
.o-merged, .o-resolved { color: #2f9e5b; } .o-blocked { color: #d64541; } .o-waiting { color: #9a6700; }
"""


def render_html(report: Report, report_dir: Path, source: Path) -> str:
    colours = "".join(f".c-{name} rect, .sw.c-{name} {{ fill: {colour}; background: {colour}; }}\n"
                      for name, (_, colour) in CATEGORIES.items())
    if report.runs:
        span = f"{clock(report.start)} to {clock(report.end)}"
    else:
        span = "no events recorded yet: run the dispatcher first"
    skipped = (f'<p class="warn-box">{report.skipped_lines} line{"s" if report.skipped_lines > 1 else ""} of the '
               "events log could not be read and were skipped (a crash mid-write leaves a partial line).</p>"
               if report.skipped_lines else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Dispatch run report</title>
<style>{STYLE}{colours}</style></head>
<body>
<h1>Dispatch run report</h1>
<p class="sub">{esc(span)} · {report.events} events from {esc(source)}</p>
{skipped}
{render_summary(report)}
<h2>Timeline</h2>
{legend()}
<div class="timeline-box">{render_timeline(report) if report.runs else ""}</div>
<h2>Tasks</h2>
{render_table(report, report_dir)}
</body></html>
"""


def write_report(root: Path, out: Path | None = None) -> Path:
    """Read the repository's events log and write the report (default .dispatch_logs/report.html)."""
    logs_dir = root / LOGS_DIR
    events, skipped = read_events(logs_dir / EVENTS_FILE)
    target = (out or logs_dir / REPORT_FILE).resolve()
    report = build_report(events, skipped, logs_dir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        common.atomic_write_text(target, render_html(report, target.parent, logs_dir / EVENTS_FILE))
    except OSError as exc:
        raise common.UserError(f"cannot write the report {target}: {exc.strerror or exc}") from None
    return target
