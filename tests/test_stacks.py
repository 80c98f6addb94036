"""Speculative stacks built with merge-tree and commit-tree on a real repository."""
from __future__ import annotations

from pathlib import Path

from support.repos import commit_file, git

from crew.dispatch import stacks


def branch(repo: Path, name: str, *files: tuple[str, str]) -> str:
    """A branch off main that commits `files` (name, text); its tip."""
    git(repo, "switch", "-q", "-c", name, "main")
    for file_name, text in files:
        tip = commit_file(repo, file_name, text)
    git(repo, "switch", "-q", "main")
    return tip


def first_parents(repo: Path, commit: str) -> list[str]:
    return git(repo, "rev-list", "--first-parent", commit).split()


def test_each_speculative_commit_is_main_and_exactly_the_entries_ahead_of_it(repo):
    tips = [branch(repo, f"work/{n}", (f"f{n}.txt", f"{n}\n")) for n in range(3)]
    main = git(repo, "rev-parse", "main")
    status_before = git(repo, "status", "--porcelain")
    built = stacks.build_stack(repo, main, [(tip, f"Merge work/{n}") for n, tip in enumerate(tips)])
    assert [spec.conflict for spec in built] == [None, None, None]
    commits = [spec.commit for spec in built]
    for k, commit in enumerate(commits):
        # Its first-parent chain: itself, the entries ahead of it (newest first), then main's history.
        assert first_parents(repo, commit) == [*reversed(commits[:k + 1]), *first_parents(repo, main)]
        assert git(repo, "rev-parse", f"{commit}^2") == tips[k]
        assert git(repo, "log", "-1", "--format=%s", commit) == f"Merge work/{k}"
        assert git(repo, "ls-tree", "--name-only", commit).split() == sorted(
            ["README.md", *(f"f{n}.txt" for n in range(k + 1))])
    # Nothing was checked out: main, its folder and the branches are as they were.
    assert git(repo, "rev-parse", "main") == main
    assert git(repo, "status", "--porcelain") == status_before


def test_a_branch_that_conflicts_with_the_stack_but_not_main_is_reported_as_such_and_left_out(repo):
    first = branch(repo, "work/a", ("shared.txt", "from a\n"))
    clashing = branch(repo, "work/b", ("shared.txt", "from b\n"))  # clean on main, not on a
    behind = branch(repo, "work/c", ("c.txt", "c\n"))
    main = git(repo, "rev-parse", "main")
    built = stacks.build_stack(repo, main, [(first, "a"), (clashing, "b"), (behind, "c")])
    assert built[1].commit is None and not built[1].with_main
    assert built[1].conflict.files == ["shared.txt"]
    # c is stacked on a, without b.
    assert first_parents(repo, built[2].commit)[:2] == [built[2].commit, built[0].commit]


def test_a_branch_that_conflicts_with_main_itself_is_reported_as_a_conflict_with_main(repo):
    clashing = branch(repo, "work/b", ("README.md", "from b\n"))
    ahead = branch(repo, "work/a", ("a.txt", "a\n"))
    commit_file(repo, "README.md", "the user's change\n")
    main = git(repo, "rev-parse", "main")
    built = stacks.build_stack(repo, main, [(ahead, "a"), (clashing, "b")])
    assert built[1].commit is None and built[1].with_main
    assert built[1].conflict.files == ["README.md"]
    on_main = stacks.merge_onto(repo, main, main, clashing, "b")
    assert on_main.with_main and on_main.conflict.files == ["README.md"]
