"""Speculative parallel gates (merge_gate_parallelism above 1): each gate sees main with exactly
the entries ahead of it, a failure re-gates only what is behind it, main moving rebuilds the
stacks, and a dispatcher killed during the gates finishes after a restart."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crew import processes
from support.dispatching import (DISPATCH, add_task, assert_clean_finish, dispatch, events, merge_subjects, merges_of,
                                 wait_for)
from support.repos import commit_file, git

# The gate: records what it saw (its commit, the merges on its first-parent chain, the g*.txt
# files), waits, and fails when the file named by its second argument is in the tree.
RECORDING_GATE = r"""
import json, pathlib, subprocess, sys, time
record, fail_if, wait, slow_flag = sys.argv[1:5]
log = subprocess.run(["git", "log", "--first-parent", "--merges", "--format=%H %s", "HEAD"],
                     capture_output=True, text=True, check=True).stdout.splitlines()
seen = {"head": log[0].split()[0], "merges": [line.split()[-1].strip("()") for line in reversed(log)],
        "files": sorted(p.name for p in pathlib.Path(".").glob("g*.txt"))}
with open(record, "a", encoding="utf-8") as out:
    out.write(json.dumps(seen) + "\n")
time.sleep(30 if slow_flag and pathlib.Path(slow_flag).exists() else float(wait))
sys.exit(1 if fail_if and pathlib.Path(fail_if).exists() else 0)
"""


def recording_gate(record: Path, fail_if: str = "", wait: float = 1.5, slow_flag: Path | None = None) -> list[str]:
    return [sys.executable, "-c", RECORDING_GATE, str(record), fail_if, str(wait), str(slow_flag or "")]


def seen_by_gates(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]


def queue_of_branches(store, count: int) -> list:
    """Tasks on distinct files whose branches join the merge queue in task order."""
    return [add_task(store, f"G{i}", f"sleep {0.2 * i:.1f}", f"append g{i}.txt line {i}", files=[f"g{i}.txt"])
            for i in range(count)]


def landed(repo: Path) -> list[str]:
    return [subject.rsplit("(", 1)[1].rstrip(")") for subject in merge_subjects(repo)]


def assert_each_landing_passed_its_gate_as_it_is(repo: Path, seen: list[dict]) -> None:
    """Each merge commit on main is one a gate saw, with exactly the merges main had before it."""
    heads = {s["head"]: s for s in seen}
    main_merges = git(repo, "log", "--first-parent", "--merges", "--reverse", "--format=%H", "main").split()
    for n, commit in enumerate(main_merges):
        assert commit in heads, f"merge {n + 1} on main was never gated as it is"
        assert heads[commit]["merges"] == landed(repo)[:n + 1]


def test_each_gate_sees_main_and_exactly_the_entries_ahead_of_it(json_agent_setup, repo, tmp_path):
    record = tmp_path / "seen.jsonl"
    cfg, config, store = json_agent_setup(max_workers=4, merge_gate_command=recording_gate(record),
                                          merge_gate_parallelism=3)
    tasks = queue_of_branches(store, 4)
    assert dispatch(cfg).returncode == 0
    order = [t.id for t in tasks]
    assert landed(repo) == order and all(merges_of(repo, t) == 1 for t in order)
    seen = seen_by_gates(record)
    for gate in seen:
        # Its own merge last, on main and the entries ahead of it, in queue order.
        k = order.index(gate["merges"][-1])
        assert gate["merges"] == order[:k + 1]
        assert gate["files"] == [f"g{i}.txt" for i in range(k + 1)]
    assert_each_landing_passed_its_gate_as_it_is(repo, seen)
    # The gates ran side by side: the second entry's gate started before the first one landed.
    names = [(e["event"], e["task_id"]) for e in events(repo)]
    assert names.index(("gate_started", order[1])) < names.index(("merged", order[0]))
    started = events(repo, "gate_started")
    assert all(e["commit"] in {s["head"] for s in seen} for e in started)
    assert_clean_finish(repo, Path(config.worktree_root))


def test_a_failure_in_the_middle_regates_only_the_entries_behind_it(json_agent_setup, repo, tmp_path):
    record = tmp_path / "seen.jsonl"
    cfg, config, store = json_agent_setup(max_workers=4, merge_gate_command=recording_gate(record, "g1.txt", wait=2.5),
                                          merge_gate_parallelism=4, max_merge_retries=0)
    tasks = queue_of_branches(store, 4)
    order = [t.id for t in tasks]
    dispatch(cfg)
    assert landed(repo) == [order[0], order[2], order[3]]
    assert "g1.txt" not in git(repo, "ls-tree", "--name-only", "main").split()
    assert store.get(order[1]).status == "blocked"
    seen = seen_by_gates(record)
    gated = {task_id: [s for s in seen if s["merges"][-1] == task_id] for task_id in order}
    assert len(gated[order[0]]) == 1  # ahead of the failure: gated once, unaffected
    counted = [e["task_id"] for e in events(repo, "gate_failed") if e["counts"]]
    assert counted == [order[1]]  # counted once, on main as it is
    assert gated[order[1]][-1]["merges"] == order[:2]
    for behind in order[2:]:
        assert order[1] not in gated[behind][-1]["merges"]  # gated again without it
    assert order[1] in gated[order[3]][0]["merges"]  # first gated speculatively, on the failure's stack
    assert_each_landing_passed_its_gate_as_it_is(repo, seen)


def test_a_gate_that_fails_behind_one_still_gating_is_an_event_at_once_and_again_when_it_counts(
        json_agent_setup, repo):
    # The second entry's gate (g1.txt too) fails at once; the first's (g0.txt alone) passes, but
    # only once the second's failure is in the event log: the first is still gating when it comes,
    # however slow the machine. One worker: the branches join the queue in task order.
    log = repo / ".dispatch_logs" / "events.jsonl"
    gate = [sys.executable, "-c", "import pathlib, sys, time\n"
            "if pathlib.Path('g1.txt').exists(): sys.exit(1)\n"
            f"log, deadline = pathlib.Path({str(log)!r}), time.monotonic() + 120\n"
            "while time.monotonic() < deadline and '\"gate_failed\"' not in log.read_text(encoding='utf-8'):\n"
            "    time.sleep(0.1)\n"]
    cfg, config, store = json_agent_setup(max_workers=1, merge_gate_command=gate, merge_gate_parallelism=2,
                                          max_merge_retries=0)
    first, second = (t.id for t in queue_of_branches(store, 2))
    dispatch(cfg)
    assert landed(repo) == [first]
    said = [(e["event"], e["task_id"], e.get("counts")) for e in events(repo)
            if e["event"] in ("gate_passed", "gate_failed", "merged")]
    assert said == [("gate_failed", second, False), ("gate_passed", first, None), ("merged", first, None),
                    ("gate_failed", second, True)]
    failed = events(repo, "gate_failed")
    started = {e["task_id"]: e["commit"] for e in events(repo, "gate_started")}
    assert [e["commit"] for e in failed] == [started[second]] * 2  # the same speculative commit, not gated again


def test_main_moving_during_the_gates_rebuilds_their_stacks(json_agent_setup, repo, tmp_path):
    commit_file(repo, "other.txt", "before\n")
    record, flag = tmp_path / "seen.jsonl", tmp_path / "moved-once"
    # The first gate to run commits on main in the user's folder, as another tool might.
    mover = (f"import pathlib, subprocess\nflag = pathlib.Path({str(flag)!r})\n"
             "if not flag.exists():\n    flag.write_text('x')\n"
             f"    pathlib.Path({str(repo)!r}, 'other.txt').write_text('someone else\\n')\n"
             f"    subprocess.run(['git', 'commit', '-qam', 'someone else'], cwd={str(repo)!r}, check=True)\n")
    gate = recording_gate(record, wait=2)
    gate[2] = mover + gate[2]
    cfg, config, store = json_agent_setup(max_workers=3, merge_gate_command=gate, merge_gate_parallelism=3)
    tasks = queue_of_branches(store, 3)
    assert dispatch(cfg).returncode == 0
    assert landed(repo) == [t.id for t in tasks]
    first = git(repo, "log", "--first-parent", "--reverse", "--format=%s", "main").splitlines()
    assert first.index("someone else") < first.index(merge_subjects(repo)[0])
    assert_each_landing_passed_its_gate_as_it_is(repo, seen_by_gates(record))
    assert events(repo, "gate_cancelled")  # the gates running on the old main were ended


@pytest.mark.skipif(os.name == "nt", reason="kill -9 of the dispatcher alone needs POSIX signals")
def test_killed_during_parallel_gates_a_restart_lands_each_entry_once_and_never_a_failed_one(
        json_agent_setup, repo, tmp_path):
    record, slow = tmp_path / "seen.jsonl", tmp_path / "slow"
    slow.write_text("the first run's gates hang", encoding="utf-8")
    cfg, config, store = json_agent_setup(
        max_workers=4, merge_gate_command=recording_gate(record, "g1.txt", wait=0.5, slow_flag=slow),
        merge_gate_parallelism=3, max_merge_retries=0)
    tasks = queue_of_branches(store, 4)
    order = [t.id for t in tasks]
    proc = subprocess.Popen([sys.executable, str(DISPATCH), "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(events(repo, "gate_started")) >= 3, "three gates running")
        status = json.loads(dispatch(cfg, "--status", "--json").stdout)
        left = json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))["gates"]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert {g["task_id"] for g in status["gates"]} == set(order[:3])
    assert all(g["state"] == "gating" and g["stack"] == order[:order.index(g["task_id"])] for g in status["gates"])
    slow.unlink()
    dispatch(cfg)
    # The gates the killed dispatcher left were ended (they would sleep 30 s), and gated again.
    assert len(left) == 3 and not any(processes.is_same_process_alive(g["pid"], g["pid_start_time"]) for g in left)
    assert landed(repo) == [order[0], order[2], order[3]]
    assert [merges_of(repo, t) for t in order] == [1, 0, 1, 1]
    assert store.get(order[1]).status == "blocked"
    assert_each_landing_passed_its_gate_as_it_is(repo, seen_by_gates(record))


def test_an_entry_that_conflicts_with_the_entries_ahead_but_not_main_waits_then_is_judged_on_main(
        json_agent_setup, repo, tmp_path):
    record = tmp_path / "seen.jsonl"
    cfg, config, store = json_agent_setup(max_workers=3, merge_gate_command=recording_gate(record),
                                          merge_gate_parallelism=3, max_merge_retries=0)
    ahead = add_task(store, "Ahead", "append shared.txt from ahead")
    clashing = add_task(store, "Clashing", "sleep 0.2", "append shared.txt from clashing")  # merges onto main alone
    behind = add_task(store, "Behind", "sleep 0.4", "append g2.txt behind", files=["g2.txt"])
    dispatch(cfg)
    assert landed(repo) == [ahead.id, behind.id]
    # Judged against main once the entry ahead had landed: a conflict there, handed back as today.
    assert [e["task_id"] for e in events(repo, "merge_conflict")] == [clashing.id]
    assert store.get(clashing.id).status == "blocked"
    seen = seen_by_gates(record)
    assert not any(clashing.id in s["merges"] for s in seen)  # never gated, nor stacked on
    # Meanwhile the entry behind it was gated on the entry ahead, without it.
    names = [(e["event"], e["task_id"]) for e in events(repo)]
    assert names.index(("gate_started", behind.id)) < names.index(("merged", ahead.id))
    assert_each_landing_passed_its_gate_as_it_is(repo, seen)
