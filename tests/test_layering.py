"""The shape ARCHITECTURE.md describes, checked: which way imports go, no cycles, the agent's
tests run without torch or the compiler, and files and functions stay short."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "compiler")


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    known = dict(modules())
    return {module for module in found if module in known and module != name}


GRAPH = {name: imports(name, path) for name, path in modules()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                found.append([*path[path.index(child) :], child])
            elif child not in state:
                visit(child, [*path, child])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


def subsystems() -> dict[str, set[str]]:
    """The graph between subsystems: ``agent.delivery`` → ``agent.inference`` and so on."""
    graph: dict[str, set[str]] = {}
    for name, imported in GRAPH.items():
        mine = ".".join(name.split(".")[:2])
        others = {".".join(module.split(".")[:2]) for module in imported}
        graph.setdefault(mine, set()).update(others - {mine} - set(PACKAGES))
    return graph


# The agent's layers, lowest first: a part imports only parts of lower layers (ARCHITECTURE.md).
AGENT_LAYERS = [
    {"agent.contract"},
    {"agent.errors", "agent.logs", "agent.notify", "agent.extras"},
    {"agent.config", "agent.clihelp"},
    {"agent.comms"},
    {"agent.sources"},
    {"agent.inference"},
    {"agent.delivery", "agent.upstream"},
    {"agent.control"},
    {"agent.daemon", "agent.bench", "agent.preflight"},
    {"agent.cli"},
    {"agent.launch"},  # the console script: checks the extra, then imports agent.cli
    {"agent.__main__"},
]


def test_the_agent_is_layered() -> None:
    rank = {part: level for level, parts in enumerate(AGENT_LAYERS) for part in parts}
    graph = subsystems()
    assert set(rank) == {part for part in graph if part.startswith("agent.")}
    upward = [
        f"{part} imports {other}"
        for part, imported in graph.items()
        if part in rank
        for other in imported
        if other in rank and rank[other] >= rank[part] and other != part
    ]
    assert not upward, upward


def test_no_import_cycles() -> None:
    """Module-level and function-level imports alike: a cycle means two parts that should be one,
    or a third part that both need."""
    assert not cycles(GRAPH)


def test_no_cycles_between_subsystems() -> None:
    """Subsystems are layered: if sources, inference, upstream and delivery need each other
    both ways, none of them can be understood or replaced alone."""
    assert not cycles(subsystems())


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("agent", "compiler"),
        ("agent.contract", "agent."),  # the contract stands alone (but for itself)
        ("agent.inference", "agent.delivery"),
        ("agent.sources", "agent.delivery"),
        ("agent.sources", "agent.upstream"),
        ("compiler.compile", "compiler.recipe"),
        ("compiler.compile", "compiler.fleet"),
        ("compiler.fleet", "compiler.recipe"),
        ("compiler.fleet", "compiler.compile"),
        ("compiler.fleet", "compiler.rollout"),  # serve takes jobs through ServeOptions.jobs
        ("compiler.fleet", "compiler.console"),
        ("compiler.rollout", "compiler.console"),
        ("compiler.compile", "compiler.console"),
    ],
)
def test_imports_go_one_way(importer: str, forbidden: str) -> None:
    wrong = {
        f"{name} imports {module}"
        for name, imported in GRAPH.items()
        if name == importer or name.startswith(f"{importer}.")
        for module in imported
        if module.startswith(forbidden) and not module.startswith(importer)
    }
    assert not wrong, sorted(wrong)


def test_files_and_functions_stay_short() -> None:
    long_files, long_functions = [], []
    for name, path in modules():
        tree = ast.parse(path.read_text())
        if len(path.read_text().splitlines()) > 400:
            long_files.append(name)
        for node in ast.walk(tree):
            is_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if is_function and (node.end_lineno or node.lineno) - node.lineno + 1 > 60:
                long_functions.append(f"{name}.{node.name}")
    assert not long_files and not long_functions, (long_files, long_functions)


def test_the_agents_tests_run_without_torch_or_the_compiler() -> None:
    """What a board runs: tests/device/ with torch and the compiler unimportable."""
    tests = REPO / "tests"
    run = subprocess.run(
        [sys.executable, str(tests / "without_torch.py"), "pytest", str(tests / "device"), "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "BLOCKED-MODULES-LOADED=[]" in run.stdout
    assert " passed" in run.stdout
