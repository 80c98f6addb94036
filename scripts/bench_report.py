#!/usr/bin/env python3
"""Benchmark the run report on a long history: a generated events log of 200,000 events.

Prints the time to write the page, beside a baseline measured in the same run (the time to merely
parse each line of the same log as JSON), the memory it takes (tracemalloc's peak, and the
process's peak resident size where the platform says it) and the page's size, for the default
page (the latest runs) and for --all-runs. Targets: under 2 s and 300 MB, a page under 5 MB.
Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crew.report import events as event_log  # noqa: E402
from crew.report import page  # noqa: E402
import benchkit  # noqa: E402


def peak_resident_mb() -> str:
    try:
        import resource
    except ImportError:  # Windows
        return "not measured here"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return f"{peak / (2**20 if sys.platform == 'darwin' else 2**10):.0f} MB"


def measure(root: Path, all_runs: bool) -> None:
    """In a process of its own, so its peak resident size is the report's: one timed report, then
    one under tracemalloc."""
    started, cpu = time.perf_counter(), time.process_time()
    written = page.write_report(root, root / "report.html", all_runs=all_runs)
    took, cpu = time.perf_counter() - started, time.process_time() - cpu
    resident = peak_resident_mb()
    tracemalloc.start()
    page.write_report(root, root / "report.html", all_runs=all_runs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"secs": took, "cpu": cpu, "resident": resident, "traced_mb": peak / 2**20,
                      "page_mb": written.stat().st_size / 2**20}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--per-run", type=int, default=1000, help="events a dispatcher run (default 1000)")
    parser.add_argument("--measure", metavar="ROOT", help=argparse.SUPPRESS)  # the child process's part
    parser.add_argument("--all-runs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.measure), args.all_runs)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log = root / event_log.LOGS_DIR / event_log.EVENTS_FILE
        log.parent.mkdir()
        with open(log, "w", encoding="utf-8") as out:
            for line in benchkit.event_history(args.events, args.per_run):
                out.write(line + "\n")
        print(f"events log: {args.events:,} events, {log.stat().st_size / 2**20:.0f} MB")

        started, cpu = time.perf_counter(), time.process_time()
        with open(log, "rb") as lines:
            for line in lines:
                json.loads(line)
        baseline, baseline_cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"baseline, each line parsed as JSON: {baseline:.2f} s (CPU {baseline_cpu:.2f} s)")

        for all_runs in (False, True):
            child = subprocess.run([sys.executable, __file__, "--measure", str(root)] + ["--all-runs"] * all_runs,
                                   capture_output=True, text=True, check=True)
            got = json.loads(child.stdout)
            print(f"report, {'--all-runs' if all_runs else 'default (the latest runs)'}: {got['secs']:.2f} s "
                  f"(CPU {got['cpu']:.2f} s, {got['cpu'] / baseline_cpu:.1f}x the baseline's), peak resident "
                  f"{got['resident']}, peak traced {got['traced_mb']:.0f} MB, page {got['page_mb']:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
