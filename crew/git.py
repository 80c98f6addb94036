"""Every git call: with LC_ALL=C and without the caller's repository-locating variables."""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from pathlib import Path

from crew import errors
from crew import names
from crew import processes


@functools.cache
def repository_variables() -> frozenset[str]:
    """The variables that tie git to one repository (GIT_DIR, GIT_INDEX_FILE, ...), as git itself
    lists them. Set by a caller such as a git hook, they would send every call to that repository."""
    listed = processes.run("git", "rev-parse", "--local-env-vars", check=False).stdout
    return frozenset(listed.split())


def child_environment() -> dict[str, str]:
    """The environment for git and for the processes that work in our worktrees (agents, gates):
    the caller's, less the variables that would point them at another repository. Identity and
    config variables (GIT_AUTHOR_*, GIT_CONFIG_GLOBAL) stay."""
    hidden = repository_variables()
    return {k: v for k, v in os.environ.items() if k not in hidden}


# No git command of the dispatcher's waits for a person: it has no terminal (processes.run starts
# it in a session of its own, stdin from the null device), git never prompts for credentials,
# and gpg is not pointed at the user's terminal. What could still wait is bounded: a hook by the
# caller's timeout, the user's gpg.program in a plumbing commit (a GUI pinentry) by this one.
SIGN_TIMEOUT_SECS = 600.0
NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0"}
TERMINAL_VARIABLES = ("GPG_TTY",)


def git(*args: str | os.PathLike[str], cwd: str | os.PathLike[str], check: bool = True,
        env: dict[str, str] | None = None, input: str | None = None,
        timeout: float | None = None) -> processes.Completed:
    """timeout: for a command that runs the user's hooks (a checkout, a merge, a commit); its
    whole tree, the hooks' processes too, is ended past it. Every git command runs as a tree of
    its own that a stop ends (processes.end_commands)."""
    # LC_ALL=C: the code reads git's messages, which a German or French locale would translate.
    env = {**(env if env is not None else child_environment()), "LC_ALL": "C", **NO_PROMPT}
    for name in TERMINAL_VARIABLES:
        env.pop(name, None)
    return processes.run("git", *args, cwd=cwd, check=check, env=env, error=errors.GitError, input=input,
                         timeout=timeout, tree=True)


def signs_commits(cwd: str | os.PathLike[str]) -> bool:
    """The user's commit.gpgSign, which the dispatcher keeps: `git commit` reads it itself,
    `git commit-tree` only signs when told."""
    return git("config", "--type=bool", "--get", "commit.gpgSign", cwd=cwd, check=False).stdout.strip() == "true"


def signing_failure(cwd: str | os.PathLike[str], failed: errors.GitError,
                    timeout: float | None) -> errors.UserError | None:
    """A commit that could not be signed, or did not finish while signing is on (gpg waiting
    for a passphrase), as one line that says so; None when signing is off or the failure is another."""
    said = failed.stderr.lower()
    timed_out = failed.returncode is None and timeout is not None
    if not timed_out and "failed to sign" not in said and COMMIT_NOT_WRITTEN not in said:
        return None
    if not signs_commits(cwd):
        return None
    what = (f"git did not finish a commit within {timeout:g} s (a hook, or signing waiting for a passphrase)"
            if timed_out else f"git could not sign a commit: {first_line(failed.stderr)}")
    return errors.UserError(f"{what}, in {cwd}; commit.gpgSign is set, and the dispatcher never waits for a "
                            "passphrase: let gpg-agent hold it, or set commit.gpgSign to false for this repository")


# A commit message carries task titles, which may hold what no argument can (a NUL byte, 128 KiB
# of text): it goes to git on stdin, cleaned (git refuses a NUL in a message even there).
def commit(worktree: Path, message: str, *options: str, check: bool = True,
           timeout: float | None = None) -> processes.Completed:
    """`git commit` of what is staged, with `message` (timeout: see git()); signed when the
    user's setting says so."""
    try:
        return git("commit", "-q", *options, "-F", "-", cwd=worktree, input=names.clean_text(message), check=check,
                   timeout=timeout)
    except errors.GitError as failed:
        unsigned = signing_failure(worktree, failed, timeout)
        if unsigned is None:
            raise
        raise unsigned from failed


def commit_tree(root: Path, tree: str, parents: list[str], message: str) -> str:
    """A commit of `tree` on `parents`, made without touching any checkout; its id. Plumbing,
    which runs no hooks: for the dispatcher's own commits that carry no agent content (its
    merges, its bookkeeping on a branch). Signed as `git commit` would sign it."""
    parent_args = [arg for parent in parents for arg in ("-p", parent)]
    sign = signs_commits(root)
    timeout = SIGN_TIMEOUT_SECS if sign else None  # no hook runs: only the user's gpg.program can wait
    try:
        made = git("commit-tree", tree, *parent_args, *["-S"] * sign, "-F", "-", cwd=root,
                   input=names.clean_text(message), timeout=timeout)
    except errors.GitError as failed:
        unsigned = signing_failure(root, failed, timeout)
        if unsigned is None:
            raise
        raise unsigned from failed
    return made.stdout.strip()


def tracked_files(root: Path) -> list[str]:
    return git("ls-files", "-z", cwd=root).stdout.split("\0")[:-1]


TEXT_CONFLICT = "CONFLICT (contents)"  # merge-tree's type for a conflict it marks up in the text
MARKER_BLOCK = re.compile(r"^<<<<<<<(?: .*)?\n(?:.*\n)*?^=======\n(?:.*\n)*?^>>>>>>>(?: .*)?$", re.MULTILINE)


def git_out(cwd: Path, *args: str) -> str:
    return git(*args, cwd=cwd).stdout.strip()


def rev_parse(root: Path, rev: str) -> str | None:
    result = git("rev-parse", "-q", "--verify", rev + "^{commit}", cwd=root, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def is_ancestor(root: Path, commit: str, of: str) -> bool:
    return git("merge-base", "--is-ancestor", commit, of, cwd=root, check=False).returncode == 0


def merge_of(root: Path, tip: str, branch: str) -> str | None:
    """The commit of `branch`'s first-parent line that merged `tip` (its second parent), if any;
    only the commits since `tip` are read."""
    for line in git_out(root, "rev-list", "--first-parent", "--parents", f"{tip}..{branch}").splitlines():
        ids = line.split()
        if len(ids) > 2 and ids[2] == tip:
            return ids[0]
    return None


def commits_between(root: Path, tip: str, excluded: str) -> list[str]:
    """The commits reachable from `tip` and not from `excluded`, by id, newest first."""
    return git_out(root, "rev-list", tip, f"^{excluded}", "--").split()


# A user's rebase.autoStash would stash and re-apply whatever is uncommitted, and their
# rebase.updateRefs would move any other branch of theirs that points into the rebased commits.
REBASE_AS_ASKED = ("--no-autostash", "--no-update-refs")


def rebase_onto(worktree: Path, onto: str, upstream: str, branch: str, timeout: float) -> str | None:
    """`git rebase --onto ONTO UPSTREAM BRANCH` in the branch's worktree: the branch's commits that
    `upstream` lacks, replayed on `onto`. None when done; else why not (a conflict, named by git),
    with the rebase aborted and the branch as it was. timeout: for the user's hooks it runs."""
    result = git("rebase", "-q", *REBASE_AS_ASKED, "--onto", onto, upstream, branch, cwd=worktree, check=False,
                 timeout=timeout)
    if result.returncode == 0:
        return None
    git("rebase", "--abort", cwd=worktree, check=False)
    output = result.stdout + result.stderr
    return next((line.strip() for line in output.splitlines() if line.startswith("CONFLICT")), first_line(output))


def checkout_of_branch(root: Path, branch: str) -> Path | None:
    """The worktree where `branch` is checked out, if any."""
    current = None
    for line in git_out(root, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            current = Path(line[len("worktree "):])
        elif line == f"branch refs/heads/{branch}":
            return current
    return None


# Files in a worktree's git admin dir that mean an operation is under way there.
OPERATION_FILES = (("rebase-merge", "a rebase"), ("rebase-apply", "a rebase"), ("MERGE_HEAD", "a merge"),
                   ("CHERRY_PICK_HEAD", "a cherry-pick"), ("REVERT_HEAD", "a revert"), ("BISECT_START", "a bisect"))


def operation_on_branch(root: Path, branch: str) -> str | None:
    """A rebase, merge, cherry-pick, revert or bisect under way on `branch` in any worktree, as
    "a rebase of main is in progress in FOLDER"; None when there is none. Moving the branch then
    would break the user's `--continue` or lose their work on `--abort`. A rebase and a bisect
    detach HEAD, so the branch they are on is read from their own files."""
    common_dir = root / ".git"
    admin_dirs = [(common_dir, root)]
    linked = common_dir / "worktrees"
    for admin in sorted(linked.iterdir()) if linked.is_dir() else ():
        if (gitdir := read_admin_file(admin / "gitdir")) is not None:
            admin_dirs.append((admin, Path(gitdir).parent))
    for admin, folder in admin_dirs:
        on_branch = read_admin_file(admin / "HEAD") == f"ref: refs/heads/{branch}"
        for name, what in OPERATION_FILES:
            if not (admin / name).exists():
                continue
            started_on = (read_admin_file(admin / name / "head-name") if name.startswith("rebase")
                          else read_admin_file(admin / name) if name == "BISECT_START" else None)
            if on_branch or started_on in (branch, f"refs/heads/{branch}"):
                return f"{what} of {branch} is in progress in {folder}"
    return None


def read_admin_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def fast_forward_checkout(checkout: Path, branch: str, old: str, new: str,
                          timeout: float) -> processes.Completed | None:
    """Move `branch`, checked out in `checkout`, from exactly `old` to `new`, as git moves it: `git
    merge --ff-only`, which keeps the user's uncommitted changes (refusing to overwrite any), keeps
    the index and the files consistent with HEAD whenever it is cut short, and runs their
    post-merge hook. None, and nothing done, when the checkout is not on the branch at `old`: a
    fast-forward goes ahead from any ancestor of `new`, so a commit the user reset away would come
    back. Git's result otherwise, which may be a refusal (uncommitted changes, a lock, files in the
    way). Git refuses to write over an untracked file, or to remove a folder holding one, before it
    writes anything; --no-overwrite-ignore makes it refuse for an ignored file too, which it would
    otherwise overwrite without a word. --no-autostash overrides a user's merge.autoStash, which would
    stash their changes, move main anyway and leave conflict markers in their files (their edit in
    a stash) or their staged changes unstaged; git then refuses, naming the files. Its own look is
    the only one: a look of ours beforehand would walk the work tree for nothing, and a file made
    after it would hold the move anyway."""
    # The option applies to the arguments after it: the commit, then the branch.
    head = git("rev-parse", "HEAD", "--symbolic-full-name", "HEAD", cwd=checkout, check=False).stdout.split()
    if head != [old, f"refs/heads/{branch}"]:
        return None
    return git("merge", "--ff-only", "--no-overwrite-ignore", "--no-autostash", "--no-edit", "-q", new, cwd=checkout,
               check=False, timeout=timeout)


def stale_lock_reason(lock: Path) -> str:
    return (f"git's lock file {lock} exists: another git command is running there, or one was killed "
            "(then remove that file)")


def first_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[0]


@dataclasses.dataclass
class MergeResult:
    """What `git merge-tree --write-tree` found: the merged tree, or the conflicts."""

    tree: str | None
    files: list[str] = dataclasses.field(default_factory=list)  # conflicted paths
    messages: str = ""  # git's CONFLICT lines, for people
    # path -> {1: the merge base's blob, 2: ours, 3: theirs}; a side that deleted the file is absent
    stages: dict[str, dict[int, str]] = dataclasses.field(default_factory=dict)
    markerless: list[str] = dataclasses.field(default_factory=list)  # conflicts text markers cannot show


def merge_tree(root: Path, ours: str, theirs: str) -> MergeResult:
    """`git merge-tree --write-tree -z`: exit 0 is clean, 1 has conflicts. Its -z form gives each
    message a stable type: only "CONFLICT (contents)" leaves markers in a text file; a binary,
    modify/delete, rename or mode conflict does not."""
    result = git("merge-tree", "--write-tree", "-z", ours, theirs, cwd=root, check=False)
    if result.returncode not in (0, 1):
        raise errors.GitError(result.argv, result.returncode, result.stdout, result.stderr)
    fields = result.stdout.split("\0")
    if result.returncode == 0:
        return MergeResult(fields[0].strip())
    merged = MergeResult(None)
    i = 1
    while i < len(fields) and fields[i]:  # "<mode> <blob> <stage>\t<path>", one per stage
        info, path = fields[i].split("\t", 1)
        merged.stages.setdefault(path, {})[int(info.split()[2])] = info.split()[1]
        i += 1
    merged.files = list(merged.stages)
    messages, markerless = [], []
    i += 1
    while i < len(fields) and fields[i]:  # "<n>", n paths, "<type>", "<message>"
        count = int(fields[i])
        paths, kind, text = fields[i + 1:i + 1 + count], fields[i + 1 + count], fields[i + 2 + count]
        i += count + 3
        if kind.startswith("CONFLICT"):
            messages.append(text.strip())
            if kind != TEXT_CONFLICT:
                markerless += paths
    merged.messages, merged.markerless = "\n".join(messages), list(dict.fromkeys(markerless))
    return merged


def merge_diffstat(root: Path, merge: str, branch_tip: str | None,
                   parents: tuple[str, str] | None = None) -> dict[str, int] | None:
    """Files, insertions and deletions a merge brought into main: recorded when it happens, since
    the branch is deleted after it. None when `merge` is not the merge of that branch tip.
    parents: `merge`'s two parents when the caller made it (else they are read)."""
    if parents is None:
        read = git_out(root, "rev-list", "--parents", "-n", "1", merge).split()
        parents = (read[1], read[2]) if len(read) == 3 else None
    if parents is None or parents[1] != branch_tip:
        return None  # main moved on after a merge finished before a restart: unknown now
    stat = {"files": 0, "insertions": 0, "deletions": 0}
    for line in git_out(root, "diff", "--numstat", parents[0], merge).splitlines():
        added, deleted, _ = line.split("\t", 2)
        stat["files"] += 1
        stat["insertions"] += int(added) if added.isdigit() else 0  # "-" for a binary file
        stat["deletions"] += int(deleted) if deleted.isdigit() else 0
    return stat


def new_marker_files(root: Path, main: str, branch: str) -> list[str]:
    """Files in which the branch has more complete conflict-marker blocks than main has."""
    # main...branch: from their merge base, found by the same command.
    changed = git_out(root, "-c", "core.quotePath=false", "diff", "--name-only", "--diff-filter=AM",
                      f"{main}...{branch}")
    found = []
    for name in filter(None, changed.splitlines()):
        branch_text = git("show", f"{branch}:{name}", cwd=root, check=False).stdout
        if "<<<<<<<" not in branch_text:
            continue
        main_text = git("show", f"{main}:{name}", cwd=root, check=False).stdout
        if len(MARKER_BLOCK.findall(branch_text)) > len(MARKER_BLOCK.findall(main_text)):
            found.append(name)
    return found


def added_files_named(worktree: Path, main: str, name: str) -> list[str]:
    """Files called `name`, at any path, that the worktree's branch adds (committed or not): an
    agent's follow-ups file, wherever the agent was rooted. A file of that name that main or the
    branch's merge base already has is the project's own, and is not among them."""
    glob = ":(glob)**/" + re.sub(r"([*?\[\\])", r"\\\1", name)
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", glob, cwd=worktree)
    found = list(dict.fromkeys(f for f in listed.stdout.split("\0") if f))
    if not found:
        return []
    base = git("merge-base", main, "HEAD", cwd=worktree, check=False).stdout.strip()  # none: main rewritten
    known = set()
    for rev in filter(None, (base, main)):
        listing = git("ls-tree", "-r", "-z", "--name-only", rev, "--", *found, cwd=worktree)
        known.update(listing.stdout.split("\0"))
    return [f for f in found if f not in known]


def clear_interrupted_git_state(worktree: Path) -> None:
    """What a killed agent leaves: a stale index.lock, a rebase or merge in progress."""
    gitdir = Path(git_out(worktree, "rev-parse", "--absolute-git-dir"))
    (gitdir / "index.lock").unlink(missing_ok=True)
    if (gitdir / "rebase-merge").exists() or (gitdir / "rebase-apply").exists():
        git("rebase", "--abort", cwd=worktree, check=False)
    if (gitdir / "MERGE_HEAD").exists():
        git("merge", "--abort", cwd=worktree, check=False)


# What git says when the hooks passed but the commit could not be written (signing, a full disk).
COMMIT_NOT_WRITTEN = "failed to write commit object"
NOTHING_TO_COMMIT = ("nothing to commit", "nothing added to commit", "no changes added to commit")


def stage_everything(worktree: Path, leave_out: list[str] | None = None) -> bool:
    """Stage all changes in the worktree (ignored files and the paths in `leave_out` stay out);
    False when there were none."""
    if not git_out(worktree, "status", "--porcelain"):
        return False
    git("add", "-A", cwd=worktree)
    if leave_out:
        git("reset", "-q", "--", *(f":(literal){path}" for path in leave_out), cwd=worktree)
    return True


def commit_staged(worktree: Path, message: str, timeout: float) -> bool:
    """Commit what is staged; False when nothing was. It carries an agent's work, so the user's
    hooks run on it, as on the agent's own commits: CommitRefused when they refuse it, or do not
    finish within `timeout` (what they refused stays staged)."""
    try:
        result = commit(worktree, message, check=False, timeout=timeout)
    except errors.GitError as failed:  # ended past the timeout (with signing off): a hook that never passed
        raise errors.CommitRefused(failed.argv, None, failed.stdout,
                                   f"the git hooks did not finish within {timeout:g} s") from None
    output = result.stderr + result.stdout
    if result.returncode == 0:
        return True
    if any(text in output for text in NOTHING_TO_COMMIT):
        return False  # only what `add -A` does not take (a submodule's own changes)
    if COMMIT_NOT_WRITTEN in output:  # the hooks passed; git could not write it (signing, a full disk)
        unwritten = errors.GitError(result.argv, result.returncode, result.stdout, result.stderr)
        raise signing_failure(worktree, unwritten, timeout) or unwritten
    raise errors.CommitRefused(result.argv, result.returncode, result.stdout, result.stderr)


def commit_on_head(worktree: Path, tree: str, message: str, *merged: str) -> str:
    """Commit `tree` on the worktree's HEAD (with `merged` as further parents) by plumbing, and
    move HEAD's branch to it only from the HEAD it was made on."""
    head = git_out(worktree, "rev-parse", "HEAD")
    made = commit_tree(worktree, tree, [head, *merged], message)
    git("update-ref", "HEAD", made, head, cwd=worktree)
    return made


def tree_without(worktree: Path, paths: list[str]) -> str:
    """HEAD's tree less `paths`, built in an index of its own: whatever else the worktree's index
    holds (changes an agent staged) stays out of it."""
    index = Path(git_out(worktree, "rev-parse", "--absolute-git-dir")) / "dispatch-index"
    env = {**child_environment(), "GIT_INDEX_FILE": str(index)}
    try:
        git("read-tree", "HEAD", cwd=worktree, env=env)
        git("update-index", "--force-remove", "--", *paths, cwd=worktree, env=env)  # literal paths, not patterns
        return git("write-tree", cwd=worktree, env=env).stdout.strip()
    finally:
        index.unlink(missing_ok=True)


def changed_files(root: Path, main: str, branch: str) -> list[str]:
    """The files the branch adds or changes since it left main (not the ones it deletes)."""
    listed = git("-c", "core.quotePath=false", "diff", "--name-only", "-z", "--no-renames", "--diff-filter=d",
                 f"{main}...{branch}", cwd=root, check=False)
    return [f for f in listed.stdout.split("\0") if f] if listed.returncode == 0 else []


def files_in(root: Path, rev: str, paths: list[str]) -> set[str]:
    """Which of `paths` are files in `rev` (literal names: a * or a : in one is no pattern)."""
    if not paths:
        return set()
    listed = git("--literal-pathspecs", "ls-tree", "-r", "-z", "--name-only", rev, "--", *paths, cwd=root, check=False)
    return set(listed.stdout.split("\0")) & set(paths) if listed.returncode == 0 else set()


# A git remote (config `remote`): fetches and compare-and-swap pushes. No other host's work is
# ever forced over: every push names the tip it expects on the remote, and git refuses it
# when the remote has another.
FETCH_TIMEOUT_SECS = 600.0  # a fetch runs no hook; only a network that stops answering could wait
MISSING_REMOTE_REF = "couldn't find remote ref"
REMOTE_UNREACHED_EXIT = 128  # git's fatal exit: no connection, no repository, no access
FAILED_TO_PUSH = "error: failed to push some refs"


@dataclasses.dataclass(frozen=True)
class FetchFailure:
    """A fetch that did not complete: git's reason, and whether it was because a ref asked for is
    not on the remote (a branch deleted there) rather than the remote not being reached."""

    reason: str
    missing: bool


def fetch(root: Path, remote: str, refspecs: list[str], *,
          timeout: float = FETCH_TIMEOUT_SECS) -> FetchFailure | None:
    """`git fetch REMOTE REFSPEC...`; None when every ref was fetched. Tags, submodules, pruning
    and FETCH_HEAD are left out: the user's own refs and their FETCH_HEAD stay as they were."""
    try:
        result = git("fetch", "-q", "--no-tags", "--no-prune", "--no-recurse-submodules", "--no-write-fetch-head",
                     remote, *refspecs, cwd=root, check=False, timeout=timeout)
    except errors.GitError:  # ended past the timeout
        return FetchFailure(f"git fetch from {remote} did not finish within {timeout:g} s", False)
    if result.returncode == 0:
        return None
    return FetchFailure(f"git fetch from {remote}: {first_line(result.stderr + result.stdout)}",
                        MISSING_REMOTE_REF in result.stderr)


class RefUpdate(typing.NamedTuple):
    """One ref a push moves: to `source` (a commit; "" deletes it), only from `expected` (the tip
    the remote must have now; "" means the ref must not exist)."""

    source: str
    destination: str  # a full ref name: refs/heads/B
    expected: str


@dataclasses.dataclass(frozen=True)
class RefPushed:
    """What the remote did with one ref of a push: accepted (or already there), or rejected
    (its tip is not the one expected, or the remote refused it), with git's summary."""

    destination: str
    accepted: bool
    summary: str


@dataclasses.dataclass(frozen=True)
class PushResult:
    """A push's outcome. refs: per ref, as git reported them. failure: why nothing was sent, when
    so (the user's pre-push hook refused it, the remote was not reached); unreached: the failure
    is one a later try may not meet (network, timeout), not a refusal."""

    refs: dict[str, RefPushed]
    failure: str | None = None
    unreached: bool = False
    refused: str | None = None  # the remote itself refused a ref (branch protection, its hook): its words


    @property
    def accepted(self) -> bool:
        return self.failure is None and bool(self.refs) and all(ref.accepted for ref in self.refs.values())

    def rejected(self) -> list[RefPushed]:
        return [ref for ref in self.refs.values() if not ref.accepted]


# How git's porcelain summary names a ref the remote itself refused (its pre-receive or update
# hook, a forge's branch protection), as opposed to a ref whose tip was not the one expected
# ("[rejected] (stale info)", "(fetch first)", "(non-fast-forward)"): trying again will not help.
REMOTE_REJECTED = "[remote rejected]"
REMOTE_SAID = "remote: "
# A remote rejection that is a race, not a refusal: the ref moved on the remote between the lease
# check and its update (an atomic push then fails as a whole, "atomic transaction failed").
REMOTE_RACES = ("atomic transaction failed", "cannot lock ref", "failed to update ref", "failed to lock")


def refusal(refs: dict[str, RefPushed], stderr: str) -> str | None:
    """The remote's words when it refused a ref of a push (git's summary and what its hook said),
    else None: a rejection for a tip not the one expected is not a refusal."""
    summaries = [ref.summary for ref in refs.values() if not ref.accepted and REMOTE_REJECTED in ref.summary
                 and not any(race in ref.summary for race in REMOTE_RACES)]
    if not summaries:
        return None
    said = [line[len(REMOTE_SAID):].strip() for line in stderr.splitlines() if line.startswith(REMOTE_SAID)]
    return first_line("; ".join([summaries[0], *[line for line in said if line]]))


def push_with_lease(root: Path, remote: str, updates: list[RefUpdate] | list[tuple[str, str, str]],
                    atomic: bool = False, *, timeout: float) -> PushResult:
    """`git push --porcelain --force-with-lease=REF:EXPECTED ... REMOTE SOURCE:REF ...`: each ref
    moves only from the tip expected, never by a plain force. atomic: all refs move or none. The
    user's pre-push hook runs (timeout: for it, and the network); a refusal, a rejection or a
    remote not reached is the result, never raised."""
    moves = [RefUpdate(*update) for update in updates]
    leases = [f"--force-with-lease={move.destination}:{move.expected}" for move in moves]
    refspecs = [f"{move.source}:{move.destination}" for move in moves]
    try:
        result = git("push", "--porcelain", *["--atomic"] * atomic, *leases, remote, *refspecs, cwd=root,
                     check=False, timeout=timeout)
    except errors.GitError:  # ended past the timeout: a hook that did not finish, or the network
        return PushResult({}, f"git push to {remote} did not finish within {timeout:g} s", unreached=True)
    refs = {}
    for line in result.stdout.splitlines():  # "<flag>\t<from>:<to>\t<summary>", flag "!" rejected
        fields = line.split("\t")
        if len(fields) == 3 and len(fields[0]) == 1:
            destination = fields[1].rsplit(":", 1)[-1]
            refs[destination] = RefPushed(destination, fields[0] != "!", fields[2])
    if refs or result.returncode == 0:
        return PushResult(refs, refused=refusal(refs, result.stderr))
    said = [line for line in (result.stderr + result.stdout).splitlines()
            if line.strip() and not line.startswith((FAILED_TO_PUSH, "To "))]
    reason = first_line("\n".join(said)) if said else "git push refused it"
    if result.returncode == REMOTE_UNREACHED_EXIT:
        return PushResult({}, f"{remote} could not be reached: {reason}", unreached=True)
    return PushResult({}, f"the push to {remote} was refused (a pre-push hook): {reason}")
