"""The task store's server down mid-run (bd in server mode, its Dolt server unreachable): running
workers go on, their branches are kept, store calls wait and are tried again, the dispatcher says
what is wrong once and once when the store is back, and every task ends merged."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support import hosts
from support.dispatching import DISPATCH, add_task, events, has_commit, merges_of, start_dispatcher, wait_until
from crew.dispatch import store_thread

posix_only = pytest.mark.skipif(os.name == "nt", reason="the bd wrapper is a script run through its #! line")

# What bd 1.3.0 says, on stderr with exit 1, when its Dolt sql-server cannot be reached, and once
# its circuit breaker has tripped (5 failures), for the breaker's cooldown.
UNREACHABLE = ("Error: failed to open database: Dolt server unreachable at 127.0.0.1:3307: dial tcp "
               "127.0.0.1:3307: connect: connection refused\n\nThe Dolt server may not be running. Try:\n"
               "  bd dolt start\n")
BREAKER_OPEN = "Error: failed to open database: dolt circuit breaker is open: server appears down, failing fast " \
               "(cooldown 5s)\n"

# bd as the dispatcher runs it: the stand-in, but while the flag file exists, a server that is down
# (each call refused then counted in the file beside the flag).
DOWN_WHILE_FLAGGED = """#!{python}
import os, pathlib, sys
flag = pathlib.Path({flag!r})
if flag.exists():
    with open(str(flag) + ".refused", "a") as refused:
        refused.write(" ".join(sys.argv[1:3]) + "\\n")
    sys.stderr.write({message!r})
    sys.exit(1)
os.execv({stand_in!r}, [{stand_in!r}, *sys.argv[1:]])
"""


def bd_down_while(tmp_path: Path, flag: Path, message: str = UNREACHABLE) -> Path:
    """A bd_command that is the stand-in on PATH, unreachable while `flag` exists."""
    script = tmp_path / "bd-down"
    script.write_text(DOWN_WHILE_FLAGGED.format(python=sys.executable, flag=str(flag), message=message,
                                                stand_in=shutil.which("bd")), encoding="utf-8")
    script.chmod(0o755)
    return script


def refused(flag: Path) -> int:
    path = Path(str(flag) + ".refused")
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def test_an_outage_is_said_once_and_its_end_once_and_the_pause_grows_to_a_bound():
    outage = store_thread.Outage()
    assert outage.reached(10.0) is None  # reachable all along: nothing to say
    said, pauses = [], []
    for _ in range(12):  # each failed try, then the pause before the next
        said.append(outage.failed("Dolt server unreachable", 10.0))
        pauses.append(outage.pause())
    assert said[0] is not None and "cannot be reached" in said[0] and "Dolt server unreachable" in said[0]
    assert said[1:] == [None] * 11
    assert pauses == sorted(pauses) and pauses[0] < pauses[-1] == store_thread.OUTAGE_MAX_PAUSE_SECS
    back = outage.reached(40.0)
    assert back is not None and "reachable again" in back and "30 s" in back
    assert outage.reached(41.0) is None
    assert outage.failed("Dolt server unreachable", 50.0) is not None  # a new outage is said again
    assert outage.pause() == pauses[0]


def test_only_an_unreachable_server_is_waited_out():
    from crew import errors
    for message in (UNREACHABLE, BREAKER_OPEN):
        assert store_thread.unreachable(errors.BdError(["bd", "list"], 1, "", message, message.strip()))
    assert not store_thread.unreachable(errors.BdError(["bd", "close"], 1, "", "", "cannot close proj-1"))
    assert not store_thread.unreachable(ValueError("Dolt server unreachable"))


@posix_only
@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_the_server_down_mid_run_loses_nothing_and_is_said_once(agent_setup, repo, tmp_path):
    flag = tmp_path / "server-down"
    bd_command = bd_down_while(tmp_path, flag)
    cfg, _, store = agent_setup(bd_command=str(bd_command), lease_heartbeat_secs=0.5)
    tasks = [add_task(store, f"Task {n}", "sleep 2", f"append t{n}.txt line {n}", files=[f"t{n}.txt"])
             for n in range(3)]
    proc = start_dispatcher(cfg)
    try:
        wait_until(lambda: len(events(repo, "worker_started")) >= 2, proc, "two workers started")
        flag.write_text("down", encoding="utf-8")
        # The workers go on and finish while the store cannot be reached: their commits are kept.
        started = [e["task_id"] for e in events(repo, "worker_started")]
        wait_until(lambda: all(has_commit(repo, f"work/{task_id}") for task_id in started), proc,
                   "the workers' commits on their branches", timeout=120)
        # Store calls are tried again while it is down, and wait: nothing is lost meanwhile.
        before = refused(flag)
        wait_until(lambda: refused(flag) >= before + 3, proc, "store calls tried again while it is down", timeout=120)
        flag.unlink()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    assert out.count("the task store cannot be reached") == 1, out
    assert out.count("the task store is reachable again") == 1, out
    assert "Dolt server unreachable" in out
    for task in tasks:
        assert store.get(task.id).status == "closed"
        assert merges_of(repo, task.id) == 1


@pytest.mark.real_tool
def test_the_real_bd_losing_its_dolt_server_mid_run_loses_nothing(real_hosts):
    """The real bd in server mode, pointed at a port where no server listens while the workers run
    (the port file bd reads first: the same 'Dolt server unreachable' as a server that went down)."""
    layout = real_hosts(remote=None, lease_heartbeat_secs=1)
    host = layout.hosts[0]
    filed = [json.loads(host.bd("create", f"Task {n}", "-d", f"AGENT: sleep 2\nAGENT: append t{n}.txt line {n}",
                                "--json", bd=layout.bd).stdout)["id"] for n in range(3)]
    port_file = host.root / ".beads" / "dolt-server.port"
    serving = port_file.read_text(encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(DISPATCH), "--config", str(host.config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**layout.env, "PYTHONUNBUFFERED": "1"})
    said: list[str] = []  # its output as it comes
    reader = threading.Thread(target=lambda: said.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(events(host.root, "worker_started")) >= 2, proc, "two workers started", timeout=120)
        dead = str(hosts.free_port())
        started = [e["task_id"] for e in events(host.root, "worker_started")]

        def down_until_said() -> bool:
            # bd may write the port it opened back into the file after a call begun before this
            # one: the file is set again until the outage was said.
            port_file.write_text(dead, encoding="utf-8")
            return any("the task store cannot be reached" in line for line in said)
        wait_until(lambda: down_until_said() and all(has_commit(host.root, f"work/{t}") for t in started), proc,
                   "the outage said, and the workers' commits on their branches", timeout=120)
        port_file.write_text(serving, encoding="utf-8")
        proc.wait(timeout=300)  # its output is read by `reader` (its errors are few: the pipe holds them)
        reader.join(timeout=60)
        out, err = "".join(said), proc.stderr.read()
    finally:
        port_file.write_text(serving, encoding="utf-8")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    # bd writing its port back may end the outage early, and the test begins it again: each outage
    # is said once, and its end once.
    downs = out.count("the task store cannot be reached (failed to open database: Dolt server unreachable")
    assert downs == out.count("the task store is reachable again") >= 1, out
    for task_id in filed:
        assert json.loads(host.bd("show", task_id, "--json", bd=layout.bd).stdout)[0]["status"] == "closed"
        assert merges_of(host.root, task_id) == 1
