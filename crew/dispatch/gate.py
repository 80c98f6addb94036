"""The merge gate: merge_gate_command run on a merge commit before main moves to it, in the
dispatcher's own gate worktree."""
from __future__ import annotations

from pathlib import Path

from crew import config as configuration
from crew import errors
from crew import failpoints
from crew import git
from crew import processes
from crew.dispatch import worktrees
from crew.dispatch.ledger import Ledger


class Gate:
    def __init__(self, config: configuration.Config, ledger: Ledger, stop_now_reason, worktree: Path | None = None):
        self.config, self.ledger, self.stop_now_reason = config, ledger, stop_now_reason
        self.worktree = worktree or Path(config.worktree_root) / ".gate"

    def run(self, commit: str) -> tuple[bool | None, str]:
        """(passed, output) of the gate on `commit`; passed is None when a stop-now ended it."""
        root, gate = self.config.root, self.worktree
        log = self.ledger.logs / "gate.log"
        log.unlink(missing_ok=True)
        if not gate.exists():
            worktrees.add_dispatcher_worktree(root, gate, "--detach", str(gate), commit)
            if self.config.worktree_setup_command and (
                    failed := worktrees.run_setup_command(self.config, gate, log, self.stop_now_reason)):
                worktrees.remove_worktree(root, gate)  # so the next gate sets it up again
                if self.stop_now_reason():
                    return None, ""
                raise errors.UserError(f"worktree_setup_command {failed} in the gate worktree; its output is in {log}")
        elif gate.resolve() not in worktrees.dispatcher_worktrees(root):
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

    def remove_worktree(self) -> None:
        """At the end of a run: the gate worktree, if the dispatcher made it."""
        if self.worktree.resolve() in worktrees.dispatcher_worktrees(self.config.root):
            worktrees.remove_worktree(self.config.root, self.worktree)
