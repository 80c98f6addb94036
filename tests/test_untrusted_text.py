"""Hostile text from agents, gates and hand-written stores: it reaches the store, a commit, a
terminal and the agent's message made safe, and never wedges a run."""
from __future__ import annotations

import sys

from dispatch_helpers import add_task, dispatch


# An agent whose output carries a NUL byte, and which makes no commit: its log's tail becomes the
# task's note (`bd update --append-notes`, an argument, which no operating system lets hold a NUL).
NUL_PRINTING_AGENT = [sys.executable, "-c", "import sys; sys.stdout.write('before\\x00after\\n')"]


def test_a_nul_byte_in_an_agents_output_reaches_the_store_made_safe(agent_setup, repo):
    cfg, config, store = agent_setup(worker_command=NUL_PRINTING_AGENT, max_attempts=2)
    task = add_task(store, "Prints a NUL")
    result = dispatch(cfg)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1  # blocked after its two attempts, each noted
    blocked = store.get(task.id)
    assert blocked.status == "blocked"
    assert "\0" not in blocked.notes and blocked.notes.count("ends: beforeafter") == 2, blocked.notes
    # A restart finds nothing left to trip on.
    assert "Traceback" not in dispatch(cfg).stderr
