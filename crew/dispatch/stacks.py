"""Speculative commits for the parallel gates: a queue entry's branch merged onto main
and the entries ahead of it, each a merge commit onto the one before, made with `git merge-tree`
and `commit-tree` (no checkout: the user's folder and the gate worktrees are never touched).
When the first entry lands, main moves to its speculative commit: the very merge commit today's
queue would make, and its first-parent chain is main's history."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from crew import git


@dataclasses.dataclass(frozen=True)
class Speculative:
    """A branch merged onto a speculative stack: its commit, or the conflict. with_main: the
    branch conflicts with main itself (a conflict task, as today); otherwise only with the
    entries ahead of it, and it waits for them to land."""

    commit: str | None
    conflict: git.MergeResult | None = None
    with_main: bool = False


def merge_onto(root: Path, parent: str, main: str, tip: str, message: str) -> Speculative:
    """The merge commit of `tip` onto `parent` (main, or the speculative commit of the entry
    ahead); `main`: main's commit now, against which a conflict is judged."""
    merged = git.merge_tree(root, parent, tip)
    if merged.tree is not None:
        return Speculative(git.commit_tree(root, merged.tree, [parent, tip], message))
    if parent == main:
        return Speculative(None, merged, with_main=True)
    on_main = git.merge_tree(root, main, tip)
    if on_main.tree is None:
        return Speculative(None, on_main, with_main=True)
    return Speculative(None, merged)


def build_stack(root: Path, main: str, branches: Sequence[tuple[str, str]]) -> list[Speculative]:
    """For each (branch tip, merge message) in queue order, its speculative commit on main and
    the branches ahead of it that merged (one that did not is left out of the stacks behind it)."""
    built, parent = [], main
    for tip, message in branches:
        built.append(merge_onto(root, parent, main, tip, message))
        parent = built[-1].commit or parent
    return built
