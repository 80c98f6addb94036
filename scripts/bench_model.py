#!/usr/bin/env python3
"""Qualify a model: run the small goals shipped in scripts/bench_goals/ against it, as a user
would (split_task.py, then dispatch_workers.py with its default Aider worker command on the same
model, one worker, the goal repository's own tests as merge_gate_command), and print per goal
and in total: whether the plan was valid, the subtasks merged (with the tests passing: the gate
is the tests), attempts per merged subtask, gate failures, minutes per merged subtask, tokens.

Each goal gets at most --goal-minutes (default 7): then the dispatcher is stopped as a person
would, Ctrl-C twice. The whole run is bounded by the number of goals times that: about 30
minutes for Qwen2.5-Coder 1.5B on 2 CPU cores. It prints figures; it asserts nothing.

  py scripts/bench_model.py --model crew-qwen2.5-coder:1.5b               your Ollama (OLLAMA_HOST)
  py scripts/bench_model.py --serve ~/.cache/dispatch-ollama/0.17.4/ollama-x86-64-v3
                                           the Ollama that scripts/install_ollama.sh built, with
                                           the models scripts/install_model.sh installed
Aider must be on PATH (scripts/install_aider.sh prints where it is), and this Python must have
pytest (the goals' tests run with it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from crew import demo_kit  # noqa: E402
from crew.report import events as event_log  # noqa: E402
from crew.report import model as report_model  # noqa: E402
import benchkit  # noqa: E402

GOALS = ROOT / "scripts" / "bench_goals"
MODEL = "crew-qwen2.5-coder:1.5b"  # what scripts/install_model.sh installs
GOAL_MINUTES = 7.0
MAX_SUBTASKS = 3  # small goals: more subtasks would only split one edit in pieces
STOP_GRACE_SECS = 120  # after the second Ctrl-C: the workers' trees are ended, the report written


def settings(llm_url: str, model: str, bound_secs: float) -> dict:
    """The configuration of a goal's run. About 8 tokens/s on 2 cores: a plan of three subtasks
    is about 300 tokens, a whole small file about 200, so a worker gets 5 minutes; a model that
    writes without end is ended there. The split asks twice at most, within a third of the bound
    each (5 minutes at most): a busy machine's slow prompt processing still gets its answer."""
    return {"task_backend": "json", "task_prefix": "goal", "llm_url": llm_url, "llm_model": model,
            "llm_num_ctx": 8192, "llm_max_tokens": 1024, "llm_retries": 1,
            "llm_timeout_secs": min(300, bound_secs // 3),
            "max_workers": 1, "poll_interval_secs": 1, "worker_timeout_secs": 300, "worker_kill_grace_secs": 5,
            "max_attempts": 2, "max_merge_retries": 2, "auto_ingest_suggestions": False,
            "merge_gate_command": [sys.executable, "-m", "pytest", "-q"], "merge_gate_timeout_secs": 120}


@dataclasses.dataclass
class GoalRun:
    """One goal's run, as it ended."""

    name: str
    repo: Path
    config: Path
    split: subprocess.CompletedProcess
    split_secs: float
    created: list[str]  # the subtasks' ids; empty when the split was refused
    run_secs: float = 0.0
    dispatch_code: int | None = None  # None: not run (no plan)
    dispatch_output: str = ""  # stdout then stderr
    stopped: bool = False  # at the bound: the split ended, or the dispatcher stopped with Ctrl-C twice

    @property
    def plan_valid(self) -> bool:
        return self.split.returncode == 0


def goal_names() -> list[str]:
    return sorted(p.name for p in GOALS.iterdir() if (p / "goal.txt").is_file())


def make_goal_repo(name: str, folder: Path) -> Path:
    """The goal's repository: its files under bench_goals/NAME/repo, one commit on main."""
    source = GOALS / name / "repo"
    files = {p.relative_to(source).as_posix(): p.read_text(encoding="utf-8")
             for p in sorted(source.rglob("*")) if p.is_file()}
    return demo_kit.scratch_repository(folder / name, files)


def stop_like_a_person(proc: subprocess.Popen) -> None:
    """Ctrl-C twice: start nothing new, then end the workers now (their branches are kept)."""
    if os.name == "nt":  # Ctrl-Break is the console's stop-now (the dispatcher starts in its own group)
        proc.send_signal(signal.CTRL_BREAK_EVENT)
        return
    proc.send_signal(signal.SIGINT)
    time.sleep(1)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)


def run_goal(name: str, folder: Path, goal_settings: dict, bound_secs: float, env: dict | None = None) -> GoalRun:
    """Split the goal and dispatch its subtasks, all within bound_secs; at the bound the
    dispatcher is stopped as a person would. The split is bounded by llm_timeout_secs per request."""
    started = time.monotonic()
    repo = make_goal_repo(name, folder)
    config = folder / f"{name}.json"
    config.write_text(json.dumps({"repo_path": str(repo), **goal_settings}), encoding="utf-8")
    env = {**os.environ, **(env or {})}
    goal = (GOALS / name / "goal.txt").read_text(encoding="utf-8").strip()
    argv = [sys.executable, str(ROOT / "split_task.py"), "--config", str(config), "--json",
            "--min", "1", "--max", str(MAX_SUBTASKS), goal]
    try:
        split = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=bound_secs)
    except subprocess.TimeoutExpired:  # ended by subprocess.run; a split creates nothing until its plan is whole
        split = subprocess.CompletedProcess(argv, None, "", f"no plan within the bound ({bound_secs:g} s)\n")
    created = json.loads(split.stdout)["created"] if split.returncode == 0 else []
    run = GoalRun(name, repo, config, split, time.monotonic() - started, created, stopped=split.returncode is None)
    if not created:
        return run
    out, err = folder / f"{name}.dispatch.out", folder / f"{name}.dispatch.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {}
        proc = subprocess.Popen([sys.executable, str(ROOT / "dispatch_workers.py"), "--config", str(config)],
                                cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, **group)
        dispatch_started = time.monotonic()
        try:
            proc.wait(timeout=max(1.0, bound_secs - (dispatch_started - started)))
        except subprocess.TimeoutExpired:
            run.stopped = True
            stop_like_a_person(proc)
            try:
                proc.wait(timeout=STOP_GRACE_SECS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    run.run_secs = time.monotonic() - dispatch_started
    run.dispatch_code = proc.returncode
    run.dispatch_output = out.read_text(encoding="utf-8", errors="replace") + err.read_text(encoding="utf-8", errors="replace")
    return run


def read_report(run: GoalRun) -> report_model.Report:
    logs = run.repo / ".dispatch_logs"
    return report_model.build_report(event_log.EventReader(logs / "events.jsonl"), logs)


def figures(run: GoalRun) -> dict:
    """What a person choosing a model wants to know about one goal's run."""
    split_tokens = json.loads(run.split.stdout)["tokens"] if run.plan_valid else {"prompt": 0, "completion": 0}
    found = {"goal": run.name, "plan_valid": run.plan_valid, "subtasks": len(run.created), "merged": 0,
             "attempts": 0, "gate_failures": 0, "minutes": (run.split_secs + run.run_secs) / 60,
             "stopped_at_bound": run.stopped, "tokens_sent": split_tokens["prompt"],
             "tokens_received": split_tokens["completion"]}
    if not run.plan_valid:
        found["refusal"] = run.split.stderr.strip().splitlines()[-1:] or [""]
        return found
    report = read_report(run)
    found["merged"] = sum(1 for i in run.created if i in report.tasks and report.tasks[i].outcome == "merged")
    found["attempts"] = len(report.attempts)  # fix and conflict tasks' attempts count too
    events, _ = event_log.read_events(run.repo / ".dispatch_logs" / "events.jsonl")
    found["gate_failures"] = sum(1 for e in events if e.name == "gate_failed" and e.fields.get("counts"))
    for row in report.tasks.values():
        if row.tokens:
            found["tokens_sent"] += row.tokens.sent
            found["tokens_received"] += row.tokens.received
    return found


def total(rows: list[dict]) -> dict:
    summed = {key: sum(r[key] for r in rows) for key in
              ("subtasks", "merged", "attempts", "gate_failures", "minutes", "tokens_sent", "tokens_received")}
    return {"goal": "TOTAL", "plan_valid": f"{sum(r['plan_valid'] for r in rows)}/{len(rows)}",
            "stopped_at_bound": sum(r["stopped_at_bound"] for r in rows), **summed}


def line(row: dict) -> str:
    merged = row["merged"]
    per = (lambda value, digits: f"{value / merged:.{digits}f}" if merged else "-")
    plan = row["plan_valid"] if isinstance(row["plan_valid"], str) else ("yes" if row["plan_valid"] else "no")
    return (f"{row['goal']:<10} {plan:>5} {merged:>3}/{row['subtasks']:<3} {per(row['attempts'], 1):>8} "
            f"{row['gate_failures']:>5} {per(row['minutes'], 1):>8} {row['minutes']:>6.1f} "
            f"{row['tokens_sent']:>8} {row['tokens_received']:>7} {'stopped' if row['stopped_at_bound'] else ''}")


HEADER = (f"{'goal':<10} {'plan':>5} {'merged':>7} {'att/mrg':>8} {'gatef':>5} {'min/mrg':>8} {'min':>6} "
          f"{'sent':>8} {'recvd':>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help=f"the Ollama model (default {MODEL})")
    parser.add_argument("--llm-url", default=None, help="the Ollama server (default OLLAMA_HOST, else 127.0.0.1:11434)")
    parser.add_argument("--serve", metavar="OLLAMA", help="start this ollama binary's own server (its cache's models)")
    parser.add_argument("--goal-minutes", type=float, default=GOAL_MINUTES, help=f"bound per goal (default {GOAL_MINUTES})")
    parser.add_argument("--only", action="append", choices=goal_names(), help="run only this goal (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the goals' repositories (printed) for a look")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    goals = args.only or goal_names()
    print(f"{len(goals)} goals, at most {args.goal_minutes:g} minutes each ({len(goals) * args.goal_minutes:g} in all), "
          f"model {args.model}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="bench-model-"))
    server = None
    if args.serve:
        server = benchkit.OllamaServe(Path(args.serve).resolve(), work)
        server.start()
        llm_url = server.url
    else:
        llm_url = args.llm_url or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434"
    if "://" not in llm_url:
        llm_url = "http://" + llm_url
    rows = []
    try:
        for name in goals:
            run = run_goal(name, work, settings(llm_url, args.model, args.goal_minutes * 60), args.goal_minutes * 60)
            rows.append(figures(run))
            if not args.json:
                print(line(rows[-1]) if len(rows) > 1 else HEADER + "\n" + line(rows[-1]), flush=True)
    finally:
        if server:
            server.stop()
    rows.append(total(rows))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(line(rows[-1]))
    if args.keep:
        print(f"the goals' repositories: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
