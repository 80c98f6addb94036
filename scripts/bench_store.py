#!/usr/bin/env python3
"""Benchmark the JSON task store: ready+claim and create at 10,000 tasks, ingest of 1,000 lines.

Prints figures; targets are at most 100 ms per operation and 1,000 suggestions in under 3 s.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from crew import config as configuration  # noqa: E402
from crew import suggestions  # noqa: E402
from crew import tasks  # noqa: E402
from crew import demo_kit  # noqa: E402
from crew.tasks import bd_store  # noqa: E402
from crew.tasks import model  # noqa: E402


def bench_bd(bd: str, rounds: int = 5) -> None:
    """bd starts a process (and opens its database) per call: what each call costs."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = demo_kit.scratch_repository(Path(tmp) / "bdbench", {})
        subprocess.run([bd, "init", "--prefix", "b", "--quiet", "--skip-hooks", "--skip-agents", "--non-interactive"],
                       cwd=repo, check=True, capture_output=True)
        store = bd_store.BdTaskStore(bd, repo, "bench")
        times: dict[str, list[float]] = {}

        def timed(name, call):
            start = time.perf_counter()
            result = call()
            times.setdefault(name, []).append(time.perf_counter() - start)
            return result

        for i in range(rounds):
            task = timed("create", lambda: store.create(f"task {i}", "x", labels=["file:a.py"]))
            timed("ready", store.ready)
            timed("claim", lambda: store.claim(task.id, "bench"))
            timed("show", lambda: store.get(task.id))
            timed("list", lambda: store.list(None))
            timed("close", lambda: store.close(task.id, "done"))
        print(f"real bd ({bd}): median per call: " + ", ".join(
            f"{name} {statistics.median(values) * 1000:.0f} ms" for name, values in times.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--suggestions", type=int, default=1_000)
    parser.add_argument("--bd", metavar="PATH", help="also time each call of this bd binary")
    args = parser.parse_args()
    if args.bd:
        bench_bd(args.bd)
    with tempfile.TemporaryDirectory() as tmp:
        repo = demo_kit.scratch_repository(Path(tmp) / "bench", {})
        config = configuration.load_config(None, cwd=repo)
        config.task_backend = "json"
        store = tasks.open_task_store(config)
        store.create_many([model.NewTask(f"task number {i}", "a description of two hundred characters " * 5,
                                         priority=i % 5, labels=[f"file:src/m{i % 97}.py"])
                           for i in range(args.tasks)])

        ready_claim, create = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            task = store.ready(limit=1)[0]
            assert store.claim(task.id, "bench")
            ready_claim.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.create("new task", "made by the benchmark")
            create.append(time.perf_counter() - start)
        print(f"JSON store, {args.tasks} tasks: ready+claim median {statistics.median(ready_claim) * 1000:.1f} ms, "
              f"create median {statistics.median(create) * 1000:.1f} ms (target <= 100 ms each)")

        (repo / "task_queue.json").write_text('{"tasks": []}', encoding="utf-8")
        lines = "".join(f"Suggestion {i} -- detail {i} -- files: src/f{i % 50}.py\n" for i in range(args.suggestions))
        (repo / "suggested_tasks.txt").write_text(lines, encoding="utf-8")
        start = time.perf_counter()
        result = suggestions.ingest(config, store)
        elapsed = time.perf_counter() - start
        assert len(result.created) == args.suggestions
        print(f"ingest of {args.suggestions} suggestions: {elapsed:.2f} s (target < 3 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
