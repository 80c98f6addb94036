"""The dispatcher's worktrees and branches: it deletes only the worktrees it can prove it made."""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from crew import config as configuration
from crew import errors
from crew import failpoints
from crew import git
from crew import names as safe_names
from crew import processes
from crew.dispatch import records
from crew.tasks import model as task_model


OWNED_MARKER = "dispatch-owned"  # in a worktree's git admin dir: the dispatcher made this worktree
# Also there: the paths the user's post-checkout hook and then worktree_setup_command left changed
# or untracked (NUL-separated), which are the worktree's environment (installed packages,
# generated files), not the agent's work.
SETUP_CHANGES = "dispatch-setup-changes"
# How often, and how far apart, a listing of the worktrees is tried while another worktree is
# half made: git writes a worktree's admin files within milliseconds.
LISTING_TRIES = 5
LISTING_RETRY_SECS = 0.05
# The dispatcher's own merge of main into a branch, conflict markers and all, for a conflict task.
PREPARED_SUBJECT = "dispatch: merge {main} into {branch}, conflicts left for {task_id}"


def add_dispatcher_worktree(root: Path, worktree: Path, *args: str, timeout: float) -> None:
    """`git worktree add` (the user's post-checkout hook runs in it: ended past `timeout`), then
    the proof that the dispatcher made it: a marker in the worktree's git admin dir
    (.git/worktrees/<name>/), which no edit in the worktree reaches and which git deletes with the
    worktree. The marker names the folder, so a worktree moved since is not ours. A worktree git
    lists at a folder that did not exist before is ours even when the add failed after making it
    (a post-checkout hook that failed or was ended), and so is removed as ours. What the hook
    made or changed in it is recorded as the worktree's environment (record_setup_changes)."""
    existed = os.path.lexists(worktree)
    try:
        git.git("worktree", "add", "-q", *args, cwd=root, timeout=timeout)
    finally:
        if not existed and worktree.is_dir() and worktree.resolve() in listed_worktrees(root):
            admin = Path(git.git_out(worktree, "rev-parse", "--absolute-git-dir"))
            (admin / OWNED_MARKER).write_text(str(worktree.resolve()) + "\n", encoding="utf-8")
    record_setup_changes(worktree)


def checked_out_despite_hook(root: Path, worktree: Path, commit: str, failed: errors.GitError) -> str | None:
    """When a checkout of `commit` in `worktree` (`git worktree add`, `git checkout`) failed only
    because the user's post-checkout hook did: one line that says so, naming the hook, its exit
    code and the end of its output. The hook runs once git has checked the commit out, cannot
    undo it, and lends git its exit code; so the worktree is whole when git lists it at `commit`
    with no tracked file changed. None when that is not so (the checkout itself failed)."""
    if worktree.resolve() not in listed_worktrees(root):
        return None
    head = git.git("rev-parse", "--verify", "-q", "HEAD", cwd=worktree, check=False).stdout.strip()
    wanted = git.git("rev-parse", "--verify", "-q", f"{commit}^{{commit}}", cwd=root, check=False).stdout.strip()
    hook = worktree / git.git_out(worktree, "rev-parse", "--git-path", "hooks/post-checkout")
    if not head or head != wanted or not hook.is_file() or git.git_out(
            worktree, "status", "--porcelain", "--untracked-files=no"):
        return None
    how = f"exit {failed.returncode}" if failed.returncode is not None else str(failed).rsplit(": ", 1)[-1]
    said = safe_names.one_line_tail(failed.stderr + "\n" + failed.stdout, limit=200) or "(no output)"
    return (f"warning: your post-checkout hook {hook.resolve()} failed ({how}) in {worktree}; git had checked "
            f"out {commit[:12]} there, so the dispatcher goes on with it: {said}")


def listed_worktrees(root: Path) -> set[Path]:
    """The folders of the worktrees git lists, resolved. git cannot list them while another
    worktree is half made (its admin files not all written yet: another worker's start, or the
    user's own `git worktree add`), which lasts an instant; so a failed listing is tried again
    a few times before its error is raised. Were it not, a worktree just made would be left
    without the dispatcher's marker, and so never removed by it."""
    for tries_left in reversed(range(LISTING_TRIES)):
        listing = git.git("worktree", "list", "--porcelain", cwd=root, check=not tries_left)
        if listing.returncode == 0:
            break
        time.sleep(LISTING_RETRY_SECS)
    listed = set()
    for line in listing.stdout.splitlines():
        if line.startswith("worktree "):
            listed.add(Path(line[len("worktree "):]).resolve())
    return listed


def dispatcher_worktrees(root: Path) -> set[Path]:
    """The worktrees git lists that carry the dispatcher's marker: the only ones it may delete."""
    listed = listed_worktrees(root)
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


def free_worktree_path(config: configuration.Settings, name: str) -> Path:
    """A folder for a new worktree: one of ours may be replaced, anyone else's is avoided."""
    root = config.worktree_root
    path, n = root / name, 1
    owned = dispatcher_worktrees(config.root) if path.exists() else set()  # one git call, not one a name
    while path.exists() and path.resolve() not in owned:
        n += 1
        path = root / f"{name}-{n}"
    return path


def is_tasks_branch(config: configuration.Settings, task_id: str, name: str) -> bool:
    """Whether a branch named in the task store (another host's metadata, or anyone's who edits
    the store) is that task's own: exactly the name branch_template makes for its id, and never
    main. Only such a branch is continued, merged and deleted as the task's work: any other name
    may be a user's branch, another task's, or main itself."""
    return name == safe_names.branch_name(config.branch_template, task_id) and name != config.main_branch


def branch_for(config: configuration.Settings, branches: dict[str, records.BranchOwner], task: task_model.Task) -> str:
    """The task's branch: the one recorded for it, or a name no branch has yet. A branch that
    exists but was not made for this very task (a deleted task's kept work, a user's branch)
    is never continued. The name is recorded in `branches`."""
    base, n = safe_names.branch_name(config.branch_template, task.id), 1
    owner = records.BranchOwner(task_id=task.id, task_created_at=task.created_at)
    name = base
    while git.rev_parse(config.root, f"refs/heads/{name}") and branches.get(name) != owner:
        n += 1
        name = f"{base}-{n}"
    branches[name] = owner
    return name


def add_task_worktree(config: configuration.Settings, branch: str, worktree: Path) -> None:
    root = config.root
    if worktree.resolve() in dispatcher_worktrees(root):
        remove_worktree(root, worktree)
    main = config.main_branch
    if git.rev_parse(root, f"refs/heads/{branch}"):
        if git.is_ancestor(root, branch, main):
            git.git("branch", "-D", branch, cwd=root)  # merged work: start afresh from main
        else:
            add_dispatcher_worktree(root, worktree, str(worktree), branch, timeout=config.git_hook_timeout_secs)
            return  # unmerged work of an earlier attempt: continue from it
    add_dispatcher_worktree(root, worktree, "-b", branch, str(worktree), main, timeout=config.git_hook_timeout_secs)


def prepare_conflict_worktree(config: configuration.Settings, task: task_model.Task,
                              conflict: records.PendingMerge) -> None:
    """Merge main into the branch and commit the conflicts, so the agent starts clean."""
    root, main = config.root, config.main_branch
    worktree, branch = conflict.worktree, conflict.branch
    if not worktree.exists():
        remove_worktree(root, worktree)  # git may still list it, if only its folder was deleted
        add_dispatcher_worktree(root, worktree, str(worktree), branch, timeout=config.git_hook_timeout_secs)
    git.clear_interrupted_git_state(worktree)
    if markerless := git.merge_tree(root, branch, main).markerless:
        raise errors.UserError(f"{', '.join(markerless)} now conflict in a way text markers cannot show; "
                               "a person must resolve it (the dispatcher commits neither side)")
    result = git.git("merge", "--no-ff", "--no-commit", "--no-edit", main, cwd=worktree, check=False)
    if result.returncode == 0 and not git.git_out(worktree, "status", "--porcelain"):
        return  # nothing to merge: main is already in the branch
    git.git("add", "-A", cwd=worktree)  # the files with conflict markers, for the agent to settle
    message = (PREPARED_SUBJECT.format(main=main, branch=branch, task_id=task.id) + "\n\n"
               f"Conflicted files: {', '.join(conflict.files) or 'none'}\n"
               f"This branch: {conflict.task_id}\nResolve task: {task.title}")
    # Committed by plumbing, so no hook runs: the markers are committed on purpose, for the
    # resolver, and a check-merge-conflict hook would refuse them. The resolver's own commits
    # (and any leftover commit of its work) go through the hooks.
    git.commit_on_head(worktree, git.git_out(worktree, "write-tree"), message,
                       git.git_out(worktree, "rev-parse", "MERGE_HEAD"))
    git.git("merge", "--quit", cwd=worktree)  # the merge is committed: forget it, keep index and files


def run_setup_command(config: configuration.Settings, worktree: Path, log: Path, stop: Callable[[], str | None],
                      mark: str) -> str | None:
    """worktree_setup_command in a new worktree (a worker's or the gate's), as a process tree
    ended past worktree_setup_timeout_secs or when stop() gives a reason. None on success, else why not."""
    if not (command := config.worktree_setup_command):
        return None  # none is set: nothing to run
    proc = processes.start_process(list(command), worktree, git.child_environment(), log, mark)
    ended = processes.wait_or_end(proc, config.worktree_setup_timeout_secs, stop, config.worker_kill_grace_secs,
                                  mark)
    if failed := ended or (f"exited {proc.returncode}" if proc.returncode else None):
        return failed
    record_setup_changes(worktree)
    return None


def record_setup_changes(worktree: Path) -> None:
    """Note what the post-checkout hook, and then the setup command, changed or made in the
    worktree (an untracked folder as one path), so that the commit of what the agent leaves
    uncommitted leaves it out."""
    admin = Path(git.git_out(worktree, "rev-parse", "--absolute-git-dir"))
    (admin / SETUP_CHANGES).write_text("\0".join(changed_paths(worktree)), encoding="utf-8")


def changed_paths(worktree: Path) -> list[str]:
    """The paths `git status` shows changed or untracked (an untracked folder as one path)."""
    entries = git.git("status", "--porcelain", "-z", cwd=worktree).stdout.split("\0")
    paths, i = [], 0
    while i < len(entries):
        entry, i = entries[i], i + 1
        if entry:
            paths.append(entry[3:])
            i += entry[0] in "RC"  # a rename's or copy's old path follows it
    return paths


def commit_leftovers(worktree: Path, message: str, timeout: float) -> bool:
    """Commit all an agent left, less the worktree's environment (setup_changes); False when it
    left nothing. A crash between staging and committing is a failpoint: a restart finds the work
    staged and not committed."""
    if not git.stage_everything(worktree, setup_changes(worktree)):
        return False
    failpoints.failpoint("during_leftover_commit")
    return git.commit_staged(worktree, message, timeout)


def has_leftovers(worktree: Path) -> bool:
    """Whether the worktree holds changes besides its environment: what commit_leftovers commits."""
    return bool(set(changed_paths(worktree)) - set(setup_changes(worktree)))


def setup_changes(worktree: Path) -> list[str]:
    """The paths record_setup_changes noted for this worktree."""
    try:
        admin = Path(git.git_out(worktree, "rev-parse", "--absolute-git-dir"))
        return [path for path in (admin / SETUP_CHANGES).read_text(encoding="utf-8").split("\0") if path]
    except (OSError, errors.GitError):
        return []


def discard_changes(root: Path, worktree: Path) -> None:
    """Undo what is uncommitted in one of the dispatcher's worktrees (changes the user's hooks
    refused); ignored files stay, and nobody else's worktree is ever touched."""
    if worktree.resolve() in dispatcher_worktrees(root):
        git.git("reset", "-q", "--hard", cwd=worktree)
        git.git("clean", "-q", "-f", "-d", cwd=worktree)


def discard_attempt(config: configuration.Settings, worker: records.Worker) -> None:
    """Remove an attempt's worktree; its branch too, unless it holds work main lacks."""
    remove_worktree(config.root, worker.worktree)
    if git.rev_parse(config.root, f"refs/heads/{worker.branch}") and git.is_ancestor(
            config.root, worker.branch, config.main_branch):
        git.git("branch", "-D", worker.branch, cwd=config.root, check=False)
