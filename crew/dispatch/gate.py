"""The merge gate: merge_gate_command run on a merge commit before main moves to it, in the
dispatcher's own gate worktree. It is a process the loop watches, like a worker: started, its
exit posted to the loop, ended past its timeout or at a stop, never waited for."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from crew import config as configuration
from crew import errors
from crew import failpoints
from crew import git
from crew import logs
from crew import processes
from crew.dispatch import records
from crew.dispatch import remote_main
from crew.dispatch import wakeup as wakeups
from crew.dispatch import worktrees
from crew.dispatch.ledger import Ledger
from crew.dispatch.say_once import Told
from crew.report.events import EventName


MAIN_MOVED = "main moved: gated again on the main there is now"
MAIN_CHECK = ""  # a gate record's task id when it checks main itself, for no task
MAIN_FAILS_REASON = "main fails its checks"  # why a failure counted against no branch
OUTPUT_TAIL = 2000  # characters of the gate's log a verdict carries (a fix task quotes them)


@dataclasses.dataclass
class GateOutcome:
    """A gate's verdict. passed is None when it ended without one (a stop-now, or cancel()):
    its request stays queued and is gated again."""

    passed: bool | None
    output: str
    record: records.GateRecord  # which merge commit, of which branch, on which base


class Gate:
    """One gate worktree and at most one gate in it. Its record (in ledger.state.gates) is
    written before anything runs and holds the pid from the moment the process exists, so a
    restarted dispatcher can end a gate a killed one left running."""

    def __init__(self, config: configuration.Settings, ledger: Ledger, starter: concurrent.futures.Executor,
                 stop_now_reason: Callable[[], str | None], wakeup: wakeups.Wakeup, worktree: Path | None = None):
        self.config, self.ledger, self.starter, self.stop_now_reason = config, ledger, starter, stop_now_reason
        self.wakeup = wakeup
        self.worktree = worktree or config.worktree_root / ".gate"
        self.preparing: concurrent.futures.Future[bool] | None = None  # checkout and setup, in a starter thread
        self.hook_failed: str | None = None  # what the preparing said of the user's post-checkout hook
        self.proc: subprocess.Popen[bytes] | None = None
        self.kill: processes.TreeKill | None = None
        self.ended: str | None = None  # why its tree was ended before it exited by itself
        self.cancelled: str | None = None
        self.main_looked_at = 0.0
        self.mark = ""  # the gate's processes carry it (records.process_mark), set at start()

    @property
    def record(self) -> records.GateRecord | None:
        return next((gate for gate in self.ledger.state.gates if gate.worktree == self.worktree), None)

    @property
    def busy(self) -> bool:
        return self.record is not None

    def start(self, request: records.MergeRequest, base: str, commit: str, stack: Sequence[str] = ()) -> None:
        """Record the gate of `commit` (the request's merge on `base`; stack: the queue entries
        ahead of it that `base` holds, with parallel gates), then prepare its worktree off the
        loop; poll() starts the process once that is done."""
        self.record_and_prepare(request.task_id, request.branch, base, commit, stack)

    def check_main(self, main: str) -> None:
        """The gate on main itself (commit `main`), before a branch's failure is blamed on it."""
        self.record_and_prepare(MAIN_CHECK, self.config.main_branch, main, main, ())

    def record_and_prepare(self, task_id: str, branch: str, base: str, commit: str, stack: Sequence[str]) -> None:
        log = self.ledger.logs / f"{self.worktree.name.lstrip('.')}.log"
        log.unlink(missing_ok=True)
        record = records.GateRecord(
            task_id=task_id, branch=branch, base=base, commit=commit, worktree=self.worktree,
            log=f"{log.parent.name}/{log.name}", pid=None, pid_start_time=None, started_at=time.time(),
            deadline=None, stack=list(stack))
        with self.ledger.change():
            self.ledger.state.gates.append(record)
        self.proc = self.kill = self.ended = self.cancelled = None
        self.mark = records.process_mark(self.config.root, record)
        self.preparing = self.starter.submit(self._prepare, commit, log)

    def stopped(self) -> str | None:
        """Why the gate must end without a verdict, if it must (the setup command checks it too)."""
        return self.cancelled or self.stop_now_reason()

    def _prepare(self, commit: str, log: Path) -> bool:
        """In a starter thread: the gate worktree at `commit`, clean; False if a stop came first."""
        root, gate = self.config.root, self.worktree
        if not gate.exists():
            if gate.resolve() in worktrees.dispatcher_worktrees(root):
                worktrees.remove_worktree(root, gate)  # its folder was deleted (by the user?): git still lists it
            self.check_out(commit, lambda: worktrees.add_dispatcher_worktree(
                root, gate, "--detach", str(gate), commit, timeout=self.config.git_hook_timeout_secs))
            if self.config.worktree_setup_command and (
                    failed := worktrees.run_setup_command(self.config, gate, log, self.stopped, self.mark)):
                worktrees.remove_worktree(root, gate)  # so the next gate sets it up again
                if self.stopped():
                    return False
                raise errors.UserError(f"worktree_setup_command {failed} in the gate worktree; its output is in {log}")
        elif gate.resolve() not in worktrees.dispatcher_worktrees(root):
            raise errors.UserError(f"{gate} is in the way of the merge gate's worktree and the dispatcher "
                                   "did not make it; move it elsewhere")
        else:
            self.check_out(commit, lambda: git.git("checkout", "-q", "--detach", "-f", commit, cwd=gate,
                                                   timeout=self.config.git_hook_timeout_secs))
            git.git("clean", "-q", "-fd", cwd=gate)
        return True

    def check_out(self, commit: str, checkout: Callable[[], object]) -> None:
        """checkout(), which puts `commit` in the gate worktree. The user's post-checkout hook
        failing after git did so stops no gate: poll() tells the user, once a run."""
        try:
            checkout()
        except errors.GitError as failed:
            if self.stopped() or not (said := worktrees.checked_out_despite_hook(
                    self.config.root, self.worktree, commit, failed)):
                raise
            self.hook_failed = said

    def cancel(self, why: str) -> None:
        """End the gate without a verdict: its kill is begun now and finished by later polls."""
        if self.busy and not self.cancelled:
            self.cancelled = why
            self.record_ending(why)
            if self.proc is not None and self.kill is None:
                self.end_tree(self.proc, self.config.worker_kill_grace_secs)

    def record_ending(self, why: str) -> None:
        """Written before the kill, so --status never shows a dying gate as gating."""
        record = self.record
        if record is not None and record.ending is None:
            with self.ledger.change():
                record.ending = why

    def cancel_if_main_moved(self, now: float) -> None:
        """One gate at a time: a gate whose main moved is void (its merge is computed again), so
        it is ended as soon as that is seen, as a parallel gate is. Main is read once a poll
        interval (a git call; the loop wakes for it), so within one interval of the move."""
        record = self.record  # busy: there is one
        if record is None or self.cancelled or now < self.main_looked_at + self.config.poll_interval_secs:
            return
        self.main_looked_at = now
        if git.rev_parse(self.config.root, remote_main.main_ref(self.config)) != record.base:
            self.ledger.event(EventName.GATE_CANCELLED, record.task_id or None, commit=record.commit, reason=MAIN_MOVED,
                              gate_secs=round(now - record.started_at, 3))  # its work wasted: main moved
            self.cancel(MAIN_MOVED)

    def poll(self, now: float) -> GateOutcome | None:
        """On the loop, each pass: start the prepared gate, end it past merge_gate_timeout_secs
        or at a stop, and once its process tree is gone give the verdict (its record goes)."""
        record = self.record
        if record is None:
            return None
        if self.preparing is not None:
            if not self.preparing.done():
                return None
            try:
                prepared = self.preparing.result()  # a gate worktree that cannot be made stops the run
            except errors.UserError:
                if not self.stopped():
                    raise
                prepared = False  # its git command was ended by the stop
            self.preparing = None
            if self.hook_failed:
                self.ledger.say_once(Told.GATE_HOOK_FAILED, self.hook_failed)
            self.hook_failed = None
            if not prepared or self.stopped():
                return self.conclude(record, None, self.stopped() or "")
            try:
                self.begin(record)
            except OSError as exc:  # as a shell would say it (exit 127): the merge commit lacks it
                return self.conclude(record, False, f"merge_gate_command could not start in the gate worktree, a "
                                                    f"checkout of the merge commit (is it committed?): {exc}")
            return None
        if (proc := self.proc) is None:
            raise RuntimeError("a gate past its preparing has its process (begin)")
        if self.kill is None and proc.poll() is None:
            if why := self.stopped():
                self.cancel(why)
            elif record.deadline is not None and now > record.deadline:  # set by begin()
                self.ended = f"timed out after {self.config.merge_gate_timeout_secs:g} s"
                self.record_ending(self.ended)
                self.end_tree(proc, self.config.worker_kill_grace_secs)
            return None  # looked at again on the next pass
        if self.kill is None:
            # What it left running (in its group, its job) would hold the worktree the next gate checks out.
            self.end_tree(proc, 0.2)
        if self.kill is not None and not self.kill.poll():
            return None
        if why := self.stopped():
            return self.conclude(record, None, why)
        failpoints.failpoint("during_gate")
        output = logs.read_tail(self.config.root / record.log, OUTPUT_TAIL)
        if not self.ended and proc.returncode == 0:
            return self.conclude(record, True, output)
        return self.conclude(record, False, f"merge_gate_command {self.ended or f'exited {proc.returncode}'}; "
                                            f"output tail:\n{output}")

    def end_tree(self, proc: subprocess.Popen[bytes], grace: float) -> None:
        """Begin ending the gate's process tree, and any daemon it left (a test server)."""
        self.kill = processes.TreeKill.begin(proc.pid, grace, proc, self.mark)

    def begin(self, record: records.GateRecord) -> None:
        """Start the gate's process and record its pid before anything else."""
        # A gate is recorded only when merge_gate_command is set.
        self.proc = processes.start_process(list(self.config.merge_gate_command or ()), self.worktree,
                                            git.child_environment(), self.config.root / record.log, self.mark)
        self.wakeup.watch_exit(self.proc)
        with self.ledger.change():
            record.pid, record.pid_start_time = self.proc.pid, processes.process_start_time(self.proc.pid)
            record.started_at = time.time()
            record.deadline = record.started_at + self.config.merge_gate_timeout_secs
        if is_main_check(record):
            self.ledger.event(EventName.MAIN_CHECK_STARTED, None, commit=record.commit, pid=record.pid, log=record.log)
        else:
            self.ledger.event(EventName.GATE_STARTED, record.task_id, commit=record.commit, stack=record.stack,
                              pid=record.pid, log=record.log)

    def conclude(self, record: records.GateRecord, passed: bool | None, output: str) -> GateOutcome:
        """The gate is over: its record goes, and its verdict is handed to the merge queue."""
        with self.ledger.change():
            self.ledger.state.gates.remove(record)
        self.preparing = self.proc = self.kill = None
        return GateOutcome(passed, output, record)

    def remove_worktree(self) -> None:
        """At the end of a run: the gate worktree, if the dispatcher made it."""
        if self.worktree.resolve() in worktrees.dispatcher_worktrees(self.config.root):
            worktrees.remove_worktree(self.config.root, self.worktree)


def is_main_check(record: records.GateRecord) -> bool:
    return record.task_id == MAIN_CHECK


def say_failure_not_counted(ledger: Ledger, record: records.GateRecord, reason: str | None = None) -> None:
    """A gate failed, but not on main as it is (an entry ahead still gates, or main moved), or
    main itself fails the checks: said at once, for a script reading the events. Its
    gate_failed with counts true comes (from conflicts.file, with the fix task) if and when the
    failure counts."""
    ledger.event(EventName.GATE_FAILED, record.task_id, files=[], commit=record.commit, counts=False,
                 **({"reason": reason} if reason else {}))


# What the loop asks of every gate worktree at once (one, or merge_gate_parallelism of them).

def any_busy(all_gates: Sequence[Gate]) -> bool:
    return any(gate.busy for gate in all_gates)


def cancel_all(all_gates: Sequence[Gate], why: str) -> None:
    """At a stop: every gate's kill is begun (wait_until_ended finishes them); their requests
    stay queued and are gated again by the next run."""
    for gate in all_gates:
        gate.cancel(why)


def wait_until_ended(all_gates: Sequence[Gate]) -> None:
    """Until every cancelled gate's process tree is gone (bounded by the kill grace)."""
    while any_busy(all_gates):
        for gate in all_gates:
            gate.poll(time.time())
        time.sleep(processes.KILL_STEP_SECS)


def remove_worktrees(all_gates: Sequence[Gate]) -> None:
    for gate in all_gates:
        gate.remove_worktree()
