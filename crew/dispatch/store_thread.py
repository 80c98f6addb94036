"""The task store on a thread of its own, so that a slow store call (bd: 300-500 ms each) never
holds up the loop that watches the workers."""
from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar

from crew.dispatch import wakeup as wakeups
from crew.tasks import model


Result = TypeVar("Result")


class SerialStore:
    """Every call reaches the store on one thread, in the order it was made. The loop hands calls
    over (`later`, `batch`) and is woken by their results (posted to `wakeup`); any other store method
    (`serial.close(...)`) is a plain call that returns its result, after everything handed over
    before it. Work given to `batch` gets the store itself: it must not call back into this object
    (its thread would wait for itself)."""

    def __init__(self, store: model.TaskStore, wakeup: wakeups.Wakeup):
        self.store = store
        self.name = store.name
        self._thread = wakeups.PostingExecutor(wakeup, 1, "task-store")

    def later(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        return self._thread.submit(getattr(self.store, method), *args, **kwargs)

    def batch(self, work: Callable[[model.TaskStore], Result]) -> concurrent.futures.Future[Result]:
        return self._thread.submit(work, self.store)

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_") or not callable(getattr(self.store, method)):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.later(method, *args, **kwargs).result()
        return call

    def shutdown(self) -> None:
        """Finish what was handed over, then end the thread."""
        self._thread.shutdown(wait=True)
