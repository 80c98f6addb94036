"""The leases on this dispatcher's claims. With bd, a claim holds a lease that lapses unless
renewed, and a lapsed lease lets anyone take the task back (`bd reclaim`): every claim this
dispatcher holds (a running worker's, and a finished branch's while it waits to merge) is renewed
through the store thread, every lease_heartbeat_secs (a third of bd's lease or less), and a
running worker whose claim is found gone (taken back, or held by someone else now) is ended.
A store with no leases (task_queue.json) renews nothing and never loses a claim."""
from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping

from crew import errors
from crew.dispatch import records
from crew.dispatch.store_thread import SerialStore


class Leases:
    def __init__(self, serial: SerialStore, interval_secs: float, say: Callable[[str], None]):
        self.serial, self.interval, self.say = serial, interval_secs, say
        self.renewed: dict[str, float] = {}  # task id: when its last renewal was handed over
        self.renewing: dict[str, concurrent.futures.Future[str | None]] = {}
        self.told_gone: set[str] = set()  # waiting branches whose lost claim was said
        self.failing: str | None = None  # the store's last error, said once until a renewal works

    def step(self, claims: Mapping[str, str], running: Mapping[str, records.Worker],
             now: float) -> list[tuple[records.Worker, str]]:
        """Take the renewals that came back, hand over those due for `claims` (task id: the actor
        that holds it), and return the `running` workers whose claim is gone, each with why. A
        claim seen for the first time is renewed at once: it may be an earlier run's, or its
        worktree may have taken a while."""
        lost = []
        for task_id, future in list(self.renewing.items()):
            if not future.done():
                continue
            del self.renewing[task_id]
            try:
                gone = future.result()
            except errors.UserError as exc:  # the store is unreachable: the claim may well stand
                if str(exc) != self.failing:
                    self.failing = str(exc)
                    self.say(f"{task_id}: its claim's lease could not be renewed (tried again in "
                             f"{self.interval:g} s): {exc}")
                continue
            self.failing = None
            if gone and (worker := running.get(task_id)) is not None:
                lost.append((worker, gone))
            elif gone and task_id in claims and task_id not in self.told_gone:
                self.told_gone.add(task_id)
                self.say(f"{task_id}: its claim was taken back while its branch waited to merge ({gone})")
        self.renewed = {task_id: when for task_id, when in self.renewed.items() if task_id in claims}
        self.told_gone &= set(claims)
        for task_id, actor in claims.items():
            if task_id not in self.renewing and now >= self.renewed.get(task_id, now - self.interval) + self.interval:
                self.renewed[task_id] = now
                self.renewing[task_id] = self.serial.later("heartbeat", task_id, actor)
        return lost

    def next_due(self) -> float | None:
        """When the next renewal is due, if any claim is held."""
        return min((when + self.interval for when in self.renewed.values()), default=None)
