"""The dispatcher's records, and the one state document they make.

In memory the state is one `DispatchState`; on disk it is the two documented files:
.dispatch_state.json (it carries "version") and .dispatch_pending_merge_retries.json (a bare map
from a conflict or fix task's id to the pending merge it settles: a "version" key there would
read as a task id, and README, tests and users read that file).

Reading never writes. A file an earlier release wrote (version 1: every release before the
crew/ package, whose files had no "version"; version 2: before main's check was recorded;
version 3: before the dispatcher remembered the last main it saw; version 4: before a merge
request could await a person's review; version 5: before branches were pushed to a remote;
version 6: before a lost claim's branch was remembered until it was pushed) is
checked as that release checked it, then migrated in memory; the first save writes it as this
release does. The version is raised for a field an earlier release must not drop: that release
would land a branch that awaits review.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

from crew import errors
from crew import names
from crew.dispatch import review as review_state


STATE_VERSION = 7
TIMED_OUT = "timed out"
TASK_BLOCKED = "stopped: its task was blocked"  # by the user, while the worker ran
CLAIM_LOST = "stopped: its claim was taken back"  # its lease lapsed and another took the task (bd)
# The slot of the task on deck: claimed, recorded and its worktree made while every slot was
# busy, its agent started the moment a worker exits (it takes that worker's slot, and the worker
# leaving takes this one until its tree is gone and it is judged). Never a free slot. A release
# that reads it finds a worker recorded and never started, and releases its task.
ON_DECK = 0


class WorkerKind(enum.StrEnum):
    """What a worker works on. A str, as the state file and the events write it."""

    TASK = "task"  # its own task, on its own branch
    CONFLICT = "conflict"  # a conflict or fix task, on the branch of the task it settles


class Outcome(enum.StrEnum):
    """What becomes of a merged branch's task: closed, or released (the work of an ended worker
    may be partial)."""

    CLOSE = "close"
    RELEASE = "release"


class PendingKind(enum.StrEnum):
    """Why a merge waits for a follow-up task: its branch conflicts with main, or its gate failed."""

    CONFLICT = "conflict"
    GATE = "gate"


def same_creation(recorded: str, created_at: str) -> bool:
    """Whether a record's creation time is the task's. An empty one (a version 1 file) matches
    any. Real bd answers `create` in nanoseconds and everything after rounded to the second."""
    if recorded in ("", created_at):
        return True
    try:
        return abs((dt.datetime.fromisoformat(recorded) - dt.datetime.fromisoformat(created_at)).total_seconds()) < 1
    except (ValueError, TypeError):
        return False


class Record:
    """A dataclass written as one flat JSON object (a CarriesBranch with the record it holds
    flattened in). Reading drops keys it does not know (one an earlier release wrote, or a later
    one added) and fills absent ones from `defaults`, then from the field's own default."""

    # Every record is a dataclass: said here so that the type checker lets dataclasses read one.
    __dataclass_fields__: typing.ClassVar[dict[str, dataclasses.Field[typing.Any]]]

    def to_json(self) -> dict[str, typing.Any]:
        return {key: file_value(value) for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def file_fields(cls) -> list[dataclasses.Field[typing.Any]]:
        """The fields its file holds, in the file's order."""
        return list(dataclasses.fields(cls))

    @classmethod
    def from_json(cls, data: dict[str, typing.Any], defaults: dict[str, typing.Any] | None = None) -> Self:
        known = {field.name for field in dataclasses.fields(cls)}
        fields = {**(defaults or {}), **{key: value for key, value in data.items() if key in known}}
        return cls(**{key: kinds[key](value) if key in (kinds := typed_fields(cls)) else value
                      for key, value in fields.items()})


def file_value(value: object) -> object:
    """A record's value as its file holds it: a StrEnum's value is written as the str it is, a
    path as its text."""
    return str(value) if isinstance(value, Path) else value


def typed_fields(cls: type) -> dict[str, type]:
    """The fields of a record held in memory as what its file writes as a string (one of a
    StrEnum's values, or a path), by name (read once a kind); a record it holds (a
    BranchInFlight) gives its own, as its file holds them flat."""
    if cls not in TYPED_FIELDS:
        hints = typing.get_type_hints(cls)
        TYPED_FIELDS[cls] = {name: kind for name, kind in hints.items()
                             if isinstance(kind, type) and issubclass(kind, (enum.StrEnum, Path))}
        for kind in hints.values():
            if isinstance(kind, type) and issubclass(kind, Record):
                TYPED_FIELDS[cls].update(typed_fields(kind))
    return TYPED_FIELDS[cls]


TYPED_FIELDS: dict[type, dict[str, type]] = {}


def wrong_values(records: Iterable[tuple[str, object]], cls: type, what: str) -> str | None:
    """The first record (an object) with a value its record kind does not know, described."""
    for name, record in records:
        for key, kind in typed_fields(cls).items():
            if not isinstance(record, dict) or key not in record:
                continue
            if issubclass(kind, enum.StrEnum) and record[key] not in set(kind):
                return (f"{what} {name}: {json.dumps(key)} must be one of {', '.join(map(json.dumps, kind))}, "
                        f"not {json.dumps(record[key])}")
            if issubclass(kind, Path) and not (isinstance(record[key], str) and record[key]):
                return f"{what} {name}: {json.dumps(key)} must be a folder's path, not {json.dumps(record[key])}"
    return None


def required(cls: type[Record]) -> list[str]:
    """The keys a record of this kind cannot be read without."""
    return [field.name for field in cls.file_fields()
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING]


@dataclasses.dataclass
class Worker(Record):
    """One agent run. Its process (and a start still under way) is runtime, not record: the
    worker pool keeps those by slot."""

    slot: int
    task_id: str
    title: str
    branch: str
    worktree: Path
    base: str
    attempt: int
    started_at: float
    deadline: float | None
    kind: WorkerKind = WorkerKind.TASK
    pid: int | None = None
    pid_start_time: float | None = None
    # The claim's owner and the task's identity: an id alone may name another task one day, and
    # the actor may change (it defaults to the hostname) while the claim stands.
    actor: str = ""
    task_created_at: str = ""
    log: str = ""  # this attempt's own output, relative to the repository root
    # Why the dispatcher ended it, recorded before the kill: an ended worker is never judged as
    # one that finished. TIMED_OUT counts as an attempt; a stop by the user does not.
    ended: str | None = None

    @property
    def stopped_by_user(self) -> bool:
        return self.ended is not None and self.ended != TIMED_OUT

    @property
    def ended_by_stop(self) -> bool:
        """Ended by a second Ctrl-C or a stop signal, which gave its task's claim back."""
        return self.stopped_by_user and self.ended not in (TASK_BLOCKED, CLAIM_LOST)


@dataclasses.dataclass
class BranchInFlight(Record):
    """A finished branch on its way to main, as it passes from the merge queue to a pending merge
    and back: the task it was made for, what becomes of that task once it merges, and its tries.
    outcome: close the task once merged, or release it (the work of an ended worker may be
    partial); counted: whether that release counts as a failed attempt; actor: whose claim the
    task is under; retries: the conflict and fix tasks filed for it so far."""

    task_id: str
    title: str
    branch: str
    worktree: Path
    outcome: Outcome
    note: str
    retries: int
    counted: bool = True
    actor: str = ""
    task_created_at: str = ""
    attempt_log: str = ""  # the log of the attempt that made the branch, relative to the repository root

    @classmethod
    def left_by(cls, worker: Worker, outcome: Outcome, note: str, counted: bool) -> BranchInFlight:
        """The branch a worker left, before any merge was tried."""
        return cls(task_id=worker.task_id, title=worker.title, branch=worker.branch, worktree=worker.worktree,
                   outcome=outcome, note=note, retries=0, counted=counted, actor=worker.actor,
                   task_created_at=worker.task_created_at, attempt_log=worker.log)


class CarriesBranch(Record):
    """A record that holds one BranchInFlight, handed on whole from record to record. Its file
    keeps it flat, among the record's own keys, in the order FILE_KEYS gives (the order earlier
    releases wrote); a key in SET_ONLY is written only when it is set, so the files of releases
    that did not have it read and write back unchanged. The branch's facts read as the record's
    own (request.branch)."""

    flight: BranchInFlight
    FILE_KEYS: typing.ClassVar[tuple[str, ...]]
    SET_ONLY: typing.ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, typing.Any]:
        flat = dataclasses.asdict(self)
        flat.update(flat.pop("flight"))
        return {key: file_value(flat[key]) for key in self.FILE_KEYS if key not in self.SET_ONLY or flat[key]}

    @classmethod
    def from_json(cls, data: dict[str, typing.Any], defaults: dict[str, typing.Any] | None = None) -> Self:
        given = {**(defaults or {}), **data}
        shared = {field.name for field in dataclasses.fields(BranchInFlight)}
        flight = BranchInFlight.from_json({key: value for key, value in given.items() if key in shared})
        return super().from_json({**{key: value for key, value in given.items() if key not in shared},
                                  "flight": flight})

    @classmethod
    def file_fields(cls) -> list[dataclasses.Field[typing.Any]]:
        own = dataclasses.fields(cls)
        fields = {field.name: field for field in (*own, *dataclasses.fields(BranchInFlight))}
        return [fields[key] for key in cls.FILE_KEYS]

    @property
    def task_id(self) -> str:
        return self.flight.task_id

    @property
    def title(self) -> str:
        return self.flight.title

    @property
    def branch(self) -> str:
        return self.flight.branch

    @property
    def worktree(self) -> Path:
        return self.flight.worktree

    @property
    def outcome(self) -> Outcome:
        return self.flight.outcome

    @property
    def note(self) -> str:
        return self.flight.note

    @property
    def retries(self) -> int:
        return self.flight.retries

    @property
    def counted(self) -> bool:
        return self.flight.counted

    @property
    def actor(self) -> str:
        return self.flight.actor

    @property
    def task_created_at(self) -> str:
        return self.flight.task_created_at

    @property
    def attempt_log(self) -> str:
        return self.flight.attempt_log


@dataclasses.dataclass
class MergeRequest(CarriesBranch):
    """A finished branch in the merge queue."""

    flight: BranchInFlight
    queued_at: float = 0.0
    retry_at: float = 0.0  # a merge that waits (main is held) is not tried before this
    waits: int = 0  # how often it has waited in a row: the pause grows with it
    waiting: str | None = None  # why it waits, for --status and the summary
    rebased: bool = False  # on_conflict "auto_rebase" has rebased it once already
    # Why it is held for a person's decision (it carries commits that left main, and does not
    # rebase without them); never tried while held.
    held: str | None = None
    # Review before merge (crew.dispatch.review): none asked, awaiting (out of the queue until a
    # person decides; the decision is read from the task store) or approved. review_tip: the
    # branch tip shown to the person; review_base and review_commit: the main and the merge commit
    # the gate passed on before the review (landed as they are if neither main nor the branch
    # moved); review_gate_log: that gate's log ("" with no gate).
    review: review_state.State = review_state.State.NONE
    review_tip: str = ""
    review_since: float = 0.0
    review_base: str = ""
    review_commit: str = ""
    review_gate_log: str = ""

    FILE_KEYS = ("task_id", "title", "branch", "worktree", "outcome", "note", "retries", "counted", "queued_at",
                 "actor", "task_created_at", "retry_at", "waits", "waiting", "rebased", "held", "attempt_log",
                 "review", "review_tip", "review_since", "review_base", "review_commit", "review_gate_log")


@dataclasses.dataclass
class PendingMerge(CarriesBranch):
    """A merge that waits for its conflict or fix task (kind "conflict" or "gate"); kept under
    that task's id. branch_tip: the branch as the dispatcher left it, so a conflict counts as
    resolved only once someone commits on top of it."""

    kind: PendingKind
    flight: BranchInFlight
    files: list[str]
    main_commit: str = ""
    created_at: str = ""
    branch_tip: str | None = None
    for_person: bool = False
    followup_created_at: str = ""

    FILE_KEYS = ("kind", "task_id", "title", "branch", "worktree", "files", "outcome", "note", "retries",
                 "main_commit", "created_at", "branch_tip", "for_person", "counted", "actor", "task_created_at",
                 "followup_created_at", "attempt_log")
    SET_ONLY = ("attempt_log",)


@dataclasses.dataclass
class LeftMain(Record):
    """The commits that left main (by a user's reset, amend or rebase) that a dispatcher's branch
    carries, and the main it was made on then: before it merges, the branch is rebased onto main
    without them (`git rebase --onto <main> <old_main> <branch>`)."""

    old_main: str
    commits: list[str]


@dataclasses.dataclass
class BranchOwner(Record):
    """The task a branch was made for: a branch is continued only by that very task."""

    task_id: str
    task_created_at: str


@dataclasses.dataclass
class KeptBranch(Record):
    """Remote mode: a branch whose task's claim was lost (another host took the task back), to be
    pushed under a name saying whose attempt it was, so that its commits are not only here;
    remembered until that push is done or refused, so that a crash before it loses no push."""

    task_id: str
    actor: str  # whose attempt it was: the name it is pushed under says so


@dataclasses.dataclass
class DispatcherRecord(Record):
    """The running dispatcher, for --status and for the refusal of a second one."""

    pid: int
    started_at: str
    pid_start_time: float | None = None


@dataclasses.dataclass
class GateRecord(Record):
    """A merge gate under way: the merge commit it checks (made on `base`: main, or with parallel
    gates the speculative commit of the entry ahead), and its process once started. stack: the
    queue entries ahead of it that its commit holds (task ids, in order; empty: on main alone)."""

    task_id: str
    branch: str
    base: str
    commit: str
    worktree: Path
    log: str
    pid: int | None
    pid_start_time: float | None
    started_at: float
    deadline: float | None
    stack: list[str] = dataclasses.field(default_factory=list)
    # Why its process tree is being ended (cancelled, timed out), recorded as the kill begins:
    # until the tree is gone, --status shows it as ending, not gating.
    ending: str | None = None


def process_mark(root: Path, record: Worker | GateRecord) -> str:
    """What every process started for this worker or gate carries in its environment (see
    crew/orphans.py): one attempt's (its log is its own), or one gate's of one commit, in this
    repository. Made from the record, so a restart finds what an earlier run left running."""
    return f"{root}|{record.log if isinstance(record, Worker) else f'{record.worktree}@{record.commit}'}"


@dataclasses.dataclass
class MainCheck(Record):
    """merge_gate_command's last verdict on main itself (`commit`), taken before a branch's
    failure is blamed on the branch: passed, or failed with the output's tail. It holds until
    main moves; a failure is looked at again after main_recheck_secs."""

    commit: str
    passed: bool
    checked_at: float
    output: str = ""


@dataclasses.dataclass
class DispatchState:
    """Everything the dispatcher must remember across a crash."""

    dispatcher: DispatcherRecord | None = None
    workers: dict[int, Worker] = dataclasses.field(default_factory=dict)  # by slot
    merge_queue: list[MergeRequest] = dataclasses.field(default_factory=list)
    attempts: dict[str, int] = dataclasses.field(default_factory=dict)  # failed attempts by task id
    branches: dict[str, BranchOwner] = dataclasses.field(default_factory=dict)
    actors: list[str] = dataclasses.field(default_factory=list)  # every actor this dispatcher claimed under
    gates: list[GateRecord] = dataclasses.field(default_factory=list)
    pending: dict[str, PendingMerge] = dataclasses.field(default_factory=dict)  # by conflict or fix task id
    main_check: MainCheck | None = None
    # The last main the dispatcher saw: when main no longer descends from it, commits left main.
    main_seen: str = ""
    left_main: dict[str, LeftMain] = dataclasses.field(default_factory=dict)  # by branch
    # Remote mode: the tip this host last pushed of each branch, by branch: the next push of the
    # branch expects the remote to have exactly that (never a plain force).
    pushed: dict[str, str] = dataclasses.field(default_factory=dict)
    keeping: dict[str, KeptBranch] = dataclasses.field(default_factory=dict)  # by local branch

    def state_json(self) -> dict[str, typing.Any]:
        """The content of .dispatch_state.json."""
        return {"version": STATE_VERSION, "dispatcher": self.dispatcher.to_json() if self.dispatcher else None,
                "workers": [worker.to_json() for worker in self.workers.values()],
                "merge_queue": [request.to_json() for request in self.merge_queue],
                "attempts": dict(self.attempts),
                "branches": {name: owner.to_json() for name, owner in self.branches.items()},
                "actors": list(self.actors), "gates": [gate.to_json() for gate in self.gates],
                "main_check": self.main_check.to_json() if self.main_check else None,
                "main_seen": self.main_seen,
                "left_main": {branch: left.to_json() for branch, left in self.left_main.items()},
                "pushed": dict(self.pushed),
                "keeping": {branch: kept.to_json() for branch, kept in self.keeping.items()}}

    def pending_json(self) -> dict[str, typing.Any]:
        """The content of .dispatch_pending_merge_retries.json."""
        return {followup: pending.to_json() for followup, pending in self.pending.items()}


# What every record needs to be read; the other fields are read with defaults. A pending merge's
# title is filled in: files of state version 1 may have none.
WORKER_KEYS = required(Worker)
QUEUE_ENTRY_KEYS = required(MergeRequest)
PENDING_KEYS = [key for key in required(PendingMerge) if key != "title"]
BRANCH_KEYS = required(BranchOwner)
DISPATCHER_KEYS = required(DispatcherRecord)
GATE_KEYS = required(GateRecord)
MAIN_CHECK_KEYS = required(MainCheck)
LEFT_MAIN_KEYS = required(LeftMain)
KEPT_KEYS = required(KeptBranch)


def missing_keys(records: Iterable[tuple[str, object]], keys: Sequence[str], what: str) -> str | None:
    """The first record that is not an object or lacks a key, described; None if all are whole."""
    for name, record in records:
        if not isinstance(record, dict):
            return f"{what} {name} is not an object"
        if lacking := [key for key in keys if key not in record]:
            return f"{what} {name} lacks {', '.join(map(json.dumps, lacking))}"
    return None


def state_version(data: dict[str, typing.Any]) -> int | str:
    """The file's version (1 when it has none), or what is wrong with it."""
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return '"version" must be a whole number'
    if version > STATE_VERSION:
        return f"written by a newer release (state version {version}); run that release or move the file"
    return version


def state_problem(data: object) -> str | None:
    """What keeps .dispatch_state.json from being read, if anything."""
    if not isinstance(data, dict):
        return "it is not a JSON object"
    if isinstance(version := state_version(data), str):
        return version
    for key, kind in (("workers", list), ("merge_queue", list), ("attempts", dict)):
        if not isinstance(data.get(key), kind):
            return f"{json.dumps(key)} is missing or not a {'list' if kind is list else 'JSON object'}"
    # Written by later releases of version 1 (branches, actors), since version 2 (gates), since version 3
    # (main_check), since version 4 (left_main, main_seen), since version 6 (pushed) or since version 7
    # (keeping): absent is empty.
    # Version 5 added fields to merge requests only (their review), read with defaults.
    for key, kind in (("branches", dict), ("actors", list), ("gates", list), ("left_main", dict), ("pushed", dict),
                      ("keeping", dict)):
        if key in data and not isinstance(data[key], kind):
            return f"{json.dumps(key)} is not a {'list' if kind is list else 'JSON object'}"
    if data.get("main_check") is not None and (why := missing_keys([("record", data["main_check"])],
                                                                   MAIN_CHECK_KEYS, "main check")):
        return why
    if not isinstance(data.get("main_seen", ""), str):
        return '"main_seen" is not a string'
    if not all(isinstance(tip, str) for tip in data.get("pushed", {}).values()):
        return '"pushed" holds a tip that is not a string'
    dispatcher = data.get("dispatcher")
    return ((missing_keys([("record", dispatcher)], DISPATCHER_KEYS, "dispatcher") if dispatcher is not None else None)
            or missing_keys(((f"#{i + 1}", w) for i, w in enumerate(data["workers"])), WORKER_KEYS, "worker record")
            or wrong_values(((f"#{i + 1}", w) for i, w in enumerate(data["workers"])), Worker, "worker record")
            or missing_keys(((f"#{i + 1}", e) for i, e in enumerate(data["merge_queue"])), QUEUE_ENTRY_KEYS,
                            "merge-queue entry")
            or wrong_values(((f"#{i + 1}", e) for i, e in enumerate(data["merge_queue"])), MergeRequest,
                            "merge-queue entry")
            or missing_keys(data.get("branches", {}).items(), BRANCH_KEYS, "branch record")
            or missing_keys(((f"#{i + 1}", g) for i, g in enumerate(data.get("gates", []))), GATE_KEYS,
                            "gate record")
            or wrong_values(((f"#{i + 1}", g) for i, g in enumerate(data.get("gates", []))), GateRecord,
                            "gate record")
            or missing_keys(data.get("left_main", {}).items(), LEFT_MAIN_KEYS, "left-main record")
            or missing_keys(data.get("keeping", {}).items(), KEPT_KEYS, "kept branch"))


def pending_problem(data: object) -> str | None:
    """What keeps .dispatch_pending_merge_retries.json from being read, if anything."""
    if not isinstance(data, dict):
        return "it is not a JSON object"
    return (missing_keys(data.items(), PENDING_KEYS, "pending merge")
            or wrong_values(data.items(), PendingMerge, "pending merge"))


def load_state(state_json: object, pending_json: object, *, state_path: Path, pending_path: Path,
               default_actor: str, logs: Path) -> DispatchState:
    """The state the two files hold (None for a file that does not exist), migrated to this
    release's records. A file that cannot be read is a UserError naming it and the problem,
    and is left as it is: it may hold the only record of running work.

    default_actor: whose claims the records written before claims carried their actor are.
    logs: the events and worker logs folder (a worker written before each attempt had its own
    log used <task>.log there)."""
    for path, content, problem in ((state_path, state_json, state_problem),
                                   (pending_path, pending_json, pending_problem)):
        if content is not None and (why := problem(content)):
            raise errors.UserError(f"{path}: {why}; fix or move it (it was left untouched)")
    data: dict[str, typing.Any] = state_json if isinstance(state_json, dict) else {}  # checked just above
    state = DispatchState(
        dispatcher=DispatcherRecord.from_json(data["dispatcher"]) if data.get("dispatcher") else None,
        attempts=dict(data.get("attempts", {})),
        branches={name: BranchOwner.from_json(owner) for name, owner in data.get("branches", {}).items()},
        actors=list(data.get("actors", [])),
        gates=[GateRecord.from_json(gate) for gate in data.get("gates", [])],
        main_check=MainCheck.from_json(data["main_check"]) if data.get("main_check") else None,
        # Before version 4 no main was remembered: the first run records the main it finds.
        main_seen=data.get("main_seen", ""),
        left_main={branch: LeftMain.from_json(left) for branch, left in data.get("left_main", {}).items()},
        # Before version 6 nothing was pushed: every branch's first push expects none on the remote.
        pushed=dict(data.get("pushed", {})),
        # Before version 7 a lost claim's branch was pushed from memory only.
        keeping={branch: KeptBranch.from_json(kept) for branch, kept in data.get("keeping", {}).items()})
    for record in data.get("workers", []):
        worker = migrated_worker(record, default_actor, logs)
        state.workers[worker.slot] = worker
    # Records written before claims carried their actor and task identity: this actor's, and
    # any task with the id.
    state.merge_queue = [MergeRequest.from_json(entry, {"actor": default_actor})
                         for entry in data.get("merge_queue", [])]
    state.pending = {followup: PendingMerge.from_json(pending, {"title": pending["task_id"], "actor": default_actor})
                     for followup, pending in (pending_json if isinstance(pending_json, dict) else {}).items()}
    return state


def migrated_worker(data: dict[str, typing.Any], default_actor: str, logs: Path) -> Worker:
    defaults = {}
    if "log" not in data:
        legacy = logs / f"{names.file_name(str(data['task_id']))}.log"
        defaults["log"] = f"{logs.name}/{legacy.name}" if legacy.is_file() else ""
    worker = Worker.from_json(data, defaults)
    worker.actor = worker.actor or default_actor
    if data.get("timed_out") and worker.ended is None:  # state version 1 kept a flag, not the reason
        worker.ended = TIMED_OUT
    return worker
