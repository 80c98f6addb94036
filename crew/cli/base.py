"""What every command shares: the main wrapper, the common options, JSON output."""
from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from crew import config
from crew import errors
from crew import failpoints
from crew import files
from crew import names


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
        show(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def show(text: str, file: TextIO | None = None, multiline: bool = False, flush: bool = False) -> None:
    """Print a line that may hold text from agents, tasks or checks: the printing boundary, where
    what a terminal would act on (escape sequences, NUL, other control characters) is shown as
    escapes instead. multiline keeps newlines and tabs."""
    print(names.for_terminal(text, multiline), file=file, flush=flush)


def print_json(data: Any) -> None:
    print(files.json_text(data, indent=2))


def add_common_options(parser: argparse.ArgumentParser, subcommand: bool = False) -> None:
    """Options every script has; on a subcommand they may also follow its name."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if subcommand else {}
    parser.add_argument("--config", metavar="PATH", **default,
                        help=f"settings file (default: {config.CONFIG_FILE_NAME} in the repository's main "
                             "root, else the one beside the scripts)")
    parser.add_argument("--json", action="store_true", **default, help="print the result as JSON for scripts")
