"""MemoryStore beyond the shared contract: retention, and being single-use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio

from trio_realtime import Event
from trio_realtime.store import MemoryStore


async def test_retention_by_count_keeps_the_newest_and_never_reuses_seqs() -> None:
    """max_events removes the oldest events on append; seqs are not reused."""
    async with MemoryStore(max_events=3) as store:
        for i in range(5):
            await store.append([Event(topic="t", data=i)])
        assert [e.data for e in await store.read("t")] == [2, 3, 4]
        assert (await store.first_seq(), await store.last_seq()) == (3, 5)
        assert await store.read("t", after=1) == await store.read("t")
        [event] = await store.append([Event(topic="t", data=5)])
        assert event.seq == 6
        stats = store.statistics()
        assert (stats.events_stored, stats.events_removed, stats.first_seq) == (3, 3, 4)


async def test_removed_ids_may_be_stored_again() -> None:
    """An event id is unique among the events stored, not among those removed."""
    async with MemoryStore(max_events=1) as store:
        [first] = await store.append([Event(topic="t")])
        await store.append([Event(topic="t")])
        [again] = await store.append([Event(topic="t", id=first.id)])
        assert again.seq == 3


async def test_retention_by_age_removes_old_events_from_the_oldest_end() -> None:
    """max_age removes events older than the limit, up to the first young one."""
    now = datetime.now(UTC)
    hours = [-5, -4, 0, -3, 0]
    events = [Event(topic="t", data=h, time=now + timedelta(hours=h)) for h in hours]
    async with MemoryStore(max_age=timedelta(hours=1)) as store:
        await store.append(events)
        assert await store.apply_retention() == 0  # the append already applied it
        assert [e.data for e in await store.read("t")] == [0, -3, 0]
        assert await store.first_seq() == 3


async def test_many_removals_compact_the_store() -> None:
    """Removing thousands of events one by one keeps reads and seqs right."""
    async with MemoryStore(max_events=10) as store:
        for i in range(3000):
            await store.append([Event(topic="t", data=i)])
        assert [e.data for e in await store.read("t")] == list(range(2990, 3000))
        assert await store.first_seq() == 2991
        assert [e.seq for e in await store.read("t", after=2995)] == [2996, 2997, 2998, 2999, 3000]


async def test_a_closed_memory_store_cannot_be_reopened() -> None:
    """A MemoryStore is single-use: open() after aclose() raises ClosedResourceError."""
    store = MemoryStore()
    async with store:
        assert "open" in repr(store)
        with pytest.raises(RuntimeError, match="already open"):
            await store.open()
    with pytest.raises(trio.ClosedResourceError):
        await store.open()
    assert store.max_events is None
    assert store.max_age is None


def test_bad_retention_options_are_rejected() -> None:
    """max_events and max_age must be positive."""
    with pytest.raises(ValueError, match="max_events"):
        MemoryStore(max_events=0)
    with pytest.raises(ValueError, match="max_age"):
        MemoryStore(max_age=timedelta(seconds=-1))
    with pytest.raises(TypeError):
        MemoryStore(max_events=1.5)  # type: ignore[arg-type]
    assert MemoryStore(max_age=90).max_age == timedelta(seconds=90)


async def test_a_naive_time_is_stored_as_utc() -> None:
    """An event time without an offset is taken as UTC, and read back aware."""
    naive = datetime(2030, 6, 1, 12, 0, 0, 123456)
    async with MemoryStore() as store:
        await store.append([Event(topic="t", time=naive)])
        [event] = await store.read("t", since=naive)
        assert event.time == naive.replace(tzinfo=UTC)
