"""List, show, create, close, reopen, block and annotate tasks in the configured task store; decide
what becomes of a branch the dispatcher holds, or one that awaits review."""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from crew import config as configuration
from crew import console
from crew import errors
from crew import names
from crew import tasks
from crew import workspace
from crew.cli import base
from crew.dispatch import revert
from crew.dispatch import review
from crew.dispatch import reviews
from crew.dispatch import rewritten_main
from crew.dispatch import state_store
from crew.tasks import model


EPILOG = """\
The store is task_queue.json in the repository's main root (the embedded default), or beads
when task_backend is "bd" (or "auto" with bd installed and a .beads/ folder).

examples:
  py tasks.py list                         open, in-progress, blocked and deferred tasks
  py tasks.py list --status all --json     every task, as JSON
  py tasks.py create "Add a CSV export" -d "Export the table as CSV" --file report.py
  py tasks.py create "Rework the login" --review   a person approves its branch before it lands
  py tasks.py close myrepo-3 -r "done by hand"
  py tasks.py block myrepo-4 -r "needs a design decision"
  py tasks.py revert myrepo-6 -r "broke the login page"   undo its merges on main, then reopen it
  py tasks.py held                         branches held: they carry commits that left main
  py tasks.py held myrepo-5 --discard      delete that branch; the task is tried again on main
  py tasks.py review                       branches awaiting review (review "all" or "labelled"), with
                                           their diffstat, gate, logs and the command that shows the diff
  py tasks.py approve myrepo-6             it lands (after a fresh merge and gate if main moved)
  py tasks.py reject myrepo-7 -r "keep the old API"                  the next attempt starts afresh
  py tasks.py reject myrepo-7 -r "name the flag --all" --keep-branch the next attempt continues it
A decision is recorded in the task store and carried out by the dispatcher: now if it runs, else
at its next run. It holds for the branch tip shown: a branch that changes is reviewed again.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tasks.py", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    base.add_common_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = argparse.ArgumentParser(add_help=False)
    base.add_common_options(shared, subcommand=True)
    p = sub.add_parser("list", parents=[shared], help="list tasks")
    p.add_argument("--status", default="active",
                   help="comma-separated statuses, 'active' (all but closed, the default) or 'all'")
    sub.add_parser("show", parents=[shared], help="show one task").add_argument("id")
    p = sub.add_parser("create", parents=[shared], help="create a task")
    p.add_argument("title")
    p.add_argument("-d", "--description", default="")
    p.add_argument("-p", "--priority", type=int, choices=range(5), default=2, metavar="0-4")
    p.add_argument("--file", action="append", default=[], metavar="PATH",
                   help="a file the task should change (repeatable)")
    p.add_argument("--review", action="store_true",
                   help=f"label it {model.NEEDS_REVIEW_LABEL}: with review \"labelled\", a person approves its branch "
                        "before it lands")
    p = sub.add_parser("close", parents=[shared], help="close a task")
    p.add_argument("id")
    p.add_argument("-r", "--reason", default="")
    p.add_argument("--force", action="store_true", help="close it even while open tasks block it")
    sub.add_parser("reopen", parents=[shared], help="reopen a closed task").add_argument("id")
    p = sub.add_parser("block", parents=[shared], help="set a task blocked, with the reason")
    p.add_argument("id")
    p.add_argument("-r", "--reason", required=True)
    p = sub.add_parser("note", parents=[shared], help="append a note to a task")
    p.add_argument("id")
    p.add_argument("text")
    p = sub.add_parser("revert", parents=[shared],
                       help="undo a merged task's change on main: a revert task whose branch reverts its merges, "
                            "landed through the merge queue; the task is reopened once it has landed")
    p.add_argument("id")
    p.add_argument("-r", "--reason", default="", help="why: a note on the task when it is reopened")
    p.add_argument("--close", action="store_true", help="leave the task closed once the revert has landed")
    p = sub.add_parser("held", parents=[shared],
                       help="list the branches the dispatcher holds (they carry commits that left main and do not "
                            "rebase without them), or decide one")
    p.add_argument("id", nargs="?")
    decision = p.add_mutually_exclusive_group()
    decision.add_argument("--merge", dest="decision", action="store_const", const=rewritten_main.HeldDecision.MERGE,
                          help="merge the branch as it is: the commits that left main come back with it")
    decision.add_argument("--discard", dest="decision", action="store_const",
                          const=rewritten_main.HeldDecision.DISCARD,
                          help="delete the branch and release the task: its next attempt starts on main")
    p = sub.add_parser("review", parents=[shared], help="list the branches awaiting a person's review")
    p = sub.add_parser("approve", parents=[shared], help="approve the branch tip awaiting review: it lands")
    p.add_argument("id")
    p.add_argument("--tip", metavar="COMMIT", help="the tip you reviewed (refused if the branch awaits another)")
    p = sub.add_parser("reject", parents=[shared],
                       help="send the branch awaiting review back; the reason is the next attempt's to read")
    p.add_argument("id")
    p.add_argument("-r", "--reason", required=True)
    p.add_argument("--tip", metavar="COMMIT", help="the tip you reviewed (refused if the branch awaits another)")
    p.add_argument("--keep-branch", action="store_true",
                   help="request changes: the next attempt continues on the branch (else it starts afresh from "
                        "main and the branch is kept as rejected/<branch>, never merged)")
    return parser


def review_list(config: configuration.Settings, store: model.TaskStore, as_json: bool) -> int:
    waiting = reviews.waiting_list(config, state_store.read_state(config), store)
    if as_json:
        console.print_json([dataclasses.asdict(w) for w in waiting])
        return 0
    if not waiting:
        print("no branch awaits review")
    for w in waiting:
        stat = (f"{w.diffstat['files']} files, +{w.diffstat['insertions']} -{w.diffstat['deletions']}"
                if w.diffstat else "diffstat unknown")
        gate = f"passed (log {w.gate_log})" if w.gate == "passed" else "none configured"
        console.show(f"{w.id}  {w.title}")
        console.show(f"    branch {w.branch} at {w.tip[:10]}, awaiting review since {w.since}")
        console.show(f"    {stat}; gate: {gate}; attempt log: {w.attempt_log or 'none'}")
        console.show(f"    diff: {w.diff_command}" + (f"; {w.decision}, not yet carried out by the dispatcher"
                                                      if w.decision != str(review.Decision.NONE) else ""))
    return 0


def decide_review(config: configuration.Settings, store: model.TaskStore, args: argparse.Namespace) -> int:
    if args.command == "approve":
        decision = review.Decision.APPROVED
    else:
        decision = review.Decision.CHANGES_REQUESTED if args.keep_branch else review.Decision.REJECTED
        if problem := names.task_text_problem(args.reason, names.TEXT_LIMIT):
            raise errors.UserError(f"the reason {problem}; nothing was recorded")
    request = reviews.record_decision(config, store, args.id, decision, getattr(args, "reason", ""), args.tip)
    console.show(f"{args.id}: {request.branch} at {request.review_tip[:10]} {decision} (carried out by the dispatcher: "
                 "now if it runs, else at its next run)")
    return 0


def held(config: configuration.Settings, task_id: str | None, decision: rewritten_main.HeldDecision | None,
         as_json: bool) -> int:
    """List the held branches, or record a person's decision on one (the dispatcher carries it out
    now if it runs, else at its next run)."""
    holds = rewritten_main.held_requests(state_store.read_state(config))
    if task_id is None:
        if decision is not None:
            raise errors.UsageError("--merge and --discard need the task's id")
        if as_json:
            console.print_json([{"id": r.task_id, "branch": r.branch, "reason": r.held} for r in holds])
        elif not holds:
            print("no branch is held")
        for request in [] if as_json else holds:
            console.show(f"{request.task_id:<14} {request.branch}  {request.held}")
        return 0
    held = next((r for r in holds if r.task_id == task_id), None)
    if held is None:
        raise errors.UserError(f"{task_id}: no branch of it is held")
    if decision is None:
        raise errors.UsageError(f"{task_id}: say what becomes of {held.branch}: --merge or --discard")
    rewritten_main.record_decision(config, held, decision)
    outcome = "merged as it is" if decision == rewritten_main.HeldDecision.MERGE else "discarded, the task released"
    console.show(f"{task_id}: {held.branch} will be {outcome} "
                 "(by the dispatcher: now if it runs, else at its next run)")
    return 0


def format_task(task: model.Task) -> str:
    extra = f" [{task.assignee}]" if task.assignee else ""
    files = f"  files: {', '.join(task.files)}" if task.files else ""
    return f"{task.id:<14} {task.status:<11} P{task.priority} {task.title}{extra}{files}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = configuration.load_config(args.config)
    if args.command not in ("list", "show", "review"):
        workspace.exclude_toolkit_files(config)
    if args.command == "held":  # the dispatcher's records, not the store
        return held(config, args.id, args.decision, args.json)
    store = tasks.open_task_store(config)
    if args.command == "review":
        return review_list(config, store, args.json)
    if args.command in ("approve", "reject"):
        return decide_review(config, store, args)

    if args.command == "list":
        if args.status in ("all", "active"):
            # "active" keeps unknown (custom) statuses too: only closed is hidden.
            result = [t for t in store.list(None) if args.status == "all" or t.status != "closed"]
        else:
            result = store.list([s.strip() for s in args.status.split(",") if s.strip()])
    elif args.command == "show":
        result = [store.get(args.id)]
    elif args.command == "create":
        for what, problem in (("title", names.title_problem(args.title)),
                              ("description", names.task_text_problem(args.description, names.TEXT_LIMIT))):
            if problem:
                raise errors.UserError(f"the {what} {problem}; nothing was created")
        files = [names.check_repo_path(f) for f in args.file]
        description = args.description
        if files:
            description = (description + "\n\n" if description else "") + "Files: " + ", ".join(files)
        labels = [model.FILE_LABEL + f for f in files] + ([model.NEEDS_REVIEW_LABEL] if args.review else [])
        result = [store.create(args.title, description, priority=args.priority, labels=labels)]
    elif args.command == "revert":
        if problem := names.task_text_problem(args.reason, names.TEXT_LIMIT):
            raise errors.UserError(f"the reason {problem}; nothing was filed")
        result = [revert.request(config, store, args.id, args.reason, args.close)]
    elif args.command == "close":
        result = [store.close(args.id, args.reason, force=args.force)]
    elif args.command == "reopen":
        result = [store.reopen(args.id)]
    elif args.command == "block":
        result = [store.set_status(args.id, "blocked", args.reason)]
    else:
        result = [store.add_note(args.id, args.text)]

    if args.json:
        console.print_json([t.to_dict() for t in result])
    elif args.command == "show":
        task = result[0]
        for key, value in task.to_dict().items():
            if value not in ("", [], {}, None):
                console.show(f"{key + ':':<14} {value}", multiline=True)
    else:
        for task in result:
            console.show(format_task(task))
        if args.command == "revert":
            console.show(f"its branch is made, gated and landed by the dispatcher (now if it runs, else at its next "
                         f"run); {args.id} is {'left closed' if args.close else 'reopened'} once it has landed")
        if args.command == "list" and not result:
            print("no tasks")
    return 0
