#!/usr/bin/env python3
"""Split one high-level goal into 3-10 small, file-scoped subtasks with a local LLM."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import common

EPILOG = """\
The goal becomes a parent task (an epic, never dispatched itself); each subtask is linked to it
with discovered-from, names the files it should change (file:<path> labels), and waits for an
earlier subtask that names the same file (a blocks dependency), so two workers never edit the
same file at once. Nothing is created unless the whole plan is valid.

examples:
  py split_task.py "Add a Jira analytics dashboard with cycle time, throughput and WIP"
  py split_task.py --file docs/spec.md --max 6
  py split_task.py --bead myrepo-12            split an existing task instead
  py split_task.py --dry-run --json "Add CSV export"
  py split_task.py --model llama3.1:8b "..."   another model than llm_model

LLM settings (llm_api, llm_url, llm_model, ...) come from dispatch_config.json; llm_url defaults
to OLLAMA_HOST, else http://127.0.0.1:11434.
"""

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


def plan_schema(min_count: int, max_count: int) -> dict:
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


def find_subtask_list(data) -> list:
    """Local models put the list under "subtasks", another key, or bare: take what is there."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if isinstance(data.get("subtasks"), list):
            return data["subtasks"]
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)]
        if len(lists) == 1:
            return lists[0]
    raise PlanError('expected {"subtasks": [...]}, found no list of subtasks')


def validate_plan(data, min_count: int, max_count: int) -> tuple[list[Subtask], list[str]]:
    """The plan's subtasks, and notes on what was merged. A subtask repeated with the same title
    and files (small models repeat themselves) is merged into its first copy."""
    items = find_subtask_list(data)
    errors, notes = [], []
    subtasks, seen = [], {}  # seen: normalized title -> (index, files)
    position = {}  # the model's index of a subtask -> its index in the merged plan
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
        files = item.get("files")
        clean_files = []
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            errors.append(f"{where} must name at least one file in \"files\" (a list of paths)")
        else:
            for raw in files:
                try:
                    clean_files.append(common.check_repo_path(raw))
                except common.UserError as exc:
                    errors.append(f"{where}: {exc}")
        clean_files = list(dict.fromkeys(clean_files))
        depends_on = item.get("depends_on") or []
        if not isinstance(depends_on, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in depends_on):
            errors.append(f"{where}: depends_on must be a list of subtask indices")
            depends_on = []
        elif bad := [d for d in depends_on if not 0 <= d < index]:
            errors.append(f"{where}: depends_on may only name earlier subtasks (0 to {index - 1}), not {bad}")
        if title and common.normalize_title(title) in seen:
            first, first_files = seen[common.normalize_title(title)]
            if sorted(first_files) == sorted(clean_files):
                position[index] = position[first]
                notes.append(f"subtask {index} repeats subtask {first} ({title!r}, same files): merged into it")
            else:
                errors.append(f"{where} has the same title as subtask {first} but other files: {title!r}")
            continue
        if title:
            seen[common.normalize_title(title)] = (index, clean_files)
        long_title = " ".join(title.split())
        if len(long_title) > MAX_TITLE:
            description = f"{long_title}\n\n{description}"
        position[index] = len(subtasks)
        subtasks.append(Subtask(common.cut_at_word(long_title, MAX_TITLE), description.strip(),
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
    notes, last_for_file = [], {}
    for index, subtask in enumerate(subtasks):
        for path in subtask.files:
            earlier = last_for_file.get(path)
            if earlier is not None and earlier not in subtask.depends_on:
                subtask.depends_on.append(earlier)
                notes.append(f"subtask {index} waits for subtask {earlier}: both change {path}")
            last_for_file[path] = index
        subtask.depends_on.sort()
    return notes


def build_messages(goal: str, files: list[str], max_files: int, min_count: int, max_count: int) -> list[dict]:
    listing = "\n".join(files[:max_files]) or "(the repository has no tracked files yet)"
    if len(files) > max_files:
        listing += f"\n... and {len(files) - max_files} more files (list cut at {max_files})"
    rules = PLAN_RULES.format(min=min_count, max=max_count, answer=ANSWER_FORM)
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{rules}\n\nGoal:\n{goal}\n\nFiles tracked in the repository:\n{listing}"}]


def ask_for_plan(client: common.LLMClient, messages: list[dict], retries: int, min_count: int,
                 max_count: int, progress) -> tuple[list[Subtask], list[str], dict]:
    """Ask, validate, and ask again with the problems quoted, up to `retries` more times."""
    tokens = {"prompt": 0, "completion": 0}
    schema = plan_schema(min_count, max_count)
    problem = ""
    for attempt in range(retries + 1):
        if attempt:
            progress(f"asking again ({attempt}/{retries}): {problem}")
        try:
            reply = client.chat(messages, schema)
        except common.LLMRetryable as exc:
            problem = str(exc)
            time.sleep(min(2 ** attempt, 10) * 0.5)
            continue
        tokens["prompt"] += reply.prompt_tokens
        tokens["completion"] += reply.completion_tokens
        try:
            data = common.extract_json(reply.content)
            return (*validate_plan(data, min_count, max_count), tokens)
        except (ValueError, PlanError) as exc:
            problem = str(exc)
            messages = messages + [
                {"role": "assistant", "content": reply.content},
                {"role": "user", "content": REASK.format(problem=problem, min=min_count, max=max_count,
                                                         answer=ANSWER_FORM)}]
    raise common.UserError(f"the LLM gave no valid plan after {retries + 1} tries; last problem: {problem}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="split_task.py", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_options(parser)
    what = parser.add_argument_group("what to split (one of)")
    what.add_argument("goal", nargs="?", help="the goal, in words")
    what.add_argument("--file", metavar="PATH", help="read the goal (a spec) from a UTF-8 file")
    what.add_argument("--bead", metavar="ID", help="split this existing task; it becomes the parent")
    plan = parser.add_argument_group("the plan")
    plan.add_argument("--min", type=int, default=3, metavar="N", help="fewest subtasks (default 3)")
    plan.add_argument("--max", type=int, default=10, metavar="N", help="most subtasks (default 10)")
    plan.add_argument("--model", help="LLM model (default: llm_model from the config)")
    plan.add_argument("--dry-run", action="store_true", help="print the plan; create nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.goal, args.file, args.bead)) != 1:
        parser.error("give exactly one of: a goal, --file PATH, --bead ID")
    if not 1 <= args.min <= args.max:
        parser.error("--min must be at least 1 and at most --max")
    config = common.load_config(args.config)
    store = common.open_task_store(config)
    progress = (lambda msg: print(msg, file=sys.stderr)) if args.json else print

    parent_task = store.get(args.bead) if args.bead else None
    if parent_task:
        goal = f"{parent_task.title}\n\n{parent_task.description}".strip()
    elif args.file:
        try:
            goal = Path(args.file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise common.UsageError(f"cannot read the goal from {args.file}: {exc}") from None
    else:
        goal = args.goal.strip()
    if not goal:
        raise common.UsageError("the goal is empty")

    client = common.LLMClient(config, args.model)
    progress(f"asking {client.model} at {config.llm_url} for {args.min}-{args.max} subtasks...")
    messages = build_messages(goal, common.tracked_files(config.root), config.prompt_max_files, args.min, args.max)
    subtasks, merges, tokens = ask_for_plan(client, messages, config.llm_retries, args.min, args.max, progress)
    notes = merges + link_shared_files(subtasks)

    open_titles = {common.normalize_title(t.title): t.id for t in store.list(["open", "in_progress"])}
    skipped = [{"title": s.title, "reason": f"same title as open task {open_titles[common.normalize_title(s.title)]}"}
               for s in subtasks if common.normalize_title(s.title) in open_titles]

    if args.dry_run:
        plan = [dataclasses.asdict(s) for s in subtasks]
        if args.json:
            common.print_json({"parent": args.bead, "plan": plan, "notes": notes, "skipped": skipped,
                               "tokens": tokens})
        else:
            for i, s in enumerate(subtasks):
                waits = f"  (waits for {', '.join(map(str, s.depends_on))})" if s.depends_on else ""
                print(f"{i}. {s.title}\n   files: {', '.join(s.files)}{waits}")
            for note in notes:
                print(f"note: {note}")
            for skip in skipped:
                print(f"would skip {skip['title']!r}: {skip['reason']}")
        return 0

    created = create_tasks(store, goal, parent_task, subtasks, open_titles)
    if args.json:
        common.print_json({"parent": created["parent"], "created": [t.id for t in created["tasks"]],
                           "notes": notes, "skipped": skipped, "tokens": tokens})
        return 0
    print(f"parent: {created['parent']}" + ("" if parent_task else " (new epic)"))
    for task, waits in zip(created["tasks"], created["waits"]):
        print(f"  {task.id}  {task.title}\n      files: {', '.join(task.files)}"
              + (f"\n      waits for: {', '.join(waits)}" if waits else ""))
    for note in notes:
        print(f"note: {note}")
    for skip in skipped:
        print(f"skipped {skip['title']!r}: {skip['reason']}")
    print(f"tokens: {tokens['prompt']} prompt, {tokens['completion']} completion")
    print("next: py dispatch_workers.py   (or python3 dispatch_workers.py)")
    return 0


def create_tasks(store, goal: str, parent_task, subtasks: list[Subtask], open_titles: dict) -> dict:
    """The parent (unless splitting an existing task) and every subtask, in order."""
    created: list[common.Task] = []
    waits: list[list[str]] = []
    try:
        if parent_task is None:
            parent_task = store.create(common.cut_at_word(goal, MAX_TITLE), goal, issue_type="epic")
            created.append(parent_task)
        ids: list[str] = []
        for subtask in subtasks:
            existing = open_titles.get(common.normalize_title(subtask.title))
            if existing:
                ids.append(existing)  # later subtasks that depend on this one wait for the open task
                continue
            description = (f"{subtask.description}\n\nFiles: {', '.join(subtask.files)}\n\n"
                           f"Part of: {parent_task.title} ({parent_task.id})")
            deps = [("discovered-from", parent_task.id)] + [("blocked-by", ids[d]) for d in subtask.depends_on]
            task = store.create(subtask.title, description, labels=[common.FILE_LABEL + f for f in subtask.files],
                                deps=deps)
            created.append(task)
            ids.append(task.id)
            waits.append([ids[d] for d in subtask.depends_on])
    except common.UserError as exc:
        raise common.PartialCreateError(created, exc) from exc
    return {"parent": parent_task.id, "tasks": [t for t in created if t.id != parent_task.id], "waits": waits}


if __name__ == "__main__":
    raise SystemExit(common.run_main(main, None))
