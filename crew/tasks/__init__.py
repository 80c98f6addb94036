"""The task stores: choosing the configured one (the model is in crew.tasks.model)."""
from __future__ import annotations

import functools
import shutil

from crew import config as configuration
from crew import errors
from crew import workspace
from crew.tasks import bd_store
from crew.tasks import json_store
from crew.tasks import model


def open_task_store(config: configuration.Settings) -> model.TaskStore:
    """The configured backend; "auto" means bd when bd is installed and the repo has .beads/."""
    backend = config.task_backend
    if backend == "auto":
        backend = "bd" if shutil.which(config.bd_command) and (config.root / ".beads").is_dir() else "json"
    if backend == "json" and config.remote is not None:
        raise errors.UsageError(f"{config.source}: 'remote' needs the bd task store, which several machines share, "
                                f"and task_backend \"auto\" found no bd with a .beads/ folder in {config.root}")
    if backend == "bd":
        return bd_store.BdTaskStore(config.bd_command, config.root, config.actor, config.bd_timeout_secs)
    # A new id never names a task the dispatcher's records or branches still name.
    return json_store.JsonTaskStore(config.path("task_queue_file"), config.task_prefix, config.actor,
                                    functools.partial(workspace.ids_outside_the_store, config.root))
