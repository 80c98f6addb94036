"""Turn follow-up ideas in suggested_tasks.txt (one a line) into tasks, exactly once each."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from crew import config as configuration
from crew import console
from crew import suggestions
from crew import tasks
from crew import workspace
from crew.cli import base


EPILOG = """\
line format (description and files are optional; blank lines and # lines are skipped):
  [from:TASK-ID] Title -- description -- files: a.py, b/c.py
The [from:...] prefix, added by the dispatcher when it collects an agent's follow-ups, links the
new task to the one it came from (discovered-from). Files become file:<path> labels.

Every line is handled once: a suggestion already ingested (its hash is on a task, open or
closed) or whose title matches an open task is skipped with the reason. Lines that cannot be
used (not UTF-8, control characters, a bad path) are moved, byte for byte, to
suggested_tasks.rejected.txt. Writers may append to the file at any time, without a lock: the
file is renamed aside before it is read, never rewritten in place.

examples:
  py ingest_suggested_tasks.py                 ingest suggested_tasks.txt
  py ingest_suggested_tasks.py --dry-run       show what would be created
  py ingest_suggested_tasks.py --file ideas.txt --json
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest_suggested_tasks.py", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    base.add_common_options(parser)
    parser.add_argument("--file", metavar="PATH", help="read this file instead of suggested_tasks.txt")
    parser.add_argument("--dry-run", action="store_true", help="show what would be created; change nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = configuration.load_config(args.config)
    store = tasks.open_task_store(config)
    path = Path(args.file).resolve() if args.file else None
    workspace.exclude_toolkit_files(config)  # a dry run too takes the ingest lock, a file of the toolkit's
    result = suggestions.ingest(config, store, path, args.dry_run)

    if args.json:
        console.print_json(result.to_dict(args.dry_run))
        return 0
    for item in result.plan:
        console.show(f"would create: {item['title']}"
                     + (f"  files: {', '.join(item['files'])}" if item["files"] else ""))
    for task_id in result.created:
        print(f"created {task_id}")
    for skip in result.skipped:
        console.show(f"skipped: {skip['line'][:80]!r}: {skip['reason']}", file=sys.stderr)
    count = len(result.plan) if args.dry_run else len(result.created)
    print(f"{'would create' if args.dry_run else 'created'} {count} task(s), skipped {len(result.skipped)}")
    return 0
