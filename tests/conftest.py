"""Fixtures: real git repositories, the task stores, and the three doubles (LLM, agent, bd)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's root, for crew

from crew import config as configuration  # noqa: E402
from crew import tasks  # noqa: E402
from crew import workspace  # noqa: E402
from support import hosts  # noqa: E402
from support import repos  # noqa: E402
from support.dispatching import AGENT_COMMAND  # noqa: E402
from support.tools import BACKENDS, REAL_BD, init_real_bd, install_fake_bd, require_real_tool  # noqa: E402


# No test may hang the suite: one that has not finished by then fails with its stack printed.
# The slowest today (the seeded chaos run) takes 1-3 minutes; a test may set its own limit.
TEST_TIMEOUT_SECS = 300


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_SECS))


@pytest.fixture(autouse=True, scope="session")
def isolated_environment(tmp_path_factory):
    """No developer setting may change results, and nothing may reach real state or a real LLM."""
    home = tmp_path_factory.mktemp("home")
    gitconfig = home / "gitconfig"
    gitconfig.write_text("[user]\n\tname = Test\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n"
                         "[advice]\n\tdetachedHead = false\n", encoding="utf-8")
    templates = home / "git-templates"
    templates.mkdir()
    saved = dict(os.environ)
    os.environ.update({
        "GIT_CONFIG_GLOBAL": str(gitconfig), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TEMPLATE_DIR": str(templates),
        "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
        # Port 9 refuses connections: a test that forgets to start the fake LLM fails fast.
        "OLLAMA_HOST": "127.0.0.1:9",
    })
    for name in ("BD_JSON_ENVELOPE", "BEADS_DIR", "BEADS_ACTOR", "DISPATCH_FAILPOINT", "OPENAI_API_KEY"):
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A real repository with one commit on main."""
    path = tmp_path / "proj"
    path.mkdir()
    repos.git(path, "init", "-q", "-b", "main")
    repos.commit_file(path, "README.md", "# proj\n", "initial commit")
    return path


@pytest.fixture
def make_config(tmp_path, repo):
    """Write a config file for `repo` with the given settings; returns its path."""
    def make(**settings) -> Path:
        path = tmp_path / "dispatch_config.json"
        path.write_text(json.dumps({"repo_path": str(repo), **settings}), encoding="utf-8")
        return path
    return make


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path, repo, monkeypatch):
    """Settings that select one task backend for `repo` (the stand-in and real bd go on PATH)."""
    if request.param == "json":
        return {"task_backend": "json", "task_prefix": "proj"}
    if request.param == "fake-bd":
        install_fake_bd(tmp_path / "bin")
        monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
        subprocess.run(["bd", "init", "--prefix", "proj"], cwd=repo, check=True)
        return {"task_backend": "bd"}
    init_real_bd(repo)
    return {"task_backend": "bd", "bd_command": REAL_BD}


@pytest.fixture
def config(make_config, backend) -> configuration.Config:
    config = configuration.load_config(str(make_config(**backend)))
    workspace.exclude_toolkit_files(config)  # as every command that writes does
    return config


@pytest.fixture
def store(config):
    return tasks.open_task_store(config)


@pytest.fixture
def fake_llm():
    """A loopback server speaking the real Ollama and OpenAI chat APIs, with scripted replies."""
    from support.fake_llm import FakeLLM
    with FakeLLM() as server:
        yield server


def _agent_setup(make_config, base: dict):
    """(config path, config, store) for a dispatcher run with the scripted agent."""
    def make(**settings):
        cfg = make_config(**{**base, "worker_command": AGENT_COMMAND, "poll_interval_secs": 0.1,
                             "worker_timeout_secs": 60, "worker_kill_grace_secs": 1, "max_workers": 2, **settings})
        config = configuration.load_config(str(cfg))
        workspace.exclude_toolkit_files(config)  # as the dispatcher does before a run
        return cfg, config, tasks.open_task_store(config)
    return make


@pytest.fixture
def agent_setup(make_config, backend):
    """A dispatcher run with the scripted agent, on each backend."""
    return _agent_setup(make_config, backend)


@pytest.fixture
def json_agent_setup(make_config):
    """The same on the JSON store only, for tests whose subject is not the store."""
    return _agent_setup(make_config, {"task_backend": "json", "task_prefix": "proj"})


@pytest.fixture
def dolt_server(tmp_path):
    """One real `dolt sql-server` on 127.0.0.1 (with the real bd to talk to it), stopped at the end."""
    require_real_tool(bool(REAL_BD), "real bd not built (scripts/install_bd.sh builds it; needs Go)")
    require_real_tool(bool(hosts.REAL_DOLT), "real dolt not built (scripts/install_dolt.sh builds it; needs Go)")
    with hosts.dolt_server(tmp_path / "dolt") as server:
        yield server


@pytest.fixture
def real_hosts(tmp_path, dolt_server):
    """Several hosts sharing the real bd on the one Dolt server: make(**config settings) -> Hosts."""
    def make(**settings) -> hosts.Hosts:
        return hosts.make_hosts(tmp_path, REAL_BD, hosts.real_bd_init_args(dolt_server), **settings)
    return make


@pytest.fixture
def fake_hosts(tmp_path, monkeypatch):
    """The same layout on the bd stand-in, every clone sharing one stand-in database."""
    def make(**settings) -> hosts.Hosts:
        return hosts.fake_hosts(tmp_path, monkeypatch, **settings)
    return make


@pytest.fixture
def remote(tmp_path, repo) -> Path:
    """A bare remote on disk holding `repo`'s main, added to `repo` as "origin"."""
    bare = tmp_path / "remote.git"
    repos.git(tmp_path, "init", "-q", "--bare", str(bare))
    repos.git(repo, "remote", "add", "origin", str(bare))
    repos.git(repo, "push", "-q", "origin", "main")
    return bare
