"""The toolkit's code. The top-level scripts (split_task.py, ingest_suggested_tasks.py, tasks.py,
dispatch_workers.py) are thin launchers into crew.cli; nothing here imports a script.

Layout, one concern a module (each module imports only the ones it needs, as modules):
  errors.py            the two levels of error (UserError: exit 1, UsageError: exit 2), failed commands
  processes.py         running commands (never a shell); starting and ending process trees
  files.py             locks, atomic writes, JSON state files
  logs.py              logs of any size: a tail read from the end, lines read as a stream
  config.py            dispatch_config.json: found, validated, completed
  workspace.py         the toolkit's own files in a repository, kept out of `git status`
  names.py             untrusted text made safe: repository paths, titles, task text for a store, a commit or
                       a terminal, branch and file names, output tails
  console.py           the printing boundary: untrusted text made safe for a terminal, JSON output
  git.py               every git call (LC_ALL=C, no caller's repository variables), merge-tree
  failpoints.py        the test hook: named steps where a test makes the process exit, armed from the environment
  demo_kit.py          what the demo is made of (the benches too): the scripted agent, a scratch repository
  llm.py               the LLM client (Ollama or OpenAI-compatible), JSON replies
  planning.py          a goal becomes subtasks (split_task.py's work)
  suggestions.py       suggestion lines become tasks (ingest_suggested_tasks.py's work)
  tasks/__init__.py    choosing the configured task store
  tasks/model.py       the task model both stores share
  tasks/json_store.py  task_queue.json
  tasks/bd_store.py    beads, through the bd CLI (docs/bd-contract.md)
  report/events.py     the events log's format, and reading it: a line at a time, each value checked for sense
  report/model.py      events become report data
  report/page.py       the run report's HTML page
  cli/base.py          what every command shares: the main wrapper, common options
  cli/split.py, cli/ingest.py, cli/tasks.py   one command each
  cli/dispatch.py      dispatch_workers.py's command: options, printers (main is one long option switch)
  run_console.py       what a dispatcher run prints: its progress, its summary, its exit code (command and demo)
  demo.py              --demo: a scratch repository and tasks, run with the scripted agent
  dispatch/records.py      the dispatcher's records (dataclasses), the versioned state, older files migrated
  dispatch/scheduler.py    pure decisions: what may start, why a task waits, the breaker, merge backoff
  dispatch/state_store.py  the dispatcher's state and its two files: one way to change it, which saves it
  dispatch/ledger.py       the events log, the summary
  dispatch/outcomes.py     a task's fate after an attempt or a merge: closed, released (counted or not), blocked
  dispatch/say_once.py     what a run says once on the terminal (a wait that lasts, a failing hook)
  dispatch/agent.py        the agent's command line, environment and task message
  dispatch/worktrees.py    the dispatcher's worktrees and branches (only its own are ever deleted)
  dispatch/workers.py      the worker pool: start, watch, end
  dispatch/finish.py       an ended worker judged from git: merge queue, another attempt, or blocked
  dispatch/attempt_log.py  an attempt's log, head and tail only: its last lines, why no edit was applied
  dispatch/gate.py         merge_gate_command on a merge commit, in the gate worktree
  dispatch/merge_queue.py  the merge queue: one branch at a time behind the merge slot
  dispatch/merge_results.py  what its steps conclude: decide()'s verdict, what moving main did
  dispatch/epics.py        an epic closed once its subtasks are: looked for after a merge closed one
  dispatch/speculation.py  parallel gates as pure decisions: what gates on what, lands, fails, is void
  dispatch/stacks.py       speculative commits: a branch merged onto main and the entries ahead of it
  dispatch/parallel_gates.py  the merge queue with merge_gate_parallelism above 1 (speculative gates)
  dispatch/store_thread.py the task store on a thread of its own, so a slow call never holds up the loop
  dispatch/wakeup.py       what wakes the loop: results from its threads, exits of its processes, signals
  dispatch/conflicts.py    conflict and fix tasks, and the pending merges that wait for them
  dispatch/review.py       review before merge as pure decisions: which branch waits for a person, what they decided
  dispatch/reviews.py      branches awaiting review: out of the merge queue, a person's decisions recorded and
                           carried out
  dispatch/rewritten_main.py  commits that left main kept out: branches rebased without them, or held
  dispatch/recovery.py     after a crash or restart: adopt, end, release, prune
  dispatch/loop.py         the Dispatcher's loop and its stops (Ctrl-C, signals)
  dispatch/session.py      one run: the lock, the dispatcher's record, signals, the report after
  dispatch/status.py       --status and --dry-run, from the records alone
  dispatch/preflight.py    what a run needs, checked before any worker starts
  dispatch/notify.py       notify_command: a person told of what needs them, off the loop
  dispatch/revert.py       undoing a merged task: its merges recorded, the revert task, its reverter, the reopening
"""
