"""The task on deck: claimed and its worktree made while every slot is busy, started the moment
a worker exits; taken off (and released) when it may not start; never lost or run twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.dispatching import DISPATCH
from support.dispatching import add_task
from support.dispatching import dispatch
from support.dispatching import events
from support.dispatching import merges_of
from support.dispatching import start_dispatcher
from support.dispatching import wait_until
from support.repos import ROOT
from support.repos import git

from crew.dispatch import records


posix_only = pytest.mark.skipif(os.name == "nt", reason="uses POSIX signals")


def state(repo: Path) -> dict:
    path = repo / ".dispatch_state.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"workers": []}


def on_deck(repo: Path, task_id: str) -> bool:
    """The task is on deck with its worktree made (its message is written last but one)."""
    return any(w["slot"] == records.ON_DECK and w["task_id"] == task_id and w["pid"] is None
               and (Path(w["worktree"]) / ".current_task.txt").exists() for w in state(repo)["workers"])


def two_tasks(json_agent_setup, first_cue: str):
    """One slot; a first task whose agent runs `first_cue`, and a second, ready behind it."""
    cfg, _, store = json_agent_setup(max_workers=1, worker_timeout_secs=600)
    first = add_task(store, "First", first_cue, "append first.txt one")
    second = add_task(store, "Second", "append second.txt two")
    return cfg, store, first, second


def held_first(json_agent_setup, repo: Path):
    """two_tasks whose first agent finishes only once the test lets it (`let_go`): what the test
    does while the second waits on deck is then done before the slot frees, however slow the
    machine. Returns (cfg, store, first, second, let_go)."""
    go = repo.parent / "first-may-finish"
    cfg, store, first, second = two_tasks(json_agent_setup, f"wait-for {go}")
    return cfg, store, first, second, lambda: go.write_text("go", encoding="utf-8")


def off_deck(repo: Path, task_id: str) -> bool:
    """The dispatcher has taken the task off deck (its record gone)."""
    return not any(w["task_id"] == task_id for w in state(repo)["workers"])


def test_the_next_task_waits_on_deck_and_starts_at_a_workers_exit_before_that_worker_is_judged(json_agent_setup, repo):
    cfg, _, first, second, let_go = held_first(json_agent_setup, repo)
    proc = start_dispatcher(cfg)
    try:
        wait_until(lambda: on_deck(repo, second.id), proc, "the second task on deck")
        let_go()
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    order = [(e["event"], e["task_id"], e) for e in events(repo)]
    names = [(name, task_id) for name, task_id, _ in order]
    claimed_second = names.index(("claimed", second.id))
    assert order[claimed_second][2].get("on_deck") is True
    exited_first = names.index(("worker_exited", first.id))
    assert claimed_second < exited_first  # claimed while the first ran
    started_second = names.index(("worker_started", second.id))
    assert exited_first < started_second < names.index(("commits_found", first.id))
    assert order[started_second][2]["slot"] == 1
    assert merges_of(repo, first.id) == merges_of(repo, second.id) == 1
    assert state(repo)["workers"] == []


def test_status_shows_the_task_on_deck(json_agent_setup, repo):
    cfg, _, first, second, let_go = held_first(json_agent_setup, repo)
    proc = start_dispatcher(cfg)
    try:
        wait_until(lambda: on_deck(repo, second.id), proc, "the second task on deck")
        shown = subprocess.run([sys.executable, str(DISPATCH), "--config", str(cfg), "--status", "--json"],
                               check=False, capture_output=True, text=True, timeout=120)
        listed = subprocess.run([sys.executable, str(DISPATCH), "--config", str(cfg), "--status"],
                                check=False, capture_output=True, text=True, timeout=120)
        let_go()
        assert f"on deck: {second.id}" in listed.stdout
        assert shown.returncode == 0, shown.stderr
        workers = {w["task_id"]: w for w in json.loads(shown.stdout)["workers"]}
        assert workers[second.id]["on_deck"] is True and workers[first.id]["on_deck"] is False
        assert proc.wait(timeout=240) == 0
    finally:
        proc.kill()
    assert merges_of(repo, second.id) == 1


@pytest.mark.parametrize("crash", ["after_claim:2", "after_worktree:2", "kill"])
def test_a_crash_with_a_task_on_deck_loses_nothing_and_runs_nothing_twice(json_agent_setup, repo, crash):
    """after_claim:2: the deck's claim made, no record of it yet; after_worktree:2: its worktree
    made; kill: killed while it waits on deck. The next run releases it or runs it, once."""
    cfg, store, first, second = two_tasks(json_agent_setup, "sleep 3")
    if crash == "kill":
        proc = start_dispatcher(cfg)
        wait_until(lambda: on_deck(repo, second.id), proc, "the second task on deck")
        proc.kill()
        proc.communicate()
    else:
        crashed = dispatch(cfg, env={"DISPATCH_FAILPOINT": crash})
        assert crashed.returncode == 77, crashed.stderr
        assert store.get(second.id).status == "in_progress"
    result = dispatch(cfg)
    assert result.returncode == 0, result.stderr
    assert merges_of(repo, first.id) == merges_of(repo, second.id) == 1
    assert store.get(first.id).status == store.get(second.id).status == "closed"
    assert state(repo)["workers"] == []


@posix_only
def test_ctrl_c_takes_the_task_on_deck_off_and_releases_it(json_agent_setup, repo):
    cfg, store, first, second, let_go = held_first(json_agent_setup, repo)
    proc = start_dispatcher(cfg)
    try:
        wait_until(lambda: on_deck(repo, second.id), proc, "the second task on deck")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: off_deck(repo, second.id), proc, "the second task taken off deck", timeout=180)
        let_go()
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert "taken off deck" in out + err
    assert merges_of(repo, first.id) == 1  # the running worker finished and merged
    assert store.get(second.id).status == "open" and not store.get(second.id).assignee
    assert not events(repo, "worker_started")[1:]
    assert [e["reason"] for e in events(repo, "released") if e["task_id"] == second.id] == ["taken off deck"]
    assert state(repo)["workers"] == []
    assert not any(p.name.startswith(second.id) for p in (repo.parent / "worktrees").glob("*")) if (
        repo.parent / "worktrees").exists() else True


def test_a_task_blocked_while_on_deck_is_taken_off_and_left_blocked(json_agent_setup, repo):
    cfg, store, first, second, let_go = held_first(json_agent_setup, repo)
    proc = start_dispatcher(cfg)
    try:
        wait_until(lambda: on_deck(repo, second.id), proc, "the second task on deck")
        subprocess.run([sys.executable, str(ROOT / "tasks.py"), "--config", str(cfg), "block", second.id,
                        "-r", "not now"], check=True, capture_output=True)
        wait_until(lambda: off_deck(repo, second.id), proc, "the second task taken off deck", timeout=180)
        let_go()
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    finally:
        proc.kill()
    assert "taken off deck (its task is blocked)" in out + err
    assert store.get(second.id).status == "blocked"
    assert [e["task_id"] for e in events(repo, "worker_started")] == [first.id]
    assert merges_of(repo, first.id) == 1 and merges_of(repo, second.id) == 0


def test_a_task_edited_while_on_deck_is_made_again_from_its_new_text(json_agent_setup, repo):
    cfg, store, first, second, let_go = held_first(json_agent_setup, repo)
    proc = start_dispatcher(cfg)
    try:
        wait_until(lambda: on_deck(repo, second.id), proc, "the second task on deck")
        store.relabel(second.id, add=["file:second.txt"])  # its scope: what the agent is told
        wait_until(lambda: len([e for e in events(repo, "claimed") if e["task_id"] == second.id]) == 2
                   and on_deck(repo, second.id), proc, "the second task on deck again, as edited", timeout=180)
        let_go()
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    finally:
        proc.kill()
    assert "taken off deck (its task was edited since its claim), and released" in out + err
    assert merges_of(repo, second.id) == 1
    assert [e["task_id"] for e in events(repo, "worker_started")] == [first.id, second.id]
    assert [e.get("on_deck") for e in events(repo, "claimed") if e["task_id"] == second.id] == [True, True]


def test_the_task_on_deck_starts_from_the_main_that_landed_while_it_waited(json_agent_setup, repo):
    cfg, _, store = json_agent_setup(max_workers=2)
    first = add_task(store, "First", "sleep 1", "append first.txt one")
    add_task(store, "Long", "sleep 10", "append long.txt two")
    add_task(store, "Middle", "sleep 4", "append middle.txt three")
    last = add_task(store, "Last", "append last.txt four")  # on deck while First merges
    assert dispatch(cfg).returncode == 0
    names = [(e["event"], e.get("task_id")) for e in events(repo)]
    merged = {e["task_id"]: e["commit"] for e in events(repo) if e["event"] == "merged"}
    assert names.index(("claimed", last.id)) < names.index(("merged", first.id))
    tip = git(repo, "rev-parse", merged[last.id] + "^2")
    own = git(repo, "rev-list", "--reverse", f"{merged[last.id]}^1..{tip}").splitlines()
    base = git(repo, "rev-parse", own[0] + "^")
    if names.index(("merged", first.id)) < names.index(("worker_started", last.id)):
        assert subprocess.run(["git", "merge-base", "--is-ancestor", merged[first.id], base], cwd=repo).returncode == 0


def test_nothing_goes_on_deck_while_the_workers_that_just_exited_would_hold_it(json_agent_setup, repo, monkeypatch):
    """Two workers exit at once: the first hands its slot to the task on deck, and the second,
    with the first, fills the bound of branches waiting to merge: the next task is not claimed
    for the deck until they are judged."""
    from crew.dispatch.loop import Dispatcher
    cfg, config, store = json_agent_setup(max_waiting_merges=2)
    task = add_task(store, "Next", "append next.txt next")
    dispatcher = Dispatcher(config, store, 1, out=lambda message: None)
    dispatcher.ledger.state.workers[1] = records.Worker(slot=1, task_id="busy", title="busy", branch="work/busy",
                                                        worktree=repo, base="", attempt=1, started_at=0.0,
                                                        deadline=None, pid=os.getpid())
    dispatcher.ready = [store.get(task.id)]
    monkeypatch.setattr(dispatcher.pool, "leaving", lambda: 2)
    dispatcher.fill_slots()
    assert dispatcher.claiming is None
    monkeypatch.setattr(dispatcher.pool, "leaving", lambda: 0)
    dispatcher.fill_slots()
    assert dispatcher.claiming is not None and dispatcher.claiming[1].id == task.id
    assert dispatcher.claiming[0].result(timeout=60)  # the claim lands before the test's folder goes
