#!/usr/bin/env python3
"""Benchmark the dispatcher with the scripted agent; prints figures (it asserts no times).

  latency      branch entering the merge queue -> main moving, small repo vs 20,000 files
  overhead     40 tasks, 1 worker, vs the same git steps by hand (3 interleaved rounds)
  parallelism  24 tasks, 4 workers, agents that sleep 2 s: makespan vs the ideal
  refill       a worker's exit -> the next worker's start (from events.jsonl)
  responsiveness  while a 60 s gate runs: a worker's deadline -> its end, a worker's exit -> the
               next start, Ctrl-C twice -> the dispatcher's exit
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from crew import config as configuration  # noqa: E402
from crew import tasks as task_stores  # noqa: E402
from crew import testing  # noqa: E402

def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def write_config(repo: Path, workers: int, tasks: list[tuple[str, str]], **settings) -> tuple[Path, dict[str, str]]:
    """dispatch_config.json beside the repository, and the tasks in its JSON store (their ids by title)."""
    config_path = repo.parent / "dispatch_config.json"
    config_path.write_text(json.dumps({"repo_path": str(repo), "task_backend": "json", "max_workers": workers,
                                       "poll_interval_secs": 0.2, "worker_command": testing.SCRIPTED_AGENT,
                                       **settings}), encoding="utf-8")
    store = task_stores.open_task_store(configuration.load_config(str(config_path)))
    return config_path, {title: store.create(title, description).id for title, description in tasks}


def read_events(repo: Path) -> list[dict]:
    events_file = repo / ".dispatch_logs" / "events.jsonl"
    if not events_file.exists():
        return []
    return [json.loads(line) for line in events_file.read_text(encoding="utf-8").splitlines()]


def run_dispatcher(repo: Path, tasks: list[tuple[str, str]], workers: int) -> tuple[float, list[dict]]:
    config = configuration.load_config(str(write_config(repo, workers, tasks)[0]))
    store = task_stores.open_task_store(config)
    start = time.perf_counter()
    summary = testing.run_dispatcher(config, store, workers)
    elapsed = time.perf_counter() - start
    assert len(summary["merged"]) == len(tasks), summary
    return elapsed, read_events(repo)


def ts(event: dict) -> float:
    return dt.datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def merge_latencies(events: list[dict]) -> list[float]:
    queued = {e["task_id"]: ts(e) for e in events if e["event"] == "merge_queued"}
    return [ts(e) - queued[e["task_id"]] for e in events if e["event"] == "merged"]


def bench_latency(tmp: Path) -> None:
    for label, files in (("small (1 file)", 1), ("large (20,000 files)", 20_000)):
        repo = testing.make_repo(tmp / f"latency-{files}", files)
        tasks = [(f"Edit {i}", f"AGENT: append note{i}.txt line") for i in range(6)]
        _, events = run_dispatcher(repo, tasks, 1)
        lat = merge_latencies(events)
        print(f"merge latency, {label}: median {statistics.median(lat) * 1000:.0f} ms, "
              f"max {max(lat) * 1000:.0f} ms over {len(lat)} merges")


def baseline(repo: Path, count: int) -> float:
    """The same git steps a careful person would script, with the same agent."""
    start = time.perf_counter()
    for i in range(count):
        wt = repo.parent / f"wt{i}"
        git(repo, "worktree", "add", "-q", "-b", f"b{i}", str(wt), "main")
        message = wt / ".current_task.txt"
        message.write_text(f"Task {i}\n\nAGENT: append f{i}.txt line\n", encoding="utf-8")
        agent = [a.replace("{message_file}", str(message)) for a in testing.SCRIPTED_AGENT if a != "{files}"]
        subprocess.run(agent, cwd=wt, check=True, capture_output=True)
        git(repo, "merge", "-q", "--no-ff", "-m", f"Merge b{i}", f"b{i}")
        git(repo, "worktree", "remove", "--force", str(wt))
        git(repo, "branch", "-D", f"b{i}")
    return time.perf_counter() - start


def bench_overhead(tmp: Path, count: int = 40, rounds: int = 3) -> None:
    ours, theirs = [], []
    for r in range(rounds):
        repo = testing.make_repo(tmp / f"overhead-d{r}")
        ours.append(run_dispatcher(repo, [(f"T{i}", f"AGENT: append f{i}.txt line") for i in range(count)], 1)[0])
        theirs.append(baseline(testing.make_repo(tmp / f"overhead-b{r}"), count))
    print(f"overhead, {count} tasks, 1 worker: dispatcher min {min(ours):.1f} s, by hand min {min(theirs):.1f} s, "
          f"ratio {min(ours) / min(theirs):.2f}x (target <= 1.3x)")


def bench_parallelism(tmp: Path, count: int = 24, workers: int = 4, sleep: float = 2.0) -> None:
    repo = testing.make_repo(tmp / "parallel")
    tasks = [(f"P{i}", f"AGENT: sleep {sleep}\nAGENT: append p{i}.txt line") for i in range(count)]
    makespan, events = run_dispatcher(repo, tasks, workers)
    merge_time = sum(merge_latencies(events))
    ideal = (count / workers) * sleep + merge_time / workers
    print(f"parallelism, {count} tasks, {workers} workers, {sleep:g} s agents: makespan {makespan:.1f} s, "
          f"ideal {ideal:.1f} s ({count // workers} rounds x {sleep:g} s + merges), ratio {makespan / ideal:.2f}x "
          "(target <= 1.15x)")
    refill = []
    exits = [ts(e) for e in events if e["event"] == "worker_exited"]
    starts = sorted(ts(e) for e in events if e["event"] == "worker_started")
    for exited in exits:
        later = [s - exited for s in starts if s >= exited]
        if later:
            refill.append(later[0])
    print(f"slot refill (worker exit -> next start): median {statistics.median(refill) * 1000:.0f} ms, "
          f"max {max(refill) * 1000:.0f} ms (target < 100 ms)")


def bench_responsiveness(tmp: Path) -> None:
    """testing.RESPONSIVENESS_TASKS, the dispatcher as a process (it gets the two SIGINTs)."""
    repo = testing.make_repo(tmp / "responsiveness")
    config_path, ids = write_config(repo, 2, testing.RESPONSIVENESS_TASKS, **testing.RESPONSIVENESS_SETTINGS)
    proc = subprocess.Popen([sys.executable, str(ROOT / "dispatch_workers.py"), "--config", str(config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def seen(name: str, task_id: str) -> dict | None:
        return next((e for e in read_events(repo) if e["event"] == name and e["task_id"] == task_id), None)

    deadline = time.monotonic() + 30
    while not (seen("worker_timed_out", ids["Hangs"]) and (exited := seen("worker_exited", ids["Quick"])) and any(
            e["event"] == "worker_started" and ts(e) >= ts(exited) for e in read_events(repo))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"responsiveness: no timeout and refill within 30 s (dispatcher exit {proc.poll()})")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    second, second_at = time.perf_counter(), time.time()
    proc.wait(timeout=30)
    exited_after = time.perf_counter() - second
    events = read_events(repo)
    gate = next(e for e in events if e["event"] == "gate_started")
    hang_deadline = ts(seen("worker_started", ids["Hangs"])) + testing.RESPONSIVENESS_SETTINGS["worker_timeout_secs"]
    refill = min(ts(e) for e in events if e["event"] == "worker_started" and ts(e) >= ts(exited)) - ts(exited)
    stopped = next(e for e in events if e["event"] == "dispatcher_stopped")
    # The deadline counts from just before worker_started is written: a few ms early at most.
    print(f"responsiveness, during a 60 s gate (started {ts(gate) - ts(events[0]):.1f} s into the run): "
          f"worker_started + worker_timeout_secs -> worker_timed_out "
          f"{(ts(seen('worker_timed_out', ids['Hangs'])) - hang_deadline) * 1000:.0f} ms (target < 1 s); "
          f"worker_exited -> next worker_started {refill * 1000:.0f} ms (target < 100 ms); second SIGINT -> "
          f"dispatcher_stopped {(ts(stopped) - second_at) * 1000:.0f} ms, -> exit {exited_after * 1000:.0f} ms "
          f"(code {proc.returncode}, after the run report; target: at once)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["latency", "overhead", "parallelism", "responsiveness"], action="append")
    args = parser.parse_args()
    chosen = args.only or ["latency", "overhead", "parallelism", "responsiveness"]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        if "latency" in chosen:
            bench_latency(tmp)
        if "overhead" in chosen:
            bench_overhead(tmp)
        if "parallelism" in chosen:
            bench_parallelism(tmp)
        if "responsiveness" in chosen:
            bench_responsiveness(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
