"""Run ready tasks in parallel agent workers, each in its own git worktree, and merge their branches."""
from __future__ import annotations

import argparse
import webbrowser
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crew import config as configuration
from crew import console
from crew import errors
from crew import run_console
from crew import tasks as task_stores
from crew import workspace
from crew.cli import base as cli_base
from crew.dispatch import session
from crew.dispatch import status as run_status
from crew.report import events
from crew.report import page


EPILOG = """\
How it works:
  Each ready task is claimed, gets a branch (work/<id>) and a worktree beside the repository,
  and a worker: the agent command (Aider by default) with the task in a message file. A worker
  is judged from git, not its exit code: commits ahead of main mean work to merge. Finished
  branches merge into main one at a time behind the merge slot (.dispatch_merge.lock), without
  touching your checkout beyond a fast-forward. A conflict files a task "Resolve merge conflict:
  <branch>", which runs in the branch's own worktree; once it is closed, the merge is retried.
  With review "all" (or "labelled": tasks labelled needs-review), a branch that merges cleanly
  and passed its gate awaits a person's approval (py tasks.py review / approve / reject) before
  it lands; the other branches go on meanwhile.

  Everything the dispatcher knows is in .dispatch_state.json and
  .dispatch_pending_merge_retries.json: kill it at any moment and start it again, and it adopts
  live workers, finishes dead ones and carries on. Ctrl-C once: start nothing new, let running
  workers finish. Twice: end the workers now (their branches are kept for the next run).

examples:
  py dispatch_workers.py --demo             a scratch repository, a scripted agent, real merges
  py dispatch_workers.py                    run until nothing is ready or running
  py dispatch_workers.py --max-workers 4 --watch
  py dispatch_workers.py --dry-run          what would start now, and why others wait
  py dispatch_workers.py --status --json    the state of a running dispatcher
  py dispatch_workers.py --report --open    a picture of the runs so far, in your browser
  py dispatch_workers.py --report --all-runs   every run drawn, not only the latest 10

exit codes: 0 every task it ran was merged; 1 some task ended blocked or a merge is waiting
(for a conflict task, for main, or for a person's review: the summary says why); 2 bad usage or
configuration; 130 interrupted; 143 stopped by SIGTERM, 129 by SIGHUP.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatch_workers.py", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_base.add_common_options(parser)
    run = parser.add_argument_group("running")
    run.add_argument("--max-workers", type=int, metavar="N", help="parallel workers (default: max_workers, 2)")
    run.add_argument("--watch", action="store_true", help="keep polling for new tasks until Ctrl-C")
    look = parser.add_argument_group("looking")
    look.add_argument("--dry-run", action="store_true", help="list what would start now and why others wait")
    look.add_argument("--status", action="store_true", help="print the current state (also while one runs)")
    look.add_argument("--demo", action="store_true",
                      help="build a scratch repository with tasks and run the dispatcher on it with a "
                           "scripted agent (needs no Ollama, Aider or bd)")
    look.add_argument("--report", action="store_true",
                      help="write an HTML report of the runs from the events log: a timeline of the "
                           "workers, merges and conflicts, and what each task cost (every run also writes it)")
    look.add_argument("--out", metavar="FILE", help=f"with --report: where (default {events.LOGS_DIR}/"
                                                    f"{page.REPORT_FILE})")
    look.add_argument("--open", action="store_true", help="with --report: open it in the web browser")
    look.add_argument("--all-runs", action="store_true",
                      help=f"with --report: draw every run in the timeline and the table (default: the latest "
                           f"{page.WINDOW_RUNS} runs, at most {page.WINDOW_ATTEMPTS:,} attempts; the summary "
                           "counts every run either way)")
    return parser


def print_status(result: dict[str, Any]) -> None:
    d = result["dispatcher"]
    console.show(f"dispatcher: {'pid ' + str(d['pid']) + ' since ' + d['started_at'] if d else 'not running'}")
    for w in result["workers"]:
        if w["on_deck"]:
            console.show(f"  on deck: {w['task_id']} on {w['branch']} (claimed; starts when a worker's slot frees)")
            continue
        console.show(f"  worker {w['slot']}: {w['task_id']} on {w['branch']} (pid {w['pid']}, until {w['deadline']}, "
                     f"log {w['log']})")
    if (m := result["main_check"]) and m["holds_merges"]:
        console.show(f"  {result['main_branch']} fails its checks at {m['commit'][:10]} (checked {m['checked_at']}): "
                     f"merges wait until it passes; the checks' output ends: {m['output']}")
    for g in result["gates"]:
        gated = (f"{g['task_id']} on {' + '.join([result['main_branch'], *g['stack']])}" if g["task_id"]
                 else f"{result['main_branch']} itself")  # main's own check, before a failure is blamed
        console.show(f"  gate: {gated} ({g['commit'][:10]}), {g['state']}"
                     + (f" ({g['reason']})" if g["reason"] else "")
                     + f", started {g['elapsed_secs']:g} s ago (pid {g['pid']}, log {g['log']})")
    for e in result["merge_queue"]:
        if e["awaiting_review_since"]:
            console.show(f"  awaiting review: {e['task_id']} ({e['branch']} at {e['review_tip'][:10]}) since "
                         f"{e['awaiting_review_since']}: see `py tasks.py review`")
            continue
        console.show(f"  merge queue: {e['task_id']} ({e['branch']})" + (f": {e['waiting']}" if e["waiting"] else "")
                     + (" (approved in review)" if e["review"] == "approved" else ""))
    if result["starts_held"]:
        console.show(f"  new workers wait: {result['starts_held']}")
    for p in result["pending_merges"]:
        console.show(f"  pending: {p['task_id']} waits for {p['followup_task']} ({p['kind']})")
    for r in result["reverts"]:
        console.show(f"  revert: {r['task_id']} undoes {r['reverts']} ({len(r['merges'])} merge"
                     f"{'s' if len(r['merges']) != 1 else ''}), {r['status']}")
    if result["store_unreachable"]:
        console.show(f"  task store: not read ({result['store_unreachable']}); the above is this host's records only")
        return
    console.show("  tasks: " + ", ".join(f"{k} {v}" for k, v in sorted(result["counts"].items())))
    for c in result["claims"]:
        console.show(f"  in progress: {c['task_id']} held by {c['holder'] or 'no one'}"
                     + (" (this host)" if c["this_host"] else "") + claim_state(c) + f": {c['title']}")


def claim_state(claim: dict[str, Any]) -> str:
    """A claim's lease, last heartbeat and waiting branch, as said after its holder."""
    said = ""
    if claim["lease_expires_at"]:
        said += (f", its lease lapsed at {claim['lease_expires_at']}" if claim["lease_lapsed"]
                 else f", lease until {claim['lease_expires_at']}")
    if claim["heartbeat_at"]:
        said += f", last heartbeat {claim['heartbeat_at']}"
    if claim["merge_ready"]:
        said += f", its branch {claim['branch']} ({(claim['tip'] or '')[:10]}) waits to merge"
    return said


def print_dry_run(plan: list[dict[str, Any]]) -> None:
    for item in plan:
        console.show(f"{'start' if item['start'] else 'wait '} {item['id']}  {item['title']}"
                     + (f"  ({item['reason']})" if item["reason"] else ""))
    if not plan:
        print("nothing is ready")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_workers is not None and args.max_workers < 1:
        raise errors.UsageError("--max-workers must be at least 1")
    if (args.out or args.open or args.all_runs) and not args.report:
        raise errors.UsageError("--out, --open and --all-runs go with --report")
    if args.demo:
        from crew import demo  # scaffolding: loaded for --demo only
        return demo.run_demo(args.json)
    config = configuration.load_config(args.config)
    if args.report:  # from the events log alone: no store, and no matter whether a dispatcher runs
        if not args.out:
            workspace.exclude_toolkit_files(config)  # the page goes to .dispatch_logs/
        path = page.write_report(config.root, Path(args.out) if args.out else None, all_runs=args.all_runs)
        if args.json:
            console.print_json({"report": str(path)})
        else:
            print(path)
        if args.open:
            webbrowser.open(path.as_uri())
        return 0
    store = task_stores.open_task_store(config)
    max_workers = args.max_workers or config.max_workers
    if args.status:
        result = run_status.status(config, store)
        if args.json:
            console.print_json(result)
        else:
            print_status(result)
        return 0
    if args.dry_run:
        plan = run_status.dry_run(config, store, max_workers)
        if args.json:
            console.print_json(plan)
        else:
            print_dry_run(plan)
        return 0
    summary, interrupted = session.run_session(config, store, max_workers, args.watch,
                                               run_console.progress_printer(args.json))
    run_console.print_summary(summary, args.json)
    return run_console.exit_code(summary, interrupted)
