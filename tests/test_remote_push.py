"""Remote mode's pushes: compare-and-swap on a real bare remote shared by two clones, the
user's pre-push hook kept, a refusal or an unreachable remote reported, never raised."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import repos
from support.dispatching import (AGENT_COMMAND, DISPATCH, WAIT_SECS, add_task, bd, claim_taken_while_stalled, dispatch,
                                 events, main_file, start_dispatcher)
from support.tools import BACKENDS, install_fake_bd
from crew import config as configuration
from crew import git
from crew.dispatch import branch_push
from crew.dispatch import records
from crew.dispatch import store_thread
from crew.dispatch import wakeup as wakeups
from crew.dispatch.ledger import Ledger
from crew.tasks.model import Task


BD_BACKENDS = [b for b in BACKENDS if b != "json"]  # remote mode needs bd


@pytest.fixture
def other_clone(tmp_path, remote) -> Path:
    clone = tmp_path / "other"
    repos.git(tmp_path, "clone", "-q", str(remote), str(clone))
    return clone


def remote_tip(remote: Path, ref: str) -> str | None:
    return git.rev_parse(remote, ref)


def test_a_first_push_creates_the_branch_and_a_second_from_another_clone_is_refused_not_forced(repo, remote,
                                                                                             other_clone):
    mine = repos.commit_file(repo, "a.txt", "mine\n")
    pushed = git.push_with_lease(repo, "origin", [(mine, "refs/heads/work/t1", "")], timeout=60)
    assert pushed.accepted and pushed.refs["refs/heads/work/t1"].accepted
    assert remote_tip(remote, "refs/heads/work/t1") == mine

    theirs = repos.commit_file(other_clone, "b.txt", "theirs\n")
    refused = git.push_with_lease(other_clone, "origin", [(theirs, "refs/heads/work/t1", "")], timeout=60)
    assert not refused.accepted and refused.failure is None
    assert [ref.destination for ref in refused.rejected()] == ["refs/heads/work/t1"]
    assert remote_tip(remote, "refs/heads/work/t1") == mine

    # Expecting the tip it last pushed, the owner moves it on; a stale expectation is refused.
    later = repos.commit_file(repo, "a.txt", "mine, later\n")
    assert git.push_with_lease(repo, "origin", [(later, "refs/heads/work/t1", mine)], timeout=60).accepted
    assert not git.push_with_lease(other_clone, "origin", [(theirs, "refs/heads/work/t1", mine)],
                                   timeout=60).accepted
    assert remote_tip(remote, "refs/heads/work/t1") == later


def test_an_atomic_push_moves_every_ref_or_none(repo, remote):
    main = git.rev_parse(repo, "main")
    branch = repos.commit_file(repo, "a.txt", "work\n")
    assert git.push_with_lease(repo, "origin", [(branch, "refs/heads/work/t1", "")], timeout=60).accepted
    stale = git.push_with_lease(repo, "origin", [(branch, "refs/heads/main", main), ("", "refs/heads/work/t1", main)],
                                atomic=True, timeout=60)
    assert not stale.accepted and remote_tip(remote, "refs/heads/main") == main
    assert remote_tip(remote, "refs/heads/work/t1") == branch
    moves = [(branch, "refs/heads/main", main), ("", "refs/heads/work/t1", branch)]
    landed = git.push_with_lease(repo, "origin", moves, atomic=True, timeout=60)
    assert landed.accepted and remote_tip(remote, "refs/heads/main") == branch
    assert remote_tip(remote, "refs/heads/work/t1") is None


def test_the_users_pre_push_hook_runs_and_its_refusal_is_the_result(repo, remote):
    hook = repo / ".git" / "hooks" / "pre-push"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text("#!/bin/sh\necho 'pushes wait for the release' >&2\nexit 1\n", encoding="utf-8")
    hook.chmod(0o755)
    tip = repos.commit_file(repo, "a.txt", "work\n")
    held = git.push_with_lease(repo, "origin", [(tip, "refs/heads/work/t1", "")], timeout=60)
    assert not held.accepted and not held.unreached
    assert held.failure is not None and "pushes wait for the release" in held.failure
    assert remote_tip(remote, "refs/heads/work/t1") is None


def test_a_remote_not_reached_is_a_failure_to_retry(repo, tmp_path):
    repos.git(repo, "remote", "add", "gone", str(tmp_path / "nowhere.git"))
    tip = git.rev_parse(repo, "main")
    assert tip is not None
    failed = git.push_with_lease(repo, "gone", [(tip, "refs/heads/work/t1", "")], timeout=60)
    assert not failed.accepted and failed.unreached and failed.failure
    assert (fetched := git.fetch(repo, "gone", ["refs/heads/main:refs/crew/x"])) is not None
    assert not fetched.missing


def test_fetch_brings_a_branch_and_says_when_it_is_missing(repo, remote, other_clone):
    theirs = repos.commit_file(other_clone, "b.txt", "theirs\n")
    repos.git(other_clone, "push", "-q", "origin", "HEAD:refs/heads/work/t2")
    assert git.fetch(repo, "origin", ["+refs/heads/work/t2:refs/heads/work/t2"]) is None
    assert git.rev_parse(repo, "work/t2") == theirs
    missing = git.fetch(repo, "origin", ["refs/heads/work/none:refs/heads/work/none"])
    assert missing is not None and missing.missing


def run_dispatcher(cfg: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DISPATCH), "--config", str(cfg)], check=False, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_a_remote_with_the_json_store_exits_2_with_one_line(repo, remote, make_config):
    cfg = make_config(task_backend="json", remote="origin", worker_command=AGENT_COMMAND)
    proc = run_dispatcher(cfg, repo)
    assert proc.returncode == 2, proc.stderr
    assert "'remote' needs the bd task store" in proc.stderr and proc.stderr.count("\n") == 1


def test_a_remote_git_does_not_list_stops_the_run_with_one_line(repo, remote, make_config, tmp_path, monkeypatch):
    install_fake_bd(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    subprocess.run(["bd", "init", "--prefix", "proj"], cwd=repo, check=True)
    cfg = make_config(task_backend="bd", remote="upstream", worker_command=AGENT_COMMAND)
    proc = run_dispatcher(cfg, repo)
    assert proc.returncode == 1, proc.stderr
    assert "no git remote 'upstream'" in proc.stderr and proc.stderr.count("\n") == 1


# ---- the decisions, without git ---------------------------------------------------------------

def test_a_push_s_verdict():
    tip, other = "a" * 40, "b" * 40
    accepted = git.PushResult({"refs/heads/b": git.RefPushed("refs/heads/b", True, "[new branch]")})
    rejected = git.PushResult({"refs/heads/b": git.RefPushed("refs/heads/b", False, "[rejected] (stale info)")})
    assert branch_push.verdict(accepted, None, tip) == branch_push.Verdict.PUSHED
    assert branch_push.verdict(rejected, other, tip) == branch_push.Verdict.TAKEN
    assert branch_push.verdict(rejected, None, tip) == branch_push.Verdict.TAKEN
    # Pushed before a crash kept its record: the remote has this very tip.
    assert branch_push.verdict(rejected, tip, tip) == branch_push.Verdict.PUSHED
    assert branch_push.verdict(git.PushResult({}, "hook said no"), None, tip) == branch_push.Verdict.REFUSED
    assert branch_push.verdict(git.PushResult({}, "no route", unreached=True), None, tip) == \
        branch_push.Verdict.UNREACHED


def test_retries_pause_longer_each_time_up_to_a_bound():
    pauses = [branch_push.retry_after(n) for n in range(1, 12)]
    assert pauses[0] == branch_push.RETRY_FIRST_SECS and pauses == sorted(pauses)
    assert pauses[-1] == branch_push.RETRY_MOST_SECS


@pytest.mark.parametrize("metadata, named", [
    ({"crew_branch": "work/proj-1", "crew_tip": "a" * 40}, ("work/proj-1", "a" * 40)),
    ({"crew_branch": "work/proj-1"}, None),
    ({"crew_tip": "a" * 40}, None),
    ({"crew_branch": "work/proj-1", "crew_tip": "A" * 40}, None),
    ({"crew_branch": "work/proj-1", "crew_tip": "a" * 39}, None),
    ({"crew_branch": "-f", "crew_tip": "a" * 40}, None),
    ({"crew_branch": "work/../x y", "crew_tip": "a" * 40}, None),
    ({"crew_branch": "main", "crew_tip": "a" * 40}, None),  # never a task's branch
    ({"crew_branch": "wip-colleague", "crew_tip": "a" * 40}, None),  # a user's: not the task's own
    ({"crew_branch": "work/proj-2", "crew_tip": "a" * 40}, None),  # another task's
])
def test_a_task_names_a_branch_to_continue_only_when_its_metadata_is_sound(metadata, named, tmp_path):
    task = Task(id="proj-1", title="T", metadata=metadata)
    assert branch_push.continued_branch(configuration.Settings(root=tmp_path), task) == named


@pytest.mark.parametrize("actor, kept", [
    ("host-a", "kept/host-a/work/p-1"), ("dispatch@vm", "kept/dispatch-vm/work/p-1"),
    ("a b..c", "kept/a-b-c/work/p-1"), ("-x", "kept/x/work/p-1"),
])
def test_a_lost_claims_branch_is_kept_under_a_name_saying_whose_attempt_it_is(actor, kept):
    assert branch_push.kept_branch(actor, "work/p-1") == kept


def test_the_attempts_other_hosts_made_are_read_from_the_metadata():
    assert branch_push.attempts_of(Task(id="proj-1", title="T", metadata={"crew_attempts": "2"})) == 2
    assert branch_push.attempts_of(Task(id="proj-1", title="T", metadata={"crew_attempts": "x"})) == 0
    assert branch_push.attempts_of(Task(id="proj-1", title="T")) == 0


# ---- the dispatcher, with a remote, on the bd stand-in ------------------------------------------

def remote_setup(agent_setup, remote: Path, **settings):
    """A dispatcher run with the scripted agent and the remote, its merges awaiting a person's
    review (so a judged branch stays in the queue, judged, as the run ends: exit 1, it waits)."""
    return agent_setup(remote="origin", **{"review": "all", **settings})


def waits(run: subprocess.CompletedProcess) -> list[str]:
    """The tasks a run (--json) ended with waiting: it exits 1 then."""
    assert run.returncode == 1, run.stdout + run.stderr
    return [entry["id"] for entry in json.loads(run.stdout)["waiting"]]


def shown(config, task_id: str) -> dict:
    found = bd(config, "show", task_id)
    return found[0] if isinstance(found, list) else found


@pytest.mark.parametrize("backend", BD_BACKENDS, indirect=True)
def test_a_judged_branch_is_pushed_at_its_tip_then_marked_ready_in_bd(agent_setup, repo, remote):
    cfg, config, store = remote_setup(agent_setup, remote)
    task = add_task(store, "Pushed", "append pushed.txt done")
    run = dispatch(cfg, "--json")
    assert waits(run) == [task.id]
    branch = f"work/{task.id}"
    [pushed] = events(repo, "branch_pushed")
    tip = git.rev_parse(repo, branch)
    assert (pushed["branch"], pushed["tip"], pushed["remote"], pushed["ready"]) == (branch, tip, "origin", True)
    assert remote_tip(remote, f"refs/heads/{branch}") == tip
    held = store.get(task.id)  # bd itself keeps "1" as the number 1: the store reads every value as text
    assert held.status == "in_progress" and held.assignee == config.actor
    assert held.metadata == {**held.metadata, "crew_branch": branch, "crew_tip": tip, "crew_attempts": "1"}
    # Marked ready (the metadata and the label are one write), then awaiting review: no host tries it meanwhile.
    assert "crew-merge-ready" not in held.labels and "awaiting-review" in held.labels
    saved = json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))
    assert saved["pushed"] == {branch: tip}


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_branch_another_clone_pushed_first_is_never_forced_over(agent_setup, repo, remote, other_clone):
    cfg, config, store = remote_setup(agent_setup, remote)
    task = add_task(store, "Raced", "append raced.txt mine")
    theirs = repos.commit_file(other_clone, "theirs.txt", "theirs\n")
    repos.git(other_clone, "push", "-q", "origin", f"HEAD:refs/heads/work/{task.id}")
    run = dispatch(cfg, "--json")
    assert waits(run) == [task.id]
    assert remote_tip(remote, f"refs/heads/work/{task.id}") == theirs
    [refused] = events(repo, "push_refused")
    assert "never forced; a person decides between the two" in refused["reason"]
    assert events(repo, "branch_pushed") == []
    assert "crew-merge-ready" not in shown(config, task.id).get("labels", [])
    saved = json.loads((repo / ".dispatch_state.json").read_text(encoding="utf-8"))
    assert [request["held"] for request in saved["merge_queue"]] == [
        f"work/{task.id} was not pushed to origin: {refused['reason']}"]


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_branch_left_on_the_remote_that_this_attempt_holds_all_of_is_moved_forward_not_held(agent_setup, repo,
                                                                                                remote):
    cfg, config, store = agent_setup(remote="origin")
    task = add_task(store, "Afresh", "append afresh.txt done")
    left = git.rev_parse(repo, "main")  # an attempt no task names, left on the remote under the task's name
    repos.git(repo, "push", "-q", "origin", f"{left}:refs/heads/work/{task.id}")
    run = dispatch(cfg, "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["merged"] == [task.id], run.stdout + run.stderr
    assert events(repo, "push_refused") == []
    assert git.is_ancestor(remote, left, "refs/heads/main") and main_file(remote, "afresh.txt") == "done\n"


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_the_users_failing_pre_push_hook_holds_the_push_with_its_reason(agent_setup, repo, remote):
    hook = repo / ".git" / "hooks" / "pre-push"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text("#!/bin/sh\necho 'pushes wait for the release' >&2\nexit 1\n", encoding="utf-8")
    hook.chmod(0o755)
    cfg, config, store = remote_setup(agent_setup, remote)
    task = add_task(store, "Hooked", "append hooked.txt done")
    run = dispatch(cfg, "--json")
    assert waits(run) == [task.id]
    [refused] = events(repo, "push_refused")
    assert "pushes wait for the release" in refused["reason"]
    assert remote_tip(remote, f"refs/heads/work/{task.id}") is None
    assert "pushes wait for the release" in run.stdout + run.stderr
    assert "crew-merge-ready" not in shown(config, task.id).get("labels", [])


@pytest.mark.skipif(os.name == "nt", reason="stops the dispatcher with SIGSTOP")
@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_claim_lost_mid_run_pushes_the_branch_and_never_marks_it_ready(agent_setup, repo, remote, monkeypatch):
    monkeypatch.setenv("FAKE_BD_LEASE_SECS", "2")
    cfg, config, store = remote_setup(agent_setup, remote, lease_heartbeat_secs=0.5)
    task = add_task(store, "Stalled", "append stalled.txt stalled", "hang")
    proc = start_dispatcher(cfg, "--json")
    out, err = claim_taken_while_stalled(config, repo, task.id, proc)  # its lease lapses; host-b takes the task
    assert proc.returncode == 1, out + err
    branch = f"work/{task.id}"
    kept = branch_push.kept_branch(config.actor, branch)  # whose attempt it is: the task's own name is left to the next claimer
    assert remote_tip(remote, f"refs/heads/{kept}") == git.rev_parse(repo, branch)
    assert remote_tip(remote, f"refs/heads/{branch}") is None
    assert [(e["branch"], e["ready"], e["kept_as"]) for e in events(repo, "branch_pushed")] == [(branch, False, kept)]
    assert f"{branch} kept on origin as {kept}" in out + err
    held = shown(config, task.id)
    assert (held["status"], held["assignee"]) == ("in_progress", "host-b")
    assert "crew_branch" not in (held.get("metadata") or {}) and "crew-merge-ready" not in held.get("labels", [])
    assert events(repo, "merged") == []


@pytest.mark.skipif(os.name == "nt", reason="stops the dispatcher with SIGSTOP")
@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_task_whose_lost_claims_branch_was_kept_runs_afresh_on_another_host_and_lands(
        agent_setup, repo, remote, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_BD_LEASE_SECS", "2")
    cfg, config, store = agent_setup(remote="origin", lease_heartbeat_secs=0.5)
    task = add_task(store, "Stalled", "append stalled.txt stalled", "hang")
    proc = start_dispatcher(cfg, "--json")
    claim_taken_while_stalled(config, repo, task.id, proc)  # this host came back: its branch kept on the remote
    kept = branch_push.kept_branch(config.actor, f"work/{task.id}")
    assert remote_tip(remote, f"refs/heads/{kept}") is not None
    bd(config, "update", task.id, "-s", "open", "-a", "", "--actor", "host-b")  # host-b died before doing anything
    clone = tmp_path / "c"
    repos.git(tmp_path, "clone", "-q", str(remote), str(clone))
    monkeypatch.setenv("BEADS_DIR", str(repo / ".beads"))
    other_cfg = tmp_path / "c_config.json"
    commit = ["sh", "-c", "echo c > c.txt && git add c.txt && git commit -qm c"]
    other_cfg.write_text(json.dumps({"repo_path": str(clone), "task_backend": "bd", "remote": "origin",
                                     "bd_command": config.bd_command, "actor": "host-c", "worker_command": commit,
                                     "poll_interval_secs": 0.1, "worktree_root": str(tmp_path / "c.worktrees")}),
                         encoding="utf-8")
    run = dispatch(other_cfg, "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["merged"] == [task.id], run.stdout + run.stderr
    assert events(clone, "push_refused") == []
    assert remote_tip(remote, f"refs/heads/{kept}") is not None  # the first host's commits are still there


@pytest.mark.parametrize("backend", BD_BACKENDS, indirect=True)
def test_a_reclaimed_task_with_a_pushed_branch_is_continued_by_another_clone_without_its_agent(
        agent_setup, repo, remote, other_clone, tmp_path, monkeypatch):
    cfg, config, store = remote_setup(agent_setup, remote)
    task = add_task(store, "Handed on", "append handed.txt done")
    first = dispatch(cfg, "--json")
    assert waits(first) == [task.id]
    tip = git.rev_parse(repo, f"work/{task.id}")
    bd(config, "unclaim", task.id, "--force", "--actor", "host-b")  # as `bd reclaim` does once the host died
    # The other clone's dispatcher, on the same task store, merging as it goes.
    monkeypatch.setenv("BEADS_DIR", str(repo / ".beads"))
    other_cfg = tmp_path / "other_config.json"
    other_cfg.write_text(json.dumps({"repo_path": str(other_clone), "task_backend": "bd", "remote": "origin",
                                     "bd_command": config.bd_command,
                                     "actor": "host-b", "worker_command": AGENT_COMMAND, "poll_interval_secs": 0.1,
                                     "worktree_root": str(tmp_path / "other.worktrees")}), encoding="utf-8")
    second = dispatch(other_cfg, "--json")
    assert second.returncode == 0, second.stdout + second.stderr
    assert events(other_clone, "worker_started") == []
    assert [(e["branch"], e["tip"]) for e in events(other_clone, "branch_continued")] == [(f"work/{task.id}", tip)]
    assert json.loads(second.stdout)["merged"] == [task.id]
    assert main_file(other_clone, "handed.txt") == "done\n"


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_task_whose_metadata_names_main_is_worked_on_afresh_never_closed_as_merged(agent_setup, repo, remote):
    cfg, config, store = agent_setup(remote="origin")
    task = add_task(store, "Real work", "append work.txt done")
    main_tip = git.rev_parse(repo, "main")
    bd(config, "update", task.id, "--set-metadata", "crew_branch=main", "--set-metadata", f"crew_tip={main_tip}")
    run = dispatch(cfg, "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["merged"] == [task.id], run.stdout + run.stderr
    assert events(repo, "branch_continued") == [] and len(events(repo, "worker_started")) == 1
    assert f"{task.id}: its task names main as its pushed branch" in run.stdout + run.stderr
    assert main_file(repo, "work.txt") == "done\n" and remote_tip(remote, "refs/heads/main") is not None


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_users_branch_named_in_a_tasks_metadata_is_never_merged_nor_deleted(agent_setup, repo, remote):
    cfg, config, store = agent_setup(remote="origin")
    repos.git(repo, "checkout", "-q", "-b", "wip-colleague")  # someone's own branch on the remote, not to land yet
    wip = repos.commit_file(repo, "wip.txt", "half done\n")
    repos.git(repo, "push", "-q", "origin", "wip-colleague")
    repos.git(repo, "checkout", "-q", "main")
    repos.git(repo, "branch", "-q", "-D", "wip-colleague")
    mine, theirs = add_task(store, "Real work", "append work.txt done"), add_task(store, "Another host's")
    bd(config, "update", mine.id, "--set-metadata", "crew_branch=wip-colleague", "--set-metadata", f"crew_tip={wip}")
    # Another host's entry naming it, marked ready under that host's claim: never joins this host's queue.
    bd(config, "update", theirs.id, "--claim", "--actor", "host-b")
    bd(config, "update", theirs.id, "--set-metadata", "crew_branch=wip-colleague", "--set-metadata",
       f"crew_tip={wip}", "--add-label", "crew-merge-ready", "--actor", "host-b")
    run = dispatch(cfg, "--json")
    assert json.loads(run.stdout)["merged"] == [mine.id], run.stdout + run.stderr
    assert remote_tip(remote, "refs/heads/wip-colleague") == wip
    assert not git.is_ancestor(remote, wip, "refs/heads/main")
    assert [e["task_id"] for e in events(repo, "merge_queued")] == [mine.id]
    assert shown(config, theirs.id)["status"] == "in_progress"


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_the_attempts_another_host_made_count_toward_max_attempts(agent_setup, repo, remote):
    cfg, config, store = remote_setup(agent_setup, remote, max_attempts=2)
    task = add_task(store, "Tried elsewhere", "crash")
    bd(config, "update", task.id, "--set-metadata", "crew_attempts=1")  # another host's failed attempt
    run = dispatch(cfg, "--json")
    assert run.returncode == 1, run.stdout + run.stderr
    assert [entry["id"] for entry in json.loads(run.stdout)["blocked"]] == [task.id]
    assert [e["attempt"] for e in events(repo, "worker_started")] == [2]
    assert shown(config, task.id)["metadata"]["crew_attempts"] == "2"  # for the next host, were it reopened


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_push_the_remote_is_not_reached_for_is_tried_again_the_branch_kept(agent_setup, repo, remote, tmp_path):
    later = tmp_path / "later.git"  # not there yet: the remote cannot be reached
    repos.git(repo, "remote", "set-url", "origin", str(later))
    cfg, config, store = remote_setup(agent_setup, remote)
    task = add_task(store, "Offline", "append offline.txt done")
    proc = start_dispatcher(cfg, "--json")
    said = []
    for line in proc.stderr:  # until the failed push is said (the test's own timeout bounds it)
        said.append(line)
        if "not pushed yet" in line:
            break
    assert "the branch is kept here" in said[-1], "".join(said)
    repos.git(tmp_path, "clone", "-q", "--bare", str(remote), str(later))  # the remote is back
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, out + err
    branch = f"work/{task.id}"
    assert [e["branch"] for e in events(repo, "branch_pushed")] == [branch]
    assert remote_tip(later, f"refs/heads/{branch}") == git.rev_parse(repo, branch)
    # Marked ready at its tip (one write with the label), which awaiting review then took off.
    assert shown(config, task.id)["metadata"]["crew_tip"] == git.rev_parse(repo, branch)


def settle(pusher: branch_push.BranchPusher, ledger, wakeup) -> None:
    """The pusher stepped, as the loop steps it, until nothing it does is under way or due."""
    deadline = time.monotonic() + WAIT_SECS
    while True:
        pusher.judged(ledger.state.merge_queue, ledger.state.attempts)
        pusher.step(time.time())
        if not pusher.busy():
            return
        assert time.monotonic() < deadline, "the pushes never settled"
        wakeup.wait(0.1)


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_queued_branch_that_moved_is_pushed_again_from_the_tip_pushed_last_and_marked_anew(
        config, store, repo, remote, tmp_path):
    config = dataclasses.replace(config, remote="origin")
    task = store.create("Moved")
    assert store.claim(task.id, config.actor)
    repos.git(repo, "checkout", "-q", "-b", "work/moved")
    first = repos.commit_file(repo, "moved.txt", "first\n")
    repos.git(repo, "checkout", "-q", "main")
    wakeup = wakeups.Wakeup()
    serial = store_thread.SerialStore(store, wakeup, lambda message: None)
    ledger = Ledger(config, serial, lambda message: None)
    pusher = branch_push.BranchPusher(config, ledger, serial, wakeup)

    def queued() -> None:  # as a finished worker, or a conflict task's close, queues it
        flight = records.BranchInFlight(task_id=task.id, title="Moved", branch="work/moved", worktree=tmp_path / "w",
                                        outcome=records.Outcome.CLOSE, note="", retries=0, actor=config.actor)
        ledger.state.merge_queue[:] = [records.MergeRequest(flight)]
    try:
        queued()
        settle(pusher, ledger, wakeup)
        assert remote_tip(remote, "refs/heads/work/moved") == first
        repos.git(repo, "checkout", "-q", "work/moved")
        second = repos.commit_file(repo, "moved.txt", "second\n")  # a conflict resolved on the branch
        repos.git(repo, "checkout", "-q", "main")
        settle(pusher, ledger, wakeup)
        assert remote_tip(remote, "refs/heads/work/moved") == first  # the same request: not looked at again
        queued()
        settle(pusher, ledger, wakeup)
        assert remote_tip(remote, "refs/heads/work/moved") == second
        assert store.get(task.id).metadata["crew_tip"] == second and ledger.state.pushed == {"work/moved": second}
    finally:
        pusher.shutdown()
        serial.shutdown()


@pytest.mark.parametrize("backend", ["fake-bd"], indirect=True)
def test_a_pushed_branch_the_remote_cannot_be_read_for_is_looked_at_again_never_run_afresh_on_a_guess(
        config, store, repo, tmp_path):
    config = dataclasses.replace(config, remote="origin")
    repos.git(repo, "remote", "add", "origin", str(tmp_path / "not-there.git"))
    wakeup = wakeups.Wakeup()
    serial = store_thread.SerialStore(store, wakeup, lambda message: None)
    pusher = branch_push.BranchPusher(config, Ledger(config, serial, lambda message: None), serial, wakeup)
    continuation, why = pusher.fetch_branch("work/p-1", "a" * 40, ours=False)
    assert continuation is branch_push.Continuation.UNREACHED and "not-there.git" in why
