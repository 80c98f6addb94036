"""The toolkit's code. The top-level scripts (split_task.py, ingest_suggested_tasks.py, tasks.py,
dispatch_workers.py) are thin launchers into crew.cli; nothing here imports a script.

Layout, one concern a module (each module imports only the ones it needs, as modules):
  errors.py            the two levels of error (UserError: exit 1, UsageError: exit 2), failed commands
  processes.py         running commands (never a shell); starting and ending process trees
  files.py             locks, atomic writes, JSON state files
  config.py            dispatch_config.json: found, validated, completed
  workspace.py         the toolkit's own files in a repository, kept out of `git status`
  names.py             untrusted text made safe: repository paths, titles, branch and file names
  git.py               every git call (LC_ALL=C, no caller's repository variables), merge-tree
  failpoints.py        the test hook: named steps where a test makes the process exit
  testing.py           test and demo scaffolding: scripted agent, scratch repositories, failpoints
  llm.py               the LLM client (Ollama or OpenAI-compatible), JSON replies
  planning.py          a goal becomes subtasks (split_task.py's work)
  suggestions.py       suggestion lines become tasks (ingest_suggested_tasks.py's work)
  tasks/__init__.py    choosing the configured task store
  tasks/model.py       the task model both stores share
  tasks/json_store.py  task_queue.json
  tasks/bd_store.py    beads, through the bd CLI (docs/bd-contract.md)
  report/events.py     the events log's format, and reading it
  report/model.py      events become report data
  report/page.py       the run report's HTML page
  cli/base.py          what every command shares: the main wrapper, common options, JSON output
  cli/split.py, cli/ingest.py, cli/tasks.py   one command each
The dispatcher itself is still in dispatch_workers.py (it moves to crew/dispatch/ next).
"""
