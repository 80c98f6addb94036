"""Main rewritten under the dispatcher (a user's reset, amend or rebase): the commits that left it
never come back through the dispatcher's branches. The last main seen is remembered across
restarts; when main no longer descends from it, the commits that left are those reachable from
it and not from main now, by id. A branch of the dispatcher's that carries any is rebased onto
main without them before it merges, off the loop; if that conflicts, it is held until a person
decides (`tasks.py held ID --merge` or `--discard`), through the decisions file."""
from __future__ import annotations

import concurrent.futures
import enum
import json
from collections.abc import Iterable, Sequence
from typing import Any

from crew import config as configuration
from crew import errors
from crew import files
from crew import git
from crew.dispatch import outcomes
from crew.dispatch import records
from crew.dispatch import worktrees
from crew.dispatch.ledger import Ledger
from crew.report.events import EventName


DECISIONS_FILE = ".dispatch_held_decisions.json"  # task id -> a person's decision on its held branch
COMMITS_NAMED = 10  # commits a one-line reason names; the rest are counted
SHORT = 10


class HeldDecision(enum.StrEnum):
    MERGE = "merge"  # merge the branch as it is: the commits that left main come back with it
    DISCARD = "discard"  # delete the branch; the task is released for a fresh attempt on main


def carried(left: set[str], branch_commits: Iterable[str]) -> list[str]:
    """Which of the commits that left main a branch carries (its commits main lacks), in its order."""
    return [commit for commit in branch_commits if commit in left]


def commit_list(commits: Sequence[str]) -> str:
    """Commits as a reason names them: short ids, the first few, the rest counted."""
    named = ", ".join(commit[:SHORT] for commit in commits[:COMMITS_NAMED])
    return named + (f" and {len(commits) - COMMITS_NAMED} more" if len(commits) > COMMITS_NAMED else "")


def held_reason(task_id: str, branch: str, main: str, commits: Sequence[str], why: str) -> str:
    """One line: what holds the branch, which commits, and the commands that decide."""
    return (f"held: {branch} carries commits that left {main} ({commit_list(commits)}) and does not rebase "
            f"without them ({why}); decide with `py tasks.py held {task_id} --merge` (as it is, those commits "
            f"included) or `--discard` (the branch is deleted, the task released)")


def decisions_file(config: configuration.Settings) -> files.StateFile[dict[str, Any]]:
    return files.StateFile(config.root / DECISIONS_FILE, {})


def record_decision(config: configuration.Settings, request: records.MergeRequest, decision: HeldDecision) -> None:
    """A person's decision on a held branch, for the dispatcher to carry out (now if it runs,
    else at its next run). It names the branch and its tip: it applies to that hold only."""
    decisions = decisions_file(config)
    with files.locked(decisions.lock, DECISIONS_FILE):
        data = files.read_json_file(decisions.path, {})
        data = data if isinstance(data, dict) else {}
        data[request.task_id] = {"decision": str(decision), "branch": request.branch,
                                 "tip": git.rev_parse(config.root, f"refs/heads/{request.branch}")}
        files.atomic_write_text(decisions.path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def held_requests(state: records.DispatchState) -> list[records.MergeRequest]:
    return [request for request in state.merge_queue if request.held]


class RewrittenMain:
    """The last main seen, the branches that carry commits that left it (in the ledger's state),
    and their rebases under way (here: this process's threads)."""

    def __init__(self, config: configuration.Settings, ledger: Ledger, executor: concurrent.futures.Executor):
        self.config, self.ledger, self.executor = config, ledger, executor
        self.root, self.main = config.root, config.main_branch
        self.rebasing: dict[str, concurrent.futures.Future[str | None]] = {}  # by branch
        self.told: set[str] = set()

    def observe_main(self) -> None:
        self.observe(git.rev_parse(self.root, self.main))

    def observe(self, main_now: str | None, parent: str | None = None) -> None:
        """Main is at `main_now`: if it no longer descends from the last main seen, record which
        of the dispatcher's branches carry the commits that left it. Then remember it. parent:
        `main_now`'s parent, when known (a merge of the dispatcher's): main seen there left nothing."""
        state, seen = self.ledger.state, self.ledger.state.main_seen
        if main_now is None or main_now == seen:
            return
        with self.ledger.change():  # the branches that carry them with the main that left them out: both or neither
            left = []
            if (seen and seen != parent and git.rev_parse(self.root, seen)
                    and not git.is_ancestor(self.root, seen, main_now)):
                left = git.commits_between(self.root, seen, main_now)
                gone = set(left)
                for branch in self.branches():
                    if found := carried(gone, git.commits_between(self.root, f"refs/heads/{branch}", main_now)):
                        earlier = state.left_main.get(branch)
                        # The main it was made on first: its own commits are those after that one.
                        state.left_main[branch] = records.LeftMain(
                            old_main=earlier.old_main if earlier else seen,
                            commits=list(dict.fromkeys([*(earlier.commits if earlier else []), *found])))
            state.main_seen = main_now
        if left:
            self.ledger.event(EventName.MAIN_REWRITTEN, old=seen, new=main_now, count=len(left),
                              commits=left[:COMMITS_NAMED])
            self.ledger.say(f"{self.main} was rewritten: {len(left)} commit(s) left it ({commit_list(left)}); "
                            "the dispatcher's branches that carry them are rebased without them before they merge")

    def branches(self) -> list[str]:
        """The dispatcher's branches that exist: its workers', its merge queue's, its pending
        merges' and every branch it made for a task (a later attempt continues from it)."""
        state = self.ledger.state
        names = [*(w.branch for w in state.workers.values()), *(r.branch for r in state.merge_queue),
                 *(p.branch for p in state.pending.values()), *state.branches]
        return [name for name in dict.fromkeys(names) if git.rev_parse(self.root, f"refs/heads/{name}")]

    def holds_back(self, request: records.MergeRequest, main_now: str) -> bool:
        """Whether the request must wait before it is merged: its branch carries commits that left
        main and is being rebased without them (off the loop), or does not rebase and is held now."""
        self.observe(main_now)
        left = self.ledger.state.left_main.get(request.branch)
        if left is None:
            return False
        if not git.rev_parse(self.root, f"refs/heads/{request.branch}"):
            with self.ledger.change():
                del self.ledger.state.left_main[request.branch]  # gone: the merge says what becomes of it
            return False
        future = self.rebasing.get(request.branch)
        if future is None:
            self.rebasing[request.branch] = self.executor.submit(self.rebase, request, left, main_now)
            if request.branch not in self.told:
                self.told.add(request.branch)
                self.ledger.say(f"{request.task_id}: rebasing {request.branch} onto {self.main} without the commits "
                                f"that left it ({commit_list(left.commits)})")
            return True
        if not future.done():
            return True
        del self.rebasing[request.branch]
        try:
            failure = future.result()
        except (errors.GitError, OSError) as exc:
            failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if failure is None:
            with self.ledger.change():
                del self.ledger.state.left_main[request.branch]
            self.ledger.event(EventName.BRANCH_REBASED, request.task_id, branch=request.branch, commits=left.commits)
            self.ledger.say(f"{request.task_id}: rebased {request.branch} onto {self.main} without them; merging it")
            return False
        self.hold(request, left, failure)
        return True

    def rebase(self, request: records.MergeRequest, left: records.LeftMain, onto: str) -> str | None:
        """In a starter thread: git and the branch's own worktree only. None once the branch
        carries none of the commits (already so after a crash mid-way); else why it cannot."""
        worktree = request.worktree
        if not worktree.exists():
            worktrees.remove_worktree(self.root, worktree)  # git may still list it
            worktrees.add_dispatcher_worktree(self.root, worktree, str(worktree), request.branch,
                                              timeout=self.config.git_hook_timeout_secs)
        git.clear_interrupted_git_state(worktree)  # a rebase a crash cut short is undone first
        if not carried(set(left.commits), git.commits_between(self.root, f"refs/heads/{request.branch}", onto)):
            return None
        try:
            return git.rebase_onto(worktree, onto, left.old_main, request.branch, self.config.git_hook_timeout_secs)
        except errors.GitError:
            git.clear_interrupted_git_state(worktree)  # a hook ended past its time: the branch as it was
            raise

    def hold(self, request: records.MergeRequest, left: records.LeftMain, why: str) -> None:
        """The branch does not rebase without the commits: it waits for a person's decision."""
        reason = held_reason(request.task_id, request.branch, self.main, left.commits, why)
        # Noted first: a crash before the save rebases and holds again (a second note), never none.
        self.ledger.store.add_note(request.task_id, reason)
        with self.ledger.change():
            request.held = request.waiting = reason
        self.ledger.event(EventName.BRANCH_HELD, request.task_id, branch=request.branch, commits=left.commits,
                          reason=reason)
        self.ledger.say(f"{request.task_id}: {reason}")

    def carry_out_decisions(self) -> bool:
        """Act on the decisions people recorded for held branches; True if any was acted on. A
        decision for a hold that is no longer there (the branch moved, or it was acted on before
        a crash) is dropped."""
        held = {request.task_id: request for request in held_requests(self.ledger.state)}
        if not held:
            return False
        store = decisions_file(self.config)
        if not store.path.exists():
            return False
        with files.locked(store.lock, DECISIONS_FILE):
            decisions = files.read_json_file(store.path, {})
        acted = False
        for task_id, decided in (decisions if isinstance(decisions, dict) else {}).items():
            request = held.get(task_id)
            if request is None or not isinstance(decided, dict) or decided.get("branch") != request.branch:
                continue
            tip = git.rev_parse(self.root, f"refs/heads/{request.branch}")
            if decided.get("decision") == HeldDecision.MERGE and tip == decided.get("tip"):
                self.merge_as_it_is(request)
                acted = True
            elif decided.get("decision") == HeldDecision.DISCARD and tip in (None, decided.get("tip")):
                self.discard(request, decided.get("tip") or "")  # gone: a discard cut short by a crash
                acted = True
        with files.locked(store.lock, DECISIONS_FILE):  # a decision recorded meanwhile stays
            latest = files.read_json_file(store.path, {})
            if isinstance(latest, dict) and isinstance(decisions, dict):
                remaining = {key: value for key, value in latest.items() if decisions.get(key) != value}
                files.atomic_write_text(store.path, json.dumps(remaining, indent=2, ensure_ascii=False) + "\n")
        return acted

    def merge_as_it_is(self, request: records.MergeRequest) -> None:
        with self.ledger.change():
            self.ledger.state.left_main.pop(request.branch, None)
            request.held = request.waiting = None
        self.ledger.event(EventName.HELD_DECIDED, request.task_id, branch=request.branch,
                          decision=str(HeldDecision.MERGE))
        self.ledger.say(f"{request.task_id}: {request.branch} is merged as it is, as a person decided")

    def discard(self, request: records.MergeRequest, tip: str) -> None:
        """Delete the branch (and its worktree), then its records; the task is released."""
        worktrees.remove_worktree(self.root, request.worktree)
        git.git("branch", "-D", request.branch, cwd=self.root, check=False)
        state = self.ledger.state
        state.left_main.pop(request.branch, None)
        state.branches.pop(request.branch, None)
        self.ledger.drop_request(request)  # saves the state
        self.ledger.event(EventName.HELD_DECIDED, request.task_id, branch=request.branch,
                          decision=str(HeldDecision.DISCARD), tip=tip)
        outcomes.release_claim(
            self.ledger, request, f"released: its branch {request.branch} (at {tip[:SHORT]}) was discarded, "
                                  "as a person decided: it carried commits that left "
                                  f"{self.main}; the next attempt starts on {self.main}")
