"""A fix task's files: the branch's changes and the files the checks' output names, from
untrusted output, kept only when safe, capped."""
from __future__ import annotations

from crew.dispatch import conflicts

PYTEST_OUTPUT = """\
============================= test session starts ==============================
collected 3 items

tests/test_counts.py .F.                                                 [100%]

=================================== FAILURES ===================================
_______________________________ test_char_count ________________________________

    def test_char_count():
>       assert char_count("ab\\nc") == 4
E       AssertionError: assert 3 == 4

tests/test_counts.py:12: AssertionError
  File "/wt/.gate-2/textstats/counts.py", line 7, in char_count
=========================== short test summary info ============================
FAILED tests/test_counts.py::test_char_count - AssertionError: assert 3 == 4
../../etc/passwd /etc/shadow .git/config -rf.py C:\\Windows\\win.ini a|b.py 1.5s
"""


def test_the_paths_the_checks_output_names_are_kept_only_when_safe():
    # Words that only look like paths ("ab\\nc", "1.5s") pass: the branch's files sort them out.
    assert conflicts.paths_named(PYTEST_OUTPUT, ["/wt"]) == [
        "tests/test_counts.py", "ab/nc", "textstats/counts.py", "b.py", "1.5s"]


def test_a_windows_gate_worktree_path_is_made_relative():
    output = 'File "C:\\Users\\me\\wt\\.gate\\pkg\\mod.py", line 3\n'
    assert conflicts.paths_named(output, ["C:\\Users\\me\\wt"]) == ["pkg/mod.py"]


def test_the_fix_files_put_the_named_changes_first_and_are_capped():
    changed = [f"src/m{i}.py" for i in range(10)] + ["src/bad|name.py"]
    named = ["tests/test_m.py", "src/m7.py"]
    assert conflicts.fix_task_files(changed, named) == ["src/m7.py"] + [f"src/m{i}.py" for i in range(7)]
    assert conflicts.fix_task_files(["a.py"], named) == ["a.py", "tests/test_m.py", "src/m7.py"]
    assert conflicts.fix_task_files([], []) == []
