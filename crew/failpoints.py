"""The test hook: named steps where a test can make the process exit at once, as if killed.

Unarmed (always, outside tests) a failpoint costs one dictionary lookup. A test arms one by
running a command with DISPATCH_FAILPOINT="step" or "step:N" (the Nth time this process reaches
it); the command's main wrapper calls arm_from_environment first. Arming reads only the
environment: this module imports nothing of the toolkit, so any module may carry a failpoint.
"""
from __future__ import annotations

import os
from collections.abc import Callable


KILLED_EXIT = 77  # what a process stopped at a failpoint exits with: a test tells it from a failure

_armed: dict[str, Callable[[], None]] = {}


def failpoint(name: str) -> None:
    if (hit := _armed.get(name)) is not None:
        hit()


def arm_from_environment() -> None:
    if spec := os.environ.get("DISPATCH_FAILPOINT"):
        arm(spec)


def arm(spec: str) -> None:
    """Arm a failpoint for DISPATCH_FAILPOINT's value: "step", or "step:N" to exit (as if killed)
    the Nth time this process reaches the step."""
    name, _, nth = spec.partition(":")
    wanted, hits = int(nth or 1), 0

    def hit() -> None:
        nonlocal hits
        hits += 1
        if hits == wanted:
            os._exit(KILLED_EXIT)

    _armed[name] = hit
