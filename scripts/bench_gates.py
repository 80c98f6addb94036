#!/usr/bin/env python3
"""Benchmark the speculative parallel gates; prints figures (it asserts no times).

A gate that sleeps 3 s (no CPU), 8 finished branches on distinct files, timed from the first
branch entering the merge queue to the last one landing on main, in gate-times (elapsed / 3 s):
  - all pass, with merge_gate_parallelism 1, 2 and 4 side by side;
  - parallelism 4, the third entry fails: main never holds it (no first-parent commit of main
    does), the other 7 land, and its failure files exactly one fix task.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from crew import config as configuration  # noqa: E402
from crew import tasks as task_stores  # noqa: E402
from crew import demo_kit  # noqa: E402
from crew.report import events as event_log  # noqa: E402
import benchkit  # noqa: E402

GATE_SECS = 3.0
BRANCHES = 8
FAILING = 2  # the third entry: its branch adds g2.txt, and the gate fails on any tree with it


def gate_command(failing: bool) -> list[str]:
    check = f"sys.exit(1 if os.path.exists('g{FAILING}.txt') else 0)" if failing else "sys.exit(0)"
    return [sys.executable, "-c", f"import os, sys, time; time.sleep({GATE_SECS}); {check}"]


def run(tmp: Path, parallelism: int, failing: bool) -> dict:
    """One run: its figures, from the events log."""
    repo = benchkit.make_repo(tmp / f"gates-{parallelism}-{'fail' if failing else 'pass'}")
    config_path = repo.parent / f"{repo.name}.json"
    config_path.write_text(json.dumps({
        "repo_path": str(repo), "task_backend": "json", "max_workers": BRANCHES, "poll_interval_secs": 0.2,
        "worker_command": demo_kit.SCRIPTED_AGENT, "merge_gate_command": gate_command(failing),
        "merge_gate_parallelism": parallelism, "max_merge_retries": 1}), encoding="utf-8")
    config = configuration.load_config(str(config_path))
    store = task_stores.open_task_store(config)
    # Staggered agents: the branches enter the queue in task order, so "entry 3" is g2's.
    ids = [store.create(f"G{i}", f"AGENT: sleep {0.3 * i:.1f}\nAGENT: append g{i}.txt line").id
           for i in range(BRANCHES)]
    benchkit.run_dispatcher(config, store, BRANCHES)
    events, _ = event_log.read_events(repo / ".dispatch_logs" / "events.jsonl")
    queued = [e.at for e in events if e.name == "merge_queued" and e.task_id in ids]
    merged = [e for e in events if e.name == "merged" and e.task_id in ids]
    first_parents = subprocess.run(["git", "log", "--first-parent", "--format=%s", "main"], cwd=repo,
                                   capture_output=True, text=True, check=True).stdout
    return {"elapsed": max(e.at for e in merged) - min(queued), "landed": len(merged),
            "failing_on_main": f"({ids[FAILING]})" in first_parents,
            "fix_tasks": sum(1 for e in events if e.name == "conflict_filed" and e.fields.get("kind") == "gate"),
            "cancelled": sum(1 for e in events if e.name == "gate_cancelled")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        times = {n: run(tmp, n, failing=False) for n in (1, 2, 4)}
        print(f"{BRANCHES} branches, {GATE_SECS:g} s gate, all pass, queue -> last landing: " + ", ".join(
            f"parallelism {n}: {r['elapsed']:.1f} s = {r['elapsed'] / GATE_SECS:.1f} gate-times ({r['landed']} landed)"
            for n, r in times.items()))
        failed = run(tmp, 4, failing=True)
        print(f"parallelism 4, entry 3 fails: the other {failed['landed']} landed in {failed['elapsed']:.1f} s = "
              f"{failed['elapsed'] / GATE_SECS:.1f} gate-times (target <= 5); entry 3 on main: "
              f"{failed['failing_on_main']}; fix tasks filed: {failed['fix_tasks']}; gates cancelled: "
              f"{failed['cancelled']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
