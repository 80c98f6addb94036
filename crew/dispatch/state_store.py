"""The dispatcher's state and its two files. The state changes one way, `change()`, which saves
what changed when the change is done: only the state store writes the state files."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from crew import config as configuration
from crew import files
from crew import workspace
from crew.dispatch import records
from crew.report import events


def state_files(config: configuration.Settings) -> tuple[files.StateFile[None], files.StateFile[None]]:
    """The two state files; each reads as None when it does not exist (records.load_state checks them)."""
    state, pending = workspace.DISPATCH_STATE_FILES
    return files.StateFile(config.root / state, None), files.StateFile(config.root / pending, None)


def read_state(config: configuration.Settings) -> records.DispatchState:
    """The recorded state, migrated if an earlier release wrote it; reading never writes."""
    state_file, pending_file = state_files(config)
    return records.load_state(state_file.read(), pending_file.read(), state_path=state_file.path,
                              pending_path=pending_file.path, default_actor=config.actor,
                              logs=config.root / events.LOGS_DIR)


class StateStore:
    """The state of one dispatcher. Only this run writes its files while it holds the
    dispatcher's lock, so what it last wrote is what is on disk."""

    def __init__(self, config: configuration.Settings):
        self.state_file, self.pending_file = state_files(config)
        self.state = read_state(config)
        # As last written by this run: an unchanged file is not written again. The state file is
        # written at the first change (in this release's format); the pending merges as read.
        self.saved_state: dict[str, Any] | None = None
        self.saved_pending: dict[str, Any] | None = self.state.pending_json()

    @contextlib.contextmanager
    def change(self) -> Iterator[records.DispatchState]:
        """Change the state in the block; each file whose content changed is written when it ends
        (atomically, and synced to disk: a few ms), the state file first. A block that raises
        writes nothing. A change a crash must see in a given order across the two files is made
        as two changes, in that order."""
        yield self.state
        if (state := self.state.state_json()) != self.saved_state:
            self.state_file.write(state)
            self.saved_state = state
        if (pending := self.state.pending_json()) != self.saved_pending:
            self.pending_file.write(pending)
            self.saved_pending = pending
