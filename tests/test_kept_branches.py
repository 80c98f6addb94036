"""Remote mode: a branch whose task's claim was lost (another host took the task back) is pushed
under a name saying whose attempt it was, so its commits are not only on this host; that push is
remembered in the state until it is done, so a dispatcher killed before it pushes it when
started again (bd stand-in, real git, a bare remote on disk)."""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from crew import git
from crew.dispatch import branch_push
from support import repos
from support.dispatching import add_task, bd, dispatch, events, has_commit, start_dispatcher, wait_until

pytestmark = [pytest.mark.skipif(os.name == "nt", reason="kills process groups with SIGKILL"),
              pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)]


def state(repo: Path) -> dict:
    return json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))


def taken_back_by_host_b(config, task_id: str) -> None:
    """The task's lapsed lease taken back, and the task claimed by another host."""
    wait_until(lambda: bd(config, "reclaim", "--older-than", "0s", "--actor", "host-b")["count"], None,
               "the lapsed lease taken back")
    bd(config, "update", task_id, "--claim", "--actor", "host-b")


def killed_mid_attempt(cfg: Path, repo: Path, branch: str) -> None:
    """The dispatcher SIGKILLed once its agent committed on `branch`, and the agent's tree with it."""
    proc = start_dispatcher(cfg)
    wait_until(lambda: has_commit(repo, branch), proc, "the agent's commit")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    for worker in state(repo)["workers"]:
        if worker.get("pid"):
            os.killpg(worker["pid"], signal.SIGKILL)


def test_a_host_killed_mid_attempt_pushes_the_branch_under_its_name_once_restarted_after_its_claim_was_taken(
        agent_setup, repo, remote, monkeypatch):
    monkeypatch.setenv("FAKE_BD_LEASE_SECS", "2")
    cfg, config, store = agent_setup(remote="origin", lease_heartbeat_secs=0.5)
    task = add_task(store, "Dies", "append dies.txt died", "hang")
    branch = f"work/{task.id}"
    killed_mid_attempt(cfg, repo, branch)
    taken_back_by_host_b(config, task.id)
    run = dispatch(cfg, "--json")
    assert run.returncode in (0, 1), run.stdout + run.stderr
    kept = branch_push.kept_branch(config.actor, branch)
    assert git.rev_parse(remote, f"refs/heads/{kept}") == git.rev_parse(repo, branch)
    assert git.rev_parse(remote, f"refs/heads/{branch}") is None  # the task's own name is left to host-b
    assert [(e["branch"], e["ready"], e["kept_as"]) for e in events(repo, "branch_pushed")] == [(branch, False, kept)]
    assert state(repo)["keeping"] == {} and state(repo)["workers"] == []
    assert (store.get(task.id).status, store.get(task.id).assignee) == ("in_progress", "host-b")


def test_a_lost_claims_branch_not_pushed_before_a_crash_is_pushed_by_the_next_run(agent_setup, repo, remote,
                                                                                  monkeypatch):
    monkeypatch.setenv("FAKE_BD_LEASE_SECS", "2")
    cfg, config, store = agent_setup(remote="origin", lease_heartbeat_secs=0.5)
    task = add_task(store, "Stalled", "append stalled.txt stalled", "hang")
    branch = f"work/{task.id}"
    proc = start_dispatcher(cfg, "--json")  # what it says goes to stderr
    wait_until(lambda: has_commit(repo, branch), proc, "the agent's commit")
    os.kill(proc.pid, signal.SIGSTOP)  # a suspended laptop: its lease lapses, host-b takes the task
    try:
        taken_back_by_host_b(config, task.id)
        kept = branch_push.kept_branch(config.actor, branch)
        # The remote cannot be reached when this host comes back: its push waits, then the host is killed.
        repos.git(repo, "remote", "set-url", "origin", str(remote) + ".unreached")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    watchdog = threading.Timer(120, proc.kill)  # bounds the read below
    watchdog.start()
    for said in proc.stderr:  # until this host says its push waits for the remote
        if "not pushed yet" in said:
            break
    watchdog.cancel()
    assert "the branch is kept here" in said
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert git.rev_parse(remote, f"refs/heads/{kept}") is None
    repos.git(repo, "remote", "set-url", "origin", str(remote))
    run = dispatch(cfg, "--json")
    assert run.returncode in (0, 1), run.stdout + run.stderr
    assert git.rev_parse(remote, f"refs/heads/{kept}") == git.rev_parse(repo, branch)
    assert state(repo)["keeping"] == {}
