"""SerialStore: the task store used from one thread, in order, without the caller waiting."""
from __future__ import annotations

import threading

import pytest

from crew import errors
from crew.dispatch import store_thread
from crew.dispatch import wakeup
from crew.tasks import json_store


@pytest.fixture
def serial(tmp_path):
    serial = store_thread.SerialStore(json_store.JsonTaskStore(tmp_path / "task_queue.json", "proj", "me"),
                                      wakeup.Wakeup(), print)
    yield serial
    serial.shutdown()


def test_calls_run_in_the_order_made_on_one_thread_of_their_own(serial):
    threads = [serial.batch(lambda store: threading.get_ident()) for _ in range(3)]
    created = [serial.later("create", f"task {i}") for i in range(3)]
    threads.append(serial.batch(lambda store: threading.get_ident()))
    assert len({f.result() for f in threads}) == 1 and threads[0].result() != threading.get_ident()
    assert [f.result().id for f in created] == ["proj-1", "proj-2", "proj-3"]
    assert [t.title for t in serial.list(None)] == ["task 0", "task 1", "task 2"]
    assert serial.name == "json"


def test_a_plain_call_sees_everything_handed_over_before_it(serial):
    task = serial.create("claim me")
    claimed = serial.later("claim", task.id, "me")
    assert serial.get(task.id).status == "in_progress"  # the claim ran first
    assert claimed.done() and claimed.result() is True


def test_the_caller_goes_on_while_a_slow_call_runs(serial):
    release = threading.Event()
    slow = serial.batch(lambda store: release.wait(30))
    after = serial.later("create", "queued behind the slow call")
    assert not slow.done() and not after.done()  # handed over, nobody waited
    release.set()
    assert slow.result() is True and after.result().id == "proj-1"


def test_errors_come_back_to_whoever_takes_the_result(serial):
    assert isinstance(serial.later("get", "proj-zzz").exception(), errors.TaskNotFound)
    with pytest.raises(errors.TaskNotFound):
        serial.get("proj-zzz")
    with pytest.raises(AttributeError):
        serial.no_such_method
