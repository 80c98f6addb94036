"""Configuration: lookup, validation errors, computed defaults, the repository's exclude file."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crew import config as configuration
from crew import errors
from crew import names
from crew import workspace
from crew import tasks
from support.dispatching import AGENT_COMMAND
from support.repos import ROOT, git


@pytest.mark.parametrize("text, message", [
    ('{\n  "max_workers": 2,\n  "main_branch": "main"\n  "x": 1\n}', "invalid JSON at line 4, column 3"),
    ('{"max_worker": 3}', "unknown key 'max_worker' (did you mean 'max_workers'?)"),
    ('{"max_workers": "3"}', "'max_workers' must be a whole number, got \"3\""),
    ('{"worker_command": "aider --yes"}', "'worker_command' must be a list of strings or null"),
    ('{"avoid_file_overlap": 1}', "'avoid_file_overlap' must be true or false"),
    ('{"task_backend": "sqlite"}', "'task_backend' must be one of auto, bd, json"),
    ('{"review": "some"}', "'review' must be one of none, all, labelled, got 'some'"),
    ('{"worker_edit_format": "wholefile"}', "'worker_edit_format' must be one of whole, diff, diff-fenced, udiff, "
                                             "udiff-simple, patch, got 'wholefile'"),
    ('[1, 2]', "must be a JSON object"),
    ('{"max_workers": 0}', "'max_workers' must be more than 0, got 0"),
    ('{"poll_interval_secs": 0}', "'poll_interval_secs' must be more than 0, got 0"),
    ('{"max_attempts": 0}', "'max_attempts' must be more than 0, got 0"),
    ('{"merge_gate_parallelism": 0}', "'merge_gate_parallelism' must be more than 0, got 0"),
    ('{"worktree_setup_timeout_secs": 0}', "'worktree_setup_timeout_secs' must be more than 0, got 0"),
    ('{"merge_gate_timeout_secs": NaN}', "'merge_gate_timeout_secs' must be a finite number, got nan"),
    ('{"worker_timeout_secs": -1}', "'worker_timeout_secs' must not be negative, got -1"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, repo, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "tasks.py"), "--config", str(path), "list"],
                          cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.count("\n") == 1


def test_config_in_the_main_root_wins_over_the_shipped_one(repo):
    (repo / configuration.CONFIG_FILE_NAME).write_text(json.dumps({"max_workers": 7}), encoding="utf-8")
    sub = repo / "sub"
    sub.mkdir()
    config = configuration.load_config(None, cwd=sub)
    assert config.max_workers == 7 and config.root == repo


def test_files_live_in_the_main_root_even_from_a_worktree(repo, tmp_path):
    git(repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"))
    config = configuration.load_config(None, cwd=tmp_path / "wt")
    assert config.root == repo
    assert config.path("task_queue_file") == repo / "task_queue.json"
    assert config.task_prefix == "proj"
    assert config.worktree_root == repo.parent / "proj.worktrees"


def test_toolkit_files_are_excluded_without_touching_gitignore(repo):
    workspace.exclude_toolkit_files(configuration.load_config(None, cwd=repo))
    for name in ("task_queue.json", "suggested_tasks.txt", ".dispatch_state.json", ".dispatch_logs/events.jsonl",
                 ".dispatch.lock", ".dispatch_merge.lock", "task_queue.json.lock", "suggested_tasks.rejected.txt",
                 ".current_task.txt", ".aider.chat.history.md"):
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text("x", encoding="utf-8")
    assert git(repo, "status", "--porcelain") == ""
    assert not (repo / ".gitignore").exists()
    # followups.txt is written by agents and must NOT be ignored (Aider refuses ignored files).
    proc = subprocess.run(["git", "check-ignore", "-q", "followups.txt"], cwd=repo)
    assert proc.returncode == 1
    workspace.exclude_toolkit_files(configuration.load_config(None, cwd=repo))
    exclude = (repo / ".git/info/exclude").read_text(encoding="utf-8")
    assert exclude.count("/task_queue.json\n") == 1


def run_script(script: str, cfg, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / script), "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{script} {' '.join(args)}: {proc.stderr}"
    return proc


def test_reading_commands_write_nothing_to_the_repository(repo, make_config):
    cfg = make_config(task_backend="json")
    configuration.load_config(str(cfg))
    run_script("tasks.py", cfg, "list")
    run_script("dispatch_workers.py", cfg, "--status")
    run_script("dispatch_workers.py", cfg, "--dry-run")
    assert not (repo / ".git" / "info" / "exclude").exists()
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.mark.parametrize("command", ["split", "ingest", "tasks.py create", "dispatch", "report"])
def test_every_command_that_writes_keeps_git_status_clean(repo, make_config, fake_llm, command):
    """On a repository no command has written to yet (the demo's is checked in test_dispatch)."""
    cfg = make_config(task_backend="json", llm_url=fake_llm.url, worker_command=AGENT_COMMAND, poll_interval_secs=0.1)
    if command == "split":
        fake_llm.script(json.dumps({"subtasks": [{"title": f"Part {n}", "description": f"Write part {n}", "files": [f"part{n}.py"]}
                                                 for n in range(3)]}))
        run_script("split_task.py", cfg, "Add a dashboard")
    elif command == "ingest":
        (repo / "suggested_tasks.txt").write_text("Add a changelog -- files: CHANGELOG.md\n", encoding="utf-8")
        run_script("ingest_suggested_tasks.py", cfg)
    elif command == "tasks.py create":
        run_script("tasks.py", cfg, "create", "Add a changelog")
    elif command == "report":  # of a repository no dispatcher has run on: the page goes to .dispatch_logs/
        run_script("dispatch_workers.py", cfg, "--report")
    else:  # the store writes the task and leaves the exclude file alone: the run itself must add to it
        store = tasks.open_task_store(configuration.load_config(str(cfg)))
        store.create("Add a changelog", "AGENT: append CHANGELOG.md first release", labels=["file:CHANGELOG.md"])
        run_script("dispatch_workers.py", cfg)
        assert store.list(["closed"])
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.mark.parametrize("host, url", [
    ("", "http://127.0.0.1:11434"),
    ("0.0.0.0:11434", "http://127.0.0.1:11434"),
    ("0.0.0.0", "http://127.0.0.1:11434"),
    ("gpu-box:8080", "http://gpu-box:8080"),
    ("https://ollama.example", "https://ollama.example:11434"),
])
def test_llm_url_follows_ollama_host(monkeypatch, repo, host, url):
    monkeypatch.setenv("OLLAMA_HOST", host)
    assert configuration.load_config(None, cwd=repo).llm_url == url


def test_explicit_llm_url_wins(make_config, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "elsewhere:1")
    assert configuration.load_config(str(make_config(llm_url="http://127.0.0.1:5000/"))).llm_url == "http://127.0.0.1:5000"


def test_outside_a_repository_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tasks.py"), "list"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "is not inside a git repository" in proc.stderr


def test_shipped_config_is_valid_and_shows_the_defaults():
    shipped = json.loads((ROOT / configuration.CONFIG_FILE_NAME).read_text(encoding="utf-8"))
    defaults = configuration.Config()
    assert shipped == {k: getattr(defaults, k) for k in shipped}
    computed = {"repo_path", "task_prefix", "llm_url", "actor", "worker_model", "worktree_root"}
    assert set(shipped) == {f.name for f in configuration.CONFIG_KEYS} - computed


def test_readme_table_lists_every_key():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [f.name for f in configuration.CONFIG_KEYS if f"| `{f.name}` |" not in readme]
    assert missing == []


@pytest.mark.parametrize("raw, problem", [
    ("../etc/passwd", "leaves the repository"), ("/etc/passwd", "absolute"), ("C:/x.py", "absolute"),
    (".git/config", "inside .git"), ("--output=x", "begins with '-'"), ("a&b.py", "'&'"),
    ("a\nb.py", "'\\n'"), ('say"hi".py', "'\"'"), ("", "empty"),
])
def test_check_repo_path_refuses_unsafe_paths(raw, problem):
    with pytest.raises(errors.UserError) as err:
        names.check_repo_path(raw)
    assert problem in str(err.value)


def test_check_repo_path_normalizes():
    assert names.check_repo_path("./src\\app.py") == "src/app.py"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = next(line.strip() for line in readme.splitlines() if "-m pytest" in line)
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_a_lease_renewed_less_often_than_a_third_of_bds_lease_is_refused(make_config):
    assert configuration.load_config(str(make_config(lease_heartbeat_secs=100))).lease_heartbeat_secs == 100
    with pytest.raises(errors.UsageError, match=r"'lease_heartbeat_secs' must be at most 100 \(a third of bd's "
                                                r"5-minute lease on a claim\), got 101"):
        configuration.load_config(str(make_config(lease_heartbeat_secs=101)))


@pytest.mark.parametrize(("settings", "slot"), [
    ({}, True),
    ({"task_backend": "bd", "remote": "origin"}, False),
    ({"task_backend": "bd", "remote": "origin", "merge_slot": True}, True),
    ({"merge_slot": False}, False),
])
def test_the_merge_slot_is_on_for_one_machine_and_off_with_a_remote_unless_set(make_config, settings, slot):
    assert configuration.load_config(str(make_config(**settings))).merge_slot is slot
