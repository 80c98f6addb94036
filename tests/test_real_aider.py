"""The dispatcher with its default worker command, run by the real Aider (aider-chat 0.86.2).

Everything is real but the model: Aider, litellm, git, the dispatcher and its worktrees. The
model is the loopback double in fake_llm.py, answering what Aider really sends (Ollama's
/api/show and streamed /api/chat, or OpenAI's streamed /v1/chat/completions) with replies in
the "whole" edit format Aider asks an unknown model for: the file's name on a line, then its
whole new content in a fence. `scripts/install_aider.sh` installs Aider; DISPATCH_REAL_AIDER
names its executable (.ci/run sets it). Each Aider start takes about 4 s, so each provider has
one dispatcher run that covers several tasks.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from crew import config
from crew import tasks
from crew.report import events as event_log
from crew.report import model as report_model
from support.dispatching import dispatch, events, main_file
from support.fake_llm import FakeLLM
from support.repos import commit_file, git
from support.tools import require_real_tool

pytestmark = pytest.mark.real_tool
REAL_AIDER = os.environ.get("DISPATCH_REAL_AIDER", "")
MODEL = "qwen2.5-coder:7b"
BROWSERS = ("www-browser", "x-www-browser", "xdg-open", "sensible-browser")
COMMIT_SUBJECT = "Apply the requested edit"
CALC = "def add(a, b):\n    return a + b\n"
CALC_WITH_SUBTRACT = CALC + "\n\ndef subtract(a, b):\n    return a - b\n"
USAGE = "# Usage\n\nRun `calc.add(1, 2)`.\n"
SETTINGS = "[ui]\ntheme=plain\n"
RESOLVED = "[ui]\ntheme=dark\ncontrast=light\n"

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the stand-in browsers are POSIX scripts")


def whole(*files: tuple[str, str]) -> str:
    """A reply in Aider's "whole" edit format: each file's name on a line, then its whole content."""
    return "Here are the changes.\n\n" + "\n".join(f"{name}\n```\n{text}```\n" for name, text in files)


# What the model answers to each task (found by its title in the request), in the whole format.
EDITS = {
    "Add a subtract function": whole(("calc.py", CALC_WITH_SUBTRACT),
                                     ("followups.txt", "Add a multiply function -- files: calc.py\n")),
    "Write the usage guide": whole(("docs/usage.md", USAGE),
                                   ("followups.txt", "Add a FAQ -- files: docs/faq.md\n")),
    "Make the theme dark": whole(("settings.ini", "[ui]\ntheme=dark\n")),
    "Make the theme light": whole(("settings.ini", "[ui]\ntheme=light\n")),
}


def model(body: dict) -> str:
    """The scripted model: a one-line commit message when Aider asks for one; for a merge
    conflict task, the resolved file, but only if Aider sent the file with its markers."""
    system = body["messages"][0]["content"]
    request = "\n".join(str(m["content"]) for m in body["messages"][1:])
    if "commit message" in system:
        return COMMIT_SUBJECT
    if "Resolve merge conflict:" in request:
        return whole(("settings.ini", RESOLVED)) if "<<<<<<<" in request else "I see no conflict."
    for title, reply in EDITS.items():
        if f": {title}\n" in request:
            return reply
    return "I do not know this task."


@pytest.fixture
def crew(tmp_path, monkeypatch, repo):
    """The real Aider on PATH, stand-in browsers that record every call, a fresh HOME (so
    Aider's first-run questions really come), and the model double; yields (server, calls log)."""
    require_real_tool(bool(REAL_AIDER) and Path(REAL_AIDER).is_file(),
                      "DISPATCH_REAL_AIDER does not name an aider executable (scripts/install_aider.sh installs one)")
    bin_dir, calls = tmp_path / "browsers", tmp_path / "browser-calls.log"
    bin_dir.mkdir()
    for name in BROWSERS:
        browser = bin_dir / name
        browser.write_text(f'#!/bin/sh\necho "$0 $*" >> "{calls}"\n', encoding="utf-8")
        browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    home = tmp_path / "home"
    home.mkdir()
    path = os.pathsep.join([str(Path(REAL_AIDER).parent), str(bin_dir), os.environ["PATH"]])
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("BROWSER", str(bin_dir / "www-browser"))
    commit_file(repo, "calc.py", CALC)
    commit_file(repo, "settings.ini", SETTINGS)
    with FakeLLM(models=(MODEL,)) as server:
        server.answer = model
        yield server, calls


def run_crew(make_config, server: FakeLLM, titles: list[tuple[str, str, int]], **settings):
    """One dispatcher run, with the default worker command, over tasks (title, file, priority)."""
    cfg = make_config(task_backend="json", task_prefix="proj", llm_url=server.url, max_workers=2,
                      poll_interval_secs=0.2, worker_timeout_secs=120, worker_kill_grace_secs=2,
                      auto_ingest_suggestions=False, max_attempts=1, **settings)
    store = tasks.open_task_store(config.load_config(str(cfg)))
    ids = {title: store.create(title, "", priority=priority, labels=[f"file:{name}"]).id
           for title, name, priority in titles}
    proc = dispatch(cfg, timeout=600)
    return proc, store, ids


def assert_nothing_of_the_agents_on_main(repo: Path, calls: Path) -> None:
    on_main = git(repo, "ls-tree", "-r", "--name-only", "main").splitlines()
    assert not [name for name in on_main if Path(name).name.startswith(".aider")
                or Path(name).name in (".gitignore", ".current_task.txt", "followups.txt")], on_main
    assert not calls.exists(), calls.read_text(encoding="utf-8")  # no browser was opened
    assert (Path(os.environ["HOME"]) / ".aider" / "installs.json").exists()  # it was Aider's first run


def assert_written_by_aider(repo: Path, name: str) -> None:
    """Aider committed the file itself (first empty, as README says), not the dispatcher's
    leftover commit: it found the repository."""
    commits = git(repo, "log", "--reverse", "--format=%H %s", "main", "--", name).splitlines()
    assert [c.split(" ", 1)[1] for c in commits] == [COMMIT_SUBJECT, COMMIT_SUBJECT], commits
    assert git(repo, "show", f"{commits[0].split()[0]}:{name}") == ""


def test_real_aider_on_ollama_edits_creates_writes_followups_and_resolves_a_conflict(crew, make_config, repo):
    server, calls = crew
    # Two tasks on one file at once (overlap allowed): the second to merge conflicts.
    proc, store, ids = run_crew(make_config, server, [
        ("Make the theme dark", "settings.ini", 0), ("Make the theme light", "settings.ini", 0),
        ("Add a subtract function", "calc.py", 2), ("Write the usage guide", "docs/usage.md", 2)],
        avoid_file_overlap=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [conflict] = [t for t in store.list(None) if t.title.startswith("Resolve merge conflict:")]
    assert {t.id: t.status for t in store.list(None)} == {**{i: "closed" for i in ids.values()}, conflict.id: "closed"}
    assert events(repo, "merge_conflict")
    assert main_file(repo, "settings.ini") == RESOLVED  # resolved by Aider in the branch's worktree
    assert main_file(repo, "calc.py") == CALC_WITH_SUBTRACT
    assert main_file(repo, "docs/usage.md") == USAGE  # a new file in a new folder
    assert_written_by_aider(repo, "docs/usage.md")
    suggestions = (repo / "suggested_tasks.txt").read_text(encoding="utf-8")
    assert f"[from:{ids['Add a subtract function']}] Add a multiply function -- files: calc.py" in suggestions
    assert f"[from:{ids['Write the usage guide']}] Add a FAQ -- files: docs/faq.md" in suggestions
    assert_nothing_of_the_agents_on_main(repo, calls)
    chats = [r["body"] for r in server.requests if r["path"] == "/api/chat"]
    assert any(b.get("stream", True) for b in chats) and any(b.get("stream") is False for b in chats)
    assert any(r["path"] == "/api/show" for r in server.requests)
    # One context size for every request, the split's (llm_num_ctx): Ollama loads the model once.
    assert {b["options"]["num_ctx"] for b in chats} == {8192}


def test_real_aider_on_an_openai_server_edits_and_creates(crew, make_config, repo):
    server, calls = crew
    proc, store, ids = run_crew(make_config, server, [
        ("Add a subtract function", "calc.py", 2), ("Write the usage guide", "docs/usage.md", 2)], llm_api="openai")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {store.get(i).status for i in ids.values()} == {"closed"}
    assert main_file(repo, "calc.py") == CALC_WITH_SUBTRACT
    assert main_file(repo, "docs/usage.md") == USAGE
    assert_written_by_aider(repo, "docs/usage.md")
    assert "Add a FAQ" in (repo / "suggested_tasks.txt").read_text(encoding="utf-8")
    assert_nothing_of_the_agents_on_main(repo, calls)
    chats = [r["body"] for r in server.requests if r["path"] == "/v1/chat/completions"]
    assert any(b.get("stream") is True for b in chats) and any(not b.get("stream") for b in chats)
    # The run report reads the token counts that real Aider printed in each attempt's log.
    report = report_model.build_report(event_log.EventReader(repo / ".dispatch_logs" / "events.jsonl"),
                                       repo / ".dispatch_logs")
    assert all(report.tasks[i].tokens and report.tasks[i].tokens.sent > 0 for i in ids.values())


def test_real_aider_refusing_a_reply_with_the_path_inside_the_fence_tells_the_next_attempt_why(crew, make_config,
                                                                                                 repo):
    """A small model's mistake seen with Qwen2.5-Coder 1.5B: the file's path inside the fence.
    With two files in the chat Aider cannot guess the file: it applies nothing and exits 0. The
    scripted model gets it right once its message says what the whole format wants."""
    server, calls = crew
    inside = "Here is the code:\n\n```python\n# calc.py\n" + CALC_WITH_SUBTRACT + "```\n"

    def learning_model(body: dict) -> str:
        request = "\n".join(str(m["content"]) for m in body["messages"][1:])
        if "commit message" in body["messages"][0]["content"]:
            return COMMIT_SUBJECT
        return whole(("calc.py", CALC_WITH_SUBTRACT)) if "path alone on the line before the fence" in request \
            else inside

    server.answer = learning_model
    cfg = make_config(task_backend="json", task_prefix="proj", llm_url=server.url, max_workers=1,
                      poll_interval_secs=0.2, worker_timeout_secs=120, worker_kill_grace_secs=2,
                      auto_ingest_suggestions=False, max_attempts=2)
    store = tasks.open_task_store(config.load_config(str(cfg)))
    task = store.create("Add a subtract function", "", labels=["file:calc.py", "file:settings.ini"])
    proc = dispatch(cfg, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert store.get(task.id).status == "closed"
    assert main_file(repo, "calc.py") == CALC_WITH_SUBTRACT
    note = next(line for line in store.get(task.id).notes.splitlines() if "attempt 1 " in line)
    assert ("attempt 1 exited with no commits; your reply held a code block but no edit was applied: Aider's "
            "whole edit format wants the file's path alone on the line before the fence, not inside it") in note
    assert "(Aider said: No filename provided before ``` in file listing)" in note
    log = (repo / ".dispatch_logs" / f"{task.id}.1.log").read_text(encoding="utf-8")
    assert "Repo-map: using 1024 tokens" in log  # worker_map_tokens, not Aider's 4096
    assert_nothing_of_the_agents_on_main(repo, calls)


# The user's secret scanner, as a pre-commit hook: it refuses a commit whose staged changes hold it.
SECRET = "SECRET-MARKER-9c1e"
SECRET_SCANNER = f"""#!/bin/sh
if git diff --cached -U0 | grep -q '{SECRET}'; then
    echo "secret-scan: a staged change holds a secret; commit refused" >&2
    exit 1
fi
"""


def test_real_aider_commits_through_the_users_hooks_and_what_they_refuse_never_reaches_main(crew, make_config,
                                                                                              repo):
    server, calls = crew
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(SECRET_SCANNER, encoding="utf-8", newline="\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)

    def leaking_model(body: dict) -> str:
        if "commit message" in body["messages"][0]["content"]:
            return COMMIT_SUBJECT
        return whole(("calc.py", CALC + f"\nAPI_TOKEN = '{SECRET}'\n"))

    server.answer = leaking_model
    proc, store, ids = run_crew(make_config, server, [("Add the API token", "calc.py", 2)])
    assert "Traceback" not in proc.stderr, proc.stderr
    task = store.get(ids["Add the API token"])
    # Aider's commit ran the hook (--git-commit-verify) and was refused; so was the dispatcher's
    # commit of what Aider left: the secret is nowhere in the repository's history.
    assert SECRET not in git(repo, "log", "--all", "-p", "--format=%H %s")
    assert main_file(repo, "calc.py") == CALC
    assert [e["code"] for e in events(repo, "worker_exited")] == [0]  # Aider says nothing of it in its exit code
    refused = events(repo, "leftover_refused")
    assert [e["task_id"] for e in refused] == [task.id] and "secret-scan" in refused[0]["output"]
    assert task.status == "blocked" and "secret-scan: a staged change holds a secret" in task.notes
    assert_nothing_of_the_agents_on_main(repo, calls)
