"""Several machines on one: one Dolt sql-server and one bare git remote on 127.0.0.1, and a clone
for each host, each with its own dispatch_config.json (its own actor, the remote, bd, the scripted
agent and a gate that logs what it gated). The same layout runs on the bd stand-in for fast tests:
every clone's `bd` then reads and writes one shared stand-in database (FAKE_BD_DB), as every
clone's real bd talks to the one server."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from crew import processes
from support.dispatching import AGENT_COMMAND
from support.dispatching import DISPATCH
from support.repos import commit_file
from support.repos import git
from support.tools import install_fake_bd


REAL_DOLT = os.environ.get("DISPATCH_REAL_DOLT") or shutil.which("dolt") or ""
HOST_NAMES = ("a", "b", "c")
PREFIX = "m"
SERVER_START_SECS = 60  # a cold Dolt on a loaded 2-core machine; it is up in about a second here
SERVER_STOP_GRACE_SECS = 10

# The gate: records the commit it was run on, with the host that ran it, then passes.
GATE_SCRIPT = """\
import subprocess, sys
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
with open(sys.argv[1], "a", encoding="utf-8") as log:
    log.write(f"{sys.argv[2]} {commit}\\n")
"""


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclasses.dataclass
class DoltServer:
    port: int
    data: Path  # the folder the server keeps its databases in
    log: Path


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


PORT_TRIES = 5
SERVER_READY = "Server ready. Accepting connections."  # said once it listens; a port in use ends it at once


def _serve(dolt: str, data: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
    """`dolt sql-server` on a free port, once it says it accepts connections. Another process (the
    server of a test run beside this one) may take the port free_port found before the server binds
    it: a server that found its port in use is started again on another. Up, it is known to be this
    server that listens there, not the other process."""
    for _ in range(PORT_TRIES):
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen([dolt, "sql-server", "--host", "127.0.0.1", "--port", str(port)], cwd=data,
                                    env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    **processes.NEW_GROUP)
        deadline = time.monotonic() + SERVER_START_SECS
        while proc.poll() is None and time.monotonic() < deadline:
            if SERVER_READY in log.read_text(encoding="utf-8", errors="replace") and _listening(port):
                return proc, port
            time.sleep(0.1)
        said = log.read_text(encoding="utf-8", errors="replace")
        if proc.poll() is not None and f"Port {port} already in use" in said:
            continue
        processes.kill_tree(proc.pid, SERVER_STOP_GRACE_SECS, proc)
        why = f"exited {proc.returncode}" if proc.returncode is not None else f"not up in {SERVER_START_SECS} s"
        raise RuntimeError(f"dolt sql-server {why}:\n{said}")
    raise RuntimeError(f"dolt sql-server found the port it was given in use {PORT_TRIES} times")


@contextlib.contextmanager
def dolt_server(folder: Path, dolt: str = REAL_DOLT) -> Iterator[DoltServer]:
    """One `dolt sql-server` on 127.0.0.1 and a free port, its data in folder/data, its identity in
    a HOME of its own; stopped (its whole process tree) at the end."""
    home, data = folder / "dolt-home", folder / "data"
    home.mkdir(parents=True)
    data.mkdir()
    env = {**os.environ, "HOME": str(home), "USERPROFILE": str(home)}
    for key, value in (("user.name", "dispatch tests"), ("user.email", "tests@example.com")):
        subprocess.run([dolt, "config", "--global", "--add", key, value], env=env, check=True, capture_output=True)
    log = folder / "dolt-server.log"
    proc, port = _serve(dolt, data, env, log)
    try:
        yield DoltServer(port, data, log)
    finally:
        processes.kill_tree(proc.pid, SERVER_STOP_GRACE_SECS, proc)


@dataclasses.dataclass
class Host:
    name: str  # "a"
    actor: str  # "host-a": its dispatcher's actor, and the claims it takes
    root: Path  # its clone
    config: Path  # its dispatch_config.json (beside the clone, not in it)

    def bd(self, *args: str, bd: str = "bd", check: bool = True) -> subprocess.CompletedProcess:
        """bd in this clone, as this host's actor."""
        return subprocess.run([bd, *args, "--actor", self.actor], cwd=self.root, capture_output=True, text=True,
                              check=check)


@dataclasses.dataclass
class Hosts:
    """The layout: the remote, the hosts, and what the gate logged (one line per gate: host, commit)."""

    remote: Path
    hosts: list[Host]
    gate_log: Path
    bd: str  # the bd command every clone runs
    env: dict[str, str]  # what a dispatcher or bd call of any host runs with

    def gated(self) -> list[tuple[str, str]]:
        if not self.gate_log.exists():
            return []
        return [tuple(line.split(" ", 1)) for line in self.gate_log.read_text(encoding="utf-8").splitlines()]


def make_hosts(folder: Path, bd: str, init_args: list[str], names=HOST_NAMES, env: dict[str, str] | None = None,
               **settings) -> Hosts:
    """A bare remote with main, clone A with bd initialised (`bd init` + init_args) and `.beads/`
    committed and pushed, the other clones made from the remote; a config for each host."""
    env = {**os.environ, **(env or {})}
    remote = folder / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True, capture_output=True)
    first = folder / names[0]
    first.mkdir()
    git(first, "init", "-q", "-b", "main")
    commit_file(first, "README.md", "# shared project\n", "initial commit")
    git(first, "remote", "add", "origin", str(remote))
    subprocess.run([bd, "init", "--prefix", PREFIX, *init_args], cwd=first, env=env, check=True, capture_output=True)
    git(first, "add", "--all")
    if git(first, "status", "--porcelain"):
        git(first, "commit", "-q", "-m", "bd init")
    git(first, "push", "-q", "-u", "origin", "main")
    for name in names[1:]:
        git(folder, "clone", "-q", "-b", "main", str(remote), name)
    gate_log = folder / "gated.log"
    (folder / "gate.py").write_text(GATE_SCRIPT, encoding="utf-8")
    hosts = []
    for name in names:
        host = Host(name, f"host-{name}", folder / name, folder / f"host-{name}.json")
        host.config.write_text(json.dumps({
            "repo_path": str(host.root), "actor": host.actor, "task_backend": "bd", "bd_command": bd,
            "remote": "origin", "worker_command": AGENT_COMMAND, "poll_interval_secs": 0.2,
            "worker_timeout_secs": 120, "worker_kill_grace_secs": 1, "max_workers": 2,
            "merge_gate_command": [sys.executable, str(folder / "gate.py"), str(gate_log), host.actor],
            **settings}), encoding="utf-8")
        hosts.append(host)
    return Hosts(remote, hosts, gate_log, bd, env)


def real_bd_init_args(server: DoltServer) -> list[str]:
    """bd in server mode, against the one server (the README's command)."""
    return ["--server", "--external", "--server-host", "127.0.0.1", "--server-port", str(server.port),
            "--skip-hooks", "--skip-agents", "--non-interactive", "--quiet"]


def fake_hosts(folder: Path, monkeypatch, **settings) -> Hosts:
    """The layout on the bd stand-in: on PATH as `bd`, every clone sharing one database."""
    install_fake_bd(folder / "bin")
    monkeypatch.setenv("PATH", str(folder / "bin") + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("FAKE_BD_DB", str(folder / "shared-bd.json"))
    return make_hosts(folder, "bd", [], **settings)


def remote_merges(hosts: Hosts) -> list[str]:
    """Subjects of the merge commits on the remote's main, oldest first."""
    return git(hosts.remote, "log", "--merges", "--first-parent", "--reverse", "--format=%s", "main").splitlines()


def tasks(hosts: Hosts) -> list[dict]:
    """Every task in the shared store, closed ones too, as bd lists them."""
    listed = hosts.hosts[0].bd("list", "--all", "--limit", "0", "--json", bd=hosts.bd)
    return list(json.loads(listed.stdout))


def start_host(host: Host, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The host's dispatcher, a process group of its own (as a machine's is), its output to a file
    beside the clone (a long run must not fill a pipe)."""
    out = open(host.root.parent / f"host-{host.name}.out", "ab")  # noqa: SIM115 (the child keeps it)
    with out:
        return subprocess.Popen([sys.executable, str(DISPATCH), "--config", str(host.config), *args],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, **processes.NEW_GROUP)


def output(host: Host) -> str:
    path = host.root.parent / f"host-{host.name}.out"
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def kill_host(proc: subprocess.Popen) -> None:
    """A machine dying: its dispatcher and every process under it (its workers and gates run in
    groups of their own) killed at once, nothing told first."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(tree, timeout=30)
    proc.wait(timeout=30)


STOP_SECS = 120  # a dispatcher told to stop lets its running workers and merges finish first


def stop_host(proc: subprocess.Popen) -> None:
    """Ctrl-C, as a person ends a dispatcher started with --watch; its tree killed if it has not
    ended in STOP_SECS (or at once on Windows, where no Ctrl-C reaches a process group of its own)."""
    if os.name != "nt" and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_SECS)
    if proc.poll() is None:
        processes.kill_tree(proc.pid, SERVER_STOP_GRACE_SECS, proc)


def slot_holder(hosts: Hosts) -> str | None:
    """Who holds bd's merge slot (None: nobody, or no slot made)."""
    checked = hosts.hosts[0].bd("merge-slot", "check", "--json", bd=hosts.bd, check=False)
    with contextlib.suppress(ValueError):
        return json.loads(checked.stdout).get("holder") or None
    return None
