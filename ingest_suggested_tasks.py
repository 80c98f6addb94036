#!/usr/bin/env python3
"""Turn follow-up ideas in suggested_tasks.txt (one a line) into tasks, exactly once each (see crew/cli/ingest.py)."""
from crew.cli import base, ingest

if __name__ == "__main__":
    raise SystemExit(base.run_main(ingest.main))
