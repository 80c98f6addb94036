"""Locks, atomic writes and the JSON state files."""
from __future__ import annotations

import contextlib
import copy
import datetime as dt
import errno
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Generic, TypeVar

import filelock

from crew import errors


LOCK_NOTICE_SECS = 2.0


@contextlib.contextmanager
def locked(path: Path, what: str, timeout: float = -1) -> Iterator[None]:
    """Hold a file lock; say so on stderr when another process keeps us waiting."""
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=LOCK_NOTICE_SECS if timeout < 0 or timeout > LOCK_NOTICE_SECS else timeout)
    except filelock.Timeout:
        if 0 <= timeout <= LOCK_NOTICE_SECS:
            raise
        print(f"waiting for the {what} lock ({path}), held by another process...", file=sys.stderr)
        lock.acquire(timeout=timeout if timeout < 0 else timeout - LOCK_NOTICE_SECS)
    try:
        yield
    finally:
        lock.release()


def temp_file_name(name: str, pid: int | str) -> str:
    """Where atomic_write_text writes `name` first (the same folder, so os.replace is atomic)."""
    path = PurePosixPath(name)
    return str(path.with_name(f".{path.name}.{pid}.tmp"))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a temp file beside `path`, then os.replace: readers see the old or the new file.
    A lone surrogate, which UTF-8 cannot hold, is written as its `\\ud83d` escape. Whatever
    fails, no temp file is left behind."""
    tmp = path.with_name(temp_file_name(path.name, os.getpid()))
    try:
        try:
            with open(tmp, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # a full disk, typically: the file itself was never touched
            raise write_error(path, exc) from None
        for attempt in range(20):
            try:
                os.replace(tmp, path)
                return
            except PermissionError:
                # Windows refuses while another process has the target open: it is brief.
                if attempt == 19:
                    raise
                time.sleep(0.05)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_text(path: Path, text: str) -> None:
    """Append to a log-like file (events, collected follow-ups) in one write, so concurrent
    appenders never interleave; a full disk is one line naming it, and no half line is left."""
    data = text.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        start = os.fstat(fd).st_size
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as exc:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size <= start + len(data):  # only our own part was written: take it back
                os.ftruncate(fd, start)
        raise write_error(path, exc) from None
    finally:
        os.close(fd)


# Kept as \u escapes in the JSON the toolkit writes: DEL and the C1 controls, which a terminal may
# act on, and lone surrogates (a hand-written "\ud83d"), which UTF-8 cannot encode. JSON escapes
# the C0 controls itself, and these characters can only occur inside its strings.
JSON_ESCAPED = re.compile(r"[\x7f-\x9f\ud800-\udfff]")


def json_text(data: Any, indent: int | None = None) -> str:
    """`data` as JSON, readable (not ASCII-escaped), safe to print and to write as UTF-8."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    return JSON_ESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def write_error(path: Path, exc: OSError) -> errors.UserError:
    return errors.UserError(f"cannot write {path}: {exc.strerror or exc}; the files written before are intact, "
                            "free some space and run again")


def read_json_file(path: Path, default: Any) -> Any:
    """A state file's content; a missing file is `default`, a corrupt one is an error naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except UnicodeDecodeError:
        raise errors.UserError(f"{path} is not UTF-8 text; fix or move it (it was left untouched)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.UserError(f"{path} is corrupt (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                               "fix or move it (it was left untouched)") from None


def iso_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_iso() -> str:
    return iso_time(time.time())


# What a state file reads as when it does not exist: an empty object, or None for a caller that
# tells a missing file from an empty one.
Default = TypeVar("Default", bound=dict[str, Any] | None)


class StateFile(Generic[Default]):
    """A JSON state file, always replaced atomically under its lock."""

    def __init__(self, path: Path, default: Default,
                 problem: Callable[[dict[str, Any]], str | None] = lambda data: None):
        self.path, self.default, self.problem = path, default, problem
        self.lock = path.with_name(path.name + ".lock")

    def read(self) -> dict[str, Any] | Default:
        """The file's content; one that is not what the dispatcher writes is an error naming what
        is wrong, and is never overwritten (it may hold the only record of running work)."""
        if not self.path.exists():  # no lock file left behind in a repository the toolkit never wrote to
            return copy.deepcopy(self.default)
        with locked(self.lock, self.path.name):
            data = read_json_file(self.path, None)
        if data is None:
            return copy.deepcopy(self.default)
        problem = self.problem(data) if isinstance(data, dict) else "it is not a JSON object"
        if problem:
            raise errors.UserError(f"{self.path}: {problem}; fix or move it (it was left untouched)")
        state: dict[str, Any] = data  # a JSON object, as checked
        return state

    def write(self, data: dict[str, Any]) -> None:
        with locked(self.lock, self.path.name):
            atomic_write_text(self.path, json_text(data, indent=2) + "\n")
