"""The merge queue's decisions without a dispatcher process: a MergeQueue built on a real
repository and the JSON store is asked what becomes of one request (decide), what holds main
(why_main_is_held) and how main moves (advance_main)."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import subprocess
import time
import types
from pathlib import Path

import pytest

from crew.dispatch import records
from crew.dispatch import merge_results
from crew.dispatch import remote_main
from crew.dispatch.conflicts import Conflicts
from crew.dispatch.ledger import Ledger
from crew.dispatch.merge_queue import MergeQueue
from crew.dispatch.merge_results import MainMove, Verdict
from crew.dispatch.wakeup import Wakeup
from support.dispatching import events, main_file
from support.repos import commit_file, git


def queue_of(config, store) -> MergeQueue:
    """No gate (decide never starts one) and nothing stopping."""
    ledger = Ledger(config, store, say=lambda message: None)
    no_gate = types.SimpleNamespace(starter=concurrent.futures.ThreadPoolExecutor(1), busy=False)  # its threads rebase
    return MergeQueue(config, ledger, store, all_gates=[no_gate], conflicts=Conflicts(config, ledger, store),
                      stop_now_reason=lambda: None, wakeup=Wakeup())


@pytest.fixture
def queue(json_agent_setup) -> MergeQueue:
    _, config, store = json_agent_setup()
    return queue_of(config, store)


def queued(queue: MergeQueue, name: str, text: str) -> records.MergeRequest:
    """A claimed task whose branch, in a worktree of its own, commits `text` to `name`; queued."""
    config, store = queue.config, queue.store
    task = store.create(f"Write {name}")
    assert store.claim(task.id, config.actor)
    branch, worktree = f"work/{task.id}", Path(config.worktree_root) / task.id
    git(config.root, "worktree", "add", "-q", "-b", branch, str(worktree), "main")
    commit_file(worktree, name, text)
    request = records.MergeRequest(records.BranchInFlight(
        task_id=task.id, title=task.title, branch=branch, worktree=worktree, outcome="close", note="",
        retries=0, actor=config.actor, task_created_at=task.created_at))
    queue.requests.append(request)
    return request


def test_a_clean_branch_becomes_a_merge_commit_on_main_and_main_stays_put(queue, repo):
    request = queued(queue, "feature.txt", "new\n")
    main = git(repo, "rev-parse", "main")
    decision = queue.decide(request)
    assert decision.verdict is Verdict.CLEAN and decision.base == main and decision.task.id == request.task_id
    assert git(repo, "rev-parse", f"{decision.commit}^1", f"{decision.commit}^2").split() == [
        main, git(repo, "rev-parse", request.branch)]
    assert git(repo, "show", f"{decision.commit}:feature.txt") == "new"
    assert git(repo, "rev-parse", "main") == main and queue.requests == [request]  # landing is not decide's


def test_a_conflict_becomes_a_task_and_a_pending_merge(queue, repo):
    commit_file(repo, "settings.ini", "color=blue\n")
    request = queued(queue, "settings.ini", "color=red\n")
    main = commit_file(repo, "settings.ini", "color=green\n")
    assert queue.decide(request).verdict is Verdict.CONFLICT
    [(followup_id, pending)] = queue.ledger.state.pending.items()
    assert queue.store.get(followup_id).title == f"Resolve merge conflict: {request.branch}"
    assert pending.files == ["settings.ini"] and pending.main_commit == main and pending.task_id == request.task_id
    assert queue.requests == [] and main_file(repo, "settings.ini") == "color=green\n"


def test_stacked_on_the_entry_ahead_a_branch_that_conflicts_only_with_it_waits_and_files_nothing(queue, repo):
    commit_file(repo, "settings.ini", "color=blue\n")
    ahead = queued(queue, "settings.ini", "color=red\n")
    behind = queued(queue, "settings.ini", "color=green\n")
    speculative = queue.decide(ahead).commit
    decision = queue.decide(behind, onto=speculative)
    assert decision.verdict is Verdict.STACK_CONFLICT and decision.commit is None
    assert queue.ledger.state.pending == {} and queue.requests == [ahead, behind]
    # One that merges onto the stack is made on the speculative commit it was given.
    other = queued(queue, "other.txt", "x\n")
    stacked = queue.decide(other, onto=speculative)
    assert stacked.verdict is Verdict.CLEAN and stacked.base == speculative
    assert git(repo, "rev-parse", f"{stacked.commit}^1") == speculative


def test_a_branch_that_commits_conflict_markers_is_handed_back(queue, repo):
    request = queued(queue, "notes.txt", "<<<<<<< HEAD\nmine\n=======\ntheirs\n>>>>>>> main\n")
    assert queue.decide(request).verdict is Verdict.CONFLICT  # git would merge it cleanly
    [followup_id] = queue.ledger.state.pending
    assert "the branch adds conflict markers" in queue.store.get(followup_id).description
    assert [e["files"] for e in events(repo, "merge_conflict")] == [["notes.txt"]]
    assert main_file(repo, "notes.txt") is None


def stop_a_rebase_of_main_on_a_conflict(repo: Path) -> None:
    """The user rebases main onto a branch that changed the same line; git stops for them."""
    git(repo, "switch", "-q", "-c", "side")
    commit_file(repo, "README.md", "# side\n")
    git(repo, "switch", "-q", "main")
    commit_file(repo, "README.md", "# mine\n")
    assert subprocess.run(["git", "rebase", "side"], cwd=repo, capture_output=True).returncode != 0


def test_main_is_held_by_a_rebase_in_progress_or_a_lock_on_its_ref(queue, repo):
    assert queue.why_main_is_held() is None
    stop_a_rebase_of_main_on_a_conflict(repo)
    assert queue.why_main_is_held() == f"a rebase of main is in progress in {repo}; merges into main wait until " \
                                       "it is finished or aborted"
    git(repo, "rebase", "--abort")
    assert queue.why_main_is_held() is None
    lock = repo / ".git" / "refs" / "heads" / "main.lock"
    lock.write_text("", encoding="utf-8")
    assert queue.why_main_is_held() == f"git's lock file {lock} exists: another git command is running there, " \
                                       "or one was killed (then remove that file)"


def test_a_merge_waits_while_main_is_held_twice_as_long_each_time(queue, repo):
    request = queued(queue, "feature.txt", "new\n")
    stop_a_rebase_of_main_on_a_conflict(repo)
    poll = queue.config.poll_interval_secs
    for waits in (1, 2):
        before = time.time()
        assert queue.decide(request).verdict is Verdict.WAITS
        pause = poll * 2 ** (waits - 1)
        assert request.waits == waits and before + pause <= request.retry_at <= time.time() + pause
    assert request.waiting.startswith("a rebase of main is in progress")
    assert queue.requests == [request] and queue.ledger.state.pending == {}


@pytest.mark.parametrize("change", ["released", "held by another"])
def test_a_task_that_changed_meanwhile_is_not_merged_and_its_branch_is_kept(queue, repo, change):
    request = queued(queue, "feature.txt", "new\n")
    queue.store.release(request.task_id, actor=queue.config.actor)
    if change == "held by another":
        assert queue.store.claim(request.task_id, "someone@else")
    assert queue.decide(request).verdict is Verdict.DROPPED
    assert queue.requests == [] and [e["branch"] for e in events(repo, "stale_branch")] == [request.branch]
    assert git(repo, "branch", "--list", request.branch) and not Path(request.worktree).exists()
    assert main_file(repo, "feature.txt") is None


def merge_commit(queue: MergeQueue, name: str, text: str) -> tuple[str, str]:
    """(main, a merge commit on it) for a branch that writes `text` to `name`."""
    decision = queue.decide(queued(queue, name, text))
    return decision.base, decision.commit


def test_advance_main_fast_forwards_the_users_checkout(queue, repo):
    old, new = merge_commit(queue, "feature.txt", "new\n")
    assert queue.advance_main(old, new) == merge_results.DONE
    assert git(repo, "rev-parse", "main") == new and (repo / "feature.txt").read_text(encoding="utf-8") == "new\n"


def test_advance_main_moves_the_ref_when_main_is_checked_out_nowhere(queue, repo):
    old, new = merge_commit(queue, "feature.txt", "new\n")
    git(repo, "switch", "-q", "-c", "elsewhere")
    assert queue.advance_main(old, new) == merge_results.DONE
    assert git(repo, "rev-parse", "main") == new and git(repo, "rev-parse", "HEAD") == old


def test_advance_main_says_moved_when_someone_else_moved_main_first(queue, repo):
    old, new = merge_commit(queue, "feature.txt", "new\n")
    theirs = commit_file(repo, "theirs.txt", "theirs\n")
    assert queue.advance_main(old, new) == merge_results.RACED
    assert git(repo, "rev-parse", "main") == theirs


def test_advance_main_names_the_uncommitted_changes_it_would_overwrite(queue, repo):
    old, new = merge_commit(queue, "README.md", "# the branch's\n")
    (repo / "README.md").write_text("# the user's own edit\n", encoding="utf-8")
    assert queue.advance_main(old, new) == MainMove.stays(
        f"your uncommitted changes in {repo} to README.md would be overwritten; commit or stash them "
        "and the merge will go ahead")
    assert git(repo, "rev-parse", "main") == old
    assert (repo / "README.md").read_text(encoding="utf-8") == "# the user's own edit\n"


def test_an_own_entry_whose_task_another_host_closed_is_decided_on_a_fetch_begun_after_the_close_was_seen(
        json_agent_setup, repo, tmp_path):
    """Remote mode: another host merged this host's entry (moved the remote's main, then closed the
    task) after this host's last fetch. Seen closed on that older view, the entry is not given up
    as changed: it waits for a fresh fetch, which shows it merged there."""
    _, config, store = json_agent_setup()
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")
    queue = queue_of(dataclasses.replace(config, remote="origin"), store)
    config, ledger = queue.config, queue.ledger
    request = queued(queue, "feature.txt", "new\n")
    git(repo, "push", "-q", "origin", request.branch)
    fetched = time.time()
    assert remote_main.fetch(repo, "origin", "main", [request.branch]) is None  # this host's view
    queue.fetch_began = fetched
    other = tmp_path / "host-b"  # the other host merges it on the remote, and closes its task
    git(tmp_path, "clone", "-q", str(remote), str(other))
    git(other, "merge", "-q", "--no-ff", "-m", "Merge it", f"origin/{request.branch}")
    git(other, "push", "-q", "--atomic", "origin", "main", f":{request.branch}")
    assert store.close_claimed(request.task_id, config.actor, "merged by host-b")
    assert queue.decide(request).verdict is Verdict.WAITS and queue.fetch_now
    assert ledger.summary["waiting"] == []
    queue.fetch_began = time.time()
    assert remote_main.fetch(repo, "origin", "main", [request.branch]) is None
    assert queue.decide(request).verdict is Verdict.DROPPED
    assert ledger.summary["waiting"] == [] and [e["task_id"] for e in events(repo, "merged_elsewhere")] == [
        request.task_id]


def test_a_fetch_asked_for_while_one_runs_is_made_after_it(json_agent_setup, repo):
    """Remote mode: a push found main moved while a fetch was under way: that fetch may have read the
    remote before the move, so another follows it."""
    _, config, store = json_agent_setup()
    queue = queue_of(dataclasses.replace(config, remote="origin"), store)
    queued(queue, "feature.txt", "new\n")
    under_way: concurrent.futures.Future = concurrent.futures.Future()
    queue.fetching = under_way
    queue.fetch_now = True  # asked for meanwhile
    under_way.set_result(None)  # it ends, and is taken:
    queue.remote_busy()
    assert queue.fetching is None and queue.fetch_now
