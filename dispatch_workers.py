#!/usr/bin/env python3
"""Run ready tasks in parallel agent workers, each in its own git worktree, and merge their
branches (see crew/cli/dispatch.py)."""
from crew.cli import base, dispatch

if __name__ == "__main__":
    raise SystemExit(base.run_main(dispatch.main))
