"""
The shape of the package, checked (docs/architecture.md draws it): small modules and
functions, imports in one direction, and no import cycle at run time.

"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "trustp2p"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60

# Layers, lowest first: a module imports only from its own layer or lower ones.
LAYERS: dict[str, int] = {
    "_version": 0,
    "_build": 0,
    "tasks": 2,
    "exceptions": 0,
    "identity": 1,
    "loop": 1,
    "protocol": 1,
    "drivers": 2,
    "security": 2,
    "options": 3,
    "option_ranges": 3,  # the range of each number of NodeOptions
    "addresses": 2,  # the admin listener's address and its checks
    "config": 3,  # options from flags, the environment and trustp2p.toml
    "logs": 1,  # the command line's log formats
    "storage": 3,
    "threads": 3,  # threads see the node only through the object they are given
    "node": 4,
    "admin": 4,  # the operator's view: the node starts it, it sees the node only in types
    "testing": 5,
    "apps": 5,
    "cli": 6,
    "__main__": 7,
    "__init__": 7,
}


def modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if not p.name.endswith("_pb2.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return LAYERS["__init__"]
    return LAYERS[parts[1]]


def runtime_imports(path: Path) -> set[str]:
    """The trustp2p modules ``path`` imports when it is imported: module-level imports,
    not those under ``if TYPE_CHECKING:`` nor inside functions."""
    tree = ast.parse(path.read_text())
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If):
                test = node.test
                if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                    visit(node.orelse)
                    continue
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("trustp2p"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base]) if base else ".".join(anchor)
                if not base.startswith("trustp2p"):
                    continue
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if is_module(candidate) else base)

    visit(tree.body)
    return found


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (SRC / relative).with_suffix(".py").exists() or (SRC / relative).is_dir()


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_module_and_function_sizes(path: Path) -> None:
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    ]
    assert long == []


# Written as a user's thread (``trustp2p init`` copies it into an application), so it
# imports the public package like any user thread; the node never imports it.
USER_THREADS = {"trustp2p.threads.heartbeat"}


def test_imports_go_one_way() -> None:
    wrong = [
        f"{module_name(path)} -> {target}"
        for path in modules()
        if module_name(path) not in USER_THREADS
        for target in runtime_imports(path)
        if layer(target) > layer(module_name(path))
    ]
    assert wrong == []


def test_no_import_cycle_at_run_time() -> None:
    graph = {module_name(path): runtime_imports(path) for path in modules()}
    # A package's own __init__ re-exporting its modules is not a cycle by itself.
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert cycles == []


def test_the_checker_sees_imports() -> None:
    """The graph isn't empty by mistake: the node imports the protocol, not under
    TYPE_CHECKING."""
    node = runtime_imports(SRC / "node" / "node.py")
    assert "trustp2p.protocol.package" in node
    assert "trustp2p.node.connections" in node
    threads_base = runtime_imports(SRC / "threads" / "base.py")
    assert not any(name.startswith("trustp2p.node") for name in threads_base)
