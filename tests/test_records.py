"""The dispatcher's state files: the ones earlier releases wrote load (tests/data/legacy_state
holds files written by real runs of releases that wrote each form, see make_legacy_state.py
there), and what loads saves and loads again unchanged."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from crew import errors, files
from crew.dispatch import records, review
from crew.dispatch.conflicts import Conflicts
from crew.dispatch.ledger import Ledger
from crew.dispatch.records import MergeRequest, PendingMerge

from support.dispatching import add_task, dispatch, merges_of
from support.repos import commit_file, git

LEGACY = Path(__file__).parent / "data" / "legacy_state"
STATE, PENDING = ".dispatch_state.json", ".dispatch_pending_merge_retries.json"
# The forms of state version 1 (no "version" key): pending merges without titles; with titles;
# a worker's timeout as a `timed_out` flag; records that carry their claim's actor, the task's
# creation time, a per-attempt log and why a worker was ended.
RELEASES = ["v1-untitled", "v1-titled", "v1-timed-out-flag", "v1-claims"]


def read(release: str) -> tuple[dict, dict]:
    return tuple(json.loads((LEGACY / release / name).read_text(encoding="utf-8"))
                 for name in ("state.json", "pending.json"))


def load(state: object, pending: object, tmp_path: Path, actor: str = "me@here") -> records.DispatchState:
    return records.load_state(state, pending, state_path=tmp_path / STATE, pending_path=tmp_path / PENDING,
                              default_actor=actor, logs=tmp_path / ".dispatch_logs")


@pytest.mark.parametrize("release", RELEASES)
def test_state_files_of_every_release_load_with_each_record_whole(release, tmp_path):
    state_json, pending_json = read(release)
    state = load(state_json, pending_json, tmp_path)
    # Each run was killed with a worker running, a merge queued and a conflict pending.
    assert state.dispatcher is not None and state.dispatcher.pid == state_json["dispatcher"]["pid"]
    assert [w.slot for w in state.workers.values()] == [w["slot"] for w in state_json["workers"]]
    for worker, written in zip(state.workers.values(), state_json["workers"]):
        assert (worker.task_id, worker.branch, str(worker.worktree), worker.base, worker.attempt, worker.pid) == (
            written["task_id"], written["branch"], written["worktree"], written["base"], written["attempt"],
            written["pid"])
        assert worker.actor == written.get("actor", "me@here") and worker.ended is None
        assert worker.log == written.get("log", "")  # no legacy log exists here
    assert [(r.task_id, r.branch, r.outcome, r.retries) for r in state.merge_queue] == [
        (e["task_id"], e["branch"], e["outcome"], e["retries"]) for e in state_json["merge_queue"]]
    for request in state.merge_queue:
        assert request.counted is True and request.actor in ("me@here", "dispatch@vm")
    assert list(state.pending) == list(pending_json)
    for followup, pending in state.pending.items():
        written = pending_json[followup]
        assert (pending.kind, pending.task_id, pending.branch, pending.files, pending.retries) == (
            written["kind"], written["task_id"], written["branch"], written["files"], written["retries"])
        # The first release wrote no title: the task id stands in for it.
        assert pending.title == written.get("title", written["task_id"])
        assert pending.branch_tip == written.get("branch_tip") and pending.for_person is False
    assert state.gates == [] and state.attempts == state_json["attempts"]
    assert state.actors == state_json.get("actors", [])
    assert {name: owner.task_id for name, owner in state.branches.items()} == {
        name: owner["task_id"] for name, owner in state_json.get("branches", {}).items()}


def test_a_version_1_pending_merge_may_lack_a_title_and_is_read_with_the_task_id():
    assert "title" not in read("v1-untitled")[1]["proj-5"]  # what the loader must cope with


@pytest.mark.parametrize("release", RELEASES)
def test_what_loads_saves_as_version_7_and_loads_again_unchanged(release, tmp_path):
    state = load(*read(release), tmp_path)
    saved_state, saved_pending = state.state_json(), state.pending_json()
    assert saved_state["version"] == records.STATE_VERSION == 7
    assert "version" not in saved_pending  # a bare map: a "version" key would read as a task id
    again = load(json.loads(json.dumps(saved_state)), json.loads(json.dumps(saved_pending)), tmp_path,
                 actor="someone-else")
    assert again == state
    assert again.state_json() == saved_state and again.pending_json() == saved_pending


def test_a_version_3_file_is_read_with_no_main_seen_and_saved_as_version_7_with_what_it_held(tmp_path):
    """Version 3 remembered no main: the first run records the main it finds."""
    state_json, pending_json = read("v1-claims")
    version_3 = {**load(state_json, pending_json, tmp_path).state_json(), "version": 3}
    del version_3["main_seen"], version_3["left_main"], version_3["pushed"], version_3["keeping"]
    state = load(version_3, pending_json, tmp_path)
    assert state.main_seen == "" and state.left_main == {}
    saved = state.state_json()
    assert saved["version"] == 7 and saved["main_seen"] == "" and saved["left_main"] == {}
    assert {key: value for key, value in saved.items()
            if key not in ("main_seen", "left_main", "pushed", "keeping", "version")} == {
        key: value for key, value in version_3.items() if key != "version"}
    state.main_seen = "a" * 40
    state.left_main["work/proj-1"] = records.LeftMain(old_main="b" * 40, commits=["c" * 40])
    assert load(json.loads(json.dumps(state.state_json())), pending_json, tmp_path) == state


def test_a_version_4_queue_entry_is_read_as_asking_no_review_and_saved_as_version_7(tmp_path):
    """Version 4 had no review: its merge requests are in the queue, none awaiting a person."""
    state_json, pending_json = read("v1-claims")
    version_4 = {**load(state_json, pending_json, tmp_path).state_json(), "version": 4}
    version_4["merge_queue"] = [{"task_id": "t-1", "title": "T", "branch": "work/t-1", "worktree": "w",
                                 "outcome": "close", "note": "", "retries": 0}]
    state = load(version_4, pending_json, tmp_path)
    [request] = state.merge_queue
    assert request.review == "" and request.review_tip == "" and request.attempt_log == ""
    saved = state.state_json()
    assert saved["version"] == 7 and saved["merge_queue"][0]["review"] == ""
    request.review, request.review_tip = "awaiting", "a" * 40
    assert load(json.loads(json.dumps(state.state_json())), pending_json, tmp_path) == state


def test_a_version_5_file_is_read_as_having_pushed_nothing_and_saved_as_version_7(tmp_path):
    """Version 5 pushed no branch: each branch's first push expects none on the remote."""
    state_json, pending_json = read("v1-claims")
    version_5 = {**load(state_json, pending_json, tmp_path).state_json(), "version": 5}
    del version_5["pushed"], version_5["keeping"]
    state = load(version_5, pending_json, tmp_path)
    assert state.pushed == {}
    saved = state.state_json()
    assert saved["version"] == 7 and saved["pushed"] == {}
    state.pushed["work/proj-1"] = "a" * 40
    assert load(json.loads(json.dumps(state.state_json())), pending_json, tmp_path) == state
    with pytest.raises(errors.UserError, match='"pushed" holds a tip that is not a string'):
        load({**saved, "pushed": {"work/proj-1": 1}}, pending_json, tmp_path)


def test_a_version_6_file_is_read_as_keeping_nothing_to_push_and_saved_as_version_7(tmp_path):
    """Version 6 pushed a lost claim's branch from memory only: nothing is remembered to push."""
    state_json, pending_json = read("v1-claims")
    version_6 = {**load(state_json, pending_json, tmp_path).state_json(), "version": 6}
    del version_6["keeping"]
    state = load(version_6, pending_json, tmp_path)
    assert state.keeping == {}
    saved = state.state_json()
    assert saved["version"] == 7 and saved["keeping"] == {}
    state.keeping["work/proj-1"] = records.KeptBranch(task_id="proj-1", actor="host-a")
    assert load(json.loads(json.dumps(state.state_json())), pending_json, tmp_path) == state
    with pytest.raises(errors.UserError, match='kept branch work/proj-1 lacks "actor"'):
        load({**saved, "keeping": {"work/proj-1": {"task_id": "proj-1"}}}, pending_json, tmp_path)


def test_a_version_1_worker_s_timed_out_flag_is_read_as_ended_by_its_timeout(tmp_path):
    state_json, pending_json = read("v1-timed-out-flag")
    state_json["workers"][0]["timed_out"] = True
    worker = next(iter(load(state_json, pending_json, tmp_path).workers.values()))
    assert worker.ended == records.TIMED_OUT and not worker.stopped_by_user
    assert "timed_out" not in worker.to_json()


def test_a_worker_from_before_per_attempt_logs_keeps_the_log_it_wrote(tmp_path):
    state_json, pending_json = read("v1-timed-out-flag")
    logs = tmp_path / ".dispatch_logs"
    logs.mkdir()
    (logs / "proj-4.log").write_text("aider output\n", encoding="utf-8")
    worker = load(state_json, pending_json, tmp_path).workers[1]
    assert worker.task_id == "proj-4" and worker.log == ".dispatch_logs/proj-4.log"


def test_records_carry_unknown_keys_away_and_absent_files_are_an_empty_state(tmp_path):
    state = load(None, None, tmp_path)
    assert state == records.DispatchState()
    assert state.state_json() == {"version": 7, "dispatcher": None, "workers": [], "merge_queue": [], "attempts": {},
                                  "branches": {}, "actors": [], "gates": [], "main_check": None,
                                  "main_seen": "", "left_main": {}, "pushed": {}, "keeping": {}}
    request = MergeRequest.from_json({"task_id": "t-1", "title": "T", "branch": "b", "worktree": "w",
                                      "outcome": "close", "note": "", "retries": 0, "from_the_future": 1})
    assert "from_the_future" not in request.to_json() and request.queued_at == 0.0
    pending = PendingMerge.from_json({"kind": "gate", "task_id": "t-1", "branch": "b", "worktree": "w",
                                      "files": [], "outcome": "close", "note": "", "retries": 1}, {"title": "t-1"})
    assert pending.title == "t-1" and pending.branch_tip is None


WHOLE = {"dispatcher": None, "workers": [], "merge_queue": [], "attempts": {}}


def test_a_version_2_file_has_no_main_check_and_a_main_check_saves_and_loads_again(tmp_path):
    state = load({**WHOLE, "version": 2, "gates": []}, None, tmp_path)
    assert state.main_check is None and state.state_json()["version"] == records.STATE_VERSION
    state.main_check = records.MainCheck("a" * 40, False, 1.5, "No module named pytest")
    assert load(json.loads(json.dumps(state.state_json())), None, tmp_path) == state


@pytest.mark.parametrize("state_json, pending_json, where, problem", [
    ([], None, STATE, "it is not a JSON object"),
    ({**WHOLE, "version": "2"}, None, STATE, '"version" must be a whole number'),
    ({**WHOLE, "version": 8}, None, STATE,
     "written by a newer release (state version 8); run that release or move the file"),
    ({"version": 2}, None, STATE, '"workers" is missing or not a list'),
    ({**WHOLE, "workers": [{}]}, None, STATE, 'worker record #1 lacks "slot", "task_id"'),
    ({**WHOLE, "merge_queue": [{"task_id": "proj-1"}]}, None, STATE, 'merge-queue entry #1 lacks "title"'),
    ({**WHOLE, "gates": [{"task_id": "proj-1"}]}, None, STATE, 'gate record #1 lacks "branch"'),
    ({**WHOLE, "actors": {}}, None, STATE, '"actors" is not a list'),
    ({**WHOLE, "version": 3, "main_check": {"commit": "a" * 40}}, None, STATE, 'main check record lacks "passed"'),
    ({**WHOLE, "main_seen": 1}, None, STATE, '"main_seen" is not a string'),
    ({**WHOLE, "left_main": {"work/proj-1": {"commits": []}}}, None, STATE,
     'left-main record work/proj-1 lacks "old_main"'),
    (WHOLE, ["x"], PENDING, "it is not a JSON object"),
    (WHOLE, {"x": 1}, PENDING, "pending merge x is not an object"),
    (WHOLE, {"proj-9": {"kind": "conflict"}}, PENDING, 'pending merge proj-9 lacks "task_id"'),
])
def test_a_file_that_cannot_be_read_is_one_error_naming_it_and_the_problem(tmp_path, state_json, pending_json, where,
                                                                            problem):
    with pytest.raises(errors.UserError) as raised:
        load(state_json, pending_json, tmp_path)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / where}: {problem}") and "\n" not in message
    assert message.endswith("; fix or move it (it was left untouched)")


def test_a_merge_queued_and_a_merge_pending_in_version_1_files_each_merge_once(json_agent_setup, repo, tmp_path):
    """A dispatcher stopped with a queued merge (version 1, timeout flag form) and a pending merge
    (version 1, untitled form) is carried on by this release: each branch merges once."""
    cfg, config, store = json_agent_setup()
    queued, pending = add_task(store, "Queued before"), add_task(store, "Pending before")
    followup = add_task(store, "Resolve merge conflict: work/" + pending.id)
    branches = {}
    for task in (queued, pending):
        store.claim(task.id, config.actor)
        worktree = tmp_path / "old-worktrees" / task.id
        git(repo, "worktree", "add", "-q", "-b", f"work/{task.id}", str(worktree), "main")
        commit_file(worktree, f"{task.id}.txt", f"work of {task.id}\n")
        branches[task.id] = str(worktree)
    store.close(followup.id, "resolved by hand")
    state_json, pending_json = read("v1-timed-out-flag")
    request = {**state_json["merge_queue"][0], "task_id": queued.id, "title": queued.title,
               "branch": f"work/{queued.id}", "worktree": branches[queued.id]}
    state_json = {"dispatcher": None, "workers": [], "merge_queue": [request], "attempts": {}}
    old_pending = {**read("v1-untitled")[1]["proj-5"], "task_id": pending.id, "branch": f"work/{pending.id}",
                   "worktree": branches[pending.id], "files": []}
    (repo / STATE).write_text(json.dumps(state_json), encoding="utf-8")
    (repo / PENDING).write_text(json.dumps({followup.id: old_pending}), encoding="utf-8")
    run = dispatch(cfg, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(json.loads(run.stdout)["merged"]) == sorted([queued.id, pending.id])
    assert merges_of(repo, queued.id) == 1 and merges_of(repo, pending.id) == 1
    assert store.get(queued.id).status == store.get(pending.id).status == "closed"
    saved = json.loads((repo / STATE).read_text(encoding="utf-8"))
    assert saved["version"] == records.STATE_VERSION and saved["merge_queue"] == []
    assert json.loads((repo / PENDING).read_text(encoding="utf-8")) == {}


def test_a_version_7_file_with_every_kind_of_record_reads_and_writes_back_byte_for_byte(tmp_path):
    """tests/data/state_v7 holds files this release writes, with every record kind and every
    value a state takes (a branch pushed, a lost claim's branch to push, a conflict worker, a release, a gate's pending merge, a review awaited
    and approved, a worker on deck): what reads them writes them back unchanged, so typing the
    states in memory leaves the files as they are."""
    written = {name: (Path(__file__).parent / "data" / "state_v7" / name).read_bytes()
               for name in ("state.json", "pending.json")}
    for name, content in written.items():
        (tmp_path / name).write_bytes(content)
    state_file, pending_file = (files.StateFile(tmp_path / name, None) for name in written)
    state = load(state_file.read(), pending_file.read(), tmp_path)
    state_file.write(state.state_json())
    pending_file.write(state.pending_json())
    assert {name: (tmp_path / name).read_bytes() for name in written} == written


def every_state() -> tuple[dict, dict]:
    return tuple(json.loads((Path(__file__).parent / "data" / "state_v7" / name).read_text(encoding="utf-8"))
                 for name in ("state.json", "pending.json"))


def test_a_record_s_states_are_read_as_their_kinds():
    state = load(*every_state(), Path("."))
    assert [worker.kind for worker in state.workers.values()] == [
        records.WorkerKind.TASK, records.WorkerKind.CONFLICT, records.WorkerKind.TASK]
    assert [request.outcome for request in state.merge_queue] == [
        records.Outcome.CLOSE, records.Outcome.RELEASE, records.Outcome.CLOSE, records.Outcome.CLOSE]
    assert [request.review for request in state.merge_queue] == [
        review.State.NONE, review.State.NONE, review.State.AWAITING, review.State.APPROVED]
    assert [(pending.kind, pending.outcome) for pending in state.pending.values()] == [
        (records.PendingKind.CONFLICT, records.Outcome.CLOSE), (records.PendingKind.GATE, records.Outcome.RELEASE)]
    assert [worker.worktree for worker in state.workers.values()] == [
        Path("/tmp/wt/proj-1"), Path("/tmp/wt/proj-3"), Path("/tmp/wt/proj-9")]
    assert [gate.worktree for gate in state.gates] == [Path("/tmp/wt/gate-1")]


@pytest.mark.parametrize(("where", "key", "value", "problem"), [
    ("workers", "kind", "fix", 'worker record #1: "kind" must be one of "task", "conflict", not "fix"'),
    ("merge_queue", "outcome", "closed",
     'merge-queue entry #1: "outcome" must be one of "close", "release", not "closed"'),
    ("pending", "kind", None, 'pending merge proj-7: "kind" must be one of "conflict", "gate", not null'),
    ("pending", "outcome", "keep", 'pending merge proj-7: "outcome" must be one of "close", "release", not "keep"'),
    ("merge_queue", "review", "rejected",
     'merge-queue entry #1: "review" must be one of "", "awaiting", "approved", not "rejected"'),
    ("workers", "worktree", "", 'worker record #1: "worktree" must be a folder\'s path, not ""'),
    ("gates", "worktree", 7, 'gate record #1: "worktree" must be a folder\'s path, not 7'),
    ("pending", "worktree", None, 'pending merge proj-7: "worktree" must be a folder\'s path, not null'),
])
def test_a_state_or_path_no_release_writes_is_one_error_naming_the_record_and_what_it_may_be(tmp_path, where, key,
                                                                                            value, problem):
    state_json, pending_json = every_state()
    (pending_json["proj-7"] if where == "pending" else state_json[where][0])[key] = value
    with pytest.raises(errors.UserError) as raised:
        load(state_json, pending_json, tmp_path)
    assert str(raised.value) == (f"{tmp_path / (PENDING if where == 'pending' else STATE)}: {problem}; "
                                 "fix or move it (it was left untouched)")


def test_a_branch_in_flight_is_written_flat_and_read_back_whole_by_the_queue_and_pending_merges():
    flight = records.BranchInFlight(task_id="t-1", title="T", branch="work/t-1", worktree=Path("/wt/t-1"),
                                    outcome=records.Outcome.RELEASE, note="partial", retries=2, counted=False,
                                    actor="dispatch@vm", task_created_at="2026-12-05T21:58:00Z",
                                    attempt_log="logs/t-1.1.log")
    request = MergeRequest(flight, queued_at=1.5, review=review.State.APPROVED)
    pending = PendingMerge(kind=records.PendingKind.GATE, flight=flight, files=["a.txt"], branch_tip="2" * 40)
    for record in (request, pending):
        written = record.to_json()
        assert "flight" not in written and {key: written[key] for key in ("task_id", "retries", "attempt_log")} \
            == {"task_id": "t-1", "retries": 2, "attempt_log": "logs/t-1.1.log"}
        again = type(record).from_json(json.loads(json.dumps(written)))
        assert again == record and again.flight == flight and again.outcome is records.Outcome.RELEASE
    # Every field of each record, its own and its branch's, has its place in the file.
    for kind in (MergeRequest, PendingMerge):
        fields = {field.name for field in (*dataclasses.fields(kind), *dataclasses.fields(records.BranchInFlight))}
        assert sorted(kind.FILE_KEYS) == sorted(fields - {"flight"})


def test_a_branch_queued_again_after_its_fix_task_is_the_branch_that_waited_attempt_log_and_all(json_agent_setup,
                                                                                                   repo):
    _, config, store = json_agent_setup()
    original, followup = store.create("Original"), store.create("Fix failing checks: work/proj-1")
    ledger = Ledger(config, store, say=lambda message: None)
    flight = records.BranchInFlight(task_id=original.id, title="Original", branch="work/proj-1",
                                    worktree=str(repo / "wt"), outcome=records.Outcome.RELEASE, note="partial",
                                    retries=1, counted=False, actor=config.actor, task_created_at=original.created_at,
                                    attempt_log=".dispatch_logs/proj-1.1.log")
    ledger.state.pending[followup.id] = PendingMerge(kind=records.PendingKind.GATE, flight=flight, files=[],
                                                     followup_created_at=followup.created_at)
    store.close(followup.id, "fixed", actor=config.actor)
    conflicts = Conflicts(config, ledger, store)
    assert conflicts.settle(set(), conflicts.lookups(busy=set())(store)) is True
    assert ledger.state.pending == {} and [request.flight for request in ledger.state.merge_queue] == [flight]
    saved = json.loads((repo / STATE).read_text(encoding="utf-8"))["merge_queue"]
    assert saved[0]["attempt_log"] == ".dispatch_logs/proj-1.1.log" and saved[0]["retries"] == 1
