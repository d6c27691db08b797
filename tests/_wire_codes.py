"""A pytest plugin: every error code and close code in docs/protocol.rst is produced by a test.

While the suite runs, it records each ``error`` frame code the package's code sends through
a :class:`Connection`, and each close code sent on a WebSocket connection of the package's
transport (wsproto's ``CloseConnection``, by the broker or the client, whether the package
asked for it or wsproto answered a bad frame). The test doubles' codes do not count. When the
whole suite ran and passed, it checks both ways against the docs' tables: every documented
code was produced by some test (but those the docs mark as *reserved*: not sent by this
version), and nothing produced a code missing from the tables.
"""

from __future__ import annotations

import re
import sys
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import pytest
import wsproto
import wsproto.events

from trio_realtime._transport import WebSocketTransport
from trio_realtime.protocol import Connection, Error

DOC: Final = Path(__file__).parents[1] / "docs" / "protocol.rst"

#: What was produced during this run.
error_codes: Counter[str] = Counter()
close_codes: Counter[int] = Counter()


def section(title: str) -> str:
    """The text of the section of docs/protocol.rst with this *title*."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n{title}\n{'-' * len(title)}\n")
    following = re.search(r"\n[^\n]+\n-{3,}\n", text[start + len(title) + 2 :])
    end = start + len(title) + 2 + following.start() if following else len(text)
    return text[start:end]


def first_cells(text: str) -> list[str]:
    """The first cell of every row of the list-table(s) in *text* (header row excluded)."""
    return re.findall(r"^   \* - (.+)$", text, flags=re.MULTILINE)[1:]


def _leading(pattern: str, cell: str) -> str:
    found = re.match(pattern, cell)
    assert found is not None, f"a table row that does not start with a code: {cell!r}"
    return found.group(1)


def documented_error_codes() -> dict[str, bool]:
    """Each error code of the docs' table, and whether it is marked *reserved*."""
    return {
        _leading(r"``([a-z_]+)``", cell): "*reserved*" in cell
        for cell in first_cells(section("Error codes"))
    }


def documented_close_codes() -> dict[int, bool]:
    """Each close code of the docs' table, and whether it is marked *reserved*."""
    return {
        int(_leading(r"(\d+)", cell)): "*reserved*" in cell
        for cell in first_cells(section("Close codes"))
    }


def _errors_in(frames: Any) -> Iterator[str]:
    batch: Sequence[Any] = frames if isinstance(frames, (list, tuple)) else (frames,)
    for frame in batch:
        if type(frame) is Error:
            yield frame.code


#: Close code 1006 is never sent (RFC 6455 7.4.1): trio-websocket hands it to wsproto only
#: to note a connection that dropped, and writes nothing.
NEVER_SENT: Final = 1006

_send = Connection.send
_ws_send = wsproto.WSConnection.send
_transport_init = WebSocketTransport.__init__
#: The wsproto connections under the package's transports (not the test doubles').
_ours: weakref.WeakSet[wsproto.WSConnection] = weakref.WeakSet()


def _recording_send(self: Connection[Any, Any], frames: Any, **kwargs: Any) -> str:
    text = _send(self, frames, **kwargs)
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller.startswith("trio_realtime."):  # the package's, not a scripted test server's
        error_codes.update(_errors_in(frames))  # once it passed the connection's checks
    return text


def _recording_ws_send(self: wsproto.WSConnection, event: wsproto.events.Event) -> bytes:
    data = _ws_send(self, event)
    if (
        isinstance(event, wsproto.events.CloseConnection)
        and event.code != NEVER_SENT
        and self in _ours
    ):
        close_codes[event.code] += 1
    return data


def _noting_transport_init(self: WebSocketTransport, *args: Any, **kwargs: Any) -> None:
    _transport_init(self, *args, **kwargs)
    _ours.add(self._ws._wsproto)


def pytest_configure(config: pytest.Config) -> None:
    Connection.send = _recording_send  # type: ignore[method-assign]
    wsproto.WSConnection.send = _recording_ws_send  # type: ignore[method-assign]
    WebSocketTransport.__init__ = _noting_transport_init  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    Connection.send = _send  # type: ignore[method-assign]
    wsproto.WSConnection.send = _ws_send  # type: ignore[method-assign]
    WebSocketTransport.__init__ = _transport_init  # type: ignore[method-assign]


def _whole_suite_ran(session: pytest.Session) -> bool:
    option = session.config.option
    partial = (
        option.keyword,
        option.markexpr,
        option.maxfail,
        option.deselect,
        getattr(option, "lf", False),
        session.testsfailed,
    )
    if any(partial):
        return False
    tests = Path(__file__).parent
    collected = {Path(str(item.path)).resolve() for item in session.items}
    expected = {path.resolve() for path in tests.rglob("test_*.py")}
    return expected <= collected


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus != 0 or not _whole_suite_ran(session):
        return
    problems = []
    errors = documented_error_codes()
    closes = documented_close_codes()
    for code, reserved in sorted(errors.items()):
        if not reserved and not error_codes[code]:
            problems.append(f"error code {code!r} is documented but no test produced it")
    for close, reserved in sorted(closes.items()):
        if not reserved and not close_codes[close]:
            problems.append(f"close code {close} is documented but no test produced it")
    problems += [
        f"error code {code!r} was produced but is not in the docs' table"
        for code in sorted(set(error_codes) - set(errors))
    ]
    problems += [
        f"close code {close} was produced but is not in the docs' table"
        for close in sorted(set(close_codes) - set(closes))
    ]
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.section("protocol codes", sep="=", red=True, bold=True)
            for problem in problems:
                reporter.write_line(problem)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
