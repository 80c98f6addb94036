"""A goal becomes subtasks: the prompt, the plan's validation, the tasks it creates."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

from crew import errors as errs
from crew import llm
from crew import names
from crew.tasks import model


MAX_TITLE = 120

# The rules travel in the user message: a GGUF imported without a chat template gets Ollama's
# `{{ .Prompt }}` template, which drops the system message (the model never saw the rules).
SYSTEM_PROMPT = "You are a senior engineer planning work for a team of coding agents."
PLAN_RULES = """\
Plan work for a team of coding agents that work in parallel, each on its own branch. Split the
goal below into {min}-{max} subtasks. Each subtask:
- is one clear, small change that one agent can finish alone, without waiting for the others;
- has an imperative title of at most 120 characters ("Add ...", "Fix ..."), different from every
  other subtask's title;
- has a description an agent can act on without reading the other subtasks;
- names in "files" the main file(s) it should change: relative paths from the repository root,
  existing files where possible, new files allowed;
- lists in "depends_on" the 0-based indices of EARLIER subtasks it really needs (usually none).
Prefer subtasks that touch different files, so their branches merge without conflicts.
{answer}"""
REASK = """\
That plan cannot be used: {problem}.
Write the whole plan again with these problems fixed: {min} to {max} subtasks, each with its own
title, its own description and the files it changes. {answer}"""
ANSWER_FORM = """\
Answer with JSON only, exactly of this form:
{"subtasks": [{"title": "...", "description": "...", "files": ["path"], "depends_on": []}]}"""


class PlanError(Exception):
    """The model's reply is not a usable plan; the message lists every problem."""


@dataclasses.dataclass
class Subtask:
    title: str
    description: str
    files: list[str]
    depends_on: list[int]


class CreatedTasks(TypedDict):
    parent: str  # the parent task's id
    tasks: list[model.Task]  # the subtasks created, in order
    waits: list[list[str]]  # for each of them, the ids it waits for


def plan_schema(min_count: int, max_count: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"subtasks": {
            "type": "array", "minItems": min_count, "maxItems": max_count,
            "items": {"type": "object", "properties": {
                "title": {"type": "string", "maxLength": MAX_TITLE},
                "description": {"type": "string"},
                "files": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "depends_on": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            }, "required": ["title", "description", "files"]},
        }},
        "required": ["subtasks"],
    }


def find_subtask_list(data: Any) -> list[Any]:
    """Local models put the list under "subtasks", another key, or bare: take what is there."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if isinstance(subtasks := data.get("subtasks"), list):
            return subtasks
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)]
        if len(lists) == 1:
            return lists[0]
    raise PlanError('expected {"subtasks": [...]}, found no list of subtasks')


def validate_plan(data: Any, min_count: int, max_count: int) -> tuple[list[Subtask], list[str]]:
    """The plan's subtasks, and notes on what was merged. A subtask repeated with the same title
    and files (small models repeat themselves) is merged into its first copy."""
    items = find_subtask_list(data)
    errors: list[str] = []
    notes: list[str] = []
    subtasks: list[Subtask] = []
    seen: dict[str, tuple[int, list[str]]] = {}  # normalized title -> (index, files)
    position: dict[int, int] = {}  # the model's index of a subtask -> its index in the merged plan
    for index, item in enumerate(items):
        where = f"subtask {index}"
        if not isinstance(item, dict):
            errors.append(f"{where} is not an object")
            continue
        title, description = item.get("title"), item.get("description")
        if not isinstance(title, str) or not title.strip():
            errors.append(f"{where} has no title")
            title = ""
        if not isinstance(description, str) or not description.strip():
            errors.append(f"{where} has no description")
            description = ""
        # A long title moves into the description: only the description's limit applies to it.
        errors += [f"{where}: its {what} {problem}" for what, text in (("title", title), ("description", description))
                   if (problem := names.task_text_problem(text, names.TEXT_LIMIT))]
        files = item.get("files")
        clean_files: list[str] = []
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            errors.append(f"{where} must name at least one file in \"files\" (a list of paths)")
        else:
            for raw in files:
                try:
                    clean_files.append(names.check_repo_path(raw))
                except errs.UserError as exc:
                    errors.append(f"{where}: {exc}")
        clean_files = list(dict.fromkeys(clean_files))
        depends_on = item.get("depends_on") or []
        if not isinstance(depends_on, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                        for d in depends_on):
            errors.append(f"{where}: depends_on must be a list of subtask indices")
            depends_on = []
        elif bad := [d for d in depends_on if not 0 <= d < index]:
            errors.append(f"{where}: depends_on may only name earlier subtasks (0 to {index - 1}), not {bad}")
        if title and names.normalize_title(title) in seen:
            first, first_files = seen[names.normalize_title(title)]
            if sorted(first_files) == sorted(clean_files):
                position[index] = position[first]
                notes.append(f"subtask {index} repeats subtask {first} ({title!r}, same files): merged into it")
            else:
                errors.append(f"{where} has the same title as subtask {first} but other files: {title!r}")
            continue
        if title:
            seen[names.normalize_title(title)] = (index, clean_files)
        long_title = " ".join(title.split())
        if len(long_title) > MAX_TITLE:
            description = f"{long_title}\n\n{description}"
        position[index] = len(subtasks)
        subtasks.append(Subtask(names.cut_at_word(long_title, MAX_TITLE), description.strip(),
                                clean_files, depends_on))
    if not min_count <= len(subtasks) <= max_count:
        merged = f" once {len(items) - len(subtasks)} repeated ones were merged" if notes else ""
        errors.insert(0, f"there must be {min_count} to {max_count} subtasks, not {len(subtasks)}{merged}")
    if errors:
        raise PlanError("; ".join(errors))
    for subtask in subtasks:  # the model's indices, through the merges, to the plan's
        subtask.depends_on = sorted({position[d] for d in subtask.depends_on if d in position})
    return subtasks, notes


def link_shared_files(subtasks: list[Subtask]) -> list[str]:
    """A later subtask naming a file an earlier one names waits for it; returns what was linked."""
    notes: list[str] = []
    last_for_file: dict[str, int] = {}
    for index, subtask in enumerate(subtasks):
        for path in subtask.files:
            earlier = last_for_file.get(path)
            if earlier is not None and earlier not in subtask.depends_on:
                subtask.depends_on.append(earlier)
                notes.append(f"subtask {index} waits for subtask {earlier}: both change {path}")
            last_for_file[path] = index
        subtask.depends_on.sort()
    return notes


def build_messages(goal: str, files: list[str], max_files: int, min_count: int,
                   max_count: int) -> list[llm.ChatMessage]:
    listing = "\n".join(files[:max_files]) or "(the repository has no tracked files yet)"
    if len(files) > max_files:
        listing += f"\n... and {len(files) - max_files} more files (list cut at {max_files})"
    rules = PLAN_RULES.format(min=min_count, max=max_count, answer=ANSWER_FORM)
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{rules}\n\nGoal:\n{goal}\n\nFiles tracked in the repository:\n{listing}"}]


def ask_for_plan(client: llm.LLMClient, messages: list[llm.ChatMessage], retries: int, min_count: int,
                 max_count: int, progress: Callable[[str], object]) -> tuple[list[Subtask], list[str], dict[str, int]]:
    """Ask, validate, and ask again with the problems quoted, up to `retries` more times."""
    tokens = {"prompt": 0, "completion": 0}
    schema = plan_schema(min_count, max_count)
    problem = ""
    for attempt in range(retries + 1):
        if attempt:
            progress(f"asking again ({attempt}/{retries}): {problem}")
        try:
            reply = client.chat(messages, schema)
        except llm.LLMRetryable as exc:
            problem = str(exc)
            time.sleep(min(2 ** attempt, 10) * 0.5)
            continue
        tokens["prompt"] += reply.prompt_tokens
        tokens["completion"] += reply.completion_tokens
        try:
            data = llm.extract_json(reply.content)
            return (*validate_plan(data, min_count, max_count), tokens)
        except (ValueError, PlanError) as exc:
            problem = str(exc)
            messages = [
                *messages,
                {"role": "assistant", "content": reply.content},
                {"role": "user", "content": REASK.format(problem=problem, min=min_count, max=max_count,
                                                         answer=ANSWER_FORM)}]
    raise errs.UserError(f"the LLM gave no valid plan after {retries + 1} tries; last problem: {problem}")


def create_tasks(store: model.TaskStore, goal: str, parent_task: model.Task | None, subtasks: list[Subtask],
                 open_titles: dict[str, str], labels: Sequence[str] = ()) -> CreatedTasks:
    """The parent (unless splitting an existing task) and every subtask, in order; `labels` go on
    every subtask."""
    created: list[model.Task] = []
    waits: list[list[str]] = []
    try:
        if parent_task is None:
            parent_task = store.create(names.cut_at_word(goal, MAX_TITLE), goal, issue_type="epic")
            created.append(parent_task)
        ids: list[str] = []
        for subtask in subtasks:
            existing = open_titles.get(names.normalize_title(subtask.title))
            if existing:
                ids.append(existing)  # later subtasks that depend on this one wait for the open task
                continue
            description = (f"{subtask.description}\n\nFiles: {', '.join(subtask.files)}\n\n"
                           f"Part of: {parent_task.title} ({parent_task.id})")
            deps = [("discovered-from", parent_task.id)] + [("blocked-by", ids[d]) for d in subtask.depends_on]
            task = store.create(subtask.title, description,
                                labels=[*(model.FILE_LABEL + f for f in subtask.files), *labels], deps=deps)
            created.append(task)
            ids.append(task.id)
            waits.append([ids[d] for d in subtask.depends_on])
    except errs.UserError as exc:
        raise model.PartialCreateError(created, exc) from exc
    return {"parent": parent_task.id, "tasks": [t for t in created if t.id != parent_task.id], "waits": waits}
