"""The house rules of `pipeline/`, checked from the source text (nothing is imported).

- no import cycle among the modules of `pipeline/` (imports inside functions count too: they tie
  the modules together all the same, they only defer the failure to the first call);
- no function or method over 80 lines (counted like /work/shared/tools/layout_check.py: from the
  `def` line to the last line of the body, decorators excluded, nested functions counted on
  their own and inside their parent);
- no Airflow anywhere in `pipeline/`: the DAGs in dags/ call the library, never the reverse;
- `pipeline/irc` (the request path) loads none of the batch stack at module level, directly or
  through the pipeline modules it imports;
- a module's file name says what it is: no two packages of `pipeline/` have a module of the same
  name (`__init__.py` and `__main__.py` aside).

Exceptions are listed explicitly below, and each list is itself checked: an entry that no longer
breaks the rule fails the test, so the lists only ever shrink.
"""

from __future__ import annotations

import ast
import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "pipeline"
MAX_FUNCTION_LINES = 80

NEVER_IN_PIPELINE = frozenset({"airflow"})
NOT_AT_IRC_MODULE_LEVEL = frozenset({"pandas", "airflow", "ortools", "great_expectations", "duckdb"})
NAME_MAY_REPEAT = frozenset({"__init__.py", "__main__.py"})


@dataclass(frozen=True)
class Import:
    """One import statement's target, as written (absolute), and whether it runs at import time."""

    target: str
    names: tuple[str, ...]  # for `from target import a, b`; empty for `import target`
    module_level: bool
    line: int


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "pipeline.plan.core"; a package is named by its __init__
    path: Path
    tree: ast.Module

    @property
    def rel(self) -> str:
        return self.path.relative_to(REPO_ROOT).as_posix()

    @property
    def package(self) -> str:
        """The package relative imports are resolved against."""
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]


@functools.cache
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = Module(name, path, ast.parse(path.read_text(), filename=str(path)))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, module_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every node under `node`, with whether it runs when the module is imported.

    Bodies of functions and lambdas run later; so does an `if TYPE_CHECKING:` block (never, in
    fact). Class bodies, `try` and plain `if` blocks at module level run at import.
    """
    for child in ast.iter_child_nodes(node):
        runs_now = module_level
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            runs_now = False
        yield child, runs_now
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, False
                yield from _walk(stmt, False)
            for stmt in child.orelse:
                yield stmt, runs_now
                yield from _walk(stmt, runs_now)
            continue
        yield from _walk(child, runs_now)


@functools.cache
def imports(name: str) -> tuple[Import, ...]:
    """Every import in module `name`, relative ones made absolute; `import_module("x")` counts too."""
    module = modules()[name]
    found = []
    for node, module_level in _walk(module.tree, module_level=True):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, (), module_level, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = module.package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                target = ".".join([*anchor, target] if target else anchor)
            found.append(Import(target, tuple(alias.name for alias in node.names), module_level, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(Import(node.args[0].value, (), False, node.lineno))
    return tuple(found)


def _deepest_module(dotted: str) -> str | None:
    """The deepest module of pipeline/ that `dotted` names or lies in (`import a.b.c` loads a.b.c)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if (candidate := ".".join(parts[:n])) in modules():
            return candidate
    return None


def dependencies(imp: Import) -> set[str]:
    """The pipeline modules one import needs.

    `from pipeline.x import y` needs the submodule `pipeline.x.y` when y is one, else `pipeline.x`
    (a name defined or re-exported there).
    """
    if not imp.names or imp.names == ("*",):
        found = _deepest_module(imp.target)
        return {found} if found else set()
    deps = set()
    for name in imp.names:
        found = f"{imp.target}.{name}" if f"{imp.target}.{name}" in modules() else _deepest_module(imp.target)
        if found:
            deps.add(found)
    return deps


@functools.cache
def import_graph(*, module_level_only: bool = False) -> dict[str, set[str]]:
    graph = {}
    for name in modules():
        deps = set()
        for imp in imports(name):
            if imp.module_level or not module_level_only:
                deps |= dependencies(imp)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete loop through a component, for a readable failure message."""
    members = set(component)
    path = [component[0]]
    seen = {component[0]}
    while True:
        step = min(d for d in graph[path[-1]] if d in members)
        if step in seen:
            return [*path[path.index(step):], step]
        path.append(step)
        seen.add(step)


def function_lengths() -> dict[str, int]:
    """"path::Qualified.name" → lines, for every function and method (nested ones too)."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str, rel: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                qualname = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    assert child.end_lineno is not None
                    key = f"{rel}::{qualname}"
                    lengths[key] = max(lengths.get(key, 0), child.end_lineno - child.lineno + 1)
                visit(child, f"{qualname}.", rel)
            else:
                visit(child, prefix, rel)

    for module in modules().values():
        visit(module.tree, "", module.rel)
    return lengths


def long_functions() -> dict[str, int]:
    return {key: n for key, n in function_lengths().items() if n > MAX_FUNCTION_LINES}


def repeated_names() -> dict[str, list[str]]:
    counts = Counter(m.path.name for m in modules().values())
    return {
        name: sorted(m.rel for m in modules().values() if m.path.name == name)
        for name, n in counts.items()
        if n > 1 and name not in NAME_MAY_REPEAT
    }


def _top(dotted: str) -> str:
    return dotted.partition(".")[0]


# --- the rules ------------------------------------------------------------------------------


def test_no_import_cycle() -> None:
    graph = import_graph()
    loops = [" -> ".join(_cycle_path(graph, c)) for c in cycles(graph)]
    assert not loops, "import cycles in pipeline/ (imports inside functions included):\n  " + "\n  ".join(loops)


def test_no_function_over_80_lines() -> None:
    over = long_functions()
    listing = "\n  ".join(f"{key} ({n} lines)" for key, n in sorted(over.items()))
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines:\n  {listing}"


def test_pipeline_never_imports_airflow() -> None:
    found = [
        f"{m.rel}:{imp.line} {imp.target}"
        for m in modules().values()
        for imp in imports(m.name)
        if _top(imp.target) in NEVER_IN_PIPELINE
    ]
    assert not found, "pipeline/ imports Airflow (the DAGs call the library, not the reverse):\n  " + "\n  ".join(found)


def _loaded_at_import(start: str) -> set[str]:
    """The pipeline modules `import start` runs: module-level imports, and every parent package."""
    graph = import_graph(module_level_only=True)
    todo, seen = [start], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = [name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)]
        todo += [*graph[name], *parents]
    return seen


def test_irc_loads_no_batch_stack_at_module_level() -> None:
    found = []
    for name, module in modules().items():
        if not (name == "pipeline.irc" or name.startswith("pipeline.irc.")):
            continue
        for loaded in sorted(_loaded_at_import(name)):
            for imp in imports(loaded):
                if imp.module_level and _top(imp.target) in NOT_AT_IRC_MODULE_LEVEL:
                    via = "" if loaded == name else f" (via {modules()[loaded].rel}:{imp.line})"
                    found.append(f"{module.rel}: {imp.target}{via}")
    assert not found, "pipeline/irc loads the batch stack at import (import it inside the function that needs it):\n  " + "\n  ".join(
        sorted(set(found))
    )


def test_module_names_do_not_repeat_across_packages() -> None:
    repeated = repeated_names()
    listing = "\n  ".join(f"{name}: {', '.join(paths)}" for name, paths in sorted(repeated.items()))
    assert not repeated, f"module names repeat across packages of pipeline/ (name each for what it holds):\n  {listing}"


# --- the checker checks itself on small trees, so a rule cannot pass by finding nothing --------


@pytest.fixture
def tiny_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty `pipeline/` under tmp_path that the helpers above read instead of the real one."""
    monkeypatch.setitem(globals(), "REPO_ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "pipeline")
    _clear_caches()
    (tmp_path / "pipeline").mkdir()
    yield tmp_path / "pipeline"
    _clear_caches()


def _clear_caches() -> None:
    for cached in (modules, imports, import_graph):
        cached.cache_clear()


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_checker_finds_a_cycle_through_a_function_level_import(tiny_package: Path) -> None:
    _write(tiny_package, "__init__.py", "")
    _write(tiny_package, "a/__init__.py", "")
    _write(tiny_package, "a/one.py", "from pipeline.a import two\n")
    _write(tiny_package, "a/two.py", "def f():\n    from ..b import three\n")
    _write(tiny_package, "b/__init__.py", "")
    _write(tiny_package, "b/three.py", "import pipeline.a.one\n")
    graph = import_graph()
    assert graph["pipeline.a.one"] == {"pipeline.a.two"}  # the submodule, not the package
    assert graph["pipeline.a.two"] == {"pipeline.b.three"}
    assert cycles(graph) == [["pipeline.a.one", "pipeline.a.two", "pipeline.b.three"]]
    assert _cycle_path(graph, cycles(graph)[0]) == ["pipeline.a.one", "pipeline.a.two", "pipeline.b.three", "pipeline.a.one"]
    assert cycles(import_graph(module_level_only=True)) == []


def test_checker_allows_a_package_that_reexports_its_modules(tiny_package: Path) -> None:
    _write(tiny_package, "__init__.py", "")
    _write(tiny_package, "a/__init__.py", "from .one import f\nfrom pipeline.a.two import g\n")
    _write(tiny_package, "a/one.py", "from pipeline.a import two\ndef f(): pass\n")
    _write(tiny_package, "a/two.py", "def g(): pass\n")
    assert cycles(import_graph()) == []
    _write(tiny_package, "a/two.py", "from pipeline.a import f\ndef g(): pass\n")  # a name of the package: a cycle
    _clear_caches()
    assert cycles(import_graph()) == [["pipeline.a", "pipeline.a.one", "pipeline.a.two"]]


def _body(statements: int, indent: int) -> str:
    return "".join(f"{' ' * indent}x{i} = {i}\n" for i in range(statements))


def test_checker_counts_function_lines_like_layout_check(tiny_package: Path) -> None:
    source = (
        "@staticmethod\ndef fits():\n" + _body(79, 4)  # the decorator is not counted
        + "class C:\n    def too_long(self):\n" + _body(80, 8)
        + "    async def nested(self):\n        def inner():\n" + _body(80, 12)  # counted in both
    )
    _write(tiny_package, "m.py", source)
    assert function_lengths()["pipeline/m.py::fits"] == MAX_FUNCTION_LINES
    assert long_functions() == {"pipeline/m.py::C.too_long": 81, "pipeline/m.py::C.nested": 82, "pipeline/m.py::C.nested.inner": 81}


def test_checker_sees_module_level_imports_only_where_they_run(tiny_package: Path) -> None:
    _write(
        tiny_package,
        "m.py",
        "from typing import TYPE_CHECKING\n"
        "import json\n"
        "if TYPE_CHECKING:\n    import pandas\nelse:\n    import duckdb\n"
        "try:\n    import ortools\nexcept ImportError:\n    pass\n"
        "class C:\n    import great_expectations\n    def f(self):\n        import airflow.sdk\n"
        "g = lambda: __import__('prophet')\n"
        "def h():\n    from importlib import import_module\n    return import_module('statsforecast')\n",
    )
    seen = {(imp.target, imp.module_level) for imp in imports("pipeline.m")}
    assert seen == {
        ("typing", True), ("json", True), ("pandas", False), ("duckdb", True), ("ortools", True),
        ("great_expectations", True), ("airflow.sdk", False), ("prophet", False), ("importlib", False), ("statsforecast", False),
    }


def test_checker_follows_irc_imports_through_other_packages(tiny_package: Path) -> None:
    _write(tiny_package, "__init__.py", "")
    _write(tiny_package, "irc/__init__.py", "")
    _write(tiny_package, "irc/x.py", "from pipeline.common.lake import read\n")
    _write(tiny_package, "common/__init__.py", "import duckdb\n")
    _write(tiny_package, "common/lake.py", "def read():\n    import pandas\n")
    assert _loaded_at_import("pipeline.irc.x") == {
        "pipeline", "pipeline.irc", "pipeline.irc.x", "pipeline.common", "pipeline.common.lake",
    }
