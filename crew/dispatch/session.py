"""One run of the dispatcher on a repository: the lock that keeps a second one out, the
dispatcher's record, the signals that stop it, and the report written after it."""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import filelock

from crew import config as configuration
from crew import errors
from crew import files
from crew import orphans
from crew import processes
from crew import workspace
from crew.dispatch import notify
from crew.dispatch import preflight
from crew.dispatch import records
from crew.dispatch import state_store
from crew.dispatch.loop import Dispatcher
from crew.report import page
from crew.report.events import EventName
from crew.tasks import model as task_model


CONSOLE_CLOSE_HOLD_SECS = 4.5  # Windows ends a process about 5 s after its console is closed


def run_session(config: configuration.Settings, store: task_model.TaskStore, max_workers: int, watch: bool,
                say: Callable[[str], None]) -> tuple[dict[str, Any], bool]:
    """(the run's summary, with its report; whether it was interrupted). A stop by a second
    Ctrl-C or a signal leaves as KeyboardInterrupt or SystemExit(128 + the signal)."""
    workspace.exclude_toolkit_files(config)  # the toolkit's files stay out of `git status`
    preflight.preflight(config)
    lock = filelock.FileLock(str(config.root / ".dispatch.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        other = state_store.read_state(config).dispatcher
        raise errors.UserError(f"another dispatcher is running on this repository "
                               f"(pid {other.pid if other else '?'}, started {other.started_at if other else '?'}); "
                               "see --status") from None
    try:
        dispatcher = Dispatcher(config, store, max_workers, watch, say)
        with dispatcher.ledger.change():
            dispatcher.ledger.state.dispatcher = records.DispatcherRecord(
                pid=os.getpid(), started_at=files.now_iso(), pid_start_time=processes.process_start_time(os.getpid()))
        dispatcher.ledger.event(EventName.DISPATCHER_STARTED, pid=os.getpid(), max_workers=max_workers, watch=watch)
        handlers: dict[signal.Signals, Callable[[int, FrameType | None], None]] = {
            signal.SIGINT: dispatcher.interrupt, signal.SIGTERM: dispatcher.stop_signalled}
        if hasattr(signal, "SIGHUP"):  # POSIX only
            handlers[signal.SIGHUP] = dispatcher.stop_signalled
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
        state_saved = threading.Event()
        console_handler = hold_console_close(dispatcher, state_saved) if processes.IS_WINDOWS else None
        try:
            # Linux: a worker's daemon that leaves its process group comes back to us when its
            # parent exits, instead of going to init, and is ended with its worker.
            with orphans.subreaper():
                summary = dispatcher.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            with dispatcher.ledger.change():
                dispatcher.ledger.state.dispatcher = None
            interrupted = dispatcher.interrupts > 0 or dispatcher.stop_signal is not None
            dispatcher.ledger.event(EventName.DISPATCHER_STOPPED, interrupted=interrupted)
            state_saved.set()
            if console_handler is not None and sys.platform == "win32":  # the platform test: for the type checker
                ctypes.windll.kernel32.SetConsoleCtrlHandler(console_handler, False)
            report = write_report_after_run(config, say)
            dispatcher.ledger.notifier.close(notify.run_ended(dispatcher.ledger.summary, report, interrupted))
    finally:
        lock.release()
    summary["report"] = report
    return summary, dispatcher.interrupts > 0


def hold_console_close(dispatcher: Dispatcher, state_saved: threading.Event) -> object:
    """Windows: a closed console (or Ctrl-Break) ends the process the moment a console control
    handler returns, before Python's own SIGBREAK handler could run. This handler asks for a stop
    now (SIGBREAK), then holds the process until the workers are ended and the state is saved.
    Returns the handler, which must stay referenced while it is installed."""
    if sys.platform != "win32":  # called on Windows only; the test tells the type checker so
        raise NotImplementedError("a console control handler is Windows's")
    def on_console_event(event: int) -> bool:
        if event == 0:  # CTRL_C_EVENT: Python's own SIGINT handler takes it
            return False
        dispatcher.stop_signalled(signal.SIGBREAK, None)
        state_saved.wait(CONSOLE_CLOSE_HOLD_SECS)
        return True

    handler = ctypes.WINFUNCTYPE(ctypes.c_int, ctypes.c_uint)(on_console_event)
    ctypes.windll.kernel32.SetConsoleCtrlHandler(handler, True)
    return handler


def detach_output() -> None:
    """Send stdout and stderr to the null device: once the terminal is gone every write fails,
    and Python's own last flush would turn the exit code into 120."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def write_report_after_run(config: configuration.Settings, say: Callable[[str], None]) -> str | None:
    """The run's report; a report that cannot be written never fails the run it describes."""
    try:
        return str(page.write_report(config.root))
    except errors.UserError as exc:
        say(f"no report: {exc}")
        return None
