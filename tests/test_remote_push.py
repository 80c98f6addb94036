"""Remote mode's pushes: compare-and-swap on a real bare remote shared by two clones, the
user's pre-push hook kept, a refusal or an unreachable remote reported, never raised."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import repos
from support.dispatching import AGENT_COMMAND
from support.dispatching import DISPATCH
from support.tools import install_fake_bd

from crew import git


@pytest.fixture
def remote(tmp_path, repo) -> Path:
    """A bare remote on disk holding `repo`'s main, added to `repo` as "origin"."""
    bare = tmp_path / "remote.git"
    repos.git(tmp_path, "init", "-q", "--bare", str(bare))
    repos.git(repo, "remote", "add", "origin", str(bare))
    repos.git(repo, "push", "-q", "origin", "main")
    return bare


@pytest.fixture
def other_clone(tmp_path, remote) -> Path:
    clone = tmp_path / "other"
    repos.git(tmp_path, "clone", "-q", str(remote), str(clone))
    return clone


def remote_tip(remote: Path, ref: str) -> str | None:
    return git.rev_parse(remote, ref)


def test_a_first_push_creates_the_branch_and_a_second_from_another_clone_is_refused_not_forced(repo, remote,
                                                                                             other_clone):
    mine = repos.commit_file(repo, "a.txt", "mine\n")
    pushed = git.push_with_lease(repo, "origin", [(mine, "refs/heads/work/t1", "")], timeout=60)
    assert pushed.accepted and pushed.refs["refs/heads/work/t1"].accepted
    assert remote_tip(remote, "refs/heads/work/t1") == mine

    theirs = repos.commit_file(other_clone, "b.txt", "theirs\n")
    refused = git.push_with_lease(other_clone, "origin", [(theirs, "refs/heads/work/t1", "")], timeout=60)
    assert not refused.accepted and refused.failure is None
    assert [ref.destination for ref in refused.rejected()] == ["refs/heads/work/t1"]
    assert remote_tip(remote, "refs/heads/work/t1") == mine

    # Expecting the tip it last pushed, the owner moves it on; a stale expectation is refused.
    later = repos.commit_file(repo, "a.txt", "mine, later\n")
    assert git.push_with_lease(repo, "origin", [(later, "refs/heads/work/t1", mine)], timeout=60).accepted
    assert not git.push_with_lease(other_clone, "origin", [(theirs, "refs/heads/work/t1", mine)],
                                   timeout=60).accepted
    assert remote_tip(remote, "refs/heads/work/t1") == later


def test_an_atomic_push_moves_every_ref_or_none(repo, remote):
    main = git.rev_parse(repo, "main")
    branch = repos.commit_file(repo, "a.txt", "work\n")
    assert git.push_with_lease(repo, "origin", [(branch, "refs/heads/work/t1", "")], timeout=60).accepted
    stale = git.push_with_lease(repo, "origin", [(branch, "refs/heads/main", main), ("", "refs/heads/work/t1", main)],
                                atomic=True, timeout=60)
    assert not stale.accepted and remote_tip(remote, "refs/heads/main") == main
    assert remote_tip(remote, "refs/heads/work/t1") == branch
    moves = [(branch, "refs/heads/main", main), ("", "refs/heads/work/t1", branch)]
    landed = git.push_with_lease(repo, "origin", moves, atomic=True, timeout=60)
    assert landed.accepted and remote_tip(remote, "refs/heads/main") == branch
    assert remote_tip(remote, "refs/heads/work/t1") is None


def test_the_users_pre_push_hook_runs_and_its_refusal_is_the_result(repo, remote):
    hook = repo / ".git" / "hooks" / "pre-push"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text("#!/bin/sh\necho 'pushes wait for the release' >&2\nexit 1\n", encoding="utf-8")
    hook.chmod(0o755)
    tip = repos.commit_file(repo, "a.txt", "work\n")
    held = git.push_with_lease(repo, "origin", [(tip, "refs/heads/work/t1", "")], timeout=60)
    assert not held.accepted and not held.unreached
    assert held.failure is not None and "pushes wait for the release" in held.failure
    assert remote_tip(remote, "refs/heads/work/t1") is None


def test_a_remote_not_reached_is_a_failure_to_retry(repo, tmp_path):
    repos.git(repo, "remote", "add", "gone", str(tmp_path / "nowhere.git"))
    tip = git.rev_parse(repo, "main")
    assert tip is not None
    failed = git.push_with_lease(repo, "gone", [(tip, "refs/heads/work/t1", "")], timeout=60)
    assert not failed.accepted and failed.unreached and failed.failure
    assert (fetched := git.fetch(repo, "gone", ["refs/heads/main:refs/crew/x"])) is not None
    assert not fetched.missing


def test_fetch_brings_a_branch_and_says_when_it_is_missing(repo, remote, other_clone):
    theirs = repos.commit_file(other_clone, "b.txt", "theirs\n")
    repos.git(other_clone, "push", "-q", "origin", "HEAD:refs/heads/work/t2")
    assert git.fetch(repo, "origin", ["+refs/heads/work/t2:refs/heads/work/t2"]) is None
    assert git.rev_parse(repo, "work/t2") == theirs
    missing = git.fetch(repo, "origin", ["refs/heads/work/none:refs/heads/work/none"])
    assert missing is not None and missing.missing


def run_dispatcher(cfg: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DISPATCH), "--config", str(cfg)], check=False, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_a_remote_with_the_json_store_exits_2_with_one_line(repo, remote, make_config):
    cfg = make_config(task_backend="json", remote="origin", worker_command=AGENT_COMMAND)
    proc = run_dispatcher(cfg, repo)
    assert proc.returncode == 2, proc.stderr
    assert "'remote' needs the bd task store" in proc.stderr and proc.stderr.count("\n") == 1


def test_a_remote_git_does_not_list_stops_the_run_with_one_line(repo, remote, make_config, tmp_path, monkeypatch):
    install_fake_bd(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    subprocess.run(["bd", "init", "--prefix", "proj"], cwd=repo, check=True)
    cfg = make_config(task_backend="bd", remote="upstream", worker_command=AGENT_COMMAND)
    proc = run_dispatcher(cfg, repo)
    assert proc.returncode == 1, proc.stderr
    assert "no git remote 'upstream'" in proc.stderr and proc.stderr.count("\n") == 1
