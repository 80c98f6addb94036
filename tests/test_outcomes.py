"""What a merge does to its task, decided without git or a store (outcomes.merged_fate)."""
from __future__ import annotations

import pytest

from crew.dispatch import outcomes
from crew.dispatch.outcomes import MergedFate
from crew.dispatch.records import Outcome


@pytest.mark.parametrize("outcome, status, fate", [
    (Outcome.CLOSE, "in_progress", MergedFate.CLOSE),
    (Outcome.CLOSE, "open", MergedFate.CLOSE),
    (Outcome.CLOSE, "closed", MergedFate.SETTLE),  # closed meanwhile: recorded merged, not closed twice
    (Outcome.RELEASE, "in_progress", MergedFate.RETRY),  # partial work merged: another attempt, maybe counted
    (Outcome.RELEASE, "open", MergedFate.KEEP),  # no longer held by this attempt: left as it is
    (Outcome.RELEASE, "closed", MergedFate.KEEP),
    (Outcome.RELEASE, "blocked", MergedFate.KEEP),
])
def test_a_merged_branch_closes_its_task_or_releases_it_only_while_the_attempt_holds_it(outcome, status, fate):
    assert outcomes.merged_fate(outcome, status) == fate
