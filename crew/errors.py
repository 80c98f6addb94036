"""The two levels of error: UserError (one line, exit 1) and UsageError (exit 2), and the
failed-command errors that carry everything needed to report them."""
from __future__ import annotations

from collections.abc import Sequence


class UserError(Exception):
    """Something the user must fix: printed as one line, exit 1."""

    exit_code = 1


class UsageError(UserError):
    """Bad command line or bad configuration: exit 2."""

    exit_code = 2


class CommandError(UserError):
    """A command failed. Carries everything needed to report it."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str,
                 message: str | None = None):
        self.argv, self.returncode, self.stdout, self.stderr = list(argv), returncode, stdout, stderr
        if message is None:
            lines = (stderr.strip() or stdout.strip()).splitlines()
            message = lines[-1] if lines else "no output"
        super().__init__(f"`{' '.join(self.argv[:4])}{' ...' if len(self.argv) > 4 else ''}` "
                         f"failed{'' if returncode is None else f' (exit {returncode})'}: {message}")


class GitError(CommandError):
    pass


class CommitRefused(GitError):
    """The user's git hooks refused a commit; their output (stderr, stdout) says why."""


class TaskNotFound(UserError):
    """The store has no task with that id (it may have been deleted while something referred to it)."""


class BdError(CommandError):
    pass


class BdTaskNotFound(BdError, TaskNotFound):
    pass
