"""Events become report data: attempts, merges, conflicts, token counts."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from crew import logs
from crew.report import events as event_log
from crew.report.events import EventName


# Aider prints e.g. "Tokens: 2.1k sent, 345 received." (cache counts may sit between the two),
# one line each. Matched in the log's bytes, within a line ([^\S\n]: a blank that is no line end).
TOKENS_LINE = re.compile(rb"Tokens:[^\S\n]*(\d+(?:\.\d+)?)[^\S\n]*([kKmM]?)[^\S\n]+sent\b.*?"
                         rb"(\d+(?:\.\d+)?)[^\S\n]*([kKmM]?)[^\S\n]+received\b")
TOKEN_SUFFIX = {b"": 1, b"k": 1_000, b"m": 1_000_000}

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


# A person's review, on the main line.
REVIEW_MARKS: tuple[str, ...] = (EventName.REVIEW_AWAITED, EventName.REVIEW_APPROVED, EventName.REVIEW_REJECTED)


@dataclasses.dataclass
class Tokens:
    sent: int = 0
    received: int = 0

    def __add__(self, other: Tokens) -> Tokens:
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
    outcome: str = "waiting"  # merged, resolved, blocked, waiting, reverted, dropped (deleted from the store)
    detail: str = ""  # what it waits for, or why it is blocked
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    queue_wait: float = 0.0
    diffstat: dict[str, int] | None = None  # files, insertions, deletions
    tokens: Tokens | None = None
    logs: list[tuple[str, Path]] = dataclasses.field(default_factory=list)  # (label, path)
    last_seen: float = 0.0  # its latest event

    @property
    def agent_time(self) -> float:
        return sum(a.duration or 0.0 for a in self.attempts)


@dataclasses.dataclass
class Mark:
    """Something that happened at one moment: a merge, a conflict filed, a gate run, a breaker trip."""

    at: float
    # merged, reverted, conflict, gate_passed, gate_failed, main_passed, main_failed, breaker, and REVIEW_MARKS
    kind: str
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
    refills: list[float]  # a worker's end to the next start, when the task started was ready at that end, seconds
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

    def window(self, runs: int, attempts: int) -> Report:
        """What a page of a long history draws: the latest `runs` runs, and of those no more than
        the latest `attempts` attempts' time; the tasks seen in it. Itself when that is all of it.
        Totals (refills, latencies, counts) stay those of the whole history."""
        if not self.runs:
            return self
        since = self.runs[-min(runs, len(self.runs))].start
        if len(self.attempts) > attempts:
            since = max(since, self.attempts[-attempts].start)
        if since <= self.start:
            return self
        shown = [r for r in self.runs if r.end >= since]
        shown[0] = dataclasses.replace(shown[0], start=max(shown[0].start, since))
        depth_before = next((depth for at, depth in reversed(self.queue_depth) if at < since), 0)
        attempts_shown = [a for a in self.attempts if a.end is None or a.end >= since]
        return dataclasses.replace(
            self, runs=shown, attempts=attempts_shown,
            tasks={key: row for key, row in self.tasks.items() if row.last_seen >= since},
            marks=[m for m in self.marks if m.at >= since],
            queue_depth=[(since, depth_before)] + [(at, depth) for at, depth in self.queue_depth if at >= since],
            slots=max([1] + [a.slot for a in attempts_shown] + [r.max_workers or 0 for r in shown]))


LOG_NAME = re.compile(r"(?!\.)[A-Za-z0-9._-]+")  # as the dispatcher names a log: no separator, no leading dot


def log_path(logs_dir: Path, event: event_log.Event) -> Path | None:
    """The attempt's log as the event names it (relative to the repository root), else the one log
    per task of event logs written before events named it. Only a file right in .dispatch_logs
    (`logs_dir`, resolved), by its name alone: nothing outside it, and no path to resolve per log."""
    named = event.get_str("log")
    if named:
        folder, _, name = named.replace("\\", "/").rpartition("/")
        if folder != event_log.LOGS_DIR:
            return None
    elif event.task_id:
        name = f"{event.task_id}.log"
    else:
        return None
    return logs_dir / name if LOG_NAME.fullmatch(name) else None


def tokens_in_log(path: Path) -> Tokens | None:
    """The sum of the token counts an agent printed in its log; None when it printed none. The
    log is read as a stream, a block of lines at a time: it may be gigabytes."""
    found = None
    try:
        for block in logs.line_blocks(path):
            for match in TOKENS_LINE.finditer(block):
                sent = float(match.group(1)) * TOKEN_SUFFIX[match.group(2).lower()]
                received = float(match.group(3)) * TOKEN_SUFFIX[match.group(4).lower()]
                found = (found or Tokens()) + Tokens(round(sent), round(received))
    except OSError:
        return None
    return found


class _Builder:
    """Walks the events once, in the order they were written."""

    TASKLESS = (EventName.BREAKER_TRIPPED, EventName.MAIN_CHECKED)  # every other handler is about one task

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
        self.conflicts_on: dict[str, list[Conflict]] = {}  # task id -> the conflicts filed for its branch
        self.ends: list[float] = []  # worker ends not yet followed by a start
        self.ready_since: dict[str, float] = {}  # task id -> when the dispatcher that claimed it first saw it ready
        self.refills: list[float] = []
        self.merge_latencies: list[float] = []
        self.slots = 0
        self.at = 0.0  # the time of the event being read
        self.handle = self.handlers()

    def handlers(self) -> dict[str, Callable[[event_log.Event], None]]:
        """What each event the report reads does to it; the others are only counted in their run."""
        return {
            EventName.WORKER_STARTED: self.on_worker_started,
            EventName.CLAIMED: self.on_claimed,
            EventName.WORKER_EXITED: self.on_worker_exited,
            EventName.WORKER_TIMED_OUT: self.on_worker_timed_out,
            EventName.WORKER_STOPPED: self.on_worker_stopped,
            EventName.COMMITS_FOUND: self.on_commits_found,
            EventName.MERGE_QUEUED: self.on_merge_queued,
            EventName.MERGED: self.on_merged,
            EventName.MERGE_CONFLICT: self.on_merge_conflict,
            EventName.GATE_FAILED: self.on_gate_failed,
            EventName.GATE_PASSED: self.on_gate_passed,
            EventName.REVIEW_AWAITED: self.on_review_awaited,
            EventName.REVIEW_APPROVED: self.on_review_approved,
            EventName.REVIEW_REJECTED: self.on_review_rejected,
            EventName.STALE_BRANCH: self.on_stale_branch,
            EventName.CONFLICT_FILED: self.on_conflict_filed,
            EventName.RELEASED: self.on_released,
            EventName.BLOCKED: self.on_blocked,
            EventName.LEFT_BLOCKED: self.on_blocked,  # blocked by hand while it ran: the event carries the reason
            EventName.RECORD_DROPPED: self.on_record_dropped,
            EventName.CLAIM_LOST: self.on_claim_lost,
            EventName.CLOSED: self.on_closed,
            EventName.REVERTED: self.on_reverted,
            EventName.MAIN_CHECKED: self.on_main_checked,
            EventName.BREAKER_TRIPPED: self.on_breaker_tripped,
        }

    def task(self, task_id: str) -> TaskRow:
        if task_id not in self.tasks:
            self.tasks[task_id] = TaskRow(task_id, title=task_id)
        row = self.tasks[task_id]
        row.last_seen = self.at
        return row

    def run_of(self, event: event_log.Event) -> Run:
        if not self.runs or (self.runs[-1].stopped and event.name != EventName.DISPATCHER_STOPPED):
            self.runs.append(Run(event.at, event.at))  # events from before runs were marked
        return self.runs[-1]

    def add(self, e: event_log.Event) -> None:
        self.at = e.at
        if e.name == EventName.DISPATCHER_STARTED:
            self.runs.append(Run(e.at, e.at, e.get_int("pid"), e.get_int("max_workers")))
            self.slots = max(self.slots, e.get_int("max_workers") or 0)
            self.ends.clear()  # a refill is measured within one run
        run = self.run_of(e)
        run.end = max(run.end, e.at)
        if e.name == EventName.DISPATCHER_STOPPED:
            run.stopped = True
        handler = self.handle.get(e.name)
        if handler is not None and (e.task_id is not None or e.name in self.TASKLESS):
            handler(e)
        if e.task_id in self.tasks:
            self.tasks[e.task_id].last_seen = e.at

    # ---- workers -----------------------------------------------------------------------

    def on_worker_started(self, e: event_log.Event) -> None:
        if (stale := self.open.pop(e.task, None)) is not None:
            stale.end, stale.outcome = e.at, "lost"  # its end was never recorded (a crash)
        row = self.task(e.task)
        row.title = e.get_str("title") or row.title
        kind = e.get_str("kind") or "task"
        row.kind = kind
        slot = e.get_int("slot") or 1
        self.slots = max(self.slots, slot)
        attempt = Attempt(e.task, row.title, e.get_int("attempt") or len(row.attempts) + 1, slot, kind, e.at,
                          log_path(self.logs_dir, e))
        self.attempts.append(attempt)
        row.attempts.append(attempt)
        self.open[e.task] = self.last[e.task] = attempt
        row.outcome, row.detail = "waiting", "running"
        if self.ends:
            # A gap counts only if the task that ended it was ready all along (a task that became
            # ready later, as the next of a chain does, waited for its dependency, not for a slot).
            end, ready = self.ends.pop(0), self.ready_since.pop(e.task, None)
            if ready is not None and ready <= end:
                self.refills.append(e.at - end)

    def on_claimed(self, e: event_log.Event) -> None:
        if (ready := e.get_time("ready_since")) is not None:
            self.ready_since[e.task] = ready

    def end_attempt(self, e: event_log.Event, ended: str = "exited") -> None:
        attempt = self.open.pop(e.task, None)
        if attempt is not None:
            attempt.end, attempt.ended = e.at, ended
            self.ends.append(e.at)

    def on_worker_exited(self, e: event_log.Event) -> None:
        self.end_attempt(e)

    def on_worker_timed_out(self, e: event_log.Event) -> None:
        self.end_attempt(e, "timed_out")

    def on_worker_stopped(self, e: event_log.Event) -> None:
        self.end_attempt(e, "stopped")  # a second Ctrl-C, SIGTERM or its task blocked by hand ended it

    def on_commits_found(self, e: event_log.Event) -> None:
        if (attempt := self.last.get(e.task)) is not None:
            attempt.outcome = "queued"

    # ---- the merge queue ---------------------------------------------------------------

    def depth_changed(self, at: float) -> None:
        self.queue_depth.append((at, len(self.queued)))

    def leave_queue(self, e: event_log.Event) -> None:
        if (since := self.queued.pop(e.task, None)) is not None:
            self.task(e.task).queue_wait += e.at - since
            self.depth_changed(e.at)
            if e.name == EventName.MERGED:
                self.merge_latencies.append(e.at - since)

    def on_merge_queued(self, e: event_log.Event) -> None:
        if e.task not in self.queued:
            self.queued[e.task] = e.at
            self.depth_changed(e.at)
        self.task(e.task).outcome, self.task(e.task).detail = "waiting", "in the merge queue"

    def on_merged(self, e: event_log.Event) -> None:
        self.leave_queue(e)
        row = self.task(e.task)
        row.outcome, row.detail = "merged", ""
        diffstat = e.fields.get("diffstat")
        if isinstance(diffstat, dict):
            row.diffstat = diffstat  # a retried merge's last is the one on main
        if (attempt := self.last.get(e.task)) is not None and attempt.outcome in ("queued", "open", "released"):
            attempt.outcome, attempt.merged_work = "merged", True
        for conflict in self.conflicts_on.get(e.task, ()):  # its resolvers' work reached main with it
            if conflict.ended == "resolved":
                conflict.ended = "resolved and merged"
                for resolver in self.tasks.get(conflict.conflict_task, TaskRow("", "")).attempts:
                    resolver.merged_work = resolver.outcome == "resolved"
        self.marks.append(Mark(e.at, "merged", e.task, f"merged {e.task}: {row.title}"))

    def on_merge_conflict(self, e: event_log.Event) -> None:
        self.leave_queue(e)

    def on_gate_failed(self, e: event_log.Event) -> None:
        if e.fields.get("counts") is False:  # a speculative gate: the entry stays queued
            self.marks.append(Mark(e.at, "gate_failed", e.task,
                                   f"checks failed on {e.task} with the entries ahead (not yet counted)"))
            return
        self.leave_queue(e)
        self.marks.append(Mark(e.at, "gate_failed", e.task, f"checks failed on {e.task}"))

    def on_gate_passed(self, e: event_log.Event) -> None:
        self.marks.append(Mark(e.at, "gate_passed", e.task, f"checks passed on {e.task}"))

    def on_review_awaited(self, e: event_log.Event) -> None:
        """Out of the merge queue until a person decides: that wait is theirs, not the queue's."""
        self.leave_queue(e)
        row = self.task(e.task)
        row.outcome = "waiting"
        row.detail = f"awaiting review since {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(e.at))}"
        self.marks.append(Mark(e.at, EventName.REVIEW_AWAITED, e.task, f"{e.task} awaits review"))

    def on_review_approved(self, e: event_log.Event) -> None:
        self.on_merge_queued(e)
        self.task(e.task).detail = "approved in review; in the merge queue"
        self.marks.append(Mark(e.at, EventName.REVIEW_APPROVED, e.task, f"{e.task} approved in review"))

    def on_review_rejected(self, e: event_log.Event) -> None:
        """Its release follows, with the reason the next attempt reads."""
        self.task(e.task).detail = "rejected in review"
        self.marks.append(Mark(e.at, EventName.REVIEW_REJECTED, e.task, f"{e.task} rejected in review"
                               + (f"; the branch is kept as {kept}" if (kept := e.get_str("kept_as")) else "")))

    def on_stale_branch(self, e: event_log.Event) -> None:
        self.leave_queue(e)
        row = self.task(e.task)
        row.outcome, row.detail = "waiting", "not merged: the task changed meanwhile; branch kept"

    def on_conflict_filed(self, e: event_log.Event) -> None:
        conflict_task = e.get_str("conflict_task") or "?"
        kind = e.get_str("kind") or "conflict"
        if conflict_task not in self.conflicts:
            self.conflicts[conflict_task] = Conflict(e.task, conflict_task, kind)
            self.conflicts_on.setdefault(e.task, []).append(self.conflicts[conflict_task])
        self.task(conflict_task).kind = kind
        self.task(conflict_task).title = e.get_str("title") or conflict_task
        row = self.task(e.task)
        row.outcome, row.detail = "waiting", f"waits for {conflict_task}"
        what = "merge conflict" if kind == "conflict" else "failing checks"
        self.marks.append(Mark(e.at, "conflict", e.task, f"{what} on {e.task}: filed {conflict_task}"))

    # ---- how a task ends ---------------------------------------------------------------

    def on_released(self, e: event_log.Event) -> None:
        row = self.task(e.task)
        row.outcome, row.detail = "waiting", "released for another attempt"
        attempt = self.last.get(e.task)
        if attempt is not None and attempt.outcome in ("open", "queued"):
            attempt.outcome = "released"
        elif attempt is not None and attempt.ended != "exited" and attempt.outcome == "merged":
            how = "timed-out" if attempt.ended == "timed_out" else "stopped"
            row.detail = f"its {how} attempt's work merged; released for another attempt"

    def on_blocked(self, e: event_log.Event) -> None:
        self.leave_queue(e)
        row = self.task(e.task)
        row.outcome, row.detail = "blocked", e.get_str("reason") or ""
        if (attempt := self.last.get(e.task)) is not None and attempt.outcome in ("open", "queued", "released"):
            attempt.outcome = "blocked"
        for conflict in [*self.conflicts_on.get(e.task, ()), *filter(None, [self.conflicts.get(e.task)])]:
            if conflict.ended in ("open", "resolved"):
                conflict.ended = "blocked"

    def on_record_dropped(self, e: event_log.Event) -> None:
        """The task was deleted from the store, or (remote mode) is no longer this host's: its record
        was dropped."""
        self.leave_queue(e)
        row = self.task(e.task)
        why = e.get_str("reason") or "deleted from the store"
        row.outcome, row.detail = "dropped", f"{why}; dropped its {e.get_str('record') or 'record'}"
        if (conflict := self.conflicts.get(e.task)) is not None and conflict.ended == "open":
            conflict.ended = "dropped"

    def on_claim_lost(self, e: event_log.Event) -> None:
        """Its claim was taken back while it ran (its lease lapsed): the task is another's now."""
        row = self.task(e.task)
        row.outcome, row.detail = "waiting", e.get_str("reason") or ""
        if (attempt := self.last.get(e.task)) is not None and attempt.outcome == "open":
            attempt.outcome = "released"

    def on_closed(self, e: event_log.Event) -> None:
        """A conflict or fix task resolved by its worker (a merged task is closed after `merged`)."""
        if e.task in self.conflicts:
            self.conflicts[e.task].ended = "resolved"
            row = self.task(e.task)
            row.outcome, row.detail = "resolved", ""
            if (attempt := self.last.get(e.task)) is not None:
                attempt.outcome = "resolved"

    def on_reverted(self, e: event_log.Event) -> None:
        """Its merges were undone on main by a revert task's branch: reopened, or left closed."""
        row, undo = self.task(e.task), e.get_str("revert_task") or "?"
        reopened = e.fields.get("reopened") is True
        row.outcome = "waiting" if reopened else "reverted"
        row.detail = f"undone on main by {undo}" + ("; reopened for another attempt" if reopened else "")
        self.marks.append(Mark(e.at, "reverted", e.task, f"{e.task} reverted on main by {undo}"))

    def on_main_checked(self, e: event_log.Event) -> None:
        commit = (e.get_str("commit") or "")[:10]
        if e.fields.get("passed") is True:
            self.marks.append(Mark(e.at, "main_passed", None, f"main passed its checks at {commit}"))
        else:
            self.marks.append(Mark(e.at, "main_failed", None, f"main fails its checks at {commit}: merges held, "
                                                              "no fix task filed"))

    def on_breaker_tripped(self, e: event_log.Event) -> None:
        failures = e.get_int("failures")
        self.marks.append(Mark(e.at, "breaker", None, f"breaker tripped after {failures} failed attempts in a row"))

    # ---- the end -----------------------------------------------------------------------

    def finish(self, events: int, skipped: int) -> Report:
        for row in self.tasks.values():
            found = [p for p in dict.fromkeys(a.log for a in row.attempts if a.log is not None)
                     if p.is_file() and not p.is_symlink()]  # a link could point anywhere
            if len(found) > 1 and len(found) == len(row.attempts):  # one log per attempt
                row.logs = [(f"attempt {a.number}", a.log) for a in row.attempts if a.log is not None]
            else:
                row.logs = [("log", path) for path in found]
            counts = [t for t in map(tokens_in_log, found) if t is not None]
            row.tokens = sum(counts, Tokens()) if counts else None
        return Report(events, skipped, self.runs, self.attempts, self.tasks, self.marks, self.queue_depth,
                      list(self.conflicts.values()), self.refills, self.merge_latencies, max(self.slots, 1))


def build_report(events: event_log.EventReader, logs_dir: Path) -> Report:
    """The report of every event the reader reads, one at a time: none is kept beyond its use."""
    builder = _Builder(logs_dir.resolve())
    with no_cycle_collection():
        for event in events:
            builder.add(event)
    return builder.finish(events.read, events.skipped)


@contextlib.contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Reading a long history makes many objects that live on and no reference cycles: the
    cycle collector's passes over them would take a third of the time and free nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
