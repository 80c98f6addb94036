"""Speculative parallel gates as pure decisions (crew/dispatch/speculation.py): no git, no clock.

A speculative commit is written here as its parent and its entry joined by "+": "m+a+b" is main
"m" with a merged, then b, which makes each gate's stack readable in the assertions."""
from __future__ import annotations

import pytest

from crew.dispatch import speculation
from crew.dispatch.speculation import Entry, GateResult, GateStart, GateState


def gated(task_id: str, parent: str, result: GateResult = GateResult.GATING) -> Entry:
    return Entry(task_id, GateState(parent, f"{parent}+{task_id}", result))


def test_nothing_queued_nothing_to_do():
    assert speculation.plan([], "m", 4) == speculation.Plan()


def test_with_one_gate_only_the_first_entry_is_gated_on_main_as_today():
    decided = speculation.plan([Entry("a"), Entry("b"), Entry("c")], "m", 1)
    assert decided.start == [GateStart("a", None, ())]
    assert decided.waiting == {"b": speculation.WAITS_FOR_GATE, "c": speculation.WAITS_FOR_GATE}
    assert (decided.land, decided.fail, decided.cancel, decided.void) == (None, None, [], [])


def test_the_first_n_entries_are_gated_each_on_main_and_the_entries_ahead_of_it():
    decided = speculation.plan([Entry(task_id) for task_id in "abcde"], "m", 3)
    assert decided.start == [GateStart("a", None, ()), GateStart("b", "a", ("a",)),
                             GateStart("c", "b", ("a", "b"))]
    assert decided.waiting == {"d": speculation.WAITS_FOR_GATE, "e": speculation.WAITS_FOR_GATE}


def test_gates_still_running_on_stacks_that_hold_are_kept_and_use_up_the_gates():
    entries = [gated("a", "m"), gated("b", "m+a"), Entry("c"), Entry("d")]
    decided = speculation.plan(entries, "m", 3)
    assert decided.start == [GateStart("c", "b", ("a", "b"))]
    assert decided.cancel == [] and decided.waiting == {"d": speculation.WAITS_FOR_GATE}


def test_a_passed_gate_holds_no_gate_while_it_waits_to_land():
    entries = [gated("a", "m"), gated("b", "m+a", GateResult.PASSED), Entry("c")]
    decided = speculation.plan(entries, "m", 2)
    assert decided.land is None  # a is still gating: b lands only after it
    assert decided.start == [GateStart("c", "b", ("a", "b"))]


def test_only_the_first_entry_lands_once_its_gate_passed_on_main_as_it_is():
    entries = [gated("a", "m", GateResult.PASSED), gated("b", "m+a", GateResult.PASSED)]
    assert speculation.plan(entries, "m", 2).land == "a"
    # a landed: main is a's speculative commit, and b's stack still holds.
    assert speculation.plan(entries[1:], "m+a", 2) == speculation.Plan(land="b")


def test_a_failure_counts_only_once_every_entry_ahead_has_landed():
    entries = [gated("a", "m"), gated("b", "m+a", GateResult.FAILED)]
    decided = speculation.plan(entries, "m", 2)
    assert decided.fail is None and decided.waiting == {"b": speculation.WAITS_FOR_AHEAD}
    assert speculation.plan(entries[1:], "m+a", 2) == speculation.Plan(fail="b")


def test_a_failure_in_the_middle_regates_only_the_entries_behind_it_without_it():
    entries = [gated("a", "m"), gated("b", "m+a", GateResult.FAILED), gated("c", "m+a+b"),
               gated("d", "m+a+b+c", GateResult.PASSED), Entry("e")]
    decided = speculation.plan(entries, "m", 4)
    assert decided.cancel == ["c"] and decided.void == ["d"]  # a is unaffected
    assert decided.start == [GateStart("c", "a", ("a",)), GateStart("d", "c", ("a", "c")),
                             GateStart("e", "d", ("a", "c", "d"))]
    assert decided.waiting == {"b": speculation.WAITS_FOR_AHEAD}


def test_entries_behind_that_were_already_regated_without_the_failure_are_kept():
    entries = [gated("a", "m"), gated("b", "m+a", GateResult.FAILED), gated("c", "m+a"), gated("d", "m+a+c")]
    decided = speculation.plan(entries, "m", 3)
    assert (decided.start, decided.cancel, decided.void) == ([], [], [])


def test_when_the_first_entry_fails_the_entries_behind_are_regated_on_main():
    entries = [gated("a", "m", GateResult.FAILED), gated("b", "m+a"), gated("c", "m+a+b")]
    decided = speculation.plan(entries, "m", 2)
    assert decided.fail == "a"
    assert decided.cancel == ["b", "c"]
    assert decided.start == [GateStart("b", None, ()), GateStart("c", "b", ("b",))]


def test_a_failure_on_a_stack_whose_entry_ahead_failed_is_void_and_gated_again_without_it():
    # b failed with a in its stack; then a's failure counts and a leaves: b may have failed
    # because of a, so it is gated again on main.
    entries = [gated("b", "m+a", GateResult.FAILED), gated("c", "m+a")]
    decided = speculation.plan(entries, "m", 2)
    assert decided.fail is None and decided.void == ["b"] and decided.cancel == ["c"]
    assert decided.start == [GateStart("b", None, ()), GateStart("c", "b", ("b",))]


def test_main_moving_for_another_reason_rebuilds_every_stack():
    entries = [gated("a", "m", GateResult.PASSED), gated("b", "m+a"), gated("c", "m+a+b")]
    decided = speculation.plan(entries, "m2", 3)
    assert decided.land is None  # a passed on a main that is no longer there
    assert decided.void == ["a"] and decided.cancel == ["b", "c"]
    assert decided.start == [GateStart("a", None, ()), GateStart("b", "a", ("a",)), GateStart("c", "b", ("a", "b"))]


def test_with_one_gate_a_gate_on_a_main_that_moved_is_cancelled_and_gated_again():
    decided = speculation.plan([gated("a", "m"), Entry("b")], "m2", 1)
    assert decided.cancel == ["a"] and decided.start == [GateStart("a", None, ())]


def test_cancelled_gates_free_their_gates_for_the_new_stacks_and_the_rest_wait():
    entries = [gated("a", "m", GateResult.FAILED), gated("b", "m+a"), gated("c", "m+a+b"), Entry("d")]
    decided = speculation.plan(entries, "m", 2)
    assert decided.start == [GateStart("b", None, ()), GateStart("c", "b", ("b",))]
    assert decided.waiting == {"d": speculation.WAITS_FOR_GATE}


def test_no_gate_goes_to_an_entry_behind_one_that_waits_for_a_gate():
    # d's stack holds on its own, but c (ahead of it, in its stack) must be gated first.
    entries = [gated("a", "m"), gated("b", "m+a"), Entry("c"), gated("d", "m+a+b")]
    decided = speculation.plan(entries, "m", 2)
    assert decided.start == [] and decided.cancel == ["d"]
    assert decided.waiting == {"c": speculation.WAITS_FOR_GATE, "d": speculation.WAITS_FOR_GATE}


def test_an_entry_that_conflicts_with_the_stack_but_not_main_waits_out_of_the_stacks():
    entries = [gated("a", "m"), Entry("b", conflicts_with_stack=True), gated("c", "m+a")]
    decided = speculation.plan(entries, "m", 3)
    assert decided.waiting == {"b": speculation.CONFLICTS_WITH_STACK}
    assert (decided.start, decided.cancel) == ([], [])
    # a landed: b is first, and is judged against main like any entry; c is gated again behind it.
    decided = speculation.plan(entries[1:], "m+a", 3)
    assert decided.start == [GateStart("b", None, ()), GateStart("c", "b", ("b",))]
    assert decided.cancel == ["c"]


@pytest.mark.parametrize("parallelism", [1, 2, 3, 8])
def test_more_gates_than_parallelism_never_run(parallelism):
    entries = [Entry(str(n)) for n in range(6)]
    assert len(speculation.plan(entries, "m", parallelism).start) == min(parallelism, 6)


# A queue run to its end: each step, the plan is carried out, and gates end with the outcome the
# test gives each entry (which may depend on the stack the gate saw).

def run_queue(task_ids, parallelism, fails, finish_order=None):
    """(main's history of commits, every stack each entry was gated on, failures counted).
    fails(task_id, commit) says whether a gate fails; finish_order: which running gate ends
    first (default: the first one running)."""
    queue = [Entry(task_id) for task_id in task_ids]
    main, history, seen, counted = "m", ["m"], {task_id: [] for task_id in task_ids}, []
    for _ in range(200):
        decided = speculation.plan(queue, main, parallelism)
        by_id = {entry.task_id: entry for entry in queue}
        for task_id in decided.cancel + decided.void:
            by_id[task_id] = Entry(task_id)
        if decided.land:
            main = by_id[decided.land].gate.commit
            history.append(main)
            queue = [by_id[e.task_id] for e in queue if e.task_id != decided.land]
            continue
        if decided.fail:
            counted.append(decided.fail)
            queue = [by_id[e.task_id] for e in queue if e.task_id != decided.fail]
            continue
        commits = {}
        for start in decided.start:
            parent = main if start.onto is None else commits.get(start.onto) or by_id[start.onto].gate.commit
            commits[start.task_id] = f"{parent}+{start.task_id}"
            by_id[start.task_id] = Entry(start.task_id, GateState(parent, commits[start.task_id]))
            seen[start.task_id].append(commits[start.task_id])
            assert commits[start.task_id] == "+".join(("m", *[t for t in history[-1].split("+")[1:]],
                                                       *start.stack, start.task_id))
        queue = [by_id[e.task_id] for e in queue]
        if not queue:
            return history, seen, counted
        running = [entry for entry in queue if entry.gate and entry.gate.result is GateResult.GATING]
        assert 0 < len(running) <= parallelism
        ending = (finish_order or (lambda gates: gates[0]))(running)
        result = GateResult.FAILED if fails(ending.task_id, ending.gate.commit) else GateResult.PASSED
        queue = [Entry(e.task_id, GateState(e.gate.parent, e.gate.commit, result)) if e is ending else e
                 for e in queue]
    raise AssertionError("the queue never emptied")


@pytest.mark.parametrize("parallelism", [1, 2, 4])
def test_all_passing_land_in_order_each_gated_once_on_main_and_the_entries_ahead(parallelism):
    history, seen, counted = run_queue("abcdefgh", parallelism, lambda task_id, commit: False)
    assert history[-1] == "m+a+b+c+d+e+f+g+h" and counted == []
    assert history == ["m+a+b+c+d+e+f+g+h"[:1 + 2 * n] for n in range(9)]  # one entry a step, in order
    assert seen == {task_id: [history[n + 1]] for n, task_id in enumerate("abcdefgh")}


@pytest.mark.parametrize("parallelism", [1, 2, 4])
@pytest.mark.parametrize("last_first", [False, True])
def test_a_failing_entry_never_reaches_main_and_the_others_all_land(parallelism, last_first):
    finish = (lambda gates: gates[-1]) if last_first else None
    history, seen, counted = run_queue("abcdefgh", parallelism, lambda task_id, commit: task_id == "c", finish)
    assert counted == ["c"]
    assert history[-1] == "m+a+b+d+e+f+g+h"
    assert not any("+c" in commit for commit in history)
    # Entries ahead of the failure were gated once; c's failure is counted on main as it is.
    assert seen["a"] == ["m+a"] and seen["b"] == ["m+a+b"] and seen["c"][-1] == "m+a+b+c"


def test_a_failure_caused_by_an_entry_ahead_is_retried_without_it():
    # d fails whenever b is in its stack; b itself fails: d is gated again without b and lands.
    history, _, counted = run_queue("abcd", 4, lambda task_id, commit: task_id == "b" or "+b+" in commit,
                                    lambda gates: gates[-1])
    assert counted == ["b"] and history[-1] == "m+a+c+d"
