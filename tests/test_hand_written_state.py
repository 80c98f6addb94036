"""State and task files edited by hand: one line naming the file and the problem, or a documented
normal form; never a traceback, never an overwrite."""
from __future__ import annotations

import json

import pytest

from crew import errors

from support.dispatching import add_task, dispatch

STATE = ".dispatch_state.json"
PENDING = ".dispatch_pending_merge_retries.json"
WHOLE_STATE = {"dispatcher": None, "workers": [], "merge_queue": [], "attempts": {}}


@pytest.mark.parametrize("name, content, problem", [
    (STATE, {}, '"workers" is missing'),
    (STATE, [], "it is not a JSON object"),
    (STATE, {**WHOLE_STATE, "workers": [{}]}, 'worker record #1 lacks "slot", "task_id"'),
    (STATE, {**WHOLE_STATE, "merge_queue": [{"task_id": "proj-1"}]}, 'merge-queue entry #1 lacks "title"'),
    (STATE, {**WHOLE_STATE, "attempts": []}, '"attempts" is missing or not a JSON object'),
    (PENDING, {"x": 1}, "pending merge x is not an object"),
    (PENDING, {"proj-9": {"kind": "conflict"}}, 'pending merge proj-9 lacks "task_id"'),
])
@pytest.mark.parametrize("args", [(), ("--status",), ("--dry-run",)])
def test_a_malformed_state_file_is_one_line_and_left_untouched(json_agent_setup, repo, name, content, problem, args):
    cfg, config, store = json_agent_setup()
    add_task(store, "Anything", "append x.txt x")
    text = json.dumps(content)
    (repo / name).write_text(text, encoding="utf-8")
    proc = dispatch(cfg, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(repo / name) in proc.stderr and problem in proc.stderr
    assert (repo / name).read_text(encoding="utf-8") == text


def write_queue(repo, tasks: list[dict]) -> str:
    text = json.dumps({"tasks": tasks})
    (repo / "task_queue.json").write_text(text, encoding="utf-8")
    return text


def test_hand_written_odd_values_are_read_in_the_normal_form_and_dry_run_agrees(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(max_workers=2)
    write_queue(repo, [
        {"id": "t-1", "title": "String priority", "priority": "1", "description": "AGENT: append one.txt 1"},
        {"id": "t-2", "title": "Nulls", "priority": None, "created_at": None, "status": None,
         "dependencies": None, "description": "AGENT: append two.txt 2"},
        {"id": "t-3", "title": "Bare id dependency", "priority": 0, "dependencies": ["t-1"],
         "description": "AGENT: append three.txt 3"},
    ])
    plan = dispatch(cfg, "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert [(p["id"], p["start"]) for p in json.loads(plan.stdout)] == [("t-1", True), ("t-2", True)]
    run = dispatch(cfg, "--json")
    assert run.returncode == 0, run.stderr
    merged = json.loads(run.stdout)["merged"]
    assert sorted(merged) == ["t-1", "t-2", "t-3"] and merged.index("t-1") < merged.index("t-3")
    assert sorted(t.id for t in store.list(None) if t.status == "closed") == ["t-1", "t-2", "t-3"]
    saved = {t["id"]: t for t in json.loads((repo / "task_queue.json").read_text(encoding="utf-8"))["tasks"]}
    assert saved["t-1"]["priority"] == 1 and saved["t-3"]["dependencies"] == [{"depends_on_id": "t-1", "type": "blocks"}]


@pytest.mark.parametrize("tasks, problem", [
    ([{"id": "t-1", "title": "a"}, {"id": "t-1", "title": "b"}], "task t-1: two tasks have this id"),
    ([{"id": "t-1", "title": "a", "priority": "high"}], 'task t-1: "priority" must be 0-4 (0 highest), got "high"'),
    ([{"id": "t-1", "title": "a", "status": 3}], 'task t-1: "status" must be a string'),
    ([{"id": "t-1", "title": "a", "dependencies": [7]}], "task t-1: dependency 7 must be a task id"),
    ([{"id": "t-1", "title": "a", "dependencies": ["t-3"]}, {"id": "t-2", "title": "b", "dependencies": ["t-1"]},
      {"id": "t-3", "title": "c", "dependencies": [{"depends_on_id": "t-2", "type": "waits-for"}]}],
     "task t-1 waits for itself through the dependency cycle t-1 -> t-3 -> t-2 -> t-1"),
])
def test_hand_written_tasks_that_cannot_be_read_are_one_line_naming_the_task(json_agent_setup, repo, tasks, problem):
    cfg, config, store = json_agent_setup()
    text = write_queue(repo, tasks)
    for args in (("--dry-run",), ()):
        proc = dispatch(cfg, *args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and problem in proc.stderr, proc.stderr
    assert (repo / "task_queue.json").read_text(encoding="utf-8") == text


def test_a_dependency_that_would_close_a_cycle_is_refused(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    first, second = add_task(store, "First"), add_task(store, "Second")
    store.add_dependency(second.id, first.id)
    with pytest.raises(errors.UserError, match=f"makes the cycle {first.id} -> {second.id} -> {first.id}"):
        store.add_dependency(first.id, second.id)
    assert store.get(first.id).dependencies == []
