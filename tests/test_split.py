"""split_task.py against a loopback LLM server: the request sent, and the tasks that end up stored."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crew import errors
from crew import git
from crew import llm as llm_client
from crew import planning
from crew.cli import split as split_cli
from crew.tasks import model
from support.fake_llm import FakeLLM, Reply
from support.repos import ROOT, commit_file


def plan(*subtasks) -> str:
    return json.dumps({"subtasks": [
        {"title": t, "description": f"Do: {t}", "files": files, **({"depends_on": deps} if deps else {})}
        for t, files, deps in subtasks]})


GOOD = plan(("Add cycle time metric", ["metrics/cycle.py"], None),
            ("Add throughput chart", ["charts/throughput.py"], None),
            ("Wire the dashboard page", ["dashboard.py"], [0, 1]))
GOAL = "Add a full Jira analytics dashboard with cycle time, throughput, and WIP"


@pytest.fixture
def split(make_config, backend, fake_llm, capsys):
    """Run split_task.main with the fake LLM; returns (exit code, parsed --json output)."""
    def run(*args, llm=fake_llm, **settings):
        cfg = make_config(**{**backend, "llm_url": llm.url, "llm_retries": 2, "llm_timeout_secs": 2, **settings})
        code = split_cli.main(["--config", str(cfg), "--json", *args])
        out = capsys.readouterr().out
        return code, (json.loads(out) if out.strip() else None)
    return run


def test_good_plan_becomes_linked_tasks(split, fake_llm, config, store, repo):
    commit_file(repo, "dashboard.py", "# dashboard\n")
    fake_llm.script(GOOD)
    code, out = split(GOAL)
    assert code == 0
    parent = store.get(out["parent"])
    assert parent.issue_type == "epic" and parent.description == GOAL
    tasks = [store.get(i) for i in out["created"]]
    assert [t.title for t in tasks] == ["Add cycle time metric", "Add throughput chart", "Wire the dashboard page"]
    for task in tasks:
        assert task.deps_of("discovered-from") == [parent.id]
    assert tasks[0].files == ["metrics/cycle.py"]
    assert sorted(tasks[2].deps_of("blocks")) == sorted([tasks[0].id, tasks[1].id])
    # Ready: the two unblocked ones (bd orders tasks made in the same second by id, not by age).
    assert sorted(t.id for t in store.ready()) == sorted([tasks[0].id, tasks[1].id])
    assert out["tokens"]["prompt"] > 0 and out["tokens"]["completion"] > 0

    [request] = fake_llm.requests
    body = request["body"]
    assert request["path"] == "/api/chat"
    assert body["model"] == "qwen2.5-coder:7b" and body["stream"] is False
    assert body["options"] == {"temperature": 0, "num_ctx": 8192, "num_predict": 4096} and body["keep_alive"] == "10m"
    assert body["format"]["properties"]["subtasks"]["minItems"] == 3
    assert "dashboard.py" in body["messages"][1]["content"] and GOAL in body["messages"][1]["content"]


@pytest.mark.parametrize("wrapped", [
    "```json\n" + GOOD + "\n```",
    "<think>The user wants a dashboard. Let me plan {carefully}.</think>\n" + GOOD,
    json.dumps({"tasks": json.loads(GOOD)["subtasks"]}),
    json.dumps(json.loads(GOOD)["subtasks"]),
    GOOD + "\n\nI hope this plan helps! Let me know {if} you need more.",
])
def test_what_local_models_really_send_is_tolerated(split, fake_llm, wrapped):
    fake_llm.script(wrapped)
    code, out = split(GOAL)
    assert code == 0 and len(out["created"]) == 3


@pytest.mark.parametrize("bad, problem", [
    (plan(("Only one", ["a.py"], None), ("Two", ["b.py"], None)), "must be 3 to 10 subtasks, not 2"),
    (plan(*[(f"T{i}", [f"f{i}.py"], None) for i in range(11)]), "not 11"),
    (plan(("Same", ["a.py"], None), ("same ", ["b.py"], None), ("C", ["c.py"], None)), "same title as subtask 0 but other files"),
    (plan(("A", ["../../etc/passwd"], None), ("B", ["b.py"], None), ("C", ["c.py"], None)), "leaves the repository"),
    (plan(("A", ["--output=/tmp/x"], None), ("B", ["b.py"], None), ("C", ["c.py"], None)), "begins with '-'"),
    (plan(("A", ["a&calc.exe"], None), ("B", ["b.py"], None), ("C", ["c.py"], None)), "contains the character '&'"),
    (plan(("A", ["/etc/x"], None), ("B", ["C:\\x.py"], None), ("C", [".git/hooks/pre-commit"], None)), "inside .git"),
    (plan(("A", ["a.py"], [1]), ("B", ["b.py"], None), ("C", ["c.py"], None)), "may only name earlier subtasks"),
    ("not json at all", "contains no JSON"),
])
def test_invalid_plans_are_asked_again_then_refused(split, fake_llm, store, bad, problem):
    fake_llm.script(bad, bad, bad)
    with pytest.raises(errors.UserError, match="no valid plan after 3 tries") as err:
        split(GOAL)
    assert problem in str(err.value)
    assert store.list(None) == []  # nothing is created unless the whole plan is valid
    # The re-ask quotes the problem to the model.
    assert problem in fake_llm.requests[1]["body"]["messages"][-1]["content"]


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_every_request_bounds_its_output_and_a_cut_reply_fails_at_once(split, fake_llm, store, api):
    # A small model under a schema can generate without end: the bound ends it, and a reply the
    # bound cut is unfinished JSON, so it is reported at once rather than asked again.
    fake_llm.script(Reply(GOOD[:40], stop="length"), GOOD)
    with pytest.raises(llm_client.LLMError, match=r"reply was cut at llm_max_tokens \(700 tokens\).*raise llm_max_tokens"):
        split(GOAL, llm_api=api, llm_max_tokens=700)
    [request] = fake_llm.requests
    bound = request["body"]["options"]["num_predict"] if api == "ollama" else request["body"]["max_tokens"]
    assert bound == 700
    assert store.list(None) == []


def test_the_rules_reach_the_model_in_the_user_message(split, fake_llm):
    # A GGUF without a chat template gets Ollama's {{ .Prompt }} template, which drops the
    # system message: what the model must follow has to be in the user message.
    fake_llm.script(GOOD)
    split("--min", "2", "--max", "7", GOAL)
    user = [m["content"] for m in fake_llm.requests[0]["body"]["messages"] if m["role"] == "user"]
    assert len(user) == 1
    assert "into 2-7 subtasks" in user[0] and "Answer with JSON only" in user[0] and GOAL in user[0]


def test_a_repeated_subtask_is_merged_into_its_first_copy(split, fake_llm, store):
    fake_llm.script(plan(("Add cycle time metric", ["metrics/cycle.py"], None),
                         ("Add throughput chart", ["charts/throughput.py"], None),
                         ("add  cycle time metric", ["metrics/cycle.py"], None),
                         ("Wire the dashboard page", ["dashboard.py"], [1, 2])))
    code, out = split(GOAL)
    assert code == 0 and len(fake_llm.requests) == 1
    tasks = [store.get(i) for i in out["created"]]
    assert [t.title for t in tasks] == ["Add cycle time metric", "Add throughput chart", "Wire the dashboard page"]
    # What waited for the repeat waits for the first copy.
    assert sorted(tasks[2].deps_of("blocks")) == sorted([tasks[0].id, tasks[1].id])
    assert out["notes"] == ["subtask 2 repeats subtask 0 ('add  cycle time metric', same files): merged into it"]


def test_too_few_after_merging_repeats_is_asked_again_plainly(split, fake_llm):
    repeated = plan(("Add cycle time metric", ["metrics/cycle.py"], None),
                    ("Add cycle time metric", ["metrics/cycle.py"], None),
                    ("Add cycle time metric", ["metrics/cycle.py"], None))
    fake_llm.script(repeated, GOOD)
    code, out = split(GOAL)
    assert code == 0 and len(out["created"]) == 3
    reask = fake_llm.requests[1]["body"]["messages"][-1]["content"]
    assert "there must be 3 to 10 subtasks, not 1 once 2 repeated ones were merged" in reask
    assert "3 to 10 subtasks, each with its own\ntitle" in reask and "Answer with JSON only" in reask


def test_invalid_then_valid_reply_succeeds(split, fake_llm):
    fake_llm.script("{ broken json", GOOD)
    code, out = split(GOAL)
    assert code == 0 and len(out["created"]) == 3 and len(fake_llm.requests) == 2


def test_server_error_then_good_reply(split, fake_llm):
    fake_llm.script(Reply(status=500, error="out of memory"), GOOD)
    code, out = split(GOAL)
    assert code == 0 and len(fake_llm.requests) == 2


def test_unknown_model_fails_at_once_with_the_pull_command(split, fake_llm, store):
    with pytest.raises(errors.UserError, match=r"model 'nope:1b' not found .*ollama pull nope:1b"):
        split(GOAL, llm_model="nope:1b")
    assert len(fake_llm.requests) == 1


def test_a_hang_past_the_timeout_is_retried_then_reported(split, fake_llm):
    fake_llm.script(Reply(GOOD, hang=3), Reply(GOOD, hang=3))
    with pytest.raises(errors.UserError, match="did not answer within 1 s"):
        split(GOAL, llm_timeout_secs=1, llm_retries=1)


def test_server_down_is_one_line(make_config, repo, tmp_path):
    cfg = make_config(task_backend="json", llm_url="http://127.0.0.1:9")
    proc = subprocess.run([sys.executable, str(ROOT / "split_task.py"), "--config", str(cfg), GOAL],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr == "error: cannot reach the LLM server at http://127.0.0.1:9 (is `ollama serve` running at that address?)\n"


def test_same_file_subtasks_wait_for_each_other(split, fake_llm, store):
    fake_llm.script(plan(("Add chart", ["dash.py"], None), ("Add table", ["table.py"], None),
                         ("Add filter", ["dash.py", "filters.py"], None)))
    code, out = split(GOAL)
    chart, table, filt = (store.get(i) for i in out["created"])
    assert filt.deps_of("blocks") == [chart.id]
    assert {t.id for t in store.ready()} == {chart.id, table.id}


def test_bead_splits_an_existing_task_and_skips_open_duplicates(split, fake_llm, store):
    existing = store.create("Add throughput chart", "already planned")
    parent = store.create("Dashboard", "Build the analytics dashboard")
    fake_llm.script(GOOD)
    code, out = split("--bead", parent.id)
    assert out["parent"] == parent.id and len(out["created"]) == 2
    assert out["skipped"] == [{"title": "Add throughput chart", "reason": f"same title as open task {existing.id}"}]
    wire = store.get(out["created"][1])
    assert existing.id in wire.deps_of("blocks")
    assert "Build the analytics dashboard" in fake_llm.requests[0]["body"]["messages"][1]["content"]


def test_dry_run_creates_nothing(split, fake_llm, store):
    fake_llm.script(GOOD)
    code, out = split("--dry-run", GOAL)
    assert code == 0 and [p["title"] for p in out["plan"]][0] == "Add cycle time metric"
    assert store.list(None) == []


def test_openai_api_with_llama_cpp_fallback(make_config, capsys, store, backend):
    with FakeLLM(models=["gemma"], llama_cpp=True) as llm:
        llm.script(GOOD)
        cfg = make_config(**backend, llm_api="openai", llm_url=llm.url, llm_model="gemma")
        assert split_cli.main(["--config", str(cfg), "--json", GOAL]) == 0
        first, second = llm.requests
        assert first["body"]["response_format"]["type"] == "json_schema"
        assert second["body"]["response_format"] == {"type": "json_object",
                                                     "schema": planning.plan_schema(3, 10)}
    assert len(json.loads(capsys.readouterr().out)["created"]) == 3


def test_prompt_file_list_is_cut(split, fake_llm, repo):
    for i in range(5):
        commit_file(repo, f"f{i}.py", "x\n")
    fake_llm.script(GOOD)
    split(GOAL, prompt_max_files=2)
    tracked = len(git.tracked_files(repo))  # real bd init commits files of its own
    assert tracked >= 6
    assert f"... and {tracked - 2} more files (list cut at 2)" in fake_llm.requests[0]["body"]["messages"][1]["content"]


def test_bad_usage_exits_2(make_config):
    cfg = make_config(task_backend="json")
    for args in ([], ["goal", "--bead", "x-1"], ["--min", "5", "--max", "2", "g"]):
        proc = subprocess.run([sys.executable, str(ROOT / "split_task.py"), "--config", str(cfg), *args],
                              capture_output=True, text=True)
        assert proc.returncode == 2, args


def test_a_failure_part_way_names_the_tasks_already_created(split, fake_llm, store, monkeypatch):
    fake_llm.script(GOOD)
    real_create, calls = type(store).create, []

    def failing_create(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise errors.UserError("disk full")
        return real_create(self, *args, **kwargs)

    monkeypatch.setattr(type(store), "create", failing_create)
    with pytest.raises(model.PartialCreateError) as err:
        split(GOAL)
    created = [t.id for t in store.list(None)]
    assert len(created) == 2 and all(task_id in str(err.value) for task_id in created)
    assert "disk full" in str(err.value)


def test_review_labels_every_subtask_not_the_epic(split, fake_llm, store):
    fake_llm.script(GOOD)
    code, out = split("--review", GOAL)
    assert code == 0
    assert model.NEEDS_REVIEW_LABEL not in store.get(out["parent"]).labels
    assert all(model.NEEDS_REVIEW_LABEL in store.get(i).labels for i in out["created"])
