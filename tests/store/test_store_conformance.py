"""Both stores keep the Store contract, and the contract check catches stores that do not."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest
import trio

from trio_realtime.store import MemoryStore, SQLiteStore, approximate_size
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
    await check_store(
        lambda: MemoryStore(max_events=10_000, max_age=10 * 365 * 86400, max_bytes=2**30)
    )


async def test_sqlite_store_keeps_the_contract(tmp_path: Path) -> None:
    """SQLiteStore on real files passes check_store."""
    paths = (tmp_path / f"store{i}.db" for i in itertools.count())
    await check_store(lambda: SQLiteStore(next(paths)))


async def test_sqlite_store_with_full_sync_keeps_the_contract(tmp_path: Path) -> None:
    """SQLiteStore with synchronous='full' and retention limits passes check_store."""
    paths = (tmp_path / f"store{i}.db" for i in itertools.count())
    await check_store(lambda: SQLiteStore(next(paths), synchronous="full", max_events=10_000))


class _BrokenReads(MemoryStore):
    """A broken store whose reads pass through :meth:`_break`: given the events read with
    max_bytes applied (when :attr:`honours_max_bytes`) or not, it returns what the read does."""

    honours_max_bytes = True

    async def read(
        self,
        pattern: str,
        *,
        after: int | None = None,
        since: datetime | None = None,
        limit: int = 100,
        max_bytes: int | None = None,
    ) -> list[Event]:
        bound = max_bytes if self.honours_max_bytes else None
        events = await super().read(pattern, after=after, since=since, limit=limit, max_bytes=bound)
        return self._break(events, max_bytes)

    def _break(self, events: list[Event], max_bytes: int | None) -> list[Event]:
        raise NotImplementedError


class _ReversedReads(_BrokenReads):
    """A broken store: it returns events newest first."""

    def _break(self, events: list[Event], max_bytes: int | None) -> list[Event]:
        return events[::-1]


class _IgnoresMaxBytes(_BrokenReads):
    """A broken store: its reads ignore max_bytes."""

    honours_max_bytes = False

    def _break(self, events: list[Event], max_bytes: int | None) -> list[Event]:
        return events


class _NothingOverBudget(_BrokenReads):
    """A broken store: a read returns nothing when the first event is larger than max_bytes."""

    def _break(self, events: list[Event], max_bytes: int | None) -> list[Event]:
        if max_bytes is not None and events and approximate_size(events[0]) > max_bytes:
            return []
        return events


class _OneEventTooMany(_BrokenReads):
    """A broken store: max_bytes lets through the event that goes past it."""

    honours_max_bytes = False

    def _break(self, events: list[Event], max_bytes: int | None) -> list[Event]:
        if max_bytes is None:
            return events
        total = 0
        for i, event in enumerate(events):
            if total > max_bytes:
                return events[:i]
            total += approximate_size(event)
        return events


class _CountsBytesDifferently(_BrokenReads):
    """A broken store: its max_bytes counts the data alone, not approximate_size."""

    honours_max_bytes = False

    def _break(self, events: list[Event], max_bytes: int | None) -> list[Event]:
        if max_bytes is None:
            return events
        total = 0
        for i, event in enumerate(events):
            total += len(repr(event.data))
            if total > max_bytes and i:
                return events[:i]
        return events


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


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        (_ReversedReads, r"read\('>'\) must return what was appended"),
        (_CancelsAfterStoring, r"after an append\(\) that raised Cancelled: last_seq\(\) is 1"),
        (_SharedEpoch, "two stores created afresh must have different epochs"),
        (_IgnoresMaxBytes, r"max_bytes=1\) returned the seqs"),
        (_NothingOverBudget, r"max_bytes=1\) returned the seqs \[\], expected \[\d+\]"),
        (_OneEventTooMany, r"max_bytes=\d+\) returned the seqs"),
        (_CountsBytesDifferently, r"max_bytes=\d+\) returned the seqs"),
    ],
)
async def test_check_store_catches_broken_stores(broken: type[MemoryStore], complaint: str) -> None:
    """check_store fails on a store that breaks the contract, naming what it breaks."""
    with pytest.raises(AssertionError, match=complaint):
        await check_store(broken)
