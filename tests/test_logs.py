"""Logs are read as streams: a log's tail from its end, its token lines a block at a time. The
memory a read takes stays flat in the log's size (tracemalloc's peak on a large log)."""
from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

from crew import logs
from crew.dispatch.loop import Dispatcher
from crew.report import model
from crew.report import page as report_page
from support.dispatching import add_task, events

LARGE_MB = 64  # as large as it takes for a whole read to stand out from the bound
FLAT_BYTES = 12 * 1024 * 1024  # the peak a read may take, whatever the log's size


def write_large_log(path: Path, first: str, last: str) -> None:
    """LARGE_MB of agent chatter, written a chunk at a time, between two given lines."""
    chunk = ("the agent is thinking about the problem, at length " * 20 + "\n").encode() * 1024
    with open(path, "wb") as log:
        log.write(first.encode() + b"\n")
        for _ in range(LARGE_MB * 1024 * 1024 // len(chunk)):
            log.write(chunk)
        log.write(last.encode() + b"\n")


def peak_of(call):
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_reports_token_sum_reads_a_huge_log_in_flat_memory(tmp_path):
    logs_dir = tmp_path / ".dispatch_logs"
    logs_dir.mkdir()
    write_large_log(logs_dir / "T.1.log", "Tokens: 2.1k sent, 345 received.", "Tokens: 1.5M sent, 1k received.")
    (logs_dir / "events.jsonl").write_text("\n".join(json.dumps(e) for e in [
        {"v": 1, "ts": "2026-11-28T00:00:00Z", "event": "dispatcher_started", "task_id": None, "max_workers": 1},
        {"v": 1, "ts": "2026-11-28T00:00:01Z", "event": "worker_started", "task_id": "T", "slot": 1, "attempt": 1,
         "title": "Talkative", "log": ".dispatch_logs/T.1.log"},
        {"v": 1, "ts": "2026-11-28T00:00:09Z", "event": "worker_exited", "task_id": "T", "code": 0}]) + "\n",
        encoding="utf-8")
    out, peak = peak_of(lambda: report_page.write_report(tmp_path))
    assert peak < FLAT_BYTES, f"{peak / 2**20:.0f} MiB for a {LARGE_MB} MiB log"
    assert "1.5M / 1.3k" in out.read_text(encoding="utf-8")  # the first line's count and the last's, summed


def test_token_lines_cut_by_a_block_or_made_of_odd_numbers(tmp_path):
    log = tmp_path / "agent.log"
    line = b"Tokens: 10 sent, 2 received.\n"
    log.write_bytes(b"x" * (logs.BLOCK_BYTES - 10) + b"\n" + line + b"Tokens: 1..2 sent, 3 received.\n" + line)
    assert model.tokens_in_log(log) == model.Tokens(20, 4)  # the malformed count is not one


def test_a_tail_is_read_from_the_end_and_never_starts_inside_a_character(tmp_path):
    log = tmp_path / "out.log"
    log.write_bytes("é".encode() * 5000 + b"the end\n")
    tail = logs.read_tail(log, 10)
    assert tail == "ééthe end\n"
    assert "\ufffd" not in logs.read_tail(log, 2000) and len(logs.read_tail(log, 2000)) == 2000
    assert logs.read_tail(log, 100_000) == log.read_text(encoding="utf-8")


def test_the_gate_keeps_the_tail_of_huge_output_in_flat_memory(json_agent_setup, repo):
    """The gate's output is read on the loop: only its tail, whatever the gate printed."""
    # It fails on the branch only: main itself, checked before the failure is blamed on the branch, passes.
    loud = ("import os, sys\nline = b'a failing check explains itself at length ' * 40 + b'\\n'\n"
            f"for _ in range({LARGE_MB} * 1024 * 1024 // len(line)): sys.stdout.buffer.write(line)\n"
            "print('the last line: 3 tests failed')\nsys.exit(os.path.exists('checked.txt'))\n")
    cfg, config, store = json_agent_setup(max_workers=1, max_attempts=1,
                                          merge_gate_command=[sys.executable, "-c", loud])
    add_task(store, "Checked", "append checked.txt yes")
    _, peak = peak_of(lambda: Dispatcher(config, store, 1, out=lambda *_: None).run())
    assert (repo / ".dispatch_logs" / "gate.log").stat().st_size > (LARGE_MB - 1) * 1024 * 1024
    assert peak < FLAT_BYTES, f"{peak / 2**20:.0f} MiB for a gate's {LARGE_MB} MiB of output"
    filed = events(repo, "conflict_filed")[0]
    assert "the last line: 3 tests failed" in store.get(filed["conflict_task"]).description
