"""The run report's HTML page."""
from __future__ import annotations

import bisect
import dataclasses
import html
import itertools
import os
import statistics
import time
import urllib.parse
from pathlib import Path

from crew import errors
from crew import files as statefiles
from crew import names
from crew.report import events as event_log
from crew.report import model


REPORT_FILE = "report.html"
# A long history's page draws its latest runs only (its summary counts them all), so the page
# stays readable and small: a bar and a table row take about a kilobyte each.
WINDOW_RUNS = 10
WINDOW_ATTEMPTS = 1000


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def duration_text(secs: float | None) -> str:
    if secs is None:
        return "–"
    if secs < 1:
        return f"{secs * 1000:.0f} ms"
    if secs < 60:
        return f"{secs:.1f} s"
    if secs < 3600:
        return f"{int(secs // 60)} min {int(secs % 60):02d} s"
    return f"{int(secs // 3600)} h {int(secs % 3600 // 60):02d} min"


def count_text(n: int) -> str:
    return f"{n / 1_000_000:.1f}M" if n >= 1_000_000 else f"{n / 1000:.1f}k" if n >= 1000 else str(n)


def clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def median_text(values: list[float]) -> str:
    return duration_text(statistics.median(values)) if values else "–"


WIDTH, LEFT, RIGHT = 1160, 112, 16  # the timeline's size in SVG units; lanes start after LEFT
LANE_H, MAIN_H, AXIS_H, QUEUE_H = 30, 26, 22, 56
CUT_MIN_SECS, CUT_MIN_SHARE = 30.0, 0.15  # a pause is cut when longer than both of these
CUT_W = 30  # an idle pause between runs is drawn this wide, whatever its length


def tick_text(secs: float) -> str:
    if secs < 60:
        return f"{secs:g} s"
    return f"{secs / 60:g} min" if secs < 3600 else f"{secs / 3600:g} h"


def tick_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400):
        if span / step <= 10:
            return step
    return 86400 * max(1, round(span / 86400 / 10))


@dataclasses.dataclass
class TimeScale:
    """Where a moment is drawn. Runs side by side: a pause between two runs in which no worker
    ran (no adopted worker spans it) is cut to CUT_W, so a run this morning and one tonight both
    stay readable."""

    pieces: list[tuple[float, float, float]]  # (from, to, x of from): time drawn to scale
    scale: float  # SVG units per second

    @classmethod
    def of(cls, report: model.Report, end: float) -> TimeScale:
        span = end - report.start
        # The latest end of the attempts started before each start (attempts are in start order):
        # a pause is busy if an attempt started before it ends after its beginning.
        starts = [a.start for a in report.attempts]
        latest_end = list(itertools.accumulate((a.end or end for a in report.attempts), max))
        cuts = [(before.end, after.start) for before, after in itertools.pairwise(report.runs)
                if after.start - before.end > max(CUT_MIN_SECS, span * CUT_MIN_SHARE)
                and not ((n := bisect.bisect_left(starts, after.start)) and latest_end[n - 1] > before.end)]
        shown = span - sum(stop - start for start, stop in cuts)
        scale = (WIDTH - LEFT - RIGHT - CUT_W * len(cuts)) / max(shown, 1e-6)
        pieces, x, at = [], float(LEFT), report.start
        for start, stop in cuts:
            pieces.append((at, start, x))
            x += (start - at) * scale + CUT_W
            at = stop
        pieces.append((at, end, x))
        return cls(pieces, scale)

    def x(self, at: float) -> float:
        n = bisect.bisect_right(self.pieces, at, key=lambda piece: piece[0])
        if not n:
            return self.pieces[0][2]
        start, stop, x = self.pieces[n - 1]
        return x + (min(at, stop) - start) * self.scale

    def ticks(self) -> list[tuple[float, str]]:
        """(x, label): each piece counts from its own start, labelled with its clock time."""
        step = tick_step(sum(stop - start for start, stop, _ in self.pieces))
        cut = len(self.pieces) > 1
        found = []
        for start, stop, x in self.pieces:
            found.append((x, time.strftime("%H:%M:%S", time.gmtime(start)) if cut else "0 s"))
            tick = step
            while (start + tick - stop) * self.scale < -45:  # no label crowds the next piece's
                found.append((x + tick * self.scale, ("+" if cut else "") + tick_text(tick)))
                tick += step
        return found

    def cuts(self) -> list[tuple[float, float, float]]:
        """(x, from, to) of each pause that was cut."""
        return [(x - CUT_W, before[1], start) for before, (start, _, x) in itertools.pairwise(self.pieces)]


def render_axis(scale: TimeScale, bottom: float) -> list[str]:
    return [f'<line class="grid" x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" y2="{bottom}"/>'
            f'<text class="tick" x="{x:.1f}" y="{AXIS_H - 8}">{esc(label)}</text>' for x, label in scale.ticks()]


def render_cuts(scale: TimeScale, bottom: float) -> list[str]:
    out = []
    for x, start, stop in scale.cuts():
        out.append(f'<g class="cut"><title>{esc(duration_text(stop - start))} with no dispatcher and no worker '
                   f'running, not drawn to scale</title><rect x="{x + 3:.1f}" y="{AXIS_H}" width="{CUT_W - 6}" '
                   f'height="{bottom - AXIS_H}"/><text x="{x + CUT_W / 2:.1f}" y="{bottom + 12}">'
                   f'{esc(duration_text(stop - start))}</text></g>')
    return out


def bar_label(a: model.Attempt, width: float) -> str:
    """What fits in a bar: id and title, or the id alone, or nothing (the tooltip has it all)."""
    label, fits = f"{a.task_id} {a.title}", int((width - 8) / 6.4)
    if len(label) <= fits:
        return label
    if fits > len(a.task_id) + 2:
        return label[:fits - 1] + "…"
    return a.task_id if fits >= len(a.task_id) else ""


def render_lanes(report: model.Report, scale: TimeScale, end: float, top: float) -> list[str]:
    out = []
    for slot in range(1, report.slots + 1):
        y = top + (slot - 1) * LANE_H
        out.append(f'<g class="lane" data-lane="{slot}"><rect class="lane-bg" x="{LEFT}" y="{y}" '
                   f'width="{WIDTH - LEFT - RIGHT}" height="{LANE_H - 4}"/>'
                   f'<text class="lane-name" x="8" y="{y + LANE_H / 2 + 2}">worker {slot}</text></g>')
    for a in report.attempts:
        y = top + (a.slot - 1) * LANE_H
        left = scale.x(a.start)
        width = max(scale.x(a.end if a.end is not None else end) - left, 3.0)
        tip = (f"{a.task_id}: {a.title}\nattempt {a.number}, {model.CATEGORIES[a.category][0]}"
               + (f" ({a.outcome})" if a.kind != "task" else "") + f"\n{duration_text(a.duration)}"
               + f"\nworker {a.slot}, from {clock(a.start)}")
        out.append(f'<g class="bar c-{a.category}" data-task="{esc(a.task_id)}" data-attempt="{a.number}" '
                   f'data-slot="{a.slot}" data-outcome="{esc(a.outcome)}"><title>{esc(tip)}</title>'
                   f'<rect x="{left:.1f}" y="{y + 1}" width="{width:.1f}" height="{LANE_H - 6}" rx="3"/>'
                   f'<text x="{left + 4:.1f}" y="{y + LANE_H / 2 + 2}">{esc(bar_label(a, width))}</text></g>')
    return out


def render_marks(report: model.Report, scale: TimeScale, bottom: float) -> list[str]:
    """Merges, conflicts, gate runs and reviews on the main line; breaker trips and restarts across every lane."""
    mid = AXIS_H + MAIN_H / 2
    out = [f'<text class="lane-name" x="8" y="{mid + 4}">main</text>'
           f'<line class="main-line" x1="{LEFT}" y1="{mid}" x2="{WIDTH - RIGHT}" y2="{mid}"/>']
    for m in report.marks:
        x = scale.x(m.at)
        if m.kind in ("merged", "reverted"):
            shape = f'<path d="M{x:.1f},{mid - 7} l6,7 l-6,7 l-6,-7 z"/>'
        elif m.kind == "conflict":
            shape = f'<path d="M{x - 5:.1f},{mid - 5} l10,10 m0,-10 l-10,10"/>'
        elif m.kind in ("gate_passed", "gate_failed"):
            shape = f'<circle cx="{x:.1f}" cy="{mid}" r="4.5"/>'
        elif m.kind in ("main_passed", "main_failed"):
            shape = f'<rect x="{x - 4.5:.1f}" y="{mid - 4.5}" width="9" height="9"/>'
        elif m.kind in model.REVIEW_MARKS:
            shape = f'<path d="M{x:.1f},{mid - 6} l5,10 l-10,0 z"/>'
        else:  # the breaker stops every lane
            shape = f'<line x1="{x:.1f}" y1="{AXIS_H}" x2="{x:.1f}" y2="{bottom}"/>'
        out.append(f'<g class="mark m-{m.kind}" data-mark="{m.kind}"><title>{esc(m.text)}\n{clock(m.at)}'
                   f'</title>{shape}</g>')
    for i, run in enumerate(report.runs[1:], start=2):
        x = scale.x(run.start)
        out.append(f'<g class="restart" data-run="{i}"><title>dispatcher restarted (run {i}, pid {run.pid}) at '
                   f'{clock(run.start)}</title><line x1="{x:.1f}" y1="{AXIS_H}" x2="{x:.1f}" y2="{bottom}"/>'
                   f'<text x="{x + 3:.1f}" y="{AXIS_H + 9}">restart</text></g>')
    return out


def render_queue(report: model.Report, scale: TimeScale, top: float) -> list[str]:
    """The merge queue's depth over time, as a step chart."""
    deepest = max((d for _, d in report.queue_depth), default=0)
    unit, base = (QUEUE_H - 6) / max(deepest, 1), top + QUEUE_H
    points, depth = [f"{LEFT},{base}"], 0
    for at, new_depth in report.queue_depth:
        x = scale.x(at)
        points += [f"{x:.1f},{base - depth * unit:.1f}", f"{x:.1f},{base - new_depth * unit:.1f}"]
        depth = new_depth
    points += [f"{WIDTH - RIGHT},{base - depth * unit:.1f}", f"{WIDTH - RIGHT},{base}"]
    return [f'<text class="lane-name" x="8" y="{top + 16}">merge queue</text>'
            f'<text class="tick" x="8" y="{top + 30}">(max {deepest})</text>'
            f'<rect class="lane-bg" x="{LEFT}" y="{top}" width="{WIDTH - LEFT - RIGHT}" height="{QUEUE_H}"/>'
            f'<polygon class="queue" points="{" ".join(points)}"><title>branches waiting to merge '
            f'(at most {deepest})</title></polygon>']


def render_timeline(report: model.Report) -> str:
    end = max([report.end, report.start + 1] + [a.end or a.start for a in report.attempts])
    scale = TimeScale.of(report, end)
    lanes_top = AXIS_H + MAIN_H
    queue_top = lanes_top + report.slots * LANE_H + 14
    height = queue_top + QUEUE_H + 18
    return "\n".join([f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
                      f'role="img" aria-label="timeline">', *render_axis(scale, queue_top + QUEUE_H),
                      *render_lanes(report, scale, end, lanes_top), *render_queue(report, scale, queue_top),
                      *render_cuts(scale, queue_top + QUEUE_H), *render_marks(report, scale, queue_top + QUEUE_H),
                      "</svg>"])


def legend() -> str:
    items = [f'<span class="key"><i class="sw c-{name}"></i>{esc(text)}</span>'
             for name, (text, _) in model.CATEGORIES.items()]
    items += ['<span class="key"><i class="sym">◆</i>merged into main</span>',
              '<span class="key"><i class="sym bad">✕</i>conflict or failed checks: a task filed</span>',
              '<span class="key"><i class="sym">●</i>gate run (green passed, red failed)</span>',
              '<span class="key"><i class="sym">■</i>main itself checked (red: main fails, merges held)</span>',
              '<span class="key"><i class="sym warn">┆</i>breaker tripped</span>',
              '<span class="key"><i class="sym">│</i>dispatcher restarted</span>']
    return '<div class="legend">' + "".join(items) + "</div>"


def link(path: Path, report_dir: Path, label: str) -> str:
    """A relative link, so the report and its logs can move together; absolute across Windows drives."""
    try:
        href = urllib.parse.quote(os.path.relpath(path, report_dir).replace(os.sep, "/"))
    except ValueError:  # another drive: no relative path exists
        href = path.as_uri()
    return f'<a href="{esc(href)}">{esc(label)}</a>'


def render_table(report: model.Report, report_dir: Path) -> str:
    rows = []
    order = sorted(report.tasks.values(), key=lambda t: (t.attempts[0].start if t.attempts else report.end))
    for t in order:
        stat = t.diffstat or {}
        files = stat.get("files", 0)
        change = (f'{files} file{"" if files == 1 else "s"} <span class="ins">+{stat.get("insertions", 0)}</span> '
                  f'<span class="del">−{stat.get("deletions", 0)}</span>') if stat else ""
        tokens = f"{count_text(t.tokens.sent)} / {count_text(t.tokens.received)}" if t.tokens else ""
        kind = {"task": "", "conflict": "conflict resolver", "gate": "gate fixer"}.get(t.kind, t.kind)
        outcome = f'<span class="o-{esc(t.outcome)}">{esc(t.outcome)}</span>' + (
            f'<div class="detail">{esc(names.cut_at_word(t.detail, 240))}</div>' if t.detail else "")
        rows.append(
            f'<tr data-task="{esc(t.task_id)}"><td class="id">{esc(t.task_id)}</td><td>{esc(t.title)}'
            + (f' <span class="kind">{esc(kind)}</span>' if kind else "") + f"</td><td>{outcome}</td>"
            f'<td class="num">{len(t.attempts)}</td>'
            f'<td class="num">{duration_text(t.agent_time) if t.attempts else "–"}</td>'
            f'<td class="num">{duration_text(t.queue_wait) if t.queue_wait else "–"}</td>'
            f'<td class="num">{tokens}</td><td class="num">{change}</td>'
            f'<td>{" ".join(link(p, report_dir, label) for label, p in t.logs)}</td></tr>')
    return ('<table class="tasks"><thead><tr><th>task</th><th>title</th><th>outcome</th><th>attempts</th>'
            '<th>agent time</th><th>queue wait</th><th>tokens sent / received</th><th>change</th><th>logs</th>'
            '</tr></thead><tbody>' + "\n".join(rows) + "</tbody></table>")


def review_text(report: model.Report) -> str:
    """Branches reviewed by a person: how often each step came, and those that still await it."""
    said = {kind: sum(1 for m in report.marks if m.kind == kind) for kind in model.REVIEW_MARKS}
    awaiting = [t.task_id for t in report.tasks.values() if t.detail.startswith("awaiting review")]
    return (f"{said['review_awaited']} awaited review, {said['review_approved']} approved, "
            f"{said['review_rejected']} rejected" + (f"; awaiting now: {', '.join(awaiting)}" if awaiting else ""))


def render_summary(report: model.Report) -> str:
    merged, blocked, dropped = report.count("merged"), report.count("blocked"), report.count("dropped")
    reverted = report.count("reverted")
    waiting = sum(1 for t in report.tasks.values() if t.kind == "task") - merged - blocked - dropped - reverted
    agent = report.agent_time
    share = f"{report.merged_agent_time / agent:.0%}" if agent else "–"
    restarts = len(report.runs) - 1
    ended: dict[str, int] = {}
    for conflict in report.conflicts:
        ended[conflict.ended] = ended.get(conflict.ended, 0) + 1
    conflicts = (f"{len(report.conflicts)} filed: " + ", ".join(f"{n} {how}" for how, n in sorted(ended.items()))
                 if report.conflicts else "none")
    tokens = [t.tokens for t in report.tasks.values() if t.tokens]
    total = sum(tokens, model.Tokens())
    items = [
        ("tasks", f'<b class="o-merged">{merged} merged</b> · <b class="o-blocked">{blocked} blocked</b> · '
                  f'<b class="o-waiting">{waiting} waiting</b>'
                  + (f' · <b class="o-reverted">{reverted} reverted</b>' if reverted else "")
                  + (f" · {dropped} deleted from the store" if dropped else "")),
        ("wall time", esc(duration_text(report.wall_time))
         + (f" over {len(report.runs)} runs ({restarts} restart{'s' if restarts > 1 else ''})" if restarts else "")),
        ("agent time", esc(f"{duration_text(agent)} in {len(report.attempts)} attempts; {share} ended in merged work")),
        ("median refill", esc(median_text(report.refills) + " from a worker's end to the next start, "
                                                             "while a task was ready")),
        ("median merge latency", esc(median_text(report.merge_latencies) + " from the merge queue to main")),
        *([("reviews", esc(review_text(report)))] if any(m.kind in model.REVIEW_MARKS for m in report.marks) else []),
        ("conflicts", esc(conflicts)),
        ("tokens", esc(f"{count_text(total.sent)} sent, {count_text(total.received)} received") if tokens
         else "none printed in the agents' logs"),
    ]
    return '<dl class="summary">' + "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in items) + "</dl>"


STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 20px 28px; color: #1f2328; }
h1 { font-size: 20px; margin: 0 0 2px; } h2 { font-size: 16px; margin: 22px 0 8px; }
.sub { color: #59636e; margin: 0 0 12px; } .warn-box { background: #fff4d6; padding: 6px 10px; border-radius: 4px; }
.summary { display: flex; flex-wrap: wrap; gap: 8px; margin: 0; }
.summary div { background: #f3f5f7; border-radius: 6px; padding: 6px 12px; }
.summary dt { font-size: 12px; color: #59636e; } .summary dd { margin: 0; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 6px 0; font-size: 13px; }
.key { white-space: nowrap; } .sw { display: inline-block; width: 14px; height: 12px; border-radius: 2px;
  margin-right: 5px; vertical-align: -1px; } .sym { font-style: normal; margin-right: 5px; color: #2f9e5b; }
.sym.bad { color: #d64541; } .sym.warn { color: #e8590c; }
.timeline-box { overflow-x: auto; } svg.timeline { font-size: 12px; max-width: 100%; height: auto; }
.grid { stroke: #e4e7eb; } .tick { fill: #59636e; font-size: 11px; } .lane-name { fill: #1f2328; font-weight: 600; }
.lane-bg { fill: #f6f8fa; } .main-line { stroke: #9aa0a6; stroke-width: 2; }
.bar text { fill: #fff; font-size: 11.5px; pointer-events: none; } .bar:hover rect { stroke: #1f2328; stroke-width: 2; }
.mark.m-reverted path { fill: none; stroke: #9a6700; stroke-width: 2; }
.mark.m-merged path { fill: #2f9e5b; } .mark.m-conflict path { stroke: #d64541; stroke-width: 3; }
.mark.m-gate_passed circle { fill: #2f9e5b; } .mark.m-gate_failed circle { fill: #d64541; }
.mark.m-main_passed rect { fill: #2f9e5b; } .mark.m-main_failed rect { fill: #d64541; }
.mark.m-review_awaited path { fill: #e3a21a; } .mark.m-review_approved path { fill: #2f9e5b; }
.mark.m-review_rejected path { fill: #d64541; }
.mark.m-breaker line { stroke: #e8590c; stroke-width: 2; stroke-dasharray: 5 3; }
.restart line { stroke: #3d4349; stroke-width: 1.5; } .restart text { fill: #3d4349; font-size: 11px; }
.queue { fill: #c9d6e3; stroke: #5b7a99; }
.cut rect { fill: #fff; stroke: #9aa0a6; stroke-dasharray: 3 3; } .cut text { fill: #59636e; font-size: 11px;
  text-anchor: middle; }
table.tasks { border-collapse: collapse; width: 100%; font-size: 13px; }
.tasks th { text-align: left; background: #f3f5f7; font-weight: 600; }
.tasks th, .tasks td { padding: 5px 8px; border-bottom: 1px solid #e4e7eb; vertical-align: top; }
.tasks .num { text-align: right; white-space: nowrap; } .tasks .id { white-space: nowrap; font-family: monospace; }
.kind { font-size: 11px; background: #e7eef7; border-radius: 3px; padding: 0 4px; white-space: nowrap; }
.detail { color: #59636e; font-size: 12px; max-width: 420px; } .ins { color: #2f9e5b; } .del { color: #d64541; }
.o-merged, .o-resolved { color: #2f9e5b; } .o-reverted { color: #9a6700; } .o-blocked { color: #d64541; }
.o-waiting { color: #9a6700; }
"""


def window_note(report: model.Report, shown: model.Report) -> str:
    """What part of a long history the timeline and the table show, and how to see all of it."""
    if shown is report:
        return ""
    return (f'<p class="warn-box">The timeline and the table show the latest {len(shown.runs)} of {len(report.runs)} '
            f"runs, from {esc(clock(shown.start))}: {len(shown.attempts)} of {len(report.attempts)} attempts, "
            f"{len(shown.tasks)} of {len(report.tasks)} tasks. The summary counts every run. "
            "<code>dispatch_workers.py --report --all-runs</code> draws them all.</p>")


def render_html(report: model.Report, report_dir: Path, source: Path, shown: model.Report | None = None) -> str:
    """The page: the summary of `report`; the timeline and the table of `shown` (by default, all of it)."""
    shown = report if shown is None else shown
    colours = "".join(f".c-{name} rect, .sw.c-{name} {{ fill: {colour}; background: {colour}; }}\n"
                      for name, (_, colour) in model.CATEGORIES.items())
    if report.runs:
        span = f"{clock(report.start)} to {clock(report.end)}"
    else:
        span = "no events recorded yet: run the dispatcher first"
    skipped = (f'<p class="warn-box">{report.skipped_lines} line{"s" if report.skipped_lines > 1 else ""} of the '
               "events log could not be read or made no sense and were skipped (a crash mid-write leaves a partial "
               "line; a slot above max_workers or a time out of order is not drawn).</p>"
               if report.skipped_lines else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Dispatch run report</title>
<style>{STYLE}{colours}</style></head>
<body>
<h1>Dispatch run report</h1>
<p class="sub">{esc(span)} · {report.events} events from {esc(source)}</p>
{skipped}
{render_summary(report)}
{window_note(report, shown)}
<h2>Timeline</h2>
{legend()}
<div class="timeline-box">{render_timeline(shown) if shown.runs else ""}</div>
<h2>Tasks</h2>
{render_table(shown, report_dir)}
</body></html>
"""


def write_report(root: Path, out: Path | None = None, all_runs: bool = False) -> Path:
    """Read the repository's events log and write the report (default .dispatch_logs/report.html):
    of the latest runs (WINDOW_RUNS, at most WINDOW_ATTEMPTS attempts), or of every run."""
    logs_dir = root / event_log.LOGS_DIR
    target = (out or logs_dir / REPORT_FILE).resolve()
    report = model.build_report(event_log.EventReader(logs_dir / event_log.EVENTS_FILE), logs_dir)
    shown = report if all_runs else report.window(WINDOW_RUNS, WINDOW_ATTEMPTS)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        statefiles.atomic_write_text(target, render_html(report, target.parent, logs_dir / event_log.EVENTS_FILE,
                                                         shown))
    except OSError as exc:
        raise errors.UserError(f"cannot write the report {target}: {exc.strerror or exc}") from None
    return target
