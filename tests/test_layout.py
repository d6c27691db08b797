"""The package's layout: its modules import each other without cycles, downwards.

The imports are read from the source (``TYPE_CHECKING`` blocks included: a cycle hidden
there is a cycle all the same), resolved to modules of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

import trio_realtime

PACKAGE: Final = Path(trio_realtime.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that *name* imports."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def test_no_module_imports_itself_through_others() -> None:
    """The import graph of the package's modules has no cycle (packages' __init__ aside:
    they re-export what their modules define)."""
    edges = {
        name: {t for t in targets if not _is_package(t)}
        for name, targets in graph().items()
        if not _is_package(name)
    }
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def test_the_sans_io_protocol_imports_only_core_modules() -> None:
    """protocol/ stands on the core values (errors, topics, events) and nothing above them."""
    core = {"trio_realtime._errors", "trio_realtime._topics", "trio_realtime._event"}
    for name, targets in graph().items():
        if name.startswith("trio_realtime.protocol"):
            outside = {t for t in targets if not t.startswith("trio_realtime.protocol")}
            assert outside <= core, (name, outside - core)


def test_the_bus_knows_no_network() -> None:
    """bus/ imports neither the broker, the client, nor the transport."""
    for name, targets in graph().items():
        if name.startswith("trio_realtime.bus"):
            above = {
                t
                for t in targets
                if t.startswith(("trio_realtime.broker", "trio_realtime.client"))
                or t == "trio_realtime._transport"
            }
            assert not above, (name, above)
