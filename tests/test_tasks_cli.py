"""tasks.py, as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys

from crew.cli import tasks as tasks_cli
from support.repos import ROOT


def test_full_cycle_through_the_cli(make_config, backend, capsys):
    cfg = str(make_config(**backend))
    assert tasks_cli.main(["--config", cfg, "create", 'Say "hi" $(rm -rf /)', "-d", "a\nb", "--file", "src/app.py",
                           "--json"]) == 0
    task = json.loads(capsys.readouterr().out)[0]
    assert task["title"] == 'Say "hi" $(rm -rf /)' and task["labels"] == ["file:src/app.py"]
    assert tasks_cli.main(["--config", cfg, "note", task["id"], "looked at it"]) == 0
    assert tasks_cli.main(["--config", cfg, "block", task["id"], "-r", "waiting on design"]) == 0
    capsys.readouterr()
    assert tasks_cli.main(["--config", cfg, "list", "--status", "blocked", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["status"] == "blocked" and "waiting on design" in listed["notes"]
    assert tasks_cli.main(["--config", cfg, "close", task["id"], "-r", "done"]) == 0
    capsys.readouterr()
    assert tasks_cli.main(["--config", cfg, "list"]) == 0
    assert "no tasks" in capsys.readouterr().out
    assert tasks_cli.main(["--config", cfg, "reopen", task["id"]]) == 0
    assert tasks_cli.main(["--config", cfg, "show", task["id"]]) == 0
    assert "status:" in capsys.readouterr().out


def test_bad_file_path_refused(make_config, capsys):
    cfg = str(make_config(task_backend="json"))
    proc = subprocess.run([sys.executable, str(ROOT / "tasks.py"), "--config", cfg, "create", "x", "--file",
                           "../../etc/passwd"], capture_output=True, text=True)
    assert proc.returncode == 1 and "leaves the repository" in proc.stderr


def test_help_and_bad_usage(make_config):
    proc = subprocess.run([sys.executable, str(ROOT / "tasks.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "examples:" in proc.stdout
    proc = subprocess.run([sys.executable, str(ROOT / "tasks.py"), "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
