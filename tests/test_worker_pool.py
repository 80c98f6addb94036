"""The worker pool ends process trees without waiting for them: a worker keeps its slot (and its
worktree) until its tree is gone, and is finished on the pass where it is."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from crew import processes
from crew.dispatch import records
from crew.dispatch import wakeup
from crew.dispatch import workers
from crew.dispatch.ledger import Ledger

pytestmark = pytest.mark.skipif(processes.IS_WINDOWS, reason="POSIX process groups (Windows uses taskkill /T)")


@pytest.fixture
def pool(json_agent_setup):
    _, config, store = json_agent_setup(max_workers=1, worker_kill_grace_secs=60)
    pool = workers.WorkerPool(config, Ledger(config, store, say=lambda message: None), 1, lambda: None,
                                wakeup.Wakeup())
    yield pool
    pool.starter.shutdown()
    for kill in pool.kills.values():  # a failed test leaves no tree behind
        processes.signal_group(kill.pid, 9)


def add_worker(pool: workers.WorkerPool, tmp_path: Path, script: str) -> records.Worker:
    """A running worker whose process is `sh -c script`, in its own process group."""
    worker = records.Worker(slot=1, task_id="proj-1", title="t", branch="work/proj-1", worktree=tmp_path,
                            base="", attempt=1, started_at=time.time(), deadline=None, log="worker.log")
    proc = processes.start_process(["sh", "-c", script], tmp_path, None, tmp_path / "worker.log", pool.mark(worker))
    worker.pid, worker.pid_start_time = proc.pid, processes.process_start_time(proc.pid)
    pool.workers[1], pool.procs[1] = worker, proc
    return worker


def poll_until_finished(pool: workers.WorkerPool, finished: list, limit: float = 30) -> None:
    def finish(worker):
        finished.append(worker)
        pool.forget(worker)
    deadline = time.monotonic() + limit
    while not finished:
        assert time.monotonic() < deadline, f"the worker was not finished within {limit} s"
        pool.poll(finish)
        time.sleep(0.01)


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear within 30 s"
        time.sleep(0.01)


def test_an_ended_worker_keeps_its_slot_until_its_tree_is_gone(pool, tmp_path):
    ready = tmp_path / "ready"
    worker = add_worker(pool, tmp_path, f"trap '' TERM; touch '{ready}'; sleep 60 & wait")
    wait_for_file(ready)
    pool.end(worker, records.TIMED_OUT)
    # end() returned at once: the tree ignores the terminate signal, and its grace is a minute off.
    assert processes.group_alive(worker.pid)
    state = json.loads((pool.config.root / ".dispatch_state.json").read_text(encoding="utf-8"))
    assert [w["ended"] for w in state["workers"]] == [records.TIMED_OUT]  # recorded before the kill
    finished: list = []
    assert pool.poll(finished.append) is False and finished == []
    assert pool.free_slots() == []  # no new worker may share the worktree of one still being killed
    pool.kills[1].deadline = time.monotonic()  # the grace is over
    poll_until_finished(pool, finished)
    assert finished == [worker] and pool.free_slots() == [1]
    assert not processes.group_alive(worker.pid)


def test_an_exited_worker_is_finished_only_once_what_it_left_running_is_gone(pool, tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "LEFTOVER_GRACE_SECS", 60)  # so the first polls see the leftover alive
    ready = tmp_path / "ready"
    worker = add_worker(pool, tmp_path, f"(trap '' TERM; touch '{ready}'; exec sleep 60) & "
                                        f"while [ ! -e '{ready}' ]; do sleep 0.01; done")
    pool.procs[1].wait(timeout=30)  # the agent exited; its background sleep, deaf to SIGTERM, did not
    finished: list = []
    assert pool.poll(finished.append) is True  # noticed the exit
    assert finished == [] and pool.free_slots() == [] and processes.group_alive(worker.pid)
    pool.kills[1].deadline = time.monotonic()
    poll_until_finished(pool, finished)
    assert finished == [worker] and not processes.group_alive(worker.pid)
