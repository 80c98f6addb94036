#!/usr/bin/env python3
"""Split one high-level goal into 3-10 small, file-scoped subtasks with a local LLM (see crew/cli/split.py)."""
from crew.cli import base, split

if __name__ == "__main__":
    raise SystemExit(base.run_main(split.main))
