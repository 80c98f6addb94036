#!/usr/bin/env python3
"""Benchmark the dispatcher with the scripted agent; prints figures (it asserts no times). Each
figure is printed beside a baseline measured in the same run (the same git steps by hand).

  latency      a branch entering the merge queue -> main moving, small repo and 20,000 files, each
               beside raw git doing the merge's own steps (merge-tree, commit-tree, the checked-out
               fast-forward) on the same repository
  overhead     40 tasks, 1 worker, vs the same git steps by hand (3 interleaved rounds, medians);
               the slot refill (a worker's exit -> the next start, a task ready); the same 40 tasks
               on the bd stand-in (time and store calls per task); --profile: the share of each
               of the loop's steps per task
  idle         two workers that run 75 s: the dispatcher's CPU over 60 s of it (no busy loop)
  parallelism  24 tasks, 4 workers, agents that sleep 2 s: makespan vs the ideal
  responsiveness  while a 60 s gate runs: a worker's deadline -> its end, a worker's exit -> the
               next start, Ctrl-C twice -> the dispatcher's exit
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime as dt
import os
import pstats
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from crew import config as configuration  # noqa: E402
from crew import tasks as task_stores  # noqa: E402
from crew import demo_kit  # noqa: E402
import benchkit  # noqa: E402

def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def write_config(repo: Path, workers: int, tasks: list[tuple[str, str]], **settings) -> tuple[Path, dict[str, str]]:
    """dispatch_config.json beside the repository, and the tasks in its store (their ids by title).
    task_backend "bd" is the stand-in (scripts/fake_bd.py), which use_bd_stand_in put on PATH."""
    config_path = repo.parent / "dispatch_config.json"
    config_path.write_text(json.dumps({"repo_path": str(repo), "task_backend": "json", "max_workers": workers,
                                       "poll_interval_secs": 0.2, "worker_command": demo_kit.SCRIPTED_AGENT,
                                       **settings}), encoding="utf-8")
    if settings.get("task_backend") == "bd":
        subprocess.run(["bd", "init", "--prefix", "proj"], cwd=repo, check=True, capture_output=True)
    store = task_stores.open_task_store(configuration.load_config(str(config_path)))
    return config_path, {title: store.create(title, description).id for title, description in tasks}


def use_bd_stand_in(tmp: Path) -> None:
    os.environ["PATH"] = str(benchkit.write_bd_stand_in(tmp / "bin").parent) + os.pathsep + os.environ["PATH"]


def read_events(repo: Path) -> list[dict]:
    events_file = repo / ".dispatch_logs" / "events.jsonl"
    if not events_file.exists():
        return []
    return [json.loads(line) for line in events_file.read_text(encoding="utf-8").splitlines()]


@dataclasses.dataclass
class Run:
    elapsed: float
    events: list[dict]
    store_calls: int
    profile: pstats.Stats | None = None


def run_dispatcher(repo: Path, tasks: list[tuple[str, str]], workers: int, profile: bool = False,
                   **settings) -> Run:
    config = configuration.load_config(str(write_config(repo, workers, tasks, **settings)[0]))
    store = benchkit.CountingStore(task_stores.open_task_store(config))
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    summary = benchkit.run_dispatcher(config, store, workers)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    assert len(summary["merged"]) == len(tasks), summary
    return Run(elapsed, read_events(repo), store.total, pstats.Stats(profiler) if profiler else None)


def ts(event: dict) -> float:
    return dt.datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def merge_latencies(events: list[dict]) -> list[float]:
    queued = {e["task_id"]: ts(e) for e in events if e["event"] == "merge_queued"}
    return [ts(e) - queued[e["task_id"]] for e in events if e["event"] == "merged"]


def raw_git_merges(repo: Path, count: int) -> list[float]:
    """The merge's own steps by hand on the same repository, each timed: merge-tree, commit-tree
    and the fast-forward of the checked-out main (the branch, one new file, is made untimed)."""
    scratch = repo.parent / "raw-git"
    git(repo, "worktree", "add", "-q", "--detach", str(scratch), "main")
    times = []
    for i in range(count):
        git(scratch, "checkout", "-q", "-B", f"raw{i}", "main")
        (scratch / f"raw{i}.txt").write_text("raw\n", encoding="utf-8")
        git(scratch, "add", f"raw{i}.txt")
        git(scratch, "commit", "-q", "-m", f"raw {i}")
        start = time.perf_counter()
        tree = git(repo, "merge-tree", "--write-tree", "main", f"raw{i}")
        commit = git(repo, "commit-tree", tree, "-p", "main", "-p", f"raw{i}", "-m", f"Merge raw{i}")
        git(repo, "merge", "--ff-only", "-q", commit)
        times.append(time.perf_counter() - start)
    git(repo, "worktree", "remove", "--force", str(scratch))
    return times


def bench_latency(tmp: Path, rounds: int = 3) -> None:
    for label, files in (("small (1 file)", 1), ("large (20,000 files)", 20_000)):
        ours, theirs = [], []
        for r in range(rounds):
            repo = benchkit.make_repo(tmp / f"latency-{files}-{r}", files)
            tasks = [(f"Edit {i}", f"AGENT: append note{i}.txt line") for i in range(6)]
            ours += merge_latencies(run_dispatcher(repo, tasks, 1).events)
            theirs += raw_git_merges(repo, 6)
        print(f"merge latency, {label}: dispatcher median {statistics.median(ours) * 1000:.0f} ms "
              f"(max {max(ours) * 1000:.0f}), raw git median {statistics.median(theirs) * 1000:.0f} ms "
              f"(max {max(theirs) * 1000:.0f}), ratio {statistics.median(ours) / statistics.median(theirs):.2f}x over "
              f"{len(ours)} merges each" + (" (target <= 1.5x)" if files > 1 else ""))


def baseline(repo: Path, count: int) -> float:
    """The same git steps a careful person would script, with the same agent."""
    start = time.perf_counter()
    for i in range(count):
        wt = repo.parent / f"wt{i}"
        git(repo, "worktree", "add", "-q", "-b", f"b{i}", str(wt), "main")
        message = wt / ".current_task.txt"
        message.write_text(f"Task {i}\n\nAGENT: append f{i}.txt line\n", encoding="utf-8")
        agent = [a.replace("{message_file}", str(message)) for a in demo_kit.SCRIPTED_AGENT if a != "{files}"]
        subprocess.run(agent, cwd=wt, check=True, capture_output=True)
        git(repo, "merge", "-q", "--no-ff", "-m", f"Merge b{i}", f"b{i}")
        git(repo, "worktree", "remove", "--force", str(wt))
        git(repo, "branch", "-D", f"b{i}")
    return time.perf_counter() - start


def refills(events: list[dict]) -> list[float]:
    """A worker's exit -> the next worker's start (every task ready from the first)."""
    starts = sorted(ts(e) for e in events if e["event"] == "worker_started")
    return [next(s for s in starts if s >= exited) - exited for exited in
            (ts(e) for e in events if e["event"] == "worker_exited") if any(s >= exited for s in starts)]


def print_profile(run: Run, count: int) -> None:
    print(f"  profile of one run ({run.elapsed:.1f} s, {run.elapsed / count * 1000:.0f} ms per task), per task:")
    for line in benchkit.loop_profile(run.profile, run.elapsed, count):
        print("    " + line)


def bench_overhead(tmp: Path, count: int = 40, rounds: int = 3, profile: bool = False) -> None:
    use_bd_stand_in(tmp)
    tasks = [(f"T{i}", f"AGENT: append f{i}.txt line") for i in range(count)]
    ours, theirs, stand_in = [], [], []
    for r in range(rounds):  # interleaved: a load that comes and goes falls on all three alike
        ours.append(run_dispatcher(benchkit.make_repo(tmp / f"overhead-d{r}"), tasks, 1))
        theirs.append(baseline(benchkit.make_repo(tmp / f"overhead-b{r}"), count))
        stand_in.append(run_dispatcher(benchkit.make_repo(tmp / f"overhead-s{r}"), tasks, 1, task_backend="bd"))
    mine, by_hand = statistics.median(run.elapsed for run in ours), statistics.median(theirs)
    print(f"overhead, {count} tasks, 1 worker, JSON store: dispatcher median {mine:.1f} s, by hand median "
          f"{by_hand:.1f} s, ratio {mine / by_hand:.2f}x (rounds: "
          + ", ".join(f"{run.elapsed / hand:.2f}x" for run, hand in zip(ours, theirs))
          + f"; target <= 1.2x); store calls per task {statistics.median(r.store_calls for r in ours) / count:.1f}")
    waits = [wait for run in ours for wait in refills(run.events)]
    print(f"slot refill, a worker's exit -> the next start (a task ready): median {statistics.median(waits) * 1000:.0f}"
          f" ms, max {max(waits) * 1000:.0f} ms over {len(waits)} (target < 20 ms)")
    bd = statistics.median(run.elapsed for run in stand_in)
    print(f"overhead, the same on the bd stand-in: median {bd:.1f} s, {bd / count * 1000:.0f} ms per task "
          f"({bd / by_hand:.2f}x raw git, which makes no store calls: no target); store calls per task "
          f"{statistics.median(r.store_calls for r in stand_in) / count:.1f}")
    if profile:
        print_profile(run_dispatcher(benchkit.make_repo(tmp / "overhead-profile"), tasks, 1, profile=True), count)


def bench_idle(tmp: Path, secs: float = 60) -> None:
    """Two workers that run past the measurement: the dispatcher has nothing to do but wait."""
    repo = benchkit.make_repo(tmp / "idle")
    tasks = [(f"Long {i}", f"AGENT: sleep {secs + 15:g}\nAGENT: append long{i}.txt x") for i in range(2)]
    poll = configuration.Config.poll_interval_secs
    run = threading.Thread(target=run_dispatcher, args=(repo, tasks, 2), kwargs={"poll_interval_secs": poll})
    run.start()
    deadline = time.monotonic() + 60
    while sum(e["event"] == "worker_started" for e in read_events(repo)) < 2:
        if time.monotonic() > deadline or not run.is_alive():
            raise SystemExit("idle: the two workers did not start within 60 s")
        time.sleep(0.1)
    cpu = time.process_time()  # this process's threads: the dispatcher's (the agents are other processes)
    time.sleep(secs)
    used = time.process_time() - cpu
    run.join()
    print(f"idle, 2 workers running, poll_interval_secs {poll:g}: the dispatcher used {used * 1000:.0f} ms of CPU "
          f"in {secs:g} s, {used / secs * 100:.2f}% of a core (target < 1%)")


def bench_parallelism(tmp: Path, count: int = 24, workers: int = 4, sleep: float = 2.0) -> None:
    repo = benchkit.make_repo(tmp / "parallel")
    tasks = [(f"P{i}", f"AGENT: sleep {sleep}\nAGENT: append p{i}.txt line") for i in range(count)]
    run = run_dispatcher(repo, tasks, workers)
    makespan, events = run.elapsed, run.events
    merge_time = sum(merge_latencies(events))
    ideal = (count / workers) * sleep + merge_time / workers
    print(f"parallelism, {count} tasks, {workers} workers, {sleep:g} s agents: makespan {makespan:.1f} s, "
          f"ideal {ideal:.1f} s ({count // workers} rounds x {sleep:g} s + merges), ratio {makespan / ideal:.2f}x "
          "(target <= 1.15x)")
    refill = refills(events)
    print(f"slot refill (worker exit -> next start): median {statistics.median(refill) * 1000:.0f} ms, "
          f"max {max(refill) * 1000:.0f} ms (target < 20 ms)")


def bench_responsiveness(tmp: Path) -> None:
    """benchkit.RESPONSIVENESS_TASKS, the dispatcher as a process (it gets the two SIGINTs)."""
    repo = benchkit.make_repo(tmp / "responsiveness")
    config_path, ids = write_config(repo, 2, benchkit.RESPONSIVENESS_TASKS, **benchkit.RESPONSIVENESS_SETTINGS)
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
    hang_deadline = ts(seen("worker_started", ids["Hangs"])) + benchkit.RESPONSIVENESS_SETTINGS["worker_timeout_secs"]
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
    benches = ["latency", "overhead", "idle", "parallelism", "responsiveness"]
    parser.add_argument("--only", choices=benches, action="append")
    parser.add_argument("--profile", action="store_true", help="with overhead: the share of each loop step")
    args = parser.parse_args()
    chosen = args.only or benches
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        if "latency" in chosen:
            bench_latency(tmp)
        if "overhead" in chosen:
            bench_overhead(tmp, profile=args.profile)
        if "idle" in chosen:
            bench_idle(tmp)
        if "parallelism" in chosen:
            bench_parallelism(tmp)
        if "responsiveness" in chosen:
            bench_responsiveness(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
