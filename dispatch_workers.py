#!/usr/bin/env python3
"""Run ready tasks in parallel agent workers, each in its own git worktree, and merge their branches."""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import webbrowser
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import filelock

from crew import config as configuration
from crew import errors
from crew import failpoints
from crew import files as statefiles
from crew import git
from crew import llm
from crew import names as safe_names
from crew import processes
from crew import suggestions as suggested_tasks
from crew import tasks as task_stores
from crew import testing
from crew import workspace
from crew.cli import base as cli_base
from crew.report import events
from crew.report import page
from crew.tasks import model as task_model

EPILOG = """\
How it works:
  Each ready task is claimed, gets a branch (work/<id>) and a worktree beside the repository,
  and a worker: the agent command (Aider by default) with the task in a message file. A worker
  is judged from git, not its exit code: commits ahead of main mean work to merge. Finished
  branches merge into main one at a time behind the merge slot (.dispatch_merge.lock), without
  touching your checkout beyond a fast-forward. A conflict files a task "Resolve merge conflict:
  <branch>", which runs in the branch's own worktree; once it is closed, the merge is retried.

  Everything the dispatcher knows is in .dispatch_state.json and
  .dispatch_pending_merge_retries.json: kill it at any moment and start it again, and it adopts
  live workers, finishes dead ones and carries on. Ctrl-C once: start nothing new, let running
  workers finish. Twice: end the workers now (their branches are kept for the next run).

examples:
  py dispatch_workers.py --demo             a scratch repository, a scripted agent, real merges
  py dispatch_workers.py                    run until nothing is ready or running
  py dispatch_workers.py --max-workers 4 --watch
  py dispatch_workers.py --dry-run          what would start now, and why others wait
  py dispatch_workers.py --status --json    the state of a running dispatcher
  py dispatch_workers.py --report --open    a picture of the runs so far, in your browser

exit codes: 0 every task it ran was merged; 1 some task ended blocked or a merge is waiting
(the summary says why); 2 bad usage or configuration; 130 interrupted; 143 stopped by SIGTERM,
129 by SIGHUP.
"""

CONFLICT_TITLE = "Resolve merge conflict: {branch}"
GATE_TITLE = "Fix failing checks: {branch}"
# The dispatcher's own merge of main into a branch, conflict markers and all, for a conflict task.
PREPARED_SUBJECT = "dispatch: merge {main} into {branch}, conflicts left for {task_id}"
CONFLICT_LABEL = "merge-conflict"
# A conflict task no agent may take: git cannot show its conflict as text markers.
PERSON_LABEL = "needs-person"
GATE_LABEL = "merge-gate"
MODEL_LABEL = "model:"
WORKER_POLL_SECS = 0.01  # a worker's exit is noticed within this, so a slot refills at once
START_WAIT_SECS = 0.2  # how long a refill may wait for its worktree before merges go ahead
MERGE_SHORT = 10
OWNED_MARKER = "dispatch-owned"  # in a worktree's git admin dir: the dispatcher made this worktree
MERGE_WAIT_MAX_SECS = 30  # the longest a waiting merge goes untried
# --no-show-release-notes: on a version's first run --yes-always would accept "see what's new?"
# and open a web browser on the user's desktop, once per worker.
AIDER_COMMAND = ["aider", "--message-file", "{message_file}", "--yes-always", "--no-gitignore",
                 "--no-check-update", "--no-analytics", "--no-show-model-warnings", "--no-pretty",
                 "--no-show-release-notes"]
STANDING_INSTRUCTIONS = """\
Instructions:
- Keep to the files named above unless the task clearly needs more.
- When done, make your edits, commit them, then stop. Do not ask for more input.
- Write follow-up ideas for later tasks, one a line, to {followups} at the repository root."""


# --------------------------------------------------------------------------------------------
# State files
# --------------------------------------------------------------------------------------------


# What every record needs; records may carry more (newer fields are read with defaults).
QUEUE_ENTRY_KEYS = ("task_id", "title", "branch", "worktree", "outcome", "note", "retries")
PENDING_KEYS = ("kind", "task_id", "title", "branch", "worktree", "files", "outcome", "note", "retries")


def missing_keys(records, keys: Sequence[str], what: str) -> str | None:
    """The first record that is not an object or lacks a key, described; None if all are whole."""
    for name, record in records:
        if not isinstance(record, dict):
            return f"{what} {name} is not an object"
        if lacking := [key for key in keys if key not in record]:
            return f"{what} {name} lacks {', '.join(map(json.dumps, lacking))}"
    return None


def state_problem(data: dict) -> str | None:
    for key, kind in (("workers", list), ("merge_queue", list), ("attempts", dict)):
        if not isinstance(data.get(key), kind):
            return f"{json.dumps(key)} is missing or not a {'list' if kind is list else 'JSON object'}"
    return (missing_keys(((f"#{i + 1}", w) for i, w in enumerate(data["workers"])), WORKER_KEYS, "worker record")
            or missing_keys(((f"#{i + 1}", e) for i, e in enumerate(data["merge_queue"])), QUEUE_ENTRY_KEYS,
                            "merge-queue entry"))


def pending_problem(data: dict) -> str | None:
    return missing_keys(data.items(), PENDING_KEYS, "pending merge")


def state_files(config: configuration.Config) -> tuple[statefiles.StateFile, statefiles.StateFile]:
    state, pending = workspace.DISPATCH_STATE_FILES
    return (statefiles.StateFile(config.root / state, {"dispatcher": None, "workers": [], "merge_queue": [], "attempts": {}},
                                 state_problem),
            statefiles.StateFile(config.root / pending, {}, pending_problem))


# --------------------------------------------------------------------------------------------
# Git plumbing the dispatcher needs
# --------------------------------------------------------------------------------------------


def add_dispatcher_worktree(root: Path, worktree: Path, *args: str) -> None:
    """`git worktree add`, then the proof that the dispatcher made it: a marker in the worktree's
    git admin dir (.git/worktrees/<name>/), which no edit in the worktree reaches and which git
    deletes with the worktree. The marker names the folder, so a worktree moved since is not ours."""
    git.git("worktree", "add", "-q", *args, cwd=root)
    admin = Path(git.git_out(worktree, "rev-parse", "--absolute-git-dir"))
    (admin / OWNED_MARKER).write_text(str(worktree.resolve()) + "\n", encoding="utf-8")


def dispatcher_worktrees(root: Path) -> set[Path]:
    """The worktrees git lists that carry the dispatcher's marker: the only ones it may delete."""
    listed = set()
    for line in git.git_out(root, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            listed.add(Path(line[len("worktree "):]).resolve())
    owned = set()
    admins = root / ".git" / "worktrees"
    for admin in admins.iterdir() if admins.is_dir() else ():
        try:
            marked = Path((admin / OWNED_MARKER).read_text(encoding="utf-8").strip())
            folder = Path((admin / "gitdir").read_text(encoding="utf-8").strip()).parent.resolve()
        except OSError:
            continue
        if folder == marked and folder in listed:
            owned.add(folder)
    return owned


def remove_worktree(root: Path, worktree: Path) -> None:
    git.git("worktree", "remove", "--force", "--force", str(worktree), cwd=root, check=False)
    if worktree.exists():  # not a worktree git knows (any more): remove what is left
        shutil.rmtree(worktree, ignore_errors=True)
        # This one registration only: `git worktree prune` would also forget a user's worktree
        # whose folder is away for now (an unplugged drive), with its index and HEAD.
        git.git("worktree", "remove", "--force", "--force", str(worktree), cwd=root, check=False)


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


def same_creation(recorded: str, created_at: str) -> bool:
    """Whether a record's creation time is the task's. An empty one (an older state file) matches
    any. Real bd answers `create` in nanoseconds and everything after rounded to the second."""
    if recorded in ("", created_at):
        return True
    try:
        return abs((dt.datetime.fromisoformat(recorded) - dt.datetime.fromisoformat(created_at)).total_seconds()) < 1
    except (ValueError, TypeError):
        return False


@dataclasses.dataclass
class Worker:
    """One agent run: the record kept in .dispatch_state.json, and the process when it is ours."""

    slot: int
    task_id: str
    title: str
    branch: str
    worktree: str
    base: str
    attempt: int
    started_at: float
    deadline: float | None
    kind: str = "task"  # or "conflict": a conflict or fix task working on another task's branch
    pid: int | None = None
    pid_start_time: float | None = None
    # The claim's owner and the task's identity: an id alone may name another task one day, and
    # the actor may change (it defaults to the hostname) while the claim stands.
    actor: str = ""
    task_created_at: str = ""
    proc: subprocess.Popen | None = dataclasses.field(default=None, repr=False)
    starting: concurrent.futures.Future | None = dataclasses.field(default=None, repr=False)
    log: str = ""  # this attempt's own output, relative to the repository root
    # Why the dispatcher ended it, recorded before the kill: an ended worker is never judged as
    # one that finished. TIMED_OUT counts as an attempt; a stop by the user does not.
    ended: str | None = None

    @property
    def stopped_by_user(self) -> bool:
        return self.ended is not None and self.ended != TIMED_OUT

    def record(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _IN_MEMORY}

    @classmethod
    def from_record(cls, data: dict) -> "Worker":
        names = {f.name for f in dataclasses.fields(cls)} - _IN_MEMORY
        return cls(**{k: v for k, v in data.items() if k in names})

    def has_exited(self) -> bool:
        if self.starting is not None:
            return False
        if self.proc is not None:
            return self.proc.poll() is not None
        return not processes.is_same_process_alive(self.pid, self.pid_start_time)


_IN_MEMORY = {"proc", "starting"}  # Worker fields that are not written to the state file
WORKER_KEYS = [f.name for f in dataclasses.fields(Worker) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
TIMED_OUT = "timed out"
TASK_BLOCKED = "stopped: its task was blocked"  # by the user, while the worker ran


def queue_entry(task_id: str, title: str, branch: str, worktree: str, outcome: str, note: str,
                retries: int, actor: str, task_created_at: str, counted: bool = True) -> dict:
    """A merge-queue entry. outcome: "close" the task once merged, or "release" it (the work of an
    ended worker may be partial); counted: whether that release counts as a failed attempt;
    actor: whose claim the task is under."""
    return {"task_id": task_id, "title": title, "branch": branch, "worktree": worktree, "outcome": outcome,
            "note": note, "retries": retries, "counted": counted, "queued_at": time.time(), "actor": actor,
            "task_created_at": task_created_at}


def worker_argv(config: configuration.Config, task: task_model.Task, message_file: Path, branch: str,
                worktree: Path) -> tuple[list[str], dict]:
    """The agent's command line and environment, from argument lists only: no shell ever sees them."""
    model = next((label[len(MODEL_LABEL):] for label in task.labels if label.startswith(MODEL_LABEL)),
                 config.worker_model)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/@-]*", model or ""):
        model = config.worker_model
    files = agent_files(task)
    env = {**git.child_environment(), "DISPATCH_TASK_ID": task.id, "DISPATCH_BRANCH": branch, "DISPATCH_WORKTREE": str(worktree)}
    # litellm (under Aider) otherwise fetches a model price list from the internet at every
    # start: offline that fails at once, behind a silent proxy it stalls each worker 5-10 s.
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    template = config.worker_command
    if template is None:
        if config.llm_api == "ollama":
            template = AIDER_COMMAND + ["--model", "ollama_chat/{model}", "{files}"]
            env["OLLAMA_API_BASE"] = config.llm_url
        else:
            template = AIDER_COMMAND + ["--model", "openai/{model}", "--openai-api-base", "{llm_url}/v1", "{files}"]
            env.setdefault("OPENAI_API_KEY", "sk-local-placeholder")
    values = {"message_file": str(message_file), "task_id": task.id, "branch": branch,
              "worktree": str(worktree), "model": model, "llm_url": config.llm_url}
    # One pass, so a value that happens to contain "{model}" is not expanded again.
    placeholder = re.compile(r"\{(" + "|".join(values) + r")\}")
    argv = []
    for arg in template:
        if arg == "{files}":
            argv.extend(files)
        else:
            argv.append(placeholder.sub(lambda m: values[m.group(1)], arg))
    return argv, env


def agent_files(task: task_model.Task) -> list[str]:
    """The task's files that are safe to hand the agent; an unsafe name never reaches the command
    line or the worktree (the message still lists it)."""
    files = []
    for raw in task.files:
        try:
            files.append(safe_names.check_repo_path(raw))
        except errors.UserError:
            pass
    return files


def make_parent_folders(worktree: Path, files: list[str]) -> None:
    """Aider's repository discovery finds no git repository when neither a file it is given nor
    that file's folder exists: it then works without git, in that folder. Never through a link a
    branch may carry: it could point outside the worktree."""
    for name in files:
        folder = worktree
        for part in Path(name).parent.parts:
            folder = folder / part
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                break
            folder.mkdir(exist_ok=True)


def task_message(config: configuration.Config, task: task_model.Task) -> str:
    description = task.description.strip()
    if task.files:
        # The scripts that create tasks write this line into the description: say it once.
        listed = "Files: " + ", ".join(task.files)
        kept = "\n".join(line for line in description.splitlines() if line.strip() != listed)
        description = re.sub(r"\n{3,}", "\n\n", kept).strip()
    parts = [f"Task {task.id}: {task.title}", description]
    if task.files:
        parts.append("Files to change: " + ", ".join(task.files))
    parts.append(STANDING_INSTRUCTIONS.format(followups=config.worker_followups_file))
    if config.worker_instructions:
        parts.append(read_instructions(config))
    return "\n\n".join(p for p in parts if p) + "\n"


def read_instructions(config: configuration.Config) -> str:
    text = config.worker_instructions or ""
    if text.startswith("@"):
        path = config.root / safe_names.check_repo_path(text[1:])
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise errors.UsageError(f"worker_instructions: cannot read {path}: {exc}") from None
    return text


# --------------------------------------------------------------------------------------------
# The dispatcher
# --------------------------------------------------------------------------------------------


class Dispatcher:
    """Owns the workers, the merge queue and the pending merges of one repository."""

    def __init__(self, config: configuration.Config, store, max_workers: int, watch: bool = False,
                 out=print):
        self.config, self.store, self.max_workers, self.watch, self.say = config, store, max_workers, watch, out
        self.root = config.root
        self.state_file, self.pending_file = state_files(config)
        self.logs = config.root / ".dispatch_logs"
        self.state = self.state_file.read()
        self.pending = self.pending_file.read()
        # Workers recorded by an earlier run are ours until reconcile() has looked at them.
        self.workers: dict[int, Worker] = {w.slot: w for w in map(Worker.from_record, self.state["workers"])}
        # Records written before claims carried their actor and task identity: this actor's,
        # and any task with the id.
        for worker in self.workers.values():
            worker.actor = worker.actor or config.actor
        for record in [*self.state["merge_queue"], *self.pending.values()]:
            record.setdefault("actor", config.actor)
            record.setdefault("task_created_at", "")
        self.state.setdefault("branches", {})  # branch -> the task identity it was made for
        self.state.setdefault("actors", [])  # every actor this dispatcher has claimed tasks under
        self.summary = {"merged": [], "released": [], "blocked": [], "waiting": []}
        self.failures_in_a_row = 0
        self.breaker_until: float | None = None
        self.stopping = False
        self.interrupts = 0
        self.stop_signal: int | None = None
        self.next_poll = 0.0
        self.told_waiting: set[tuple[str, str]] = set()  # (task, reason) already said
        self.known: dict[str, task_model.Task] = {}  # tasks this run has worked on (bd calls are slow)
        self.starter = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="start")
        self.epic_check_due = True

    # ---- bookkeeping ----------------------------------------------------------------------

    def event(self, name: str, task_id: str | None = None, **fields) -> None:
        """One line of .dispatch_logs/events.jsonl; README lists every event and its fields."""
        self.logs.mkdir(exist_ok=True)
        line = json.dumps({"v": events.EVENTS_FORMAT, "ts": statefiles.now_iso(), "event": name, "task_id": task_id,
                           **fields}, ensure_ascii=False)
        path = self.logs / events.EVENTS_FILE
        if events.ends_mid_line(path):
            line = "\n" + line  # a crash mid-write left a partial line: keep this one whole
        statefiles.append_text(path, line + "\n")

    def save_state(self) -> None:
        self.state["workers"] = [w.record() for w in self.workers.values()]
        self.state_file.write(self.state)

    def save_pending(self) -> None:
        self.pending_file.write(self.pending)

    def block(self, task_id: str, reason: str, actor: str | None = None) -> None:
        self.store.set_status(task_id, "blocked", reason, actor=actor)
        self.summary["blocked"].append({"id": task_id, "reason": reason})
        self.event("blocked", task_id, reason=reason)
        self.say(f"{task_id}: blocked: {reason}")

    # ---- start, reconcile -----------------------------------------------------------------

    def reconcile(self) -> None:
        """After a crash or restart: adopt live workers, finish dead ones, release the orphaned."""
        for worker in self.workers.values():
            if processes.is_same_process_alive(worker.pid, worker.pid_start_time) and worker.ended:
                # recorded as ended, but the kill was cut short: end it now; it is judged as ended
                processes.kill_tree(worker.pid, self.config.worker_kill_grace_secs)
            elif processes.is_same_process_alive(worker.pid, worker.pid_start_time):
                self.event("adopted", worker.task_id, pid=worker.pid)
                self.say(f"{worker.task_id}: adopted running worker (pid {worker.pid})")
        # A conflict task's own claim is not accounted for by its pending merge: only the original is.
        claims = ([(w.task_id, w.task_created_at, w.actor) for w in self.workers.values()]
                  + [(r["task_id"], r["task_created_at"], r["actor"])
                     for r in [*self.state["merge_queue"], *self.pending.values()]])
        for task_id, actor in sorted({(task_id, actor) for task_id, _, actor in claims if actor != self.config.actor}):
            self.event("earlier_actor", task_id, actor=actor)
            self.say(f"{task_id}: claimed as {actor} by an earlier run (the actor is {self.config.actor} now); "
                     f"finishing it as {actor}")
        # Every name this dispatcher has claimed under: a claim made just before a crash has no
        # record yet, and must not be stranded because the hostname changed meanwhile.
        ours = {self.config.actor, *self.state["actors"]} | {actor for _, _, actor in claims}
        if self.config.actor not in self.state["actors"]:
            self.state["actors"].append(self.config.actor)
            self.save_state()  # before any claim under it
        for task in self.store.list(["in_progress"]):
            if task.assignee in ours and not any(task_id == task.id and same_creation(created_at, task.created_at)
                                                 for task_id, created_at, _ in claims):
                self.store.release(task.id, "released: the dispatcher restarted with no worker or merge for it",
                                   actor=task.assignee)
                self.event("released", task.id, reason="no record after restart")
                self.say(f"{task.id}: released (no worker or merge recorded for it)"
                         + (f", as {task.assignee}" if task.assignee != self.config.actor else ""))
        branches = git.git_out(self.root, "for-each-ref", "--format=%(refname)", "refs/heads").splitlines()
        self.state["branches"] = {name: owner for name, owner in self.state["branches"].items()
                                  if f"refs/heads/{name}" in branches}
        self.prune_stray_worktrees()

    def prune_stray_worktrees(self) -> None:
        """Remove the worktrees an earlier run made and no record names (a worker's work is
        recorded before it starts, so nothing of value is in them); anything else is not ours."""
        known = ({w.worktree for w in self.workers.values()} | {e["worktree"] for e in self.state["merge_queue"]}
                 | {p["worktree"] for p in self.pending.values()})
        known = {Path(path).resolve() for path in known}
        root = Path(self.config.worktree_root).resolve()
        owned = dispatcher_worktrees(self.root)
        for path in sorted(owned - known):
            if root in path.parents:
                remove_worktree(self.root, path)
        for path in sorted(root.iterdir()) if root.is_dir() else ():
            if path.resolve() not in owned | known:
                self.event("left_alone", path=str(path))
                self.say(f"left alone: {path} is in worktree_root but the dispatcher did not make it")

    def fill_slots(self) -> None:
        free = [s for s in range(1, self.max_workers + 1) if s not in self.workers]
        if not free or self.stopping or self.breaker_tripped():
            return
        for task in self.store.ready(limit=max(50, 4 * self.max_workers)):
            if not free:
                break
            if (held := self.why_held(task.id)) and (message := f"{task.id}: not started again: {held}") \
                    not in self.told_waiting:
                self.told_waiting.add(message)
                self.say(message)
            if self.why_waiting(task) is None and self.store.claim(task.id, self.config.actor):
                self.event("claimed", task.id)
                failpoints.failpoint("after_claim")
                self.start_worker(free.pop(0), task)

    def why_held(self, task_id: str) -> str | None:
        """Why a task that is ready (reopened by hand, say) still has work under way, if it has:
        a second worker would share its branch and worktree, and its work would merge twice."""
        if task_id in {w.task_id for w in self.workers.values()}:
            return "its worker is still running"
        if task_id in {e["task_id"] for e in self.state["merge_queue"]}:
            return "its branch waits in the merge queue"
        if waits_for := [followup for followup, p in self.pending.items() if p["task_id"] == task_id]:
            return f"its branch waits for {waits_for[0]}"
        return None

    def why_waiting(self, task: task_model.Task) -> str | None:
        """None when the task may start now; else the reason it waits."""
        if PERSON_LABEL in task.labels:
            return f"it is for a person (label {PERSON_LABEL}): no agent takes it"
        if held := self.why_held(task.id):
            return held
        conflict = self.pending_for(task)
        if (CONFLICT_LABEL in task.labels or GATE_LABEL in task.labels) and conflict is None:
            return "its merge has not been recorded yet"
        if conflict and conflict["branch"] in {w.branch for w in self.workers.values()}:
            return "its branch is in use"
        if self.config.avoid_file_overlap and task.files:
            # A finished branch holds its files until it is merged: a task started from a main
            # without those changes would only make a conflict.
            holders = ([(w.task_id, "is being changed by") for w in self.workers.values()]
                       + [(e["task_id"], "waits to merge from") for e in self.state["merge_queue"]]
                       + [(p["task_id"], "waits to merge from") for p in self.pending.values()])
            for holder, how in holders:
                if holder != task.id and (overlap := set(self.task_files(holder)) & set(task.files)):
                    return f"{', '.join(sorted(overlap))} {how} {holder}"
        return None

    def task_files(self, task_id: str) -> list[str]:
        if task_id not in self.known:
            try:
                self.known[task_id] = self.store.get(task_id)  # an adopted worker's task
            except errors.TaskNotFound:
                return []  # deleted: its record is dropped where it is next used
        return self.known[task_id].files

    def pending_for(self, task: task_model.Task) -> dict | None:
        """The pending merge this task resolves: never one filed for an earlier task with its id."""
        pending = self.pending.get(task.id)
        if pending and same_creation(pending.get("followup_created_at", ""), task.created_at):
            return pending
        return None

    def current_task(self, task_id: str, created_at: str) -> task_model.Task | None:
        """The task a record was made for, or None when the store no longer has it: deleted, or
        its id now names another task (created at another time)."""
        try:
            task = self.store.get(task_id)
        except errors.TaskNotFound:
            return None
        return task if same_creation(created_at, task.created_at) else None

    def drop_record_of_gone_task(self, task_id: str, what: str) -> None:
        """A record refers to a task the store no longer has: drop it (the caller does) and carry on."""
        self.event("record_dropped", task_id, record=what)
        self.say(f"{task_id}: warning: the task is no longer in the store; dropped its {what}")

    def branch_for(self, task: task_model.Task) -> str:
        """The task's branch: the one recorded for it, or a name no branch has yet. A branch that
        exists but was not made for this very task (a deleted task's kept work, a user's branch)
        is never continued."""
        base, n = safe_names.branch_name(self.config.branch_template, task.id), 1
        owner = {"task_id": task.id, "task_created_at": task.created_at}
        name = base
        while git.rev_parse(self.root, f"refs/heads/{name}") and self.state["branches"].get(name) != owner:
            n += 1
            name = f"{base}-{n}"
        self.state["branches"][name] = owner
        return name

    def start_worker(self, slot: int, task: task_model.Task) -> None:
        """Record the worker, then make its worktree and start it off the loop: checking out a
        large repository takes seconds, and merges and other workers must not wait for that."""
        conflict = self.pending_for(task)
        self.known[task.id] = task
        if conflict:
            branch, worktree = conflict["branch"], Path(conflict["worktree"])
        else:
            branch = self.branch_for(task)
            worktree = self.free_worktree_path(safe_names.file_name(task.id))
        attempts = self.state["attempts"].get(task.id, 0)
        if attempts >= self.config.max_attempts:
            # The dispatcher blocked it at max_attempts, and a person has reopened it since:
            # that person wants it tried again, with a fresh set of attempts.
            self.event("attempts_reset", task.id, after=attempts)
            self.state["attempts"].pop(task.id)
            attempts = 0
        worker = Worker(slot=slot, task_id=task.id, title=task.title, branch=branch, worktree=str(worktree),
                        base="", attempt=attempts + 1, started_at=time.time(), deadline=None,
                        kind="conflict" if conflict else "task", log=self.new_log(task.id, attempts + 1),
                        actor=self.config.actor, task_created_at=task.created_at)
        self.workers[slot] = worker
        self.save_state()  # recorded before anything runs: a crash never leaves an unknown agent
        worker.starting = self.starter.submit(self.prepare_worktree, worker, task, conflict)

    def new_log(self, task_id: str, attempt: int) -> str:
        """One log per attempt, never one an earlier attempt wrote (a reopened task numbers its
        attempts from 1 again; a start cut short by a crash may have left its log)."""
        number = attempt
        while (self.logs / f"{safe_names.file_name(task_id)}.{number}.log").exists():
            number += 1
        return f"{self.logs.name}/{safe_names.file_name(task_id)}.{number}.log"

    def free_worktree_path(self, name: str) -> Path:
        """A folder for a new worktree: one of ours may be replaced, anyone else's is avoided."""
        root = Path(self.config.worktree_root)
        path, n = root / name, 1
        while path.exists() and path.resolve() not in dispatcher_worktrees(self.root):
            n += 1
            path = root / f"{name}-{n}"
        return path

    def prepare_worktree(self, worker: Worker, task: task_model.Task, conflict: dict | None) -> tuple[list, dict]:
        """In a starter thread: git and the worker's own worktree only, never the store or the state.
        The loop starts the process itself, so its pid is recorded the moment it exists."""
        worktree = Path(worker.worktree)
        if conflict:
            self.prepare_conflict_worktree(task, conflict)
        else:
            self.add_worktree(worker.branch, worktree)
        failpoints.failpoint("after_worktree")
        if self.config.worktree_setup_command:
            log = self.root / worker.log
            if failed := self.run_setup_command(worktree, log):
                raise errors.UserError(f"worktree_setup_command {failed}; its output is in {log}")
        message_file = worktree / ".current_task.txt"
        message_file.unlink(missing_ok=True)  # never write through a link a branch may carry
        message_file.write_text(task_message(self.config, task), encoding="utf-8")
        make_parent_folders(worktree, agent_files(task))
        argv, env = worker_argv(self.config, task, message_file, worker.branch, worktree)
        worker.base = git.git_out(worktree, "rev-parse", "HEAD")
        return argv, env

    def run_setup_command(self, worktree: Path, log: Path) -> str | None:
        """worktree_setup_command in a new worktree (a worker's or the gate's), as a process tree
        ended past worktree_setup_timeout_secs or at a stop-now. None on success, else why not."""
        proc = processes.start_process(list(self.config.worktree_setup_command), worktree, git.child_environment(), log)
        ended = processes.wait_or_end(proc, self.config.worktree_setup_timeout_secs, self.stop_now_reason,
                                      self.config.worker_kill_grace_secs)
        return ended or (f"exited {proc.returncode}" if proc.returncode else None)

    def started(self, worker: Worker) -> None:
        """Back on the loop: start the process and record it, or count the failed start as an attempt."""
        try:
            argv, env = worker.starting.result()
        except (errors.UserError, OSError) as exc:
            del self.workers[worker.slot]
            self.attempt_failed(worker.task_id, f"could not prepare the worktree: {exc}", worker.actor)
            return
        finally:
            worker.starting = None
        try:
            worker.proc = processes.start_process(argv, Path(worker.worktree), env, self.root / worker.log)
        except OSError as exc:  # e.g. the agent was uninstalled after preflight
            del self.workers[worker.slot]
            self.discard_attempt(worker)
            self.attempt_failed(worker.task_id, f"could not start the agent: {exc}", worker.actor)
            return
        conflict = self.pending.get(worker.task_id) if worker.kind == "conflict" else None
        if conflict and git.git_out(self.root, "log", "-1", "--format=%s", worker.base) == PREPARED_SUBJECT.format(
                main=self.config.main_branch, branch=worker.branch, task_id=worker.task_id):
            conflict["branch_tip"] = worker.base  # the dispatcher's own merge of main resolves nothing
            self.save_pending()
        worker.started_at = time.time()
        timeout = self.config.worker_timeout_secs
        worker.deadline = worker.started_at + timeout if timeout else None
        worker.pid, worker.pid_start_time = worker.proc.pid, processes.process_start_time(worker.proc.pid)
        self.save_state()
        self.event("worker_started", worker.task_id, slot=worker.slot, pid=worker.pid, branch=worker.branch,
                   attempt=worker.attempt, log=worker.log, title=worker.title,
                   kind=self.pending.get(worker.task_id, {}).get("kind", worker.kind))
        self.say(f"{worker.task_id}: started worker {worker.slot} on {worker.branch} (attempt {worker.attempt}): "
                 f"{worker.title}")

    def add_worktree(self, branch: str, worktree: Path) -> None:
        if worktree.resolve() in dispatcher_worktrees(self.root):
            remove_worktree(self.root, worktree)
        main = self.config.main_branch
        if git.rev_parse(self.root, f"refs/heads/{branch}"):
            if git.is_ancestor(self.root, branch, main):
                git.git("branch", "-D", branch, cwd=self.root)  # merged work: start afresh from main
            else:
                add_dispatcher_worktree(self.root, worktree, str(worktree), branch)
                return  # unmerged work of an earlier attempt: continue from it
        add_dispatcher_worktree(self.root, worktree, "-b", branch, str(worktree), main)

    def prepare_conflict_worktree(self, task: task_model.Task, conflict: dict) -> None:
        """Merge main into the branch and commit the conflicts, so the agent starts clean."""
        worktree, branch = Path(conflict["worktree"]), conflict["branch"]
        if not worktree.exists():
            remove_worktree(self.root, worktree)  # git may still list it, if only its folder was deleted
            add_dispatcher_worktree(self.root, worktree, str(worktree), branch)
        git.clear_interrupted_git_state(worktree)
        if markerless := git.merge_tree(self.root, branch, self.config.main_branch).markerless:
            raise errors.UserError(f"{', '.join(markerless)} now conflict in a way text markers cannot show; "
                                   "a person must resolve it (the dispatcher commits neither side)")
        result = git.git("merge", "--no-ff", "--no-commit", "--no-edit", self.config.main_branch, cwd=worktree,
                         check=False)
        if result.returncode == 0 and not git.git_out(worktree, "status", "--porcelain"):
            return  # nothing to merge: main is already in the branch
        git.git("add", "-A", cwd=worktree)  # the files with conflict markers, for the agent to settle
        original = conflict["task_id"]
        message = (PREPARED_SUBJECT.format(main=self.config.main_branch, branch=branch, task_id=task.id) + "\n\n"
                   f"Conflicted files: {', '.join(conflict['files']) or 'none'}\n"
                   f"This branch: {original}\nResolve task: {task.title}")
        git.git("commit", "-q", "--no-verify", "-m", message, cwd=worktree)

    # ---- watching workers ------------------------------------------------------------------

    def check_workers(self) -> bool:
        """Finish every worker that exited or outlived its deadline; True if any did."""
        changed = False
        for worker in list(self.workers.values()):
            if worker.starting is not None:
                if worker.starting.done():
                    self.started(worker)
                    changed = True
                continue
            if worker.has_exited():
                self.event("worker_exited", worker.task_id, code=worker.proc.returncode if worker.proc else None,
                           log=worker.log)
                self.finish_worker(worker)
                changed = True
            elif worker.deadline and time.time() > worker.deadline:
                self.say(f"{worker.task_id}: worker outlived worker_timeout_secs; ending its process tree")
                self.end_worker(worker, TIMED_OUT)
                self.finish_worker(worker)
                changed = True
        return changed

    def end_worker(self, worker: Worker, why: str) -> None:
        """End a started worker's process tree, having recorded why: a dispatcher killed meanwhile
        must not take the ended worker for one that finished."""
        worker.ended = why
        self.save_state()
        self.event("worker_timed_out" if why == TIMED_OUT else "worker_stopped", worker.task_id, reason=why,
                   log=worker.log)
        if worker.proc is not None or processes.is_same_process_alive(worker.pid, worker.pid_start_time):
            processes.kill_tree(worker.pid, self.config.worker_kill_grace_secs, worker.proc)

    def stop_blocked_workers(self) -> None:
        """A task the user blocked while its worker runs: end the worker, keep its branch, merge nothing."""
        running = {w.task_id: w for w in self.workers.values() if w.pid is not None and not w.ended}
        if not running:
            return
        for task in self.store.list(["blocked"]):
            if worker := running.get(task.id):
                self.say(f"{task.id}: blocked while its worker ran; ending the worker (its branch is kept)")
                self.end_worker(worker, TASK_BLOCKED)
                self.finish_worker(worker)

    def finish_worker(self, worker: Worker) -> None:
        """Judge an ended worker from git and send its branch on: merge queue, retry or block."""
        if worker.pid is None:
            self.never_started(worker)
            return
        failpoints.failpoint("after_worker_exit")
        if worker.proc is not None and not processes.IS_WINDOWS:
            processes.kill_tree(worker.pid, 0.2, worker.proc)  # what it left running would hold the worktree
        worktree, task_id = Path(worker.worktree), worker.task_id
        why = worker.ended or "exited"
        if worktree.exists():
            git.clear_interrupted_git_state(worktree)
            self.collect_followups(worker)
            if self.config.commit_leftover_changes and git.commit_everything(
                    worktree, f"dispatch: uncommitted work of {task_id} (worker {why})"):
                self.event("leftover_committed", task_id)
        tip = git.rev_parse(self.root, f"refs/heads/{worker.branch}")
        commits = int(git.git_out(self.root, "rev-list", "--count", f"{worker.base}..{tip}")) if tip else 0
        del self.workers[worker.slot]
        counted = not worker.stopped_by_user  # toward max_attempts and the breaker
        if worker.ended == TASK_BLOCKED:
            self.leave_blocked(worker)
        elif worker.kind == "conflict" and not worker.ended:
            self.finish_conflict_worker(worker, commits)
        elif worker.kind == "conflict":  # its branch belongs to the task it resolves: release it only
            self.attempt_failed(task_id, f"attempt {worker.attempt} {why}; log {worker.log}", worker.actor,
                                counted=counted)
        elif commits and not worker.ended:
            self.event("commits_found", task_id, commits=commits, log=worker.log)
            self.failures_in_a_row = 0
            self.queue_merge(worker, "close", f"log {worker.log}")
        elif commits:
            self.event("commits_found", task_id, commits=commits, log=worker.log)
            self.queue_merge(worker, "release", f"attempt {worker.attempt} {why}; its commits were merged; "
                                                f"log {worker.log}", counted=counted)
        else:
            self.event("no_commits", task_id, log=worker.log)
            self.failures_in_a_row += counted
            self.discard_attempt(worker)
            self.attempt_failed(task_id, f"attempt {worker.attempt} {why} with no commits; log {worker.log} ends: "
                                         f"{self.log_tail(worker)}", worker.actor, counted=counted)
        self.save_state()

    def leave_blocked(self, worker: Worker) -> None:
        """The user blocked the task while it ran: its status is theirs, and its work waits on the branch."""
        if worker.kind == "task":  # a conflict task's worktree belongs to the branch it resolves
            remove_worktree(self.root, Path(worker.worktree))
        reason = (f"blocked while its worker ran; the worker was ended, its branch {worker.branch} kept "
                  "and not merged")
        self.summary["blocked"].append({"id": worker.task_id, "reason": reason})
        self.event("left_blocked", worker.task_id, branch=worker.branch, reason=reason)

    def never_started(self, worker: Worker) -> None:
        """A worker recorded by a dispatcher that stopped before starting it: no attempt was made.
        Should anything have run after all (a crash between start and record), its work is kept."""
        del self.workers[worker.slot]
        worktree = Path(worker.worktree)
        if worktree.exists():
            git.clear_interrupted_git_state(worktree)
            git.commit_everything(worktree, f"dispatch: uncommitted work of {worker.task_id} (found after a restart)")
        if worker.kind == "task":  # a conflict task's worktree belongs to the branch it resolves
            self.discard_attempt(worker)
        try:
            self.store.release(worker.task_id, "released: the dispatcher stopped before its worker started",
                               actor=worker.actor)
            self.event("released", worker.task_id, reason="worker never started")
        except errors.TaskNotFound:
            self.drop_record_of_gone_task(worker.task_id, "worker record")
        self.save_state()

    def discard_attempt(self, worker: Worker) -> None:
        """Remove an attempt's worktree; its branch too, unless it holds work main lacks."""
        remove_worktree(self.root, Path(worker.worktree))
        if git.rev_parse(self.root, f"refs/heads/{worker.branch}") and git.is_ancestor(
                self.root, worker.branch, self.config.main_branch):
            git.git("branch", "-D", worker.branch, cwd=self.root, check=False)

    def finish_conflict_worker(self, worker: Worker, commits: int) -> None:
        """A resolve/fix task's worker: close it when the branch now merges cleanly."""
        conflict = self.pending.get(worker.task_id)
        main = self.config.main_branch
        clean = bool(conflict) and self.committed_since(conflict) \
            and git.merge_tree(self.root, main, worker.branch).tree is not None \
            and not git.new_marker_files(self.root, main, worker.branch)
        if clean:
            self.store.close(worker.task_id, f"{worker.branch} now merges cleanly", actor=worker.actor)
            self.event("closed", worker.task_id)
            self.say(f"{worker.task_id}: resolved; {worker.branch} merges cleanly now")
        else:
            self.event("no_commits" if not commits else "merge_conflict", worker.task_id, log=worker.log)
            problem = "still does not merge cleanly" if commits else "has no commit after the dispatcher's merge"
            self.attempt_failed(worker.task_id, f"attempt {worker.attempt}: {worker.branch} {problem}; "
                                                f"log {worker.log} ends: {self.log_tail(worker)}", worker.actor)

    def attempt_failed(self, task_id: str, note: str, actor: str | None = None, counted: bool = True) -> None:
        """Release the task for another attempt, or block it after max_attempts. An attempt the
        user stopped is not counted. actor: whose claim it is."""
        attempts = self.state["attempts"].get(task_id, 0) + counted
        self.state["attempts"][task_id] = attempts
        try:
            if counted and attempts >= self.config.max_attempts:
                self.block(task_id, f"{note} (after {attempts} attempts)", actor)
            else:
                self.store.release(task_id, note, actor=actor)
                self.summary["released"].append(task_id)
                self.event("released", task_id, reason=note)
                self.say(f"{task_id}: released for another attempt: {note[:120]}")
        except errors.TaskNotFound:
            self.state["attempts"].pop(task_id)
            self.drop_record_of_gone_task(task_id, "worker's attempt")
        self.save_state()

    def log_tail(self, worker: Worker, lines: int = 5) -> str:
        path = self.root / worker.log
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])[-400:] or "(empty log)"

    def collect_followups(self, worker: Worker) -> None:
        """The agent's follow-up ideas go to suggested_tasks.txt, never to main."""
        name = PurePosixPath(safe_names.check_repo_path(self.config.worker_followups_file)).name
        worktree = Path(worker.worktree)
        found = git.added_files_named(worktree, self.config.main_branch, name)
        lines = []
        for path in (worktree / f for f in found):
            if not path.is_symlink() and path.is_file():  # a link could point anywhere: never read through it
                text = path.read_text(encoding="utf-8", errors="replace")
                lines += [line for line in map(str.strip, text.splitlines()) if line and not line.startswith("#")]
        if lines:
            suggestions = self.config.path("suggested_tasks_file")
            statefiles.append_text(suggestions, "".join(f"[from:{worker.task_id}] {line}\n" for line in lines))
            self.event("followups_collected", worker.task_id, count=len(lines), files=found)
        tracked = [f for f in git.git("ls-files", "-z", "--", *found, cwd=worktree).stdout.split("\0") if f] \
            if found else []
        if tracked:
            git.git("rm", "-q", "-f", "--", *tracked, cwd=worktree)
            git.git("commit", "-q", "--no-verify", "-m", f"dispatch: keep {', '.join(tracked)} of "
                    f"{worker.task_id} off main", "--", *tracked, cwd=worktree)
        for path in (worktree / f for f in found if f not in tracked):
            path.unlink(missing_ok=True)
        if lines and self.config.auto_ingest_suggestions:
            result = suggested_tasks.ingest(self.config, self.store)
            if result.created:
                self.say(f"{worker.task_id}: follow-ups became {', '.join(result.created)}")

    # ---- the merge queue -------------------------------------------------------------------

    def queue_merge(self, worker: Worker, outcome: str, note: str, counted: bool = True) -> None:
        self.state["merge_queue"].append(queue_entry(worker.task_id, worker.title, worker.branch, worker.worktree,
                                                     outcome, note, 0, worker.actor, worker.task_created_at,
                                                     counted=counted))
        self.save_state()
        self.event("merge_queued", worker.task_id, branch=worker.branch)

    def process_merge_queue(self) -> bool:
        """Merge queued branches in order; True if main moved or the queue changed."""
        progressed = False
        for entry in list(self.state["merge_queue"]):
            if self.stop_now_reason():
                break  # no gate is started while stopping now
            if entry.get("retry_at", 0) > time.time():
                continue
            progressed |= self.merge(entry)
        return progressed

    def merge_slot(self):
        if self.config.merge_slot:
            return statefiles.locked(self.root / ".dispatch_merge.lock", "merge slot")
        return contextlib.nullcontext()

    def merge(self, entry: dict) -> bool:
        root, main = self.root, self.config.main_branch
        with self.merge_slot():
            task = self.current_task(entry["task_id"], entry["task_created_at"])
            if task is None:
                self.drop_entry(entry)
                remove_worktree(root, Path(entry["worktree"]))
                self.drop_record_of_gone_task(entry["task_id"], f"merge of {entry['branch']} (the branch is kept)")
                return True
            tip = git.rev_parse(root, f"refs/heads/{entry['branch']}")
            if tip is None:
                self.drop_entry(entry)
                self.block(entry["task_id"], f"its branch {entry['branch']} is gone", entry["actor"])
                return True
            if git.is_ancestor(root, tip, main):  # merged before a crash: only the bookkeeping is left
                self.finish_merge(entry, task, git.rev_parse(root, main))
                return True
            if task.status != "in_progress" or task.assignee != entry["actor"]:
                self.drop_entry(entry)
                self.summary["waiting"].append({"id": task.id, "reason": f"not merged: the task is now {task.status}"
                                                f" ({task.assignee or 'unassigned'}); branch {entry['branch']} kept"})
                self.event("stale_branch", task.id, branch=entry["branch"])
                self.say(f"{task.id}: not merged: the task changed meanwhile ({task.status}); branch kept")
                remove_worktree(root, Path(entry["worktree"]))
                return True
            while True:
                if held := self.why_main_is_held():  # known before anything is computed or written
                    return self.merge_waits(entry, held)
                base = git.rev_parse(root, main)
                if marked := git.new_marker_files(root, base, tip):
                    return self.on_conflict(entry, marked, base, "the branch adds conflict markers")
                merged = git.merge_tree(root, base, tip)
                if merged.tree is None:
                    return self.on_conflict(entry, merged.files, base, merged.messages, merged=merged)
                commit = git.git_out(root, "commit-tree", merged.tree, "-p", base, "-p", tip, "-m",
                                     f"Merge {entry['branch']}: {entry['title']} ({entry['task_id']})")
                if self.config.merge_gate_command:
                    passed, output = self.run_gate(commit)
                    if passed is None:
                        return False  # a stop-now ended the gate: the branch stays queued for the next run
                    if passed:
                        self.event("gate_passed", entry["task_id"], commit=commit)
                    if git.rev_parse(root, main) != base:
                        continue  # main moved while the gate ran: recompute and gate again
                    if not passed:
                        return self.on_conflict(entry, [], base, output, kind="gate")
                failpoints.failpoint("during_merge")
                outcome = self.advance_main(base, commit)
                if outcome == "moved":
                    continue
                if outcome != "ok":
                    return self.merge_waits(entry, outcome)
                self.finish_merge(entry, task, commit)
                return True

    def merge_waits(self, entry: dict, reason: str) -> bool:
        """Try the merge again later, after a pause that grows: what keeps main still (a stale
        lock, the user's rebase) may stand for hours. Each reason is said once."""
        entry["waits"] = entry.get("waits", 0) + 1
        entry["retry_at"] = time.time() + min(self.config.poll_interval_secs * 2 ** (entry["waits"] - 1),
                                              MERGE_WAIT_MAX_SECS)
        if (entry["task_id"], reason) not in self.told_waiting:
            self.told_waiting.add((entry["task_id"], reason))
            self.say(f"{entry['task_id']}: merge waits: {reason}")
        entry["waiting"] = reason
        self.save_state()
        return False

    def why_main_is_held(self) -> str | None:
        """What keeps main from moving that is known before merging: an operation of the user's
        on it in some worktree, or a lock on its ref."""
        main = self.config.main_branch
        if busy := git.operation_on_branch(self.root, main):
            return f"{busy}; merges into {main} wait until it is finished or aborted"
        ref_lock = self.root / ".git" / "refs" / "heads" / f"{main}.lock"
        return git.stale_lock_reason(ref_lock) if ref_lock.exists() else None

    def advance_main(self, old: str, new: str) -> str:
        """Move main from `old` to `new` only: "ok", "moved" (someone else moved it) or why it waits."""
        main = self.config.main_branch
        if held := self.why_main_is_held():  # it may have begun while the merge was computed
            return held
        checkout = git.checkout_of_branch(self.root, main)
        if checkout is None:
            result = git.git("update-ref", f"refs/heads/{main}", new, old, cwd=self.root, check=False)
        else:
            # Main is checked out (usually in the user's own folder): a fast-forward there keeps
            # the user's uncommitted changes, and refuses if it would overwrite any.
            result = git.git("merge", "--ff-only", "--no-edit", "-q", new, cwd=checkout, check=False)
        # Only the ref itself says whether main moved: the folder may have been switched to
        # another branch a moment ago, and then the fast-forward moved that branch instead.
        now = git.rev_parse(self.root, main)
        if now == new:
            return "ok"
        if now != old or result.returncode == 0:
            return "moved"  # recompute on the main that is there now, and try again
        return self.why_main_stays(checkout, result)

    def why_main_stays(self, checkout: Path | None, result: processes.Completed) -> str:
        """What keeps git from moving main, when nobody else moved it: said as what it is."""
        if held := self.why_main_is_held():
            return held
        main = self.config.main_branch
        output = result.stderr + result.stdout
        if checkout is None:
            return f"git cannot update refs/heads/{main}: {git.first_line(output)}"
        index_lock = Path(git.git_out(checkout, "rev-parse", "--absolute-git-dir")) / "index.lock"
        if index_lock.exists():
            return git.stale_lock_reason(index_lock)
        files = [line.strip() for line in output.splitlines() if line.startswith("\t")]
        if files or "would be overwritten" in output:
            return (f"your uncommitted changes in {checkout} to {', '.join(files) or 'some files'} would be "
                    "overwritten; commit or stash them and the merge will go ahead")
        return f"git cannot fast-forward {main} in {checkout}: {git.first_line(output)}"

    def finish_merge(self, entry: dict, task: task_model.Task, commit: str) -> None:
        task_id = entry["task_id"]
        self.event("merged", task_id, branch=entry["branch"], commit=commit,
                   diffstat=git.merge_diffstat(self.root, commit, git.rev_parse(self.root, f"refs/heads/{entry['branch']}")))
        self.say(f"{task_id}: merged {entry['branch']} into {self.config.main_branch} ({commit[:MERGE_SHORT]})")
        if entry["outcome"] == "close":
            if task.status != "closed":
                self.store.close(task_id, f"merged into {self.config.main_branch} as {commit[:MERGE_SHORT]}"
                                 + (f"; {entry['note']}" if entry["note"] else ""), actor=entry["actor"])
                self.event("closed", task_id)
                self.epic_check_due |= bool(task.deps_of("discovered-from"))
            self.summary["merged"].append(task_id)
            # What this run said about it before (a branch kept when it was reopened) is settled.
            self.summary["waiting"] = [w for w in self.summary["waiting"] if w["id"] != task_id]
            self.state["attempts"].pop(task_id, None)
        elif task.status == "in_progress":
            self.attempt_failed(task_id, entry["note"], entry["actor"], counted=entry.get("counted", True))
        remove_worktree(self.root, Path(entry["worktree"]))
        if self.config.delete_merged_branches:
            git.git("branch", "-D", entry["branch"], cwd=self.root, check=False)
        self.drop_entry(entry)

    def drop_entry(self, entry: dict) -> None:
        self.state["merge_queue"] = [e for e in self.state["merge_queue"] if e["branch"] != entry["branch"]]
        self.save_state()

    def run_gate(self, commit: str) -> tuple[bool | None, str]:
        """(passed, output) of the gate on `commit`; passed is None when a stop-now ended it."""
        gate = Path(self.config.worktree_root) / ".gate"
        log = self.logs / "gate.log"
        log.unlink(missing_ok=True)
        if not gate.exists():
            add_dispatcher_worktree(self.root, gate, "--detach", str(gate), commit)
            if self.config.worktree_setup_command and (failed := self.run_setup_command(gate, log)):
                remove_worktree(self.root, gate)  # so the next gate sets it up again
                if self.stop_now_reason():
                    return None, ""
                raise errors.UserError(f"worktree_setup_command {failed} in the gate worktree; its output is in {log}")
        elif gate.resolve() not in dispatcher_worktrees(self.root):
            raise errors.UserError(f"{gate} is in the way of the merge gate's worktree and the dispatcher "
                                   "did not make it; move it elsewhere")
        else:
            git.git("checkout", "-q", "--detach", "-f", commit, cwd=gate)
            git.git("clean", "-q", "-fd", cwd=gate)
        proc = processes.start_process(list(self.config.merge_gate_command), gate, git.child_environment(), log)
        ended = processes.wait_or_end(proc, self.config.merge_gate_timeout_secs, self.stop_now_reason,
                                      self.config.worker_kill_grace_secs)
        if self.stop_now_reason():
            return None, ""
        failpoints.failpoint("during_gate")
        output = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        if not ended and proc.returncode == 0:
            return True, output
        return False, f"merge_gate_command {ended or f'exited {proc.returncode}'}; output tail:\n{output}"

    def on_conflict(self, entry: dict, files: list[str], main_commit: str, detail: str, kind: str = "conflict",
                    merged: git.MergeResult | None = None) -> bool:
        """The branch cannot merge as it is: rebase it, or hand it back as a task."""
        task_id, branch = entry["task_id"], entry["branch"]
        self.event("merge_conflict" if kind == "conflict" else "gate_failed", task_id, files=files)
        if kind == "conflict" and self.config.on_conflict == "auto_rebase" and not entry.get("rebased"):
            entry["rebased"] = True
            self.save_state()
            worktree = Path(entry["worktree"])
            result = git.git("rebase", "-q", self.config.main_branch, cwd=worktree, check=False)
            if result.returncode == 0:
                self.say(f"{task_id}: rebased {branch} onto {self.config.main_branch}; merging again")
                return True
            git.git("rebase", "--abort", cwd=worktree, check=False)
            self.say(f"{task_id}: rebase of {branch} conflicts too; handing it back as a task")
        retries = entry.get("retries", 0) + 1
        if retries > self.config.max_merge_retries:
            self.drop_entry(entry)
            remove_worktree(self.root, Path(entry["worktree"]))
            self.block(task_id, f"{branch} still does not merge after {self.config.max_merge_retries} "
                                f"conflict or check tasks; branch kept", entry["actor"])
            return True
        followup = self.file_conflict_task(entry, kind, files, main_commit, detail, merged)
        self.event("conflict_filed", task_id, conflict_task=followup.id, kind=kind, branch=branch, title=followup.title,
                   for_person=PERSON_LABEL in followup.labels)
        # branch_tip: the conflict counts as resolved only once someone commits on top of it.
        self.pending[followup.id] = {"kind": kind, "branch": branch, "task_id": task_id,
                                     "worktree": entry["worktree"], "main_commit": main_commit, "files": files,
                                     "created_at": statefiles.now_iso(), "retries": retries,
                                     "title": entry["title"], "outcome": entry["outcome"], "note": entry["note"],
                                     "branch_tip": git.rev_parse(self.root, f"refs/heads/{branch}"),
                                     "for_person": PERSON_LABEL in followup.labels,
                                     "counted": entry.get("counted", True),
                                     "actor": entry["actor"], "task_created_at": entry["task_created_at"],
                                     "followup_created_at": followup.created_at}
        self.save_pending()
        self.drop_entry(entry)
        self.say(f"{task_id}: {'merge conflict' if kind == 'conflict' else 'checks failed'} on {branch}"
                 + (f" in {', '.join(files)}" if files else "") + f"; filed {followup.id}")
        return True

    def file_conflict_task(self, entry: dict, kind: str, files: list[str], main_commit: str, detail: str,
                           merged: git.MergeResult | None = None):
        """One open task per branch and kind: a crash between filing and recording never makes two."""
        branch = entry["branch"]
        title = (CONFLICT_TITLE if kind == "conflict" else GATE_TITLE).format(branch=branch)
        for task in self.store.list(["open", "in_progress", "blocked"]):
            if task.title == title:
                return task
        original = self.store.get(entry["task_id"])
        for_person = kind == "conflict" and merged is not None and bool(merged.markerless)
        if for_person:
            what = self.person_conflict_text(entry, original, main_commit, detail, merged)
        elif kind == "conflict":
            what = (f"Branch {branch} (task {original.id}: {original.title}) does not merge into "
                    f"{self.config.main_branch} at {main_commit[:MERGE_SHORT]}.\n\nConflicted files: "
                    f"{', '.join(files)}\n{detail}\n\nThe dispatcher has merged {self.config.main_branch} into the "
                    "branch and committed the conflict markers. Resolve every conflict (keep the intent of both "
                    "sides), remove all markers, commit, then stop.")
        else:
            what = (f"Merging branch {branch} (task {original.id}: {original.title}) into "
                    f"{self.config.main_branch} at {main_commit[:MERGE_SHORT]} fails the checks.\n\n{detail}\n\n"
                    "Make the checks pass on this branch, commit, then stop.")
        labels = ([CONFLICT_LABEL if kind == "conflict" else GATE_LABEL] + [PERSON_LABEL] * for_person
                  + [task_model.FILE_LABEL + f for f in files])
        task = self.store.create(title, what, priority=original.priority, labels=labels,
                                 deps=[("discovered-from", original.id)])
        failpoints.failpoint("after_conflict_task")
        return task

    def person_conflict_text(self, entry: dict, original: task_model.Task, main_commit: str, detail: str,
                             merged: git.MergeResult) -> str:
        """A conflict that git cannot show as text markers: both sides' blobs and how to settle it."""
        main, branch, worktree = self.config.main_branch, entry["branch"], entry["worktree"]
        sides = []
        for path in merged.files:
            blob = merged.stages[path]
            sides.append(f"  {path}: {main} {blob.get(2, '(deleted)')}, {branch} {blob.get(3, '(deleted)')}, "
                         f"their merge base {blob.get(1, '(none)')}")
        return (f"Branch {branch} (task {original.id}: {original.title}) does not merge into {main} at "
                f"{main_commit[:MERGE_SHORT]}, and git cannot show this conflict as text markers (a binary file, "
                f"a file deleted on one side, a rename), so it is for a person: the label {PERSON_LABEL} keeps "
                f"agents off it, and the dispatcher has committed neither side.\n\n{detail}\n\n"
                f"Each side's blob (look with `git cat-file -p BLOB`):\n" + "\n".join(sides) + "\n\n"
                f"To resolve it:\n"
                f"  cd {worktree}   (if it is gone: git worktree add {worktree} {branch})\n"
                f"  git merge {main}\n"
                f"  for each file: git checkout {main} -- PATH (main's side), git checkout HEAD -- PATH "
                f"(the branch's side), git rm PATH (deleted), or write the file; then git add PATH\n"
                f"  git commit --no-edit\n"
                f"  py tasks.py close ID   (this task)\n"
                f"Closing this task with no new commit on {branch} leaves the conflict standing: {original.id} "
                f"is then blocked and its branch kept.")

    def check_pending(self) -> bool:
        """Retry a merge once its conflict or fix task is closed; block it if that task is blocked."""
        changed = False
        busy = {w.task_id for w in self.workers.values()}
        for followup_id, pending in list(self.pending.items()):
            if followup_id in busy:
                continue
            followup = self.current_task(followup_id, pending.get("followup_created_at", ""))
            if followup is None:
                del self.pending[followup_id]
                self.save_pending()
                self.drop_record_of_gone_task(followup_id, f"pending merge of {pending['branch']} (the branch is kept)")
                self.release_claim(pending, f"released: its {pending['kind']} task {followup_id} was deleted; "
                                            f"branch {pending['branch']} kept")
                changed = True
            elif followup.status == "closed" and self.config.auto_retry_merge_on_conflict_close:
                if pending["kind"] == "conflict" and not self.committed_since(pending):
                    del self.pending[followup_id]
                    self.save_pending()
                    remove_worktree(self.root, Path(pending["worktree"]))
                    self.block(pending["task_id"], f"{followup_id} ({followup.title}) was closed with no commit on "
                                                   f"{pending['branch']} after the dispatcher's, so the conflict "
                                                   f"stands; branch {pending['branch']} kept", pending["actor"])
                    changed = True
                    continue
                if not any(e["branch"] == pending["branch"] for e in self.state["merge_queue"]):
                    self.state["merge_queue"].insert(0, queue_entry(
                        pending["task_id"], pending["title"], pending["branch"], pending["worktree"],
                        pending["outcome"], pending["note"], pending["retries"], pending["actor"],
                        pending["task_created_at"], pending.get("counted", True)))
                    self.save_state()
                del self.pending[followup_id]
                self.save_pending()
                self.event("merge_queued", pending["task_id"], branch=pending["branch"], after=followup_id)
                changed = True
            elif followup.status == "blocked":
                del self.pending[followup_id]
                self.save_pending()
                remove_worktree(self.root, Path(pending["worktree"]))
                self.block(pending["task_id"], f"{followup_id} ({followup.title}) is blocked: "
                                               f"{followup.notes.splitlines()[-1] if followup.notes else ''}",
                           pending["actor"])
                changed = True
        return changed

    def committed_since(self, pending: dict) -> bool:
        """Whether the branch has moved since the conflict was filed or the dispatcher merged main
        into it: only a commit of someone's resolves a conflict."""
        tip = git.rev_parse(self.root, f"refs/heads/{pending['branch']}")
        recorded = pending.get("branch_tip")
        return tip is None or recorded is None or tip != recorded  # a gone branch is reported by merge()

    def release_claim(self, record: dict, note: str) -> None:
        """Give back the claim a dropped record held, if the task is still held by it."""
        task = self.current_task(record["task_id"], record["task_created_at"])
        if task is not None and task.status == "in_progress" and task.assignee == record["actor"]:
            self.store.release(task.id, note, actor=record["actor"])
            self.event("released", task.id, reason=note)
            self.say(f"{task.id}: {note}")

    def close_finished_epics(self) -> None:
        """Only after a task with a parent was closed: listing every task is slow with bd."""
        if not self.epic_check_due:
            return
        self.epic_check_due = False
        tasks = self.store.list(None)
        for epic in (t for t in tasks if t.issue_type == "epic" and t.status != "closed"):
            children = [t for t in tasks if epic.id in t.deps_of("discovered-from")]
            if children and all(t.status == "closed" for t in children):
                self.store.close(epic.id, "all its subtasks are closed")
                self.event("closed", epic.id)
                self.say(f"{epic.id}: epic closed (all {len(children)} subtasks closed)")

    # ---- the loop --------------------------------------------------------------------------

    def breaker_tripped(self) -> bool:
        if self.failures_in_a_row < self.config.breaker_failures:
            return False
        if self.breaker_until is None:
            self.breaker_until = time.time() + self.config.breaker_pause_secs
            self.event("breaker_tripped", failures=self.failures_in_a_row)
            self.say(f"stopped starting workers: {self.failures_in_a_row} attempts in a row ended with no commits "
                     "(the agent or its model is likely down; see .dispatch_logs/)"
                     + (f"; trying again in {self.config.breaker_pause_secs:g} s" if self.watch else ""))
        if self.watch and time.time() >= self.breaker_until:
            self.failures_in_a_row, self.breaker_until = 0, None
            return False
        return True

    def run(self) -> dict:
        self.reconcile()
        self.close_finished_epics()
        while True:
            changed = self.check_workers()
            if why := self.stop_now_reason():
                self.stop_now(why)
            if changed:
                self.fill_slots()  # a freed slot is refilled before anything else
                starting = [w.starting for w in self.workers.values() if w.starting is not None]
                if starting:  # a quick start goes first; a huge checkout does not hold up merges
                    concurrent.futures.wait(starting, timeout=START_WAIT_SECS)
                    self.check_workers()
            poll_due = time.time() >= self.next_poll
            if poll_due:
                self.stop_blocked_workers()
            merged = self.process_merge_queue()
            if changed or merged or poll_due:  # the store is read at the poll interval, not every pass
                merged |= self.check_pending()
            if merged:
                self.close_finished_epics()
            if merged or poll_due:
                self.fill_slots()
                self.next_poll = time.time() + self.config.poll_interval_secs
            changed |= merged
            mergeable = [e for e in self.state["merge_queue"] if e.get("retry_at", 0) <= time.time()]
            if not self.workers and not mergeable and (self.stopping or (not changed and not self.watch)):
                break
            time.sleep(WORKER_POLL_SECS)
        self.starter.shutdown(wait=True)
        gate = Path(self.config.worktree_root) / ".gate"
        if gate.resolve() in dispatcher_worktrees(self.root):
            remove_worktree(self.root, gate)
        for entry in self.state["merge_queue"]:
            self.summary["waiting"].append({"id": entry["task_id"], "reason": entry.get("waiting", "in the merge queue")})
        for followup_id, pending in self.pending.items():
            self.summary["waiting"].append({"id": pending["task_id"], "reason": f"waits for {followup_id}" + (
                f" ({PERSON_LABEL}: a person must resolve it)" if pending.get("for_person") else "")})
        if self.breaker_tripped():
            self.summary["waiting"].append({"id": None, "reason": "the breaker stopped new workers"})
        return self.summary

    def interrupt(self, *_):
        self.interrupts += 1
        if self.interrupts == 1:
            self.stopping = True
            self.say("Ctrl-C: starting nothing new; running workers will finish and merge. Ctrl-C again to stop now.")

    def stop_signalled(self, signum: int, _frame) -> None:
        """SIGTERM (a service manager), SIGHUP (a closed terminal), SIGBREAK (a closed Windows
        console or Ctrl-Break, see hold_console_close): stop now, as at a second Ctrl-C."""
        self.stopping, self.stop_signal = True, signum

    def stop_now_reason(self) -> str | None:
        """Why every worker must end now, if it must: a stop signal, or a second Ctrl-C."""
        if self.stop_signal is not None:
            return f"stopped by {signal.Signals(self.stop_signal).name}"
        return "stopped by Ctrl-C" if self.interrupts >= 2 else None

    def stop_now(self, why: str) -> None:
        """End every worker and leave: their branches and records stay for the next run, which
        merges their commits but releases their tasks, as after a timeout."""
        for worker in list(self.workers.values()):
            if worker.starting is not None:
                concurrent.futures.wait([worker.starting])  # its setup command is ended at once too
                continue  # recorded but never started: the next run releases its task
            self.end_worker(worker, why)
        self.say(f"{why}: workers ended; their branches are kept for the next run")
        if self.stop_signal is not None:
            raise SystemExit(128 + self.stop_signal)  # the shell's convention: 143 for SIGTERM, 129 for SIGHUP
        raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------
# Preflight, status, dry run, demo
# --------------------------------------------------------------------------------------------


def preflight(config: configuration.Config) -> None:
    """Everything a worker needs, checked before any starts; each failure is one line."""
    if git.rev_parse(config.root, f"refs/heads/{config.main_branch}") is None:
        raise errors.UserError(f"the repository has no branch {config.main_branch!r} (set main_branch)")
    version = git.git_out(config.root, "version")
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if numbers < (2, 38):
        raise errors.UserError(f"{version} is too old: merging without a checkout needs git 2.38 or newer")
    commands = {"the worker command": config.worker_command or AIDER_COMMAND,
                "merge_gate_command": config.merge_gate_command,
                "worktree_setup_command": config.worktree_setup_command}
    for what, command in commands.items():
        if command and not command_found(command[0], config.root):
            raise errors.UserError(f"{what} {command[0]!r} was not found on PATH"
                                   + (" (install Aider: pipx install aider-chat)"
                                      if command is AIDER_COMMAND else ""))
    for ident in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT"):
        # git's own answer, so user.useConfigOnly, EMAIL and the GIT_* variables count as git counts them
        if git.git("var", ident, cwd=config.root, check=False).returncode != 0:
            raise errors.UserError("git has no identity to commit with (the dispatcher commits an agent's leftover "
                                   "work and its merges): set user.name and user.email with git config, or the "
                                   "GIT_AUTHOR_*/GIT_COMMITTER_* variables")
    followups = safe_names.check_repo_path(config.worker_followups_file)
    if git.git("check-ignore", "-q", "--", followups, cwd=config.root, check=False).returncode == 0:
        raise errors.UserError(f"{followups} is ignored by git, and Aider refuses to edit ignored files; "
                               "remove it from .gitignore / .git/info/exclude")
    if config.worker_instructions:
        read_instructions(config)
    if config.worker_command is None:
        models = llm.LLMClient(config).available_models()
        if config.worker_model not in models and f"{config.worker_model}:latest" not in models:
            raise errors.UserError(f"model {config.worker_model!r} not found on {config.llm_url}"
                                   + (f" (run `ollama pull {config.worker_model}`)" if config.llm_api == "ollama" else ""))


def command_found(command: str, root: Path) -> bool:
    """A bare name is looked up on PATH; a path is relative to the worktree it runs in, which
    holds the repository's files as the main root does."""
    if os.path.dirname(command):
        return shutil.which(str(root / command)) is not None
    return shutil.which(command) is not None


def iso(epoch: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else None


def status(config: configuration.Config, store) -> dict:
    state_file, pending_file = state_files(config)
    state, pending = state_file.read(), pending_file.read()
    dispatcher = state.get("dispatcher")
    if dispatcher and not processes.is_same_process_alive(dispatcher.get("pid"), dispatcher.get("pid_start_time")):
        dispatcher = None
    counts = dict(collections.Counter(task.status for task in store.list(None)))
    return {
        "dispatcher": {"pid": dispatcher["pid"], "started_at": dispatcher["started_at"]} if dispatcher else None,
        "workers": [{"slot": w["slot"], "task_id": w["task_id"], "title": w["title"], "branch": w["branch"],
                     "worktree": w["worktree"], "pid": w.get("pid"), "started_at": iso(w["started_at"]),
                     "deadline": iso(w.get("deadline")), "log": w.get("log")} for w in state.get("workers", [])],
        "merge_queue": [{k: e.get(k) for k in ("task_id", "branch", "outcome", "waiting")}
                        for e in state.get("merge_queue", [])],
        "pending_merges": [{"followup_task": k, **v} for k, v in pending.items()],
        "counts": counts,
    }


def dry_run(config: configuration.Config, store, max_workers: int) -> list[dict]:
    dispatcher = Dispatcher(config, store, max_workers, out=lambda *_: None)
    free = max_workers - len(dispatcher.workers)
    plan, starting = [], {}  # starting: file -> the task this plan starts on it
    for task in store.ready(limit=max(50, 4 * max_workers)):
        reason = dispatcher.why_waiting(task)
        if reason is None and config.avoid_file_overlap and (shared := [f for f in task.files if f in starting]):
            reason = f"{shared[0]} will be changed by {starting[shared[0]]}"
        if reason is None and free <= 0:
            reason = "all worker slots are busy"
        plan.append({"id": task.id, "title": task.title, "start": reason is None, "reason": reason})
        if reason is None:
            free -= 1
            starting.update({f: task.id for f in task.files})
    return plan


def run_demo(args) -> int:
    """A scratch repository, a handful of tasks, the bundled scripted agent, the real dispatcher."""
    folder = Path(tempfile.mkdtemp(prefix="dispatch-demo-"))
    repo = testing.scratch_repository(folder / "demo-repo", {"README.md": "# Demo project\n",
                                                             "settings.ini": "[ui]\ncolor=blue\n"})
    config_path = folder / "dispatch_config.json"
    config_path.write_text(json.dumps({
        "repo_path": str(repo), "task_backend": "json", "max_workers": 2, "poll_interval_secs": 0.2,
        "worker_timeout_secs": 60, "worker_command": testing.SCRIPTED_AGENT,
    }, indent=2), encoding="utf-8")
    config = configuration.load_config(str(config_path))
    store = task_stores.open_task_store(config)
    demo_tasks = [
        ("Make the UI red", "AGENT: sleep 1\nAGENT: replace settings.ini color=blue color=red\n"
                            "AGENT: say Tokens: 2.3k sent, 310 received.", [], 1),
        ("Make the UI green", "AGENT: sleep 2\nAGENT: replace settings.ini color=blue color=green\n"
                              "AGENT: say Tokens: 2.4k sent, 295 received.", [], 1),
        ("Add a greeting", "AGENT: sleep 1\nAGENT: append hello.txt Hello from the crew\n"
                           "AGENT: say Tokens: 1.9k sent, 120 received.", ["hello.txt"], 2),
        ("Add a farewell", "AGENT: sleep 1\nAGENT: append bye.txt Goodbye", ["bye.txt"], 2),
        ("Start a changelog", "AGENT: append CHANGELOG.md - first release\n"
                              "AGENT: followup Document the release process -- files: RELEASING.md",
         ["CHANGELOG.md"], 2),
    ]
    for title, description, files, priority in demo_tasks:
        store.create(title, description, priority=priority, labels=[task_model.FILE_LABEL + f for f in files])
    print(f"Demo repository: {repo}\nTasks:")
    for task in store.list(None):
        print(f"  {task.id}  {task.title}")
    print("\nDispatching with 2 workers (the scripted agent: scripts/demo_agent.py)...\n")
    code = main(["--config", str(config_path)] + (["--json"] if args.json else []))
    print("\nTasks now:")
    for task in store.list(None):
        print(f"  {task.id}  {task.status:<8} {task.title}")
    print(f"\ngit log --graph --oneline ({repo}):")
    print(git.git_out(repo, "log", "--graph", "--oneline", config.main_branch))
    print(f"\nThe repository stays in {folder} for you to look at.")
    print(f"The run's report (open it in a browser): {config.root / events.LOGS_DIR / page.REPORT_FILE}")
    return code


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


CONSOLE_CLOSE_HOLD_SECS = 4.5  # Windows ends a process about 5 s after its console is closed


def hold_console_close(dispatcher: Dispatcher, state_saved: threading.Event):
    """Windows: a closed console (or Ctrl-Break) ends the process the moment a console control
    handler returns, before Python's own SIGBREAK handler could run. This handler asks for a stop
    now (SIGBREAK), then holds the process until the workers are ended and the state is saved.
    Returns the handler, which must stay referenced while it is installed."""
    def on_console_event(event: int) -> bool:
        if event == 0:  # CTRL_C_EVENT: Python's own SIGINT handler takes it
            return False
        dispatcher.stop_signalled(signal.SIGBREAK, None)
        state_saved.wait(CONSOLE_CLOSE_HOLD_SECS)
        return True

    handler = ctypes.WINFUNCTYPE(ctypes.c_int, ctypes.c_uint)(on_console_event)
    ctypes.windll.kernel32.SetConsoleCtrlHandler(handler, True)
    return handler


def detach_output() -> None:
    """Send stdout and stderr to the null device: once the terminal is gone every write fails,
    and Python's own last flush would turn the exit code into 120."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatch_workers.py", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_base.add_common_options(parser)
    run = parser.add_argument_group("running")
    run.add_argument("--max-workers", type=int, metavar="N", help="parallel workers (default: max_workers, 2)")
    run.add_argument("--watch", action="store_true", help="keep polling for new tasks until Ctrl-C")
    look = parser.add_argument_group("looking")
    look.add_argument("--dry-run", action="store_true", help="list what would start now and why others wait")
    look.add_argument("--status", action="store_true", help="print the current state (also while one runs)")
    look.add_argument("--demo", action="store_true",
                      help="build a scratch repository with tasks and run the dispatcher on it with a "
                           "scripted agent (needs no Ollama, Aider or bd)")
    look.add_argument("--report", action="store_true",
                      help="write an HTML report of the runs from the events log: a timeline of the "
                           "workers, merges and conflicts, and what each task cost (every run also writes it)")
    look.add_argument("--out", metavar="FILE", help=f"with --report: where (default {events.LOGS_DIR}/"
                                                    f"{page.REPORT_FILE})")
    look.add_argument("--open", action="store_true", help="with --report: open it in the web browser")
    return parser


def print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        cli_base.print_json(summary)
        return
    print(f"\nmerged: {', '.join(summary['merged']) or 'none'}")
    if summary["released"]:
        print(f"released for another attempt: {', '.join(summary['released'])}")
    for item in summary["blocked"]:
        print(f"blocked: {item['id']}: {item['reason']}")
    for item in summary["waiting"]:
        print(f"waiting: {item['id'] or '-'}: {item['reason']}")
    if summary.get("report"):
        print(f"report: {summary['report']}")


def write_report_after_run(config: configuration.Config, say) -> str | None:
    """The run's report; a report that cannot be written never fails the run it describes."""
    try:
        return str(page.write_report(config.root))
    except errors.UserError as exc:
        say(f"no report: {exc}")
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_workers is not None and args.max_workers < 1:
        raise errors.UsageError("--max-workers must be at least 1")
    if (args.out or args.open) and not args.report:
        raise errors.UsageError("--out and --open go with --report")
    if args.demo:
        return run_demo(args)
    config = configuration.load_config(args.config)
    if args.report:  # from the events log alone: no store, and no matter whether a dispatcher runs
        path = page.write_report(config.root, Path(args.out) if args.out else None)
        if args.json:
            cli_base.print_json({"report": str(path)})
        else:
            print(path)
        if args.open:
            webbrowser.open(path.as_uri())
        return 0
    store = task_stores.open_task_store(config)
    max_workers = args.max_workers or config.max_workers
    if args.status:
        result = status(config, store)
        if args.json:
            cli_base.print_json(result)
        else:
            d = result["dispatcher"]
            print(f"dispatcher: {'pid ' + str(d['pid']) + ' since ' + d['started_at'] if d else 'not running'}")
            for w in result["workers"]:
                print(f"  worker {w['slot']}: {w['task_id']} on {w['branch']} (pid {w['pid']}, until {w['deadline']}, "
                      f"log {w['log']})")
            for e in result["merge_queue"]:
                print(f"  merge queue: {e['task_id']} ({e['branch']})" + (f": {e['waiting']}" if e["waiting"] else ""))
            for p in result["pending_merges"]:
                print(f"  pending: {p['task_id']} waits for {p['followup_task']} ({p['kind']})")
            print("  tasks: " + ", ".join(f"{k} {v}" for k, v in sorted(result["counts"].items())))
        return 0
    if args.dry_run:
        plan = dry_run(config, store, max_workers)
        if args.json:
            cli_base.print_json(plan)
        else:
            for item in plan:
                print(f"{'start' if item['start'] else 'wait '} {item['id']}  {item['title']}"
                      + (f"  ({item['reason']})" if item["reason"] else ""))
            if not plan:
                print("nothing is ready")
        return 0

    preflight(config)
    lock = filelock.FileLock(str(config.root / ".dispatch.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        other = (state_files(config)[0].read().get("dispatcher") or {})
        raise errors.UserError(f"another dispatcher is running on this repository (pid {other.get('pid', '?')}, "
                               f"started {other.get('started_at', '?')}); see --status") from None
    def say(msg: str) -> None:
        try:
            print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)
        except OSError:  # the terminal is gone (SIGHUP): carry on, and stop on time, without it
            detach_output()

    try:
        dispatcher = Dispatcher(config, store, max_workers, args.watch, say)
        dispatcher.state["dispatcher"] = {"pid": os.getpid(), "started_at": statefiles.now_iso(),
                                          "pid_start_time": processes.process_start_time(os.getpid())}
        dispatcher.save_state()
        dispatcher.event("dispatcher_started", pid=os.getpid(), max_workers=max_workers, watch=args.watch)
        handlers = {signal.SIGINT: dispatcher.interrupt, signal.SIGTERM: dispatcher.stop_signalled}
        if hasattr(signal, "SIGHUP"):  # POSIX only
            handlers[signal.SIGHUP] = dispatcher.stop_signalled
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
        state_saved = threading.Event()
        console_handler = hold_console_close(dispatcher, state_saved) if processes.IS_WINDOWS else None
        try:
            summary = dispatcher.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            dispatcher.state["dispatcher"] = None
            dispatcher.save_state()
            dispatcher.event("dispatcher_stopped",
                             interrupted=dispatcher.interrupts > 0 or dispatcher.stop_signal is not None)
            state_saved.set()
            if console_handler is not None:
                ctypes.windll.kernel32.SetConsoleCtrlHandler(console_handler, False)
            report = write_report_after_run(config, say)
    finally:
        lock.release()
    summary["report"] = report
    print_summary(summary, args.json)
    if dispatcher.interrupts:
        return 130
    return 1 if summary["blocked"] or summary["waiting"] else 0


if __name__ == "__main__":
    raise SystemExit(cli_base.run_main(main, None))
