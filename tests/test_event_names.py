"""Event names are defined once (crew.report.events.EventName): README's events table lists
exactly those, and the dispatcher writes no event by a name of its own."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from crew.report.events import EventName


ROOT = Path(__file__).resolve().parent.parent


def events_table_names(readme: str) -> list[str]:
    """The first column of the table under README's "### Events", in its order."""
    section = readme.split("\n### Events\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)


def test_readme_events_table_lists_exactly_the_defined_names():
    listed = events_table_names((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(listed) == len(set(listed)), "an event is listed twice"
    assert sorted(listed) == sorted(name.value for name in EventName)


def test_events_table_reader_sees_a_missing_and_an_extra_row():
    readme = ("\n### Events\n\n| event | when | fields |\n|---|---|---|\n"
              "| `claimed` | x | |\n| `made_up` | y | |\n\n## Next\n")
    assert events_table_names(readme) == ["claimed", "made_up"]


def test_every_event_written_is_named_by_the_enum():
    """No `.event("...")` with a literal name anywhere in crew/: a new event is added to EventName
    (and so to README's table, by the test above)."""
    literal = []
    for path in (ROOT / "crew").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "event"
                    and node.args and any(isinstance(part, ast.Constant) for part in ast.walk(node.args[0]))):
                literal.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert literal == []
