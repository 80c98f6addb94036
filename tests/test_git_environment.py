"""Git and the agents run in the repository they are given, in git's own language, whatever the
caller's environment says (a git hook exports GIT_DIR and GIT_INDEX_FILE; a user may run German)."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from crew import git as gitcmd
from support.dispatching import add_task, dispatch, main_file, merges_of
from support.repos import commit_file, git


def test_git_calls_ignore_repository_variables_from_the_caller(repo, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    commit_file(other, "OTHER.md", "other\n")
    # What a pre-commit hook of the other repository would have in its environment.
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other / ".git" / "index"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    top = gitcmd.git("rev-parse", "--show-toplevel", cwd=repo).stdout.strip()
    assert Path(top) == repo
    assert gitcmd.git("ls-files", cwd=repo).stdout.split() == ["README.md"]


@pytest.mark.skipif(os.name == "nt", reason="the recording wrapper is a POSIX shell script")
def test_git_messages_are_read_in_english_whatever_the_locale(repo, tmp_path, monkeypatch):
    # A `git` in front of the real one that records the locale it was given, then runs git.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "locales.txt"
    wrapper = bin_dir / "git"
    real_git = shutil.which("git")
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$LC_ALL" >> "{record}"\nexec "{real_git}" "$@"\n',
                       encoding="utf-8")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    gitcmd.git("status", "--porcelain", cwd=repo)
    assert record.read_text(encoding="utf-8").split() == ["C"]


def test_the_dispatcher_works_on_its_repository_when_run_from_another_repositorys_hook(
        json_agent_setup, repo, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    other_head = commit_file(other, "OTHER.md", "other\n")
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Write a.txt", "append a.txt hello", files=["a.txt"])
    proc = dispatch(cfg, env={"GIT_DIR": str(other / ".git"), "GIT_INDEX_FILE": str(other / ".git" / "index"),
                              "GIT_WORK_TREE": str(other)})
    assert proc.returncode == 0, proc.stderr
    assert merges_of(repo, task.id) == 1 and main_file(repo, "a.txt") == "hello\n"
    assert git(other, "rev-parse", "main") == other_head  # the other repository was not touched
    assert git(other, "branch", "--list", "work/*") == ""
