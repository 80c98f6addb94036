"""Several machines, one project: dispatchers in clones of one git remote sharing their tasks
through bd on one Dolt sql-server: on the real bd and the real dolt, and the layout on the bd
stand-in (every clone sharing one stand-in database) where a test's subject allows it."""
from __future__ import annotations

import json
import threading

import pytest


@pytest.fixture(params=["fake-bd", pytest.param("real-bd", marks=pytest.mark.real_tool)])
def any_hosts(request):
    """The hosts' layout on the stand-in and on the real bd and dolt: make(**settings) -> Hosts."""
    return request.getfixturevalue("fake_hosts" if request.param == "fake-bd" else "real_hosts")


def test_hosts_racing_for_the_same_tasks_claim_each_exactly_once(any_hosts):
    """What several dispatchers rest on: every clone's bd sees the tasks filed in another, and
    claims taken at once from several clones never hand one task to two of them."""
    layout = any_hosts()
    first = layout.hosts[0]
    filed = [json.loads(first.bd("create", f"task {n}", "--json", bd=layout.bd).stdout)["id"] for n in range(11)]
    for host in layout.hosts[1:]:
        seen = json.loads(host.bd("ready", "--limit", "0", "--json", bd=layout.bd).stdout)
        assert sorted(task["id"] for task in seen) == sorted(filed)

    won: dict[str, list[str]] = {host.actor: [] for host in layout.hosts}

    def race(host) -> None:  # each host tries every task, in its own order, as soon as it can
        for task_id in filed[::1 if host.name != "b" else -1]:
            if host.bd("update", task_id, "--claim", "--json", bd=layout.bd, check=False).returncode == 0:
                won[host.actor].append(task_id)

    racers = [threading.Thread(target=race, args=(host,)) for host in layout.hosts]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=300)
    claimed = [task_id for ids in won.values() for task_id in ids]
    assert sorted(claimed) == sorted(filed), won  # 11 claims, none twice
    owners = {task["id"]: task["assignee"] for task in json.loads(first.bd("list", "--json", bd=layout.bd).stdout)}
    assert owners == {task_id: actor for actor, ids in won.items() for task_id in ids}

