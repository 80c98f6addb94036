"""Helpers for the dispatcher tests: run it, read what it recorded, count what reached main."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crew import demo_kit
from crew.dispatch.loop import Dispatcher
from support.repos import ROOT, git

DISPATCH = ROOT / "dispatch_workers.py"  # the command, as users run it
AGENT_COMMAND = demo_kit.SCRIPTED_AGENT  # the scripted agent, as a worker_command
# How long a wait for something the dispatcher does may take: a bound for a test that went wrong,
# never a measure; a loaded 2-core machine (CI) takes many times what an idle one does.
WAIT_SECS = 180


def dispatch(cfg: Path, *args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """The dispatcher as a user runs it: a separate process."""
    return subprocess.run([sys.executable, str(DISPATCH), "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def start_dispatcher(cfg: Path, *args: str) -> subprocess.Popen:
    """The dispatcher as a process the test goes on beside (its output is small: pipes are safe)."""
    return subprocess.Popen([sys.executable, str(DISPATCH), "--config", str(cfg), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition, proc: subprocess.Popen | None, what: str, timeout: float = WAIT_SECS) -> None:
    """Poll until condition() holds; fail naming `what` if it never does, or if `proc` (the
    dispatcher) exits first, which is then killed if need be and its output shown."""
    deadline = time.monotonic() + timeout
    while not condition():
        exited = proc is not None and proc.poll() is not None
        if exited or time.monotonic() > deadline:
            why = "the dispatcher exited first" if exited else f"not within {timeout} s"
            if proc:
                proc.kill()
                out, err = proc.communicate()
                why += f" (exit {proc.returncode})\n{out}\n{err}"
            pytest.fail(f"never saw {what}: {why}")
        time.sleep(0.05)


def wait_for(condition, what: str, limit: float = WAIT_SECS):
    """Poll until condition() gives something true, and return it; fail naming `what` if it never does."""
    deadline = time.monotonic() + limit
    while not (found := condition()):
        assert time.monotonic() < deadline, f"never saw {what} within {limit} s"
        time.sleep(0.05)
    return found


def start_dispatcher_with_a_worker(cfg: Path, repo: Path) -> subprocess.Popen:
    """The dispatcher as a process, once it has started its first worker."""
    proc = start_dispatcher(cfg)
    wait_until(lambda: events(repo, "worker_started"), proc, "a worker start")
    return proc


def has_commit(repo: Path, branch: str) -> bool:
    """Whether the branch has a commit that main has not."""
    result = subprocess.run(["git", "rev-list", "--count", f"main..refs/heads/{branch}"], cwd=repo,
                            capture_output=True, text=True)
    return result.stdout.strip() not in ("", "0")


def events(repo: Path, name: str | None = None) -> list[dict]:
    path = repo / ".dispatch_logs" / "events.jsonl"
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [e for e in found if name is None or e["event"] == name]


def merge_subjects(repo: Path) -> list[str]:
    """Subjects of the merge commits on main, oldest first."""
    return git(repo, "log", "--merges", "--first-parent", "--reverse", "--format=%s", "main").splitlines()


def merges_of(repo: Path, task_id: str) -> int:
    return sum(1 for s in merge_subjects(repo) if s.endswith(f"({task_id})"))


def add_task(store, title: str, *cues: str, files=(), **fields):
    description = "\n".join(f"AGENT: {cue}" for cue in cues)
    return store.create(title, description, labels=[f"file:{f}" for f in files], **fields)


def main_file(repo: Path, name: str) -> str | None:
    result = subprocess.run(["git", "show", f"main:{name}"], cwd=repo, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def assert_clean_finish(repo: Path, worktree_root: Path) -> None:
    """No worktree left but the main one, fsck clean, nothing pending."""
    listing = git(repo, "worktree", "list", "--porcelain")
    assert listing.count("worktree ") == 1, listing
    subprocess.run(["git", "fsck", "--no-progress"], cwd=repo, check=True, capture_output=True)
    pending = repo / ".dispatch_pending_merge_retries.json"
    assert not pending.exists() or json.loads(pending.read_text(encoding="utf-8")) == {}
    assert not worktree_root.exists() or [p for p in worktree_root.iterdir() if p.name != ".gate"] == []


def run_in_process(config, store, on_message=None, max_workers=2) -> dict:
    """Run the dispatcher in this process, seeing each progress line as it is said."""
    said = []

    def out(message: str) -> None:
        said.append(message)
        if on_message:
            on_message(message)

    summary = Dispatcher(config, store, max_workers, out=out).run()
    summary["said"] = said
    return summary


def run_with_a_person_on_followups(config, store) -> tuple[str, dict]:
    """Run until a conflict or fix task is filed; a person claims it at once, so the dispatcher
    leaves it to them. Returns that task's id and the run's summary."""
    filed = []

    def person_claims(message: str) -> None:
        if "; filed " in message:
            filed.append(message.rsplit(" ", 1)[1])
            store.claim(filed[-1], "a-human")

    summary = run_in_process(config, store, person_claims)
    [followup_id] = filed
    return followup_id, summary


def conflicting_pair(store):
    """Two tasks that change the same line differently (no file labels, so they run together)."""
    red = add_task(store, "Make it red", "sleep 0.5", "replace settings.ini color=blue color=red", priority=1)
    green = add_task(store, "Make it green", "sleep 0.5", "replace settings.ini color=blue color=green", priority=1)
    return red, green


def bd(config, *args: str) -> dict | list:
    """The bd command the store runs (the stand-in or the real bd), as another host runs it."""
    result = subprocess.run([shutil.which(config.bd_command), *args, "--json"], cwd=config.root, check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout)


def claim_taken_while_stalled(config, repo: Path, task_id: str, proc: subprocess.Popen) -> tuple[str, str]:
    """Once the agent has committed on the task's branch, the dispatcher `proc` stalls (SIGSTOP: a
    suspended laptop) until its lapsed lease is taken back and host-b claims the task; its output
    once it has gone on and exited."""
    wait_until(lambda: has_commit(repo, f"work/{task_id}"), proc, "the agent's commit")
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: bd(config, "reclaim", "--older-than", "0s", "--actor", "host-b")["count"], None,
                   "the lapsed lease taken back")
        bd(config, "update", task_id, "--claim", "--actor", "host-b")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    return proc.communicate(timeout=240)
