"""Cursors in the store (what a webhook endpoint resumes from): kept with the events,
checked by check_store."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from trio_realtime import Event
from trio_realtime.store import MemoryStore, SQLiteStore, Store
from trio_realtime.testing import check_store


async def test_an_sqlite_store_keeps_its_cursors_across_a_reopen(tmp_path: Path) -> None:
    """A cursor saved in an SQLite store is there when the file is opened again, beside the
    events; a new file has none."""
    path = tmp_path / "events.db"
    async with SQLiteStore(path) as store:
        await store.append([Event(topic="orders.created", data=1)])
        await store.save_cursor("webhook:audit", 1)
        await store.save_cursor("webhook:audit", 0)
        await store.save_cursor("webhook:crm", 1)
    async with SQLiteStore(path) as store:
        assert await store.load_cursor("webhook:audit") == 0
        assert await store.load_cursor("webhook:crm") == 1
        assert await store.load_cursor("webhook:other") is None
        assert [e.seq for e in await store.read(">")] == [1]
    async with SQLiteStore(tmp_path / "new.db") as store:
        assert await store.load_cursor("webhook:audit") is None


async def test_a_store_without_cursors_says_so_and_forgets_them() -> None:
    """The default of Store: keeps_cursors is false, load_cursor is None after a save, and
    the names are still checked."""

    class NoCursors(MemoryStore):
        keeps_cursors = False
        load_cursor = Store.load_cursor
        save_cursor = Store.save_cursor

    async with NoCursors() as store:
        await store.save_cursor("hook", 3)
        assert await store.load_cursor("hook") is None
        with pytest.raises(ValueError, match="1 to 200 characters"):
            await store.load_cursor("")
    await check_store(NoCursors)


class _ForgetsCursors(MemoryStore):
    """Says it keeps cursors, and loses them."""

    async def save_cursor(self, name: str, seq: int) -> None:
        await Store.save_cursor(self, name, seq)


class _FirstCursorOnly(MemoryStore):
    """Keeps the first seq saved under a name, not the last."""

    async def save_cursor(self, name: str, seq: int) -> None:
        if await self.load_cursor(name) is None:
            await super().save_cursor(name, seq)


class _AcceptsBadNames(MemoryStore):
    """Takes a cursor name of any length."""

    async def save_cursor(self, name: str, seq: int) -> None:
        self._cursors[name] = seq
        await trio.lowlevel.checkpoint()


class _CursorsAfterClose(MemoryStore):
    """Answers load_cursor after it is closed."""

    async def load_cursor(self, name: str) -> int | None:
        await trio.lowlevel.checkpoint()
        return self._cursors.get(name)


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        (_ForgetsCursors, "cursors saved as hook=5"),
        (_FirstCursorOnly, "cursors saved as hook=5"),
        (_AcceptsBadNames, "save_cursor"),
        (_CursorsAfterClose, r"load_cursor\(\) after aclose\(\)"),
    ],
)
async def test_check_store_catches_broken_cursors(broken: type[Store], complaint: str) -> None:
    """check_store fails on a store whose cursors break the contract, naming what breaks."""
    with pytest.raises(AssertionError, match=complaint):
        await check_store(broken)
