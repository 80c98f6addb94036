"""What the toolkit's scripts share: errors, running commands, config, state files, tasks, LLM, git.

Read top to bottom: each section only uses the ones above it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import difflib
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import filelock
import requests
import git as gitpython

TOOLKIT_DIR = Path(__file__).resolve().parent
IS_WINDOWS = os.name == "nt"

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class UserError(Exception):
    """Something the user must fix: printed as one line, exit 1."""

    exit_code = 1


class UsageError(UserError):
    """Bad command line or bad configuration: exit 2."""

    exit_code = 2


class CommandError(UserError):
    """A command failed. Carries everything needed to report it."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str,
                 message: str | None = None):
        self.argv, self.returncode, self.stdout, self.stderr = list(argv), returncode, stdout, stderr
        if message is None:
            lines = (stderr.strip() or stdout.strip()).splitlines()
            message = lines[-1] if lines else "no output"
        super().__init__(f"`{' '.join(self.argv[:4])}{' ...' if len(self.argv) > 4 else ''}` "
                         f"failed (exit {returncode}): {message}")


class GitError(CommandError):
    pass


class TaskNotFound(UserError):
    """The store has no task with that id (it may have been deleted while something referred to it)."""


class BdError(CommandError):
    pass


def run_main(main_func, argv: Sequence[str] | None) -> int:
    """The one wrapper around each script's main: user errors become one line on stderr."""
    try:
        return main_func(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


# --------------------------------------------------------------------------------------------
# Running commands
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(*argv: str | os.PathLike, cwd: str | os.PathLike | None = None, check: bool = True,
        timeout: float | None = None, env: dict[str, str] | None = None,
        error: type[CommandError] = CommandError) -> Completed:
    """Run one command from an argument list (never a shell), capturing text output as UTF-8."""
    args = [os.fspath(a) for a in argv]
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, encoding="utf-8",
                              errors="replace", timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise error(args, None, "", "", f"command not found: {args[0]}") from None
    except subprocess.TimeoutExpired:
        raise error(args, None, "", "", f"timed out after {timeout} s") from None
    result = Completed(args, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise error(args, proc.returncode, proc.stdout, proc.stderr)
    return result


@functools.cache
def repository_variables() -> frozenset[str]:
    """The variables that tie git to one repository (GIT_DIR, GIT_INDEX_FILE, ...), as git itself
    lists them. Set by a caller such as a git hook, they would send every call to that repository."""
    listed = subprocess.run(["git", "rev-parse", "--local-env-vars"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, check=False).stdout
    return frozenset(listed.split())


def child_environment() -> dict[str, str]:
    """The environment for git and for the processes that work in our worktrees (agents, gates):
    the caller's, less the variables that would point them at another repository. Identity and
    config variables (GIT_AUTHOR_*, GIT_CONFIG_GLOBAL) stay."""
    hidden = repository_variables()
    return {k: v for k, v in os.environ.items() if k not in hidden}


def git(*args: str | os.PathLike, cwd: str | os.PathLike, check: bool = True,
        env: dict[str, str] | None = None) -> Completed:
    # LC_ALL=C: the code reads git's messages, which a German or French locale would translate.
    env = {**(env if env is not None else child_environment()), "LC_ALL": "C"}
    return run("git", *args, cwd=cwd, check=check, env=env, error=GitError)


_failpoint_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Test-only: exit at once, as if killed, when DISPATCH_FAILPOINT names this step
    ("step", or "step:N" for the Nth time this process reaches it)."""
    wanted, _, nth = os.environ.get("DISPATCH_FAILPOINT", "").partition(":")
    if wanted == name:
        _failpoint_hits[name] = _failpoint_hits.get(name, 0) + 1
        if _failpoint_hits[name] == int(nth or 1):
            os._exit(77)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

CONFIG_FILE_NAME = "dispatch_config.json"


@dataclasses.dataclass
class Config:
    """Every key of dispatch_config.json. None means "computed" (see resolve_config)."""

    repo_path: str | None = None
    main_branch: str = "main"
    task_backend: str = "auto"
    bd_command: str = "bd"
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
    poll_interval_secs: float = 2
    actor: str | None = None
    avoid_file_overlap: bool = True
    breaker_failures: int = 3
    breaker_pause_secs: float = 300
    branch_template: str = "work/{task_id}"
    worktree_root: str | None = None
    worktree_setup_command: list[str] | None = None
    worktree_setup_timeout_secs: float = 600
    worker_command: list[str] | None = None
    worker_model: str | None = None
    worker_instructions: str | None = None
    worker_followups_file: str = "followups.txt"
    worker_timeout_secs: float = 1800
    worker_kill_grace_secs: float = 10
    commit_leftover_changes: bool = True
    auto_ingest_suggestions: bool = True
    max_attempts: int = 2
    delete_merged_branches: bool = True
    # Merge queue
    merge_slot: bool = True
    merge_gate_command: list[str] | None = None
    merge_gate_timeout_secs: float = 900
    on_conflict: str = "assign_back"
    auto_retry_merge_on_conflict_close: bool = True
    max_merge_retries: int = 3

    # Filled in by resolve_config, never read from the file.
    root: Path = dataclasses.field(default=Path("."), repr=False)
    source: str = dataclasses.field(default="defaults", repr=False)

    def path(self, name: str) -> Path:
        """A toolkit file: relative names live in the main working tree's root."""
        return self.root / getattr(self, name)


CHOICES = {
    "task_backend": ("auto", "bd", "json"),
    "llm_api": ("ollama", "openai"),
    "on_conflict": ("assign_back", "auto_rebase"),
}
_INTERNAL_FIELDS = {"root", "source"}
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
                 "breaker_failures", "max_attempts", "merge_gate_timeout_secs", "worktree_setup_timeout_secs"}


def _check_range(key: str, value: float, source: str) -> None:
    if not math.isfinite(value):  # json.loads accepts NaN and Infinity
        raise UsageError(f"{source}: {key!r} must be a finite number, got {value}")
    if key in POSITIVE_KEYS and value <= 0:
        raise UsageError(f"{source}: {key!r} must be more than 0, got {value}")
    if value < 0:
        raise UsageError(f"{source}: {key!r} must not be negative, got {value}")


def parse_config(text: str, source: str) -> Config:
    """Validate a config file's text; every problem is a UsageError naming the key."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{source}: must be a JSON object of settings")
    known = {f.name: f for f in CONFIG_KEYS}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{source}: unknown key {key!r}{hint}")
        annotation = known[key].type
        if not _type_ok(value, annotation):
            raise UsageError(f"{source}: {key!r} must be {_type_name(annotation)}, got {json.dumps(value)}")
        if key in CHOICES and value not in CHOICES[key]:
            raise UsageError(f"{source}: {key!r} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_range(key, value, source)
    data.pop("root", None)
    return Config(**data, source=source)


def find_main_root(start: Path) -> Path:
    """The main working tree of the repository containing `start` (also from a linked worktree)."""
    try:
        repo = gitpython.Repo(start, search_parent_directories=True)
    except (gitpython.InvalidGitRepositoryError, gitpython.NoSuchPathError):
        raise UserError(f"{start} is not inside a git repository (cd into one, or set repo_path)") from None
    common_dir = Path(repo.common_dir).resolve()
    if repo.bare or common_dir.name != ".git":
        raise UserError(f"{start}: bare or unusual repositories are not supported (git dir {common_dir})")
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
    if hostport.startswith("0.0.0.0") or hostport.startswith("[::]"):
        hostport = "127.0.0.1" + hostport[len("0.0.0.0") if hostport.startswith("0.0.0.0") else 4:]
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport += ":11434"
    return f"{scheme}://{hostport}"


def load_config(config_path: str | None, cwd: Path | None = None) -> Config:
    """Find, parse and complete the configuration (see README, "Configuration")."""
    cwd = Path(cwd or Path.cwd())
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise UsageError(f"config file not found: {path}")
        config = parse_config(path.read_text(encoding="utf-8"), str(path))
        return resolve_config(config, cwd)
    try:
        root = find_main_root(cwd)
    except UserError:
        root = None
    for candidate in ([root / CONFIG_FILE_NAME] if root else []) + [TOOLKIT_DIR / CONFIG_FILE_NAME]:
        if candidate.is_file():
            config = parse_config(candidate.read_text(encoding="utf-8"), str(candidate))
            return resolve_config(config, cwd)
    return resolve_config(Config(), cwd)


def resolve_config(config: Config, cwd: Path) -> Config:
    """Fill in the computed defaults and make the repository ready for the toolkit's files."""
    base = Path(config.source).parent if config.source != "defaults" else cwd
    start = (base / config.repo_path) if config.repo_path else cwd
    config.root = find_main_root(start.resolve())
    config.task_prefix = config.task_prefix or re.sub(r"[^A-Za-z0-9]+", "-", config.root.name).strip("-").lower() or "task"
    config.llm_url = (config.llm_url or default_llm_url()).rstrip("/")
    config.actor = config.actor or f"dispatch@{socket.gethostname()}"
    config.worker_model = config.worker_model or config.llm_model
    config.worktree_root = str((config.root / config.worktree_root) if config.worktree_root
                               else config.root.parent / f"{config.root.name}.worktrees")
    check_worktree_root(config)
    exclude_toolkit_files(config)
    return config


def check_worktree_root(config: Config) -> None:
    """Worktrees need a folder of their own: inside the repository git would see them as files,
    and the repository (or a folder holding it) is not the dispatcher's to clean up."""
    folder = Path(config.worktree_root).resolve()
    where = ("the repository itself" if folder == config.root else
             "inside the repository" if config.root in folder.parents else
             "a folder that contains the repository" if folder in config.root.parents else None)
    if where:
        raise UsageError(f"{config.source}: worktree_root {folder} is {where}; "
                         f"use a folder of its own outside it (default: {config.root.name}.worktrees beside it)")


def exclude_toolkit_files(config: Config) -> None:
    """Keep the toolkit's files out of `git status` for every worktree (never edits .gitignore)."""
    names = [config.task_queue_file, config.task_queue_file + ".lock", config.suggested_tasks_file,
             config.suggested_tasks_file + ".ingesting", rejected_suggestions_name(config.suggested_tasks_file),
             ".dispatch.lock", ".dispatch_*", ".current_task.txt", ".aider*"]
    # The temp files that atomic_write_text writes beside the state files, for a moment.
    names += [temp_file_name(n, "*") for n in (config.task_queue_file, ".dispatch_*")]
    patterns = ["/" + n if "/" not in n.strip("/") and not n.startswith(".") else n for n in names]
    exclude = config.root / ".git" / "info" / "exclude"
    existing = exclude.read_text(encoding="utf-8").splitlines() if exclude.exists() else []
    missing = [p for p in patterns if p not in existing]
    if missing:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with locked(exclude.with_name("exclude.dispatch.lock"), "git exclude file"):
            existing = exclude.read_text(encoding="utf-8").splitlines() if exclude.exists() else []
            lines = existing + ["# dispatch toolkit files"] * (not existing or existing[-1] != "# dispatch toolkit files") + \
                [p for p in patterns if p not in existing]
            atomic_write_text(exclude, "\n".join(lines) + "\n")


def rejected_suggestions_name(suggested: str) -> str:
    path = PurePosixPath(suggested)
    return str(path.with_name(f"{path.stem}.rejected{path.suffix or '.txt'}"))


# --------------------------------------------------------------------------------------------
# State files: locks and atomic writes
# --------------------------------------------------------------------------------------------

LOCK_NOTICE_SECS = 2.0


@contextlib.contextmanager
def locked(path: Path, what: str, timeout: float = -1) -> Iterator[None]:
    """Hold a file lock; say so on stderr when another process keeps us waiting."""
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=LOCK_NOTICE_SECS if timeout < 0 or timeout > LOCK_NOTICE_SECS else timeout)
    except filelock.Timeout:
        if 0 <= timeout <= LOCK_NOTICE_SECS:
            raise
        print(f"waiting for the {what} lock ({path}), held by another process...", file=sys.stderr)
        lock.acquire(timeout=timeout if timeout < 0 else timeout - LOCK_NOTICE_SECS)
    try:
        yield
    finally:
        lock.release()


def temp_file_name(name: str, pid: int | str) -> str:
    """Where atomic_write_text writes `name` first (the same folder, so os.replace is atomic)."""
    path = PurePosixPath(name)
    return str(path.with_name(f".{path.name}.{pid}.tmp"))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a temp file beside `path`, then os.replace: readers see the old or the new file."""
    tmp = path.with_name(temp_file_name(path.name, os.getpid()))
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:  # a full disk, typically: the file itself was never touched
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    for attempt in range(20):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            # Windows refuses while another process has the target open: it is brief.
            if attempt == 19:
                tmp.unlink(missing_ok=True)
                raise
            time.sleep(0.05)


def append_text(path: Path, text: str) -> None:
    """Append to a log-like file (events, collected follow-ups) in one write, so concurrent
    appenders never interleave; a full disk is one line naming it, and no half line is left."""
    data = text.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        start = os.fstat(fd).st_size
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as exc:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size <= start + len(data):  # only our own part was written: take it back
                os.ftruncate(fd, start)
        raise write_error(path, exc) from None
    finally:
        os.close(fd)


def write_error(path: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write {path}: {exc.strerror or exc}; the files written before are intact, "
                     "free some space and run again")


def read_json_file(path: Path, default: Any) -> Any:
    """A state file's content; a missing file is `default`, a corrupt one is an error naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; fix or move it (it was left untouched)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is corrupt (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                        "fix or move it (it was left untouched)") from None


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------------------
# Untrusted text: paths and titles
# --------------------------------------------------------------------------------------------

# cmd.exe treats these specially; a file name with one could escape into a command line.
_CMD_SPECIAL = set('&|<>^%"') | {chr(c) for c in range(32)} | {"\x7f"}


def check_repo_path(raw: str) -> str:
    """A relative file path inside the repository, normalized, or a UserError naming the problem."""
    text = raw.strip().replace("\\", "/")
    if not text:
        raise UserError("empty file path")
    if bad := sorted(set(text) & _CMD_SPECIAL):
        raise UserError(f"file path {raw!r} contains the character {bad[0]!r}")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise UserError(f"file path {raw!r} is absolute; give a path relative to the repository")
    parts = [p for p in PurePosixPath(text).parts if p != "."]
    if not parts:
        raise UserError(f"file path {raw!r} names no file")
    if ".." in parts:
        raise UserError(f"file path {raw!r} leaves the repository (..)")
    if parts[0].lower() == ".git":
        raise UserError(f"file path {raw!r} is inside .git")
    if any(p.startswith("-") for p in parts):
        raise UserError(f"file path {raw!r} begins with '-' (it would become a command-line option)")
    return "/".join(parts)


def normalize_title(title: str) -> str:
    """For duplicate detection: case and whitespace folded."""
    return " ".join(title.split()).casefold()


def cut_at_word(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0]
    return (cut if len(cut) >= limit // 2 else text[:limit]).rstrip()


# --------------------------------------------------------------------------------------------
# Tasks: one model, two stores
# --------------------------------------------------------------------------------------------

BLOCKING_DEP_TYPES = ("blocks", "conditional-blocks", "waits-for")
FILE_LABEL = "file:"
SUGGESTION_LABEL = "suggestion:"


@dataclasses.dataclass
class Task:
    id: str
    title: str
    description: str = ""
    status: str = "open"
    priority: int = 2
    issue_type: str = "task"
    labels: list[str] = dataclasses.field(default_factory=list)
    assignee: str = ""
    dependencies: list[dict] = dataclasses.field(default_factory=list)
    created_at: str = ""
    updated_at: str = ""
    closed_at: str = ""
    close_reason: str = ""
    notes: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> "Task":
        """From a task_queue.json entry or any bd output shape (list edges or show's linked issues)."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not isinstance(data.get("title"), str):
            raise ValueError("a task needs a string 'id' and 'title'")
        deps = []
        for dep in data.get("dependencies") or []:
            target = dep.get("depends_on_id") or dep.get("id")
            kind = dep.get("type") or dep.get("dependency_type") or "blocks"
            if target:
                deps.append({"depends_on_id": target, "type": kind})
        priority = data.get("priority", 2)
        return cls(
            id=data["id"], title=data["title"], description=data.get("description") or "",
            status=data.get("status") or "open",
            priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else 2,
            issue_type=data.get("issue_type") or "task", labels=list(data.get("labels") or []),
            assignee=data.get("assignee") or "", dependencies=deps,
            created_at=data.get("created_at") or "", updated_at=data.get("updated_at") or "",
            closed_at=data.get("closed_at") or "", close_reason=data.get("close_reason") or "",
            notes=data.get("notes") or "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def files(self) -> list[str]:
        return [label[len(FILE_LABEL):] for label in self.labels if label.startswith(FILE_LABEL)]

    def deps_of(self, *types: str) -> list[str]:
        return [d["depends_on_id"] for d in self.dependencies if d["type"] in types]


@dataclasses.dataclass
class NewTask:
    """What a caller gives to create a task. `deps` are (type, id) pairs, read the way
    `bd create --deps type:id` reads them: "blocks:ID" is reversed (the new task blocks ID)."""

    title: str
    description: str = ""
    priority: int = 2
    issue_type: str = "task"
    labels: Sequence[str] = ()
    deps: Sequence[tuple[str, str]] = ()


class PartialCreateError(UserError):
    """Creating several tasks failed part-way: says which were created."""

    def __init__(self, created: list[Task], cause: Exception):
        self.created = created
        ids = ", ".join(t.id for t in created) or "none"
        super().__init__(f"{cause} (tasks created before the failure: {ids})")


def _open_blockers(entry: dict, by_id: dict[str, dict]) -> list[str]:
    """The tasks that block this one and are not closed (a dangling reference never blocks:
    it could never be closed)."""
    return [dep["depends_on_id"] for dep in entry.get("dependencies") or ()
            if dep.get("type", "blocks") in BLOCKING_DEP_TYPES and dep.get("depends_on_id") in by_id
            and by_id[dep["depends_on_id"]].get("status", "open") != "closed"]


def _normalize_entry(entry: dict) -> str | None:
    """Bring a hand-written task to the normal form the store writes (README, "task_queue.json"):
    null means "not given", a priority may be a digit in a string, a dependency may be a bare id.
    Returns what cannot be read that way."""
    for key in ("status", "priority", "created_at", "dependencies"):
        if key in entry and entry[key] is None:
            del entry[key]
    priority = entry.get("priority", 2)
    if isinstance(priority, str) and priority.strip() in ("0", "1", "2", "3", "4"):
        entry["priority"] = priority = int(priority)
    if not (type(priority) is int and 0 <= priority <= 4):
        return f"\"priority\" must be 0-4 (0 highest), got {json.dumps(priority)}"
    for key in ("status", "created_at"):
        if not isinstance(entry.get(key, ""), str):
            return f"\"{key}\" must be a string, got {json.dumps(entry[key])}"
    deps = entry.get("dependencies", [])
    if not isinstance(deps, list):
        return f"\"dependencies\" must be a list, got {json.dumps(deps)}"
    for i, dep in enumerate(deps):
        if isinstance(dep, str):
            deps[i] = dep = {"depends_on_id": dep, "type": "blocks"}
        if not (isinstance(dep, dict) and isinstance(dep.get("depends_on_id"), str)
                and isinstance(dep.get("type", "blocks"), str)):
            return f"dependency {json.dumps(dep)} must be a task id or {{\"depends_on_id\": ID, \"type\": TYPE}}"
    return None


def _dependency_cycle(entries: list[dict]) -> list[str] | None:
    """A chain of blocking dependencies that comes back to where it started, if there is one."""
    waits_for = {e["id"]: [d["depends_on_id"] for d in e.get("dependencies", ()) if d.get("type", "blocks")
                           in BLOCKING_DEP_TYPES] for e in entries if e.get("dependencies")}
    on_path_or_done: dict[str, bool] = {}  # True while on the current chain, False once explored
    for start in waits_for:
        if start in on_path_or_done:
            continue
        path, next_deps = [start], [iter(waits_for[start])]
        on_path_or_done[start] = True
        while path:  # depth first without recursion: chains can be thousands of tasks long
            dep = next(next_deps[-1], None)
            if dep is None:
                on_path_or_done[path.pop()] = False
                next_deps.pop()
            elif on_path_or_done.get(dep):
                return path[path.index(dep):] + [dep]
            elif dep not in on_path_or_done:
                on_path_or_done[dep] = True
                path.append(dep)
                next_deps.append(iter(waits_for.get(dep, ())))
    return None


def _entry_is_ready(entry: dict, by_id: dict[str, dict]) -> bool:
    """bd's notion of ready: open, not an epic, no open blocker, parent not blocked."""
    if entry.get("status", "open") != "open" or entry.get("issue_type") == "epic":
        return False
    if _open_blockers(entry, by_id):
        return False
    return not any(dep.get("type") == "parent-child" and dep.get("depends_on_id") in by_id
                   and by_id[dep["depends_on_id"]].get("status", "open") in ("blocked", "deferred")
                   for dep in entry.get("dependencies") or ())


ID_COUNTER = "id_counter"  # task_queue.json: the highest id number ever given
DISPATCH_STATE_FILES = (".dispatch_state.json", ".dispatch_pending_merge_retries.json")


def ids_outside_the_store(root: Path | None) -> list[str]:
    """Text that may name tasks the store no longer has: the dispatcher's state files and the
    repository's branch names (read whole; a caller picks the ids out)."""
    if root is None:
        return []
    texts = [git("for-each-ref", "--format=%(refname)", "refs/heads", cwd=root, check=False).stdout]
    for name in DISPATCH_STATE_FILES:
        with contextlib.suppress(OSError):
            texts.append((root / name).read_text(encoding="utf-8", errors="replace"))
    return texts


class JsonTaskStore:
    """The embedded store: task_queue.json, changed only under its lock by atomic replace."""

    name = "json"

    def __init__(self, path: Path, prefix: str, root: Path | None = None):
        self.path, self.prefix, self.root = path, prefix, root
        self.lock_path = path.with_name(path.name + ".lock")
        # The parsed file and the stat it was read at: parsing 10,000 tasks costs more than
        # anything else, and os.replace gives every new version a new inode, so a stat that
        # still matches means nobody has written since.
        self._cache: tuple[tuple, dict] | None = None

    def _stat_key(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> dict:
        key = self._stat_key()
        if key is not None and self._cache and self._cache[0] == key:
            return self._cache[1]
        data = read_json_file(self.path, {"tasks": []})
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
            raise UserError(f"{self.path} is corrupt: expected an object with a \"tasks\" list; "
                            "fix or move it (it was left untouched)")
        seen = set()
        for i, entry in enumerate(data["tasks"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not isinstance(entry.get("title"), str):
                raise UserError(f"{self.path} is corrupt: task #{i + 1} needs a string \"id\" and \"title\"; "
                                "fix or move it (it was left untouched)")
            problem = "two tasks have this id" if entry["id"] in seen else _normalize_entry(entry)
            if problem:
                raise UserError(f"{self.path}: task {entry['id']}: {problem}; fix it (the file was left untouched)")
            seen.add(entry["id"])
        if cycle := _dependency_cycle(data["tasks"]):
            raise UserError(f"{self.path}: task {cycle[0]} waits for itself through the dependency cycle "
                            f"{' -> '.join(cycle)}, so none of them could ever run; remove one of those "
                            "dependencies (the file was left untouched)")
        self._cache = (key, data) if key else None
        return data

    def _save(self, data: dict) -> None:
        text = json.dumps(data, ensure_ascii=False)
        # One task a line, so the file stays readable and diffable. `}, {"id"` cannot occur
        # inside a JSON string (its quotes would be escaped), so this only splits between tasks.
        text = text.replace('"tasks": [{"id"', '"tasks": [\n{"id"').replace('}, {"id"', '},\n{"id"')
        atomic_write_text(self.path, text + "\n")
        self._cache = (self._stat_key(), data)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict]:
        """The whole file ("tasks", and the id counter), saved when the block ends without error."""
        with locked(self.lock_path, "task queue"):
            data = self._load()
            try:
                yield data
            except BaseException:
                self._cache = None  # the entries may be half-changed: read the file again
                raise
            self._save(data)

    def _entries(self) -> list[dict]:
        with locked(self.lock_path, "task queue"):
            return self._load()["tasks"]

    @staticmethod
    def _find(entries: list[dict], task_id: str) -> dict:
        for entry in entries:
            if entry["id"] == task_id:
                return entry
        raise TaskNotFound(f"no task with id {task_id!r}")

    def _update(self, task_id: str, note: str = "", **changes: Any) -> Task:
        with self._transaction() as data:
            entries = data["tasks"]
            entry = self._find(entries, task_id)
            entry.update(changes, updated_at=now_iso())
            if note:
                entry["notes"] = f"{entry['notes']}\n{note}" if entry.get("notes") else note
            return Task.from_dict(entry)

    # The store interface; BdTaskStore offers the same.
    def create(self, title: str, description: str = "", **fields: Any) -> Task:
        return self.create_many([NewTask(title, description, **fields)])[0]

    def create_many(self, specs: Sequence[NewTask]) -> list[Task]:
        """All or nothing: one transaction."""
        with self._transaction() as data:
            entries = data["tasks"]
            highest = self._highest_id_number(data)
            stamp, created = now_iso(), []
            for spec in specs:
                highest += 1
                task = Task(id=f"{self.prefix}-{highest}", title=spec.title, description=spec.description,
                            priority=spec.priority, issue_type=spec.issue_type, labels=list(spec.labels),
                            created_at=stamp, updated_at=stamp)
                for kind, target in spec.deps:
                    other = self._find(entries, target)
                    if kind == "blocks":
                        other.setdefault("dependencies", []).append({"depends_on_id": task.id, "type": "blocks"})
                    else:
                        task.dependencies.append({"depends_on_id": target,
                                                  "type": "blocks" if kind == "blocked-by" else kind})
                entries.append({k: v for k, v in task.to_dict().items() if v not in ("", [], None)})
                created.append(task)
            data[ID_COUNTER] = highest
            return created

    def _highest_id_number(self, data: dict) -> int:
        """The highest id number ever given. It never goes down, so a deleted task's id never
        comes back: a new task with it would inherit the old one's branch, records and merges.
        A file without the counter (older, or written by hand) starts past every id in use in
        the store, the dispatcher's state files and the branches."""
        pattern = re.compile(re.escape(self.prefix) + r"-(\d+)(?!\d)")
        texts, counter = [e["id"] for e in data["tasks"]], data.get(ID_COUNTER)
        if type(counter) is not int:
            texts, counter = texts + ids_outside_the_store(self.root), 0
        return max([int(n) for text in texts for n in pattern.findall(text)] + [counter])

    def get(self, task_id: str) -> Task:
        return Task.from_dict(self._find(self._entries(), task_id))

    def list(self, statuses: Sequence[str] | None = None) -> list[Task]:
        return [Task.from_dict(e) for e in self._entries() if statuses is None or e.get("status", "open") in statuses]

    def ready(self, limit: int | None = None) -> list[Task]:
        entries = self._entries()
        by_id = {e["id"]: e for e in entries}
        ready = sorted((e for e in entries if _entry_is_ready(e, by_id)),
                       key=lambda e: (e.get("priority", 2), e.get("created_at", ""), e["id"]))
        return [Task.from_dict(e) for e in ready[:limit]]

    def claim(self, task_id: str, actor: str) -> bool:
        with self._transaction() as data:
            entries = data["tasks"]
            entry = self._find(entries, task_id)
            if entry.get("status", "open") != "open" or entry.get("assignee") not in (None, "", actor):
                return False
            entry.update(status="in_progress", assignee=actor, updated_at=now_iso())
            return True

    # `actor`: whose claim this is (bd refuses to release or close another actor's claim; this
    # store, like a hand-edited file, does not check).
    def release(self, task_id: str, note: str = "", actor: str | None = None) -> Task:
        return self._update(task_id, note, status="open", assignee="")

    def set_status(self, task_id: str, status: str, note: str = "", actor: str | None = None) -> Task:
        return self._update(task_id, note, status=status)

    def close(self, task_id: str, reason: str = "", force: bool = False, actor: str | None = None) -> Task:
        with self._transaction() as data:
            entries = data["tasks"]
            entry = self._find(entries, task_id)
            blockers = _open_blockers(entry, {e["id"]: e for e in entries})
            if blockers and not force:
                raise UserError(f"cannot close {task_id}: it is blocked by open tasks {', '.join(blockers)} "
                                "(use --force to close it anyway)")
            entry.update(status="closed", closed_at=now_iso(), close_reason=reason, updated_at=now_iso())
            return Task.from_dict(entry)

    def reopen(self, task_id: str) -> Task:
        return self._update(task_id, status="open", closed_at="", close_reason="", assignee="")

    def add_dependency(self, task_id: str, depends_on: str, kind: str = "blocks") -> None:
        with self._transaction() as data:
            entries = data["tasks"]
            self._find(entries, depends_on)
            entry = self._find(entries, task_id)
            deps = entry.setdefault("dependencies", [])
            if not any(d.get("depends_on_id") == depends_on and d.get("type") == kind for d in deps):
                deps.append({"depends_on_id": depends_on, "type": kind})
                if cycle := _dependency_cycle(entries):
                    raise UserError(f"{task_id} cannot wait for {depends_on}: that makes the cycle "
                                    f"{' -> '.join(cycle)}, and none of them could ever run")

    def add_note(self, task_id: str, text: str) -> Task:
        return self._update(task_id, text)


# Dolt allows one writer at a time; beads' own tests retry these with backoff.
_BD_LOCK_ERRORS = ("one writer at a time", "database is locked", "locked by another dolt process")
_BD_RETRIES = 10
_BD_NOT_FOUND = re.compile(r"no issues? found matching", re.IGNORECASE)


class BdTaskNotFound(BdError, TaskNotFound):
    pass


class BdTaskStore:
    """Tasks in beads, through the `bd` CLI (see docs/bd-contract.md)."""

    name = "bd"

    def __init__(self, command: str, root: Path, actor: str):
        resolved = shutil.which(command)
        if not resolved:
            raise UserError(f"task_backend is \"bd\" but the bd command {command!r} was not found on PATH; "
                            "install beads (see README) or set task_backend to \"json\"")
        self.executable, self.root, self.actor = resolved, root, actor
        # npm installs bd as a .cmd wrapper on Windows: its arguments pass through cmd.exe.
        self.through_cmd = IS_WINDOWS and resolved.lower().endswith((".cmd", ".bat"))

    def _call(self, *args: str, actor: str | None = None) -> Any:
        # Every call runs as the store's actor: real bd refuses to release a claim held by
        # another actor, and claims must be this dispatcher's own.
        argv = [self.executable, *args, "--actor", actor or self.actor, "--json"]
        if self.through_cmd and (bad := [a for a in args if set(a) & _CMD_SPECIAL or "!" in a]):
            raise UserError(f"bd resolves to a cmd.exe wrapper ({self.executable}) and the text {bad[0][:40]!r} "
                            "would reach cmd.exe; set bd_command to the real bd.exe")
        env = {k: v for k, v in os.environ.items() if k != "BD_JSON_ENVELOPE"}
        delay = 0.5
        for attempt in range(_BD_RETRIES + 1):
            result = run(*argv, cwd=self.root, check=False, env=env, error=BdError)
            if result.returncode == 0:
                return _unwrap_bd_json(result.stdout, argv)
            message = _bd_error_message(result)
            if attempt < _BD_RETRIES and any(m in message.lower() for m in _BD_LOCK_ERRORS):
                time.sleep(delay)
                delay = min(delay * 2, 8)
                continue
            error = BdTaskNotFound if _BD_NOT_FOUND.search(message) else BdError
            raise error(argv, result.returncode, result.stdout, result.stderr, message)
        raise AssertionError("unreachable")

    def _tasks(self, *args: str, actor: str | None = None) -> list[Task]:
        out = self._call(*args, actor=actor)
        return [Task.from_dict(item) for item in (out if isinstance(out, list) else [out])]

    def create(self, title: str, description: str = "", **fields: Any) -> Task:
        return self.create_many([NewTask(title, description, **fields)])[0]

    def create_many(self, specs: Sequence[NewTask]) -> list[Task]:
        """One `bd create` each; a failure part-way says which were created."""
        created: list[Task] = []
        for spec in specs:
            args = ["create", spec.title, "-p", str(spec.priority), "-t", spec.issue_type]
            if spec.description:
                args += ["-d", spec.description]
            if spec.labels:
                args += ["-l", ",".join(spec.labels)]
            if spec.deps:
                args += ["--deps", ",".join(f"{kind}:{target}" for kind, target in spec.deps)]
            try:
                created.append(self._tasks(*args)[0])
            except UserError as exc:
                if not created:
                    raise
                raise PartialCreateError(created, exc) from exc
        return created

    def get(self, task_id: str) -> Task:
        tasks = self._tasks("show", task_id)
        if not tasks:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return tasks[0]

    def list(self, statuses: Sequence[str] | None = None) -> list[Task]:
        tasks = self._tasks("list", "--limit", "0", "--status", ",".join(statuses) if statuses else "all")
        return [t for t in tasks if statuses is None or t.status in statuses]

    def ready(self, limit: int | None = None) -> list[Task]:
        # Epics are never work; ask for everything so a limit is not used up by them.
        return [t for t in self._tasks("ready", "--limit", "0") if t.issue_type != "epic"][:limit]

    def claim(self, task_id: str, actor: str) -> bool:
        try:
            claimed = self._tasks("update", task_id, "--claim", actor=actor)
        except BdError as exc:
            if "already claimed" in str(exc).lower() or "cannot claim" in str(exc).lower():
                return False
            raise
        return bool(claimed) and claimed[0].assignee == actor

    def release(self, task_id: str, note: str = "", actor: str | None = None) -> Task:
        return self._tasks("update", task_id, "-s", "open", "-a", "", *(["--append-notes", note] if note else []),
                           actor=actor)[0]

    def set_status(self, task_id: str, status: str, note: str = "", actor: str | None = None) -> Task:
        return self._tasks("update", task_id, "-s", status, *(["--append-notes", note] if note else []),
                           actor=actor)[0]

    def close(self, task_id: str, reason: str = "", force: bool = False, actor: str | None = None) -> Task:
        return self._tasks("close", task_id, *(["-r", reason] if reason else []), *(["--force"] if force else []),
                           actor=actor)[0]

    def reopen(self, task_id: str) -> Task:
        return self._tasks("reopen", task_id)[0]

    def add_dependency(self, task_id: str, depends_on: str, kind: str = "blocks") -> None:
        self._call("dep", "add", task_id, depends_on, "-t", kind)

    def add_note(self, task_id: str, text: str) -> Task:
        return self._tasks("update", task_id, "--append-notes", text)[0]


def _unwrap_bd_json(stdout: str, argv: list[str]) -> Any:
    try:
        data = json.loads(stdout) if stdout.strip() else []
    except json.JSONDecodeError:
        raise BdError(argv, 0, stdout, "", "bd printed output that is not JSON") from None
    if isinstance(data, dict) and "data" in data and "schema_version" in data:
        data = data["data"]
    return data


def _bd_error_message(result: Completed) -> str:
    # The JSON error may follow a line of text ("Error updating ID: ...") in the same stream.
    for stream in (result.stdout, result.stderr):
        start = stream.find("{")
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            data = json.loads(stream[start:]) if start >= 0 else None
            if isinstance(data, dict) and data.get("error"):
                # Batch commands (update, close) put each id's own reason under "failed".
                details = [f"{f.get('id')}: {f.get('error')}" for f in data.get("failed") or [] if isinstance(f, dict)]
                return "; ".join([str(data["error"])] + details)
    return (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]


def open_task_store(config: Config):
    """The configured backend; "auto" means bd when bd is installed and the repo has .beads/."""
    backend = config.task_backend
    if backend == "auto":
        backend = "bd" if shutil.which(config.bd_command) and (config.root / ".beads").is_dir() else "json"
    if backend == "bd":
        return BdTaskStore(config.bd_command, config.root, config.actor)
    return JsonTaskStore(config.path("task_queue_file"), config.task_prefix, config.root)


def suggestion_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def add_common_options(parser, subcommand: bool = False) -> None:
    """Options every script has; on a subcommand they may also follow its name."""
    default = {"default": argparse.SUPPRESS} if subcommand else {}
    parser.add_argument("--config", metavar="PATH", **default,
                        help=f"settings file (default: {CONFIG_FILE_NAME} in the repository's main "
                             "root, else the one beside the scripts)")
    parser.add_argument("--json", action="store_true", **default, help="print the result as JSON for scripts")


# --------------------------------------------------------------------------------------------
# LLM: Ollama's /api/chat or an OpenAI-compatible /v1/chat/completions, asking for JSON
# --------------------------------------------------------------------------------------------


class LLMError(UserError):
    pass


class LLMRetryable(LLMError):
    """A reply worth asking again for: HTTP 5xx, a timeout, a body that is not JSON."""


@dataclasses.dataclass
class LLMReply:
    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LLMClient:
    """One chat request at a time, with the JSON schema the reply must follow."""

    def __init__(self, config: Config, model: str | None = None):
        self.config = config
        self.model = model or config.llm_model
        self.url = config.llm_url
        self.session = requests.Session()
        self.session.trust_env = False  # a proxy setting must not capture a loopback server
        self._openai_format = "json_schema"

    def available_models(self) -> list[str]:
        """The models the server has (Ollama's /api/tags, or /v1/models)."""
        path = "/api/tags" if self.config.llm_api == "ollama" else "/v1/models"
        try:
            response = self.session.get(self.url + path, timeout=min(self.config.llm_timeout_secs, 10))
        except (requests.ConnectionError, requests.Timeout):
            raise self._unreachable() from None
        body = self._check(response)
        items = body.get("models") if self.config.llm_api == "ollama" else body.get("data")
        return [m.get("name") or m.get("id") for m in items or [] if isinstance(m, dict)]

    def chat(self, messages: list[dict], schema: dict) -> LLMReply:
        if self.config.llm_api == "ollama":
            return self._ollama(messages, schema)
        return self._openai(messages, schema)

    def _post(self, path: str, body: dict) -> requests.Response:
        url = self.url + path
        try:
            return self.session.post(url, json=body, timeout=self.config.llm_timeout_secs)
        except requests.ConnectionError:
            raise self._unreachable() from None
        except requests.Timeout:
            raise LLMRetryable(f"the LLM server at {self.url} did not answer within "
                               f"{self.config.llm_timeout_secs:g} s (llm_timeout_secs)") from None

    def _unreachable(self) -> LLMError:
        hint = "is `ollama serve` running" if self.config.llm_api == "ollama" else "is the server running"
        return LLMError(f"cannot reach the LLM server at {self.url} ({hint} at that address?)")

    def _check(self, response: requests.Response) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):  # OpenAI style
            error = error.get("message") or json.dumps(error)
        if response.status_code == 404 and error and "not found" in str(error):
            pull = f" (run `ollama pull {self.model}`)" if self.config.llm_api == "ollama" else ""
            raise LLMError(f"model {self.model!r} not found on {self.url}{pull}")
        if response.status_code >= 500:
            raise LLMRetryable(f"the LLM server answered HTTP {response.status_code}: {error or response.text[:200]}")
        if response.status_code >= 400:
            raise LLMError(f"the LLM server refused the request (HTTP {response.status_code}): "
                           f"{error or response.text[:200]}")
        if error:  # Ollama reports a failure during generation as an "error" under 200
            raise LLMRetryable(f"the LLM server reported an error: {error}")
        if not isinstance(body, dict):
            raise LLMRetryable(f"the LLM server answered with a body that is not JSON: {response.text[:120]!r}")
        return body

    def _check_not_cut(self, stop_reason: str | None) -> None:
        """A reply stopped by the output bound is unfinished JSON: asking again would only run
        the same model into the same bound, so say so at once."""
        if stop_reason == "length":
            raise LLMError(f"the LLM's reply was cut at llm_max_tokens ({self.config.llm_max_tokens} tokens) "
                           "before it ended; raise llm_max_tokens, or use a model that stops by itself")

    def _ollama(self, messages: list[dict], schema: dict) -> LLMReply:
        body = self._check(self._post("/api/chat", {
            "model": self.model, "messages": messages, "stream": False, "format": schema,
            "options": {"temperature": self.config.llm_temperature, "num_ctx": self.config.llm_num_ctx,
                        "num_predict": self.config.llm_max_tokens},
            "keep_alive": self.config.llm_keep_alive}))
        self._check_not_cut(body.get("done_reason"))
        content = (body.get("message") or {}).get("content")
        if not isinstance(content, str):
            raise LLMRetryable("the LLM server's reply has no message content")
        return LLMReply(content, body.get("prompt_eval_count") or 0, body.get("eval_count") or 0)

    def _openai(self, messages: list[dict], schema: dict) -> LLMReply:
        def request(response_format: dict) -> requests.Response:
            return self._post("/v1/chat/completions", {
                "model": self.model, "messages": messages, "temperature": self.config.llm_temperature,
                "response_format": response_format, "max_tokens": self.config.llm_max_tokens, "stream": False})

        formats = {"json_schema": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
                   "json_object": {"type": "json_object", "schema": schema}}
        response = request(formats[self._openai_format])
        if self._openai_format == "json_schema" and response.status_code in (400, 422, 500):
            # llama.cpp's server rejects the json_schema form; it takes a schema in json_object.
            retry = request(formats["json_object"])
            if retry.status_code < 400:
                self._openai_format, response = "json_object", retry
        body = self._check(response)
        try:
            choice = body["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMRetryable("the LLM server's reply has no choices[0].message.content") from None
        self._check_not_cut(choice.get("finish_reason"))
        usage = body.get("usage") or {}
        return LLMReply(content or "", usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)


def extract_json(text: str) -> Any:
    """The JSON in a local model's reply: after <think> blocks, inside fences, before prose."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL).strip()
    if fence := re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL):
        text = fence.group(1).strip()
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        raise ValueError("the reply contains no JSON")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[min(starts):])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the reply is not valid JSON ({exc.msg} at character {exc.pos})") from None
    return value


# --------------------------------------------------------------------------------------------
# Git
# --------------------------------------------------------------------------------------------


def tracked_files(root: Path) -> list[str]:
    return git("ls-files", "-z", cwd=root).stdout.split("\0")[:-1]
