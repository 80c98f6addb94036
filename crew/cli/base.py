"""What every command shares: the main wrapper and the common options."""
from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from typing import Any

from crew import config
from crew import console
from crew import errors
from crew import failpoints


def run_main(main_func: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """The one wrapper around each script's main: user errors become one line on stderr."""
    failpoints.arm_from_environment()
    # Output redirected to a file on Windows is in the locale's code page, which lacks most of
    # Unicode: a character it cannot hold is printed as its escape, never a traceback.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        return main_func(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except errors.UserError as exc:
        console.show(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def add_common_options(parser: argparse.ArgumentParser, subcommand: bool = False) -> None:
    """Options every script has; on a subcommand they may also follow its name."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if subcommand else {}
    parser.add_argument("--config", metavar="PATH", **default,
                        help=f"settings file (default: {config.CONFIG_FILE_NAME} in the repository's main "
                             "root, else the one beside the scripts)")
    parser.add_argument("--json", action="store_true", **default, help="print the result as JSON for scripts")
