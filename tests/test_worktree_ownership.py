"""The dispatcher deletes only worktrees it made and can prove it made."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crew import git as crew_git
from crew.dispatch import worktrees
from support.dispatching import add_task, dispatch, events, merges_of
from support.repos import ROOT, git


def test_stray_pruning_removes_only_the_dispatchers_own_worktrees(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(max_workers=1)
    root = Path(config.worktree_root)
    first = add_task(store, "First", "append first.txt one", files=["first.txt"])
    second = add_task(store, "Second", "append second.txt two", files=["second.txt"])
    # The user's own things in the worktree folder: a worktree with uncommitted edits (to look
    # at a kept branch), a plain folder, and a folder where the second task's worktree would go.
    git(repo, "worktree", "add", "-q", "-b", "look", str(root / "mine"))
    (root / "mine" / "README.md").write_text("my unsaved edit\n", encoding="utf-8")
    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("mine\n", encoding="utf-8")
    (root / second.id).mkdir()
    (root / second.id / "draft.txt").write_text("mine too\n", encoding="utf-8")
    # And a worktree of the user's elsewhere, on a drive that is unplugged for now.
    away = repo.parent / "usb" / "side"
    git(repo, "worktree", "add", "-q", "-b", "side", str(away))
    away.rename(repo.parent / "usb-unplugged")
    # A run killed once it made the first worktree, whose record is then lost: that worktree
    # is the dispatcher's own stray.
    killed = dispatch(cfg, env={"DISPATCH_FAILPOINT": "after_worktree"})
    assert killed.returncode == 77, killed.stderr
    state = json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))
    stray = Path(state["workers"][0]["worktree"])
    assert stray.is_dir()
    state["workers"] = []
    (repo / ".dispatch_state.json").write_text(json.dumps(state), encoding="utf-8")

    again = dispatch(cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    assert merges_of(repo, first.id) == 1 and merges_of(repo, second.id) == 1
    assert (root / "mine" / "README.md").read_text(encoding="utf-8") == "my unsaved edit\n"
    assert "look" in git(repo, "branch", "--list", "look")
    assert (root / "notes" / "keep.txt").read_text(encoding="utf-8") == "mine\n"
    assert (root / second.id / "draft.txt").read_text(encoding="utf-8") == "mine too\n"
    assert f"left alone: {root / 'mine'}" in again.stdout
    assert f"left alone: {root / 'notes'}" in again.stdout
    assert {Path(e["path"]).name for e in events(repo, "left_alone")} >= {"mine", "notes", second.id}
    # The dispatcher's own stray and its own finished worktrees are gone; git still knows the user's.
    assert not stray.exists()
    (repo.parent / "usb-unplugged").rename(away)
    listing = git(repo, "worktree", "list", "--porcelain")
    assert listing.count("worktree ") == 3 and str(root / "mine") in listing and str(away) in listing
    assert git(away, "status", "--porcelain") == ""  # git still knows it, index and all


@pytest.mark.parametrize("worktree_root, where", [
    (".", "the repository itself"), ("..", "a folder that contains the repository"),
    ("sub/worktrees", "inside the repository"), (".git", "inside the repository"),
])
def test_a_worktree_root_overlapping_the_repository_is_refused(make_config, repo, worktree_root, where):
    cfg = make_config(task_backend="json", worktree_root=worktree_root)
    for script in ("dispatch_workers.py", "tasks.py"):
        args = ["--config", str(cfg)] + (["list"] if script == "tasks.py" else [])
        proc = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and f"is {where}" in proc.stderr and "worktree_root" in proc.stderr
    assert (repo / "README.md").exists()


def test_a_worktree_made_while_another_is_half_made_is_marked_as_the_dispatchers(repo, monkeypatch):
    """git cannot list the worktrees while another is half made (its commondir not yet written,
    as another worker's start leaves it for an instant): the worktree just made is still marked
    as the dispatcher's, so that it may remove it."""
    other = repo.parent / "other"
    git(repo, "worktree", "add", "-q", "-b", "other", str(other))
    commondir = repo / ".git" / "worktrees" / "other" / "commondir"
    written = commondir.read_text(encoding="utf-8")
    real_git = crew_git.git
    half_made = [True]

    def listing_while_the_other_is_half_made(*args, **kwargs):
        if args[:2] != ("worktree", "list") or not half_made:
            return real_git(*args, **kwargs)
        half_made.clear()
        commondir.write_text("", encoding="utf-8")
        try:
            return real_git(*args, **kwargs)  # fails: git cannot read the other's commondir
        finally:
            commondir.write_text(written, encoding="utf-8")  # the other's add goes on

    monkeypatch.setattr(crew_git, "git", listing_while_the_other_is_half_made)
    mine = repo.parent / "mine"
    worktrees.add_dispatcher_worktree(repo, mine, "-b", "mine", str(mine), "main", timeout=60)
    assert not half_made  # the listing did meet the half-made worktree
    assert worktrees.dispatcher_worktrees(repo) == {mine.resolve()}
