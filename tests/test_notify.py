"""A word when a person is needed: notify_command, run with one event as JSON on its stdin, off
the loop; one that fails or hangs is reported once and never holds the run up."""
from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import psutil
import pytest

from crew import config as configuration
from crew import errors
from crew.dispatch import notify
from crew.report.events import EventName
from support.dispatching import add_task, dispatch, events, merges_of

# The notifier: appends {"argv": its arguments, "event": what came on stdin} as one line to argv[2].
RECORDER = """
import json, pathlib, sys
event = json.loads(sys.stdin.buffer.read().decode("utf-8"))
with open(sys.argv[2], "a", encoding="utf-8") as out:
    out.write(json.dumps({"argv": sys.argv[1:], "event": event}) + "\\n")
"""
FAILER = "import sys; sys.stdin.read(); sys.exit('the phone service said no')"
# Hangs on a blocked task's notice (and keeps a grandchild, its pid in argv[2]) once the dispatcher
# went on to merge another task while it ran; tells of anything else at once.
HANGER = """
import json, pathlib, subprocess, sys, time
event = json.loads(sys.stdin.read())
if event["event"] != "blocked":
    sys.exit(0)
log = pathlib.Path(sys.argv[3])
while '"merged"' not in log.read_text(encoding="utf-8"):
    time.sleep(0.05)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
pathlib.Path(sys.argv[2]).write_text(str(child.pid), encoding="utf-8")
time.sleep(600)
"""


def notifier(tmp_path: Path, name: str, code: str, *args: str) -> list[str]:
    script = tmp_path / f"{name}.py"
    script.write_text(code, encoding="utf-8")
    return [sys.executable, str(script), "{summary}", *args]


def received(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


@pytest.mark.parametrize("event, told", [
    ({"event": "blocked", "task_id": "p-1", "reason": "x"}, True),
    ({"event": "breaker_tripped", "failures": 3}, True),
    ({"event": "main_checked", "passed": False, "commit": "a" * 40}, True),
    ({"event": "main_checked", "passed": True, "commit": "a" * 40}, False),
    ({"event": "conflict_filed", "for_person": True, "conflict_task": "p-2"}, True),
    ({"event": "conflict_filed", "for_person": False, "conflict_task": "p-2"}, False),
    ({"event": EventName.REVIEW_AWAITED, "task_id": "p-1", "branch": "work/p-1"}, True),
    ({"event": notify.RUN_ENDED, "summary": {}, "report": None}, True),
    ({"event": "merged", "task_id": "p-1"}, False),
    ({"event": EventName.NOTIFY_FAILED, "task_id": "p-1"}, False),  # a failure to tell never tells again
])
def test_a_person_is_told_only_of_what_needs_one(event, told):
    assert notify.wanted(event) is told


def test_the_summary_is_one_safe_bounded_line_that_no_program_takes_for_an_option():
    reason = "-rf \x1b[31mred\x1b[0m\nsecond line & \"quoted\" | 100% " + "word " * 100
    line = notify.summary({"event": "blocked", "task_id": "p-1", "reason": reason}, "proj")
    assert line.startswith("[proj] p-1 blocked: -rf \\x1b[31mred\\x1b[0m\\nsecond line 'quoted' 100 word")
    assert len(line) <= notify.SUMMARY_LIMIT and not set(line) & set('\x1b\n"&|<>^%')
    assert notify.command_line(["notify-send", "Crew", "{summary}!"], "[p] x") == ["notify-send", "Crew", "[p] x!"]
    ended = notify.run_ended({"merged": ["a"], "blocked": [], "waiting": [{"id": "b"}]}, "/r/report.html", False)
    assert notify.summary(ended, "proj") == "[proj] run ended: 1 merged, 0 blocked, 1 waiting; report /r/report.html"


def test_the_notify_keys_are_checked_like_the_others(make_config, json_agent_setup, repo):
    with pytest.raises(errors.UsageError, match="'notify_timeout_secs' must be more than 0, got 0"):
        configuration.load_config(str(make_config(notify_timeout_secs=0)))
    with pytest.raises(errors.UsageError, match="'notify_command' must be a list of strings or null"):
        configuration.load_config(str(make_config(notify_command="notify-send {summary}")))
    cfg, config, store = json_agent_setup(notify_command=["no-such-notifier-xyz", "{summary}"])
    add_task(store, "Never runs", "append x.txt x")
    proc = dispatch(cfg)
    assert proc.returncode == 2 and proc.stderr == "error: notify_command 'no-such-notifier-xyz' was not found on PATH\n"
    assert events(repo, "worker_started") == []


def test_the_notifier_is_told_of_a_blocked_task_and_the_run_s_end(agent_setup, repo, tmp_path):
    out = tmp_path / "told.jsonl"
    cfg, config, store = agent_setup(max_attempts=1, notify_command=notifier(tmp_path, "recorder", RECORDER, str(out)))
    stuck = add_task(store, "Stuck", "crash")
    fine = add_task(store, "Fine", "append fine.txt fine")
    proc = dispatch(cfg)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert merges_of(repo, fine.id) == 1
    told = received(out)
    assert [t["event"]["event"] for t in told] == ["blocked", notify.RUN_ENDED]  # nothing else, and in order
    blocked, ended = (t["event"] for t in told)
    assert blocked == {**events(repo, "blocked")[0], "notice": blocked["notice"]}  # the event as logged
    assert told[0]["argv"][0] == blocked["notice"] == notify.summary(blocked, repo.name)
    assert blocked["task_id"] == stuck.id and "\x1b" not in told[0]["argv"][0]
    assert ended["summary"]["merged"] == [fine.id]
    assert [item["id"] for item in ended["summary"]["blocked"]] == [stuck.id]
    assert ended["report"] and Path(ended["report"]).is_file() and ended["interrupted"] is False
    assert events(repo, EventName.NOTIFY_FAILED) == []


def test_a_failing_notifier_is_reported_once_for_each_notice_and_the_run_goes_on(json_agent_setup, repo, tmp_path):
    cfg, config, store = json_agent_setup(max_attempts=1, notify_command=notifier(tmp_path, "failer", FAILER))
    stuck = add_task(store, "Stuck", "crash")
    fine = add_task(store, "Fine", "append fine.txt fine")
    proc = dispatch(cfg)
    assert proc.returncode == 1 and merges_of(repo, fine.id) == 1
    failed = events(repo, EventName.NOTIFY_FAILED)
    assert [(e["notice"], e["task_id"]) for e in failed] == [("blocked", stuck.id), (notify.RUN_ENDED, None)]
    assert all(e["reason"] == "exited with 1: the phone service said no" for e in failed)
    assert "notify_command failed for blocked: exited with 1: the phone service said no" in proc.stdout


def test_a_hanging_notifier_is_ended_as_a_tree_after_its_timeout_while_the_run_goes_on(json_agent_setup, repo,
                                                                                      tmp_path):
    grandchild = tmp_path / "grandchild.pid"
    log = repo / ".dispatch_logs" / "events.jsonl"
    command = notifier(tmp_path, "hanger", HANGER, str(grandchild), str(log))
    cfg, config, store = json_agent_setup(max_attempts=1, max_workers=1, notify_timeout_secs=15,
                                          notify_command=command)
    stuck = add_task(store, "Stuck", "crash", priority=0)
    fine = add_task(store, "Fine", "append fine.txt fine", priority=2)
    proc = dispatch(cfg)
    assert proc.returncode == 1 and merges_of(repo, fine.id) == 1
    order = [(e["event"], e["task_id"]) for e in events(repo) if e["event"] in ("blocked", "merged", EventName.NOTIFY_FAILED)]
    # The notifier hung from the block until after the merge: the loop went on without it.
    assert order == [("blocked", stuck.id), ("merged", fine.id), (EventName.NOTIFY_FAILED, stuck.id)]
    assert events(repo, EventName.NOTIFY_FAILED)[0]["reason"].endswith("failed: timed out after 15 s")
    assert len(events(repo, EventName.NOTIFY_FAILED)) == 1  # the run's end was told
    assert not psutil.pid_exists(int(grandchild.read_text(encoding="utf-8"))) or \
        psutil.Process(int(grandchild.read_text(encoding="utf-8"))).status() == psutil.STATUS_ZOMBIE


def test_the_notifier_is_told_once_main_fails_its_checks(json_agent_setup, repo, tmp_path):
    out = tmp_path / "told.jsonl"
    cfg, config, store = json_agent_setup(merge_gate_command=[sys.executable, "-c", "import sys; sys.exit('red')"],
                                          notify_command=notifier(tmp_path, "recorder", RECORDER, str(out)))
    add_task(store, "Add a", "append a.txt a")
    assert dispatch(cfg).returncode == 1
    told = [t["event"] for t in received(out)]
    assert [e["event"] for e in told] == ["main_checked", notify.RUN_ENDED]
    assert told[0]["passed"] is False and told[0]["notice"].startswith(f"[{repo.name}] main fails its checks at ")
    assert "main fails its checks" in told[1]["summary"]["waiting"][-1]["reason"]


# Starts a daemon of its own session that keeps the notifier's stdout and stderr (its pid in argv[2]),
# then says it sent the notice and exits 0.
DAEMON_STARTER = """
import pathlib, subprocess, sys
sys.stdin.read()
daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
pathlib.Path(sys.argv[2]).write_text(str(daemon.pid), encoding="utf-8")
print("sent")
"""
# Writes 64 MB to stdout and to stderr, then fails saying why.
FLOODER = """
import sys
import tracemalloc
sys.stdin.read()
for _ in range(64):
    sys.stdout.write("o" * (1 << 20))
    sys.stderr.write("e" * (1 << 20))
sys.stdout.write("\\nthe phone service said no\\n")
sys.exit(1)
"""


def given(make_config, tmp_path, code: str, *args: str) -> list[str]:
    """Give one blocked task's notice with notifier `code`; the reasons it could not be given."""
    config = configuration.load_config(str(make_config(notify_command=notifier(tmp_path, "n", code, *args),
                                                       notify_timeout_secs=120)))
    failures = []
    notify.Notifier(config, lambda event, reason: failures.append(reason)).give(
        {"event": "blocked", "task_id": "p-1", "reason": "stuck"})
    return failures


def test_a_notifier_that_leaves_a_daemon_holding_its_output_is_done_when_it_exits(make_config, tmp_path):
    pid_file = tmp_path / "daemon.pid"
    try:
        assert given(make_config, tmp_path, DAEMON_STARTER, str(pid_file)) == []  # not "timed out"
    finally:
        psutil.Process(int(pid_file.read_text(encoding="utf-8"))).kill()


def test_a_notifier_flooding_its_output_is_read_only_to_its_tail(make_config, tmp_path):
    tracemalloc.start()
    try:
        failures = given(make_config, tmp_path, FLOODER)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # not the 128 MB it wrote
    assert len(failures) == 1 and failures[0].startswith("exited with 1: ")
    assert failures[0].endswith("the phone service said no")
