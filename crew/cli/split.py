"""Split one high-level goal into 3-10 small, file-scoped subtasks with a local LLM."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from crew import config as configuration
from crew import console
from crew import errors
from crew import git
from crew import llm
from crew import names
from crew import planning
from crew import tasks
from crew import workspace
from crew.cli import base
from crew.tasks import model


EPILOG = """\
The goal becomes a parent task (an epic, never dispatched itself); each subtask is linked to it
with discovered-from, names the files it should change (file:<path> labels), and waits for an
earlier subtask that names the same file (a blocks dependency), so two workers never edit the
same file at once. Nothing is created unless the whole plan is valid.

examples:
  py split_task.py "Add a Jira analytics dashboard with cycle time, throughput and WIP"
  py split_task.py --file docs/spec.md --max 6
  py split_task.py --bead myrepo-12            split an existing task instead
  py split_task.py --dry-run --json "Add CSV export"
  py split_task.py --model llama3.1:8b "..."   another model than llm_model
  py split_task.py --review "Rework the login"  a person approves each branch before it lands
                                               (with "review": "labelled" in the config)

LLM settings (llm_api, llm_url, llm_model, ...) come from dispatch_config.json; llm_url defaults
to OLLAMA_HOST, else http://127.0.0.1:11434.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="split_task.py", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    base.add_common_options(parser)
    what = parser.add_argument_group("what to split (one of)")
    what.add_argument("goal", nargs="?", help="the goal, in words")
    what.add_argument("--file", metavar="PATH", help="read the goal (a spec) from a UTF-8 file")
    what.add_argument("--bead", metavar="ID", help="split this existing task; it becomes the parent")
    plan = parser.add_argument_group("the plan")
    plan.add_argument("--min", type=int, default=3, metavar="N", help="fewest subtasks (default 3)")
    plan.add_argument("--max", type=int, default=10, metavar="N", help="most subtasks (default 10)")
    plan.add_argument("--model", help="LLM model (default: llm_model from the config)")
    plan.add_argument("--dry-run", action="store_true", help="print the plan; create nothing")
    plan.add_argument("--review", action="store_true",
                      help=f"label every subtask {model.NEEDS_REVIEW_LABEL}: with review \"labelled\", a person "
                           "approves each branch before it lands")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.goal, args.file, args.bead)) != 1:
        parser.error("give exactly one of: a goal, --file PATH, --bead ID")
    if not 1 <= args.min <= args.max:
        parser.error("--min must be at least 1 and at most --max")
    config = configuration.load_config(args.config)
    store = tasks.open_task_store(config)

    def progress(msg: str) -> None:
        console.show(msg, file=sys.stderr if args.json else None)

    parent_task = store.get(args.bead) if args.bead else None
    if parent_task:
        goal = f"{parent_task.title}\n\n{parent_task.description}".strip()
    elif args.file:
        try:
            goal = Path(args.file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.UsageError(f"cannot read the goal from {args.file}: {exc}") from None
    else:
        goal = args.goal.strip()
    if not goal:
        raise errors.UsageError("the goal is empty")
    if parent_task is None and (problem := names.task_text_problem(goal, names.TEXT_LIMIT)):
        raise errors.UserError(f"the goal {problem} (it would become the epic's description); nothing was created")

    client = llm.LLMClient(config, args.model)
    progress(f"asking {client.model} at {config.llm_url} for {args.min}-{args.max} subtasks...")
    messages = planning.build_messages(goal, git.tracked_files(config.root), config.prompt_max_files,
                                       args.min, args.max)
    subtasks, merges, tokens = planning.ask_for_plan(client, messages, config.llm_retries, args.min, args.max, progress)
    notes = merges + planning.link_shared_files(subtasks)

    open_titles = {names.normalize_title(t.title): t.id for t in store.list(["open", "in_progress"])}
    skipped = [{"title": s.title, "reason": f"same title as open task {open_titles[names.normalize_title(s.title)]}"}
               for s in subtasks if names.normalize_title(s.title) in open_titles]

    if args.dry_run:
        plan = [dataclasses.asdict(s) for s in subtasks]
        if args.json:
            console.print_json({"parent": args.bead, "plan": plan, "notes": notes, "skipped": skipped,
                                "tokens": tokens})
        else:
            for i, s in enumerate(subtasks):
                waiting = f"  (waits for {', '.join(map(str, s.depends_on))})" if s.depends_on else ""
                console.show(f"{i}. {s.title}")
                console.show(f"   files: {', '.join(s.files)}{waiting}")
            for note in notes:
                console.show(f"note: {note}")
            for skip in skipped:
                console.show(f"would skip {skip['title']!r}: {skip['reason']}")
        return 0

    workspace.exclude_toolkit_files(config)
    created = planning.create_tasks(store, goal, parent_task, subtasks, open_titles,
                                     [model.NEEDS_REVIEW_LABEL] if args.review else [])
    if args.json:
        console.print_json({"parent": created["parent"], "created": [t.id for t in created["tasks"]],
                            "notes": notes, "skipped": skipped, "tokens": tokens})
        return 0
    print(f"parent: {created['parent']}" + ("" if parent_task else " (new epic)"))
    for task, waits in zip(created["tasks"], created["waits"], strict=True):
        console.show(f"  {task.id}  {task.title}")
        console.show(f"      files: {', '.join(task.files)}")
        if waits:
            console.show(f"      waits for: {', '.join(waits)}")
    for note in notes:
        console.show(f"note: {note}")
    for skip in skipped:
        console.show(f"skipped {skip['title']!r}: {skip['reason']}")
    print(f"tokens: {tokens['prompt']} prompt, {tokens['completion']} completion")
    print("next: py dispatch_workers.py   (or python3 dispatch_workers.py)")
    return 0
