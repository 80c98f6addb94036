"""What an attempt's log tells the next attempt: why an agent whose reply held code changed nothing."""
from __future__ import annotations

from crew.dispatch import attempt_log

# The start and end of a log real Aider 0.86.2 wrote when the model put the file's path inside
# the fence (two files in the chat, so Aider could not guess the file).
AIDER_HEAD = """\
Warning: Input is not a terminal (fd=0).
Aider v0.86.2
Model: ollama_chat/qwen2.5-coder:1.5b with whole edit format
Git repo: .git with 2 files
Repo-map: using 4096.0 tokens, auto refresh
Added calc.py to the chat.
Added other.py to the chat.
"""
REPLY = """\
Here is the code:

```python
# calc.py
def multiply(a, b):
    return a * b
```

Tokens: 826 sent, 38 received.
"""
REFUSED = """\
The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

No filename provided before ``` in file listing
"""
WHOLE_ADVICE = ("your reply held a code block but no edit was applied: Aider's whole edit format wants the "
                "file's path alone on the line before the fence, not inside it")


def test_a_reply_with_code_that_aider_refused_is_explained_by_its_edit_format_and_its_reason():
    hint = attempt_log.why_no_edit(AIDER_HEAD, REPLY + REFUSED + REPLY + REFUSED + "Only 3 reflections allowed, stopping.\n")
    assert hint.startswith(WHOLE_ADVICE)
    assert hint.endswith("(Aider said: No filename provided before ``` in file listing)")


def test_a_reply_with_code_and_no_complaint_still_gets_its_format_explained():
    assert attempt_log.why_no_edit(AIDER_HEAD, REPLY).startswith(WHOLE_ADVICE)
    diff_head = AIDER_HEAD.replace("whole edit format", "diff edit format")
    assert "<<<<<<< SEARCH" in attempt_log.why_no_edit(diff_head, REPLY)
    odd_head = AIDER_HEAD.replace("whole edit format", "patch edit format")
    assert attempt_log.why_no_edit(odd_head, REPLY).endswith("Aider's patch edit format did not accept it")


def test_a_log_without_code_or_from_another_agent():
    assert attempt_log.why_no_edit(AIDER_HEAD, "Tokens: 826 sent, 38 received.\nI cannot do that.\n") is None
    assert attempt_log.why_no_edit("", "") is None
    assert attempt_log.why_no_edit("starting\n", REPLY) == (
        "your reply held a code block but no edit was applied: write the changes into the files themselves")


def test_the_hint_reads_only_the_head_and_tail_of_a_huge_log(tmp_path):
    log = tmp_path / "a.log"
    log.write_text(AIDER_HEAD + "```\n" + "x\n" * 400_000 + "done, no code here\n", encoding="utf-8")
    assert attempt_log.no_edit_hint(log) == ""  # the fence is far outside the tail
    log.write_text(AIDER_HEAD + "x\n" * 400_000 + REPLY + REFUSED, encoding="utf-8")
    assert attempt_log.no_edit_hint(log).startswith(WHOLE_ADVICE)
    assert attempt_log.no_edit_hint(tmp_path / "missing.log") == ""
