"""Undoing a merged task on main, through the merge queue. Each merge a task lands is recorded
in the store by its full commit id (a label), never found again by searching commit messages.
`tasks.py revert` files a revert task naming those merges; the dispatcher runs the reverter below
in place of an agent on it (its branch holds the reverts, newest merge first), gates and lands it
like any branch, and once it has landed reopens the original task with the reason as a note."""
from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from crew import config as configuration
from crew import errors
from crew import git
from crew import names
from crew.report.events import EventName
from crew.tasks import model as task_model


if TYPE_CHECKING:  # the merge queue hands its ledger in; the reverter, run alone, needs none of it
    from crew.dispatch.ledger import Ledger

MERGED_PREFIX = "merged:"  # a merge of the task's branch on main, by its full commit id
REVERT_OF_PREFIX = "revert-of:"  # on a revert task: the task it undoes
REVERTS_PREFIX = "reverts:"  # on a revert task: a merge its branch reverts
KEEP_CLOSED_LABEL = "revert-keeps-closed"  # tasks.py revert --close: the original is not reopened
REVERTED_BY_PREFIX = "reverted-by:"  # on the original, once reopened: its reopening is done (crash-safe)
TITLE = "Revert {task_id}: {title}"
REASON_PREFIX = "Reason: "
COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 repositories
REVERTER_MODULE = "crew.dispatch.revert"


def merged_label(commit: str) -> str:
    return MERGED_PREFIX + commit


def _ids(labels: Sequence[str], prefix: str) -> list[str]:
    return [label[len(prefix):] for label in labels
            if label.startswith(prefix) and COMMIT_ID.fullmatch(label[len(prefix):])]


def recorded_merges(labels: Sequence[str]) -> list[str]:
    """The merges a task landed on main, as recorded when each landed."""
    return _ids(labels, MERGED_PREFIX)


def merges_to_revert(labels: Sequence[str]) -> list[str]:
    """A revert task's merges to revert; empty for any other task."""
    return _ids(labels, REVERTS_PREFIX) if reverted_task(labels) else []


def reverted_task(labels: Sequence[str]) -> str | None:
    return next((label[len(REVERT_OF_PREFIX):] for label in labels if label.startswith(REVERT_OF_PREFIX)), None)


def revert_task(task: task_model.Task, merges: Sequence[str], reason: str, keep_closed: bool) -> task_model.NewTask:
    """The revert task for `task`: linked to it, naming its merges (newest first). A revert task
    reverted is left closed: reopened, it would run its reverter again and undo its task once more."""
    keep_closed = keep_closed or reverted_task(task.labels) is not None
    title = names.clean_title(TITLE.format(task_id=task.id, title=task.title))
    description = (f"Undo task {task.id} ({names.clean_title(task.title)}) on main: revert its merges "
                   f"{', '.join(merges)}, newest first. The dispatcher makes this branch itself; no agent runs."
                   + (f"\n\n{REASON_PREFIX}{names.clean_text(reason, 2000)}" if reason else ""))
    labels = [REVERT_OF_PREFIX + task.id, *(REVERTS_PREFIX + commit for commit in merges)]
    return task_model.NewTask(title, description, priority=task.priority,
                              labels=labels + [KEEP_CLOSED_LABEL] * keep_closed, deps=[("related", task.id)])


def reason_of(description: str) -> str:
    return next((line[len(REASON_PREFIX):] for line in description.splitlines()[::-1]
                 if line.startswith(REASON_PREFIX)), "")


def newest_first(root: Path, commits: Sequence[str]) -> list[str]:
    """Merges of main's history, newest first: a later one has more commits behind it."""
    return sorted(commits, key=lambda commit: int(git.git_out(root, "rev-list", "--count", commit)), reverse=True)


def request(config: configuration.Settings, store: task_model.TaskStore, task_id: str, reason: str,
            keep_closed: bool) -> task_model.Task:
    """File the revert task for a merged task (tasks.py revert); the task itself is left as it is
    until the revert has landed."""
    task = store.get(task_id)
    merges = recorded_merges(task.labels)
    if not merges:
        raise errors.UserError(f"{task_id} has no merge on {config.main_branch} recorded (the dispatcher records "
                               "each merge it lands); nothing to revert")
    main = config.main_branch
    if missing := [commit for commit in merges if not git.is_ancestor(config.root, commit, main)]:
        raise errors.UserError(f"{task_id}: its merge {missing[0]} is no longer on {main}; nothing was filed")
    for other in store.list(["open", "in_progress", "blocked"]):
        if reverted_task(other.labels) == task_id:
            raise errors.UserError(f"{task_id} is being reverted already by {other.id} ({other.status})")
    spec = revert_task(task, newest_first(config.root, merges), reason, keep_closed)
    return store.create(spec.title, spec.description, priority=spec.priority, labels=spec.labels, deps=spec.deps)


def reverter_command(task: task_model.Task, root: Path) -> list[str] | None:
    """The revert task's worker in place of an agent; None for any other task. A store may keep
    labels in any order (bd sorts them): the merges are put newest first from git."""
    if not (merges := merges_to_revert(task.labels)):
        return None
    return [sys.executable, "-m", REVERTER_MODULE, *newest_first(root, merges)]


def reverter_failed(argv: Sequence[str], exit_code: int | None) -> bool:
    """Whether an ended worker was the reverter and failed (gave up, or was killed midway). Unlike
    an agent's (Aider exits 0 whatever it did, so agents are judged from git), its exit code is its
    verdict: its branch may hold some reverts only (an earlier attempt's, or its own before it was
    killed), which merged would pass for the task's whole revert. None: not known (adopted)."""
    return bool(exit_code) and list(argv[1:3]) == ["-m", REVERTER_MODULE]


def after_landing(store: task_model.TaskStore, ledger: Ledger, task: task_model.Task, commit: str) -> None:
    """A revert task's branch has landed: its original task is reopened with the reason as a note
    (unless --close). Crash-safe: a restart that lands it again reopens nothing twice."""
    original_id = reverted_task(task.labels)
    if original_id is None:  # not a revert task: there is nothing to reopen
        return
    reopen = KEEP_CLOSED_LABEL not in task.labels
    try:
        original = store.get(original_id)
    except errors.TaskNotFound:
        ledger.drop_record_of_gone_task(original_id, f"reopening after its revert {task.id}")
        return
    done = REVERTED_BY_PREFIX + task.id
    if done not in original.labels:
        if reopen and original.status == "closed":
            store.reopen(original_id)
        # Open: reopened here before a crash (or by a person); in progress or blocked, it is left so.
        reopened = reopen and original.status in ("closed", "open")
        reason, merges = reason_of(task.description), newest_first(ledger.config.root, merges_to_revert(task.labels))
        note = (f"reverted on main by {task.id} (merge {commit})" + (f": {reason}" if reason else "")
                + ("" if reopened else f"; left {original.status}"))
        # The merges undone are no longer the task's: a later revert undoes only what landed since.
        store.relabel(original_id, add=[done], remove=[merged_label(m) for m in merges], note=note)
        ledger.event(EventName.REVERTED, original_id, revert_task=task.id, commit=commit, merges=merges,
                     reopened=reopened)
        ledger.say(f"{original_id}: reverted on main by {task.id}" + ("; reopened" if reopened else ""))


def _has_markers(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return any(line.startswith(b"<<<<<<< ") for line in fh)
    except OSError:  # deleted on one side
        return False


def _undone_already(commit: str) -> bool:
    """Whether reverting the merge would change nothing: an earlier attempt on this branch, ended
    after some of its reverts, reverted it already (git refuses an empty revert)."""
    trial = subprocess.run(["git", "revert", "--no-commit", "-m", "1", commit], check=False, capture_output=True)
    empty = trial.returncode == 0 and subprocess.run(["git", "diff", "--cached", "--quiet", "HEAD"],
                                                     check=False).returncode == 0
    subprocess.run(["git", "revert", "--abort"], check=False, capture_output=True)
    return empty


def _give_up(start: str, code: int) -> int:
    """The reverts this run committed are taken back: landed alone, the branch would pass for the
    task's whole revert (its commits are merged as a finished attempt's)."""
    subprocess.run(["git", "reset", "-q", "--hard", start], check=False, capture_output=True)
    return code


def main(argv: Sequence[str]) -> int:
    """The reverter, run in the revert task's worktree (a branch made from main): each merge is
    reverted against its first parent, in the order given (newest first). A revert that conflicts
    is committed with its conflict markers: the merge queue then files a conflict task for it."""
    start = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    for commit in argv:
        if _undone_already(commit):
            print(f"{commit} is undone on this branch already (an earlier attempt's work): skipped", flush=True)
            continue
        run = subprocess.run(["git", "revert", "--no-edit", "-m", "1", commit], check=False, capture_output=True,
                             text=True)
        print(run.stdout + run.stderr, end="", flush=True)
        if run.returncode == 0:
            continue
        conflicted = subprocess.run(["git", "diff", "--name-only", "--diff-filter=U"], check=False, capture_output=True,
                                    text=True).stdout.split()
        if not conflicted:
            return _give_up(start, run.returncode)
        if markerless := [path for path in conflicted if not _has_markers(Path(path))]:
            # A file deleted on one side, say: committed as it stands, the revert would be silently wrong.
            subprocess.run(["git", "revert", "--abort"], check=False, capture_output=True)
            _give_up(start, 1)
            print(f"reverting {commit} conflicts without conflict markers in {', '.join(markerless)} (a file "
                  "deleted or renamed on one side): a person must revert it", flush=True)
            return 1
        print(f"reverting {commit} conflicts in {', '.join(conflicted)}: committed with its markers", flush=True)
        if (subprocess.run(["git", "add", "-A", "--", *conflicted], check=False).returncode
                or subprocess.run(["git", "commit", "--no-edit", "-q"],
                                  check=False).returncode):  # a hook refusing markers
            subprocess.run(["git", "revert", "--abort"], check=False, capture_output=True)
            print(f"reverting {commit}: its commit with conflict markers was refused: a person must revert it",
                  flush=True)
            return _give_up(start, 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
