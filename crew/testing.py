"""Test and demo scaffolding: the scripted agent, scratch repositories, failpoints.

Production code reaches this module only through crew.failpoints and the demo."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from crew import git


ROOT = Path(__file__).resolve().parent.parent

# The bundled scripted agent (it acts on "AGENT: ..." cues in its task), as a worker_command.
SCRIPTED_AGENT = [sys.executable, str(ROOT / "scripts" / "demo_agent.py"),
                  "{message_file}", "{files}"]


def scratch_repository(repo: Path, files: dict[str, str]) -> Path:
    """A new repository with one commit on main: for the demo, and for the scripts that measure
    and shake the dispatcher."""
    repo.mkdir(parents=True)
    for argv in (["init", "-q", "-b", "main"], ["config", "user.name", "Dispatch demo"],
                 ["config", "user.email", "demo@example.com"]):
        git.git(*argv, cwd=repo)
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text, encoding="utf-8")
    git.git("add", "-A", cwd=repo)
    git.git("commit", "-q", "--allow-empty", "-m", "Initial commit", cwd=repo)
    return repo


def make_repo(folder: Path, files: int = 1) -> Path:
    """A repository of `files` small files in folders of 1,000, plus a README."""
    contents = {f"d{i // 1000}/f{i}.txt": f"file {i}\n" for i in range(files)}
    return scratch_repository(folder / "repo", {**contents, "README.md": "bench\n"})


def arm_failpoint(spec: str, armed: dict[str, Callable[[], None]]) -> None:
    """Arm crew.failpoints for DISPATCH_FAILPOINT's value: "step", or "step:N" to exit (77, as if
    killed) the Nth time this process reaches the step."""
    name, _, nth = spec.partition(":")
    wanted, hits = int(nth or 1), 0

    def hit() -> None:
        nonlocal hits
        hits += 1
        if hits == wanted:
            os._exit(77)

    armed[name] = hit
