"""The user's git hooks never stall the dispatcher: a slow post-merge hook (in the fast-forward of
the user's checkout) or post-checkout hook (in `git worktree add`) runs off the loop, is ended past
git_hook_timeout_secs, and is ended with the run at a stop. Order and outcomes only, no timings."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crew import processes
from support.dispatching import add_task, dispatch, events, merges_of, start_dispatcher, wait_until

pytestmark = pytest.mark.skipif(os.name == "nt", reason="hooks written as sh scripts; POSIX signals")


def install_hook(repo: Path, name: str, body: str) -> None:
    hook = repo / ".git" / "hooks" / name
    hook.parent.mkdir(exist_ok=True)
    hook.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
    hook.chmod(0o755)


def records_its_group(group_file: Path) -> str:
    return f'"{sys.executable}" -c "import os; print(os.getpgrp())" > "{group_file}"'


def waits_for(release: Path, group_file: Path) -> str:
    """A hook that records its process group, then waits (at most 2 minutes) until `release` exists."""
    return (f'{records_its_group(group_file)}; i=0; while [ ! -e "{release}" ] && [ $i -lt 1200 ]; do sleep 0.1; '
            'i=$((i+1)); done')


def hangs(group_file: Path) -> str:
    """A hook that records its process group and never ends by itself (a grandchild holds on too)."""
    return f'{records_its_group(group_file)}; sleep 300 & wait'


def hook_group(group_file: Path, proc: subprocess.Popen | None) -> int:
    """The process group of the hook that wrote `group_file` (git's, which the dispatcher started)."""
    wait_until(lambda: group_file.exists() and group_file.read_text(encoding="utf-8").strip(), proc, "the hook")
    return int(group_file.read_text(encoding="utf-8"))


def timed_out_while_the_hook_waits(cfg: Path, repo: Path, release: Path, group_file: Path,
                                   hanging: str) -> list[tuple[str, str]]:
    """Run the dispatcher until the hook waits and, while it does, the `hanging` task's worker
    times out; then release the hook. The run's events, as (event, task id)."""
    proc = start_dispatcher(cfg)
    try:
        hook_group(group_file, proc)
        wait_until(lambda: [e for e in events(repo, "worker_timed_out") if e["task_id"] == hanging], proc,
                   "the hanging worker's timeout while the hook ran")
    finally:
        release.write_text("the hook may end now", encoding="utf-8")
    proc.communicate(timeout=120)
    return [(e["event"], e["task_id"]) for e in events(repo)]


def stop(proc: subprocess.Popen, signum: int) -> None:
    proc.send_signal(signum)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the dispatcher did not stop while a hook of the user's ran")


def test_a_workers_deadline_fires_while_a_post_merge_hook_runs(json_agent_setup, repo, tmp_path):
    release, pid_file = tmp_path / "release", tmp_path / "hook.pid"
    install_hook(repo, "post-merge", waits_for(release, pid_file))
    cfg, config, store = json_agent_setup(max_workers=1, worker_timeout_secs=3, max_attempts=1)
    first = add_task(store, "Merges", "append a.txt a", priority=0)
    second = add_task(store, "Hangs", "hang", priority=1)
    names = timed_out_while_the_hook_waits(cfg, repo, release, pid_file, second.id)  # in main's fast-forward
    merged = names.index(("merged", first.id))
    assert names.index(("worker_started", second.id)) < names.index(("worker_timed_out", second.id)) < merged
    assert merges_of(repo, first.id) == 1


def test_a_workers_deadline_fires_while_a_pre_commit_hook_runs_in_the_leftover_commit(json_agent_setup, repo,
                                                                                     tmp_path):
    release, group_file = tmp_path / "release", tmp_path / "hook.group"
    # Slow only for the dispatcher's commit of what the agent left uncommitted (left.txt).
    install_hook(repo, "pre-commit", 'git diff --cached --name-only | grep -q left.txt || exit 0; '
                                     + waits_for(release, group_file))
    # Both run at once: the first's slot is held until its leftover commit is over.
    cfg, config, store = json_agent_setup(max_workers=2, worker_timeout_secs=8, max_attempts=1)
    first = add_task(store, "Leaves work", "uncommitted left.txt a", priority=0)
    second = add_task(store, "Hangs", "hang", priority=1)
    names = timed_out_while_the_hook_waits(cfg, repo, release, group_file, second.id)  # in the leftover commit
    committed = names.index(("leftover_committed", first.id))
    assert names.index(("worker_started", second.id)) < names.index(("worker_timed_out", second.id)) < committed
    assert merges_of(repo, first.id) == 1


@pytest.mark.parametrize("hook", ["post-merge", "post-checkout"])
def test_sigterm_ends_the_run_and_the_hook_it_waits_for(json_agent_setup, repo, tmp_path, hook):
    # post-merge: in the fast-forward of the user's checkout; post-checkout: in `git worktree add`.
    pid_file = tmp_path / "hook.pid"
    install_hook(repo, hook, hangs(pid_file))
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Lands", "append a.txt a")
    proc = start_dispatcher(cfg)
    group = hook_group(pid_file, proc)
    stop(proc, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not processes.group_alive(group)
    install_hook(repo, hook, "exit 0")
    result = dispatch(cfg)  # the next run finishes the work
    assert result.returncode == 0, result.stdout + result.stderr
    assert merges_of(repo, task.id) == 1 and store.get(task.id).status == "closed"


def test_a_post_merge_hook_past_its_timeout_is_ended_and_the_merge_stands(json_agent_setup, repo, tmp_path):
    pid_file = tmp_path / "hook.pid"
    install_hook(repo, "post-merge", hangs(pid_file))
    cfg, config, store = json_agent_setup(git_hook_timeout_secs=2)
    task = add_task(store, "Lands", "append a.txt a")
    result = dispatch(cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    assert merges_of(repo, task.id) == 1 and store.get(task.id).status == "closed"
    assert not processes.group_alive(hook_group(pid_file, None))
