"""Remote mode's merge queue: main moves on the remote only, by one atomic compare-and-swap push;
every host's ready entries merge from any host; the user's local main follows only where that
loses nothing. Hosts are clones of one bare remote on disk, sharing one bd stand-in database."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.dispatching import DISPATCH
from support.dispatching import add_task
from support.dispatching import events
from support.dispatching import start_dispatcher
from support.dispatching import wait_until
from support.hosts import fake_hosts
from support.repos import commit_file
from support.repos import git

from crew import config as configuration
from crew import git as crew_git
from crew import tasks
from crew import workspace
from crew.dispatch import branch_push
from crew.dispatch import remote_main
from crew.dispatch import shared_queue
from crew.dispatch import worktrees
from crew.dispatch.merge_results import Move
from crew.dispatch.remote_main import EntryFate
from crew.tasks.model import Task


# ---- decisions, without git ----------------------------------------------------------------

@pytest.mark.parametrize("fetched, expected, in_main, own, fate", [
    ("t1", "t1", False, False, EntryFate.MERGE),
    ("t1", "", False, False, EntryFate.UNMARKED),  # another host's with no tip marked: never merged as it is
    ("t1", "", False, True, EntryFate.MERGE),
    ("t2", "t1", False, True, EntryFate.NOT_YET),  # its owner is pushing another tip
    (None, "t1", False, True, EntryFate.NOT_YET),  # this host's push is under way
    (None, "t1", False, False, EntryFate.GONE),  # another host's, gone: its owner settles it
    (None, "t1", True, False, EntryFate.MERGED),  # merged by another host, the branch deleted with it
    ("t1", "t1", True, True, EntryFate.MERGED),
])
def test_an_entry_is_merged_only_at_the_tip_marked_ready_and_never_when_main_has_it(fetched, expected, in_main,
                                                                                     own, fate):
    assert remote_main.entry_fate(fetched, expected, in_main, own) is fate


def ready(task_id: str, assignee: str, branch: str = "", tip: str = "t", status: str = "in_progress") -> Task:
    return Task(task_id, task_id, status=status, assignee=assignee, labels=[branch_push.READY_LABEL],
                metadata={branch_push.BRANCH_KEY: branch or f"work/{task_id}", branch_push.TIP_KEY: tip})


def test_the_entries_of_other_hosts_join_under_their_owner_and_only_while_there_is_room():
    here = configuration.Settings(root=Path("proj"), actor="host-a")
    listed = [ready("p-1", "host-a"), ready("p-2", "host-b"), ready("p-3", "host-b", branch="-x"),
              ready("p-4", "host-b", status="open"), ready("p-5", ""), ready("p-6", "host-c"), ready("p-7", "host-c")]
    found = shared_queue.entries_to_add(listed, known={"p-6"}, config=here, room=5)
    assert [(s.task.id, s.owner, s.branch) for s in found] == [("p-2", "host-b", "work/p-2"),
                                                               ("p-7", "host-c", "work/p-7")]
    assert [s.task.id for s in shared_queue.entries_to_add(listed, set(), here, room=1)] == ["p-2"]


@pytest.mark.parametrize("branch", ["main", "wip-colleague", "work/p-9", "work/p-1-2", "crew/p-1", "work/p-1/x"])
def test_another_hosts_entry_naming_a_branch_not_its_tasks_own_never_joins(branch):
    here = configuration.Settings(root=Path("proj"), actor="host-a")
    assert shared_queue.entries_to_add([ready("p-1", "host-b", branch=branch)], set(), here, room=5) == []
    assert [s.branch for s in shared_queue.entries_to_add([ready("p-1", "host-b")], set(), here, room=5)] == \
        ["work/p-1"]


@pytest.mark.parametrize("template, task_id, name, own", [
    ("work/{task_id}", "p-1", "work/p-1", True),
    ("work/{task_id}", "p-1", "work/p-2", False),  # another task's
    ("work/{task_id}", "p-1", "wip", False),  # a user's
    ("work/{task_id}", "p-1", "main", False),
    ("{task_id}", "main", "main", False),  # main is never a task's branch, whatever the template makes
    ("crew/{task_id}-x", "a b", "crew/a-b-x", True),  # the name made safe, as branch_for makes it
    ("work/{task_id}", "a/.b", "work/a/.b", False),  # not a ref name: the template makes work/a/-b
    ("work/{task_id}", "x..y", "work/x..y", False),
])
def test_a_branch_named_in_the_store_is_the_tasks_own_only_when_its_template_makes_exactly_it(template, task_id,
                                                                                             name, own):
    config = configuration.Settings(root=Path("proj"), branch_template=template)
    assert worktrees.is_tasks_branch(config, task_id, name) is own


def test_an_entry_left_to_its_owner_is_not_added_again_until_its_tip_changes():
    listed = [ready("p-1", "host-b", tip="t1"), ready("p-2", "host-b", tip="t2")]
    left = {"p-1": "t1", "p-2": "t1"}  # p-2 was pushed again at a new tip since it was left
    here = configuration.Settings(root=Path("proj"), actor="host-a")
    assert [s.task.id for s in shared_queue.entries_to_add(listed, set(), here, 5, left)] == ["p-2"]


# ---- the git steps, on a bare remote --------------------------------------------------------

@pytest.fixture
def bare(tmp_path) -> Path:
    """A bare remote whose main has one commit."""
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = tmp_path / "seed"
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    commit_file(seed, "README.md", "# proj\n", "initial commit")
    git(seed, "push", "-q", str(bare), "main")
    return bare


def clone(remote: Path, path: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(remote), str(path)], check=True)
    git(path, "config", "user.email", "t@example.com")
    git(path, "config", "user.name", "T")
    return path


def branch_with(repo: Path, branch: str, name: str) -> str:
    git(repo, "checkout", "-q", "-b", branch, "origin/main")
    tip = commit_file(repo, name, f"{name}\n")
    git(repo, "checkout", "-q", "main")
    git(repo, "push", "-q", "origin", branch)
    return tip


def merge_commit(repo: Path, base: str, tip: str) -> str:
    tree = git(repo, "merge-tree", "--write-tree", base, tip).split()[0]
    return git(repo, "commit-tree", tree, "-p", base, "-p", tip, "-m", "merge").strip()


def test_a_push_moves_the_remotes_main_and_deletes_the_branch_at_once_or_is_rejected_when_main_moved(bare, tmp_path):
    remote = bare
    host_a, host_b = clone(remote, tmp_path / "a"), clone(remote, tmp_path / "b")
    tip_a, tip_b = branch_with(host_a, "crew/a", "a.txt"), branch_with(host_b, "crew/b", "b.txt")
    for host in (host_a, host_b):
        assert remote_main.fetch(host, "origin", "main", ["crew/a", "crew/b"]) is None
    base = git(host_a, "rev-parse", remote_main.fetched_ref("main")).strip()
    merged_a, merged_b = merge_commit(host_a, base, tip_a), merge_commit(host_b, base, tip_b)
    assert remote_main.push_merge(host_a, "origin", "main", "crew/a", base, tip_a, merged_a, 60).move is Move.DONE
    assert git(remote, "rev-parse", "main").strip() == merged_a
    assert not git(remote, "branch", "--list", "crew/a").strip()  # merged, so gone: nobody merges it twice
    # Host B merged onto the main it fetched: its push is rejected as a whole, its branch kept.
    assert remote_main.push_merge(host_b, "origin", "main", "crew/b", base, tip_b, merged_b, 60).move is Move.REJECTED
    assert git(remote, "rev-parse", "main").strip() == merged_a
    assert git(remote, "rev-parse", "crew/b").strip() == tip_b
    # Fetched again: the branch gone from the remote leaves no ref of ours; the other is read.
    assert remote_main.fetch(host_b, "origin", "main", ["crew/a", "crew/b"]) is None
    assert git(host_b, "rev-parse", remote_main.fetched_ref("main")).strip() == merged_a
    assert subprocess.run(["git", "rev-parse", "-q", "--verify", remote_main.fetched_ref("crew/a")], check=False,
                          cwd=host_b, capture_output=True).returncode != 0
    assert git(host_b, "rev-parse", remote_main.fetched_ref("crew/b")).strip() == tip_b
    assert git(host_b, "rev-parse", "refs/heads/main").strip() == base  # the user's own main is not touched


def test_a_fetch_from_a_remote_not_reached_says_so(tmp_path, bare):
    host = clone(bare, tmp_path / "a")
    failure = remote_main.fetch(host, str(tmp_path / "nowhere.git"), "main", [])
    assert failure is not None and not failure.missing


# ---- hosts: clones of one remote, dispatchers sharing one task database ----------------------

GATE = [sys.executable, "-c", "import time; time.sleep(0.3)"]
# The user's pre-push hook, which once (while its flag file exists), as the dispatcher pushes main,
# lets another host land first: it pushes a commit to the remote's main from a clone of its own.
MOVING_HOOK = r"""
import pathlib, subprocess, sys
flag, other = pathlib.Path(__file__).with_name("move-once"), pathlib.Path(__file__).with_name("other")
pushing_main = any(line.split()[2] == "refs/heads/main" for line in sys.stdin if len(line.split()) == 4)
if pushing_main and flag.exists():
    flag.unlink()
    clone = other.read_text().strip()
    subprocess.run(["git", "pull", "-q", "--ff-only", "origin", "main"], cwd=clone, check=True)
    pathlib.Path(clone, "elsewhere.txt").write_text("landed elsewhere\n")
    subprocess.run(["git", "add", "elsewhere.txt"], cwd=clone, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "landed by another host"], cwd=clone, check=True)
    subprocess.run(["git", "push", "-q", "origin", "main"], cwd=clone, check=True)
"""
# A gate that, while it runs, hands the task to another host (its claim reclaimed and taken).
RECLAIMING_GATE = r"""
import subprocess, sys, time
task_id, repo = sys.argv[1:3]
subprocess.run(["bd", "unclaim", task_id, "--force", "--actor", "host-c"], cwd=repo, check=True, capture_output=True)
subprocess.run(["bd", "update", task_id, "--claim", "--actor", "host-c"], cwd=repo, check=True, capture_output=True)
time.sleep(0.3)
"""
# A gate that first waits until `count` branches have joined the merge queue (or 240 s), then runs
# the gate given after it: the first gate still runs when the others join, however far apart the
# workers of a slow machine finish, so theirs are gated stacked on it.
GATE_ONCE_QUEUED = r"""
import json, pathlib, subprocess, sys, time
events, count, gate = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def queued():
    lines = events.read_text(encoding="utf-8").splitlines() if events.exists() else []
    return sum(1 for line in lines if line and json.loads(line)["event"] == "merge_queued")
deadline = time.monotonic() + 240
while queued() < count and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(subprocess.run(gate, check=False).returncode)
"""
# A gate that records when each host's gate starts and ends, in one file all hosts share.
SPAN_GATE = r"""
import pathlib, sys, time
record, host = pathlib.Path(sys.argv[1]), sys.argv[2]
with record.open("a") as out:
    out.write(f"start {host}\n")
time.sleep(0.5)
with record.open("a") as out:
    out.write(f"end {host}\n")
"""


@pytest.fixture
def hosts(tmp_path, monkeypatch):
    """Clones of one bare remote sharing one bd stand-in database (support/hosts.py); each host's
    config is given its own settings (merge_slot false unless asked: a test names what it measures)."""
    layout = fake_hosts(tmp_path, monkeypatch, names=("a", "b"), poll_interval_secs=0.1, merge_slot=False)

    def configure(name: str, **settings) -> tuple[Path, configuration.Settings, Path]:
        host = next(host for host in layout.hosts if host.name == name)
        written = json.loads(host.config.read_text(encoding="utf-8"))
        host.config.write_text(json.dumps({**written, **settings}), encoding="utf-8")
        config = configuration.load_config(str(host.config))
        workspace.exclude_toolkit_files(config)
        return host.config, config, host.root
    configure.remote = layout.remote
    return configure


def remote_merges(remote: Path) -> list[str]:
    """The task ids of the merges on the remote's main, oldest first."""
    subjects = git(remote, "log", "--first-parent", "--merges", "--reverse", "--format=%s", "main").splitlines()
    return [subject.rsplit("(", 1)[1].rstrip(")") for subject in subjects]


def finished(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{out}\n{err}"
    return out


def claimed_by_host_a(store, repo: Path, title: str, name: str):
    """Another host's work before it is ready: the task claimed by it (at once, so that no dispatcher
    running meanwhile claims it first) and its branch pushed."""
    task = store.create(title)
    assert store.claim(task.id, "host-a")
    branch = f"work/{task.id}"
    return task, branch, branch_with(repo, branch, name)


def marked_ready_by_host_a(store, task, branch: str, tip: str) -> None:
    assert store.update_claimed(task.id, "host-a", metadata={branch_push.BRANCH_KEY: branch,
                                                             branch_push.TIP_KEY: tip},
                                add_labels=[branch_push.READY_LABEL]) is not None


def pushed_by_host_a(store, repo: Path, title: str, name: str):
    """Another host's finished work, as it leaves it: its branch pushed, the task claimed by it and
    marked ready in the task store."""
    task, branch, tip = claimed_by_host_a(store, repo, title, name)
    marked_ready_by_host_a(store, task, branch, tip)
    return task, branch, tip


def test_another_hosts_ready_branch_is_merged_here_under_its_owners_claim_and_local_commits_stay(hosts,
                                                                                                tmp_path):
    remote = hosts.remote
    cfg, config, repo = hosts("b", merge_gate_command=GATE)
    store = tasks.open_task_store(config)
    host_a = clone(remote, tmp_path / "host-a-clone")
    task, branch, _ = pushed_by_host_a(store, host_a, "From A", "from-a.txt")
    local = commit_file(repo, "mine.txt", "mine\n", "my own commit, not pushed")
    proc = start_dispatcher(cfg, "--watch")
    wait_until(lambda: remote_merges(remote) == [task.id], proc, "A's branch on the remote's main")
    wait_until(lambda: events(repo, "local_main_kept"), proc, "the local main reported kept")
    proc.terminate()
    proc.communicate(timeout=120)
    assert git(repo, "rev-parse", "main").strip() == local  # the user's commit is left alone
    assert "mine.txt" not in git(remote, "ls-tree", "--name-only", "main")
    assert len(events(repo, "local_main_kept")) == 1
    assert not git(remote, "branch", "--list", branch).strip()
    closed = store.get(task.id)
    assert closed.status == "closed" and closed.assignee == "host-a"


def merged_by_host_a(store, remote: Path, tmp_path: Path, branch_deleted: bool = False) -> Task:
    """Host A's entry, merged by host A onto the remote's main, its task not closed yet; its branch
    deleted in the same push, as a merge on the remote does, or not yet."""
    host_a = clone(remote, tmp_path / "host-a-clone")
    task, branch, tip = pushed_by_host_a(store, host_a, "From A", "from-a.txt")
    git(host_a, "merge", "-q", "--no-ff", "-m", f"Merge {branch}: From A ({task.id})", tip)
    git(host_a, "push", "-q", "--atomic", "origin", "main", *([f":{branch}"] if branch_deleted else []))
    return task


def test_a_branch_another_host_already_merged_is_not_merged_twice(hosts, tmp_path):
    remote = hosts.remote
    cfg, config, repo = hosts("b", merge_gate_command=GATE)
    store = tasks.open_task_store(config)
    task = merged_by_host_a(store, remote, tmp_path)  # its branch is still there
    proc = start_dispatcher(cfg, "--watch")
    wait_until(lambda: events(repo, "merged_elsewhere"), proc, "the branch found merged elsewhere")
    proc.terminate()
    proc.communicate(timeout=120)
    assert remote_merges(remote) == [task.id]
    assert not events(repo, "merged")


def test_a_task_reclaimed_by_someone_else_while_its_branch_is_gated_is_never_merged(hosts, tmp_path):
    remote = hosts.remote
    _, config, repo = hosts("b")
    store = tasks.open_task_store(config)
    host_a = clone(remote, tmp_path / "host-a-clone")
    task, branch, tip = pushed_by_host_a(store, host_a, "From A", "from-a.txt")
    cfg, _, _ = hosts("b", merge_gate_command=[sys.executable, "-c", RECLAIMING_GATE, task.id, str(repo)])
    proc = start_dispatcher(cfg, "--watch")
    wait_until(lambda: events(repo, "stale_branch"), proc, "the branch found stale")
    proc.terminate()
    proc.communicate(timeout=120)
    assert remote_merges(remote) == []
    assert git(remote, "rev-parse", branch).strip() == tip  # the branch is kept on the remote
    assert store.get(task.id).assignee == "host-c"


def test_two_hosts_land_each_branch_on_the_remotes_main_exactly_once(hosts):
    remote = hosts.remote
    cfg_a, config_a, _ = hosts("a", merge_gate_command=GATE)
    cfg_b, _, _ = hosts("b", merge_gate_command=GATE)
    store = tasks.open_task_store(config_a)
    made = [add_task(store, f"T{i}", f"append t{i}.txt line {i}", files=[f"t{i}.txt"]) for i in range(4)]
    procs = [start_dispatcher(cfg_a), start_dispatcher(cfg_b)]
    for proc in procs:
        finished(proc)
    assert sorted(remote_merges(remote)) == sorted(task.id for task in made)
    assert {task.status for task in store.list()} == {"closed"}
    assert subprocess.run(["git", "fsck", "--strict"], cwd=remote, capture_output=True, check=False).returncode == 0


def test_a_push_rejected_because_another_host_moved_main_is_merged_and_gated_again_and_lands(hosts, tmp_path):
    remote = hosts.remote
    other = clone(remote, tmp_path / "other")
    cfg, config, repo = hosts("a", merge_gate_command=GATE)
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "move_main.py").write_text(MOVING_HOOK, encoding="utf-8")
    python = Path(sys.executable).as_posix()
    (hooks / "pre-push").write_text(f'#!/bin/sh\nexec "{python}" "$(dirname "$0")/move_main.py"\n', encoding="utf-8")
    (hooks / "pre-push").chmod(0o755)
    (hooks / "other").write_text(str(other))
    (hooks / "move-once").write_text("")
    store = tasks.open_task_store(config)
    task = add_task(store, "One", "append one.txt line", files=["one.txt"])
    finished(start_dispatcher(cfg))
    under = events(repo, "main_moved_under")
    assert len(under) == 1 and under[0]["task_id"] == task.id and under[0]["gate_secs"] > 0
    assert remote_merges(remote) == [task.id]
    assert "landed by another host" in git(remote, "log", "--format=%s", "main")
    # Gated again on the main the other host made: the merge landed on it, and the user's main followed.
    assert git(remote, "rev-parse", "main^1").strip() == git(other, "rev-parse", "HEAD").strip()
    assert git(repo, "rev-parse", "main").strip() == git(remote, "rev-parse", "main").strip()
    assert store.get(task.id).status == "closed"


def test_the_merge_slot_serializes_the_merges_of_every_host(hosts, tmp_path):
    remote = hosts.remote
    record = tmp_path / "spans.txt"
    cfg_a, config_a, repo_a = hosts("a", merge_gate_command=[sys.executable, "-c", SPAN_GATE, str(record), "a"],
                                    merge_slot=True)
    cfg_b, _, repo_b = hosts("b", merge_gate_command=[sys.executable, "-c", SPAN_GATE, str(record), "b"],
                             merge_slot=True)
    store = tasks.open_task_store(config_a)
    subprocess.run(["bd", "merge-slot", "create"], cwd=config_a.root, check=True, capture_output=True)
    # Each task's agent finishes once both hosts have started one: a host holds at most three (two
    # workers and one on deck), so neither takes all four, however much later the other starts.
    go = tmp_path / "both-hosts-working"
    made = [add_task(store, f"T{i}", f"wait-for {go}", f"append t{i}.txt line {i}", files=[f"t{i}.txt"])
            for i in range(4)]
    procs = [start_dispatcher(cfg_a), start_dispatcher(cfg_b)]
    wait_until(lambda: events(repo_a, "worker_started") and events(repo_b, "worker_started"), None,
               "a worker started on each host", timeout=180)
    go.write_text("go", encoding="utf-8")
    for proc in procs:
        finished(proc)
    assert sorted(remote_merges(remote)) == sorted(task.id for task in made)
    spans = record.read_text(encoding="utf-8").split("\n")[:-1]
    assert {line.split()[1] for line in spans} == {"a", "b"}  # both hosts gated
    for n in range(0, len(spans), 2):  # never two gates at once: each start is followed by its own end
        assert spans[n].split()[0] == "start" and spans[n + 1] == spans[n].replace("start", "end")
    assert not events(repo_a, "main_moved_under") and not events(repo_b, "main_moved_under")
    assert store.merge_slot_holder() is None


def test_speculative_gates_land_each_entry_on_the_remotes_main_as_gated(hosts, tmp_path):
    remote = hosts.remote
    record = tmp_path / "gates.jsonl"
    from test_parallel_gates import recording_gate
    from test_parallel_gates import seen_by_gates
    _, _, repo = hosts("a")
    cfg, config, _ = hosts("a", max_workers=3, merge_gate_parallelism=2, merge_gate_command=[
        sys.executable, "-c", GATE_ONCE_QUEUED, str(repo / ".dispatch_logs" / "events.jsonl"), "3",
        *recording_gate(record, wait=1.0)])
    store = tasks.open_task_store(config)
    made = [add_task(store, f"G{i}", f"sleep {0.2 * i:.1f}", f"append g{i}.txt line {i}", files=[f"g{i}.txt"])
            for i in range(3)]
    finished(start_dispatcher(cfg))
    assert sorted(remote_merges(remote)) == sorted(task.id for task in made)
    heads = {seen["head"]: seen for seen in seen_by_gates(record)}
    landed = git(remote, "log", "--first-parent", "--merges", "--reverse", "--format=%H", "main").split()
    for n, commit in enumerate(landed):
        assert commit in heads, f"merge {n + 1} on the remote's main was never gated as it is"
        assert heads[commit]["merges"] == remote_merges(remote)[:n + 1]
    assert any(len(events(repo, "gate_started")) > 0 and event["stack"] for event in events(repo, "gate_started"))


def test_a_restarted_host_leaves_alone_the_claims_of_the_host_whose_branch_it_had_queued(hosts, tmp_path):
    remote = hosts.remote
    cfg, config, repo = hosts("b", merge_gate_command=[sys.executable, "-c", "import time; time.sleep(60)"])
    store = tasks.open_task_store(config)
    queued, _, _ = pushed_by_host_a(store, clone(remote, tmp_path / "host-a-clone"), "From A", "from-a.txt")
    running = store.create("Running on host A")
    assert store.claim(running.id, "host-a")
    for run in (1, 2):  # the second run reconciles the state the first left, with A's entry in its queue
        proc = start_dispatcher(cfg, "--watch")
        wait_until(lambda run=run: len(events(repo, "gate_started")) == run, proc, f"gate {run} on A's branch")
        proc.terminate()
        proc.communicate(timeout=120)
    assert not events(repo, "earlier_actor")
    for task in (queued, running):
        held = store.get(task.id)
        assert (held.status, held.assignee) == ("in_progress", "host-a")
    assert remote_merges(remote) == []


def test_another_hosts_claim_is_never_renewed_here_while_its_branch_waits_in_this_queue(hosts, tmp_path):
    remote = hosts.remote
    cfg, config, repo = hosts("b", lease_heartbeat_secs=0.2, merge_gate_command=[
        sys.executable, "-c", "import time; time.sleep(60)"])
    store = tasks.open_task_store(config)
    task, _, _ = pushed_by_host_a(store, clone(remote, tmp_path / "host-a-clone"), "From A", "from-a.txt")
    renewed_by_a = store.get(task.id).heartbeat_at
    own = add_task(store, "B's own", f"wait-for {tmp_path / 'never'}")  # a claim of B's, which B renews
    proc = start_dispatcher(cfg, "--watch")
    wait_until(lambda: events(repo, "gate_started"), proc, "the gate on A's branch")
    # B's renewals of its own claim seen since: A's would have come with them. bd shows times to the
    # second, so more than three kinds span seconds past A's own renewal.
    renewals = set()

    def renewed_three_times() -> bool:
        renewals.add(store.get(own.id).heartbeat_at)
        return len(renewals - {None}) > 3
    wait_until(renewed_three_times, proc, "B renewing its own claim while A's branch is gated")
    proc.terminate()
    proc.communicate(timeout=120)
    assert store.get(task.id).heartbeat_at == renewed_by_a


def test_another_hosts_entry_names_no_folder_outside_the_worktree_root(tmp_path):
    config = configuration.Settings(root=tmp_path / "proj", worktree_root=tmp_path / "proj.worktrees")
    shared = shared_queue.Shared(ready("../../../home", "host-b"), "host-b", "crew/x")
    request = shared_queue.request_for(config, shared)
    assert request.worktree.parent == config.worktree_root / shared_queue.ELSEWHERE
    assert shared_queue.is_elsewhere(request) and request.actor == "host-b"


def test_a_branch_whose_push_is_slow_waits_for_it_and_lands_before_the_run_ends(hosts):
    remote = hosts.remote
    cfg, config, repo = hosts("a", merge_gate_command=GATE)
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    # The user's pre-push hook takes a while for a branch: the queue looks at the remote before it is there.
    (hooks / "pre-push").write_text('#!/bin/sh\ngrep -q " refs/heads/main " || sleep 2\n', encoding="utf-8")
    (hooks / "pre-push").chmod(0o755)
    store = tasks.open_task_store(config)
    task = add_task(store, "One", "append one.txt line", files=["one.txt"])
    finished(start_dispatcher(cfg))
    assert remote_merges(remote) == [task.id]
    assert store.get(task.id).status == "closed"


def clashing_entry_of_host_a(store, remote: Path, tmp_path: Path, name: str):
    """Host A's ready entry whose branch conflicts with the remote's main as it is now."""
    host_a = clone(remote, tmp_path / name)
    task, branch, tip = pushed_by_host_a(store, host_a, "Clashes", "clash.txt")
    git(host_a, "checkout", "-q", "main")
    commit_file(host_a, "clash.txt", "main's own\n", "main's clash.txt")
    git(host_a, "push", "-q", "origin", "main")
    return task, branch, tip


def test_another_hosts_entry_that_conflicts_here_is_left_to_its_owner_once_at_its_tip(hosts, tmp_path):
    remote = hosts.remote
    cfg, config, repo = hosts("b")
    store = tasks.open_task_store(config)
    clash, _, _ = clashing_entry_of_host_a(store, remote, tmp_path, "host-a-clone")
    later, later_branch, later_tip = claimed_by_host_a(store, clone(remote, tmp_path / "host-a-later"),
                                                       "Later", "later.txt")
    proc = start_dispatcher(cfg, "--watch")
    wait_until(lambda: [e for e in events(repo, "merge_queued") if e["task_id"] == clash.id], proc,
               "host A's entry queued here")
    # A later entry of host A's merges here: the ready entries were listed again meanwhile.
    marked_ready_by_host_a(store, later, later_branch, later_tip)
    wait_until(lambda: later.id in remote_merges(remote), proc, "host A's later entry merged")
    proc.terminate()
    proc.communicate(timeout=120)
    assert len([e for e in events(repo, "merge_queued") if e["task_id"] == clash.id]) == 1
    assert store.get(clash.id).status == "in_progress"  # its owner's to settle


def test_another_hosts_entry_with_no_tip_marked_ready_is_never_merged(hosts, tmp_path):
    remote = hosts.remote
    cfg, config, _ = hosts("b")
    store = tasks.open_task_store(config)
    task, branch, _ = pushed_by_host_a(store, clone(remote, tmp_path / "host-a-clone"), "Unmarked", "u.txt")
    assert store.update_claimed(task.id, "host-a", unset=[branch_push.TIP_KEY]) is not None
    finished(start_dispatcher(cfg))
    assert remote_merges(remote) == [] and git(remote, "branch", "--list", branch).strip()


def test_a_remote_that_refuses_main_to_move_holds_the_merge_said_in_its_words_and_gated_once(hosts, tmp_path):
    remote = hosts.remote
    (remote / "hooks").mkdir(exist_ok=True)
    hook = remote / "hooks" / "pre-receive"  # the server protects main, as a forge's branch protection does
    hook.write_text("#!/bin/sh\nwhile read old new ref; do [ \"$ref\" = refs/heads/main ] && "
                    "{ echo 'main is protected' >&2; exit 1; }; done\nexit 0\n", encoding="utf-8")
    hook.chmod(0o755)
    gated = tmp_path / "gated.txt"
    cfg, config, repo = hosts("a", merge_gate_command=[sys.executable, "-c",
                                                       f"open({str(gated)!r}, 'a').write('x')"])
    store = tasks.open_task_store(config)
    task = add_task(store, "Work", "append work.txt done", files=["work.txt"])
    run = subprocess.run([sys.executable, str(DISPATCH), "--config", str(cfg), "--json"], capture_output=True,
                         text=True, timeout=240, check=False)  # before: it merged and gated again, without end
    assert run.returncode == 1, run.stderr  # the run ends: its branch waits, held
    assert gated.read_text() == "x"
    [refused] = [e for e in events(repo, "push_refused") if e["task_id"] == task.id]
    assert "main is protected" in refused["reason"] and "remote rejected" in refused["reason"]
    assert run.stderr.count("main is protected") + run.stdout.count("main is protected") >= 1
    assert [w["id"] for w in json.loads(run.stdout)["waiting"]] == [task.id]
    held = store.get(task.id)
    assert branch_push.READY_LABEL not in held.labels and not events(repo, "main_moved_under")


def test_a_failed_give_back_of_the_merge_slot_is_tried_again_and_the_slot_is_free_after_the_run(hosts, tmp_path):
    marker = tmp_path / "failed-once"
    wrapper = tmp_path / "flaky_bd"
    # The store's server drops one call: the slot's give-back (update <prefix>-merge-slot -s open ...).
    wrapper.write_text(f"""#!/bin/sh
case "$*" in *merge-slot\\ -s\\ open*)
  if [ ! -e {marker} ]; then
    touch {marker}; echo 'Error: dial tcp 127.0.0.1:3307: connect: connection refused' >&2; exit 1
  fi;;
esac
exec bd "$@"
""", encoding="utf-8")
    wrapper.chmod(0o755)
    cfg, config, _ = hosts("a", merge_slot=True, bd_command=str(wrapper))
    store = tasks.open_task_store(config)
    task = add_task(store, "First", "append first.txt done", files=["first.txt"])
    finished(start_dispatcher(cfg))
    assert marker.exists(), "the give-back was never asked for"
    assert store.merge_slot_holder() is None
    assert store.get(task.id).status == "closed"


@pytest.mark.parametrize("summary, stderr, refused", [
    ("[remote rejected] (pre-receive hook declined)", "remote: main is protected\n",
     "[remote rejected] (pre-receive hook declined); main is protected"),
    ("[rejected] (stale info)", "", None),
    ("[rejected] (fetch first)", "", None),
    ("[remote rejected] (atomic transaction failed)", "error: cannot lock ref 'refs/heads/main': is at a but "
     "expected b\n", None),  # main moved on the remote meanwhile: a race, not a refusal
])
def test_a_ref_the_remote_refuses_is_told_from_one_whose_tip_moved(summary, stderr, refused):
    refs = {"refs/heads/main": crew_git.RefPushed("refs/heads/main", False, summary)}
    assert crew_git.refusal(refs, stderr) == refused


def test_a_reopened_task_whose_branch_is_on_the_remotes_main_already_is_closed_not_run_again(hosts, tmp_path):
    """A host merged another's entry and its close had not landed when the entry's lapsed lease was
    taken back (the owner had died): the task is open again, naming a branch that main holds and
    that the merge deleted. It is closed as merged; it never runs again to merge a second time."""
    remote = hosts.remote
    cfg, config, _ = hosts("b", merge_gate_command=GATE)
    store = tasks.open_task_store(config)
    task = merged_by_host_a(store, remote, tmp_path, branch_deleted=True)
    subprocess.run(["bd", "unclaim", task.id, "--force", "--actor", "host-b"], cwd=config.root, check=True,
                   capture_output=True)  # as `bd reclaim` does once the lease lapsed
    finished(start_dispatcher(cfg))
    assert remote_merges(remote) == [task.id]
    assert store.get(task.id).status == "closed"


def test_a_merged_task_reopened_by_a_person_runs_afresh_never_closed_again_as_merged(hosts, tmp_path):
    """A task closed as merged no longer names its branch: reopened (by a revert, or a person who
    wants it done again), it is worked on afresh, never closed again for the branch main holds."""
    remote = hosts.remote
    cfg, config, repo = hosts("b", merge_gate_command=GATE)
    store = tasks.open_task_store(config)
    task, _, _ = pushed_by_host_a(store, clone(remote, tmp_path / "host-a-clone"), "From A", "from-a.txt")
    finished(start_dispatcher(cfg))
    assert remote_merges(remote) == [task.id] and store.get(task.id).status == "closed"
    store.release(task.id, "wanted again", actor="host-a")  # reopened, unassigned
    proc = start_dispatcher(cfg, "--watch")
    wait_until(lambda: events(repo, "worker_started"), proc, "the task worked on afresh")
    proc.terminate()
    proc.communicate(timeout=120)
    assert [e["task_id"] for e in events(repo, "worker_started")] == [task.id]
    assert not events(repo, "merged_elsewhere")
