"""dispatch_config.json: found, validated and completed."""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import socket
from pathlib import Path
from typing import Any

import git as gitpython

from crew import errors


TOOLKIT_DIR = Path(__file__).resolve().parent.parent  # where the scripts and the shipped config are
CONFIG_FILE_NAME = "dispatch_config.json"


@dataclasses.dataclass
class Config:
    """Every key of dispatch_config.json, as the file has it. None means "computed": resolve_config
    fills it in, in the Settings a command runs with."""

    repo_path: str | None = None
    main_branch: str = "main"
    remote: str | None = None  # a git remote's name: several dispatchers share main through it
    task_backend: str = "auto"
    bd_command: str = "bd"
    bd_timeout_secs: float = 120
    task_queue_file: str = "task_queue.json"
    task_prefix: str | None = None
    suggested_tasks_file: str = "suggested_tasks.txt"
    # LLM
    llm_api: str = "ollama"
    llm_url: str | None = None
    llm_model: str = "qwen2.5-coder:7b"
    llm_timeout_secs: float = 300
    llm_retries: int = 2
    llm_temperature: float = 0
    llm_keep_alive: str = "10m"
    llm_num_ctx: int = 8192
    llm_max_tokens: int = 4096
    prompt_max_files: int = 300
    # Dispatcher
    max_workers: int = 2
    max_waiting_merges: int | None = None  # None: twice the workers; 0: no bound
    poll_interval_secs: float = 2
    actor: str | None = None
    avoid_file_overlap: bool = True
    breaker_failures: int = 3
    breaker_pause_secs: float = 300
    lease_heartbeat_secs: float = 60
    reclaim_interval_secs: float = 120
    reclaim_after_secs: float = 600  # bd's own grace: twice its 5-minute lease
    branch_template: str = "work/{task_id}"
    worktree_root: str | None = None
    worktree_setup_command: list[str] | None = None
    worktree_setup_timeout_secs: float = 600
    worker_command: list[str] | None = None
    worker_model: str | None = None
    worker_instructions: str | None = None
    worker_followups_file: str = "followups.txt"
    worker_map_tokens: int = 1024
    worker_edit_format: str | None = None
    worker_timeout_secs: float = 1800
    worker_kill_grace_secs: float = 10
    git_hook_timeout_secs: float = 600
    commit_leftover_changes: bool = True
    auto_ingest_suggestions: bool = True
    max_attempts: int = 2
    delete_merged_branches: bool = True
    # Merge queue
    merge_slot: bool | None = None  # None: with a remote, none (measured: see README); else the lock file
    merge_gate_command: list[str] | None = None
    merge_gate_timeout_secs: float = 900
    merge_gate_parallelism: int = 1
    main_recheck_secs: float = 300
    on_conflict: str = "assign_back"
    auto_retry_merge_on_conflict_close: bool = True
    max_merge_retries: int = 3
    review: str = "none"
    # A person told
    notify_command: list[str] | None = None
    notify_timeout_secs: float = 10

    # Where the file was read from, never read from the file.
    source: str = dataclasses.field(default="defaults", repr=False)


@dataclasses.dataclass
class Settings(Config):
    """The configuration a command runs with: the file as read, every computed default filled in
    by resolve_config, so none of these is None, and the main working tree's root."""

    task_prefix: str = ""
    llm_url: str = ""
    actor: str = ""
    merge_slot: bool = True
    worker_model: str = ""
    # The file's text, resolved to the folder it names: a Settings is never handed on as the file.
    worktree_root: Path = Path()  # type: ignore[assignment]
    root: Path = dataclasses.field(default=Path(), repr=False)

    def path(self, name: str) -> Path:
        """A toolkit file: relative names live in the main working tree's root."""
        file_name: str = getattr(self, name)
        return self.root / file_name


CHOICES = {
    "task_backend": ("auto", "bd", "json"),
    "llm_api": ("ollama", "openai"),
    "on_conflict": ("assign_back", "auto_rebase"),
    "review": ("none", "all", "labelled"),
    # Aider 0.86's edit formats: how the model's reply must carry its edits.
    "worker_edit_format": ("whole", "diff", "diff-fenced", "udiff", "udiff-simple", "patch"),
}
_INTERNAL_FIELDS = {"source"}
CONFIG_KEYS = [f for f in dataclasses.fields(Config) if f.name not in _INTERNAL_FIELDS]


def _type_ok(value: Any, annotation: str) -> bool:
    if value is None:
        return "None" in annotation
    if annotation.startswith("bool"):
        return isinstance(value, bool)
    if annotation.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation.startswith("float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation.startswith("str"):
        return isinstance(value, str)
    if annotation.startswith("list[str]"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    raise AssertionError(annotation)


def _type_name(annotation: str) -> str:
    base = annotation.split(" | ")[0]
    return {"list[str]": "a list of strings", "str": "a string", "int": "a whole number",
            "float": "a number", "bool": "true or false"}[base] + (" or null" if "None" in annotation else "")


# Numbers for which 0 makes no sense (no worker, a busy loop, a timeout that fires at once,
# a task blocked before its first attempt); every other number only has to be 0 or more.
POSITIVE_KEYS = {"max_workers", "poll_interval_secs", "llm_timeout_secs", "llm_num_ctx", "llm_max_tokens",
                 "prompt_max_files",
                 "breaker_failures", "max_attempts", "merge_gate_timeout_secs", "merge_gate_parallelism",
                 "worktree_setup_timeout_secs", "git_hook_timeout_secs", "main_recheck_secs", "notify_timeout_secs",
                 "lease_heartbeat_secs", "bd_timeout_secs"}
# Upper bounds: bd 1.3.0's lease on a claim lasts 5 minutes, and no setting changes it; a claim is
# renewed at least three times a lease, so one renewal lost to a slow store does not lose it.
AT_MOST = {"lease_heartbeat_secs": (100, "a third of bd's 5-minute lease on a claim")}


def _check_range(key: str, value: float, source: str) -> None:
    if not math.isfinite(value):  # json.loads accepts NaN and Infinity
        raise errors.UsageError(f"{source}: {key!r} must be a finite number, got {value}")
    if key in POSITIVE_KEYS and value <= 0:
        raise errors.UsageError(f"{source}: {key!r} must be more than 0, got {value}")
    if value < 0:
        raise errors.UsageError(f"{source}: {key!r} must not be negative, got {value}")
    if key in AT_MOST and value > (most := AT_MOST[key])[0]:
        raise errors.UsageError(f"{source}: {key!r} must be at most {most[0]} ({most[1]}), got {value}")


def parse_config(text: str, source: str) -> Config:
    """Validate a config file's text; every problem is a UsageError naming the key."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.UsageError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise errors.UsageError(f"{source}: must be a JSON object of settings")
    known = {f.name: f for f in CONFIG_KEYS}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise errors.UsageError(f"{source}: unknown key {key!r}{hint}")
        annotation = str(known[key].type)  # the annotation's text: annotations are not evaluated here
        if not _type_ok(value, annotation):
            raise errors.UsageError(f"{source}: {key!r} must be {_type_name(annotation)}, got {json.dumps(value)}")
        if key in CHOICES and value is not None and value not in CHOICES[key]:
            raise errors.UsageError(f"{source}: {key!r} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_range(key, value, source)
    data.pop("root", None)
    config = Config(**data, source=source)
    check_remote(config)
    return config


def check_remote(config: Config) -> None:
    """Several dispatchers share their tasks through bd (one Dolt server) and main through the
    remote: a JSON task file is one machine's."""
    if config.remote is None:
        return
    if not config.remote or config.remote.startswith("-") or not config.remote.isprintable():
        raise errors.UsageError(f"{config.source}: 'remote' must be the name of a git remote, got {config.remote!r}")
    if config.task_backend == "json":
        raise errors.UsageError(f"{config.source}: 'remote' needs the bd task store, which several machines share "
                                "(task_backend is \"json\", one machine's file): set task_backend to \"bd\"")


def find_main_root(start: Path) -> Path:
    """The main working tree of the repository containing `start` (also from a linked worktree)."""
    try:
        repo = gitpython.Repo(start, search_parent_directories=True)
    except (gitpython.InvalidGitRepositoryError, gitpython.NoSuchPathError):
        raise errors.UserError(f"{start} is not inside a git repository (cd into one, or set repo_path)") from None
    common_dir = Path(repo.common_dir).resolve()
    if repo.bare or common_dir.name != ".git":
        raise errors.UserError(f"{start}: bare or unusual repositories are not supported (git dir {common_dir})")
    return common_dir.parent


def default_llm_url() -> str:
    """OLLAMA_HOST as Ollama reads it: maybe without a scheme, maybe the bind-all address."""
    host = os.environ.get("OLLAMA_HOST", "").strip()
    if not host:
        return "http://127.0.0.1:11434"
    if "://" not in host:
        host = "http://" + host
    scheme, rest = host.split("://", 1)
    hostport = rest.split("/", 1)[0]
    if hostport.startswith(("0.0.0.0", "[::]")):
        hostport = "127.0.0.1" + hostport[len("0.0.0.0") if hostport.startswith("0.0.0.0") else 4:]
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport += ":11434"
    return f"{scheme}://{hostport}"


def load_config(config_path: str | None, cwd: Path | None = None) -> Settings:
    """Find, parse and complete the configuration (see README, "Configuration")."""
    cwd = Path(cwd or Path.cwd())
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise errors.UsageError(f"config file not found: {path}")
        config = parse_config(path.read_text(encoding="utf-8"), str(path))
        return resolve_config(config, cwd)
    try:
        root = find_main_root(cwd)
    except errors.UserError:
        root = None
    for candidate in ([root / CONFIG_FILE_NAME] if root else []) + [TOOLKIT_DIR / CONFIG_FILE_NAME]:
        if candidate.is_file():
            config = parse_config(candidate.read_text(encoding="utf-8"), str(candidate))
            return resolve_config(config, cwd)
    return resolve_config(Config(), cwd)


def resolve_config(config: Config, cwd: Path) -> Settings:
    """The settings: the computed defaults filled in. Nothing is written: each command that writes
    keeps the toolkit's files out of `git status` itself (workspace.exclude_toolkit_files)."""
    base = Path(config.source).parent if config.source != "defaults" else cwd
    start = (base / config.repo_path) if config.repo_path else cwd
    root = find_main_root(start.resolve())
    as_read = {field.name: getattr(config, field.name) for field in dataclasses.fields(Config)}
    settings = Settings(**{
        **as_read, "root": root,
        "task_prefix": config.task_prefix or re.sub(r"[^A-Za-z0-9]+", "-", root.name).strip("-").lower() or "task",
        "llm_url": (config.llm_url or default_llm_url()).rstrip("/"),
        "actor": config.actor or f"dispatch@{socket.gethostname()}",
        "worker_model": config.worker_model or config.llm_model,
        # Measured on three hosts (scripts/bench_hosts.py, README's Performance): bd's slot wastes
        # no gate, but racing compare-and-swap pushes landed more branches a minute.
        "merge_slot": config.merge_slot if config.merge_slot is not None else config.remote is None,
        "worktree_root": (root / config.worktree_root if config.worktree_root
                          else root.parent / f"{root.name}.worktrees")})
    check_worktree_root(settings)
    return settings


def check_worktree_root(config: Settings) -> None:
    """Worktrees need a folder of their own: inside the repository git would see them as files,
    and the repository (or a folder holding it) is not the dispatcher's to clean up."""
    folder = config.worktree_root.resolve()
    where = ("the repository itself" if folder == config.root else
             "inside the repository" if config.root in folder.parents else
             "a folder that contains the repository" if folder in config.root.parents else None)
    if where:
        raise errors.UsageError(f"{config.source}: worktree_root {folder} is {where}; "
                                f"use a folder of its own outside it (default: {config.root.name}.worktrees beside it)")
