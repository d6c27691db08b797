"""Both stores keep the Store contract, and the contract check catches stores that do not."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest
import trio

from trio_realtime.store import MemoryStore, SQLiteStore
from trio_realtime.testing._check_store import check_store

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime
    from pathlib import Path

    from trio_realtime import Event


async def test_memory_store_keeps_the_contract() -> None:
    """MemoryStore passes check_store."""
    await check_store(MemoryStore)


async def test_memory_store_with_retention_limits_keeps_the_contract() -> None:
    """MemoryStore with generous retention limits still passes check_store."""
    await check_store(lambda: MemoryStore(max_events=10_000, max_age=10 * 365 * 86400))


async def test_sqlite_store_keeps_the_contract(tmp_path: Path) -> None:
    """SQLiteStore on real files passes check_store."""
    paths = (tmp_path / f"store{i}.db" for i in itertools.count())
    await check_store(lambda: SQLiteStore(next(paths)))


async def test_sqlite_store_with_full_sync_keeps_the_contract(tmp_path: Path) -> None:
    """SQLiteStore with synchronous='full' and retention limits passes check_store."""
    paths = (tmp_path / f"store{i}.db" for i in itertools.count())
    await check_store(lambda: SQLiteStore(next(paths), synchronous="full", max_events=10_000))


class _ReversedReads(MemoryStore):
    """A broken store: it returns events newest first."""

    async def read(
        self,
        pattern: str,
        *,
        after: int | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Event]:
        return list(reversed(await super().read(pattern, after=after, since=since, limit=limit)))


class _CancelsAfterStoring(MemoryStore):
    """A broken store: a cancelled append stores its events all the same."""

    async def append(self, events: Sequence[Event]) -> list[Event]:
        with trio.CancelScope(shield=True):
            stored = await super().append(events)
        await trio.lowlevel.checkpoint()
        return stored


class _SharedEpoch(MemoryStore):
    """A broken store: every instance has the same epoch."""

    @property
    def epoch(self) -> str:
        _ = super().epoch
        return "always-the-same"


@pytest.mark.parametrize("broken", [_ReversedReads, _CancelsAfterStoring, _SharedEpoch])
async def test_check_store_catches_broken_stores(broken: type[MemoryStore]) -> None:
    """check_store fails, with an AssertionError, on a store that breaks the contract."""
    with pytest.raises(AssertionError):
        await check_store(broken)
