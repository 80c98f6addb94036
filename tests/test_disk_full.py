"""A full disk while the dispatcher writes its state or its logs: one line, and nothing corrupt."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from crew import config as configuration
from crew import errors
from crew import files
from crew import tasks
from support.dispatching import (AGENT_COMMAND, add_task, dispatch, has_commit, main_file, merges_of,
                                 start_dispatcher, wait_until)
from support.repos import commit_file, git

linux_only = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")


@linux_only
def test_a_state_write_that_hits_a_full_disk_leaves_the_file_as_it_was(tmp_path):
    state = files.StateFile(tmp_path / ".dispatch_state.json", {})
    state.write({"workers": [], "attempts": {"proj-1": 1}})
    # /dev/full answers every write with ENOSPC: a real full disk, no privileges needed.
    (tmp_path / f"..dispatch_state.json.{os.getpid()}.tmp").symlink_to("/dev/full")
    with pytest.raises(errors.UserError, match=r"cannot write .*\.dispatch_state\.json: No space left on device"):
        state.write({"workers": [], "attempts": {}})
    assert state.read() == {"workers": [], "attempts": {"proj-1": 1}}
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # no temp file left behind


@linux_only
def test_an_event_that_hits_a_full_disk_is_one_line(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    logs = repo / ".dispatch_logs"
    logs.mkdir()
    (logs / "events.jsonl").symlink_to("/dev/full")
    add_task(store, "Anything", "append x.txt x")
    proc = dispatch(cfg)
    assert proc.returncode == 1
    assert proc.stderr.endswith("events.jsonl: No space left on device; the files written before are intact, "
                                "free some space and run again\n") and proc.stderr.count("\n") == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (mounting needs root); unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the /dev/full tests cover the same code")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_mid_run_is_one_line_and_the_restart_finishes(small_disk, tmp_path):
    repo = small_disk / "proj"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit_file(repo, "README.md", "# proj\n")
    cfg = tmp_path / "dispatch_config.json"
    cfg.write_text(json.dumps({"repo_path": str(repo), "task_backend": "json", "task_prefix": "proj",
                               "worker_command": AGENT_COMMAND, "poll_interval_secs": 0.1, "max_workers": 1,
                               "worker_kill_grace_secs": 1}), encoding="utf-8")
    store = tasks.open_task_store(configuration.load_config(str(cfg)))
    task = add_task(store, "Writes, then waits", "append a.txt a", "sleep 3")
    proc = start_dispatcher(cfg)
    wait_until(lambda: has_commit(repo, f"work/{task.id}"), proc, "the agent's commit")
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as fh:  # fill the disk while the agent sleeps
        with contextlib.suppress(OSError):
            while fh.write(b"\0" * 4096):
                pass
    state_before = (repo / ".dispatch_state.json").read_text(encoding="utf-8")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.count("\n") == 1 and "No space left on device" in err, err
    assert (repo / ".dispatch_state.json").read_text(encoding="utf-8") == state_before  # intact, still the worker
    assert json.loads(state_before)["workers"][0]["task_id"] == task.id
    filler.unlink()
    again = dispatch(cfg)
    assert again.returncode == 0, again.stderr
    assert store.get(task.id).status == "closed" and merges_of(repo, task.id) == 1
    assert main_file(repo, "a.txt") == "a\n"
