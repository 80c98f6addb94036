"""The dispatcher: workers in worktrees, the merge queue, conflict tasks (see crew/__init__.py)."""
