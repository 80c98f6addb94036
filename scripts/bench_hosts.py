#!/usr/bin/env python3
"""Benchmark one merge at a time across hosts: bd's merge slot against an optimistic
compare-and-swap push with no slot. Prints figures; asserts no times.

Three hosts (three clones of one bare remote, each with its own dispatcher under its own actor,
as separate processes), one task store they share (the bd stand-in's database, as one Dolt
server would be), the scripted agent, and a gate that sleeps 3 s (no CPU). The same tasks (each
edits a file of its own, so every branch merges cleanly) run once with `merge_slot` true (bd's
merge slot: one host merges at a time) and once with false (every host gates, the first push
wins, the others recompute). For each: branches landed, the time from the first dispatcher's
start to the last landing, throughput, and the gate-seconds spent on gates whose commit never
became the remote's main ("wasted"), per landed branch.

examples:
  python3 scripts/bench_hosts.py
  python3 scripts/bench_hosts.py --tasks 24 --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchkit  # noqa: E402

from crew import demo_kit  # noqa: E402
from crew import git  # noqa: E402
from crew.report import events as event_log  # noqa: E402


GATE_SECS = 3.0
HOSTS = ("host-a", "host-b", "host-c")
GATE_ENDS = ("gate_passed", "gate_failed", "gate_cancelled")
RUN_BOUND_SECS = 1800  # a run that has not finished by then is reported as such, not waited on


def gate_command() -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({GATE_SECS})"]


def make_hosts(folder: Path, slot: bool, workers: int, env: dict[str, str]) -> list[Path]:
    """A bare remote seeded with a small repository, and a clone of it a host, each with its
    dispatch_config.json beside it."""
    seed = benchkit.make_repo(folder)
    remote = folder / "remote.git"
    git.git("clone", "-q", "--bare", str(seed), str(remote), cwd=folder)
    clones = []
    for actor in HOSTS:
        clone = folder / actor
        git.git("clone", "-q", str(remote), str(clone), cwd=folder)
        subprocess.run(["bd", "init", "--prefix", "hb"], cwd=clone, env=env, check=True, capture_output=True)
        (folder / f"{actor}.json").write_text(json.dumps({
            "repo_path": str(clone), "task_backend": "bd", "task_prefix": "hb", "actor": actor,
            "remote": "origin", "merge_slot": slot, "max_workers": workers, "poll_interval_secs": 0.2,
            "worker_command": demo_kit.SCRIPTED_AGENT, "merge_gate_command": gate_command()}),
            encoding="utf-8")
        clones.append(clone)
    return clones


def run(folder: Path, slot: bool, tasks: int, workers: int, bin_dir: Path) -> dict[str, float]:
    """One run of the three hosts: its figures, from their events logs."""
    env = {**os.environ, "PATH": str(bin_dir) + os.pathsep + os.environ["PATH"],
           "FAKE_BD_DB": str(folder / "shared-store.json")}
    clones = make_hosts(folder, slot, workers, env)
    for i in range(tasks):
        subprocess.run(["bd", "create", f"Host bench task {i}", "-d", f"AGENT: append h{i}.txt line", "--json"],
                       cwd=clones[0], env=env, check=True, capture_output=True)
    dispatchers = [subprocess.Popen([sys.executable, str(ROOT / "dispatch_workers.py"), "--config",
                                     str(folder / f"{actor}.json")], cwd=clone, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for actor, clone in zip(HOSTS, clones, strict=True)]
    for dispatcher in dispatchers:
        try:
            dispatcher.wait(timeout=RUN_BOUND_SECS)
        except subprocess.TimeoutExpired:
            dispatcher.kill()
    events = [e for clone in clones
              for e in event_log.read_events(clone / event_log.LOGS_DIR / event_log.EVENTS_FILE)[0]]
    return figures(events)


def figures(events: list[event_log.Event]) -> dict[str, float]:
    """Landed branches, the span from the first start to the last landing, and the gate-seconds
    spent, split into those whose commit landed and those wasted."""
    landed = {e.fields.get("commit") for e in events if e.name == "merged"}
    started: dict[tuple[str | None, str], float] = {}
    spent = wasted = 0.0
    for event in sorted(events, key=lambda e: e.at):
        key = (event.task_id, str(event.fields.get("commit")))
        if event.name == "gate_started":
            started[key] = event.at
        elif event.name in GATE_ENDS and key in started:
            secs = event.at - started.pop(key)
            spent += secs
            if event.name != "gate_passed" or key[1] not in landed:
                wasted += secs
    first = min(e.at for e in events if e.name == "dispatcher_started")
    last = max((e.at for e in events if e.name == "merged"), default=first)
    return {"landed": len(landed), "span": last - first, "gate_secs": spent, "wasted": wasted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=18)
    parser.add_argument("--workers", type=int, default=2, help="workers a host")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        bin_dir = benchkit.write_bd_stand_in(tmp / "bin").parent
        print(f"{len(HOSTS)} hosts x {args.workers} workers, {args.tasks} tasks, a {GATE_SECS:g} s gate, "
              "one shared store (the bd stand-in), one bare remote")
        for slot in (True, False):
            (tmp / str(slot)).mkdir()
            got = run(tmp / str(slot), slot, args.tasks, args.workers, bin_dir)
            landed = got["landed"] or 1
            print(f"  {'merge slot (bd)' if slot else 'CAS push, no slot'}: {got['landed']:.0f}/{args.tasks} landed in "
                  f"{got['span']:.1f} s ({60 * got['landed'] / max(got['span'], 1e-9):.1f} a minute); gate-seconds "
                  f"{got['gate_secs']:.1f}, wasted {got['wasted']:.1f} = {got['wasted'] / landed:.2f} s "
                  "a landed branch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
