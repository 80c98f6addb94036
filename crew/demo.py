"""--demo: a scratch repository, a handful of tasks, the bundled scripted agent, the real dispatcher."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from crew import config as configuration
from crew import demo_kit
from crew import git
from crew import run_console
from crew import tasks as task_stores
from crew.dispatch import session
from crew.report import events
from crew.report import page
from crew.tasks import model as task_model


MAX_WORKERS = 2
# (title, the scripted agent's cues, files, priority)
DEMO_TASKS = [
    ("Make the UI red", "AGENT: sleep 1\nAGENT: replace settings.ini color=blue color=red\n"
                        "AGENT: say Tokens: 2.3k sent, 310 received.", [], 1),
    ("Make the UI green", "AGENT: sleep 2\nAGENT: replace settings.ini color=blue color=green\n"
                          "AGENT: say Tokens: 2.4k sent, 295 received.", [], 1),
    ("Add a greeting", "AGENT: sleep 1\nAGENT: append hello.txt Hello from the crew\n"
                       "AGENT: say Tokens: 1.9k sent, 120 received.", ["hello.txt"], 2),
    ("Add a farewell", "AGENT: sleep 1\nAGENT: append bye.txt Goodbye", ["bye.txt"], 2),
    ("Start a changelog", "AGENT: append CHANGELOG.md - first release\n"
                          "AGENT: followup Document the release process -- files: RELEASING.md",
     ["CHANGELOG.md"], 2),
]


def run_demo(as_json: bool) -> int:
    folder = Path(tempfile.mkdtemp(prefix="dispatch-demo-"))
    repo = demo_kit.scratch_repository(folder / "demo-repo", {"README.md": "# Demo project\n",
                                                              "settings.ini": "[ui]\ncolor=blue\n"})
    config_path = folder / "dispatch_config.json"
    config_path.write_text(json.dumps({
        "repo_path": str(repo), "task_backend": "json", "max_workers": MAX_WORKERS, "poll_interval_secs": 0.2,
        "worker_timeout_secs": 60, "worker_command": demo_kit.SCRIPTED_AGENT,
    }, indent=2), encoding="utf-8")
    config = configuration.load_config(str(config_path))
    store = task_stores.open_task_store(config)
    for title, description, files, priority in DEMO_TASKS:
        store.create(title, description, priority=priority, labels=[task_model.FILE_LABEL + f for f in files])
    print(f"Demo repository: {repo}\nTasks:")
    for task in store.list(None):
        print(f"  {task.id}  {task.title}")
    print(f"\nDispatching with {MAX_WORKERS} workers (the scripted agent: scripts/demo_agent.py)...\n")
    summary, interrupted = session.run_session(config, store, config.max_workers, False,
                                               run_console.progress_printer(as_json))
    run_console.print_summary(summary, as_json)
    print("\nTasks now:")
    for task in store.list(None):
        print(f"  {task.id}  {task.status:<8} {task.title}")
    print(f"\ngit log --graph --oneline ({repo}):")
    print(git.git_out(repo, "log", "--graph", "--oneline", config.main_branch))
    print(f"\nThe repository stays in {folder} for you to look at.")
    print(f"The run's report (open it in a browser): {config.root / events.LOGS_DIR / page.REPORT_FILE}")
    return run_console.exit_code(summary, interrupted)
