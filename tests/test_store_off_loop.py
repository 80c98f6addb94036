"""The store writes the loop makes at events (a merge landed, an attempt's outcome, an entry taken
out of the ready ones) go through the store thread: while the store cannot be reached the loop
goes on (workers past their timeout are ended), and once it is back every write is made, once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.dispatching import add_task
from support.dispatching import events
from support.dispatching import merges_of
from support.dispatching import start_dispatcher
from support.dispatching import wait_until
from test_slow_hooks import install_hook
from test_store_down import bd_down_while

from crew.dispatch import revert


pytestmark = pytest.mark.skipif(os.name == "nt", reason="the bd wrapper and the hook are scripts run through #!")


def timed_out(repo: Path, task_id: str) -> bool:
    return any(e["task_id"] == task_id for e in events(repo, "worker_timed_out"))


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_workers_past_their_timeout_are_ended_while_the_store_is_down_at_a_merge_and_an_outcome(
        agent_setup, repo, tmp_path):
    flag, go = tmp_path / "server-down", tmp_path / "go"
    # The store goes down as the first task's merge lands (main's fast-forward runs the user's
    # post-merge hook), once the test says so: its task's close waits for the store from then on.
    install_hook(repo, "post-merge", f'i=0; while [ ! -e "{go}" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); '
                                     f'done; echo down > "{flag}"')
    cfg, _, store = agent_setup(bd_command=str(bd_down_while(tmp_path, flag)), max_workers=2, max_attempts=1,
                                worker_timeout_secs=20)
    merges = add_task(store, "Merges", "append a.txt a", files=["a.txt"], priority=0)
    hangs = add_task(store, "Hangs", "hang", files=["b.txt"], priority=1)
    later = add_task(store, "Hangs later", "hang", files=["c.txt"], priority=2)  # starts in the first one's slot
    proc = start_dispatcher(cfg)
    try:
        wait_until(lambda: any(e["task_id"] == later.id for e in events(repo, "worker_started")), proc,
                   "the third worker started")
        assert not timed_out(repo, hangs.id)
        go.write_text("go", encoding="utf-8")
        wait_until(flag.exists, proc, "the store down as the merge lands")
        # Ended though the merge's bookkeeping waits for the store; and the second is ended too,
        # though the first one's outcome (blocked) waits for it as well.
        wait_until(lambda: timed_out(repo, hangs.id) and timed_out(repo, later.id), proc,
                   "both hanging workers ended while the store is down", timeout=120)
        assert flag.exists()
        names = [(e["event"], e["task_id"]) for e in events(repo)]
        assert names.index(("merged", merges.id)) < names.index(("worker_timed_out", hangs.id))
        assert ("closed", merges.id) not in names  # written once the store is back, not before
        flag.unlink()
        out, err = proc.communicate(timeout=180)
    finally:
        go.write_text("go", encoding="utf-8")
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert out.count("the task store cannot be reached") == 1, out + err
    assert out.count("the task store is reachable again") == 1, out + err
    merged = store.get(merges.id)
    assert merged.status == "closed" and merges_of(repo, merges.id) == 1
    assert [label for label in merged.labels if label.startswith(revert.MERGED_PREFIX)], merged
    for task in (hangs, later):
        assert store.get(task.id).status == "blocked", out + err
    names = [(e["event"], e["task_id"]) for e in events(repo)]
    assert names.count(("closed", merges.id)) == 1
    assert names.count(("blocked", hangs.id)) == names.count(("blocked", later.id)) == 1

