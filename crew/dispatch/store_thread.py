"""The task store on a thread of its own, so that a slow store call (bd: 300-500 ms each) never
holds up the loop that watches the workers. While the store cannot be reached (bd in server mode,
its Dolt server down), its calls wait on this thread and are tried again, each pause longer, up to
a bound: the workers go on meanwhile, and the run says once what is wrong and once when it is back."""
from __future__ import annotations

import concurrent.futures
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from crew import errors
from crew import names
from crew.dispatch import wakeup as wakeups
from crew.tasks import model


Result = TypeVar("Result")

OUTAGE_FIRST_PAUSE_SECS = 0.5
OUTAGE_MAX_PAUSE_SECS = 15.0
# bd 1.3.0 when its Dolt sql-server is down ("Dolt server unreachable at HOST:PORT: dial tcp ...")
# and, after 5 such failures, while its circuit breaker fails fast ("dolt circuit breaker is open").
# Either fails before the database is opened: nothing was written, so the call is safe to repeat.
_UNREACHABLE = re.compile(r"^Error: (failed to open database: (?:Dolt server unreachable|dolt circuit breaker is "
                          r"open).*)$", re.MULTILINE)


def unreachable(exc: BaseException) -> str | None:
    """bd's words when `exc` says the store's server cannot be reached, else None."""
    if isinstance(exc, errors.BdError) and (found := _UNREACHABLE.search(exc.stderr)):
        return names.one_line_tail(found.group(1))
    return None


class Outage:
    """Whether the store is reachable, from the calls' outcomes: what to say as that changes (once
    an outage begins, once it ends), and how long to pause before the next try."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.tries = 0

    def failed(self, reason: str, now: float) -> str | None:
        self.tries += 1
        if self.since is not None:
            return None
        self.since = now
        return (f"the task store cannot be reached ({reason}): running workers go on and their branches are kept; "
                f"its calls are tried again, every {OUTAGE_MAX_PAUSE_SECS:g} s at most")

    def pause(self) -> float:
        return min(OUTAGE_FIRST_PAUSE_SECS * 2.0 ** max(0, self.tries - 1), OUTAGE_MAX_PAUSE_SECS)

    def reached(self, now: float) -> str | None:
        since, self.since, self.tries = self.since, None, 0
        return None if since is None else f"the task store is reachable again (after {now - since:.0f} s); carrying on"


def hand_over(store: model.TaskStore, work: Callable[[model.TaskStore], Result]) -> concurrent.futures.Future[Result]:
    """`work` handed to the store thread when `store` is a SerialStore's; on a plain store (a
    caller with no loop, no thread) done now: its future is done when returned."""
    if isinstance(store, SerialStore):
        return store.batch(work)
    done: concurrent.futures.Future[Result] = concurrent.futures.Future()
    try:
        done.set_result(work(store))
    except Exception as exc:  # the caller reads it from the future, as from the thread's
        done.set_exception(exc)
    return done


class SerialStore:
    """Every call reaches the store on one thread, in the order it was made. The loop hands calls
    over (`later`, `batch`) and is woken by their results (posted to `wakeup`); any other store method
    (`serial.close(...)`) is a plain call that returns its result, after everything handed over
    before it. Work given to `batch` gets the store itself: it must not call back into this object
    (its thread would wait for itself). A call the store's server could not take is tried again
    until it can, or until give_up()."""

    def __init__(self, store: model.TaskStore, wakeup: wakeups.Wakeup, say: Callable[[str], None]):
        self.store = store
        self.name = store.name
        self.say = say
        self.outage = Outage()
        self._given_up = threading.Event()
        self._thread = wakeups.PostingExecutor(wakeup, 1, "task-store")

    def later(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        return self._thread.submit(self._reached, getattr(self.store, method), *args, **kwargs)

    def batch(self, work: Callable[[model.TaskStore], Result]) -> concurrent.futures.Future[Result]:
        return self._thread.submit(self._reached, work, self.store)

    def _reached(self, call: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
        while True:
            try:
                result = call(*args, **kwargs)
            except errors.UserError as exc:
                if (reason := unreachable(exc)) is None or self._given_up.is_set():
                    raise
                if message := self.outage.failed(reason, time.monotonic()):
                    self.say(message)
                self._given_up.wait(self.outage.pause())
                continue
            if message := self.outage.reached(time.monotonic()):
                self.say(message)
            return result

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_") or not callable(getattr(self.store, method)):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.later(method, *args, **kwargs).result()
        return call

    def give_up(self) -> None:
        """A call the store cannot take fails from now on, not tried again (the run is stopping)."""
        self._given_up.set()

    def shutdown(self) -> None:
        """Finish what was handed over (a store that cannot be reached fails it), then end the thread."""
        self.give_up()
        self._thread.shutdown(wait=True)
