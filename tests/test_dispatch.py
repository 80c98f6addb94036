"""dispatch_workers.py with a scripted agent: real git, worktrees, subprocesses and file locks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from crew import config as configuration
from crew import errors
from crew import names
from crew import orphans
from crew import processes
from crew import tasks as task_stores
from crew.cli import dispatch as dispatch_cli
from crew.cli import tasks as tasks_cli
from crew.dispatch import agent
from crew.dispatch import preflight as dispatch_preflight
from crew.dispatch import records
from crew.dispatch import status as dispatch_status
from crew.dispatch.loop import Dispatcher
from crew.tasks import model
from support.dispatching import (AGENT_COMMAND, DISPATCH, add_task, assert_clean_finish, dispatch, events,
                                 has_commit, main_file, merges_of, start_dispatcher, start_dispatcher_with_a_worker,
                                 wait_until)
from support.repos import commit_file, git

posix_only = pytest.mark.skipif(os.name == "nt", reason="uses POSIX signals and sh")


def test_parallel_workers_on_distinct_files_are_all_merged(agent_setup, repo, tmp_path):
    cfg, config, store = agent_setup()
    tasks = [add_task(store, f"Write {name}", "sleep 1", f"append {name} hello from {name}", files=[name])
             for name in ("a.txt", "b.txt", "c.txt")]
    proc = dispatch(cfg, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert sorted(summary["merged"]) == sorted(t.id for t in tasks)
    for task in tasks:
        assert store.get(task.id).status == "closed"
        assert merges_of(repo, task.id) == 1
    assert main_file(repo, "a.txt") == "hello from a.txt\n"
    # Two ran at once: the second started before the first exited.
    log = [e["event"] for e in events(repo) if e["event"] in ("worker_started", "worker_exited")]
    assert log[:2] == ["worker_started", "worker_started"]
    assert git(repo, "branch", "--list", "work/*") == ""
    assert_clean_finish(repo, Path(config.worktree_root))
    assert git(repo, "status", "--porcelain") == ""  # no toolkit file shows in the user's checkout
    # The user's checkout was fast-forwarded with main.
    assert (repo / "c.txt").read_text(encoding="utf-8") == "hello from c.txt\n"


def test_a_worker_that_commits_then_hangs_is_ended_merged_released_then_blocked(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(worker_timeout_secs=2, max_attempts=2)
    task = add_task(store, "Slow one", "append slow.txt progress", "hang")
    started = time.monotonic()
    proc = dispatch(cfg, "--json")
    assert time.monotonic() - started < 60
    assert proc.returncode == 1
    assert len(events(repo, "worker_timed_out")) == 2
    assert merges_of(repo, task.id) == 2  # the partial work of each attempt reached main
    assert main_file(repo, "slow.txt") == "progress\nprogress\n"
    final = store.get(task.id)
    assert final.status == "blocked" and "timed out" in final.notes
    assert json.loads(proc.stdout)["blocked"][0]["id"] == task.id


@posix_only
def test_a_grandchild_holding_on_does_not_hang_the_dispatcher(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(worker_timeout_secs=1, max_attempts=1)
    add_task(store, "Spawner", "grandchild")
    started = time.monotonic()
    proc = dispatch(cfg, timeout=60)
    assert time.monotonic() - started < 20, "the dispatcher waited for the grandchild"
    assert proc.returncode == 1
    pid = events(repo, "worker_started")[0]["pid"]
    assert not processes.group_alive(pid)  # the whole group, sleep 60 included, is gone


def test_a_crash_without_commits_is_released_then_blocked(agent_setup, repo):
    cfg, config, store = agent_setup(max_attempts=2)
    task = add_task(store, "Crasher", "crash")
    proc = dispatch(cfg)
    assert proc.returncode == 1
    final = store.get(task.id)
    assert final.status == "blocked"
    assert "no commits" in final.notes and "the agent crashed" in final.notes
    assert len(events(repo, "released")) == 1 and len(events(repo, "blocked")) == 1
    assert git(repo, "branch", "--list", "work/*") == ""


def test_each_attempt_has_its_own_log_named_in_its_events_and_notes(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(max_attempts=2)
    task = add_task(store, "Crasher", "crash")
    assert dispatch(cfg).returncode == 1
    logs = [f".dispatch_logs/{task.id}.{n}.log" for n in (1, 2)]
    assert [e["log"] for e in events(repo, "worker_started")] == logs
    assert [e["log"] for e in events(repo, "no_commits")] == logs
    notes = store.get(task.id).notes
    for log in logs:  # one attempt's output each, and each attempt's note names its own log
        assert (repo / log).read_text(encoding="utf-8").count("the agent crashed") == 1
        assert f"log {log} ends: " in notes and "RuntimeError: the agent crashed" in notes


def test_a_followups_file_main_already_tracks_is_left_as_it_is(json_agent_setup, repo):
    commit_file(repo, "followups.txt", "Our own list of ideas\n", "the project's own follow-ups file")
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Has an idea", "append x.txt x", "followup Idea of the agent")
    assert dispatch(cfg).returncode == 0
    assert [t.title for t in store.list(None)] == [task.title]  # no line became a task
    assert main_file(repo, "followups.txt") == "Our own list of ideas\nIdea of the agent\n"
    assert not (repo / config.suggested_tasks_file).exists()


def test_a_followups_file_the_branch_adds_in_a_subfolder_is_harvested(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    # Aider rooted in a subfolder writes the file there, and commits it.
    task = add_task(store, "Has an idea", "append x.txt x",
                    "append docs/followups.txt Document the docs -- AGENT: append docs.txt d",
                    "uncommitted src/followups.txt Test the source -- AGENT: append tests.txt t")
    assert dispatch(cfg).returncode == 0
    ideas = {t.title: t for t in store.list(None) if t.id != task.id}
    assert set(ideas) == {"Document the docs", "Test the source"}
    assert all(t.deps_of("discovered-from") == [task.id] for t in ideas.values())
    assert main_file(repo, "docs/followups.txt") is None and main_file(repo, "src/followups.txt") is None
    assert main_file(repo, "x.txt") == "x\n"


def test_a_task_reopened_after_max_attempts_gets_a_fresh_set(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(max_attempts=2)
    task = add_task(store, "Crasher", "crash")
    assert dispatch(cfg).returncode == 1
    assert store.get(task.id).status == "blocked"
    store.reopen(task.id)  # a person wants it tried again
    assert dispatch(cfg).returncode == 1
    assert [e["attempt"] for e in events(repo, "worker_started")] == [1, 2, 1, 2]
    assert len(events(repo, "attempts_reset")) == 1
    assert store.get(task.id).status == "blocked"
    # The new attempts write new logs: the first set's logs are kept as they were.
    assert [e["log"].rsplit(".", 2)[-2] for e in events(repo, "worker_started")] == ["1", "2", "3", "4"]


def test_uncommitted_changes_are_committed_and_merged(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Forgetful", "uncommitted notes.txt left behind")
    assert dispatch(cfg).returncode == 0
    assert main_file(repo, "notes.txt") == "left behind\n"
    subjects = git(repo, "log", "--format=%s", "main")
    assert f"dispatch: uncommitted work of {task.id} (worker exited)" in subjects
    assert main_file(repo, ".current_task.txt") is None and main_file(repo, ".aider.chat.history.md") is None


def test_followups_are_ingested_and_never_reach_main(agent_setup, repo):
    cfg, config, store = agent_setup()
    task = add_task(store, "Has ideas", "append x.txt x", "followup Add caching -- speed up -- files: cache.py",
                    files=["x.txt"])
    assert dispatch(cfg).returncode == 0
    followup = next(t for t in store.list(None) if t.title == "Add caching")
    assert followup.deps_of("discovered-from") == [task.id]
    assert followup.files == ["cache.py"]
    assert followup.status == "closed"  # ingested at once, then dispatched and merged too
    assert main_file(repo, "followups.txt") is None
    assert not (repo / "suggested_tasks.txt").exists()


def test_committed_followups_file_is_removed_from_the_branch(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(auto_ingest_suggestions=False)
    add_task(store, "Commits ideas", "append followups.txt Idea committed by the agent")
    assert dispatch(cfg).returncode == 0
    assert main_file(repo, "followups.txt") is None
    assert "Idea committed by the agent" in (repo / "suggested_tasks.txt").read_text(encoding="utf-8")


def test_tasks_sharing_a_file_never_run_at_once(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    first = add_task(store, "First on shared", "sleep 1", "append shared.txt one", files=["shared.txt"])
    second = add_task(store, "Second on shared", "sleep 1", "append shared.txt two", files=["shared.txt"])
    other = add_task(store, "Elsewhere", "sleep 1", "append other.txt x", files=["other.txt"])
    plan = dispatch_status.dry_run(config, store, 2)
    assert [(p["id"], p["start"]) for p in plan] == [(first.id, True), (second.id, False), (other.id, True)]
    assert plan[1]["reason"] == f"shared.txt will be changed by {first.id}"
    assert dispatch(cfg).returncode == 0
    timeline = [(e["event"], e["task_id"]) for e in events(repo) if e["event"] in ("worker_started", "worker_exited")]
    assert timeline.index(("worker_started", second.id)) > timeline.index(("worker_exited", first.id))
    assert main_file(repo, "shared.txt") == "one\ntwo\n"


def test_epics_are_never_dispatched_and_close_with_their_subtasks(agent_setup, repo):
    cfg, config, store = agent_setup()
    epic = store.create("Big goal", "the whole thing", issue_type="epic")
    subs = [store.create(f"Part {i}", f"AGENT: append part{i}.txt x", labels=[f"file:part{i}.txt"],
                         deps=[("discovered-from", epic.id)]) for i in range(2)]
    assert dispatch(cfg).returncode == 0
    assert all(store.get(s.id).status == "closed" for s in subs)
    assert store.get(epic.id).status == "closed"
    assert epic.id not in {e["task_id"] for e in events(repo, "worker_started")}


@posix_only
def test_a_second_dispatcher_is_refused(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    add_task(store, "Sleeper", "sleep 4", "append s.txt s")
    first = start_dispatcher_with_a_worker(cfg, repo)
    try:
        second = dispatch(cfg)
    finally:
        first.wait(timeout=60)
    assert second.returncode == 1
    assert f"another dispatcher is running on this repository (pid {first.pid}" in second.stderr
    assert first.returncode == 0


def test_the_breaker_stops_new_workers_when_every_attempt_fails(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(breaker_failures=2, max_attempts=5, max_workers=1)
    for i in range(4):
        add_task(store, f"Doomed {i}", "crash")
    proc = dispatch(cfg, "--json")
    assert proc.returncode == 1
    assert len(events(repo, "worker_started")) == 2
    assert "attempts in a row ended with no commits" in proc.stderr
    assert {"id": None, "reason": "the breaker stopped new workers"} in json.loads(proc.stdout)["waiting"]


@pytest.mark.parametrize("failpoint", ["after_claim", "after_worktree", "after_worker_exit",
                                       "during_leftover_commit", "during_merge"])
def test_killed_at_each_step_then_restarted_finishes_every_task_once(json_agent_setup, repo, failpoint):
    cfg, config, store = json_agent_setup()
    tasks = [add_task(store, f"Task {i}", f"append f{i}.txt line {i}", f"uncommitted u{i}.txt left {i}",
                      files=[f"f{i}.txt"]) for i in range(3)]
    killed = dispatch(cfg, env={"DISPATCH_FAILPOINT": failpoint})
    assert killed.returncode == 77, killed.stderr
    # A killed dispatcher leaves its worker running: wait for it, as a user would wait to restart.
    wait_until(lambda: not any(processes.is_same_process_alive(w.get("pid"), w.get("pid_start_time"))
                               for w in json.loads((repo / ".dispatch_state.json").read_text())["workers"]),
               None, "the killed dispatcher's workers end", timeout=30)
    again = dispatch(cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    for i, task in enumerate(tasks):
        assert store.get(task.id).status == "closed"
        assert merges_of(repo, task.id) == 1
        assert main_file(repo, f"f{i}.txt") == f"line {i}\n"
        assert main_file(repo, f"u{i}.txt") == f"left {i}\n"
    assert_clean_finish(repo, Path(config.worktree_root))


@pytest.mark.parametrize("agent_ended", [True, False], ids=["agent_ended", "agent_still_running"])
def test_killed_between_the_agents_start_and_its_record_the_attempt_is_judged_once(json_agent_setup, repo,
                                                                                   agent_ended):
    """The kill lands after the agent's process exists and before its pid is recorded: the restart
    adopts the agent if it still runs, else judges what it did; never another run on top of it."""
    cfg, config, store = json_agent_setup()
    cues = [] if agent_ended else ["sleep 3"]
    task = add_task(store, "Task", *cues, "append f.txt line", "uncommitted u.txt left", files=["f.txt"])
    killed = dispatch(cfg, env={"DISPATCH_FAILPOINT": "after_agent_start"})
    assert killed.returncode == 77, killed.stderr
    [worker] = [records.Worker.from_json(w)
                for w in json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))["workers"]]
    assert worker.pid is None  # the kill came before its record
    if agent_ended:
        wait_until(lambda: not orphans.marked(records.process_mark(config.root, worker), everywhere=True), None,
                   "the unrecorded agent ends", timeout=30)
    again = dispatch(cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    assert events(repo, "worker_started") == []  # the agent the killed run started is the only one
    assert [e["task_id"] for e in events(repo, "adopted")] == ([] if agent_ended else [task.id])
    assert store.get(task.id).status == "closed" and merges_of(repo, task.id) == 1
    assert main_file(repo, "f.txt") == "line\n"
    assert main_file(repo, "u.txt") == "left\n"
    assert_clean_finish(repo, Path(config.worktree_root))


@posix_only
def test_a_live_worker_is_adopted_after_the_dispatcher_is_killed(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Long runner", "sleep 3", "append long.txt done")
    first = start_dispatcher_with_a_worker(cfg, repo)
    first.kill()
    first.communicate()
    again = dispatch(cfg)
    assert again.returncode == 0, again.stderr
    assert [e["task_id"] for e in events(repo, "adopted")] == [task.id]
    assert len(events(repo, "worker_started")) == 1  # not run twice
    assert merges_of(repo, task.id) == 1 and store.get(task.id).status == "closed"


@posix_only
def test_first_ctrl_c_lets_running_workers_finish_and_starts_nothing_new(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(max_workers=1)
    first = add_task(store, "Running", "sleep 2", "append r.txt r")
    later = add_task(store, "Not yet", "append n.txt n")
    proc = start_dispatcher_with_a_worker(cfg, repo)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "starting nothing new" in out
    assert store.get(first.id).status == "closed" and merges_of(repo, first.id) == 1
    assert store.get(later.id).status == "open"


def stopped_by_a_second_ctrl_c(cfg: Path, repo: Path, task: model.Task) -> str:
    """Run the dispatcher as a process and press Ctrl-C twice once the agent has committed; its output."""
    proc = start_dispatcher_with_a_worker(cfg, repo)
    wait_until(lambda: has_commit(repo, f"work/{task.id}"), proc, "the agent's commit")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 130, output
    return output

@posix_only
def test_second_ctrl_c_ends_workers_keeps_their_branches_and_releases_their_tasks(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Stubborn", "append partial.txt partial", "hang")
    output = stopped_by_a_second_ctrl_c(cfg, repo, task)
    assert not processes.group_alive(events(repo, "worker_started")[0]["pid"])
    assert git(repo, "branch", "--list", "--format=%(refname:short)", f"work/{task.id}") == f"work/{task.id}"
    # Nothing is left in progress after the stop: its task is released at once, its branch kept.
    stopped = store.get(task.id)
    assert stopped.status == "open" and not stopped.assignee, output
    assert stopped.notes.splitlines()[-1] == f"attempt 1 stopped by Ctrl-C; its branch work/{task.id} is kept for the next run"
    # Recorded as ended before the kill: the next run merges the work (and releases the task again,
    # naming the merge), as after a timeout, and the stopped attempt counts toward nothing.
    recorded = json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))["workers"]
    assert [(w["task_id"], w["ended"]) for w in recorded] == [(task.id, "stopped by Ctrl-C")]
    cfg2, *_ = json_agent_setup(max_attempts=1, worker_timeout_secs=2)
    again = dispatch(cfg2, "--json")
    assert again.returncode == 1
    assert [e["reason"] for e in events(repo, "released")][:1] == ["attempt 1 stopped by Ctrl-C"]
    released = events(repo, "released")[1]
    assert released["reason"].startswith(f"attempt 1 stopped by Ctrl-C; log .dispatch_logs/{task.id}.1.log; "
                                         "its work is partial and already on main (merge ")
    # It ran again (attempt 1 once more, which timed out, and so was the last of max_attempts 1).
    assert [e["attempt"] for e in events(repo, "worker_started")] == [1, 1]
    final = store.get(task.id)
    assert final.status == "blocked" and final.notes.splitlines()[-1].startswith("attempt 1 timed out")
    assert final.notes.endswith("(after 1 attempts)")
    assert main_file(repo, "partial.txt") == "partial\npartial\n"


@posix_only
def test_a_task_closed_after_the_stop_released_it_is_not_claimed_again_and_its_branch_stays_unmerged(
        json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Stubborn", "append partial.txt partial", "hang")
    output = stopped_by_a_second_ctrl_c(cfg, repo, task)
    assert store.get(task.id).status == "open", output
    store.close(task.id, "done by hand")  # the person's decision stands over the stopped attempt's work
    again = dispatch(cfg, "--json")
    assert again.returncode == 1 and "not merged: the task changed meanwhile (closed); branch kept" in again.stderr
    assert store.get(task.id).status == "closed" and main_file(repo, "partial.txt") is None
    assert has_commit(repo, f"work/{task.id}")
    assert [e["task_id"] for e in events(repo, "stale_branch")] == [task.id]
    assert [e.get("reason") for e in events(repo, "claimed")] == [None]  # only the first run's claim


def test_task_text_reaches_the_agent_verbatim_and_never_a_shell(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    title = 'Quote " \' $(touch /tmp/pwned) `touch /tmp/pwned2` ; rm -rf ~ & echo %PATH% | more'
    task = store.create(title, "line one\n$(whoami)\nAGENT: copy-message message.txt\nAGENT: argv argv.json",
                        labels=["file:src/app.py", "file:--evil", "file:a&b.py"])
    assert dispatch(cfg).returncode == 0
    message = main_file(repo, "message.txt")
    assert message.startswith(f"Task {task.id}: {title}\n\nline one\n$(whoami)\n")
    argv = json.loads(main_file(repo, "argv.json"))
    assert argv[1:] == ["src/app.py"]  # unsafe file names never reach the command line
    assert not Path("/tmp/pwned").exists() and not Path("/tmp/pwned2").exists()


def test_worker_environment_and_placeholders(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(worker_command=[sys.executable, "-c",
        "import os, sys, json, subprocess; open('env.json', 'w').write(json.dumps([sys.argv[1:], "
        "{k: v for k, v in os.environ.items() if k.startswith('DISPATCH_')}])); "
        "subprocess.run(['git', 'add', 'env.json']); subprocess.run(['git', 'commit', '-qm', 'env'])",
        "{task_id}", "{branch}", "{model}", "{files}"], worker_model="tiny:1b")
    task = store.create("Env", labels=["file:a.py", "model:qwen3:8b"])
    assert dispatch(cfg).returncode == 0
    args, env = json.loads(main_file(repo, "env.json"))
    assert args == [task.id, f"work/{task.id}", "qwen3:8b", "a.py"]
    assert env["DISPATCH_TASK_ID"] == task.id and env["DISPATCH_BRANCH"] == f"work/{task.id}"
    assert env["DISPATCH_WORKTREE"].endswith(task.id)


def test_default_aider_command(make_config, repo):
    config = configuration.load_config(str(make_config(llm_api="openai", llm_url="http://127.0.0.1:8080")))
    task = model.Task(id="proj-1", title="t", labels=["file:a.py", "file:b/c.py"])
    argv, env = agent.worker_argv(config, task, Path("/w/.current_task.txt"), "work/proj-1", Path("/w"))
    assert argv == ["aider", "--message-file", "/w/.current_task.txt", "--yes-always", "--no-gitignore",
                    "--no-check-update", "--no-analytics", "--no-show-model-warnings", "--no-pretty",
                    "--no-show-release-notes",  # else its first run opens a web browser
                    "--git-commit-verify",  # else it commits past the user's hooks
                    "--map-tokens", "1024",  # not Aider's 4096 of a small model's context
                    "--model", "openai/qwen2.5-coder:7b", "--openai-api-base", "http://127.0.0.1:8080/v1",
                    "a.py", "b/c.py"]
    assert env["OPENAI_API_KEY"]
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"  # no price list fetched from the internet
    config = configuration.load_config(str(make_config(worker_map_tokens=0, worker_edit_format="whole")))
    argv, env = agent.worker_argv(config, task, Path("/w/m"), "b", Path("/w"))
    assert argv[argv.index("--edit-format") + 1] == "whole"  # Aider's choice by the model's name, overridden
    assert "ollama_chat/qwen2.5-coder:7b" in argv and env["OLLAMA_API_BASE"] == "http://127.0.0.1:9"
    assert argv[argv.index("--map-tokens") + 1] == "0"  # no repo map at all
    # One context size for Aider's every request to Ollama, so the model is loaded once.
    assert argv[argv.index("--model-settings-file") + 1] == str(repo / ".dispatch_aider_model_settings.json")
    agent.write_model_settings(config)
    assert json.loads((repo / ".dispatch_aider_model_settings.json").read_text(encoding="utf-8")) == [
        {"name": "aider/extra_params", "extra_params": {"num_ctx": config.llm_num_ctx}}]


def test_preflight_names_what_is_missing(make_config, repo, fake_llm, monkeypatch):
    cfg = make_config(task_backend="json", worker_command=["no-such-agent-xyz"])
    proc = dispatch(cfg)  # a command named in the configuration: bad configuration, exit 2
    assert proc.returncode == 2 and proc.stderr == "error: worker_command 'no-such-agent-xyz' was not found on PATH\n"
    (repo / ".gitignore").write_text("followups.txt\n", encoding="utf-8")
    proc = dispatch(make_config(task_backend="json", worker_command=AGENT_COMMAND))
    assert proc.returncode == 1 and "followups.txt is ignored by git" in proc.stderr
    (repo / ".gitignore").unlink()
    bin_dir = repo.parent / "bin"  # an `aider` on PATH, so the check reaches the model
    bin_dir.mkdir()
    (bin_dir / "aider").write_text("#!/bin/sh\n", encoding="utf-8")
    (bin_dir / "aider").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = configuration.load_config(str(make_config(llm_url=fake_llm.url, worker_model="missing:7b")))
    with pytest.raises(errors.UserError, match="model 'missing:7b' not found .*ollama pull missing:7b"):
        dispatch_preflight.preflight(config)
    dispatch_preflight.preflight(configuration.load_config(str(make_config(llm_url=fake_llm.url))))  # all there


def test_preflight_checks_the_gate_and_setup_commands(json_agent_setup, repo):
    for key in ("merge_gate_command", "worktree_setup_command"):
        cfg, config, store = json_agent_setup(**{key: ["no-such-check-xyz", "-q"]})
        add_task(store, f"Never runs ({key})", "append x.txt x")
        proc = dispatch(cfg)
        assert proc.returncode == 2 and proc.stderr == f"error: {key} 'no-such-check-xyz' was not found on PATH\n"
        assert events(repo, "worker_started") == []
    # A path is looked up in the repository, where a worktree has it too.
    commit_file(repo, "checks/run.py", "print('ok')\n")
    cfg, config, store = json_agent_setup(merge_gate_command=["checks/missing.py"])
    proc = dispatch(cfg)
    assert proc.returncode == 2
    assert proc.stderr == "error: merge_gate_command 'checks/missing.py' was not found in the repository\n"


def test_preflight_refuses_without_a_git_identity(json_agent_setup, repo, tmp_path, monkeypatch):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Would commit", "append x.txt x")
    gitconfig = tmp_path / "no-identity.gitconfig"  # no auto-detected name@host either, as on many machines
    gitconfig.write_text("[user]\n\tuseConfigOnly = true\n", encoding="utf-8")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(name)
    proc = dispatch(cfg)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "git has no identity to commit with" in proc.stderr
    assert events(repo, "worker_started") == [] and store.get(task.id).status == "open"
    monkeypatch.setenv("GIT_AUTHOR_NAME", "A")  # the variables are enough
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "a@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "A")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "a@example.com")
    assert dispatch(cfg).returncode == 0 and store.get(task.id).status == "closed"


def test_status_while_running_and_after(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Visible", "sleep 2", "append v.txt v")
    proc = start_dispatcher_with_a_worker(cfg, repo)
    status = json.loads(dispatch(cfg, "--status", "--json").stdout)
    assert status["dispatcher"]["pid"] == proc.pid
    assert [(w["task_id"], w["log"]) for w in status["workers"]] == [(task.id, f".dispatch_logs/{task.id}.1.log")]
    assert status["counts"] == {"in_progress": 1}
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    status = json.loads(dispatch(cfg, "--status", "--json").stdout)
    assert status["dispatcher"] is None and status["workers"] == [] and status["counts"] == {"closed": 1}
    assert store.get(task.id).close_reason.endswith(f"; log .dispatch_logs/{task.id}.1.log")


def test_branch_names_are_valid_refs():
    assert names.branch_name("work/{task_id}", "proj-1") == "work/proj-1"
    assert names.branch_name("work/{task_id}", "a b..c~^:?*[\\x.lock") == "work/a-b-c-x-lock"
    assert names.branch_name("work/{task_id}", "x.lock/.hidden/y") == "work/x-lock/-hidden/y"
    for task_id in ("proj-1", "..@{x}//y.lock", "a/.b", "a.lock/b", "-upload-pack=x", "/.", "a\nb", "main/../x"):
        name = names.branch_name("w/{task_id}", task_id)
        assert subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True).returncode == 0, name


def test_demo_runs_end_to_end(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the demo's scratch folder
    assert dispatch_cli.main(["--demo"]) == 0
    out = capsys.readouterr().out
    [demo_repo] = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("Demo repository: ")]
    assert git(Path(demo_repo), "status", "--porcelain", "--untracked-files=all") == ""
    assert "closed   Resolve merge conflict: work/demo-repo-2" in out
    assert "Merge work/demo-repo-2: Make the UI green (demo-repo-2)" in out  # merged after the conflict
    assert "closed   Document the release process" in out  # the follow-up was ingested and run
    assert out.count("  closed   ") == 7 and "blocked" not in out


@posix_only
def test_qwen_agent_wrapper_passes_arguments_through(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.json"
    (bin_dir / "aider").write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                                   f"json.dump([sys.argv[1:], os.environ['OLLAMA_API_BASE']], open({str(record)!r}, 'w'))\n",
                                   encoding="utf-8")
    (bin_dir / "aider").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("QWEN_MODEL", "qwen3-coder:30b")
    script = DISPATCH.parent / "scripts" / "qwen-agent.sh"
    subprocess.run(["sh", str(script), "/w/.current_task.txt", "a $(x).py", "b;c.py"], check=True)
    argv, base = json.loads(record.read_text(encoding="utf-8"))
    assert argv[:2] == ["--message-file", "/w/.current_task.txt"]
    assert argv[-4:] == ["--model", "ollama_chat/qwen3-coder:30b", "a $(x).py", "b;c.py"]
    assert base == "http://127.0.0.1:11434"


def test_a_recorded_pid_now_used_by_another_process_is_never_signalled(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    task = add_task(store, "Was running", "append w.txt w")
    assert store.claim(task.id, config.actor)
    # The record names this very test process, but with another start time: a recycled pid.
    (repo / ".dispatch_state.json").write_text(json.dumps({"dispatcher": None, "merge_queue": [], "attempts": {},
        "workers": [{"slot": 1, "task_id": task.id, "title": task.title, "branch": f"work/{task.id}",
                     "worktree": str(Path(config.worktree_root) / task.id), "base": git(repo, "rev-parse", "main"),
                     "attempt": 1, "started_at": time.time(), "deadline": time.time() + 999, "kind": "task",
                     "pid": os.getpid(), "pid_start_time": 1.0}]}), encoding="utf-8")
    assert dispatch(cfg).returncode == 0  # had it signalled this process, the test would be dead
    assert events(repo, "adopted") == []
    assert store.get(task.id).status == "closed" and merges_of(repo, task.id) == 1


def test_worker_instructions_and_setup_command(json_agent_setup, repo):
    commit_file(repo, "RULES.md", "Dashboard tasks belong in generate_dashboard.py.\n")
    commit_file(repo, ".gitignore", "setup-marker.txt\n")
    setup = [sys.executable, "-c", "open('setup-marker.txt', 'w').write('set up')"]
    cfg, config, store = json_agent_setup(worker_instructions="@RULES.md", worktree_setup_command=setup)
    add_task(store, "Record", "copy-message message.txt", "argv argv.json")
    assert dispatch(cfg).returncode == 0
    message = main_file(repo, "message.txt")
    assert message.rstrip().endswith("Dashboard tasks belong in generate_dashboard.py.")
    assert "Write follow-up ideas for later tasks, one a line, to followups.txt" in message
    assert main_file(repo, "setup-marker.txt") is None  # the setup ran, and its ignored output stayed out


@posix_only
def test_watch_picks_up_tasks_added_later_until_ctrl_c(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(poll_interval_secs=0.2)
    proc = start_dispatcher(cfg, "--watch")
    try:
        time.sleep(1.5)
        assert proc.poll() is None  # nothing to do, and still watching
        late = add_task(store, "Arrives later", "append late.txt late")
        wait_until(lambda: store.get(late.id).status == "closed", proc, "the late task closed", timeout=30)
        assert main_file(repo, "late.txt") == "late\n"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 130


def test_hostile_task_ids_and_a_linked_message_file_stay_inside(json_agent_setup, repo, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n", encoding="utf-8")
    cfg, config, store = json_agent_setup()
    # A hand-written queue may hold any id; the branch may carry a link named like the message file.
    (repo / "task_queue.json").write_text(json.dumps({"tasks": [
        {"id": "../../etc/x y", "title": "Odd id", "description": "AGENT: append odd.txt odd"}]}), encoding="utf-8")
    (repo / ".current_task.txt").symlink_to(outside)
    git(repo, "add", "-f", ".current_task.txt")
    git(repo, "commit", "-qm", "a link named like the message file")
    assert dispatch(cfg).returncode == 0
    assert outside.read_text(encoding="utf-8") == "untouched\n"
    assert main_file(repo, "odd.txt") == "odd\n"
    assert (repo / ".dispatch_logs" / "etc-x-y.1.log").exists()
    assert not (repo.parent / "etc").exists()


def test_an_agent_that_cannot_be_started_is_a_failed_attempt(json_agent_setup, repo):
    # Preflight checks the command once; it can still vanish before a later start.
    cfg, config, store = json_agent_setup(worker_command=[str(repo.parent / "gone-agent"), "{message_file}"],
                                          max_attempts=2)
    task = add_task(store, "Never runs", "append x.txt x")
    summary = Dispatcher(config, store, 1, out=lambda *_: None).run()
    assert [b["id"] for b in summary["blocked"]] == [task.id]
    assert "could not start the agent" in store.get(task.id).notes
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_parent_folders_of_a_tasks_files_exist_when_the_agent_starts(json_agent_setup, repo, tmp_path):
    # Aider finds no git repository for a file when neither it nor its folder exists.
    outside = tmp_path / "outside"
    outside.mkdir()
    (repo / "linked").symlink_to(outside)
    git(repo, "add", "linked")
    git(repo, "commit", "-qm", "a link a branch may carry")
    cfg, config, store = json_agent_setup(worker_command=[sys.executable, "-c",
        "import os, subprocess; open('seen.txt', 'w').write(str(os.path.isdir('docs/guide'))); "
        "subprocess.run(['git', 'add', 'seen.txt']); subprocess.run(['git', 'commit', '-qm', 'seen'])"])
    store.create("Write the guide", labels=["file:docs/guide/usage.md", "file:linked/sub/x.md"])
    assert dispatch(cfg).returncode == 0
    assert main_file(repo, "seen.txt") == "True"
    assert list(outside.iterdir()) == []  # never a folder made through a link


def test_the_task_message_names_the_files_once(make_config, repo, capsys):
    cfg = str(make_config(task_backend="json", task_prefix="proj"))
    assert tasks_cli.main(["--config", cfg, "create", "Add docs", "-d", "Explain usage.", "--file", "docs/usage.md",
                           "--file", "README.md", "--json"]) == 0
    task_id = json.loads(capsys.readouterr().out)[0]["id"]
    config = configuration.load_config(cfg)
    message = agent.task_message(config, task_stores.open_task_store(config).get(task_id))
    assert message.count("docs/usage.md") == 1 and "Files to change: docs/usage.md, README.md" in message
    assert message.startswith(f"Task {task_id}: Add docs\n\nExplain usage.\n\nFiles to change:")


SETUP_THAT_LEAVES_FILES = [sys.executable, "-c",
                           "import os; open('artifact.txt', 'w').write('made by setup'); os.mkdir('cache'); "
                           "open('cache/blob', 'w').write('x'); open('README.md', 'a').write('touched by setup')"]


def test_what_the_setup_command_leaves_is_never_committed_as_the_agents_work(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(worktree_setup_command=SETUP_THAT_LEAVES_FILES)
    add_task(store, "Leaves work", "append ok.txt fine", "uncommitted left.txt mine")
    assert dispatch(cfg).returncode == 0
    assert main_file(repo, "ok.txt") == "fine\n" and main_file(repo, "left.txt") == "mine\n"
    assert main_file(repo, "artifact.txt") is None and main_file(repo, "cache/blob") is None
    assert main_file(repo, "README.md") == "# proj\n"

