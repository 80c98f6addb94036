"""The pre-commit hooks run the same checks as CI: the same pinned tools and stubs, and for mypy the
same runtime libraries, as requirements-dev.txt and requirements.txt name."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def requirements(name: str) -> set[str]:
    """The requirement lines of one file, without comments or includes."""
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / name).read_text(encoding="utf-8").splitlines())
    return {line for line in lines if line and not line.startswith("-r")}


def hook_dependencies(hook_id: str) -> set[str]:
    """The additional_dependencies of one hook of .pre-commit-config.yaml (quoted list items)."""
    text = (ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8")
    hook = re.search(rf"- id: {hook_id}\n(.*?)(?=\n\s*- id: |\Z)", text, re.S)
    assert hook, f"no hook {hook_id} in .pre-commit-config.yaml"
    return set(re.findall(r'"([A-Za-z0-9_.-]+(?:==|>=)[^"]+)"', hook.group(1)))


def test_ruff_hook_pins_the_version_of_requirements_dev() -> None:
    ruff = {line for line in requirements("requirements-dev.txt") if line.startswith("ruff==")}
    assert ruff and hook_dependencies("ruff") == ruff


def test_mypy_hook_holds_the_pinned_checker_stubs_and_runtime_libraries() -> None:
    dev = {line for line in requirements("requirements-dev.txt") if not line.startswith("ruff==")}
    assert hook_dependencies("mypy") == dev | requirements("requirements.txt")
