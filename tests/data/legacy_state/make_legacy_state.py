#!/usr/bin/env python3
"""How the state files beside this script were made (kept so they can be made again).

For each form of the state (a folder here) it runs the dispatch_workers.py of a release that
wrote that form (FORMS: the release's commit in this repository), with the scripted
agent, on a scratch repository: three tasks (two of them append to the same file, so the
second conflicts), one task that hangs, and a merge gate that sleeps, so that one instant has
a running worker, a merge-queue entry, a pending merge and attempts. The dispatcher is killed
(SIGKILL, as a crash) at that instant and its two state files are copied to
<form>/state.json (.dispatch_state.json) and <form>/pending.json
(.dispatch_pending_merge_retries.json): the names git is told to ignore are not used here.

    python tests/data/legacy_state/make_legacy_state.py v1-untitled v1-titled v1-timed-out-flag v1-claims

POSIX only (it kills process groups); it reads the commits from the repository it is in.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
FILES = (".dispatch_state.json", ".dispatch_pending_merge_retries.json")
COPIES = ("state.json", "pending.json")
# Each form of state version 1, and the release commit whose dispatcher writes it: pending merges
# without titles; with titles; a worker's timeout as a flag; records carrying claims' actors.
FORMS = {"v1-untitled": "1cfa6f1", "v1-titled": "d284fad", "v1-timed-out-flag": "7bedd66", "v1-claims": "4a44a78"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def make(form: str, scratch: Path) -> None:
    commit = FORMS[form]
    old = scratch / "code"
    git(ROOT, "worktree", "add", "-q", "--detach", str(old), commit)
    try:
        repo = scratch / "proj"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        (repo / "README.md").write_text("# proj\n", encoding="utf-8")
        (repo / "notes.txt").write_text("start\n", encoding="utf-8")
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", "initial commit")
        cfg = scratch / "dispatch_config.json"
        cfg.write_text(json.dumps({
            "repo_path": str(repo), "task_backend": "json", "task_prefix": "proj", "max_workers": 3,
            "poll_interval_secs": 0.1, "worker_timeout_secs": 120, "worker_kill_grace_secs": 1,
            "avoid_file_overlap": False, "worktree_root": str(scratch / "worktrees"),
            "worker_command": [sys.executable, str(old / "scripts" / "demo_agent.py"), "{message_file}", "{files}"],
            "merge_gate_command": [sys.executable, "-c", "import time; time.sleep(3)"]}), encoding="utf-8")
        add = ("import sys; sys.path.insert(0, sys.argv[1]); import common; "
               "store = common.open_task_store(common.load_config(sys.argv[2])); "
               "[store.create(t, 'AGENT: ' + c, priority=p) for t, c, p in "
               "[('First note', 'append notes.txt one', 0), ('Second note', 'append notes.txt two', 0), "
               "('Changelog', 'append CHANGELOG.md started', 1), ('Slow one', 'hang', 2)]]")
        subprocess.run([sys.executable, "-c", add, str(old), str(cfg)], check=True)
        log = (scratch / "dispatch.log").open("w")
        proc = subprocess.Popen([sys.executable, str(old / "dispatch_workers.py"), "--config", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            state, pending = read(repo / FILES[0]), read(repo / FILES[1])
            if pending and state.get("merge_queue") and state.get("workers"):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{form} ({commit}): the run never reached a worker, a queued merge and a "
                                 f"pending merge together (see {scratch / 'dispatch.log'})")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # a crash: the dispatcher alone; its workers run on
        proc.wait()
        out = HERE / form
        out.mkdir(exist_ok=True)
        for name, copy in zip(FILES, COPIES):
            shutil.copyfile(repo / name, out / copy)
        for worker in read(repo / FILES[0])["workers"]:
            if worker.get("pid"):
                try:
                    os.killpg(worker["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a gate it had started
        except ProcessLookupError:
            pass
    finally:
        git(ROOT, "worktree", "remove", "--force", str(old))


if __name__ == "__main__":
    for name in sys.argv[1:]:
        folder = Path(tempfile.mkdtemp(prefix=f"legacy-{name}-"))
        make(name, folder)
        shutil.rmtree(folder)  # kept when the run failed, to be looked at
        print(f"{name}: {', '.join(COPIES)} written")
