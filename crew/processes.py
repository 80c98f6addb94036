"""Running commands (argument lists, never a shell) and starting and ending process trees."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil

from crew import errors
from crew import files
from crew import orphans


IS_WINDOWS = os.name == "nt"


@dataclasses.dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(*argv: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None, check: bool = True,
        timeout: float | None = None, env: dict[str, str] | None = None,
        error: type[errors.CommandError] = errors.CommandError, input: str | None = None,
        tree: bool = False) -> Completed:
    """Run one command from an argument list (never a shell), capturing text output as UTF-8;
    `input`, if given, is its stdin (else it has none). tree: the command may start processes of
    its own (git runs the user's hooks), so it runs in a process group of its own, which a
    timeout, an interrupt or end_commands() ends whole."""
    args = [os.fspath(a) for a in argv]
    proc, (stdout, stderr) = _started_and_waited(
        args, tree, timeout, error, lambda proc: proc.communicate(input, timeout=timeout), cwd=cwd,
        stdin=subprocess.DEVNULL if input is None else subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=env)
    result = Completed(args, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise error(args, proc.returncode, stdout, stderr)
    return result


def run_detached_output(*argv: str, cwd: str | os.PathLike[str], input: str, timeout: float, output_chars: int,
                        error: type[errors.CommandError] = errors.CommandError) -> Completed:
    """Run a command tree (as run(tree=True)) whose output may be unbounded and whose daemons may
    outlive it (a user's notifier): its stdin and output are temporary files, not pipes, so it is
    waited for itself, not for every process holding its pipes, and only the last `output_chars`
    of its output (stdout and stderr together, in `stdout`) are read."""
    args = [os.fspath(a) for a in argv]
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as output:
        stdin.write(input.encode("utf-8"))
        stdin.seek(0)
        proc, _ = _started_and_waited(args, True, timeout, error, lambda proc: proc.wait(timeout=timeout), cwd=cwd,
                                      stdin=stdin, stdout=output, stderr=subprocess.STDOUT)
        output.seek(max(0, output.seek(0, os.SEEK_END) - output_chars * 4))  # 4: UTF-8's longest character
        said = output.read().decode("utf-8", errors="replace")[-output_chars:]
    return Completed(args, proc.returncode, said, "")


Waited = TypeVar("Waited")


def _started_and_waited(args: list[str], tree: bool, timeout: float | None, error: type[errors.CommandError],
                        wait: Callable[[subprocess.Popen[Any]], Waited],
                        **popen_args: Any) -> tuple[subprocess.Popen[Any], Waited]:
    """Start a command (tree: in a process group of its own) and wait(proc) for it; past the
    timeout, or at Ctrl-C, it is ended whole. The process and what wait returned."""
    try:
        proc = orphans.spawn(args, **popen_args, **(NEW_GROUP if tree else {}))
    except FileNotFoundError:
        raise error(args, None, "", "", f"command not found: {args[0]}") from None
    with running(proc) if tree else contextlib.nullcontext():
        try:
            return proc, wait(proc)
        except subprocess.TimeoutExpired:
            end_command(proc, tree)
            raise error(args, None, "", "", f"timed out after {timeout:g} s") from None
        except BaseException:  # Ctrl-C: nothing of it is left running
            end_command(proc, tree)
            raise


# POSIX: a session of its own; Windows: a process group of its own (what taskkill /T ends).
NEW_GROUP: dict[str, Any]
if sys.platform == "win32":  # os.name == "nt", spelt so that mypy knows the platform's names
    NEW_GROUP = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
else:
    NEW_GROUP = {"start_new_session": True}
COMMAND_KILL_GRACE_SECS = 2  # git removes its lock files on SIGTERM at once; a hook gets this long
_commands: dict[int, tuple[subprocess.Popen[Any], bool]] = {}  # pid -> (the command, being ended)
_commands_lock = threading.Lock()


@contextlib.contextmanager
def running(proc: subprocess.Popen[Any]) -> Iterator[None]:
    """The command is listed while it runs, whichever thread waits for it, so a stop can end it."""
    with _commands_lock:
        _commands[proc.pid] = (proc, False)
    try:
        yield
    finally:
        with _commands_lock:
            _commands.pop(proc.pid, None)


def end_commands(grace: float = COMMAND_KILL_GRACE_SECS) -> list[TreeKill]:
    """Begin ending every command tree under way (run(tree=True), in any thread) that is not being
    ended already: at a stop, a user's hook in a git command must not hold the dispatcher up. The
    thread waiting for each command reaps it; the kills say when the trees are gone."""
    with _commands_lock:
        due = [proc for proc, ending in _commands.values() if not ending and proc.returncode is None]
        for proc in due:
            _commands[proc.pid] = (proc, True)
        return [TreeKill.begin(proc.pid, grace) for proc in due]


def end_command(proc: subprocess.Popen[Any], tree: bool) -> None:
    """A command given up on: its tree (or the process alone) ended, its pipes closed."""
    if tree:
        kill_tree(proc.pid, COMMAND_KILL_GRACE_SECS, proc)
    else:
        proc.kill()
    try:
        proc.communicate(timeout=COMMAND_KILL_GRACE_SECS)  # a process outside the tree may hold the pipes
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:  # None where the output went to a file (run_detached_output)
                pipe.close()
    proc.wait()


WAIT_STEP_SECS = 0.05  # a setup command or gate notices a stop within this


def start_process(argv: list[str], cwd: Path, env: dict[str, str], log_path: Path,
                  mark: str) -> subprocess.Popen[bytes]:
    """Output goes to a file, not a pipe: it survives us, and no grandchild can hang us on it.
    mark: the worker or gate it is for (orphans.MARK_VARIABLE), which every descendant inherits."""
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Opened apart from its `with` below, so that only the open's OSError reads as a full disk.
        log = open(log_path, "ab")  # noqa: SIM115
    except OSError as exc:  # a full disk: one line, not a failed attempt of every task in turn
        raise files.write_error(log_path, exc) from None
    with log:
        return orphans.spawn(argv, mark, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, **NEW_GROUP)


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_same_process_alive(pid: int | None, start_time: float | None) -> bool:
    """Alive AND the same process: a recycled pid belongs to someone else and is never signalled."""
    if not pid or start_time is None:
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - start_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def group_alive(pgid: int) -> bool:
    """Whether any living process remains in a process group (POSIX); zombies are dead already,
    however late their reaper (PID 1 in a container may be slow) collects them."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False  # the common case, answered without scanning every process
    except PermissionError:
        pass
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def in_group(pid: int, pgid: int) -> bool:
    try:
        return os.getpgid(pid) == pgid
    except ProcessLookupError:
        return False


def group_carries(pgid: int, mark: str) -> bool:
    """Whether a living process of group `pgid` carries `mark` (POSIX): the group is still the one
    recorded, though its leader has exited, and not a later group that reuses the number."""
    if IS_WINDOWS or not group_alive(pgid):
        return False
    return any(in_group(proc.pid, pgid) for proc in orphans.marked(mark, everywhere=True))


KILL_STEP_SECS = 0.05  # how often kill_tree looks whether a tree has ended


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone, or no longer ours
        os.killpg(pgid, signum)


@dataclasses.dataclass
class TreeKill:
    """Ending a process tree without waiting for it: `begin` asks the tree to end and returns at
    once; `poll`, on later passes, sees whether it has, and kills what is left once the grace is
    over. The one path for timeouts, Ctrl-C and shutdown. The tree is the process group `pid`
    leads and, given a mark, every process carrying it (orphans.py): daemons that left the group."""

    pid: int | None  # the group's leader (start_process starts each in its own); None: the marked only
    proc: subprocess.Popen[Any] | None  # our child, to reap, when we started it
    grace: float
    deadline: float  # monotonic: when what is left gets killed
    forced: bool = False
    mark: str | None = None
    everywhere: bool = False  # look for marked processes among all, not only our descendants

    @classmethod
    def begin(cls, pid: int | None, grace: float, proc: subprocess.Popen[Any] | None = None, mark: str | None = None,
              everywhere: bool = False) -> TreeKill:
        kill = cls(pid, proc, grace, time.monotonic() + grace, mark=mark, everywhere=everywhere)
        if IS_WINDOWS and pid is not None:
            orphans.end_windows_job(pid)
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        kill.signal(signal.SIGTERM)  # on Windows, psutil's SIGTERM is TerminateProcess
        return kill

    def signal(self, signum: int) -> None:
        if self.pid is not None and not IS_WINDOWS:
            signal_group(self.pid, signum)
        if self.mark is not None:  # those outside the group: each process hears the signal once
            orphans.signal_all([proc for proc in orphans.marked(self.mark, self.everywhere)
                                if self.pid is None or IS_WINDOWS or not in_group(proc.pid, self.pid)], signum)

    def left(self) -> bool:
        """Whether any process of the tree is left."""
        if IS_WINDOWS:
            ours = self.proc is not None and self.proc.returncode is None
        else:
            ours = self.pid is not None and group_alive(self.pid)
        return ours or (self.mark is not None and bool(orphans.marked(self.mark, self.everywhere)))

    def poll(self) -> bool:
        """True once no process of the tree is left (and our child is reaped)."""
        if self.proc is not None:
            self.proc.poll()  # reap our child: unreaped, it would keep its group alive
        if self.left():
            if not self.forced and time.monotonic() >= self.deadline:
                self.forced = True
                if IS_WINDOWS:
                    if self.proc is not None:
                        self.proc.kill()
                    self.signal(signal.SIGTERM)
                else:
                    self.signal(signal.SIGKILL)
            return False
        if self.proc is not None:
            self.proc.wait()
        orphans.reap_orphans()  # the tree's orphans that the subreaper adopted
        return True


def wait_for_kills(kills: Iterable[TreeKill], give_up_after: float | None = None) -> list[TreeKill]:
    """Wait until every tree has ended. Kills begun together end together: a stop of many
    workers takes about one grace in all, not one grace a worker. With give_up_after, wait no
    longer than that many seconds past the last grace (SIGKILL cannot end a process stuck in the
    kernel, or one not ours to signal); the kills whose trees are still left are returned."""
    pending = list(kills)
    last = max((kill.deadline for kill in pending), default=time.monotonic())
    while pending := [kill for kill in pending if not kill.poll()]:
        if give_up_after is not None and time.monotonic() >= last + give_up_after:
            return pending
        time.sleep(KILL_STEP_SECS)
    return []


def kill_tree(pid: int | None, grace: float, proc: subprocess.Popen[Any] | None = None, mark: str | None = None,
              everywhere: bool = False) -> None:
    """End a process tree and wait until it has ended (at most about `grace`, then it is killed).
    Only where waiting is right: a thread of its own (a setup command), or the last act of a run."""
    wait_for_kills([TreeKill.begin(pid, grace, proc, mark, everywhere)])


def wait_or_end(proc: subprocess.Popen[Any], timeout: float, stop: Callable[[], object], grace: float,
                mark: str) -> str | None:
    """Wait for a process started by start_process (a setup command, the gate); end its tree past
    `timeout`, or as soon as stop() is true (a second Ctrl-C). None if it exited by itself, else why not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.wait(timeout=WAIT_STEP_SECS)
            return None
        except subprocess.TimeoutExpired:
            pass
        if stop():
            why = "was stopped"
        elif time.monotonic() > deadline:
            why = f"timed out after {timeout:g} s"
        else:
            continue
        kill_tree(proc.pid, grace, proc, mark)
        return why
