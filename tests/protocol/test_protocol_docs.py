"""The protocol documentation lists exactly the error codes and close codes the code has.

``docs/protocol.rst`` is the contract other clients are written from: its error-code table
must name every code of :data:`~trio_realtime.protocol.ERROR_CODES` and no other, and its
close-code table every close code a peer can receive (the ``CLOSE_*`` constants, and the
WebSocket layer's own 1002 and 1007).
"""

from __future__ import annotations

import re
from pathlib import Path

import trio_realtime.protocol as protocol

DOC = Path(__file__).parents[2] / "docs" / "protocol.rst"


def _section(title: str) -> str:
    """The text of the section of docs/protocol.rst with this *title*."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n{title}\n{'-' * len(title)}\n")
    following = re.search(r"\n[^\n]+\n-{3,}\n", text[start + len(title) + 2 :])
    end = start + len(title) + 2 + following.start() if following else len(text)
    return text[start:end]


def _first_cells(section: str) -> list[str]:
    """The first cell of every row of the list-table(s) in *section* (header row excluded)."""
    cells = re.findall(r"^   \* - (.+)$", section, flags=re.MULTILINE)
    return cells[1:]


def _leading(pattern: str, cell: str) -> str:
    found = re.match(pattern, cell)
    assert found is not None, f"a table row that does not start with a code: {cell!r}"
    return found.group(1)


def test_the_error_code_table_is_error_codes() -> None:
    """Every error code is in the docs' table, and the table has no other."""
    documented = {
        _leading(r"``([a-z_]+)``", cell) for cell in _first_cells(_section("Error codes"))
    }
    assert documented == set(protocol.ERROR_CODES)


def test_the_close_code_table_has_every_close_code() -> None:
    """Every close code a peer can receive is in the docs' table, and the table has no other."""
    documented = {int(_leading(r"(\d+)", cell)) for cell in _first_cells(_section("Close codes"))}
    constants = {
        value
        for name, value in vars(protocol).items()
        if name.startswith("CLOSE_") and isinstance(value, int)
    }
    websocket_layer = {1002, 1007}  # sent by the WebSocket layer (wsproto) for bad frames
    assert documented == constants | websocket_layer
