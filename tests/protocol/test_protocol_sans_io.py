"""trio_realtime.protocol stays sans-IO: it never imports trio or trio_websocket."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import trio_realtime.protocol

PACKAGE_DIR = Path(trio_realtime.protocol.__file__).resolve().parent.parent
FORBIDDEN = {"trio", "trio_websocket"}


def module_file(name: str) -> Path | None:
    """The source file of the trio_realtime module *name*, if it is one."""
    parts = name.split(".")[1:]
    base = PACKAGE_DIR.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    """The dotted name of the trio_realtime module in *path*."""
    relative = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path) -> set[str]:
    """The absolute names of every module *path* imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:  # ``from . import _codec`` imports a module
                if module_file(f"{target}.{alias.name}") is not None:
                    found.add(f"{target}.{alias.name}")
    return found


def test_protocol_imports_no_trio_statically() -> None:
    """No module the protocol package imports, however indirectly, imports trio."""
    protocol_dir = PACKAGE_DIR / "protocol"
    to_visit = sorted(protocol_dir.glob("*.py"))
    assert len(to_visit) >= 4
    seen: set[Path] = set()
    while to_visit:
        path = to_visit.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            assert name.split(".")[0] not in FORBIDDEN, f"{module_name(path)} imports {name}"
            if name == "trio_realtime":
                raise AssertionError(
                    f"{module_name(path)} imports the package root, which imports the bus "
                    "(and trio): import from the private module instead"
                )
            if name.startswith("trio_realtime."):
                target = module_file(name)
                assert target is not None, f"{module_name(path)} imports unknown {name}"
                to_visit.append(target)
    assert {p.name for p in seen} >= {"_errors.py", "_event.py", "_topics.py", "_codec.py"}


def test_protocol_imports_no_trio_at_run_time() -> None:
    """Importing trio_realtime.protocol, without the package root, loads neither trio module."""
    code = textwrap.dedent(
        f"""
        import sys, types
        root = types.ModuleType("trio_realtime")
        root.__path__ = [{str(PACKAGE_DIR)!r}]
        sys.modules["trio_realtime"] = root  # skip trio_realtime/__init__.py and the bus
        import trio_realtime.protocol
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(FORBIDDEN)!r})
        assert not loaded, loaded
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_package_docstring_example_runs() -> None:
    """The example in the trio_realtime.protocol docstring runs as shown."""
    doc = trio_realtime.protocol.__doc__
    assert doc is not None
    example = textwrap.dedent(doc.split("::\n\n", 1)[1].split("\n\n", 1)[0])
    assert "Connection(Role.CLIENT)" in example
    exec(example, dict(vars(trio_realtime.protocol)))
