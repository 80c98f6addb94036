#!/usr/bin/env python3
"""Chaos: a 12-task run in which the dispatcher is killed again and again, then must finish clean.

Tasks edit the same lines (conflicts), hang past the timeout, crash, write follow-ups, or just
work. By hand, this script SIGKILLs the dispatcher at random wall-clock moments; the test suite
(tests/test_chaos.py) kills it at a seeded sequence of the named failpoints instead. Either way,
at the end:
  every task is closed, or blocked with a reason; each task's branch was merged at most once;
  main has no conflict markers; git fsck is clean; no worktree is left, and no branch but those
  of blocked tasks; no follow-up is lost or ingested twice; the task queue file is valid.

examples:
  python3 scripts/chaos.py                  one run, seed 1
  python3 scripts/chaos.py --seed 7 --runs 5
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from crew import config as configuration  # noqa: E402
from crew import errors  # noqa: E402
from crew import git  # noqa: E402
from crew import tasks as task_stores  # noqa: E402
from crew import demo_kit  # noqa: E402

FAILPOINTS = ["after_claim", "after_worktree", "after_agent_start", "after_worker_exit", "during_leftover_commit",
              "during_merge", "after_conflict_task", "ingest_after_create"]
GATE_FAILPOINTS = [*FAILPOINTS, "during_gate"]  # with a merge gate
FOLLOWUPS = ["Document the widget", "Benchmark the widget"]


def build_scenario(folder: Path, gate_parallelism: int | None = None) -> Path:
    """A repository with 12 tasks of every kind; returns the config file's path. gate_parallelism:
    with a merge gate (a short one that passes), run that many gates at once."""
    repo = demo_kit.scratch_repository(folder / "chaos-repo", {"settings.ini": "[ui]\ncolor=blue\n"})
    config_path = folder / "dispatch_config.json"
    gate = {"merge_gate_command": [sys.executable, "-c", "import time; time.sleep(0.3)"],
            "merge_gate_parallelism": gate_parallelism} if gate_parallelism else {}
    config_path.write_text(json.dumps({
        "repo_path": str(repo), "task_backend": "json", "task_prefix": "chaos", "max_workers": 3,
        "poll_interval_secs": 0.1, "worker_timeout_secs": 2, "worker_kill_grace_secs": 0.5, "max_attempts": 2,
        "breaker_failures": 1000,  # the failures are on purpose: the breaker must not end the run
        "worker_command": demo_kit.SCRIPTED_AGENT, **gate}), encoding="utf-8")
    store = task_stores.open_task_store(configuration.load_config(str(config_path)))
    cue = lambda *lines: "\n".join(f"AGENT: {line}" for line in lines)  # noqa: E731
    for color in ("red", "green", "yellow"):
        store.create(f"Make the UI {color}", cue("sleep 0.3", f"replace settings.ini color=blue color={color}"),
                     priority=1)
    store.create("Hang forever", cue("hang"))
    store.create("Crash at once", cue("crash"))
    for i, idea in enumerate(FOLLOWUPS):
        store.create(f"Widget part {i}", cue(f"append widget{i}.txt part {i}", f"followup {idea}"),
                     labels=[f"file:widget{i}.txt"])
    for i in range(5):
        store.create(f"Plain task {i}", cue("sleep 0.2", f"append plain{i}.txt line {i}", f"uncommitted u{i}.txt u"),
                     labels=[f"file:plain{i}.txt"])
    return config_path


def dispatcher(config_path: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "dispatch_workers.py"), "--config", str(config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def wait_for_orphans(repo: Path, limit: float = 30) -> None:
    """A killed dispatcher's workers run on; the next one adopts them, but give them a moment."""
    deadline = time.monotonic() + limit
    state = repo / ".dispatch_state.json"
    while time.monotonic() < deadline and state.exists():
        workers = json.loads(state.read_text(encoding="utf-8")).get("workers", [])
        if not workers:
            return
        time.sleep(0.1)


def finish(config_path: Path, limit: int = 5) -> int:
    """Run the dispatcher to its end (a clean run may need a second pass for follow-ups)."""
    code = 1
    for _ in range(limit):
        proc = dispatcher(config_path)
        _, err = proc.communicate(timeout=600)
        code = proc.returncode
        if code in (0, 1):
            return code
        raise RuntimeError(f"the dispatcher failed unexpectedly (exit {code}): {err[-2000:]}")
    return code


def check_invariants(config_path: Path) -> list[str]:
    """Everything that must hold after any sequence of kills; returns the problems found."""
    config = configuration.load_config(str(config_path))
    repo, problems = config.root, []
    try:
        tasks = task_stores.open_task_store(config).list(None)
    except errors.UserError as exc:
        return [f"the task queue is not valid: {exc}"]
    subjects = git.git("log", "--merges", "--first-parent", "--format=%s", "main", cwd=repo).stdout.splitlines()
    for task in tasks:
        if task.status == "blocked" and not task.notes.strip():
            problems.append(f"{task.id} is blocked without a reason")
        elif task.status not in ("closed", "blocked"):
            problems.append(f"{task.id} ({task.title}) ended {task.status}")
        merges = sum(1 for s in subjects if s.endswith(f"({task.id})"))
        if merges > 1:
            problems.append(f"{task.id} was merged {merges} times")
    markers = git.git("grep", "-n", "-e", "^<<<<<<< ", "-e", "^>>>>>>> ", "main", "--", ".", cwd=repo, check=False)
    if markers.stdout.strip():
        problems.append(f"main has conflict markers: {markers.stdout.strip()[:200]}")
    fsck = git.git("fsck", "--no-progress", cwd=repo, check=False)
    if fsck.returncode:
        problems.append(f"git fsck: {fsck.stdout}{fsck.stderr}"[:300])
    worktrees = git.git("worktree", "list", "--porcelain", cwd=repo).stdout.count("worktree ")
    if worktrees != 1:
        problems.append(f"{worktrees - 1} worktree(s) left")
    blocked = {t.id for t in tasks if t.status == "blocked"}
    branches = git.git("branch", "--list", "--format=%(refname:short)", "work/*", cwd=repo).stdout.split()
    for branch in branches:
        if branch.removeprefix("work/") not in blocked:
            problems.append(f"branch {branch} left, but its task is not blocked")
    titles = [t.title for t in tasks]
    for idea in FOLLOWUPS:
        if titles.count(idea) != 1:
            problems.append(f"follow-up {idea!r} became {titles.count(idea)} tasks")
    return problems


def run_with_random_kills(seed: int) -> list[str]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as folder:
        config_path = build_scenario(Path(folder))
        repo = configuration.load_config(str(config_path)).root
        for _ in range(rng.randint(3, 8)):
            proc = dispatcher(config_path)
            time.sleep(rng.uniform(0.2, 3.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            wait_for_orphans(repo)
        finish(config_path)
        return check_invariants(config_path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    failed = 0
    for run in range(args.runs):
        seed = args.seed + run
        started = time.monotonic()
        problems = run_with_random_kills(seed)
        status = "ok" if not problems else "FAILED"
        print(f"seed {seed}: {status} in {time.monotonic() - started:.0f} s")
        for problem in problems:
            print(f"  - {problem}")
        failed += bool(problems)
    print(f"{args.runs - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
