"""--status lists every host's claims as the task store has them: who holds each task in progress,
its lease (and whether it lapsed), the last heartbeat, and the branch that waits to merge; read
within a bound, and a store that cannot be reached is one line beside this host's own records."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading

import pytest

from support.dispatching import dispatch
from support.tools import BACKENDS
from test_store_down import bd_down_while
from test_store_down import posix_only
from crew.dispatch import status as run_status
from crew.tasks import model as task_model

BD_BACKENDS = [b for b in BACKENDS if b != "json"]
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def task(**fields) -> task_model.Task:
    return task_model.Task(**{"id": "m-1", "title": "Shared", "status": "in_progress", "assignee": "host-b",
                              **fields})


def test_a_claim_says_its_holder_lease_and_waiting_branch():
    live = run_status.claim(task(lease_expires_at="2027-01-15T08:04:00Z", heartbeat_at="2027-01-15T07:59:00Z"),
                            "host-a", NOW)
    assert (live.holder, live.this_host, live.lease_lapsed, live.merge_ready) == ("host-b", False, False, False)
    assert live.heartbeat_at == "2027-01-15T07:59:00Z"
    lapsed = run_status.claim(task(lease_expires_at="2027-01-15T07:59:59.123456789Z"), "host-b", NOW)
    assert lapsed.this_host and lapsed.lease_lapsed
    waiting = {"crew_branch": "work/m-1", "crew_tip": "c" * 40}
    ready = run_status.claim(task(labels=["crew-merge-ready"], metadata=waiting), "host-a", NOW)
    assert (ready.merge_ready, ready.branch, ready.tip, ready.lease_lapsed) == (True, "work/m-1", "c" * 40, False)
    unleased = run_status.claim(task(metadata={"crew_branch": "work/m-1"}), "host-a", NOW)  # not labelled ready
    assert (unleased.lease_expires_at, unleased.merge_ready, unleased.branch) == (None, False, None)


def test_a_store_read_that_does_not_answer_in_time_is_said_in_one_line():
    release = threading.Event()
    assert run_status.bounded(lambda: release.wait(60), 0.05) == "it did not answer within 0.05 s"
    release.set()
    assert run_status.bounded(lambda: [1], 60) == [1]


def bd(config, *args: str, env: dict | None = None) -> None:
    subprocess.run([shutil.which(config.bd_command), *args, "--json"], cwd=config.root, check=True,
                   capture_output=True, text=True, env=env)


@pytest.mark.parametrize("backend", BD_BACKENDS, indirect=True)
def test_status_lists_another_hosts_claim_lease_and_waiting_branch(make_config, backend, store, config):
    cfg = make_config(**backend, actor="host-a")
    mine, theirs, waiting = (store.create(title) for title in ("Mine", "Theirs", "Waits to merge"))
    assert store.claim(mine.id, "host-a")
    assert store.claim(theirs.id, "host-b") and store.claim(waiting.id, "host-b")
    bd(config, "update", waiting.id, "--set-metadata", f"crew_branch=work/{waiting.id}", "--set-metadata",
       "crew_tip=" + "d" * 40, "--add-label", "crew-merge-ready", "--actor", "host-b")
    shown = json.loads(dispatch(cfg, "--status", "--json").stdout)
    claims = {c["task_id"]: c for c in shown["claims"]}
    assert shown["store_unreachable"] is None and set(claims) == {mine.id, theirs.id, waiting.id}
    assert (claims[mine.id]["holder"], claims[mine.id]["this_host"]) == ("host-a", True)
    assert (claims[theirs.id]["holder"], claims[theirs.id]["this_host"]) == ("host-b", False)
    for c in claims.values():
        assert c["lease_expires_at"] and c["heartbeat_at"] and not c["lease_lapsed"]
    assert (claims[waiting.id]["merge_ready"], claims[waiting.id]["branch"]) == (True, f"work/{waiting.id}")
    text = dispatch(cfg, "--status").stdout
    assert f"  in progress: {theirs.id} held by host-b, lease until {claims[theirs.id]['lease_expires_at']}" in text
    assert f"  in progress: {mine.id} held by host-a (this host), lease until" in text
    assert f"its branch work/{waiting.id} ({'d' * 10}) waits to merge: Waits to merge" in text


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_status_shows_a_lapsed_lease_as_lapsed(make_config, backend, store, config, monkeypatch):
    cfg = make_config(**backend, actor="host-a")
    gone = store.create("Its host stopped")
    # Lapsed 2 s before it is taken: bd prints times rounded to the second, so a lease that lapses
    # as it is taken may read as half a second ahead.
    monkeypatch.setenv("FAKE_BD_LEASE_SECS", "-2")
    assert store.claim(gone.id, "host-b")
    monkeypatch.delenv("FAKE_BD_LEASE_SECS")
    [shown] = json.loads(dispatch(cfg, "--status", "--json").stdout)["claims"]
    assert (shown["holder"], shown["lease_lapsed"]) == ("host-b", True)
    assert f"  in progress: {gone.id} held by host-b, its lease lapsed at {shown['lease_expires_at']}" \
        in dispatch(cfg, "--status").stdout


@posix_only
@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_store_that_cannot_be_reached_is_one_line_beside_the_local_records(make_config, backend, tmp_path):
    flag = tmp_path / "server-down"
    flag.write_text("down", encoding="utf-8")
    cfg = make_config(**{**backend, "bd_command": str(bd_down_while(tmp_path, flag))})
    shown = dispatch(cfg, "--status")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "dispatcher: not running",
        "  task store: not read (failed to open database: Dolt server unreachable at 127.0.0.1:3307: dial tcp "
        "127.0.0.1:3307: connect: connection refused); the above is this host's records only"]
    as_json = json.loads(dispatch(cfg, "--status", "--json").stdout)
    assert as_json["store_unreachable"].startswith("failed to open database: Dolt server unreachable")
    assert (as_json["claims"], as_json["workers"]) == ([], [])


@pytest.fixture(params=["fake-bd", pytest.param("real-bd", marks=pytest.mark.real_tool)])
def any_hosts(request):
    """Clones sharing one store: the stand-in's shared database, or the real bd on one Dolt server."""
    return request.getfixturevalue("fake_hosts" if request.param == "fake-bd" else "real_hosts")


def test_status_on_one_host_lists_the_claims_other_hosts_took_in_their_clones(any_hosts):
    layout = any_hosts()
    a, b, c = layout.hosts
    filed = [json.loads(a.bd("create", f"task {n}", "--json", bd=layout.bd).stdout)["id"] for n in range(3)]
    b.bd("update", filed[0], "--claim", "--json", bd=layout.bd)
    c.bd("update", filed[1], "--claim", "--json", bd=layout.bd)
    c.bd("update", filed[1], "--set-metadata", f"crew_branch=work/{filed[1]}", "--set-metadata", "crew_tip=" + "e" * 40,
         "--add-label", "crew-merge-ready", "--if-assignee", c.actor, "--json", bd=layout.bd)
    shown = json.loads(dispatch(a.config, "--status", "--json", env=layout.env).stdout)
    claims = {claim["task_id"]: claim for claim in shown["claims"]}
    assert set(claims) == set(filed[:2]) and shown["counts"] == {"open": 1, "in_progress": 2}
    assert (claims[filed[0]]["holder"], claims[filed[1]]["holder"]) == (b.actor, c.actor)
    assert not any(claim["this_host"] or claim["lease_lapsed"] for claim in claims.values())
    assert all(claim["lease_expires_at"] and claim["heartbeat_at"] for claim in claims.values())
    assert (claims[filed[1]]["merge_ready"], claims[filed[1]]["tip"]) == (True, "e" * 40)
    text = dispatch(a.config, "--status", env=layout.env).stdout
    assert f"  in progress: {filed[0]} held by {b.actor}, lease until " in text
    assert f"its branch work/{filed[1]} ({'e' * 10}) waits to merge: task 1" in text
