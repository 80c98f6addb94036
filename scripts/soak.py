#!/usr/bin/env python3
"""Soak: many tasks, agents misbehaving at random; outcome counts, and by tenth of the run the
time per task, the dispatcher's resident memory and its store calls per task.

The scripted agent picks, per task: 10% hang past the timeout, 10% crash, 10% a conflicting edit
(the same line of one shared file), 10% follow-ups, the rest a normal edit; with --noop every
agent makes one normal edit. All three figures should stay flat as the queue drains: no cost may
grow with the number of tasks done.

examples:
  python3 scripts/soak.py --tasks 200 --workers 4
  python3 scripts/soak.py --tasks 50 --workers 2 --seed 3
  python3 scripts/soak.py --tasks 1000 --workers 8 --noop          (target: under 5 minutes)
  python3 scripts/soak.py --tasks 200 --workers 8 --noop --bd      (the bd stand-in)
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from crew import config as configuration  # noqa: E402
from crew import git  # noqa: E402
from crew import tasks as task_stores  # noqa: E402
from crew import demo_kit  # noqa: E402
from crew.report import events as event_log  # noqa: E402
import benchkit  # noqa: E402

BEHAVIOURS = [("hang", 0.1), ("crash", 0.1), ("conflict", 0.1), ("followups", 0.1), ("normal", 0.6)]
SAMPLE_SECS = 0.25  # how often the dispatcher's memory and store calls are sampled


def cues(behaviour: str, i: int) -> str:
    return {
        "hang": "AGENT: hang",
        "crash": "AGENT: crash",
        "conflict": f"AGENT: append shared.txt line from task {i}",
        "followups": f"AGENT: append f{i}.txt x\nAGENT: followup Follow-up idea {i}",
        "normal": f"AGENT: append f{i}.txt x",
    }[behaviour]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=2, help="worker_timeout_secs for the hanging agents")
    parser.add_argument("--noop", action="store_true", help="every agent makes one normal edit")
    parser.add_argument("--bd", action="store_true", help="the bd stand-in (scripts/fake_bd.py) as the task store")
    parser.add_argument("--profile", action="store_true", help="the share of each of the loop's steps per task")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    behaviours = [("normal", 1.0)] if args.noop else BEHAVIOURS
    with tempfile.TemporaryDirectory() as folder:
        repo = benchkit.make_repo(Path(folder))
        if args.bd:
            bd = benchkit.write_bd_stand_in(Path(folder) / "bin")
            os.environ["PATH"] = str(bd.parent) + os.pathsep + os.environ["PATH"]
            subprocess.run(["bd", "init", "--prefix", "soak"], cwd=repo, check=True, capture_output=True)
        (repo / "shared.txt").write_text("start\n", encoding="utf-8")
        git.git("add", "-A", cwd=repo)
        git.git("commit", "-q", "-m", "shared file", cwd=repo)
        config_path = Path(folder) / "dispatch_config.json"
        config_path.write_text(json.dumps({
            "repo_path": str(repo), "task_backend": "bd" if args.bd else "json", "task_prefix": "soak", "max_workers": args.workers,
            "poll_interval_secs": 0.2, "worker_timeout_secs": args.timeout, "worker_kill_grace_secs": 0.5,
            # Failures here are on purpose: the breaker, which would stop the run, must not trip.
            "max_attempts": 2, "breaker_failures": 10**6, "worker_command": demo_kit.SCRIPTED_AGENT}),
            encoding="utf-8")
        config = configuration.load_config(str(config_path))
        store = benchkit.CountingStore(task_stores.open_task_store(config))
        picked = {}
        names, weights = zip(*behaviours)
        for i in range(args.tasks):
            behaviour = rng.choices(names, weights)[0]
            task = store.create(f"Soak task {i} ({behaviour})", cues(behaviour, i))
            picked[task.id] = behaviour
        print(f"{args.tasks} tasks, {args.workers} workers: " + ", ".join(
            f"{n} {sum(1 for b in picked.values() if b == n)}" for n in names))
        samples: list[tuple[float, int, int]] = []  # (time, resident bytes, store calls so far)
        stop = threading.Event()

        def sample() -> None:
            me = psutil.Process()
            while True:
                samples.append((time.time(), me.memory_info().rss, store.total))
                if stop.wait(SAMPLE_SECS):
                    return

        store.calls.clear()  # the run's calls, not the setup's creates
        store.total = 0
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        profiler = cProfile.Profile() if args.profile else None
        start, started_at = time.perf_counter(), time.time()
        if profiler:
            profiler.enable()
        benchkit.run_dispatcher(config, store, args.workers)
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - start
        stop.set()
        sampler.join()

        tasks = {t.id: t for t in store.list(None)}
        outcomes = collections.Counter()
        for task_id, behaviour in picked.items():
            status = tasks[task_id].status
            outcomes[f"{behaviour} -> {status}"] += 1
        print(f"done in {elapsed:.0f} s ({elapsed / args.tasks:.2f} s per task; {store.total / args.tasks:.1f} store "
              "calls per task)" + (" (target: 1,000 tasks on the JSON store under 5 minutes)" if args.noop else ""))
        for outcome, count in sorted(outcomes.items()):
            print(f"  {outcome}: {count}")
        total = sum(outcomes.values())
        unfinished = sum(n for outcome, n in outcomes.items() if not outcome.endswith(("closed", "blocked")))
        print(f"  total {total} (given {args.tasks}): {'adds up' if total == args.tasks else 'DOES NOT ADD UP'}"
              + (f"; {unfinished} NOT FINISHED" if unfinished else ""))
        extra = [t for t in tasks.values() if t.id not in picked]
        print(f"  also created and run: {sum(1 for t in extra if t.title.startswith('Resolve'))} conflict tasks, "
              f"{sum(1 for t in extra if t.title.startswith('Follow-up'))} follow-ups "
              f"({collections.Counter(t.status for t in extra)})")

        events, _ = event_log.read_events(repo / event_log.LOGS_DIR / event_log.EVENTS_FILE)
        if profiler:
            print("the loop's steps, per task:")
            for line in benchkit.loop_profile(pstats.Stats(profiler), elapsed, args.tasks):
                print("  " + line)
        print_by_tenth(sorted(e.at for e in events if e.name in ("merged", "blocked")), started_at, samples)
        return 0 if total == args.tasks and not unfinished else 1


def print_by_tenth(done: list[float], started_at: float, samples: list[tuple[float, int, int]]) -> None:
    """Per tenth of the finished tasks: time per task, the dispatcher's memory at the tenth's
    end, its store calls per task (all three should stay flat)."""
    def at(moment: float) -> tuple[float, int, int]:
        return next((s for s in reversed(samples) if s[0] <= moment), samples[0])

    print("by tenth of the run (should stay flat):   time per task   resident memory   store calls per task")
    before, last = 0, (started_at, *at(started_at)[1:])
    for k in range(10):
        end = round(len(done) * (k + 1) / 10)
        if end <= before:
            continue
        moment = done[end - 1]
        now = (moment, *at(moment)[1:])
        count = end - before
        print(f"  tenth {k + 1:2} ({count:3} tasks):{(moment - last[0]) / count:14.2f} s{now[1] / 2**20:15.0f} MiB"
              f"{(now[2] - last[2]) / count:18.1f}")
        before, last = end, now


if __name__ == "__main__":
    raise SystemExit(main())
