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
import common  # noqa: E402
import ingest_suggested_tasks  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--suggestions", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "bench"
        repo.mkdir()
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
        config = common.load_config(None, cwd=repo)
        config.task_backend = "json"
        store = common.open_task_store(config)
        store.create_many([common.NewTask(f"task number {i}", "a description of two hundred characters " * 5,
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
        result = ingest_suggested_tasks.ingest(config, store)
        elapsed = time.perf_counter() - start
        assert len(result.created) == args.suggestions
        print(f"ingest of {args.suggestions} suggestions: {elapsed:.2f} s (target < 3 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
