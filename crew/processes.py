"""Running commands (argument lists, never a shell) and starting and ending process trees."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from crew import errors
from crew import files


IS_WINDOWS = os.name == "nt"


@dataclasses.dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(*argv: str | os.PathLike, cwd: str | os.PathLike | None = None, check: bool = True,
        timeout: float | None = None, env: dict[str, str] | None = None,
        error: type[errors.CommandError] = errors.CommandError, input: str | None = None,
        tree: bool = False) -> Completed:
    """Run one command from an argument list (never a shell), capturing text output as UTF-8;
    `input`, if given, is its stdin (else it has none). tree: the command may start processes of
    its own (git runs the user's hooks), so it runs in a process group of its own, which a
    timeout, an interrupt or end_commands() ends whole."""
    args = [os.fspath(a) for a in argv]
    try:
        proc = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                errors="replace", env=env, **(NEW_GROUP if tree else {}))
    except FileNotFoundError:
        raise error(args, None, "", "", f"command not found: {args[0]}") from None
    with running(proc) if tree else contextlib.nullcontext():
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            end_command(proc, tree)
            raise error(args, None, "", "", f"timed out after {timeout:g} s") from None
        except BaseException:  # Ctrl-C: nothing of it is left running
            end_command(proc, tree)
            raise
    result = Completed(args, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise error(args, proc.returncode, stdout, stderr)
    return result


# POSIX: a session of its own; Windows: a process group of its own (what taskkill /T ends).
NEW_GROUP = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if IS_WINDOWS else {"start_new_session": True}
COMMAND_KILL_GRACE_SECS = 2  # git removes its lock files on SIGTERM at once; a hook gets this long
_commands: dict[int, tuple[subprocess.Popen, bool]] = {}  # pid -> (the command, being ended)
_commands_lock = threading.Lock()


@contextlib.contextmanager
def running(proc: subprocess.Popen):
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


def end_command(proc: subprocess.Popen, tree: bool) -> None:
    """A command given up on: its tree (or the process alone) ended, its pipes closed."""
    if tree:
        kill_tree(proc.pid, COMMAND_KILL_GRACE_SECS, proc)
    else:
        proc.kill()
    try:
        proc.communicate(timeout=COMMAND_KILL_GRACE_SECS)  # a process outside the tree may hold the pipes
    except subprocess.TimeoutExpired:
        proc.stdout.close()
        proc.stderr.close()
    proc.wait()


WAIT_STEP_SECS = 0.05  # a setup command or gate notices a stop within this


def start_process(argv: list[str], cwd: Path, env: dict, log_path: Path) -> subprocess.Popen:
    """Output goes to a file, not a pipe: it survives us, and no grandchild can hang us on it."""
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
    except OSError as exc:  # a full disk: one line, not a failed attempt of every task in turn
        raise files.write_error(log_path, exc) from None
    with log:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
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


KILL_STEP_SECS = 0.05  # how often kill_tree looks whether a tree has ended


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # already gone, or no longer ours


@dataclasses.dataclass
class TreeKill:
    """Ending a process tree without waiting for it: `begin` asks the tree to end and returns at
    once; `poll`, on later passes, sees whether it has, and kills what is left once the grace is
    over. The one path for timeouts, Ctrl-C and shutdown."""

    pid: int  # the process that leads the group (start_process starts each in its own)
    proc: subprocess.Popen | None  # our child, to reap, when we started it
    grace: float
    deadline: float  # monotonic: when what is left gets killed
    forced: bool = False

    @classmethod
    def begin(cls, pid: int, grace: float, proc: subprocess.Popen | None = None) -> TreeKill:
        if IS_WINDOWS:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True)
        else:
            signal_group(pid, signal.SIGTERM)
        return cls(pid, proc, grace, time.monotonic() + grace)

    def poll(self) -> bool:
        """True once no process of the tree is left (and our child is reaped)."""
        if self.proc is not None:
            self.proc.poll()  # reap our child: unreaped, it would keep its group alive
        if IS_WINDOWS:
            ended = self.proc is None or self.proc.returncode is not None
        else:
            ended = not group_alive(self.pid)
        if not ended:
            if not self.forced and time.monotonic() >= self.deadline:
                self.forced = True
                if IS_WINDOWS:
                    self.proc.kill()
                else:
                    signal_group(self.pid, signal.SIGKILL)
            return False
        if self.proc is not None:
            self.proc.wait()
        return True


def wait_for_kills(kills: Iterable[TreeKill]) -> None:
    """Wait until every tree has ended. Kills begun together end together: a stop of many
    workers takes about one grace in all, not one grace a worker."""
    pending = list(kills)
    while pending := [kill for kill in pending if not kill.poll()]:
        time.sleep(KILL_STEP_SECS)


def kill_tree(pid: int, grace: float, proc: subprocess.Popen | None = None) -> None:
    """End a process tree and wait until it has ended (at most about `grace`, then it is killed).
    Only where waiting is right: a thread of its own (a setup command), or the last act of a run."""
    wait_for_kills([TreeKill.begin(pid, grace, proc)])


def wait_or_end(proc: subprocess.Popen, timeout: float, stop, grace: float) -> str | None:
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
        kill_tree(proc.pid, grace, proc)
        return why
