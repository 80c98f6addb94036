"""What the demo is made of: the bundled scripted agent and a scratch repository. The benches in
scripts/ build their runs from the same two."""
from __future__ import annotations

import sys
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
