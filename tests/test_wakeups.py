"""The loop wakes on what happened: a store result, a process of ours exiting, a finished start,
each posted to its one wait. With poll_interval_secs at an hour, a run that finishes at all
finished on those wake-ups; and while its workers run, the loop sleeps (no busy loop). Order
and counts only: the figures are scripts/bench_dispatch.py's."""
from __future__ import annotations

import subprocess
import sys
import threading

from crew.dispatch import store_thread
from crew.dispatch import wakeup as wakeups
from crew.dispatch.loop import Dispatcher
from crew.tasks import json_store
from support.dispatching import add_task, events

HOUR = 3600  # the poll interval: nothing in these tests may wait for it
LIMIT = 120  # a bound on a loaded machine, never reached when the wake-ups work


def woken_by(wakeup: wakeups.Wakeup, cause) -> list[str]:
    """What happened, in order: the cause's own mark, and the wait's return."""
    order: list[str] = []
    waiting = threading.Thread(target=lambda: (wakeup.wait(HOUR), order.append("woken")))
    waiting.start()
    cause(order)
    waiting.join(LIMIT)
    assert not waiting.is_alive(), "the wait was never woken"
    return order


def test_a_store_result_wakes_the_wait(tmp_path):
    wakeup = wakeups.Wakeup()
    serial = store_thread.SerialStore(json_store.JsonTaskStore(tmp_path / "task_queue.json", "proj", "me"), wakeup,
                                      print)
    release = threading.Event()
    slow = serial.batch(lambda store: release.wait(LIMIT))

    def cause(order):
        order.append("handed over")
        release.set()
        slow.result(LIMIT)
        order.append("result")

    try:
        assert woken_by(wakeup, cause)[0] == "handed over"
    finally:
        serial.shutdown()


def test_a_process_exit_wakes_the_wait():
    wakeup = wakeups.Wakeup()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    wakeup.watch_exit(proc)

    def cause(order):
        order.append("running" if proc.poll() is None else "exited early")
        proc.stdin.close()  # the child reads to the end of its input, then exits

    assert woken_by(wakeup, cause) == ["running", "woken"]
    assert proc.returncode == 0  # reaped before the post


def test_what_was_posted_during_a_pass_wakes_the_next_wait_at_once():
    wakeup = wakeups.Wakeup()
    wakeup.post()  # during the pass
    assert woken_by(wakeup, lambda order: None) == ["woken"]


def run_in_thread(dispatcher: Dispatcher) -> None:
    run = threading.Thread(target=dispatcher.run)
    run.start()
    run.join(LIMIT)
    assert not run.is_alive(), "the run waited for its hour-long poll interval"


def test_a_run_goes_on_exits_results_and_gates_not_on_the_poll_interval(json_agent_setup, repo):
    # One worker: each start waits for the last worker's exit, its claim, its worktree.
    _, config, store = json_agent_setup(max_workers=1, poll_interval_secs=HOUR,
                                        merge_gate_command=[sys.executable, "-c", "pass"])
    tasks = [add_task(store, f"Task {i}", f"append f{i}.txt x") for i in range(3)]
    run_in_thread(Dispatcher(config, store, 1, out=lambda *_: None))
    log = [(e["event"], e["task_id"]) for e in events(repo)]
    for task in tasks:
        assert log.index(("worker_exited", task.id)) < log.index(("gate_started", task.id)) \
            < log.index(("gate_passed", task.id)) < log.index(("merged", task.id))
    starts = [task_id for event, task_id in log if event == "worker_started"]
    assert starts == [task.id for task in tasks] and store.get(tasks[-1].id).status == "closed"


def test_the_loop_sleeps_while_its_workers_run(json_agent_setup, repo):
    _, config, store = json_agent_setup(max_workers=2, poll_interval_secs=HOUR)
    for i in range(2):
        add_task(store, f"Sleeper {i}", "sleep 3", f"append s{i}.txt x")
    dispatcher = Dispatcher(config, store, 2, out=lambda *_: None)
    passes = []
    poll = dispatcher.pool.poll
    dispatcher.pool.poll = lambda finish: passes.append(1) or poll(finish)
    run_in_thread(dispatcher)
    assert len(events(repo, "merged")) == 2
    # A pass for each thing that happened (claims, starts, exits, merges, reads: about 20 here),
    # none for the 3 s the agents slept; a loop on a 10 ms step makes 300.
    assert len(passes) < 60, len(passes)
