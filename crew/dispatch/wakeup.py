"""What wakes the dispatcher's loop: a result from a thread it handed work to (the store thread,
a starter thread), a process of ours exiting, or a signal. Each posts to one Wakeup, and the loop
waits on it once a pass, with the time to its next deadline as the timeout. A process is watched
by a thread that waits for it (pidfd and SIGCHLD do not exist on Windows; a waiting thread works
everywhere)."""
from __future__ import annotations

import concurrent.futures
import subprocess
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar


Params = ParamSpec("Params")
Result = TypeVar("Result")


class Wakeup:
    def __init__(self) -> None:
        self._posted = threading.Event()

    def post(self, *_: Any) -> None:
        """Something happened that the loop acts on (takes any arguments: a future's callback)."""
        self._posted.set()

    def wait(self, timeout: float) -> None:
        """Until something is posted, or `timeout` seconds. What was posted while the loop was on
        its pass wakes it at once: nothing is lost between a pass and its wait."""
        self._posted.wait(max(0.0, timeout))
        self._posted.clear()

    def watch_exit(self, proc: subprocess.Popen[Any]) -> None:
        """Post once `proc` has exited (and is reaped: its returncode is set)."""
        threading.Thread(target=self._wait_for, args=(proc,), name=f"exit-{proc.pid}", daemon=True).start()

    def _wait_for(self, proc: subprocess.Popen[Any]) -> None:
        proc.wait()
        self.post()


class PostingExecutor(concurrent.futures.ThreadPoolExecutor):
    """Threads whose every finished piece of work (a result, or an error) wakes the loop."""

    def __init__(self, wakeup: Wakeup, max_workers: int, thread_name_prefix: str):
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.wakeup = wakeup

    def submit(self, fn: Callable[Params, Result], /, *args: Params.args,
               **kwargs: Params.kwargs) -> concurrent.futures.Future[Result]:
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self.wakeup.post)
        return future
