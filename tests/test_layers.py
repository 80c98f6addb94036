"""The package's layers, read from its source: every import statement in every module under crew/,
lazy ones inside functions included (only `if TYPE_CHECKING:` blocks are skipped, as they never
run). No import circle; the lowest modules import nothing above them; the product imports neither
the tests nor the scripts.

Run as a program it prints any import circle (file -> file: names)."""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from support.repos import ROOT


PACKAGE = ROOT / "crew"
# The modules everything else stands on: errors, processes, files, text made safe, git. Each
# imports only modules of this set; failpoints import nothing of crew at all, so any module,
# git's calls included, may carry one without pulling in what tests arm them for.
LOWEST = {"crew.errors", "crew.failpoints", "crew.files", "crew.logs", "crew.names", "crew.orphans",
          "crew.processes", "crew.console", "crew.git"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_statements(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement anywhere in the tree, but in `if TYPE_CHECKING:` bodies."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and is_type_checking(node):
            for branch in node.orelse:
                yield from import_statements(ast.Module(body=[branch], type_ignores=[]))
            continue
        yield from import_statements(node)


def imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
             known: set[str]) -> Iterator[tuple[str, str]]:
    """(module imported, the name it was imported for) for one statement."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, alias.name
        return
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        here = here[:len(here) - node.level + 1]
        base = ".".join([*here, base] if base else here)
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield (submodule, alias.name) if submodule in known else (base, alias.name)


def import_graph() -> dict[str, dict[str, list[str]]]:
    """module -> {module of crew it imports -> the names imported}; imports from outside crew are
    kept under their own top-level names, for the check that crew never imports tests or scripts."""
    found = modules()
    known = set(found)
    graph: dict[str, dict[str, list[str]]] = {}
    for module, path in found.items():
        edges: dict[str, list[str]] = graph.setdefault(module, {})
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in import_statements(tree):
            for target, name in imported(module, path.name == "__init__.py", node, known):
                if target != module:
                    edges.setdefault(target, []).append(name)
    return graph


def circles(graph: dict[str, set[str]] | dict[str, dict[str, list[str]]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph.get(root, ())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in graph:
                    continue
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(graph[target])))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
    return found


def circle_edges(graph: dict[str, dict[str, list[str]]], circle: set[str]) -> list[str]:
    """The imports that hold a circle together, as `file -> file: names`."""
    def file(module: str) -> str:
        return modules()[module].relative_to(ROOT).as_posix()
    return [f"{file(source)} -> {file(target)}: {', '.join(sorted(set(names)))}"
            for source in sorted(circle) for target, names in sorted(graph[source].items()) if target in circle]


def test_the_circle_finder_finds_a_circle_and_only_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []


def test_every_import_statement_is_seen_but_type_checking_ones():
    tree = ast.parse("import a\nif TYPE_CHECKING:\n    import b\nelse:\n    import c\n"
                     "def f():\n    from crew import d\nclass K:\n    def g(self):\n        import e\n")
    assert [alias.name for node in import_statements(tree) for alias in node.names] == ["a", "c", "d", "e"]


def test_no_import_circle_among_crew_modules():
    graph = import_graph()
    found = circles(graph)
    assert found == [], "\n".join(line for circle in found for line in circle_edges(graph, circle))


def test_the_lowest_modules_import_nothing_above_them():
    graph = import_graph()
    above = {module: sorted(target for target in graph[module] if target.startswith("crew") and target not in LOWEST)
             for module in LOWEST}
    assert {module: found for module, found in above.items() if found} == {}
    assert [target for target in graph["crew.failpoints"] if target.startswith("crew")] == []


def test_the_product_imports_neither_tests_nor_scripts():
    outside = {"tests", "scripts", "conftest", "support"} | {
        path.stem for folder in ("tests", "tests/support", "scripts") for path in (ROOT / folder).glob("*.py")}
    found = {module: sorted(target for target in targets if target.split(".")[0] in outside)
             for module, targets in import_graph().items()}
    assert {module: targets for module, targets in found.items() if targets} == {}



def test_the_task_stores_know_nothing_of_the_dispatcher():
    """A store keeps tasks; what the dispatcher records of them (its state files, its branches)
    reaches a store only as text its opener passes in."""
    graph = import_graph()
    stores = [module for module in graph if module.startswith("crew.tasks.")]
    assert {module: sorted(target for target in graph[module]
                           if target == "crew.workspace" or target.startswith("crew.dispatch"))
            for module in stores} == {module: [] for module in stores}

if __name__ == "__main__":
    whole = import_graph()
    if not circles(whole):
        print("No import circle among the modules of crew/.")
    for left in circles(whole):
        print(f"A circle of {len(left)} modules:")
        print("\n".join(f"  {line}" for line in circle_edges(whole, left)))
