"""State and task files edited by hand: one line naming the file and the problem, or a documented
normal form; never a traceback, never an overwrite (issue 10, items 16 and 18)."""
from __future__ import annotations

import json

import pytest

from dispatch_helpers import add_task, dispatch

STATE = ".dispatch_state.json"
PENDING = ".dispatch_pending_merge_retries.json"
WHOLE_STATE = {"dispatcher": None, "workers": [], "merge_queue": [], "attempts": {}}


@pytest.mark.parametrize("name, content, problem", [
    (STATE, {}, '"workers" is missing'),
    (STATE, [], "it is not a JSON object"),
    (STATE, {**WHOLE_STATE, "workers": [{}]}, 'worker record #1 lacks "slot", "task_id"'),
    (STATE, {**WHOLE_STATE, "merge_queue": [{"task_id": "proj-1"}]}, 'merge-queue entry #1 lacks "title"'),
    (STATE, {**WHOLE_STATE, "attempts": []}, '"attempts" is missing or not a JSON object'),
    (PENDING, {"x": 1}, "pending merge x is not an object"),
    (PENDING, {"proj-9": {"kind": "conflict"}}, 'pending merge proj-9 lacks "task_id"'),
])
@pytest.mark.parametrize("args", [(), ("--status",), ("--dry-run",)])
def test_a_malformed_state_file_is_one_line_and_left_untouched(json_agent_setup, repo, name, content, problem, args):
    cfg, config, store = json_agent_setup()
    add_task(store, "Anything", "append x.txt x")
    text = json.dumps(content)
    (repo / name).write_text(text, encoding="utf-8")
    proc = dispatch(cfg, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(repo / name) in proc.stderr and problem in proc.stderr
    assert (repo / name).read_text(encoding="utf-8") == text
