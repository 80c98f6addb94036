"""What a run needs, checked before any worker starts; each failure is one line."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from crew import config as configuration
from crew import errors
from crew import git
from crew import llm
from crew import names as safe_names
from crew.dispatch import agent


def preflight(config: configuration.Settings) -> None:
    """Everything a worker needs, checked before any starts; each failure is one line."""
    if git.rev_parse(config.root, f"refs/heads/{config.main_branch}") is None:
        raise errors.UserError(f"the repository has no branch {config.main_branch!r} (set main_branch)")
    if config.remote is not None and config.remote not in git.git_out(config.root, "remote").splitlines():
        raise errors.UserError(f"the repository has no git remote {config.remote!r} (add it with git remote add, "
                               "or set remote to one `git remote` lists)")
    version = git.git_out(config.root, "version")
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if numbers < (2, 38):
        raise errors.UserError(f"{version} is too old: merging without a checkout needs git 2.38 or newer")
    if config.worker_command is None and not command_found(agent.AIDER_COMMAND[0], config.root):
        # Nothing in the configuration is wrong: the default agent is not installed.
        raise errors.UserError(f"the worker command {agent.AIDER_COMMAND[0]!r} was not found on PATH "
                               "(install Aider: pipx install aider-chat, or set worker_command)")
    commands = {"worker_command": config.worker_command, "merge_gate_command": config.merge_gate_command,
                "worktree_setup_command": config.worktree_setup_command, "notify_command": config.notify_command}
    for key, command in commands.items():
        if command and not command_found(command[0], config.root):
            where = "in the repository" if os.path.dirname(command[0]) else "on PATH"
            raise errors.UsageError(f"{key} {command[0]!r} was not found {where}")
    for ident in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT"):
        # git's own answer, so user.useConfigOnly, EMAIL and the GIT_* variables count as git counts them
        if git.git("var", ident, cwd=config.root, check=False).returncode != 0:
            raise errors.UserError("git has no identity to commit with (the dispatcher commits an agent's leftover "
                                   "work and its merges): set user.name and user.email with git config, or the "
                                   "GIT_AUTHOR_*/GIT_COMMITTER_* variables")
    followups = safe_names.check_repo_path(config.worker_followups_file)
    if git.git("check-ignore", "-q", "--", followups, cwd=config.root, check=False).returncode == 0:
        raise errors.UserError(f"{followups} is ignored by git, and Aider refuses to edit ignored files; "
                               "remove it from .gitignore / .git/info/exclude")
    if config.worker_instructions:
        agent.read_instructions(config)
    if config.worker_command is None:
        models = llm.LLMClient(config).available_models()
        if config.worker_model not in models and f"{config.worker_model}:latest" not in models:
            pull = f" (run `ollama pull {config.worker_model}`)" if config.llm_api == "ollama" else ""
            raise errors.UserError(f"model {config.worker_model!r} not found on {config.llm_url}{pull}")


def command_found(command: str, root: Path) -> bool:
    """A bare name is looked up on PATH; a path is relative to the worktree it runs in, which
    holds the repository's files as the main root does."""
    if os.path.dirname(command):
        return shutil.which(str(root / command)) is not None
    return shutil.which(command) is not None
