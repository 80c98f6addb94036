#!/usr/bin/env python3
"""A scripted coding agent for the demo and the tests: it acts on cues in its task message.

It stands in for Aider where no model can run, and behaves like Aider where the dispatcher
must cope with it (see docs/real-tools.md): it runs in the worktree with the message file
as an argument, commits each edit itself with a one-line message, refuses to edit files that
git ignores ("Skipping edits to PATH that matches gitignore spec"), writes
.aider.chat.history.md into the worktree root, and exits 0 even when it did nothing.

Cues are lines of the message, each `AGENT: <action> [arguments]`:
  AGENT: append PATH TEXT        append a line to PATH and commit
  AGENT: replace PATH OLD NEW    replace the line OLD with NEW in PATH and commit
  AGENT: uncommitted PATH TEXT   append a line to PATH and leave it uncommitted
  AGENT: followup TEXT           write a follow-up idea to followups.txt (uncommitted)
  AGENT: copy-message PATH       write the whole message to PATH and commit (verbatim tests)
  AGENT: print-message           print the whole message (its log shows what the attempt was told)
  AGENT: argv PATH               write this process's arguments, as JSON, to PATH and commit
  AGENT: resolve-conflicts       remove conflict markers, keeping both sides, and commit
  AGENT: sleep SECONDS           wait (a slow agent)
  AGENT: wait-for PATH           wait until PATH exists (a test lets the agent finish once it has seen
                                 what it waits for), at most WAIT_FOR_SECS
  AGENT: hang                    never finish (until the dispatcher ends it)
  AGENT: grandchild              run `sh -c 'sleep 60 & wait'` (a grandchild that holds on)
  AGENT: daemon PATH             leave a helper running that left the process group (setsid) and
                                 ignores SIGTERM (a test server), its pid written to PATH (POSIX)
  AGENT: crash                   exit 3 at once
  AGENT: say TEXT                print TEXT (e.g. Aider's "Tokens: 2.1k sent, 345 received.")
A message with no cue: a merge-conflict task (title "Resolve merge conflict: ...") gets its
conflicts resolved; any other task gets one line appended to AGENT_NOTES.md.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


WAIT_FOR_SECS = 600  # a bound, should the test that was to make the file have failed first


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_FOR_SECS
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, encoding="utf-8")


def is_ignored(path: str) -> bool:
    return git("check-ignore", "-q", path).returncode == 0


def edit(path: str, change, message: str, commit: bool = True) -> None:
    if is_ignored(path):
        print(f"Skipping edits to {path} that matches gitignore spec.")
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.read_text(encoding="utf-8") if target.exists() else ""
    target.write_text(change(old), encoding="utf-8", newline="\n")
    if commit:
        git("add", "--", path)
        result = git("commit", "-q", "-m", message, "--", path)
        print(result.stdout + result.stderr if result.returncode else f"Commit {message}")


# The helper: in a session of its own (setsid), deaf to SIGTERM, alive for two minutes.
DAEMON = ("import os, pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
          "pathlib.Path(sys.argv[1] + '.tmp').write_text(str(os.getpid())); "
          "os.replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(120)")


def start_daemon(pid_file: Path) -> None:
    """Start the helper and return once it runs (its pid is in `pid_file`)."""
    subprocess.Popen([sys.executable, "-c", DAEMON, str(pid_file)], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def resolve_conflicts() -> None:
    """Keep both sides of every conflict block, as a reviewer often does for additive edits."""
    files = [f for f in git("grep", "-l", "-e", "^<<<<<<< ").stdout.splitlines() if f]
    for name in files:
        text = Path(name).read_text(encoding="utf-8")
        kept = [line for line in text.splitlines(keepends=True)
                if not re.match(r"^(<<<<<<< |=======$|>>>>>>> )", line.rstrip("\n"))]
        Path(name).write_text("".join(kept), encoding="utf-8", newline="\n")
        git("add", "--", name)
    if files:
        git("commit", "-q", "-m", f"Resolve conflicts in {', '.join(files)}")


def main(argv: list[str]) -> int:
    message_file = Path(argv[0])
    message = message_file.read_text(encoding="utf-8")
    Path(".aider.chat.history.md").write_text(f"# chat\n{message}", encoding="utf-8")
    cues = [line.split("AGENT:", 1)[1].strip() for line in message.splitlines() if line.strip().startswith("AGENT:")]
    if not cues and "Resolve merge conflict:" in message.splitlines()[0]:
        cues = ["resolve-conflicts"]
    elif not cues:
        cues = ["append AGENT_NOTES.md " + os.environ.get("DISPATCH_TASK_ID", "a task") + " was here"]
    for cue in cues:
        action, _, rest = cue.partition(" ")
        if action == "append":
            path, _, text = rest.partition(" ")
            edit(path, lambda old: old + text + "\n", f"Add a line to {path}")
        elif action == "replace":
            path, old_line, new_line = rest.split(" ", 2)
            edit(path, lambda old: old.replace(old_line + "\n", new_line + "\n"), f"Change {path}")
        elif action == "uncommitted":
            path, _, text = rest.partition(" ")
            edit(path, lambda old: old + text + "\n", "", commit=False)
        elif action == "followup":
            edit("followups.txt", lambda old: old + rest + "\n", "", commit=False)
        elif action == "copy-message":
            edit(rest, lambda old: message, "Record the task message")
        elif action == "print-message":
            print(message, flush=True)
        elif action == "argv":
            edit(rest, lambda old: json.dumps(argv), "Record the arguments")
        elif action == "resolve-conflicts":
            resolve_conflicts()
        elif action == "sleep":
            time.sleep(float(rest))
        elif action == "wait-for":
            wait_for(Path(rest))
        elif action == "hang":
            while True:
                time.sleep(1)
        elif action == "grandchild":
            subprocess.run(["sh", "-c", "sleep 60 & wait"])
        elif action == "daemon":
            start_daemon(Path(rest))
        elif action == "crash":
            print("Traceback (most recent call last):\nRuntimeError: the agent crashed", file=sys.stderr)
            return 3
        elif action == "say":
            print(rest, flush=True)
    return 0  # like Aider: 0 whatever happened; the dispatcher judges from git


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
