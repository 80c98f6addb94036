"""The merge queue against a user who works in the repository meanwhile: main is moved
only when it is really free, and only main is moved."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from crew import failpoints
from crew import git as gitcmd
from support.dispatching import add_task, dispatch, main_file, merges_of, run_in_process
from support.repos import commit_file, git


def test_a_checkout_switched_away_from_main_during_the_merge_moves_main_not_the_other_branch(
        json_agent_setup, repo, monkeypatch):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Add a file", "append feature.txt new")
    real_checkout_of_branch = gitcmd.checkout_of_branch
    switched = []

    def user_switches_branch_right_after_the_lookup(root, branch):
        found = real_checkout_of_branch(root, branch)
        if found is not None and not switched:
            git(repo, "checkout", "-q", "-b", "feature")  # main's commit, another branch
            switched.append(git(repo, "rev-parse", "HEAD"))
        return found

    monkeypatch.setattr(gitcmd, "checkout_of_branch", user_switches_branch_right_after_the_lookup)
    summary = run_in_process(config, store)
    assert switched and summary["merged"] == [task.id]
    assert merges_of(repo, task.id) == 1 and main_file(repo, "feature.txt") == "new\n"
    assert store.get(task.id).status == "closed"


def test_a_stale_main_ref_lock_is_reported_and_the_merge_backs_off(json_agent_setup, repo):
    git(repo, "checkout", "-q", "-b", "elsewhere")  # main not checked out: it moves by update-ref
    cfg, config, store = json_agent_setup()
    before = git(repo, "rev-parse", "main")
    lock = repo / ".git" / "refs" / "heads" / "main.lock"
    lock.write_text("", encoding="utf-8")  # left by a git that was killed
    task = add_task(store, "Add a file", "append feature.txt new")
    proc = dispatch(cfg, "--json", timeout=60)
    assert proc.returncode == 1, proc.stderr
    [waiting] = json.loads(proc.stdout)["waiting"]
    assert waiting["id"] == task.id and str(lock) in waiting["reason"] and "exists" in waiting["reason"]
    assert proc.stderr.count("merge waits") == 1
    assert git(repo, "rev-parse", "main") == before and store.get(task.id).status == "in_progress"
    lock.unlink()
    assert dispatch(cfg).returncode == 0
    assert merges_of(repo, task.id) == 1 and store.get(task.id).status == "closed"


def start_rebase(repo):
    """The user rebases main and stops half-way (HEAD detached)."""
    commit_file(repo, "mine.txt", "mine\n", "the user's commit")
    subprocess.run(["git", "rebase", "-q", "-x", "false", "HEAD~1"], cwd=repo, capture_output=True)
    assert (repo / ".git" / "rebase-merge").is_dir()


def start_merge(repo):
    """The user merges a branch into main and stops at a conflict."""
    git(repo, "checkout", "-q", "-b", "theirs")
    commit_file(repo, "README.md", "# theirs\n")
    git(repo, "checkout", "-q", "main")
    commit_file(repo, "README.md", "# ours\n")
    subprocess.run(["git", "merge", "-q", "theirs"], cwd=repo, capture_output=True)


def start_cherry_pick(repo):
    git(repo, "checkout", "-q", "-b", "theirs")
    theirs = commit_file(repo, "README.md", "# theirs\n")
    git(repo, "checkout", "-q", "main")
    commit_file(repo, "README.md", "# ours\n")
    subprocess.run(["git", "cherry-pick", theirs], cwd=repo, capture_output=True)


def start_bisect(repo):
    for n in range(3):
        commit_file(repo, f"b{n}.txt", f"{n}\n")
    git(repo, "bisect", "start")
    git(repo, "bisect", "bad", "HEAD")
    git(repo, "bisect", "good", "HEAD~3")  # HEAD is now detached at a commit in between


OPERATIONS = {"rebase": (start_rebase, "rebase", "--abort"), "merge": (start_merge, "merge", "--abort"),
              "cherry-pick": (start_cherry_pick, "cherry-pick", "--abort"),
              "bisect": (start_bisect, "bisect", "reset")}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_merges_into_main_wait_while_the_user_has_an_operation_in_progress_on_main(
        json_agent_setup, repo, operation):
    start, command, finish = OPERATIONS[operation]
    start(repo)
    cfg, config, store = json_agent_setup()
    before = git(repo, "rev-parse", "main")
    task = add_task(store, "Add a file", "append feature.txt new")
    proc = dispatch(cfg, "--json")
    assert proc.returncode == 1, proc.stderr
    [waiting] = json.loads(proc.stdout)["waiting"]
    assert waiting["id"] == task.id
    assert waiting["reason"].startswith(f"a {command} of main is in progress in {repo}"), waiting["reason"]
    assert "would be overwritten" not in waiting["reason"]
    assert git(repo, "rev-parse", "main") == before
    git(repo, command, finish)
    assert dispatch(cfg).returncode == 0
    assert merges_of(repo, task.id) == 1


def test_a_stale_index_lock_in_the_users_checkout_is_reported_as_what_it_is(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Add a file", "append feature.txt new")
    lock = repo / ".git" / "index.lock"
    lock.write_text("", encoding="utf-8")
    proc = dispatch(cfg, "--json")
    lock.unlink()
    assert proc.returncode == 1, proc.stderr
    [waiting] = json.loads(proc.stdout)["waiting"]
    assert waiting["id"] == task.id and str(lock) in waiting["reason"]
    assert "would be overwritten" not in waiting["reason"]
    assert dispatch(cfg).returncode == 0 and merges_of(repo, task.id) == 1


def test_the_toolkits_temp_files_are_excluded_from_git_status(json_agent_setup, repo):
    json_agent_setup()
    temp_files = [".task_queue.json.4242.tmp", "..dispatch_state.json.4242.tmp",
                  "..dispatch_pending_merge_retries.json.4242.tmp"]
    for name in temp_files:
        (repo / name).write_text("{}", encoding="utf-8")
    (repo / ".users_own.tmp").write_text("mine", encoding="utf-8")
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == "?? .users_own.tmp"


def test_an_ignored_file_of_the_users_that_the_merge_adds_holds_the_merge_and_survives(json_agent_setup, repo):
    commit_file(repo, ".gitignore", "settings.local.json\n")
    (repo / "settings.local.json").write_text('{"token": "mine"}\n', encoding="utf-8")
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Share the settings", "replace .gitignore settings.local.json other.log",
                    "append settings.local.json {}")
    before = git(repo, "rev-parse", "main")
    proc = dispatch(cfg, "--json")
    assert proc.returncode == 1, proc.stderr
    [waiting] = json.loads(proc.stdout)["waiting"]
    assert waiting["id"] == task.id and waiting["reason"].startswith(f"settings.local.json in {repo} would be "
                                                                     "overwritten"), waiting["reason"]
    assert (repo / "settings.local.json").read_text(encoding="utf-8") == '{"token": "mine"}\n'
    assert git(repo, "rev-parse", "main") == before and store.get(task.id).status == "in_progress"
    (repo / "settings.local.json").rename(repo / "settings.mine.json")
    assert dispatch(cfg).returncode == 0
    assert merges_of(repo, task.id) == 1 and main_file(repo, "settings.local.json") == "{}\n"
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""


def test_an_untracked_file_where_the_merge_makes_a_folder_holds_the_merge(json_agent_setup, repo):
    (repo / "docs").write_text("my notes\n", encoding="utf-8")  # untracked, where the branch adds docs/
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Add docs", "append docs/guide.md guide")
    proc = dispatch(cfg, "--json")
    assert proc.returncode == 1, proc.stderr
    [waiting] = json.loads(proc.stdout)["waiting"]
    assert waiting["reason"].startswith(f"docs in {repo} would be overwritten"), waiting["reason"]
    assert (repo / "docs").read_text(encoding="utf-8") == "my notes\n"
    (repo / "docs").unlink()
    assert dispatch(cfg).returncode == 0 and merges_of(repo, task.id) == 1


def test_a_reset_of_main_just_before_the_merge_lands_is_not_undone(json_agent_setup, repo, monkeypatch):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Add a file", "append feature.txt new")
    first = git(repo, "rev-parse", "main")
    dropped = []

    def user_resets_it_right_before_the_merge():
        if not dropped:
            dropped.append(git(repo, "rev-parse", "HEAD"))
            git(repo, "reset", "-q", "--hard", "HEAD~1")

    monkeypatch.setitem(failpoints._armed, "after_worker_exit", lambda: commit_file(repo, "mine.txt", "a secret\n"))
    monkeypatch.setitem(failpoints._armed, "during_merge", user_resets_it_right_before_the_merge)
    summary = run_in_process(config, store)
    assert dropped and summary["merged"] == [task.id]
    assert git(repo, "merge-base", "--is-ancestor", first, "main") == ""
    assert subprocess.run(["git", "merge-base", "--is-ancestor", dropped[0], "main"], cwd=repo).returncode == 1
    assert not (repo / "mine.txt").exists() and main_file(repo, "feature.txt") == "new\n"
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""


def test_an_ignored_file_made_right_before_main_moves_still_holds_the_merge(json_agent_setup, repo, monkeypatch):
    # No look of the dispatcher's precedes git's: git's own refusal (--no-overwrite-ignore) is the check.
    commit_file(repo, ".gitignore", "settings.local.json\n")
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Share the settings", "replace .gitignore settings.local.json other.log",
                    "append settings.local.json {}")

    def the_user_makes_it_right_before_the_move():
        (repo / "settings.local.json").write_text('{"token": "mine"}\n', encoding="utf-8")

    monkeypatch.setitem(failpoints._armed, "during_merge", the_user_makes_it_right_before_the_move)
    summary = run_in_process(config, store)
    assert summary["merged"] == [] and store.get(task.id).status == "in_progress"
    [waiting] = summary["waiting"]
    assert waiting["reason"].startswith(f"settings.local.json in {repo} would be overwritten"), waiting["reason"]
    assert (repo / "settings.local.json").read_text(encoding="utf-8") == '{"token": "mine"}\n'
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""


def test_an_ignored_folder_where_the_merge_makes_a_file_holds_the_merge_and_survives(json_agent_setup, repo):
    commit_file(repo, ".gitignore", "build/\n")
    (repo / "build").mkdir()
    (repo / "build" / "cache.bin").write_text("mine\n", encoding="utf-8")
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Add a build script", "append build echo build")
    proc = dispatch(cfg, "--json")
    assert proc.returncode == 1, proc.stderr
    [waiting] = json.loads(proc.stdout)["waiting"]
    assert waiting["id"] == task.id and waiting["reason"].startswith(f"build in {repo} would be overwritten"), \
        waiting["reason"]
    assert (repo / "build" / "cache.bin").read_text(encoding="utf-8") == "mine\n"
    shutil.rmtree(repo / "build")
    assert dispatch(cfg).returncode == 0 and merges_of(repo, task.id) == 1
    assert main_file(repo, "build") == "echo build\n"


def test_the_users_merge_autostash_setting_does_not_stash_their_edit_into_a_conflict(json_agent_setup, repo):
    git(repo, "config", "merge.autoStash", "true")
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Extend the readme", "append README.md the branch's line")
    before = git(repo, "rev-parse", "main")
    (repo / "README.md").write_text("# the user's own edit\n", encoding="utf-8")
    proc = dispatch(cfg, "--json")
    assert proc.returncode == 1, proc.stderr
    [waiting] = json.loads(proc.stdout)["waiting"]
    assert waiting["id"] == task.id and waiting["reason"].startswith(
        f"your uncommitted changes in {repo} to README.md would be overwritten"), waiting["reason"]
    assert git(repo, "rev-parse", "main") == before
    assert (repo / "README.md").read_text(encoding="utf-8") == "# the user's own edit\n"
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == "M README.md"
    assert git(repo, "stash", "list") == ""


def test_the_users_merge_autostash_setting_keeps_their_staged_changes_staged(json_agent_setup, repo):
    git(repo, "config", "merge.autoStash", "true")
    commit_file(repo, "notes.txt", "notes\n")
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Add a guide", "append guide.md guide")
    (repo / "notes.txt").write_text("notes, staged\n", encoding="utf-8")
    git(repo, "add", "notes.txt")
    assert dispatch(cfg).returncode == 0
    assert merges_of(repo, task.id) == 1 and main_file(repo, "guide.md") == "guide\n"
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == "M  notes.txt"
    assert git(repo, "stash", "list") == ""
