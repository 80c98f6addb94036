"""A red main is not a branch's fault: a branch's failed gate is blamed on it only once the gate
passed on main as it is; while main fails, merges are held and no fix task is filed."""
from __future__ import annotations

import json
import signal
import sys

import pytest

from crew.dispatch import main_checks
from crew.report import events as event_log
from crew.report import model as report_model
from crew.dispatch.records import MainCheck
from support.dispatching import add_task, dispatch, events, main_file, merges_of, start_dispatcher, wait_until
from support.repos import commit_file, git

Blame, Merges = main_checks.Blame, main_checks.Merges
MAIN, MOVED = "a" * 40, "b" * 40


@pytest.mark.parametrize("check, blame", [
    (None, Blame.CHECK_MAIN),
    (MainCheck(MOVED, True, 0.0), Blame.CHECK_MAIN),  # main's verdict is for another commit
    (MainCheck(MAIN, True, 0.0), Blame.BRANCH),
    (MainCheck(MAIN, False, 0.0), Blame.MAIN),
])
def test_a_failure_on_main_is_blamed_on_the_branch_only_once_main_passed(check, blame):
    assert main_checks.blame(check, MAIN) is blame


@pytest.mark.parametrize("check, main, now, merges", [
    (None, MAIN, 0.0, Merges.GO),
    (MainCheck(MAIN, True, 0.0), MAIN, 10_000.0, Merges.GO),
    (MainCheck(MAIN, False, 100.0), MAIN, 399.0, Merges.HELD),
    (MainCheck(MAIN, False, 100.0), MAIN, 400.0, Merges.RECHECK),  # a missing tool never moves main
    (MainCheck(MAIN, False, 100.0), MOVED, 101.0, Merges.GO),  # a main that moved is not known to fail
])
def test_merges_are_held_while_main_fails_until_it_moves_or_is_checked_again(check, main, now, merges):
    assert main_checks.merges(check, main, now, 300) is merges


# The gate's Python lacks the project's test runner, as on the machine where a real run showed it.
NO_TOOL = [sys.executable, "-c", "import sys; sys.exit('No module named pytest')"]


def gate_needs(path) -> list[str]:
    """A gate that passes once `path` exists: in the checkout (a fix committed to main), or
    outside the repository (a tool installed on the machine)."""
    return [sys.executable, "-c", f"import os, sys; sys.exit(0 if os.path.exists({str(path)!r}) else "
                                  f"'{path} is missing')"]


def fix_tasks(store) -> list:
    return [t for t in store.list(None) if t.title.startswith("Fix failing checks")]


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_gate_failing_on_main_too_files_no_fix_task_and_a_run_ends_saying_main_fails(json_agent_setup, repo,
                                                                                       parallelism):
    cfg, config, store = json_agent_setup(merge_gate_command=NO_TOOL, merge_gate_parallelism=parallelism,
                                          max_workers=2)
    tasks = [add_task(store, "Add a", "append a.txt a"), add_task(store, "Add b", "append b.txt b")]
    before = git(repo, "rev-parse", "main")
    proc = dispatch(cfg)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert git(repo, "rev-parse", "main") == before
    assert not fix_tasks(store)
    assert {store.get(t.id).status for t in tasks} == {"in_progress"}  # their branches wait to merge
    said = [line for line in proc.stdout.splitlines() if "main fails its checks" in line]
    assert said[0].startswith(f"main fails its checks at {before[:10]}: merges wait until it passes; no fix task "
                              "is filed meanwhile") and said[0].endswith("No module named pytest")
    assert f"waiting: -: main fails its checks at {before[:10]}: merges wait until it passes" in proc.stdout
    checked = events(repo, "main_checked")
    assert [(e["commit"], e["passed"]) for e in checked] == [(before, False)]  # said once
    assert not [e for e in events(repo, "gate_failed") if e["counts"]]
    # (With parallel gates an entry behind may also fail first while the one ahead still gates.)
    assert "main fails its checks" in {e.get("reason") for e in events(repo, "gate_failed")}
    report = report_model.build_report(event_log.EventReader(repo / ".dispatch_logs" / "events.jsonl"),
                                       repo / ".dispatch_logs")
    assert [m.kind for m in report.marks if m.kind.startswith("main_")] == ["main_failed"]
    status = json.loads(dispatch(cfg, "--status", "--json").stdout)
    assert status["main_check"]["holds_merges"] and status["main_check"]["commit"] == before
    assert "main fails its checks at" in dispatch(cfg, "--status").stdout
    # The next run knows main fails: it gates nothing, and says so again.
    again = dispatch(cfg)
    assert again.returncode == 1 and "main fails its checks" in again.stdout
    assert not fix_tasks(store) and len(events(repo, "main_checked")) == 1


def test_a_failure_with_main_passing_is_the_branch_s_after_main_was_checked(json_agent_setup, repo):
    commit_file(repo, "f.txt", "ok\n")
    gate = [sys.executable, "-c", "import pathlib, sys; sys.exit('bad' in pathlib.Path('f.txt').read_text())"]
    cfg, config, store = json_agent_setup(merge_gate_command=gate, max_merge_retries=0)
    task = add_task(store, "Break it", "append f.txt bad")
    dispatch(cfg)
    assert store.get(task.id).status == "blocked"  # the failure counted against it
    names = [e["event"] for e in events(repo) if e["event"] in ("main_checked", "gate_failed")]
    assert names == ["main_checked", "gate_failed"]  # main was checked before the failure counted
    assert events(repo, "main_checked")[0]["passed"] is True
    assert [e["counts"] for e in events(repo, "gate_failed")] == [True]


@pytest.mark.skipif(sys.platform == "win32", reason="stopped with SIGINT")
@pytest.mark.parametrize("parallelism", [1, 2])
def test_watching_a_red_main_merges_once_main_is_fixed_or_its_checks_pass_again(json_agent_setup, repo, tmp_path,
                                                                                parallelism):
    tool = tmp_path / "tool-installed"
    # Passes once a fix is committed to main, or once the "tool" is installed on the machine.
    gate = [sys.executable, "-c", f"import os, sys; sys.exit(0 if os.path.exists('fixed.txt') or "
                                  f"os.path.exists({str(tool)!r}) else 'the checks fail')"]
    cfg, config, store = json_agent_setup(merge_gate_command=gate, poll_interval_secs=0.2, main_recheck_secs=1,
                                          merge_gate_parallelism=parallelism)
    first = add_task(store, "Add a", "append a.txt a")
    proc = start_dispatcher(cfg, "--watch")
    try:
        wait_until(lambda: events(repo, "main_checked"), proc, "main checked")
        commit_file(repo, "fixed.txt", "a person fixed main\n")  # main moves: its branches are gated again
        wait_until(lambda: merges_of(repo, first.id) == 1, proc, "the merge once main was fixed", timeout=90)
        # Main red again, from the environment this time: nothing moves main, it is checked again.
        git(repo, "rm", "-q", "fixed.txt")
        git(repo, "commit", "-q", "-m", "break main")
        second = add_task(store, "Add b", "append b.txt b")
        wait_until(lambda: [e for e in events(repo, "main_checked") if not e["passed"]][1:], proc, "main failing again")
        tool.write_text("installed\n", encoding="utf-8")
        wait_until(lambda: merges_of(repo, second.id) == 1, proc, "the merge once the checks pass", timeout=90)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert not fix_tasks(store)
    assert main_file(repo, "a.txt") == "a\n" and main_file(repo, "b.txt") == "b\n"
    rechecks = [e for e in events(repo, "main_checked") if e["commit"] == events(repo, "main_checked")[-1]["commit"]]
    assert [e["passed"] for e in rechecks][-2:] == [False, True]
