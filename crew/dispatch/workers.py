"""The worker pool: starting agent workers in their worktrees, watching them, ending them."""
from __future__ import annotations

import concurrent.futures
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

from crew import config as configuration
from crew import errors
from crew import failpoints
from crew import git
from crew import names as safe_names
from crew import processes
from crew.dispatch import agent
from crew.dispatch import outcomes
from crew.dispatch import records
from crew.dispatch import wakeup as wakeups
from crew.dispatch import worktrees
from crew.dispatch.ledger import Ledger
from crew.report.events import EventName
from crew.tasks import model as task_model


Held = TypeVar("Held")

LEFTOVER_GRACE_SECS = 0.2  # what an exited agent left running gets this long to end by itself
ON_DECK = records.ON_DECK


class WorkerPool:
    """The workers' records live in the ledger's state (by slot); the pool holds what only this
    process has: each slot's process, the start still under way in a starter thread, and the end
    of its process tree still under way (a worker keeps its slot, and its worktree, until its
    tree is gone). A start made ready and a process of ours exiting both post to `wakeup`."""

    def __init__(self, config: configuration.Settings, ledger: Ledger, max_workers: int,
                 stop_now_reason: Callable[[], str | None], wakeup: wakeups.Wakeup):
        self.config, self.ledger, self.max_workers = config, ledger, max_workers
        self.stop_now_reason = stop_now_reason  # a setup command in a starter thread ends at a stop-now
        self.wakeup = wakeup
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.starting: dict[int, concurrent.futures.Future[tuple[list[str], dict[str, str]]]] = {}  # argv, env
        self.kills: dict[int, processes.TreeKill] = {}
        self.committing: dict[int, concurrent.futures.Future[bool]] = {}  # its leftover commit, once its tree is gone
        self.settling: set[int] = set()  # judged, its outcome written in the store meanwhile (Finisher.outcome_written)
        self.starter = wakeups.PostingExecutor(wakeup, max_workers, "start")
        # The dispatcher's: whether the task on deck must wait, given how many workers have
        # exited and are not yet judged (each may add a branch to the merge queue).
        self.deck_waits: Callable[[int], bool] = lambda leaving: False
        self.last_prepare_secs = 0.0  # how long the last start's worktree took (a large checkout: seconds)
        self.deck_main: str | None = None  # the main the task on deck was last brought up to (or found on)

    @property
    def workers(self) -> dict[int, records.Worker]:
        return self.ledger.state.workers

    def free_slots(self) -> list[int]:
        return [slot for slot in range(1, self.max_workers + 1) if slot not in self.workers]

    def on_deck(self) -> records.Worker | None:
        """The task on deck (its process not started), if there is one."""
        worker = self.workers.get(ON_DECK)
        return worker if worker is not None and worker.pid is None else None

    def deck_free(self) -> bool:
        """Whether a task may be put on deck: the slot holds neither one nor a worker leaving."""
        return ON_DECK not in self.workers

    def deck_ready(self) -> records.Worker | None:
        """The task on deck once its worktree is made, ready to start."""
        deck = self.on_deck()
        starting = self.starting.get(ON_DECK)
        return deck if starting is not None and starting.done() and starting.exception() is None else None

    def place_for_deck(self) -> tuple[int, records.Worker | None] | None:
        """Where the task on deck may start: a free slot, or that of a worker whose agent exited
        by itself (its tree being ended, or what it left committed, before it is judged)."""
        if free := self.free_slots():
            return free[0], None
        return next(((slot, worker) for slot, worker in self.workers.items() if slot != ON_DECK and worker.ended is None
                     and worker.pid is not None and (slot in self.kills or slot in self.committing)), None)

    def leaving(self) -> int:
        """How many workers have exited and are not yet judged."""
        return sum(1 for slot in self.workers if slot in self.kills or slot in self.committing)

    def start_deck(self, slot: int, leaving: records.Worker | None = None) -> None:
        """Start the task on deck in `slot`: a free one, or that of `leaving`, whose agent has
        exited, and which moves to a slot past every worker slot until its tree is gone and it
        is judged (judging is independent of the next start, and takes longer; the deck is free
        for the next task meanwhile). State written twice (started()): its base before its agent
        starts, its pid after."""
        deck = self.workers.pop(ON_DECK)
        if leaving is not None:
            aside = max(self.max_workers, *self.workers) + 1
            self.workers[aside] = self.workers.pop(slot)
            leaving.slot = aside
            move_slot(self.procs, slot, aside)
            move_slot(self.kills, slot, aside)
            move_slot(self.committing, slot, aside)
        self.workers[slot], deck.slot = deck, slot
        self.starting[slot] = self.starting.pop(ON_DECK)
        self.deck_main = None
        self.started(deck)

    def deck_behind(self) -> bool:
        """Whether main has moved since the task on deck's worktree was made (or last brought up
        to it): then it is brought up to main first (bring_deck_up), off the loop, so that its
        agent does not start without the merges that landed while it waited. A ref read only."""
        deck = self.workers[ON_DECK]
        main = git.rev_parse(self.config.root, f"refs/heads/{self.config.main_branch}")
        return main is not None and main not in (deck.base, self.deck_main)

    def bring_deck_up(self) -> None:
        """Bring the task on deck's worktree and branch up to main in a starter thread, in place
        of its finished start (deck_ready() is False meanwhile); what that start made is kept."""
        deck, made = self.workers[ON_DECK], self.starting[ON_DECK]
        self.deck_main = git.rev_parse(self.config.root, f"refs/heads/{self.config.main_branch}")
        self.starting[ON_DECK] = self.starter.submit(self._bring_up, deck, made.result(), self.deck_main)

    def _bring_up(self, deck: records.Worker, made: tuple[list[str], dict[str, str]],
                  main: str | None) -> tuple[list[str], dict[str, str]]:
        """In a starter thread: fast-forward the deck's branch to `main` in its worktree when the
        branch has no commits of its own (an earlier attempt's unmerged work is continued as it
        is); git refuses to overwrite anything there, and then the task starts where it was."""
        worktree = deck.worktree
        try:
            if main is not None and git.is_ancestor(worktree, deck.base, main):
                git.git("merge", "--ff-only", "--no-autostash", "--no-edit", "-q", main, cwd=worktree, check=False,
                        timeout=self.config.git_hook_timeout_secs)
        except errors.GitError:
            pass  # its post-merge hook ended past the timeout: the task starts on what is checked out
        deck.base = git.git_out(worktree, "rev-parse", "HEAD")
        return made

    def forget(self, worker: records.Worker) -> None:
        """The worker is finished: its slot is free (the caller saves the state)."""
        del self.workers[worker.slot]
        self.procs.pop(worker.slot, None)
        self.starting.pop(worker.slot, None)
        self.kills.pop(worker.slot, None)
        self.committing.pop(worker.slot, None)

    def start(self, slot: int, task: task_model.Task, conflict: records.PendingMerge | None) -> None:
        """Record the worker, then make its worktree and start it off the loop: checking out a
        large repository takes seconds, and merges and other workers must not wait for that."""
        state = self.ledger.state
        if conflict:
            branch, worktree = conflict.branch, conflict.worktree
        else:
            branch = worktrees.branch_for(self.config, state.branches, task)
            worktree = worktrees.free_worktree_path(self.config, safe_names.file_name(task.id))
        attempts = state.attempts.get(task.id, 0)
        if attempts >= self.config.max_attempts:
            # The dispatcher blocked it at max_attempts, and a person has reopened it since:
            # that person wants it tried again, with a fresh set of attempts.
            self.ledger.event(EventName.ATTEMPTS_RESET, task.id, after=attempts)
            state.attempts.pop(task.id)
            attempts = 0
        kind = records.WorkerKind.CONFLICT if conflict else records.WorkerKind.TASK
        worker = records.Worker(slot=slot, task_id=task.id, title=safe_names.clean_title(task.title), branch=branch,
                                worktree=worktree, base="", attempt=attempts + 1, started_at=time.time(),
                                deadline=None, kind=kind, log=self.new_log(task.id, attempts + 1),
                                actor=self.config.actor, task_created_at=task.created_at)
        with self.ledger.change():  # recorded before anything runs: a crash never leaves an unknown agent
            self.workers[slot] = worker
            if slot == ON_DECK:
                self.deck_main = None
        self.starting[slot] = self.starter.submit(self._prepare, worker, task, conflict)

    def new_log(self, task_id: str, attempt: int) -> str:
        """One log per attempt, never one an earlier attempt wrote (a reopened task numbers its
        attempts from 1 again; a start cut short by a crash may have left its log)."""
        logs = self.ledger.logs
        number = attempt
        while (logs / f"{safe_names.file_name(task_id)}.{number}.log").exists():
            number += 1
        return f"{logs.name}/{safe_names.file_name(task_id)}.{number}.log"

    def _prepare(self, worker: records.Worker, task: task_model.Task,
                 conflict: records.PendingMerge | None) -> tuple[list[str], dict[str, str]]:
        """In a starter thread: git and the worker's own worktree only, never the store or the state.
        The loop starts the process itself, so its pid is recorded the moment it exists."""
        began = time.monotonic()
        try:
            return self._prepare_worktree(worker, task, conflict)
        finally:
            self.last_prepare_secs = time.monotonic() - began

    def _prepare_worktree(self, worker: records.Worker, task: task_model.Task,
                          conflict: records.PendingMerge | None) -> tuple[list[str], dict[str, str]]:
        worktree = worker.worktree
        if conflict:
            worktrees.prepare_conflict_worktree(self.config, task, conflict)
        else:
            worktrees.add_task_worktree(self.config, worker.branch, worktree)
        failpoints.failpoint("after_worktree")
        if self.config.worktree_setup_command:
            log = self.config.root / worker.log
            if failed := worktrees.run_setup_command(self.config, worktree, log, self.stop_now_reason,
                                                     self.mark(worker)):
                raise errors.UserError(f"worktree_setup_command {failed}; its output is in {log}")
        message_file = worktree / ".current_task.txt"
        message_file.unlink(missing_ok=True)  # never write through a link a branch may carry
        message_file.write_text(agent.task_message(self.config, task), encoding="utf-8")
        agent.make_parent_folders(worktree, agent.agent_files(task, worktree))
        agent.write_model_settings(self.config)
        argv, env = agent.worker_argv(self.config, task, message_file, worker.branch, worktree)
        worker.base = git.git_out(worktree, "rev-parse", "HEAD")
        return argv, env

    def started(self, worker: records.Worker) -> None:
        """Back on the loop: start the process and record it, or count the failed start as an attempt."""
        ledger, root = self.ledger, self.config.root
        with ledger.change():  # its base: a crash before its pid is recorded leaves an agent that may have run
            try:
                argv, env = self.starting.pop(worker.slot).result()
            except (errors.UserError, OSError) as exc:
                self.forget(worker)
                outcomes.attempt_failed(ledger, worker.task_id, f"could not prepare the worktree: {exc}", worker.actor)
                return
        try:
            self.procs[worker.slot] = proc = processes.start_process(argv, worker.worktree, env,
                                                                     root / worker.log, self.mark(worker))
        except OSError as exc:  # e.g. the agent was uninstalled after preflight
            self.forget(worker)
            worktrees.discard_attempt(self.config, worker)
            outcomes.attempt_failed(ledger, worker.task_id, f"could not start the agent: {exc}", worker.actor)
            return
        failpoints.failpoint("after_agent_start")  # its pid not yet recorded
        self.wakeup.watch_exit(proc)
        pending = ledger.state.pending.get(worker.task_id)
        conflict = pending if worker.kind == records.WorkerKind.CONFLICT else None
        if conflict and git.git_out(root, "log", "-1", "--format=%s", worker.base) == worktrees.PREPARED_SUBJECT.format(
                main=self.config.main_branch, branch=worker.branch, task_id=worker.task_id):
            with ledger.change():
                conflict.branch_tip = worker.base  # the dispatcher's own merge of main resolves nothing
        with ledger.change():
            worker.started_at = time.time()
            timeout = self.config.worker_timeout_secs
            worker.deadline = worker.started_at + timeout if timeout else None
            worker.pid, worker.pid_start_time = proc.pid, processes.process_start_time(proc.pid)
        ledger.event(EventName.WORKER_STARTED, worker.task_id, slot=worker.slot, pid=worker.pid, branch=worker.branch,
                     attempt=worker.attempt, log=worker.log, title=worker.title,
                     kind=pending.kind if pending else worker.kind)
        ledger.say(f"{worker.task_id}: started worker {worker.slot} on {worker.branch} (attempt {worker.attempt}): "
                   f"{worker.title}")

    def has_exited(self, worker: records.Worker) -> bool:
        if worker.slot in self.starting:
            return False
        if (proc := self.procs.get(worker.slot)) is not None:
            return proc.poll() is not None
        return not processes.is_same_process_alive(worker.pid, worker.pid_start_time)

    def poll(self, finish: Callable[[records.Worker], None]) -> bool:
        """Start the workers whose worktree is ready; end the trees of workers that exited or
        outlived their deadline (ended first), without waiting; hand each worker whose tree is
        gone to finish(worker). A worker that exited hands its slot to the task on deck at once,
        unless deck_waits(). True if any worker started or ended."""
        changed = False
        for worker in list(self.workers.values()):
            if worker.slot in self.settling:
                continue
            if (committing := self.committing.get(worker.slot)) is not None:
                if committing.done():
                    finish(worker)
                    changed = True
                continue
            if (starting := self.starting.get(worker.slot)) is not None:
                # The task on deck starts when a slot frees; a failed start is counted at once.
                if starting.done() and (worker.slot != ON_DECK or starting.exception() is not None):
                    self.started(worker)
                    changed = True
                elif starting.done() and (place := self.place_for_deck()) and not self.deck_waits(self.leaving()):
                    if self.deck_behind():
                        self.bring_deck_up()
                    else:
                        self.start_deck(*place)
                    changed = True
                continue
            if worker.slot not in self.kills:
                if self.has_exited(worker):
                    proc = self.procs.get(worker.slot)
                    self.ledger.event(EventName.WORKER_EXITED, worker.task_id, code=proc.returncode if proc else None,
                                      log=worker.log)
                    changed = True
                    if worker.slot != ON_DECK and self.deck_ready() and not self.deck_waits(self.leaving() + 1):
                        if self.deck_behind():
                            self.bring_deck_up()  # it starts in a freed slot once up to date
                        else:
                            self.start_deck(worker.slot, leaving=worker)  # the next agent first
                    self.kill(worker, LEFTOVER_GRACE_SECS)  # what it left running would hold the worktree
                elif worker.deadline and time.time() > worker.deadline:
                    self.ledger.say(f"{worker.task_id}: worker outlived worker_timeout_secs; ending its process tree")
                    self.end(worker, records.TIMED_OUT)
                    changed = True
            if (kill := self.kills.get(worker.slot)) is not None and kill.poll():
                del self.kills[worker.slot]
                finish(worker)
                changed = True
        return changed

    def end(self, worker: records.Worker, why: str) -> None:
        """Begin ending a started worker's process tree, having recorded why: a dispatcher killed
        meanwhile must not take the ended worker for one that finished. Returns at once; poll()
        finishes the worker once its tree is gone."""
        with self.ledger.change():
            worker.ended = why
        self.ledger.event(EventName.WORKER_TIMED_OUT if why == records.TIMED_OUT else EventName.WORKER_STOPPED,
                          worker.task_id, reason=why, log=worker.log)
        proc = self.procs.get(worker.slot)
        if proc is not None or processes.is_same_process_alive(worker.pid, worker.pid_start_time):
            self.kill(worker, self.config.worker_kill_grace_secs)

    def kill(self, worker: records.Worker, grace: float) -> None:
        """Ask the worker's process tree to end (killed after `grace`); it keeps its slot until then."""
        proc = self.procs.get(worker.slot)
        # An adopted worker is not our child: what it left may have gone to init, not to us; and
        # once it has exited its group is found by mark only (its number may be another's by now).
        group = worker.pid if proc is not None or processes.is_same_process_alive(
            worker.pid, worker.pid_start_time) else None
        self.kills[worker.slot] = processes.TreeKill.begin(group, grace, proc, self.mark(worker),
                                                           everywhere=proc is None)

    def mark(self, worker: records.Worker) -> str:
        return records.process_mark(self.config.root, worker)


def move_slot(runtime: dict[int, Held], slot: int, to: int) -> None:
    """What this process holds for a worker follows it to its new slot."""
    if slot in runtime:
        runtime[to] = runtime.pop(slot)
