"""Leases on claims: the store renews its holder's lease and says when a claim is gone; the
dispatcher renews its running workers' claims and ends a worker whose claim was taken back."""
from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path

import pytest

from support.dispatching import (add_task, bd, claim_taken_while_stalled, dispatch, events, main_file, start_dispatcher,
                                 wait_until)
from support.repos import git
from support.tools import BACKENDS
from crew.dispatch import records
from crew.dispatch.leases import Leases

posix_only = pytest.mark.skipif(os.name == "nt", reason="stops the dispatcher with SIGSTOP")
BD_BACKENDS = [b for b in BACKENDS if b != "json"]


def leased_run(agent_setup, monkeypatch, lease_secs: float, cues: list[str], *options: str):
    """The dispatcher as a process on the bd stand-in, whose leases last `lease_secs`, renewing
    them every half second, on one task with the scripted agent's `cues`."""
    monkeypatch.setenv("FAKE_BD_LEASE_SECS", str(lease_secs))
    cfg, config, store = agent_setup(lease_heartbeat_secs=0.5)
    task = add_task(store, "Leased", *cues)
    return config, store, task, start_dispatcher(cfg, *options)


@pytest.mark.parametrize("backend", BD_BACKENDS, indirect=True)
def test_only_the_holder_renews_a_claim_and_a_claim_taken_back_is_found_gone(store, config):
    task = store.create("Leased")
    assert store.claim(task.id, "host-a")
    assert store.heartbeat(task.id, "host-a") is None
    assert store.reclaim() == []  # a live lease is not taken back
    assert store.heartbeat(task.id, "host-b") == "already claimed by host-a"
    bd(config, "unclaim", task.id, "--force", "--actor", "host-b")  # as `bd reclaim` does once the lease lapsed
    assert store.heartbeat(task.id, "host-a") == f"not claimable: {task.id} status open"
    assert store.claim(task.id, "host-b")
    assert store.heartbeat(task.id, "host-a") == "already claimed by host-b"
    assert store.heartbeat(task.id, "host-b") is None
    store.close(task.id, actor="host-b")
    assert store.heartbeat(task.id, "host-b") == f"not claimable: {task.id} status closed"
    assert store.heartbeat("proj-nosuch", "host-b") == "no task proj-nosuch any more"


@pytest.mark.parametrize("backend", ["json"], indirect=True)
def test_the_json_store_has_no_leases_to_renew_or_lose(store):
    task = store.create("Unleased")
    assert store.claim(task.id, "host-a")
    assert store.heartbeat(task.id, "host-a") is None
    assert store.reclaim() == []


@posix_only
@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_running_workers_claim_is_renewed_so_it_outlives_its_lease(agent_setup, repo, monkeypatch):
    # Another host reaps every lapsed lease as often as it can while the worker runs, longer than a lease.
    config, store, task, proc = leased_run(agent_setup, monkeypatch, 5, ["sleep 12", "append slow.txt slow"])
    wait_until(lambda: events(repo, "worker_started"), proc, "the worker's start")
    reclaimed = []
    while not events(repo, "worker_exited") and proc.poll() is None:
        reclaimed += bd(config, "reclaim", "--older-than", "0s", "--actor", "host-b")["reclaimed"] or []
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert reclaimed == []
    assert store.get(task.id).status == "closed" and events(repo, "merged")


@posix_only
@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_claim_taken_back_while_its_worker_runs_ends_the_worker_and_keeps_its_branch(agent_setup, repo, monkeypatch):
    config, store, task, proc = leased_run(agent_setup, monkeypatch, 2, ["append stalled.txt stalled", "hang"],
                                           "--json")
    out, err = claim_taken_while_stalled(config, repo, task.id, proc)
    assert proc.returncode == 1, out + err
    assert [e["reason"] for e in events(repo, "worker_stopped")] == [records.CLAIM_LOST]
    assert events(repo, "merged") == [] and events(repo, "worker_timed_out") == []
    reason = f"its claim was taken back while its worker ran; the worker was ended, its branch work/{task.id} kept " \
             "and not merged"
    assert json.loads(out)["waiting"] == [{"id": task.id, "reason": reason}]
    assert [e["reason"] for e in events(repo, "claim_lost")] == [reason]
    assert git(repo, "show", f"work/{task.id}:stalled.txt") == "stalled"  # the work is kept on its branch
    final = store.get(task.id)
    assert (final.status, final.assignee) == ("in_progress", "host-b")  # the other host's claim is untouched
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def lapse_lease(repo, task_id: str) -> None:
    """Move a lease's expiry an hour back, as `bd sql` can on the real bd (whose leases last 5 minutes)."""
    db = repo / ".beads" / "stand_in.json"
    data = json.loads(db.read_text(encoding="utf-8"))
    issue = next(issue for issue in data["issues"] if issue["id"] == task_id)
    issue["lease_expires_at"] = "2000-01-01T00:00:00.000000000Z"
    db.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_the_task_of_a_host_whose_lease_lapsed_is_taken_back_and_done(agent_setup, repo):
    cfg, config, store = agent_setup()
    task = add_task(store, "Orphaned", "append orphan.txt done")
    bd(config, "update", task.id, "--claim", "--actor", "host-gone")
    lapse_lease(repo, task.id)
    result = dispatch(cfg, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(e["task_id"], e["previous_owner"]) for e in events(repo, "reclaimed")] == [(task.id, "host-gone")]
    assert json.loads(result.stdout)["merged"] == [task.id]
    assert store.get(task.id).status == "closed" and main_file(repo, "orphan.txt") == "done\n"


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_with_reclaim_off_a_lapsed_claim_is_left_alone(agent_setup, repo):
    cfg, config, store = agent_setup(reclaim_interval_secs=0)
    task = add_task(store, "Orphaned", "append orphan.txt done")
    bd(config, "update", task.id, "--claim", "--actor", "host-gone")
    lapse_lease(repo, task.id)
    assert dispatch(cfg).returncode == 0
    assert events(repo, "reclaimed") == []
    assert (store.get(task.id).status, store.get(task.id).assignee) == ("in_progress", "host-gone")


class AnsweringStore:
    """The store thread's stand-in for Leases: each heartbeat answers at once, from `gone`."""

    def __init__(self, gone: dict[str, str]):
        self.gone, self.asked = gone, []

    def later(self, method: str, task_id: str, actor: str) -> concurrent.futures.Future:
        self.asked.append((method, task_id, actor))
        future = concurrent.futures.Future()
        future.set_result(self.gone.get(task_id))
        return future


def test_every_claim_held_is_renewed_and_only_a_running_workers_loss_ends_it():
    store, said = AnsweringStore({"w": "already claimed by host-b", "q": "already claimed by host-b"}), []
    leases = Leases(store, 60, said.append)
    worker = records.Worker(slot=1, task_id="w", title="", branch="work/w", worktree=Path(), base="", attempt=1,
                            started_at=0, deadline=None, actor="me")
    claims = {"w": "me", "q": "me", "r": "me"}  # a running worker, and two branches waiting to merge
    assert leases.step(claims, {"w": worker}, now=1000) == []  # handed over, not yet seen
    assert sorted(store.asked) == [("heartbeat", "q", "me"), ("heartbeat", "r", "me"), ("heartbeat", "w", "me")]
    assert leases.step(claims, {"w": worker}, now=1001) == [(worker, "already claimed by host-b")]
    assert said == ["q: its claim was taken back while its branch waited to merge (already claimed by host-b)"]
    assert len(store.asked) == 3 and leases.next_due() == 1060  # the next renewals wait their interval
    leases.step(claims, {"w": worker}, now=1060)
    assert len(store.asked) == 6
    leases.step(claims, {"w": worker}, now=1061)
    assert len(said) == 1  # a waiting branch's loss is said once


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_claim_taken_back_while_the_deck_is_being_made_never_starts_it(agent_setup, repo, monkeypatch, tmp_path):
    go, count = tmp_path / "go", tmp_path / "setups"
    # The first worktree's setup passes at once; the second (the deck's) waits for `go`.
    setup = 'n=$(cat "$1" 2>/dev/null || echo 0); echo $((n+1)) > "$1"; [ "$n" = 0 ] || ' \
            'while [ ! -f "$0" ]; do sleep 0.1; done'
    monkeypatch.setenv("FAKE_BD_LEASE_SECS", "300")
    cfg, config, store = agent_setup(lease_heartbeat_secs=0.5, max_workers=1,
                                     worktree_setup_command=["sh", "-c", setup, str(go), str(count)])
    tasks = {add_task(store, f"Task {n}", "sleep 3", f"append t{n}.txt {n}").id: n for n in (1, 2)}

    def deck() -> dict | None:
        path = repo / ".dispatch_state.json"
        workers = json.loads(path.read_text(encoding="utf-8"))["workers"] if path.exists() else []
        return next((w for w in workers if w["slot"] == records.ON_DECK), None)

    proc = start_dispatcher(cfg)
    try:
        wait_until(lambda: deck() is not None, proc, "a task on deck")
        on_deck = deck()["task_id"]
        wait_until(lambda: store.get(on_deck).status == "in_progress", proc, "the deck's claim")
        lapse_lease(repo, on_deck)
        bd(config, "reclaim", "--older-than", "0s", "--actor", "host-b")
        bd(config, "update", on_deck, "--claim", "--actor", "host-b")
        wait_until(lambda: (deck() or {}).get("ended") == records.CLAIM_LOST, proc, "the deck's lost claim recorded")
    finally:
        go.touch()
    out, err = proc.communicate(timeout=60)
    [running] = [task_id for task_id in tasks if task_id != on_deck]
    assert [e["task_id"] for e in events(repo, "worker_started")] == [running], out + err
    final = store.get(on_deck)
    assert (final.status, final.assignee) == ("in_progress", "host-b")  # the other host's claim is untouched
    assert main_file(repo, f"t{tasks[running]}.txt") == f"{tasks[running]}\n"
    assert not (repo / f"t{tasks[on_deck]}.txt").exists()
