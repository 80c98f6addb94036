"""The test hook: named steps where a test can make the process exit at once, as if killed.

Unarmed (always, outside tests) a failpoint costs one dictionary lookup. A test arms one by
running a command with DISPATCH_FAILPOINT="step" or "step:N" (the Nth time this process reaches
it); the command's main wrapper calls arm_from_environment first.
"""
from __future__ import annotations

import os
from collections.abc import Callable

_armed: dict[str, Callable[[], None]] = {}


def failpoint(name: str) -> None:
    if (hit := _armed.get(name)) is not None:
        hit()


def arm_from_environment() -> None:
    if spec := os.environ.get("DISPATCH_FAILPOINT"):
        from crew import testing  # the only way production code reaches the test scaffolding
        testing.arm_failpoint(spec, _armed)
