"""Judging a worker that has ended, from git: its branch goes to the merge queue, or its task
is released for another attempt, or blocked."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import cast

from crew import config as configuration
from crew import errors
from crew import failpoints
from crew import files
from crew import git
from crew import names as safe_names
from crew import suggestions as suggested_tasks
from crew.dispatch import attempt_log
from crew.dispatch import branch_push
from crew.dispatch import conflicts
from crew.dispatch import outcomes
from crew.dispatch import records
from crew.dispatch import revert
from crew.dispatch import scheduler
from crew.dispatch import worktrees
from crew.dispatch.ledger import Ledger
from crew.dispatch.merge_queue import MergeQueue
from crew.dispatch.workers import WorkerPool
from crew.report.events import EventName
from crew.tasks import model as task_model


class Finisher:
    def __init__(self, config: configuration.Settings, ledger: Ledger, store: task_model.TaskStore,
                 pool: WorkerPool, queue: MergeQueue, breaker: scheduler.Breaker):
        self.config, self.ledger, self.store, self.pool, self.queue = config, ledger, store, pool, queue
        self.breaker = breaker
        self.root = config.root
        self.pusher: branch_push.BranchPusher | None = None  # remote mode: branches are pushed

    def finish(self, worker: records.Worker) -> None:
        """Judge an ended worker from git and send its branch on: merge queue, retry or block.
        What it left uncommitted is committed through the user's hooks, which may be slow: in a
        starter thread (pool.committing), and WorkerPool.poll calls finish again once it is done."""
        if worker.pid is None and not self.agent_ran_unrecorded(worker):
            self.never_started(worker)
            return
        worktree, task_id = worker.worktree, worker.task_id
        why = worker.ended or "exited"
        refused = ""  # why the hooks refused what it left uncommitted, for the task's note
        if (committing := self.pool.committing.pop(worker.slot, None)) is not None:
            refused = self.judge_leftovers(worker, committing.result)
        else:
            failpoints.failpoint("after_worker_exit")  # its process tree is gone (WorkerPool.poll saw to it)
            if worktree.exists():
                git.clear_interrupted_git_state(worktree)
                self.collect_followups(worker)
                if self.config.commit_leftover_changes:
                    self.pool.committing[worker.slot] = self.pool.starter.submit(
                        worktrees.commit_leftovers, worktree, f"dispatch: uncommitted work of {task_id} (worker {why})",
                        self.config.git_hook_timeout_secs)
                    return
        tip = git.rev_parse(self.root, f"refs/heads/{worker.branch}")
        commits = int(git.git_out(self.root, "rev-list", "--count", f"{worker.base}..{tip}")) if tip else 0
        proc = self.pool.procs.get(worker.slot)
        exit_code = proc.returncode if proc is not None else None
        reverter_failed = proc is not None and revert.reverter_failed(
            cast("list[str]", proc.args), exit_code)  # the pool starts every worker from an argument list
        with self.ledger.change():
            counted = not worker.stopped_by_user  # toward max_attempts and the breaker
            if worker.ended in (records.TASK_BLOCKED, records.CLAIM_LOST):
                self.pool.forget(worker)
                self.leave_unmerged(worker)
            elif worker.kind == records.WorkerKind.CONFLICT and not worker.ended:
                self.finish_conflict_worker(worker, commits, refused)
            elif worker.kind == records.WorkerKind.CONFLICT:  # its branch is the resolved task's: release it only
                outcomes.attempt_failed(self.ledger, task_id, f"attempt {worker.attempt} {why}; log {worker.log} ends: "
                                                              f"{self.log_tail(worker)}{refused}",
                                        worker.actor, counted=counted, then=self.outcome_written(worker))
            elif reverter_failed and not worker.ended:
                self.block_failed_revert(worker, exit_code)
            elif commits and not worker.ended and not refused:
                self.pool.forget(worker)
                self.ledger.event(EventName.COMMITS_FOUND, task_id, commits=commits, log=worker.log)
                self.breaker.attempt_ended(made_commits=True)
                self.queue.add(worker, records.Outcome.CLOSE, f"log {worker.log}")
            elif commits:
                self.pool.forget(worker)
                self.ledger.event(EventName.COMMITS_FOUND, task_id, commits=commits, log=worker.log)
                # The merge queue adds the merge commit: the next attempt starts from main with this work in it.
                self.queue.add(worker, records.Outcome.RELEASE,
                               f"attempt {worker.attempt} {why}; log {worker.log}; its work is "
                               f"partial and already on {self.config.main_branch}{refused}", counted=counted)
            else:
                self.ledger.event(EventName.NO_COMMITS, task_id, log=worker.log)
                self.breaker.attempt_ended(made_commits=False, counted=counted)
                worktrees.discard_attempt(self.config, worker)
                outcomes.attempt_failed(self.ledger, task_id, f"attempt {worker.attempt} {why} with no commits; "
                                                              f"{self.no_edit_hint(worker)}log {worker.log} ends: "
                                                              f"{self.log_tail(worker)}{refused}",
                                        worker.actor, counted=counted, then=self.outcome_written(worker))

    def outcome_written(self, worker: records.Worker) -> Callable[[], None]:
        """The worker's attempt is judged, its outcome handed to the store thread: it keeps its slot
        and its record (which the pool leaves alone) until that is written; then the record goes,
        in the change that counts the attempt. A restart before then judges the attempt again."""
        self.pool.settling.add(worker.slot)

        def written() -> None:
            self.pool.settling.discard(worker.slot)
            self.pool.forget(worker)
        return written

    def block_failed_revert(self, worker: records.Worker, exit_code: int | None) -> None:
        """The reverter gave up or was killed: its branch is never merged (it may hold some of the
        reverts only), and the revert task waits for a person, told why. What it reverted is kept
        on the branch: the next attempt goes on past it."""
        self.breaker.attempt_ended(made_commits=False)
        worktrees.discard_attempt(self.config, worker)
        outcomes.block(
            self.ledger, worker.task_id, f"attempt {worker.attempt}: the reverter exited {exit_code}; its branch "
                                         f"{worker.branch} is not merged; log {worker.log} ends: "
                                         f"{self.log_tail(worker)}", worker.actor, then=self.outcome_written(worker))

    def leave_unmerged(self, worker: records.Worker) -> None:
        """The user blocked the task while it ran, or its claim was taken back (its lease lapsed
        and another took the task): the task is not this dispatcher's to settle, and its work
        waits on the branch."""
        if worker.kind == records.WorkerKind.TASK:  # a conflict task's worktree belongs to the branch it resolves
            worktrees.remove_worktree(self.root, worker.worktree)
        kept = f"the worker was ended, its branch {worker.branch} kept and not merged"
        if worker.ended == records.TASK_BLOCKED:
            reason = f"blocked while its worker ran; {kept}"
            self.ledger.summary["blocked"].append({"id": worker.task_id, "reason": reason})
            self.ledger.event(EventName.LEFT_BLOCKED, worker.task_id, branch=worker.branch, reason=reason)
        else:
            reason = f"its claim was taken back while its worker ran; {kept}"
            self.ledger.summary["waiting"].append({"id": worker.task_id, "reason": reason})
            self.ledger.event(EventName.CLAIM_LOST, worker.task_id, branch=worker.branch, reason=reason)
            if self.pusher is not None and worker.kind == records.WorkerKind.TASK and branch_push.worth_keeping(
                    self.config, worker.branch, worker.base, self.ledger.state.pushed.get(worker.branch)):
                self.pusher.keep(worker.task_id, worker.branch, worker.actor)  # its commits are not lost

    def continue_judged(self, task: task_model.Task, branch: str, tip: str) -> None:
        """A task claimed with the judged branch another host pushed (that host's claim was taken
        back), now here at its tip: it joins the merge queue as judged, as this task's branch, with
        no agent run; the pusher marks it ready again under this host's claim."""
        worktree = worktrees.free_worktree_path(self.config, safe_names.file_name(task.id))
        flight = records.BranchInFlight(task_id=task.id, title=safe_names.clean_title(task.title), branch=branch,
                                        worktree=worktree, outcome=records.Outcome.CLOSE,
                                        note=f"continued from {branch}, pushed by the host that held it before",
                                        retries=0, actor=self.config.actor, task_created_at=task.created_at)
        state = self.ledger.state
        with self.ledger.change():
            state.branches[branch] = records.BranchOwner(task_id=task.id, task_created_at=task.created_at)
            state.pushed[branch] = tip
            state.merge_queue.append(records.MergeRequest(flight, queued_at=time.time()))
        self.ledger.event(EventName.BRANCH_CONTINUED, task.id, branch=branch, tip=tip)
        self.ledger.event(EventName.MERGE_QUEUED, task.id, branch=branch)
        self.ledger.say(f"{task.id}: continued from {branch} at {tip[:12]}, pushed by the host that held it before "
                        "(no agent run): in the merge queue")

    def agent_ran_unrecorded(self, worker: records.Worker) -> bool:
        """Whether a worker with no pid recorded had its agent run after all: a crash came between
        the agent's start and the record of its pid (its base is recorded before that start), and
        its branch moved past its base or its worktree holds changes. It is judged as a worker
        that exited, so its work is merged once, never worked on again by another attempt."""
        if not worker.base:
            return False
        tip = git.rev_parse(self.root, f"refs/heads/{worker.branch}")
        worktree = worker.worktree
        return bool(tip and tip != worker.base) or (worktree.exists() and worktrees.has_leftovers(worktree))

    def never_started(self, worker: records.Worker) -> None:
        """A worker recorded by a dispatcher that stopped before starting it: no attempt was made.
        Should anything have run after all (a crash between start and record), its work is kept."""
        with self.ledger.change():
            self.pool.forget(worker)
            worktree = worker.worktree
            if worktree.exists():
                git.clear_interrupted_git_state(worktree)
                message = f"dispatch: uncommitted work of {worker.task_id} (found after a restart)"
                self.judge_leftovers(worker, lambda: worktrees.commit_leftovers(worktree, message,
                                                                                self.config.git_hook_timeout_secs))
            if worker.kind == records.WorkerKind.TASK:  # a conflict task's worktree belongs to the branch it resolves
                worktrees.discard_attempt(self.config, worker)
            try:
                if outcomes.given_up(self.ledger, worker.task_id, "open",
                                     "released: the dispatcher stopped before its worker started", worker.actor):
                    self.ledger.event(EventName.RELEASED, worker.task_id, reason="worker never started")
            except errors.TaskNotFound:
                self.ledger.drop_record_of_gone_task(worker.task_id, "worker record")

    def judge_leftovers(self, worker: records.Worker, committed: Callable[[], bool]) -> str:
        """What became of the commit of what the agent left uncommitted (committed(): whether there
        was any, or CommitRefused), made through the user's hooks. What they refuse is discarded
        from the dispatcher's worktree, never committed around them; returned is the end of their
        output, for the attempt's note (so the next attempt is told why), or ""."""
        try:
            if committed():
                self.ledger.event(EventName.LEFTOVER_COMMITTED, worker.task_id)
            return ""
        except errors.CommitRefused as refused:
            said = safe_names.one_line_tail(refused.stderr + "\n" + refused.stdout) or "(no output)"
            worktrees.discard_changes(self.root, worker.worktree)
            self.ledger.event(EventName.LEFTOVER_REFUSED, worker.task_id, output=said)
            self.ledger.say(f"{worker.task_id}: the repository's git hooks refused its uncommitted changes; "
                            f"discarded: {said[:120]}")
            return (f"; the changes it left uncommitted were refused by the repository's git hooks and "
                    f"discarded; the hooks said: {said}")

    def finish_conflict_worker(self, worker: records.Worker, commits: int, refused: str = "") -> None:
        """A resolve/fix task's worker: close it when the branch now merges cleanly."""
        conflict = self.ledger.state.pending.get(worker.task_id)
        main = self.config.main_branch
        clean = conflict is not None and conflicts.committed_since(self.root, conflict) \
            and git.merge_tree(self.root, main, worker.branch).tree is not None \
            and not git.new_marker_files(self.root, main, worker.branch)
        written = self.outcome_written(worker)
        if clean:
            def resolved() -> None:
                self.ledger.say(f"{worker.task_id}: resolved; {worker.branch} merges cleanly now")
                written()
            outcomes.close(self.ledger, worker.task_id, f"{worker.branch} now merges cleanly", actor=worker.actor,
                           then=resolved)
        else:
            self.ledger.event(EventName.NO_COMMITS if not commits else EventName.MERGE_CONFLICT, worker.task_id,
                              log=worker.log)
            problem = "still does not merge cleanly" if commits else "has no commit after the dispatcher's merge"
            outcomes.attempt_failed(
                self.ledger, worker.task_id, f"attempt {worker.attempt}: {worker.branch} {problem}; "
                                             f"{'' if commits else self.no_edit_hint(worker)}"
                                             f"log {worker.log} ends: {self.log_tail(worker)}{refused}",
                             worker.actor, then=written)

    def log_tail(self, worker: records.Worker) -> str:
        """The end of the attempt's log, for its note (and so the next attempt's message)."""
        return attempt_log.tail_line(self.root / worker.log)

    def no_edit_hint(self, worker: records.Worker) -> str:
        """Why an attempt with no commit changed nothing, when its reply held code: said before the
        log's tail, which rarely shows it, so the next attempt can do otherwise."""
        return attempt_log.no_edit_hint(self.root / worker.log)

    def collect_followups(self, worker: records.Worker) -> None:
        """The agent's follow-up ideas go to suggested_tasks.txt, never to main."""
        name = PurePosixPath(safe_names.check_repo_path(self.config.worker_followups_file)).name
        worktree = worker.worktree
        found = git.added_files_named(worktree, self.config.main_branch, name)
        lines = []
        for path in (worktree / f for f in found):
            if not path.is_symlink() and path.is_file():  # a link could point anywhere: never read through it
                text = path.read_text(encoding="utf-8", errors="replace")
                lines += [line for line in map(str.strip, text.splitlines()) if line and not line.startswith("#")]
        if lines:
            suggestions = self.config.path("suggested_tasks_file")
            files.append_text(suggestions, "".join(f"[from:{worker.task_id}] {line}\n" for line in lines))
            self.ledger.event(EventName.FOLLOWUPS_COLLECTED, worker.task_id, count=len(lines), files=found)
        tracked = [f for f in git.git("ls-files", "-z", "--", *found, cwd=worktree).stdout.split("\0") if f] \
            if found else []
        if tracked:
            # Bookkeeping with no agent content: committed by plumbing, no hook runs on it.
            tree = git.tree_without(worktree, tracked)
            git.git("rm", "-q", "-f", "--", *tracked, cwd=worktree)
            git.commit_on_head(worktree, tree, f"dispatch: keep {', '.join(tracked)} of {worker.task_id} off main")
        for path in (worktree / f for f in found if f not in tracked):
            path.unlink(missing_ok=True)
        if lines and self.config.auto_ingest_suggestions:
            result = suggested_tasks.ingest(self.config, self.store)
            if result.created:
                self.ledger.say(f"{worker.task_id}: follow-ups became {', '.join(result.created)}")
