"""Remote mode (config `remote`): branches pushed to the remote, by compare-and-swap.

A judged branch (in the merge queue to close its task, not held) is pushed, then marked ready in
the task store (crew_branch, crew_tip, crew_attempts and the crew-merge-ready label, under this
host's claim): any host may merge it then. A branch whose claim was taken back while its worker
ran is pushed too, so its commits are not lost, and never marked ready: under a name saying whose
attempt it is (kept_branch), so the task's own name stays free for the host that claims it next. A task claimed whose
store metadata names a branch the remote has at the tip named (a dead host's judged branch) is
continued from it: fetched, and queued as judged, with no agent run.

Every push expects the remote's branch at the tip this host pushed last (none the first time):
another host's tip there is never forced over. Pushes run the user's pre-push hook, on a thread
of their own (the loop never waits on one), bounded by git_hook_timeout_secs; a remote not
reached is tried again with a growing pause, the branch kept locally meanwhile."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import re
import typing

from crew import config as configuration
from crew import errors
from crew import git
from crew import names as safe_names
from crew.dispatch import records
from crew.dispatch import review as review_state
from crew.dispatch import wakeup as wakeups
from crew.dispatch import worktrees
from crew.dispatch.ledger import Ledger
from crew.dispatch.say_once import Told
from crew.dispatch.store_thread import SerialStore
from crew.report.events import EventName
from crew.tasks import model as task_model


READY_LABEL = "crew-merge-ready"
BRANCH_KEY, TIP_KEY, ATTEMPTS_KEY = "crew_branch", "crew_tip", "crew_attempts"
RETRY_FIRST_SECS = 5.0  # the pause after a push or a store call that did not get through, doubled each time
RETRY_MOST_SECS = 300.0
COMMIT_ID = re.compile(r"[0-9a-f]{40}")
# Where a branch of the remote is fetched to be continued, and deleted once looked at: the toolkit's
# own, and apart from the merge queue's view of the remote (remote_main.FETCHED), which that look
# must never move or delete under a merge being computed on it.
FETCHED_REFS = "refs/crew/fetched/"
# What a task closed as merged no longer names: reopened (by a revert, or a person), it is worked
# on afresh, never found "merged" again by the branch it named.
MERGED_KEYS = (BRANCH_KEY, TIP_KEY)
KEPT = "kept/"  # where a lost claim's branch is pushed, under the actor whose attempt it was


class Continuation(enum.Enum):
    """What a claimed task's pushed branch, looked at on the remote, comes to."""

    HERE = "here"  # fetched at the tip its task names: the task goes on from it, with no agent run
    MERGED = "merged"  # gone from the remote, its tip in the remote's main: the task is closed, not run again
    AFRESH = "afresh"  # not there at that tip (or not continued): the task runs afresh
    UNREACHED = "unreached"  # the remote could not be read: released, still naming the branch, looked at again


class Verdict(enum.Enum):
    PUSHED = "pushed"  # the remote has the tip now
    TAKEN = "taken"  # the remote's branch is at a tip this host did not push last: never forced
    REFUSED = "refused"  # the user's pre-push hook refused it
    UNREACHED = "unreached"  # the remote was not reached, or did not answer in time: tried again


def verdict(result: git.PushResult, remote_tip: str | None, tip: str) -> Verdict:
    """What a push came to. remote_tip: the remote's branch as read after a rejection (None when
    it has none, or was not read): a rejected push of a tip the remote has already (pushed by
    this host before a crash kept its record) is a push done."""
    if result.accepted or (not result.failure and remote_tip == tip):
        return Verdict.PUSHED
    if result.failure is None:
        return Verdict.TAKEN
    return Verdict.UNREACHED if result.unreached else Verdict.REFUSED


def retry_after(tries: int) -> float:
    """The pause before try number `tries` + 1 of something that did not get through."""
    return min(RETRY_FIRST_SECS * 2.0 ** max(tries - 1, 0), RETRY_MOST_SECS)


def continued_branch(config: configuration.Settings, task: task_model.Task) -> tuple[str, str] | None:
    """The branch and tip a task's metadata names (pushed by the host that claimed it before), if
    it names both and they are sound: the task's own branch (worktrees.is_tasks_branch), a full
    commit id."""
    branch, tip = task.metadata.get(BRANCH_KEY, ""), task.metadata.get(TIP_KEY, "")
    if not worktrees.is_tasks_branch(config, task.id, branch) or not COMMIT_ID.fullmatch(tip):
        return None
    return branch, tip


def worth_keeping(config: configuration.Settings, branch: str, made_on: str | None, given: str | None) -> bool:
    """Whether a lost claim's `branch` holds work the remote was not given: not at `made_on` (its
    worker's base: nothing committed) nor at `given` (the tip this host pushed of it last)."""
    tip = git.rev_parse(config.root, f"refs/heads/{branch}")
    return tip is not None and tip not in (made_on, given)


def kept_branch(actor: str, branch: str) -> str:
    """The name a lost claim's branch is pushed under: kept/<actor>/<branch>, the actor made safe
    for a ref. Only this host writes it, and the task's own name is left to the next claimer."""
    return f"{KEPT}{safe_names.branch_name('{task_id}', actor)}/{branch}"


def attempts_of(task: task_model.Task) -> int:
    """The attempts other hosts made at the task, as its metadata counts them (0 when none)."""
    count = task.metadata.get(ATTEMPTS_KEY, "")
    return int(count) if count.isdigit() else 0


@dataclasses.dataclass
class Push:
    """One branch to push, and what became of it so far (runtime: derived again after a restart
    from the merge queue, or, for a lost claim's branch, from the state's `keeping`)."""

    task_id: str
    branch: str  # the local branch
    tip: str
    owner: str  # whose claim the task is under
    attempts: int
    ready: bool  # marked merge-ready once pushed; False: pushed only to keep its commits
    pushed_as: str  # the branch on the remote: `branch`, or for a lost claim its kept_branch
    tries: int = 0
    next_try: float = 0.0
    pushing: concurrent.futures.Future[tuple[Verdict, str]] | None = None
    marking: concurrent.futures.Future[task_model.Task | None] | None = None
    done: bool = False


class BranchPusher:
    """The pushes of one dispatcher, stepped by its loop (off the loop: the git push on a thread
    of its own, the store's marking on the store thread)."""

    def __init__(self, config: configuration.Settings, ledger: Ledger, serial: SerialStore,
                 wakeup: wakeups.Wakeup):
        assert config.remote is not None
        self.config, self.ledger, self.serial = config, ledger, serial
        self.remote: str = config.remote
        self.thread = wakeups.PostingExecutor(wakeup, 1, "branch-push")
        self.pushes: dict[str, Push] = {}  # by the branch on the remote
        self.marked: dict[str, str] = {}  # branch: the tip marked ready in the store this run
        # branch: the merge request last looked at, and whether it was rebased then. A request
        # queued again (a conflict resolved) or rebased may carry a new tip: it is looked at anew.
        self.looked_at: dict[str, tuple[records.MergeRequest, bool]] = {}
        # Tasks claimed with a branch another host pushed: the task, the branch, its tip, and the
        # look at the remote under way (what it comes to, and why).
        self.continuing: list[tuple[task_model.Task, str, str,
                                    concurrent.futures.Future[tuple[Continuation, str]]]] = []

    def claimed(self, task: task_model.Task) -> bool:
        """A task this host has just claimed: the attempts other hosts made count here, and when
        its metadata names a pushed branch, it is looked at on the remote before any worker starts
        (True: no worker starts now; continued() tells what became of it)."""
        state, named = self.ledger.state, continued_branch(self.config, task)
        if named is None and (branch := task.metadata.get(BRANCH_KEY)):
            own = safe_names.branch_name(self.config.branch_template, task.id)
            self.ledger.say(f"{task.id}: its task names {safe_names.for_terminal(branch[:200])} as its pushed branch, "
                            f"not {own} at a full commit id: not continued from it; it starts afresh")
        # The attempts before this one: all those counted, or, going on from the judged branch of
        # the last, those before it (it is marked ready again as that attempt).
        if (before := attempts_of(task) - (named is not None)) > state.attempts.get(task.id, 0):
            with self.ledger.change():
                state.attempts[task.id] = before
        if named is None:
            return False
        branch, tip = named
        ours = state.branches.get(branch) == records.BranchOwner(task_id=task.id, task_created_at=task.created_at)
        self.continuing.append((task, branch, tip, self.thread.submit(self.fetch_branch, branch, tip, ours)))
        return True

    def fetch_branch(self, branch: str, tip: str, ours: bool) -> tuple[Continuation, str]:
        """On the push thread: the remote's `branch` made the local branch of that name when the
        remote has it at `tip` (a local branch of that name moves only if it was made for this task
        and the tip holds all of it); MERGED when it is gone and its tip is in the remote's main (a
        host merged it, and the task was taken back before that host closed it); else why not."""
        root, private = self.config.root, FETCHED_REFS + branch
        if (failed := git.fetch(root, self.remote, [f"+refs/heads/{branch}:{private}"])) is not None:
            if not failed.missing:
                return Continuation.UNREACHED, failed.reason
            main = self.config.main_branch
            if (merged := self.tip_in_main(tip)) is None:
                return Continuation.UNREACHED, f"{branch} is gone from {self.remote}, whose {main} could not be read"
            if merged:
                return Continuation.MERGED, f"{branch} is in {self.remote}'s {main} already, at {tip[:12]}"
            return Continuation.AFRESH, f"{branch} is no longer on {self.remote}"
        try:
            fetched = git.rev_parse(root, private)
            if fetched != tip:
                there = (fetched or "no commit")[:12]
                return Continuation.AFRESH, f"{self.remote} has {branch} at {there}, not at {tip[:12]} as its task says"
            local = git.rev_parse(root, f"refs/heads/{branch}")
            if local is not None and local != tip and not (ours and git.is_ancestor(root, local, tip)):
                return Continuation.AFRESH, (f"a branch {branch} is here already, not made for this task or holding "
                                             "commits the pushed one lacks")
            git.git("update-ref", f"refs/heads/{branch}", tip, local or "0" * 40, cwd=root)
            return Continuation.HERE, ""
        finally:
            git.git("update-ref", "-d", private, cwd=root, check=False)

    def tip_in_main(self, tip: str) -> bool | None:
        """On the push thread: whether the remote's main, fetched now, holds `tip`; None when it
        could not be fetched."""
        root, main = self.config.root, self.config.main_branch
        private = FETCHED_REFS + main  # never a task's branch: that is never named main
        try:
            if git.fetch(root, self.remote, [f"+refs/heads/{main}:{private}"]) is not None:
                return None
            return git.is_ancestor(root, tip, private)
        finally:
            git.git("update-ref", "-d", private, cwd=root, check=False)

    def continued(self) -> list[tuple[task_model.Task, str, str, Continuation, str]]:
        """The looks at the remote that came back: each task, its branch and tip, what the look
        came to, and why (when not HERE)."""
        done = [entry for entry in self.continuing if entry[3].done()]
        self.continuing = [entry for entry in self.continuing if not entry[3].done()]
        came_back = []
        for task, branch, tip, future in done:
            try:
                continuation, why = future.result()
            except errors.GitError as exc:
                continuation, why = Continuation.AFRESH, safe_names.one_line_tail(str(exc))
            came_back.append((task, branch, tip, continuation, why))
        return came_back

    def continuing_tasks(self) -> list[str]:
        """The tasks claimed here whose pushed branch is being looked at: their claims are renewed."""
        return [task.id for task, *_ in self.continuing]

    def start_afresh(self, task: task_model.Task, why: str) -> None:
        """A task whose pushed branch cannot be continued: the branch it names is forgotten (never
        deleted: it may be someone else's now) and the task released, for a fresh attempt."""
        self.ledger.say(f"{task.id}: not continued from the branch its task names ({why}); released for a fresh "
                        "attempt")
        self.serial.later("update_claimed", task.id, self.config.actor, unset=[BRANCH_KEY, TIP_KEY],
                          remove_labels=[READY_LABEL])
        self.serial.later("release", task.id, f"released: its pushed branch was not continued ({why})",
                          actor=self.config.actor)

    def look_again(self, task: task_model.Task, why: str) -> None:
        """A task whose pushed branch could not be looked at (the remote not read): released still
        naming it, so that its next claim looks again; never run afresh on a guess."""
        self.ledger.say(f"{task.id}: its pushed branch could not be looked at ({why}); released, to be looked at "
                        "again")
        self.serial.later("release", task.id, f"released: its pushed branch could not be looked at ({why})",
                          actor=self.config.actor)

    def close_merged(self, task: task_model.Task, branch: str, why: str) -> None:
        """A task claimed whose pushed branch is in the remote's main already (the host that merged
        it had its claim taken back before it closed the task): closed under this host's claim,
        never run and merged again."""
        self.ledger.event(EventName.MERGED_ELSEWHERE, task.id, branch=branch)
        self.ledger.say(f"{task.id}: {why}; closed, not run again")
        self.serial.later("close_claimed", task.id, self.config.actor, f"merged: {why}", unset=MERGED_KEYS)

    def keep(self, task_id: str, branch: str, owner: str) -> None:
        """A branch whose claim was lost: remembered in the state (a crash before its push does not
        leave its commits only here), then pushed under its kept_branch name."""
        if branch not in self.ledger.state.keeping:
            with self.ledger.change():
                self.ledger.state.keeping[branch] = records.KeptBranch(task_id=task_id, actor=owner)
        self.want(task_id, branch, owner, 0, ready=False)

    def keep_what_was_kept(self) -> None:
        """After a restart: the lost claims' branches an earlier run (or its recovery) left to push."""
        for branch, kept in list(self.ledger.state.keeping.items()):
            self.want(kept.task_id, branch, kept.actor, 0, ready=False)

    def kept(self, branch: str) -> None:
        """A lost claim's branch is pushed, or will never be (refused, or gone here): forgotten."""
        if branch in self.ledger.state.keeping:
            with self.ledger.change():
                del self.ledger.state.keeping[branch]

    def want(self, task_id: str, branch: str, owner: str, attempts: int, ready: bool) -> None:
        """Push `branch` as it is now, and mark it ready once pushed, if `ready`; if not (its claim
        was lost), under its kept_branch name."""
        tip = git.rev_parse(self.config.root, f"refs/heads/{branch}")
        pushed_as = branch if ready else kept_branch(owner, branch)
        current = self.pushes.get(pushed_as)
        if tip is None and not ready:  # deleted here meanwhile (by a person): nothing is left to push
            self.kept(branch)
        if tip is None or (current is not None and current.tip == tip) or (ready and self.marked.get(branch) == tip):
            return
        if current is not None and current.pushing is not None:
            return  # the push under way ends first; the queue asks again with the new tip
        self.pushes[pushed_as] = Push(task_id, branch, tip, owner, attempts, ready, pushed_as)

    def judged(self, queue: list[records.MergeRequest], attempts: dict[str, int]) -> None:
        """Every branch in the merge queue that is to close its task, and holds no commit that left
        main, is pushed and marked ready at its tip (again after a restart: a push the remote has
        already is a push done; marking again is harmless)."""
        state, queued = self.ledger.state, {request.branch for request in queue}
        for push in self.pushes.values():  # merged meanwhile (or dropped): no longer pushed or marked
            if push.ready and push.branch not in queued and push.pushing is None and push.marking is None:
                push.done = True
        waiting = queued | {pending.branch for pending in state.pending.values()}  # what may come back to the queue
        self.marked = {branch: tip for branch, tip in self.marked.items() if branch in waiting}
        self.looked_at = {branch: seen for branch, seen in self.looked_at.items() if branch in queued}
        for request in queue:
            looked = self.looked_at.get(request.branch)
            if (request.outcome != records.Outcome.CLOSE or request.held or request.branch in state.left_main
                    or request.branch in self.pushes
                    or (looked is not None and looked[0] is request and looked[1] == request.rebased)):
                continue
            self.looked_at[request.branch] = (request, request.rebased)
            self.want(request.task_id, request.branch, request.actor or self.config.actor,
                      attempts.get(request.task_id, 0) + 1, ready=True)

    def busy(self) -> bool:
        """Whether a push or a marking is under way or due (the run does not end before)."""
        return bool(self.continuing) or any(not push.done for push in self.pushes.values())

    def next_due(self) -> float | None:
        return min((push.next_try for push in self.pushes.values()
                    if not push.done and push.pushing is None and push.marking is None), default=None)

    def step(self, now: float) -> bool:
        """Take the pushes and markings that came back, hand over those due. True if one ended."""
        ended = False
        for push in list(self.pushes.values()):
            if push.pushing is not None and push.pushing.done():
                ended |= self.pushed(push, *push.pushing.result(), now)
            elif push.marking is not None and push.marking.done():
                ended |= self.marked_ready(push, push.marking, now)
            elif not push.done and push.pushing is None and push.marking is None and now >= push.next_try:
                expected = self.ledger.state.pushed.get(push.pushed_as, "")
                push.pushing = self.thread.submit(self.push_now, push.pushed_as, push.tip, expected)
        self.pushes = {branch: push for branch, push in self.pushes.items() if not push.done}
        return ended

    def push_now(self, branch: str, tip: str, expected: str) -> tuple[Verdict, str]:
        """On the push thread: the push, and why it did not get through, if it did not."""
        root, ref = self.config.root, f"refs/heads/{branch}"
        result = git.push_with_lease(root, self.remote, [git.RefUpdate(tip, ref, expected)],
                                     timeout=self.config.git_hook_timeout_secs)
        there = None
        if not result.accepted and result.failure is None:  # rejected: whose tip is there?
            listed = git.git("ls-remote", self.remote, ref, cwd=root, check=False,
                             timeout=git.FETCH_TIMEOUT_SECS).stdout.split()
            there = listed[0] if listed and COMMIT_ID.fullmatch(listed[0]) else None
            if there is not None and there != tip and git.is_ancestor(root, there, tip):
                # A tip this host did not push (an attempt left there, no task names it) that this
                # branch holds all of: moved forward from it, by compare-and-swap, nothing lost.
                result = git.push_with_lease(root, self.remote, [git.RefUpdate(tip, ref, there)],
                                             timeout=self.config.git_hook_timeout_secs)
        reason = result.failure or result.refused or (
            f"{self.remote} has {branch} at {there[:12] if there else 'no commit'}, not at "
            f"the tip this host pushed last ({expected[:12] or 'none'}), nor one this "
            "branch holds: it is never forced; a person decides between the two")
        return verdict(result, there, tip), reason

    def pushed(self, push: Push, outcome: Verdict, reason: str, now: float) -> bool:
        push.pushing = None
        if outcome == Verdict.UNREACHED:
            push.tries += 1
            push.next_try = now + retry_after(push.tries)
            self.ledger.say_once(Told.PUSH_WAITS, f"{push.task_id}: {push.branch} not pushed yet (tried again in "
                                            f"{retry_after(push.tries):g} s; the branch is kept here): {reason}",
                                 f"{push.branch} {reason}")
            return False
        if outcome != Verdict.PUSHED:
            push.done = True
            self.ledger.event(EventName.PUSH_REFUSED, push.task_id, branch=push.branch, reason=reason)
            if push.ready:
                self.hold(push, f"{push.branch} was not pushed to {self.remote}: {reason}")
            else:
                self.kept(push.branch)
                self.ledger.say(f"{push.task_id}: {push.branch} was not pushed to {self.remote} as {push.pushed_as} "
                                f"(it is kept here): {reason}")
            return True
        with self.ledger.change():  # one save: a crash after it neither pushes nor says it again
            self.ledger.state.pushed[push.pushed_as] = push.tip
            if not push.ready:
                self.ledger.state.keeping.pop(push.branch, None)
        kept = {} if push.ready else {"kept_as": push.pushed_as}
        self.ledger.event(EventName.BRANCH_PUSHED, push.task_id, branch=push.branch, tip=push.tip,
                          remote=self.remote, ready=push.ready, **kept)
        if not push.ready:
            push.done = True
            self.ledger.say(f"{push.task_id}: {push.branch} kept on {self.remote} as {push.pushed_as} (its claim was "
                            "taken back: the task's own name is left to the host that claims it next; never merged "
                            "by this host)")
            return True
        push.tries = 0
        push.marking = self.mark(push)
        return False

    def hold(self, push: Push, reason: str) -> None:
        """A judged branch that cannot be pushed waits in the merge queue for a person's decision
        (`tasks.py held`), as one that carries commits that left main does; the task is told why."""
        request = next((r for r in self.ledger.state.merge_queue if r.branch == push.branch), None)
        self.ledger.say(f"{push.task_id}: {reason}" + ("; held for a person's decision" if request else ""))
        if request is None:
            return
        self.serial.later("add_note", push.task_id, reason)
        with self.ledger.change():
            request.held = request.waiting = reason

    def still_ready(self, push: Push) -> bool:
        """Whether the pushed branch is still for any host to merge: in the merge queue, not held,
        not awaiting review (the merge queue takes the label off as an entry stops being ready)."""
        request = next((r for r in self.ledger.state.merge_queue if r.branch == push.branch), None)
        return request is not None and not request.held and request.review != review_state.State.AWAITING

    def mark(self, push: Push) -> concurrent.futures.Future[task_model.Task | None]:
        metadata = {BRANCH_KEY: push.branch, TIP_KEY: push.tip, ATTEMPTS_KEY: str(push.attempts)}
        return self.serial.later("update_claimed", push.task_id, push.owner, metadata=metadata,
                                 add_labels=[READY_LABEL] if self.still_ready(push) else [])

    def marked_ready(self, push: Push, marking: concurrent.futures.Future[task_model.Task | None],
                     now: float) -> bool:
        push.marking = None
        try:
            task = marking.result()
        except errors.TaskNotFound:
            push.done = True
            return True
        except errors.UserError as exc:  # the store is unreachable: marked at the next try
            push.tries += 1
            push.next_try = now + retry_after(push.tries)
            self.ledger.say_once(Told.PUSH_WAITS, f"{push.task_id}: not marked ready to merge yet (tried again in "
                                            f"{retry_after(push.tries):g} s): {exc}", f"{push.branch} store")
            return False
        push.done = True
        if task is None:
            self.ledger.say(f"{push.task_id}: {push.branch} is pushed but not marked ready to merge: its claim is "
                            f"no longer {push.owner}'s")
        else:
            # One that stopped being ready while the marking was written has the label off all the
            # same: the merge queue takes it off through the store thread, after the marking.
            self.marked[push.branch] = push.tip
        return True

    def under_way(self) -> list[concurrent.futures.Future[typing.Any]]:
        """The pushes and looks at the remote running now (a stop ends their git commands)."""
        return [*(push.pushing for push in self.pushes.values() if push.pushing is not None),
                *(future for *_, future in self.continuing)]

    def shutdown(self) -> None:
        self.thread.shutdown(wait=True)
