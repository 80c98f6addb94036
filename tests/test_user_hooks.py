"""The user's git hooks: every commit that carries an agent's work goes through them; what they
refuse never reaches main. The dispatcher's own bookkeeping commits (conflict markers for a
resolver) are made by plumbing, which runs no hooks, so a check-merge-conflict hook cannot stop them."""
from __future__ import annotations

import os
import stat
import sys
import subprocess
from pathlib import Path

from support.dispatching import add_task, assert_clean_finish, dispatch, events, main_file, merges_of
from support.repos import ROOT, commit_file, git

# A secret scanner, as a pre-commit hook: it refuses any commit whose staged changes hold the marker.
SECRET = "SECRET-MARKER-7f3a"
SECRET_SCANNER = f"""#!/bin/sh
if git diff --cached -U0 | grep -q '{SECRET}'; then
    echo "secret-scan: a staged change holds a secret ({SECRET}); commit refused" >&2
    exit 1
fi
"""
# pre-commit's check-merge-conflict: it refuses any commit whose staged files hold conflict markers.
CHECK_MERGE_CONFLICT = """#!/bin/sh
for f in $(git diff --cached --name-only --diff-filter=AM); do
    if grep -q '^<<<<<<< ' "$f"; then
        echo "check-merge-conflict: $f holds conflict markers" >&2
        exit 1
    fi
done
"""


def install_hook(repo: Path, name: str, text: str) -> None:
    hook = repo / ".git" / "hooks" / name  # the common hooks folder: every worktree runs it
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(text, encoding="utf-8", newline="\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_crew_never_bypasses_the_users_hooks():
    sources = {path: path.read_text(encoding="utf-8") for path in (ROOT / "crew").rglob("*.py")}
    assert [str(path) for path, text in sources.items() if "--no-verify" in text or "hooksPath" in text] == []


def test_a_leftover_commit_the_hooks_refuse_never_reaches_main_and_its_task_is_told_why(json_agent_setup, repo):
    install_hook(repo, "pre-commit", SECRET_SCANNER)
    cfg, config, store = json_agent_setup(max_attempts=2)
    task = add_task(store, "Leaves a secret", "print-message", "append ok.txt fine",
                    f"uncommitted secret.txt token={SECRET}")
    result = dispatch(cfg)
    assert "Traceback" not in result.stderr, result.stderr
    # Each attempt's committed work went on, as after a timeout; what the hook refused did not.
    assert main_file(repo, "ok.txt") == "fine\nfine\n" and merges_of(repo, task.id) == 2
    assert main_file(repo, "secret.txt") is None
    every_commit = git(repo, "log", "--all", "-p", "--format=%H %s%n%b")
    assert SECRET not in every_commit
    refused = events(repo, "leftover_refused")
    assert [e["task_id"] for e in refused] == [task.id, task.id]
    assert "secret-scan: a staged change holds a secret" in refused[0]["output"]
    # Released after the first attempt with the hook's words in its notes; the second attempt's
    # message quoted them; after max_attempts the task is blocked.
    released = [e["reason"] for e in events(repo, "released") if e["task_id"] == task.id]
    assert len(released) == 1 and "refused by the repository's git hooks" in released[0]
    assert "secret-scan: a staged change holds a secret" in released[0]
    second_log = (repo / ".dispatch_logs" / f"{task.id}.2.log").read_text(encoding="utf-8")
    assert "What happened before" in second_log and "secret-scan: a staged change holds a secret" in second_log
    blocked = store.get(task.id)
    assert blocked.status == "blocked" and "secret-scan" in blocked.notes
    assert_clean_finish(repo, Path(config.worktree_root))


def test_a_check_merge_conflict_hook_does_not_stop_a_conflict_task_set_up(json_agent_setup, repo):
    commit_file(repo, "settings.ini", "[ui]\ncolor=blue\n")
    install_hook(repo, "pre-commit", CHECK_MERGE_CONFLICT)
    cfg, config, store = json_agent_setup()
    red = add_task(store, "Make it red", "sleep 0.5", "replace settings.ini color=blue color=red", priority=1)
    green = add_task(store, "Make it green", "sleep 0.5", "replace settings.ini color=blue color=green", priority=1)
    result = dispatch(cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    conflict = next(t for t in store.list(None) if t.title.startswith("Resolve merge conflict: "))
    assert conflict.status == "closed"
    for task in (red, green):
        assert store.get(task.id).status == "closed" and merges_of(repo, task.id) == 1
    # The markers were committed for the resolver (by the dispatcher, as a merge of main into the
    # branch), and the resolver's commit, which the hook checked, removed them.
    prepared = git(repo, "log", "--all", "--format=%H %P", "--grep", "dispatch: merge main into").splitlines()
    assert len(prepared) == 1 and len(prepared[0].split()) == 3
    assert "<<<<<<<" in git(repo, "show", prepared[0].split()[0] + ":settings.ini")
    assert "<<<<<<<" not in main_file(repo, "settings.ini")
    assert_clean_finish(repo, Path(config.worktree_root))


# A commit-msg hook that never ends on the dispatcher's commit of what an agent left (one that
# waits on a network service, say): the agent's own commits pass it.
HANGS_ON_THE_LEFTOVER_COMMIT = """#!/bin/sh
if grep -q 'dispatch: uncommitted' "$1"; then sleep 300; fi
"""


def test_a_hook_that_never_ends_on_a_leftover_commit_refuses_it_and_wedges_no_run(json_agent_setup, repo):
    install_hook(repo, "commit-msg", HANGS_ON_THE_LEFTOVER_COMMIT)
    cfg, config, store = json_agent_setup(git_hook_timeout_secs=2, max_attempts=1)
    task = add_task(store, "Leaves work uncommitted", "append ok.txt fine", "uncommitted left.txt unchecked")
    result = dispatch(cfg)
    assert "error:" not in result.stderr, result.stderr
    # Ended past git_hook_timeout_secs, it passed nothing: the committed work went on, the rest did not.
    assert main_file(repo, "ok.txt") == "fine\n" and main_file(repo, "left.txt") is None
    [refused] = events(repo, "leftover_refused")
    assert refused["task_id"] == task.id and "did not finish within 2 s" in refused["output"]
    assert "did not finish within 2 s" in store.get(task.id).notes
    assert_clean_finish(repo, Path(config.worktree_root))


def test_a_worktree_whose_post_checkout_hook_fails_is_still_the_dispatchers_to_remove(json_agent_setup, repo):
    # Git LFS's hook where git-lfs is not installed: git made the worktree, then says the hook failed.
    install_hook(repo, "post-checkout", "#!/bin/sh\necho 'git-lfs was not found on your path' >&2\nexit 2\n")
    cfg, config, store = json_agent_setup(max_attempts=2)
    task = add_task(store, "Needs a worktree", "append ok.txt fine")
    result = dispatch(cfg)
    assert "Traceback" not in result.stderr, result.stderr
    blocked = store.get(task.id)
    assert blocked.status == "blocked" and "git-lfs was not found" in blocked.notes, blocked.notes
    # Each attempt's worktree was known as the dispatcher's: replaced by the next, removed at the end.
    assert "left alone" not in result.stdout + dispatch(cfg).stdout
    assert_clean_finish(repo, Path(config.worktree_root))


# A post-checkout hook that fails only in the dispatcher's gate worktree (a tool it calls is
# missing there, say): git has checked the commit out by the time it runs.
FAILS_IN_THE_GATE_WORKTREE = """#!/bin/sh
case "$(pwd)" in
    *.gate*) echo 'lfs-lock: no lock server for this checkout' >&2; exit 2 ;;
esac
"""


def test_a_post_checkout_hook_failing_in_the_gate_worktree_is_told_once_and_stops_no_merge(json_agent_setup, repo):
    install_hook(repo, "post-checkout", FAILS_IN_THE_GATE_WORKTREE)
    cfg, config, store = json_agent_setup(merge_gate_command=[sys.executable, "-c", "pass"])
    first = add_task(store, "First", "append one.txt one", priority=1)
    second = add_task(store, "Second", "append two.txt two", priority=2)
    result = dispatch(cfg, "--max-workers", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    # Both gates ran: the first in the worktree `git worktree add` made, the second after a
    # `git checkout` in it, each followed by the hook's failure.
    assert main_file(repo, "one.txt") == "one\n" and main_file(repo, "two.txt") == "two\n"
    assert merges_of(repo, first.id) == 1 and merges_of(repo, second.id) == 1
    told = [line for line in result.stdout.splitlines() if "post-checkout" in line]
    assert len(told) == 1, result.stdout
    assert "exit 2" in told[0] and "lfs-lock: no lock server for this checkout" in told[0]
    assert str((repo / ".git" / "hooks" / "post-checkout").resolve()) in told[0]
    # A later run is not stopped either.
    third = add_task(store, "Third", "append three.txt three")
    again = dispatch(cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    assert main_file(repo, "three.txt") == "three\n" and store.get(third.id).status == "closed"
    assert_clean_finish(repo, Path(config.worktree_root))


def test_what_a_post_checkout_hook_makes_in_a_task_worktree_never_reaches_main(json_agent_setup, repo):
    install_hook(repo, "post-checkout", "#!/bin/sh\necho generated > hook-made.txt\nmkdir -p cache && echo x > cache/index\n")
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Leaves work uncommitted", "append ok.txt fine", "uncommitted left.txt mine")
    result = dispatch(cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.get(task.id).status == "closed"
    # The agent's own files reached main, committed by it or left for the dispatcher's commit.
    assert main_file(repo, "ok.txt") == "fine\n" and main_file(repo, "left.txt") == "mine\n"
    assert main_file(repo, "hook-made.txt") is None and main_file(repo, "cache/index") is None
    assert "hook-made.txt" not in git(repo, "log", "--all", "--name-only", "--format=")
    assert_clean_finish(repo, Path(config.worktree_root))


def test_a_post_checkout_hook_that_never_ends_in_the_gate_worktree_stops_no_merge(json_agent_setup, repo):
    install_hook(repo, "post-checkout", '#!/bin/sh\ncase "$(pwd)" in *.gate*) sleep 300 ;; esac\n')
    cfg, config, store = json_agent_setup(merge_gate_command=[sys.executable, "-c", "pass"], git_hook_timeout_secs=2)
    task = add_task(store, "First", "append one.txt one")
    result = dispatch(cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    assert main_file(repo, "one.txt") == "one\n" and store.get(task.id).status == "closed"
    [told] = [line for line in result.stdout.splitlines() if "post-checkout" in line]
    assert "timed out after 2 s" in told
    assert_clean_finish(repo, Path(config.worktree_root))
