#!/usr/bin/env python3
"""List, show, create, close, reopen, block and annotate tasks in the configured task store (see crew/cli/tasks.py)."""
from crew.cli import base, tasks

if __name__ == "__main__":
    raise SystemExit(base.run_main(tasks.main))
