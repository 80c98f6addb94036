"""Main on a git remote (config `remote`): the merge queue merges onto the remote's main as it was
fetched, and main moves by one atomic compare-and-swap push that also deletes the merged branch
(a branch merged is gone, so no host merges it twice). The user's local main follows only where
that loses nothing. What becomes of a fetched entry is a pure decision; the git steps run on the
merge queue's main-moving thread."""
from __future__ import annotations

import enum
from pathlib import Path

from crew import config as configuration
from crew import git
from crew.dispatch import merge_results
from crew.dispatch.merge_results import MainMove


# The remote's refs as last fetched, in a namespace of the toolkit's own: the user's branches and
# remote-tracking refs are never written; these are made by the fetch and deleted by the queue.
FETCHED = "refs/crew/remote/heads/"
FETCH_EVERY_SECS = 1.0  # while entries wait, the remote is fetched at most this often (and after a rejected push)


class EntryFate(enum.Enum):
    """What a merge-queue entry is, on the remote as fetched."""

    MERGE = "merge"  # on the remote at the tip marked ready: merge it
    MERGED = "merged"  # its tip is in the remote's main already: nothing is merged again
    NOT_YET = "not yet"  # not on the remote at the tip expected (its owner is pushing it): waits
    GONE = "gone"  # another host's, neither on the remote nor in its main: not this host's to settle
    UNMARKED = "unmarked"  # another host's with no tip marked ready: what the remote has was never judged


def main_ref(config: configuration.Settings) -> str:
    """Where the merge queue reads main: the local branch, or in remote mode the remote's main as fetched."""
    return config.main_branch if config.remote is None else fetched_ref(config.main_branch)


def fetched_ref(branch: str) -> str:
    return FETCHED + branch


def entry_fate(fetched_tip: str | None, expected_tip: str, in_main: bool, own: bool) -> EntryFate:
    """An entry's fate: `fetched_tip` its branch on the remote (None: not there), `expected_tip` the
    tip marked ready ("" not known), `in_main` whether that tip (or the one expected, when the
    branch is gone) is in the remote's main, `own` whether this host's worker made it (its push
    may still be under way)."""
    if in_main:
        return EntryFate.MERGED
    if fetched_tip is None:
        return EntryFate.NOT_YET if own else EntryFate.GONE
    if not expected_tip and not own:
        return EntryFate.UNMARKED
    if expected_tip and fetched_tip != expected_tip:
        return EntryFate.NOT_YET
    return EntryFate.MERGE


def fetch(root: Path, remote: str, main: str, branches: list[str]) -> git.FetchFailure | None:
    """Fetch the remote's main and the branches into our refs; the ref of a branch gone from the
    remote is removed. None when done; the failure when the remote could not be read."""
    specs = [f"+refs/heads/{main}:{fetched_ref(main)}"] + [f"+refs/heads/{b}:{fetched_ref(b)}" for b in branches]
    failure = git.fetch(root, remote, specs)
    if failure is None or not failure.missing:
        return failure
    # Some branch is gone from the remote: each is fetched alone, so the others are still read.
    if (failure := git.fetch(root, remote, specs[:1])) is not None:
        return failure
    for branch, spec in zip(branches, specs[1:], strict=True):
        if (gone := git.fetch(root, remote, [spec])) is not None:
            if not gone.missing:
                return gone
            forget(root, branch)
    return None


def forget(root: Path, branch: str) -> None:
    """Remove our fetched ref of a branch (never the user's own branch)."""
    git.git("update-ref", "-d", fetched_ref(branch), cwd=root, check=False)


def push_merge(root: Path, remote: str, main: str, branch: str, base: str, tip: str, commit: str,
               timeout: float) -> MainMove:
    """Move the remote's main from `base` to `commit` and delete the branch (at `tip`) in one atomic
    push, each ref only from the tip expected: DONE, REJECTED (main or the branch moved: fetch and
    recompute), REFUSED (the remote itself refuses it, in its words), or why it stays (the user's
    pre-push hook refused it, the remote was not reached)."""
    pushed = git.push_with_lease(root, remote, [(commit, f"refs/heads/{main}", base),
                                                ("", f"refs/heads/{branch}", tip)], atomic=True, timeout=timeout)
    if pushed.accepted:
        git.git("update-ref", fetched_ref(main), commit, base, cwd=root, check=False)
        forget(root, branch)
        return merge_results.DONE
    if pushed.failure is not None:
        return MainMove.stays(pushed.failure)
    if pushed.refused is not None:
        return MainMove(merge_results.Move.REFUSED, pushed.refused)
    return merge_results.REJECTED


def local_main_kept(config: configuration.Settings, local: str) -> str:
    """Why the user's local main was not fast-forwarded to the remote's: it has commits the remote lacks."""
    return (f"your {config.main_branch} has commits {config.remote}/{config.main_branch} lacks (at {local[:12]}): "
            "it is left as it is; merges land on the remote, and it is fast-forwarded once it holds nothing of its own")
