"""Retries that learn: a task's next attempt is told, from the task's notes, what happened before."""
from __future__ import annotations

import sys
from pathlib import Path

from crew import config as configuration
from crew import names
from crew.dispatch import agent
from crew.tasks import model
from support.dispatching import add_task, dispatch, main_file
from support.repos import commit_file, git


def history_in(message: str) -> list[str]:
    """The lines of a message's "What happened before" section (its heading first)."""
    assert agent.HISTORY_HEADING in message, message[-3000:]
    return message[message.index(agent.HISTORY_HEADING):].split("\n\n", 1)[0].splitlines()


def told_in_attempt(repo: Path, task_id: str, attempt: int) -> list[str]:
    """That section of the message an attempt's agent printed (cue print-message) into its log."""
    return history_in((repo / ".dispatch_logs" / f"{task_id}.{attempt}.log").read_text(encoding="utf-8"))


def test_the_next_attempt_is_told_the_log_tail_of_one_that_made_no_commits(agent_setup, repo):
    cfg, config, store = agent_setup(max_attempts=2)
    task = add_task(store, "Flaky", "print-message", "say litellm.APIConnectionError: model not found")
    assert dispatch(cfg).returncode == 1
    first_log = (repo / ".dispatch_logs" / f"{task.id}.1.log").read_text(encoding="utf-8")
    assert agent.HISTORY_HEADING not in first_log  # the first attempt had nothing to be told
    told = told_in_attempt(repo, task.id, 2)
    assert len(told) == 2
    assert told[1].startswith(f"- attempt 1 exited with no commits; log .dispatch_logs/{task.id}.1.log ends: ")
    assert told[1].endswith(" | litellm.APIConnectionError: model not found")


def test_the_next_attempt_after_a_timeout_is_told_its_partial_work_is_on_main(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(worker_timeout_secs=2, max_attempts=2)
    task = add_task(store, "Slow one", "copy-message told.txt", "hang")
    assert dispatch(cfg).returncode == 1
    first_merge = git(repo, "log", "--merges", "--first-parent", "--reverse", "--format=%H", "main").split()[0]
    told = history_in(main_file(repo, "told.txt"))  # the second attempt's message, merged as its partial work
    assert told[1:] == [f"- attempt 1 timed out; log .dispatch_logs/{task.id}.1.log; its work is partial and "
                        f"already on main (merge {first_merge[:10]})"]


def test_a_huge_log_and_many_attempts_keep_what_the_next_one_is_told_within_the_cap(json_agent_setup, repo):
    cfg, config, store = json_agent_setup(max_attempts=6, breaker_failures=10)
    # As long a description as the store holds, printed twice by each attempt.
    task = add_task(store, "Noisy", "print-message", "say " + "x" * (names.TEXT_LIMIT - 100) + " the end")
    assert dispatch(cfg).returncode == 1
    assert (repo / ".dispatch_logs" / f"{task.id}.5.log").stat().st_size > 2 * (names.TEXT_LIMIT - 100)
    told = told_in_attempt(repo, task.id, 6)
    assert len("\n".join(told)) <= agent.HISTORY_CHARS
    # Newest first: the last attempts whole, an older one cut, the oldest left out.
    assert [line[:12] for line in told[1:4]] == ["- attempt 5 ", "- attempt 4 ", "- attempt 3 "]
    assert told[1].endswith("x the end") and told[-1].endswith("...")
    assert not any(line.startswith("- attempt 1 ") for line in told)


def test_a_task_given_up_after_failing_checks_tells_its_next_attempt_their_output(json_agent_setup, repo):
    commit_file(repo, "f.txt", "ok\n")
    gate = [sys.executable, "-c", "import pathlib, sys\nif 'bad' in pathlib.Path('f.txt').read_text():\n"
                                  "    sys.exit('FAILED test_f: f.txt says bad')\n"]
    cfg, config, store = json_agent_setup(merge_gate_command=gate, max_merge_retries=0)
    task = add_task(store, "Break it", "print-message", "append f.txt bad")
    dispatch(cfg)
    blocked = store.get(task.id)
    assert blocked.status == "blocked"
    assert "still does not merge after 0 conflict or check tasks" in blocked.notes
    assert "the checks' output ends: " in blocked.notes and "FAILED test_f: f.txt says bad" in blocked.notes
    store.reopen(task.id)  # a person tries it again
    dispatch(cfg)
    told = told_in_attempt(repo, task.id, 2)
    assert "the checks' output ends: " in told[1] and told[1].endswith("FAILED test_f: f.txt says bad")


def test_what_happened_before_quotes_the_notes_newest_first_within_the_cap():
    assert agent.what_happened_before("") == "" and agent.what_happened_before(" \n\n ") == ""
    told = agent.what_happened_before("attempt 1 exited\nAGENT: crash\n\nattempt 2 timed out\n")
    # Each note an item: a line of an agent's output never starts a line of the message.
    assert told.splitlines() == [agent.HISTORY_HEADING, "- attempt 2 timed out", "- AGENT: crash",
                                 "- attempt 1 exited"]
    many = "\n".join(f"attempt {n} exited; log ends: " + "y" * 400 for n in range(1, 21))
    told = agent.what_happened_before(many)
    assert len(told) <= agent.HISTORY_CHARS and told.endswith("...")
    assert told.splitlines()[1].startswith("- attempt 20 ") and "- attempt 15 " not in told
    one = agent.what_happened_before("z" * 1_000_000)
    assert len(one) == agent.HISTORY_CHARS and one.splitlines()[1].startswith("- zzz")
    assert agent.what_happened_before("short note", limit=10) == ""  # not even the heading fits


def test_the_message_tells_what_happened_before_between_the_task_and_the_instructions(make_config):
    config = configuration.load_config(str(make_config(task_backend="json", task_prefix="proj")))
    fresh = model.Task(id="proj-1", title="Add docs", description="Explain usage.")
    assert agent.HISTORY_HEADING not in agent.task_message(config, fresh)
    retried = model.Task(id="proj-1", title="Add docs", description="Explain usage.", notes="attempt 1 timed out")
    message = agent.task_message(config, retried)
    assert f"Explain usage.\n\n{agent.HISTORY_HEADING}\n- attempt 1 timed out\n\nInstructions:" in message


def test_one_line_tail_keeps_the_last_lines_of_output_on_one_line():
    assert names.one_line_tail("a\n\nb\r\nc\u2028d\x0be", lines=4) == "b | c | d | e"
    assert names.one_line_tail("", 5) == "" and names.one_line_tail("x" * 1000, limit=10) == "x" * 10
