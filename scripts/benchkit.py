"""The benches' own helpers (scripts/bench_*.py, soak.py), not a program: repositories, a quiet
in-process run, a store that counts its calls, the bd stand-in on PATH, a long events history, the
loop's profile, a private `ollama serve`. Some tests share them (the responsiveness scenario, the
events history, `ollama serve`, the bd stand-in): they import this module from scripts/."""
from __future__ import annotations

import datetime as dt
import json
import os
import pstats
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS.parent))
from crew import config as configuration  # noqa: E402
from crew import demo_kit  # noqa: E402
from crew import processes  # noqa: E402
from crew import workspace  # noqa: E402
from crew.dispatch import loop  # noqa: E402
from crew.dispatch import preflight  # noqa: E402
from crew.tasks import model as task_model  # noqa: E402


def make_repo(folder: Path, files: int = 1) -> Path:
    """A repository of `files` small files in folders of 1,000, plus a README."""
    contents = {f"d{i // 1000}/f{i}.txt": f"file {i}\n" for i in range(files)}
    return demo_kit.scratch_repository(folder / "repo", {**contents, "README.md": "bench\n"})


def run_dispatcher(config: configuration.Settings, store: task_model.TaskStore, max_workers: int) -> dict:
    """A quiet run in this process for the scripts that measure and shake the dispatcher: what
    session.run_session does before its loop (the toolkit's files kept out of the agents' commits,
    the preflight checks), without its lock, signals and report. Returns the run's summary."""
    workspace.exclude_toolkit_files(config)
    preflight.preflight(config)
    return loop.Dispatcher(config, store, max_workers, out=lambda *_: None).run()


class OllamaServe:
    """`ollama serve` on a free loopback port, with its HOME and model store in the binary's folder,
    where scripts/install_ollama.sh and scripts/install_model.sh put them: never the user's own
    ~/.ollama (serve writes a key there)."""

    START_SECS = 60  # it answers within a second or two

    def __init__(self, binary: Path, work: Path):
        self.binary, self.cache, self.work = binary, binary.parent, work
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "HOME": str(self.cache / "home"), "OLLAMA_MODELS": str(self.cache / "models"),
                    "OLLAMA_HOST": f"127.0.0.1:{port}"}
        self.log = work / "ollama-serve.log"
        self.proc = None
        self.http = requests.Session()
        self.http.trust_env = False  # a proxy setting must not capture the loopback server

    def start(self) -> None:
        """Start it and wait until it answers; RuntimeError with its log's tail if it never does."""
        self.proc = processes.start_process([str(self.binary), "serve"], self.work, self.env, self.log, "ollama serve")
        deadline = time.monotonic() + self.START_SECS
        while True:
            try:
                if self.http.get(self.url + "/api/version", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ollama serve did not start; its log ends: {self.log_text()[-1500:]}")
            time.sleep(0.2)

    def models(self) -> set[str]:
        return {m["name"] for m in self.http.get(self.url + "/api/tags", timeout=10).json()["models"]}

    def stop(self) -> None:
        if self.proc is not None:
            processes.kill_tree(self.proc.pid, 5, self.proc)  # its model runner too

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


# The loop-responsiveness scenario (scripts/bench_dispatch.py --only responsiveness, and
# tests/test_responsiveness.py, which checks its order only). With two workers: "Gated" reaches
# a 60 s gate; while it runs "Hangs" outlives worker_timeout_secs, "Quick" exits, and the two
# sleepers wait for the slots those free. A dispatcher that blocks on its gate does none of it.
SLOW_GATE = [sys.executable, "-c", "import time; time.sleep(60)"]
RESPONSIVENESS_SETTINGS = {"max_workers": 2, "worker_timeout_secs": 2, "merge_gate_command": SLOW_GATE}
RESPONSIVENESS_TASKS = [("Gated", "AGENT: append gated.txt g"), ("Hangs", "AGENT: hang"),
                        ("Quick", "AGENT: sleep 1\nAGENT: append quick.txt q"),
                        ("Sleeper 1", "AGENT: sleep 30"), ("Sleeper 2", "AGENT: sleep 30")]


class CountingStore:
    """A task store that counts the calls made to it (by method), for the scripts that measure
    the dispatcher: with bd each call starts a process."""

    def __init__(self, store: task_model.TaskStore):
        self.store, self.name = store, store.name
        self.calls: dict[str, int] = {}
        self.total = 0  # read from other threads while calls are made

    def __getattr__(self, method: str):
        found = getattr(self.store, method)
        if method.startswith("_") or not callable(found):
            return found

        def counted(*args, **kwargs):
            self.calls[method] = self.calls.get(method, 0) + 1
            self.total += 1
            return found(*args, **kwargs)
        return counted


def write_bd_stand_in(bin_dir: Path) -> Path:
    """scripts/fake_bd.py as `bd` in bin_dir, run by this interpreter; the caller puts bin_dir on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    stand_in = SCRIPTS / "fake_bd.py"
    if os.name == "nt":
        exe = bin_dir / "bd.cmd"
        exe.write_text(f'@"{sys.executable}" "{stand_in}" %*\n', encoding="utf-8")
    else:
        exe = bin_dir / "bd"
        exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{stand_in}" "$@"\n', encoding="utf-8")
        exe.chmod(exe.stat().st_mode | 0o111)
    return exe


def event_history(events: int, per_run: int = 1000, workers: int = 4, start: float = 1_700_000_000.0) -> Iterator[str]:
    """Lines of a long events log: runs of about `per_run` events, each a dispatcher with `workers`
    slots whose tasks are claimed, run, gated and merged (every tenth after a conflict task): for
    the report's benchmark and its memory test."""
    at, written, task = start, 0, 0

    def line(name: str, task_id: str | None = None, **fields) -> str:
        nonlocal at, written
        at += 0.5
        written += 1
        stamp = dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return json.dumps({"v": 1, "ts": stamp, "event": name, "task_id": task_id, **fields})

    while written < events:
        yield line("dispatcher_started", pid=1000 + written, max_workers=workers, watch=False)
        run_ends = written + per_run
        while written < min(run_ends, events):
            task += 1
            task_id = f"proj-{task}"
            slot = task % workers + 1
            log = f".dispatch_logs/{task_id}.1.log"
            yield line("claimed", task_id, ready_since=dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat())
            yield line("worker_started", task_id, slot=slot, pid=task, branch=f"work/{task_id}", attempt=1,
                       log=log, title=f"Task number {task}: change something", kind="task")
            yield line("worker_exited", task_id, code=0, log=log)
            yield line("commits_found", task_id, commits=1, log=log)
            yield line("merge_queued", task_id, branch=f"work/{task_id}")
            if task % 10 == 0:
                yield line("merge_conflict", task_id, files=["shared.txt"])
                yield line("conflict_filed", task_id, conflict_task=f"{task_id}-c", kind="conflict",
                           branch=f"work/{task_id}", title=f"Resolve merge conflict: work/{task_id}", for_person=False)
                yield line("worker_started", f"{task_id}-c", slot=slot, pid=task, branch=f"work/{task_id}",
                           attempt=1, log=f".dispatch_logs/{task_id}-c.1.log", title="Resolve", kind="conflict")
                yield line("worker_exited", f"{task_id}-c", code=0)
                yield line("closed", f"{task_id}-c")
                yield line("merge_queued", task_id, branch=f"work/{task_id}", after=f"{task_id}-c")
            yield line("gate_started", task_id, commit="c" * 40, stack=[], pid=task, log=".dispatch_logs/gate.log")
            yield line("gate_passed", task_id, commit="c" * 40)
            yield line("merged", task_id, branch=f"work/{task_id}", commit="m" * 40,
                       diffstat={"files": 1, "insertions": 3, "deletions": 1})
            yield line("closed", task_id)
        yield line("dispatcher_stopped", interrupted=False)
        at += 3600  # the next run, an hour later


# The loop's steps, as a profile names them: (what, file, function). Indented: part of the one above.
LOOP_STEPS = [
    ("workers: starts, exits, judging (WorkerPool.poll)", "dispatch/workers.py", "poll"),
    ("  judging an ended worker from git (Finisher.finish)", "dispatch/finish.py", "finish"),
    ("  starting its process (WorkerPool.started)", "dispatch/workers.py", "started"),
    ("claims back: the worker recorded (Dispatcher.claimed)", "dispatch/loop.py", "claimed"),
    ("planning starts (Dispatcher.fill_slots)", "dispatch/loop.py", "fill_slots"),
    ("merges (MergeQueue.step)", "dispatch/merge_queue.py", "step"),
    ("  deciding: checks, merge-tree, commit-tree (decide)", "dispatch/merge_queue.py", "decide"),
    ("  finishing: close, events, worktree and branch removed (finish_merge)", "dispatch/merge_queue.py",
     "finish_merge"),
    ("store reads handed over and applied (read_store)", "dispatch/loop.py", "read_store"),
    ("pending merges (settle_pending)", "dispatch/loop.py", "settle_pending"),
    ("asleep until woken (Wakeup.wait)", "dispatch/wakeup.py", "wait"),
    ("in all steps: git calls on the loop (git.git)", "crew/git.py", "git"),
    ("in all steps: state writes, synced to disk (StateStore.change)", "dispatch/state_store.py", "change"),
    ("in all steps: store calls waited for (SerialStore, plain calls)", "dispatch/store_thread.py", "call"),
]


def loop_profile(stats: pstats.Stats, elapsed: float, count: int) -> list[str]:
    """Each loop step's time per task (cumulative, on the dispatcher's thread: a profile sees the
    thread it was enabled on) and its share of the run."""
    lines = []
    for what, file, function in LOOP_STEPS:
        secs = sum(stat[3] for (path, _, name), stat in stats.stats.items()
                   if name == function and Path(path).as_posix().endswith(file))
        lines.append(f"{what:<72} {secs / count * 1000:6.1f} ms  {secs / elapsed * 100:4.0f}%")
    return lines
