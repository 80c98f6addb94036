"""The behaviour every task store must have: run against the JSON store, the bd stand-in and real bd."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from crew import config as configuration
from crew import errors
from crew import files
from crew import processes
from crew import tasks
from crew.tasks import bd_store
from crew.tasks import json_store as json_backend
from crew.tasks import model
from support.dispatching import add_task
from support.dispatching import dispatch
from support.dispatching import events
from support.dispatching import wait_until
from support.repos import ROOT
from support.tools import install_fake_bd

HOSTILE_TITLES = [
    'Fix "quoted" and \'single\' titles',
    "Run $(rm -rf ~) never",
    "Backticks `id` stay text",
    "Semicolon; echo pwned & del /q *",
    "100% of ^carets | pipes <redirects>",
]


def test_create_get_and_list(store):
    task = store.create("Add a CSV export", "Export the table", priority=1, labels=["file:report.py"])
    assert task.status == "open" and task.priority == 1
    got = store.get(task.id)
    assert (got.title, got.description, got.files) == ("Add a CSV export", "Export the table", ["report.py"])
    assert [t.id for t in store.list(["open"])] == [task.id]
    assert store.list(["closed"]) == []


@pytest.mark.parametrize("title", HOSTILE_TITLES)
def test_hostile_titles_are_stored_verbatim(store, title):
    task = store.create(title, "line one\nline two $(whoami)")
    got = store.get(task.id)
    assert got.title == title
    assert got.description == "line one\nline two $(whoami)"


def test_ready_orders_by_priority_then_age_and_skips_epics(store):
    low = store.create("low", priority=3)
    high = store.create("high", priority=0)
    store.create("an epic", issue_type="epic")
    mid = store.create("mid", priority=2)
    assert [t.id for t in store.ready()] == [high.id, mid.id, low.id]


def test_blocking_dependency_holds_a_task_until_its_blocker_closes(store):
    first = store.create("first")
    second = store.create("second", deps=[("blocked-by", first.id)])
    informational = store.create("found later", deps=[("discovered-from", first.id)])
    assert {t.id for t in store.ready()} == {first.id, informational.id}
    store.close(first.id, "done")
    assert {t.id for t in store.ready()} == {second.id, informational.id}


def test_add_dependency_blocks(store):
    a, b = store.create("a"), store.create("b")
    store.add_dependency(b.id, a.id, "blocks")
    assert [t.id for t in store.ready()] == [a.id]
    assert b.id in {t.id for t in store.list(["open"])}
    assert store.get(b.id).deps_of("blocks") == [a.id]


def test_claim_is_exclusive_and_release_returns_the_task(store, config):
    task = store.create("claim me")
    assert store.claim(task.id, config.actor) is True
    assert store.claim(task.id, "worker-b") is False
    claimed = store.get(task.id)
    assert (claimed.status, claimed.assignee) == ("in_progress", config.actor)
    assert task.id not in {t.id for t in store.ready()}
    store.release(task.id, "attempt 1 failed: no commits")
    released = store.get(task.id)
    assert (released.status, released.assignee) == ("open", "")
    assert "attempt 1 failed" in released.notes
    assert store.claim(task.id, "worker-b") is True


def test_block_close_reopen_and_notes(store):
    task = store.create("block me")
    store.set_status(task.id, "blocked", "needs a decision")
    blocked = store.get(task.id)
    assert blocked.status == "blocked" and "needs a decision" in blocked.notes
    assert store.ready() == []
    store.close(task.id, "won't do")
    closed = store.get(task.id)
    assert closed.status == "closed" and closed.close_reason == "won't do"
    store.reopen(task.id)
    assert store.get(task.id).status == "open"
    store.add_note(task.id, "second thought")
    assert "second thought" in store.get(task.id).notes


def test_unknown_id_is_a_clear_error(store):
    for call in (lambda: store.get("proj-zzz"), lambda: store.release("proj-zzz"),
                 lambda: store.close("proj-zzz", "x"), lambda: store.add_note("proj-zzz", "x")):
        with pytest.raises(errors.UserError, match=r"no (task with id|issues? found matching).*proj-zzz|"
                                                   r"no issues found matching the provided IDs"):
            call()


def test_closing_a_task_with_an_open_blocker_is_refused_unless_forced(store):
    blocker = store.create("blocker")
    blocked = store.create("blocked", deps=[("blocked-by", blocker.id)])
    with pytest.raises(errors.UserError, match=f"blocked by .*{blocker.id}"):
        store.close(blocked.id, "too early")
    assert store.get(blocked.id).status == "open"
    store.close(blocked.id, "anyway", force=True)
    assert store.get(blocked.id).status == "closed"


def test_release_of_a_task_held_by_another_actor(store, config):
    """Every store refuses to take a claim from its holder, as real bd does; the holder may release it."""
    task = store.create("held")
    assert store.claim(task.id, "someone-else")
    with pytest.raises(errors.UserError, match="held by"):
        store.release(task.id)
    assert store.get(task.id).assignee == "someone-else"
    assert store.get(task.id).status == "in_progress"
    store.release(task.id, actor="someone-else")
    assert store.get(task.id).status == "open" and not store.get(task.id).assignee


# ---- Several hosts: guarded writes, labels, the merge slot ---------------------------------

READY_LABEL = "crew-merge-ready"


def test_a_guarded_update_writes_only_while_the_owner_holds_the_claim(store):
    task = store.create("pushed")
    assert store.claim(task.id, "host-a")
    assert store.update_claimed(task.id, "host-b", metadata={"crew_branch": "work/x"}, add_labels=[READY_LABEL]) is None
    untouched = store.get(task.id)
    assert (untouched.metadata, untouched.labels, untouched.assignee) == ({}, [], "host-a")
    written = store.update_claimed(task.id, "host-a", metadata={"crew_branch": "work/x", "crew_tip": "abc\0d"},
                                   add_labels=[READY_LABEL])
    assert written is not None and written.metadata == {"crew_branch": "work/x", "crew_tip": "abcd"}
    again = store.update_claimed(task.id, "host-a", metadata={"crew_attempts": "2"}, unset=["crew_tip"],
                                 remove_labels=[READY_LABEL])
    assert again is not None
    got = store.get(task.id)
    assert (got.metadata, got.labels, got.status) == ({"crew_branch": "work/x", "crew_attempts": "2"}, [], "in_progress")
    with pytest.raises(errors.UserError, match="metadata key 'crew-tip' must be lowercase letters and underscores"):
        store.update_claimed(task.id, "host-a", metadata={"crew-tip": "x"})
    store.release(task.id, actor="host-a")
    assert store.update_claimed(task.id, "host-a", metadata={"crew_tip": "def"}) is None
    assert store.get(task.id).metadata == {"crew_branch": "work/x", "crew_attempts": "2"}  # kept by the release


def test_a_guarded_label_edit_alone_writes_only_while_the_owner_holds_the_claim(store):
    """bd's guard covers field updates, not a label edit alone (which it refuses with a guard)."""
    task = store.create("waits to merge")
    assert store.claim(task.id, "host-a")
    assert store.update_claimed(task.id, "host-a", add_labels=[READY_LABEL]) is not None
    assert store.update_claimed(task.id, "host-b", remove_labels=[READY_LABEL]) is None
    assert store.get(task.id).labels == [READY_LABEL]
    taken_off = store.update_claimed(task.id, "host-a", remove_labels=[READY_LABEL])
    assert taken_off is not None and taken_off.labels == []
    got = store.get(task.id)
    assert (got.labels, got.assignee, got.status) == ([], "host-a", "in_progress")
    assert store.heartbeat(task.id, "host-a") is None  # the claim's lease is kept


def test_another_actor_closes_a_claimed_task_only_by_naming_its_owner(store):
    task = store.create("merged by another host")
    assert store.claim(task.id, "host-a")
    assert store.close_claimed(task.id, "host-b", "merged by host-c") is False
    assert (store.get(task.id).status, store.get(task.id).assignee) == ("in_progress", "host-a")
    if store.name == "bd":
        with pytest.raises(errors.BdError, match='assignee is "host-a"'):
            store.close(task.id, "merged", actor="host-c")
    assert store.update_claimed(task.id, "host-a", metadata={"crew_branch": "work/x", "crew_attempts": "1"})
    assert store.close_claimed(task.id, "host-a", "merged by host-c as abc123", unset=["crew_branch"]) is True
    closed = store.get(task.id)
    assert closed.status == "closed" and "merged by host-c as abc123" in closed.notes
    assert closed.metadata == {"crew_attempts": "1"}  # the keys unset in the same write
    assert store.heartbeat(task.id, "host-a") in (None, f"not claimable: {task.id} status closed")


def test_a_claim_is_given_up_only_while_it_is_in_progress_under_its_owner(store):
    released, blocked, closed = (store.create(title) for title in ("released", "blocked", "closed elsewhere"))
    for task in (released, blocked, closed):
        assert store.claim(task.id, "host-a")
    assert store.give_up_claimed(released.id, "host-b", "open", "not host-b's") is False
    assert store.give_up_claimed(released.id, "host-a", "open", "for another attempt") is True
    assert store.give_up_claimed(blocked.id, "host-a", "blocked", "after 3 attempts") is True
    assert store.close_claimed(closed.id, "host-a", "merged by host-b")  # closed, the assignee kept
    assert store.give_up_claimed(closed.id, "host-a", "open", "a restarted host-a") is False
    got = {task.id: (task.status, task.assignee) for task in map(store.get, (released.id, blocked.id, closed.id))}
    assert got == {released.id: ("open", ""), blocked.id: ("blocked", "host-a"), closed.id: ("closed", "host-a")}
    assert "for another attempt" in store.get(released.id).notes
    assert "a restarted host-a" not in store.get(closed.id).notes


def test_a_guarded_close_of_a_task_with_an_open_blocker_is_refused(store):
    blocker = store.create("blocker")
    task = store.create("claimed, then a blocker came")
    assert store.claim(task.id, "host-a")
    store.add_dependency(task.id, blocker.id)
    with pytest.raises(errors.UserError, match=f"blocked by .*{blocker.id}"):
        store.close_claimed(task.id, "host-a", "merged")
    assert store.get(task.id).status == "in_progress"


def test_with_label_lists_the_labelled_tasks_in_progress(store):
    waiting, open_one, unlabelled, closed = (store.create(title) for title in ("waiting", "open", "plain", "closed"))
    for task in (waiting, unlabelled, closed):
        assert store.claim(task.id, "host-a")
    for task in (waiting, open_one, closed):
        store.relabel(task.id, add=[READY_LABEL])
    assert store.close_claimed(closed.id, "host-a", "merged")
    assert [t.id for t in store.with_label(READY_LABEL)] == [waiting.id]
    assert {t.id for t in store.with_label(READY_LABEL, ("in_progress", "open"))} == {waiting.id, open_one.id}
    assert store.with_label("no-such-label") == []


def test_the_merge_slot_has_one_holder_and_is_never_work(store, config):
    work = store.create("work")
    assert store.merge_slot_holder() is None
    assert [t.id for t in store.list()] == [work.id]
    if store.name == "bd":  # asking made no slot bead
        assert [t["id"] for t in bd_json(config, "list")[1]] == [work.id]
    assert store.take_merge_slot("host-a") is True
    assert store.take_merge_slot("host-b") is False
    assert store.take_merge_slot("host-a") is True  # already its own
    assert store.merge_slot_holder() == "host-a"
    assert store.heartbeat(store.merge_slot_id(), "host-a") is None
    store.give_back_merge_slot("host-b")  # not its to give back
    assert store.merge_slot_holder() == "host-a"
    assert [t.id for t in store.ready()] == [work.id] and [t.id for t in store.list()] == [work.id]
    store.give_back_merge_slot("host-a")
    assert store.merge_slot_holder() is None
    assert [t.id for t in store.ready()] == [work.id] and [t.id for t in store.list()] == [work.id]
    assert store.take_merge_slot("host-b") is True
    assert store.merge_slot_holder() == "host-b"
    assert store.reclaim(0) == []  # its lease is live


def bd_json(config, *args: str) -> tuple[int, dict]:
    proc = subprocess.run([str(shutil.which(config.bd_command)), *args, "--json"], cwd=config.root,
                          capture_output=True, text=True, check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_a_guard_mismatch_is_exit_13_with_bds_words(store, config):
    """What the store reads, as the real bd 1.3.0 prints it (and so the stand-in)."""
    if store.name != "bd":
        pytest.skip("bd only")
    task = store.create("held")
    assert store.claim(task.id, "host-a")
    proc = subprocess.run([str(shutil.which(config.bd_command)), "update", task.id, "--set-metadata", "k=v",
                           "--if-assignee", "host-b", "--actor", "host-c", "--json"], cwd=config.root,
                          capture_output=True, text=True, check=False)
    first, answer = proc.stderr.splitlines()[:2]
    assert (proc.returncode, proc.stdout) == (13, "")
    assert first == f'Error updating {task.id}: assignee mismatch: {task.id} is held by "host-a", expected "host-b"'
    assert json.loads(answer)["failed"] == [{"id": task.id, "guard_mismatch": True, "error": (
        f'updating issue: assignee mismatch: {task.id} is held by "host-a", expected "host-b"')}]
    assert store.get(task.id).metadata == {}


def test_bds_own_merge_slot_commands_see_the_claimed_slot_as_taken(store, config):
    if store.name != "bd":
        pytest.skip("bd only")
    assert store.take_merge_slot("host-a")
    assert bd_json(config, "merge-slot", "check") == (0, {"available": False, "holder": None,
                                                           "id": store.merge_slot_id(), "waiters": None})
    assert bd_json(config, "merge-slot", "acquire", "--actor", "host-b") == (
        1, {"acquired": False, "holder": "", "id": store.merge_slot_id()})
    store.give_back_merge_slot("host-a")
    assert bd_json(config, "merge-slot", "acquire", "--actor", "host-b")[0] == 0  # a person took it by hand
    assert store.merge_slot_holder() == "host-b"
    assert store.take_merge_slot("host-a") is False


def test_a_merge_slot_whose_holder_stopped_is_taken_back_by_reclaim(store, backend, monkeypatch):
    if backend != {"task_backend": "bd"}:
        pytest.skip("the stand-in only: the real bd's lease lasts 5 minutes")
    monkeypatch.setenv("FAKE_BD_LEASE_SECS", "0.2")
    assert store.take_merge_slot("host-a")
    assert store.take_merge_slot("host-b") is False
    taken: list[tuple[str, str]] = []
    wait_until(lambda: taken.extend(store.reclaim(0)) or taken, None, "the lapsed slot taken back", timeout=30)
    assert taken == [(store.merge_slot_id(), "host-a")]
    assert store.merge_slot_holder() is None
    assert store.heartbeat(store.merge_slot_id(), "host-a") == f"not claimable: {store.merge_slot_id()} status open"
    assert store.take_merge_slot("host-b") is True


def test_reclaim_waits_the_grace_it_is_given(store, backend, monkeypatch):
    if backend != {"task_backend": "bd"}:
        pytest.skip("the stand-in only: the real bd's lease lasts 5 minutes")
    monkeypatch.setenv("FAKE_BD_LEASE_SECS", "0.2")
    task = store.create("leased")
    assert store.claim(task.id, "host-a")
    assert store.update_claimed(task.id, "host-a", metadata={"crew_branch": f"work/{task.id}"})
    wait_until(lambda: store.get(task.id).lease_expires_at is not None and store.reclaim(3600) == []
               and store.heartbeat(task.id, "host-b") is not None, None, "a look at the lease")
    assert store.get(task.id).status == "in_progress"  # lapsed, but not an hour ago
    wait_until(lambda: store.reclaim(0), None, "the lapsed claim taken back", timeout=30)
    back = store.get(task.id)
    assert (back.status, back.assignee, back.lease_expires_at) == ("open", "", None)
    assert back.metadata == {"crew_branch": f"work/{task.id}"}  # what it did is kept for the next host


def test_clones_sharing_one_stand_in_database_see_one_set_of_tasks(tmp_path, monkeypatch):
    install_fake_bd(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("FAKE_BD_DB", str(tmp_path / "server" / "beads.json"))
    (tmp_path / "server").mkdir()
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    for host in hosts:
        host.mkdir()
        subprocess.run(["bd", "init", "--prefix", "proj"], cwd=host, check=True)
    a, b = (bd_store.BdTaskStore("bd", host, host.name) for host in hosts)
    task = a.create("shared")
    assert [t.id for t in b.ready()] == [task.id]
    assert b.claim(task.id, "host-b") and not a.claim(task.id, "host-a")
    assert a.take_merge_slot("host-a") and not b.take_merge_slot("host-b")
    assert not (hosts[0] / ".beads" / "stand_in.json").exists()


def test_a_claim_of_a_task_that_is_not_open_is_refused_not_an_error(store):
    """A task blocked or closed between `ready` and the claim (by a person, or another host)."""
    blocked, closed = store.create("blocked"), store.create("closed")
    store.set_status(blocked.id, "blocked", "needs a decision")
    store.close(closed.id, "done")
    assert store.claim(blocked.id, "host-a") is False
    assert store.claim(closed.id, "host-a") is False
    assert (store.get(blocked.id).status, store.get(closed.id).status) == ("blocked", "closed")


def test_the_dispatcher_takes_back_a_lapsed_claim_after_its_configured_grace(agent_setup, backend, repo):
    if backend != {"task_backend": "bd"}:
        pytest.skip("the stand-in only: the real bd's lease lasts 5 minutes")
    cfg, config, store = agent_setup(reclaim_after_secs=0)
    task = add_task(store, "Orphaned", "append orphan.txt done")
    assert store.claim(task.id, "host-gone")
    db = repo / ".beads" / "stand_in.json"  # the lease lapsed a minute ago: inside bd's own 10-minute grace
    data = json.loads(db.read_text(encoding="utf-8"))
    next(i for i in data["issues"] if i["id"] == task.id)["lease_expires_at"] = files.iso_time(time.time() - 60)
    db.write_text(json.dumps(data), encoding="utf-8")
    result = dispatch(cfg, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(e["task_id"], e["previous_owner"]) for e in events(repo, "reclaimed")] == [(task.id, "host-gone")]
    assert store.get(task.id).status == "closed"


def test_task_metadata_is_read_as_safe_strings():
    task = model.Task.from_dict({"id": "p-1", "title": "t", "metadata": {"crew_tip": "a\0b", "n": 3, "ok": True},
                                 "lease_expires_at": "2026-12-06T01:49:06Z"})
    assert task.metadata == {"crew_tip": "ab", "n": "3", "ok": "true"}
    assert task.lease_expires_at == "2026-12-06T01:49:06Z"
    assert model.Task.from_dict({"id": "p-1", "title": "t", "metadata": "junk"}).metadata == {}


# ---- JSON store specifics ------------------------------------------------------------------

def json_store(tmp_path: Path) -> json_backend.JsonTaskStore:
    return json_backend.JsonTaskStore(tmp_path / "task_queue.json", "proj", "me")


def test_hand_written_minimal_file_is_valid(tmp_path):
    (tmp_path / "task_queue.json").write_text(json.dumps({"tasks": [
        {"id": "x-1", "title": "minimal"}, {"id": "x-2", "title": "custom", "status": "review"}]}), encoding="utf-8")
    store = json_store(tmp_path)
    assert [t.id for t in store.ready()] == ["x-1"]
    assert store.get("x-2").status == "review"
    created = store.create("next")
    assert created.id == "proj-1"
    assert json.loads((tmp_path / "task_queue.json").read_text(encoding="utf-8"))["tasks"][1]["status"] == "review"



def test_a_file_without_its_counter_seeds_ids_past_the_names_it_is_given_and_reads_them_only_then(tmp_path):
    asked = []

    def names_elsewhere() -> list[str]:
        asked.append(1)
        return ["refs/heads/work/proj-9\n", '{"proj-12": {"task_id": "proj-4"}}', "other-40"]

    (tmp_path / "task_queue.json").write_text(json.dumps({"tasks": [{"id": "proj-1", "title": "one"}]}),
                                              encoding="utf-8")
    store = json_backend.JsonTaskStore(tmp_path / "task_queue.json", "proj", "me", names_elsewhere)
    assert store.create("next").id == "proj-13"
    assert store.create("after").id == "proj-14" and len(asked) == 1  # the counter is written: never read again

@pytest.mark.parametrize("content, problem", [
    ("{not json", "corrupt (line 1"),
    ('{"tasks": {}}', 'expected an object with a "tasks" list'),
    ('{"tasks": [{"title": "no id"}]}', 'task #1 needs a string "id"'),
])
def test_corrupt_queue_is_refused_and_left_untouched(tmp_path, content, problem):
    path = tmp_path / "task_queue.json"
    path.write_text(content, encoding="utf-8")
    store = json_store(tmp_path)
    with pytest.raises(errors.UserError, match=problem.replace("(", r"\(")):
        store.create("would be lost")
    assert path.read_text(encoding="utf-8") == content


def test_corrupt_queue_through_the_cli_is_one_line_exit_1(repo, make_config):
    (repo / "task_queue.json").write_text("{broken", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "tasks.py"), "--config",
                           str(make_config(task_backend="json")), "list"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "task_queue.json is corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- Concurrency ---------------------------------------------------------------------------

CREATOR = """
import sys
sys.path.insert(0, {root!r})
from crew import config, tasks
store = tasks.open_task_store(config.load_config({config!r}))
for i in range({count}):
    store.create(f"task {{sys.argv[1]}}-{{i}}")
"""

CLAIMER = """
import sys
sys.path.insert(0, {root!r})
from crew import config, tasks
store = tasks.open_task_store(config.load_config({config!r}))
won = []
while True:
    ready = store.ready()
    if not ready:
        break
    for task in ready:
        if store.claim(task.id, "claimer-" + sys.argv[1]):
            won.append(task.id)
print(" ".join(won))
"""


def run_parallel(script: str, n: int, env: dict | None = None) -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, **(env or {})}) for i in range(n)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outputs.append(out)
    return outputs


def test_eight_processes_creating_at_once_make_unique_tasks(make_config, repo):
    config_path = str(make_config(task_backend="json", task_prefix="proj"))
    run_parallel(CREATOR.format(root=str(ROOT), config=config_path, count=50), 8)
    data = json.loads((repo / "task_queue.json").read_text(encoding="utf-8"))
    ids = [t["id"] for t in data["tasks"]]
    assert len(ids) == 400 and len(set(ids)) == 400
    assert {t["title"] for t in data["tasks"]} == {f"task {p}-{i}" for p in range(8) for i in range(50)}


def test_concurrent_bd_writers_retry_lock_errors(make_config, repo, tmp_path, monkeypatch):
    install_fake_bd(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    subprocess.run(["bd", "init", "--prefix", "proj"], cwd=repo, check=True)
    config_path = str(make_config(task_backend="bd"))
    # No waiting for the database: every overlap surfaces as Dolt's "database is locked".
    run_parallel(CREATOR.format(root=str(ROOT), config=config_path, count=4), 8, {"FAKE_BD_LOCK_WAIT": "0"})
    store = tasks.open_task_store(configuration.load_config(config_path))
    titles = [t.title for t in store.list(None)]
    assert sorted(titles) == sorted(f"task {p}-{i}" for p in range(8) for i in range(4))


def test_eight_claimers_never_claim_a_task_twice(make_config, repo):
    config_path = str(make_config(task_backend="json", task_prefix="proj"))
    store = tasks.open_task_store(configuration.load_config(config_path))
    created = {store.create(f"t{i}").id for i in range(20)}
    wins = [w for out in run_parallel(CLAIMER.format(root=str(ROOT), config=config_path), 8) for w in out.split()]
    assert sorted(wins) == sorted(created)


def test_racing_claimers_under_different_actors_on_bd(make_config, backend, repo):
    if backend["task_backend"] != "bd":
        pytest.skip("bd only (the JSON store is covered by the eight-claimer test)")
    config_path = str(make_config(**backend))
    store = tasks.open_task_store(configuration.load_config(config_path))
    created = {store.create(f"t{i}").id for i in range(4)}
    wins = [w for out in run_parallel(CLAIMER.format(root=str(ROOT), config=config_path), 3) for w in out.split()]
    assert sorted(wins) == sorted(created)
    assert {t.assignee for t in store.list(None)} <= {f"claimer-{i}" for i in range(3)}


def test_concurrent_writers_on_bd(make_config, backend, repo):
    if backend["task_backend"] != "bd":
        pytest.skip("bd only")
    config_path = str(make_config(**backend))
    run_parallel(CREATOR.format(root=str(ROOT), config=config_path, count=2), 8)
    store = tasks.open_task_store(configuration.load_config(config_path))
    assert sorted(t.title for t in store.list(None)) == sorted(f"task {p}-{i}" for p in range(8) for i in range(2))


def test_missing_bd_with_bd_backend_is_a_clear_error(make_config, monkeypatch):
    monkeypatch.setenv("PATH", "")
    config = configuration.load_config(str(make_config(task_backend="bd")))
    with pytest.raises(errors.UserError, match="bd command 'bd' was not found on PATH"):
        tasks.open_task_store(config)


def test_bd_error_json_and_envelope_are_understood(config, store, monkeypatch):
    if store.name != "bd":
        pytest.skip("bd only")
    monkeypatch.setenv("BD_JSON_ENVELOPE", "1")  # the store must not pass it on
    task = store.create("x")
    with pytest.raises(errors.BdError) as err:
        store.close("proj-nope", "x")
    assert "no issue found" in str(err.value) or "not found" in str(err.value)
    assert store.get(task.id).title == "x"
    assert bd_store._unwrap_bd_json('{"schema_version": 1, "data": [{"id": "a"}]}', []) == [{"id": "a"}]


def test_auto_backend_picks_bd_only_with_a_beads_folder(make_config, repo, tmp_path, monkeypatch):
    install_fake_bd(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    assert tasks.open_task_store(configuration.load_config(str(make_config()))).name == "json"
    subprocess.run(["bd", "init", "--prefix", "proj"], cwd=repo, check=True)
    assert tasks.open_task_store(configuration.load_config(str(make_config()))).name == "bd"


def test_bd_through_a_cmd_wrapper_refuses_text_cmd_exe_would_interpret(tmp_path, monkeypatch):
    wrapper = tmp_path / "bd.cmd"
    wrapper.write_text("@echo off\n", encoding="utf-8")
    monkeypatch.setattr(processes, "IS_WINDOWS", True)
    monkeypatch.setattr(bd_store.shutil, "which", lambda name: str(wrapper))
    store = bd_store.BdTaskStore("bd", tmp_path, "me")
    assert store.through_cmd
    with pytest.raises(errors.UserError, match="cmd.exe wrapper .* set bd_command to the real bd.exe"):
        store.create('Fix "quotes" & pipes', "x")


def test_bds_error_line_is_named_not_the_advice_after_it():
    down = ("Error: failed to open database: Dolt server unreachable at 127.0.0.1:3307: dial tcp 127.0.0.1:3307: "
            "connect: connection refused\n\nThe Dolt server may not be running. Try:\n  bd dolt start\n")
    assert bd_store._bd_error_message(processes.Completed(["bd"], 1, "", down)) == down.splitlines()[0]
    assert bd_store._bd_error_message(processes.Completed(["bd"], 1, "", "warning: x\nno issue found\n")) == \
        "no issue found"


def hanging_bd(folder: Path, hangs_on: str | None = None) -> tuple[Path, Path]:
    """A bd that takes a call and never answers (as a Dolt server that accepted the connection
    and hangs): every call, or only the subcommand `hangs_on`, the stand-in answering the others.
    The script, and the file where each hanging call writes its process id."""
    pids = folder / "hanging.pids"
    script = folder / "bd-hangs"
    script.write_text(f"#!{sys.executable}\nimport os, subprocess, sys, time\n"
                      f"if {hangs_on!r} is not None and sys.argv[1:2] != [{hangs_on!r}]:\n"
                      f"    sys.exit(subprocess.call([{sys.executable!r}, {str(ROOT / 'scripts' / 'fake_bd.py')!r},"
                      " *sys.argv[1:]]))\n"
                      f"open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\ntime.sleep(600)\n", encoding="utf-8")
    script.chmod(0o755)
    return script, pids


@pytest.mark.skipif(sys.platform == "win32", reason="the hanging bd is a POSIX script")
def test_a_bd_call_that_never_answers_is_ended_at_its_bound_and_fails_naming_it(tmp_path):
    script, pids = hanging_bd(tmp_path)
    store = bd_store.BdTaskStore(str(script), tmp_path, "me", timeout=1)
    with pytest.raises(errors.BdError, match="timed out after 1 s"):
        store.list(None)
    [pid] = pids.read_text().split()
    assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE, \
        "the hung bd was left running"


@pytest.mark.skipif(sys.platform == "win32", reason="the hanging bd is a POSIX script")
@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_run_whose_bd_never_answers_ends_saying_so_in_one_line(agent_setup, tmp_path):
    script, pids = hanging_bd(tmp_path, hangs_on="ready")
    cfg, _, store = agent_setup(bd_command=str(script), bd_timeout_secs=1)
    add_task(store, "Waits", "append waits.txt done")
    run = dispatch(cfg, timeout=120)
    assert run.returncode == 1 and "ready --limit 0 ...` failed: timed out after 1 s" in run.stderr, run.stderr
    assert len([line for line in run.stderr.splitlines() if "timed out" in line]) == 1, run.stderr
    for pid in pids.read_text().split():
        assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
