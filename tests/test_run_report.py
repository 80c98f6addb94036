"""The run report: its data model from a recorded events log, a real run's report, and a real browser."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from html.parser import HTMLParser
from pathlib import Path

import pytest

from crew.report import events as event_log
from crew.report import model
from crew.report import page as report_page
from crew.dispatch.loop import Dispatcher
from support.dispatching import add_task, dispatch, events
from support.repos import ROOT, commit_file
from support.tools import require_real_tool
from support.scripts import benchkit

HOSTILE = "<script>alert(1)</script>"
EPOCH = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc).timestamp()


def stamp(secs: float) -> str:
    return dt.datetime.fromtimestamp(EPOCH + secs, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def line(secs: float, name: str, task_id: str | None = None, **fields) -> str:
    return json.dumps({"v": 1, "ts": stamp(secs), "event": name, "task_id": task_id, **fields})


def started(secs: float, task_id: str, slot: int, attempt: int, title: str, kind: str = "task") -> str:
    return line(secs, "worker_started", task_id, slot=slot, pid=10 + slot, attempt=attempt, title=title,
                log=f".dispatch_logs/{task_id}.{attempt}.log", kind=kind)


# Two runs of a dispatcher with two slots. The first is killed at 3 s with B's worker running; the
# second adopts it, B conflicts, D resolves it, C is blocked after a timeout, the breaker trips.
# One line is garbage and the last was cut short by a crash mid-write.
RECORDED = [
    line(0.0, "dispatcher_started", pid=100, max_workers=2, watch=False),
    started(0.1, "A", 1, 1, "Alpha"),
    started(0.2, "B", 2, 1, HOSTILE),
    line(2.0, "worker_exited", "A", code=0),
    line(2.0, "commits_found", "A", commits=1),
    line(2.0, "merge_queued", "A", branch="work/A"),
    line(2.05, "claimed", "C", ready_since=stamp(0.0)),
    started(2.1, "C", 1, 1, "Crasher"),
    line(2.3, "merged", "A", branch="work/A", commit="a" * 40, diffstat={"files": 2, "insertions": 5, "deletions": 1}),
    line(2.4, "closed", "A"),
    line(3.0, "worker_exited", "C", code=3),
    line(3.0, "no_commits", "C"),
    line(3.0, "released", "C", reason="attempt 1 exited with no commits"),
    "this line is not JSON",
    line(10.0, "dispatcher_started", pid=200, max_workers=2, watch=False),
    line(10.0, "adopted", "B", pid=12),
    line(11.0, "worker_exited", "B", code=0),
    line(11.0, "commits_found", "B", commits=2),
    line(11.0, "merge_queued", "B", branch="work/B"),
    line(11.2, "merge_conflict", "B", files=["x.txt"]),
    line(11.2, "conflict_filed", "B", conflict_task="D", kind="conflict", branch="work/B",
         title="Resolve merge conflict: work/B"),
    line(11.25, "claimed", "D", ready_since=stamp(11.24)),  # filed after B's end: no refill
    started(11.3, "D", 1, 1, "Resolve merge conflict: work/B", kind="conflict"),
    line(12.0, "worker_exited", "D", code=0),
    line(12.0, "closed", "D"),
    line(12.1, "merge_queued", "B", branch="work/B", after="D"),
    line(12.3, "merged", "B", branch="work/B", commit="b" * 40, diffstat={"files": 1, "insertions": 3, "deletions": 0}),
    line(12.35, "claimed", "C", ready_since=stamp(10.0)),
    started(12.4, "C", 2, 2, "Crasher"),
    line(13.0, "worker_timed_out", "C"),
    line(13.0, "no_commits", "C"),
    line(13.0, "blocked", "C", reason="attempt 2 timed out with no commits (after 2 attempts)"),
    line(13.5, "breaker_tripped", failures=2),
    line(14.0, "dispatcher_stopped", interrupted=False),
]
TRUNCATED = line(14.5, "worker_started", "E")[:40]


@pytest.fixture
def recorded(tmp_path) -> Path:
    """A .dispatch_logs folder holding the recorded events and the workers' logs."""
    logs = tmp_path / ".dispatch_logs"
    logs.mkdir()
    (logs / "events.jsonl").write_text("\n".join(RECORDED) + "\n" + TRUNCATED, encoding="utf-8")
    aider = ("Model: ollama_chat/qwen\nTokens: 2.1k sent, 345 received.\nApplied edit\n"
             "Tokens: 12 sent, 3 received. Cost: $0.01 message, $0.02 session.\n")
    (logs / "A.1.log").write_text(aider, encoding="utf-8")
    (logs / "B.1.log").write_text("Tokens: 1.5M sent, 1.2k cache write, 2k received.\n", encoding="utf-8")
    for name in ("C.1.log", "C.2.log", "D.1.log"):
        (logs / name).write_text("no token counts here\n", encoding="utf-8")
    return logs


def build(logs: Path) -> model.Report:
    return model.build_report(event_log.EventReader(logs / "events.jsonl"), logs)


class Page(HTMLParser):
    """Every element's tag and attributes, and the page's text."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def having(self, attribute: str, value: str | None = None) -> list[dict]:
        return [a for _, a in self.elements if attribute in a and (value is None or a[attribute] == value)]

    def with_class(self, name: str) -> list[dict]:
        return [a for _, a in self.elements if name in (a.get("class") or "").split()]


# --------------------------------------------------------------------------------------------
# The data model, from a recorded events log
# --------------------------------------------------------------------------------------------


def test_runs_across_a_restart_and_lines_that_cannot_be_read(recorded):
    report = build(recorded)
    assert report.skipped_lines == 2  # the garbage line and the partial last line
    assert report.events == len(RECORDED) - 1
    assert [(r.pid, r.stopped) for r in report.runs] == [(100, False), (200, True)]
    assert report.runs[0].end == pytest.approx(EPOCH + 3.0)  # the first run's last event: it was killed
    assert report.wall_time == pytest.approx(3.0 + 4.0)  # the pause between runs is not counted
    assert report.slots == 2


def test_each_attempt_is_one_bar_with_its_outcome(recorded):
    report = build(recorded)
    bars = [(a.task_id, a.number, a.slot, a.kind, a.category, round(a.duration, 2)) for a in report.attempts]
    assert bars == [("A", 1, 1, "task", "merged", 1.9),
                    ("B", 1, 2, "task", "merged", 10.8),  # adopted across the restart: one bar
                    ("C", 1, 1, "task", "released", 0.9),
                    ("D", 1, 1, "conflict", "conflict", 0.7),
                    ("C", 2, 2, "task", "timed_out", 0.6)]
    assert [a.merged_work for a in report.attempts] == [True, True, False, True, False]
    assert report.agent_time == pytest.approx(14.9)
    assert report.merged_agent_time == pytest.approx(13.4)


def test_task_rows_outcomes_waits_tokens_diffstats_and_logs(recorded):
    report = build(recorded)
    rows = report.tasks
    assert {t: (r.outcome, r.kind) for t, r in rows.items()} == {
        "A": ("merged", "task"), "B": ("merged", "task"), "C": ("blocked", "task"), "D": ("resolved", "conflict")}
    assert rows["C"].detail == "attempt 2 timed out with no commits (after 2 attempts)"
    assert rows["A"].queue_wait == pytest.approx(0.3)
    assert rows["B"].queue_wait == pytest.approx(0.2 + 0.2)  # before the conflict, and after it was resolved
    assert rows["A"].tokens == model.Tokens(2112, 348)
    assert rows["B"].tokens == model.Tokens(1_500_000, 2000)
    assert rows["C"].tokens is None
    assert rows["A"].diffstat == {"files": 2, "insertions": 5, "deletions": 1}
    assert [(label, p.name) for label, p in rows["C"].logs] == [("attempt 1", "C.1.log"), ("attempt 2", "C.2.log")]
    assert [(label, p.name) for label, p in rows["A"].logs] == [("log", "A.1.log")]
    assert rows["B"].title == HOSTILE and rows["D"].title == "Resolve merge conflict: work/B"


def test_summary_figures_marks_and_the_merge_queue(recorded):
    report = build(recorded)
    assert (report.count("merged"), report.count("blocked")) == (2, 1)
    assert [(c.task_id, c.conflict_task, c.ended) for c in report.conflicts] == [("B", "D", "resolved and merged")]
    assert report.refills == pytest.approx([0.1, 0.4])  # not D's: it was filed after the end before it
    assert report.merge_latencies == pytest.approx([0.3, 0.2])
    assert [m.kind for m in report.marks] == ["merged", "conflict", "merged", "breaker"]
    assert [d for _, d in report.queue_depth] == [1, 0, 1, 0, 1, 0]


def test_an_event_log_from_before_events_named_their_logs(tmp_path):
    """No "v", "title", "log" or "kind": the one log per task, never a file outside .dispatch_logs."""
    logs = tmp_path / ".dispatch_logs"
    logs.mkdir()
    old = [json.dumps({"ts": "2026-11-28T00:00:00.000000Z", "event": "worker_started", "task_id": "proj-1",
                       "slot": 1, "pid": 5, "branch": "work/proj-1", "attempt": 1}),
           json.dumps({"ts": "2026-11-28T00:00:02.000000Z", "event": "worker_exited", "task_id": "proj-1", "code": 0}),
           line(3, "worker_started", "proj-2", slot=2, attempt=1, log=".dispatch_logs/../secret.log"),
           line(4, "worker_started", "proj-3", slot="2", attempt=1),  # a slot that is no number: not drawn
           '["a list, not an event"]', '{"ts": "yesterday", "event": "claimed"}']
    (logs / "events.jsonl").write_text("\n".join(old) + "\n", encoding="utf-8")
    (logs / "proj-1.log").write_text("Tokens: 10 sent, 2 received.\n", encoding="utf-8")
    (tmp_path / "secret.log").write_text("Tokens: 99 sent, 99 received.\n", encoding="utf-8")
    report = build(logs)
    assert report.skipped_lines == 3
    assert [(a.task_id, a.slot, a.log) for a in report.attempts] == [
        ("proj-1", 1, (logs / "proj-1.log").resolve()), ("proj-2", 2, None)]
    assert report.tasks["proj-1"].tokens == model.Tokens(10, 2)
    assert report.tasks["proj-2"].tokens is None
    assert report.attempts[1].end is None and report.attempts[1].category == "open"


def write_events(logs: Path, lines: list[str]) -> Path:
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return logs


def test_a_slot_beyond_every_max_workers_is_skipped_not_drawn(tmp_path):
    """One damaged line would otherwise be 100,000,000 lanes."""
    logs = write_events(tmp_path / ".dispatch_logs", [
        line(0, "dispatcher_started", pid=1, max_workers=2), started(1, "A", 1, 1, "Fine"),
        started(2, "B", 100_000_000, 1, "Damaged"), started(3, "C", 3, 1, "Beyond this run's two"),
        line(4, "worker_exited", "A"), line(5, "dispatcher_stopped")])
    report = build(logs)
    assert (report.slots, report.skipped_lines) == (2, 2)
    assert [a.task_id for a in report.attempts] == ["A"]
    page = Page(report_page.render_html(report, logs, logs / "events.jsonl"))
    assert len(page.having("data-lane")) == 2
    assert "2 lines of the events log could not be read or made no sense" in "".join(page.text)


def test_values_of_the_wrong_type_and_times_out_of_order_are_skipped(tmp_path):
    logs = write_events(tmp_path / ".dispatch_logs", [
        line(0, "dispatcher_started", pid=1, max_workers=10 ** 9),  # no machine runs that many
        line(1, "dispatcher_started", pid=2, max_workers=2),
        started(10, "A", 1, 1, "Fine"),
        line(9, "worker_exited", "A"),  # a clock stepped back a second: kept, at the time before it
        line(-3600, "merged", "A"),  # an hour back: a damaged line
        line(10 ** 9, "closed", "A"),  # decades ahead of now
        line(11, "worker_started", "B", slot=2, attempt="1", title="A number as text"),
        line(12, "worker_started", "C", slot=True, attempt=1),  # a bool is no slot
        line(13, "merged", "D", diffstat={"files": -1, "insertions": 0, "deletions": 0}),
        line(14, "claimed", "E", ready_since="soon"),
        line(14.5, "main_rewritten", old="a" * 40, new="b" * 40, count=1, commits=["c" * 40]),  # commits: ids here
        line(15, "dispatcher_stopped")])
    report = build(logs)
    assert report.skipped_lines == 7
    assert [(r.pid, r.max_workers) for r in report.runs] == [(2, 2)] and report.events == 5
    (attempt,) = report.attempts
    assert (attempt.task_id, attempt.duration) == ("A", 0)
    assert report.tasks["A"].outcome == "waiting" and set(report.tasks) == {"A"}


def test_a_long_history_draws_its_latest_runs_and_counts_them_all(tmp_path):
    logs = write_events(tmp_path / ".dispatch_logs", list(benchkit.event_history(30_000, per_run=1000)))
    report = build(logs)
    assert len(report.runs) == 30 and report.count("merged") == len(report.attempts) * 10 // 11
    out = report_page.write_report(tmp_path)
    page = Page(out.read_text(encoding="utf-8"))
    bars = page.with_class("bar")
    assert 0 < len(bars) <= report_page.WINDOW_ATTEMPTS
    assert len(page.with_class("restart")) < report_page.WINDOW_RUNS
    text = "".join(page.text)
    assert f"{report.count('merged')} merged" in text  # the summary counts every run
    assert f"of {len(report.runs)} runs" in text and "--all-runs" in text
    every = Page(report_page.write_report(tmp_path, tmp_path / "all.html", all_runs=True).read_text(encoding="utf-8"))
    assert len(every.with_class("bar")) == len(report.attempts)
    assert len(every.with_class("restart")) == len(report.runs) - 1
    assert "--all-runs" not in "".join(every.text)


def test_the_report_of_a_long_history_is_read_as_a_stream_in_bounded_memory(tmp_path):
    """100,000 events (a 16 MB log) were once read whole (300 MB) and made an 11 MB page; times
    are printed by scripts/bench_report.py, never asserted."""
    logs = write_events(tmp_path / ".dispatch_logs", list(benchkit.event_history(100_000)))
    tracemalloc.start()
    try:
        out = report_page.write_report(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB"
    assert out.stat().st_size < 5 * 2 ** 20


def test_the_page_escapes_task_text_and_has_one_lane_per_slot_and_one_bar_per_attempt(recorded, tmp_path):
    out = report_page.write_report(tmp_path, tmp_path / "out" / "report.html")
    text = out.read_text(encoding="utf-8")
    assert HOSTILE not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert not [a for tag, a in page.elements if tag == "script"]
    assert len(page.having("data-lane")) == 2
    assert [(a["data-task"], a["data-attempt"]) for a in page.with_class("bar")] == [
        ("A", "1"), ("B", "1"), ("C", "1"), ("D", "1"), ("C", "2")]
    assert len(page.with_class("restart")) == 1
    assert len(page.having("data-mark", "breaker")) == 1
    assert "2 lines of the events log could not be read" in "".join(page.text)
    assert {a["href"] for a in page.having("href")} >= {"../.dispatch_logs/C.1.log", "../.dispatch_logs/C.2.log"}


def test_the_writer_starts_a_fresh_line_after_a_partial_one(json_agent_setup, repo):
    cfg, config, store = json_agent_setup()
    logs = repo / ".dispatch_logs"
    logs.mkdir()
    (logs / "events.jsonl").write_bytes(b'{"v": 1, "ts": "2026-11-28T00:00:00Z", "event": "wor')
    dispatcher = Dispatcher(config, store, 1, out=lambda *_: None)
    dispatcher.ledger.event("claimed", "proj-1")
    dispatcher.ledger.event("released", "proj-1", reason="test")
    found, skipped = event_log.read_events(logs / "events.jsonl")
    assert skipped == 1
    assert [(e.name, e.task_id, e.fields["v"]) for e in found] == [("claimed", "proj-1", 1), ("released", "proj-1", 1)]


# --------------------------------------------------------------------------------------------
# A real run with the scripted agent
# --------------------------------------------------------------------------------------------


def scripted_run(json_agent_setup, repo) -> tuple[Path, Path]:
    """A run killed at its first merge and restarted: two tasks that conflict, a hostile title, a
    crasher, token counts in a log. Returns the config file and the report the second run named."""
    cfg, config, store = json_agent_setup(max_attempts=2, max_workers=2)
    commit_file(repo, "settings.ini", "color=blue\n")
    add_task(store, "Make it red", "sleep 0.5", "replace settings.ini color=blue color=red")
    add_task(store, "Make it green", "sleep 1", "replace settings.ini color=blue color=green")
    add_task(store, HOSTILE, "say Tokens: 2.1k sent, 345 received.", "append hostile.txt safe", files=["hostile.txt"])
    add_task(store, "Crasher", "crash")
    killed = dispatch(cfg, env={"DISPATCH_FAILPOINT": "during_merge"})
    assert killed.returncode == 77, killed.stderr
    proc = dispatch(cfg, "--json")
    return cfg, Path(json.loads(proc.stdout)["report"])


def test_a_real_run_writes_its_report_and_names_it(json_agent_setup, repo):
    cfg, path = scripted_run(json_agent_setup, repo)
    assert path == (repo / ".dispatch_logs" / "report.html").resolve() and path.is_file()
    page = Page(path.read_text(encoding="utf-8"))
    starts = events(repo, "worker_started")
    assert len(page.having("data-lane")) == 2
    assert len(page.with_class("bar")) == len(starts) >= 5  # 3 tasks, a resolver, a second crash
    assert len(page.with_class("restart")) == 1
    assert HOSTILE in "".join(page.text)  # as text: the parser saw it as data, not a tag
    assert "made no sense" not in "".join(page.text)  # every event the dispatcher wrote passes the checks
    assert all(e["v"] == event_log.EVENTS_FORMAT for e in events(repo))
    merged = events(repo, "merged")
    assert len(merged) == 3 and all(e["diffstat"]["files"] == 1 for e in merged)
    assert len(events(repo, "conflict_filed")) == 1
    assert "2.1k / 345" in "".join(page.text)
    # --report alone, while no dispatcher runs, to a file of one's choosing
    again = dispatch(cfg, "--report", "--all-runs", "--json", "--out", str(repo / "elsewhere.html"))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"report": str((repo / "elsewhere.html").resolve())}
    assert (repo / "elsewhere.html").is_file()


@pytest.mark.parametrize("chained, refills", [(True, 0), (False, 2)])
def test_a_refill_is_counted_only_while_a_task_was_ready(json_agent_setup, repo, chained, refills):
    """One worker, three tasks: in a chain only one is ready at a time, and the gap before the next
    is its wait for the one before, not a refill; three ready at once make two refills."""
    cfg, config, store = json_agent_setup(max_workers=1)
    before = add_task(store, "Step 0", "append step0.txt 0")
    for i in (1, 2):
        after = [("blocked-by", before.id)] if chained else []
        task = add_task(store, f"Step {i}", f"append step{i}.txt {i}", deps=after)
        before = task if chained else before
    assert dispatch(cfg).returncode == 0
    assert len(events(repo, "worker_started")) == 3
    report = build(repo / ".dispatch_logs")
    assert len(report.refills) == refills
    assert all(e["ready_since"] <= e["ts"] for e in events(repo, "claimed"))
    summary = "".join(Page(report_page.render_summary(report)).text)
    assert ("median refill–" in summary) == (refills == 0)


def test_out_and_open_need_report(json_agent_setup):
    cfg, _, _ = json_agent_setup()
    for alone in ("--out=x.html", "--all-runs"):
        proc = dispatch(cfg, alone)
        assert proc.returncode == 2 and "--out, --open and --all-runs go with --report" in proc.stderr


def test_the_demo_ends_by_printing_its_report(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "dispatch_workers.py"), "--demo"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("The run's report (open it in a browser): ")
    path = Path(last.split(": ", 1)[1])
    assert path.is_file() and path.is_relative_to(tmp_path)
    page = Page(path.read_text(encoding="utf-8"))
    assert len(page.with_class("bar")) >= 6
    browser = chromium()
    if browser and os.environ.get("DISPATCH_DOCS_SCREENSHOT"):  # regenerates README's picture
        screenshot(browser, path, ROOT / "docs" / "report.png", tmp_path, height=800)


# --------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def headless(browser: str, url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """One headless load of a page with its console on stderr, in a profile of its own."""
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
                           *args, url], capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    """What the page itself logged: Chromium tags every console message, error or not, CONSOLE."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def screenshot(browser: str, page: Path, png: Path, tmp_path: Path, height: int = 900) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = headless(browser, page.as_uri(), tmp_path, "--hide-scrollbars", f"--window-size=1240,{height}",
                    f"--screenshot={png}")
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]


@pytest.mark.real_tool
def test_a_real_browser_shows_the_report(json_agent_setup, repo, tmp_path):
    browser = chromium()
    require_real_tool(browser is not None, "Chromium is not installed (scripts/install_chromium.sh installs it)")
    # The check itself must be able to fail: a page with a script error is seen.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefined_function()</script></body></html>", encoding="utf-8")
    assert console_lines(headless(browser, broken.as_uri(), tmp_path, "--dump-dom").stderr)

    _, path = scripted_run(json_agent_setup, repo)
    proc = headless(browser, path.as_uri(), tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console_lines(proc.stderr) == []
    dom = Page(proc.stdout)
    assert len(dom.having("data-lane")) == 2
    assert len(dom.with_class("bar")) == len(events(repo, "worker_started"))
    assert not [a for tag, a in dom.elements if tag == "script"]
    assert HOSTILE in "".join(dom.text)  # rendered as text
    png = tmp_path / "report.png"
    screenshot(browser, path, png, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_an_idle_pause_between_runs_is_cut_and_a_busy_one_is_not(tmp_path, recorded):
    logs = tmp_path / "paused" / ".dispatch_logs"
    logs.mkdir(parents=True)
    hour = 3600
    (logs / "events.jsonl").write_text("\n".join([
        line(0, "dispatcher_started", pid=1, max_workers=1), started(1, "A", 1, 1, "Morning"),
        line(9, "worker_exited", "A"), line(10, "dispatcher_stopped"),
        line(hour, "dispatcher_started", pid=2, max_workers=1), started(hour + 1, "B", 1, 1, "Evening"),
        line(hour + 9, "worker_exited", "B"), line(hour + 10, "dispatcher_stopped")]) + "\n", encoding="utf-8")
    report = build(logs)
    scale = report_page.TimeScale.of(report, report.end)
    assert len(scale.pieces) == 2
    assert scale.x(EPOCH + hour + 1) - scale.x(EPOCH + 9) == pytest.approx(2 * scale.scale + report_page.CUT_W)
    assert scale.x(EPOCH + hour + 9) - scale.x(EPOCH + hour + 1) > 300  # the evening's bar, to a readable scale
    page = Page(report_page.render_html(report, logs, logs / "events.jsonl"))
    assert len(page.with_class("cut")) == 1 and len(page.with_class("restart")) == 1
    # In the recorded runs B's worker ran through the pause (it was adopted): drawn to scale.
    assert len(report_page.TimeScale.of(build(recorded), build(recorded).end).pieces) == 1


def test_a_report_before_any_run_says_so(tmp_path):
    page = Page(report_page.write_report(tmp_path).read_text(encoding="utf-8"))
    assert "no events recorded yet" in "".join(page.text)
    assert page.having("data-lane") == [] and page.with_class("bar") == []


@pytest.mark.skipif(os.name == "nt", reason="the stand-in browser is a shell script")
def test_open_hands_the_report_to_the_users_browser(json_agent_setup, tmp_path):
    """BROWSER names the browser webbrowser runs: a stand-in that records what it was asked to open."""
    cfg, _, _ = json_agent_setup()
    opened = tmp_path / "opened.txt"
    stand_in = tmp_path / "browser"
    stand_in.write_text(f'#!/bin/sh\nprintf "%s" "$1" > "{opened}"\n', encoding="utf-8")
    stand_in.chmod(0o755)
    proc = dispatch(cfg, "--report", "--open", env={"BROWSER": str(stand_in)})
    assert proc.returncode == 0, proc.stderr
    assert opened.read_text(encoding="utf-8") == Path(proc.stdout.strip()).as_uri()


def test_a_timed_out_attempt_whose_work_merged_and_a_gate_fixer(tmp_path):
    logs = tmp_path / ".dispatch_logs"
    logs.mkdir()
    (logs / "events.jsonl").write_text("\n".join([
        line(0, "dispatcher_started", pid=1, max_workers=1), started(0, "T", 1, 1, "Slow"),
        line(5, "worker_timed_out", "T"), line(5, "commits_found", "T", commits=1),
        line(5, "merge_queued", "T"), line(5.5, "gate_passed", "T", commit="c" * 40),
        line(6, "merged", "T", diffstat={"files": 1, "insertions": 1, "deletions": 0}),
        line(6, "released", "T", reason="attempt 1 timed out; its commits were merged"),
        started(6, "G", 1, 1, "Fix failing checks: work/T", kind="gate"),
        line(7, "worker_exited", "G", code=0), line(8, "dispatcher_stopped")]) + "\n", encoding="utf-8")
    report = build(logs)
    slow, fixer = report.attempts
    assert (slow.category, slow.merged_work, slow.duration) == ("timed_out", True, 5)
    assert report.tasks["T"].detail == "its timed-out attempt's work merged; released for another attempt"
    assert fixer.category == "gate" and report.tasks["G"].kind == "gate"
    assert [m.kind for m in report.marks] == ["gate_passed", "merged"]


def test_an_attempt_stopped_by_hand_ends_its_bar_and_a_task_blocked_while_running(tmp_path):
    logs = tmp_path / ".dispatch_logs"
    logs.mkdir()
    reason = "blocked while its worker ran; the worker was ended, its branch work/S kept and not merged"
    (logs / "events.jsonl").write_text("\n".join([
        line(0, "dispatcher_started", pid=1, max_workers=1), started(0, "S", 1, 1, "Stopped"),
        line(3, "worker_stopped", "S", reason="stopped: its task was blocked"),
        line(3, "left_blocked", "S", branch="work/S", reason=reason), line(4, "dispatcher_stopped")]) + "\n",
        encoding="utf-8")
    report = build(logs)
    (stopped,) = report.attempts
    assert (stopped.duration, stopped.outcome, stopped.category) == (3, "blocked", "stopped")
    assert (report.tasks["S"].outcome, report.tasks["S"].detail) == ("blocked", reason)


def test_a_task_deleted_from_the_store_leaves_the_queue_and_is_counted_apart(tmp_path):
    logs = tmp_path / ".dispatch_logs"
    logs.mkdir()
    (logs / "events.jsonl").write_text("\n".join([
        line(0, "dispatcher_started", pid=1, max_workers=1), started(0, "T", 1, 1, "Doomed"),
        line(2, "worker_exited", "T"), line(2, "commits_found", "T", commits=1), line(2, "merge_queued", "T"),
        line(3, "record_dropped", "T", record="merge of work/T (the branch is kept)")]) + "\n", encoding="utf-8")
    report = build(logs)
    assert report.tasks["T"].outcome == "dropped" and report.tasks["T"].queue_wait == 1
    assert [d for _, d in report.queue_depth] == [1, 0]
    assert "0 waiting · 1 deleted from the store" in "".join(Page(report_page.render_summary(report)).text)


def test_a_speculative_gate_failure_that_does_not_count_leaves_the_entry_queued(tmp_path):
    logs = tmp_path / ".dispatch_logs"
    logs.mkdir()
    (logs / "events.jsonl").write_text("\n".join([
        line(0, "dispatcher_started", pid=1, max_workers=2), started(0, "T", 1, 1, "Behind"),
        line(2, "worker_exited", "T"), line(2, "commits_found", "T", commits=1), line(2, "merge_queued", "T"),
        line(3, "gate_failed", "T", files=[], commit="c" * 40, counts=False),
        line(5, "gate_failed", "T", files=[], commit="c" * 40, counts=True)]) + "\n", encoding="utf-8")
    report = build(logs)
    assert report.tasks["T"].queue_wait == 3  # until the failure counted, not the first one
    assert [d for _, d in report.queue_depth] == [1, 0]
    assert [m.text for m in report.marks if m.kind == "gate_failed"] == [
        "checks failed on T with the entries ahead (not yet counted)", "checks failed on T"]
