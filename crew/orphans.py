"""The processes that leave their tree: a worker's daemon that calls setsid (a new group, which
killpg misses) and whose parent exits. Each process the dispatcher starts for a worker or gate
carries a mark in its environment, which its descendants inherit and setsid keeps; on Linux the
dispatcher is a child subreaper, so such orphans become its children instead of init's, where
they are found by their mark and ended with their worker; on Windows each such process is in a
job object, which ends every process ever started in it."""
from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import psutil


MARK_VARIABLE = "DISPATCH_PROCESS_MARK"  # names the worker or gate a process was started for
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>

_spawned: weakref.WeakSet[subprocess.Popen[Any]] = weakref.WeakSet()
# Held while a process is started and registered, and while orphans are reaped: a child no Popen
# owns yet must never be reaped, or its Popen would read a failed command as exit 0.
_spawn_lock = threading.Lock()
_jobs: dict[int, int] = {}  # Windows: pid -> its job object's handle


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Linux, while the block runs (a dispatcher's run): orphans of our descendants are reparented
    to us, not to init. Elsewhere there is no such thing: a daemon is then found by its mark only
    while its parent lives. Set back after, for a process that goes on (a test's, a demo's)."""
    became = sys.platform.startswith("linux") and set_subreaper(True)
    try:
        yield
    finally:
        if became:
            set_subreaper(False)


def set_subreaper(on: bool) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    done: int = libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
    return done == 0


def spawn(argv: list[str], mark: str | None = None, **popen_args: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen, registered as ours (see reap_orphans); with a mark, in its environment,
    and on Windows in a job object of its own."""
    if mark is not None:
        popen_args["env"] = {**(popen_args.get("env") or os.environ), MARK_VARIABLE: mark}
    with _spawn_lock:
        proc = subprocess.Popen(argv, **popen_args)
        _spawned.add(proc)
    if mark is not None and os.name == "nt":
        _jobs[proc.pid] = windows_job_for(proc)
    return proc


def marked(mark: str, everywhere: bool = False) -> list[psutil.Process]:
    """The living processes that carry `mark`: among our descendants (orphans come back to the
    subreaper), or, after a restart (they went to init meanwhile), among all the user's processes."""
    candidates: Iterable[psutil.Process]
    if everywhere:
        candidates = psutil.process_iter()
    else:
        try:
            candidates = psutil.Process().children(recursive=True)
        except psutil.Error:
            return []
    found = []
    for proc in candidates:
        try:
            if proc.environ().get(MARK_VARIABLE) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue  # gone, or another user's
    return found


def eldest_with(procs: list[psutil.Process], variable: str, value: str) -> tuple[int, float] | None:
    """Of `procs`, the one started first whose environment sets `variable` to `value`, as (pid,
    start time): among what one command and its descendants left, that command while it runs."""
    found = []
    for proc in procs:
        try:
            if proc.environ().get(variable) == value:
                found.append((proc.create_time(), proc.pid))
        except psutil.Error:
            continue  # gone meanwhile
    if not found:
        return None
    started, pid = min(found)
    return pid, started


def signal_all(procs: list[psutil.Process], signum: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            proc.send_signal(signum)


def reap_orphans() -> None:
    """Collect the exit of every dead child that no Popen of ours owns: orphans the subreaper
    adopted, which would stay zombies. waitpid on those pids only, never waitpid(-1), which would
    take the exit status a Popen waits for."""
    if os.name == "nt":
        return
    with _spawn_lock:
        owned = {proc.pid for proc in _spawned if proc.returncode is None}
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for child in children:
            try:
                if child.pid not in owned and child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
            except (psutil.Error, ChildProcessError):
                continue


def windows_job_for(proc: subprocess.Popen[Any]) -> int:
    """Windows: a job object holding `proc`; every process it starts joins the job too."""
    # ctypes.windll and Popen._handle exist on Windows only, the one platform that calls this.
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined,unused-ignore]
    kernel32.CreateJobObjectW.restype = ctypes.c_void_p
    job: int = kernel32.CreateJobObjectW(None, None)
    handle = int(proc._handle)  # type: ignore[attr-defined,unused-ignore]
    kernel32.AssignProcessToJobObject(ctypes.c_void_p(job), ctypes.c_void_p(handle))
    return job


def end_windows_job(pid: int) -> None:
    """Windows: end every process in the job of the process `pid` was started as, if any."""
    if (job := _jobs.pop(pid, None)) is not None:
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined,unused-ignore]  # Windows only, as above
        kernel32.TerminateJobObject(ctypes.c_void_p(job), 1)
        kernel32.CloseHandle(ctypes.c_void_p(job))
