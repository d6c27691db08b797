"""MemoryStore beyond the shared contract: retention, and being single-use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio

from trio_realtime import Event
from trio_realtime._cli import CommandError, open_store
from trio_realtime.store import (
    DEFAULT_MEMORY_MAX_BYTES,
    DEFAULT_MEMORY_MAX_EVENTS,
    EVENT_SIZE_OVERHEAD,
    MemoryStore,
    approximate_size,
)


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
    """max_events, max_age and max_bytes must be positive."""
    with pytest.raises(ValueError, match="max_events"):
        MemoryStore(max_events=0)
    with pytest.raises(ValueError, match="max_age"):
        MemoryStore(max_age=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryStore(max_bytes=0)
    with pytest.raises(TypeError):
        MemoryStore(max_events=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        MemoryStore(max_bytes=1.5)  # type: ignore[arg-type]
    assert MemoryStore(max_age=90).max_age == timedelta(seconds=90)
    assert MemoryStore(max_bytes=4096).max_bytes == 4096
    assert MemoryStore().max_bytes is None


# ---------------------------------------------------------------------------------------------
# Retention by size


def _sized(size: int, topic: str = "t") -> Event:
    """An event whose approximate_size is exactly *size*."""
    event = Event(topic=topic, data="")
    filler = size - approximate_size(event)
    assert filler >= 0
    return Event(topic=topic, id=event.id, time=event.time, data="x" * filler)


def test_approximate_size_counts_the_json_and_the_strings() -> None:
    """approximate_size: the JSON text of data and headers, the string fields, the overhead."""
    event = Event(topic="a.b", data={"k": "é"}, id="i", type="ty", source="s", headers={"h": "v"})
    assert approximate_size(event) == EVENT_SIZE_OVERHEAD + len('{"k":"é"}') + len(
        '{"h":"v"}'
    ) + len("i" + "a.b" + "ty" + "s")
    with_reply = Event(topic="a.b", id="i", type="ty", source="s", reply_to="_inbox.x")
    assert approximate_size(with_reply) == EVENT_SIZE_OVERHEAD + len("null") + len(
        "i" + "a.b" + "ty" + "s" + "_inbox.x"
    )
    assert approximate_size(_sized(1000)) == 1000
    with pytest.raises(TypeError):
        approximate_size(Event(topic="t", data=object()))


async def test_retention_by_size_removes_the_oldest_events() -> None:
    """max_bytes removes the oldest events once the stored ones add up to more than it."""
    async with MemoryStore(max_bytes=1000) as store:
        for size in (300, 300, 300):
            await store.append([_sized(size)])
        assert (await store.first_seq(), store.statistics().events_removed) == (1, 0)
        await store.append([_sized(200)])  # 1100 bytes: the first goes
        assert await store.first_seq() == 2
        await store.append([_sized(400), _sized(200)])  # 1400: the next two go (800)
        assert [e.seq for e in await store.read("t")] == [4, 5, 6]
        stats = store.statistics()
        assert (stats.events_stored, stats.events_removed, stats.first_seq) == (3, 3, 4)
        assert await store.apply_retention() == 0


async def test_an_event_larger_than_max_bytes_is_not_kept() -> None:
    """An event larger than max_bytes by itself is removed at once; its seq is not reused."""
    async with MemoryStore(max_bytes=500) as store:
        [small] = await store.append([_sized(200)])
        [big] = await store.append([_sized(501)])
        assert big.seq == 2
        assert await store.read(">") == []
        assert (await store.first_seq(), await store.last_seq()) == (3, 2)
        [after] = await store.append([_sized(500)])
        assert await store.read(">") == [after]
        assert store.statistics().events_removed == 2
        [again] = await store.append([Event(topic="t", id=small.id)])  # removed: id is free
        assert again.seq == 4


async def test_retention_by_size_works_with_the_other_limits() -> None:
    """max_bytes, max_events and max_age apply together, each removing what it must."""
    old = datetime.now(UTC) - timedelta(hours=2)
    async with MemoryStore(max_bytes=2000, max_events=5, max_age=3600) as store:
        await store.append([Event(topic="t", time=old, data=i) for i in range(3)])
        assert await store.read("t") == []  # too old
        await store.append([_sized(300) for _ in range(6)])  # 6 > max_events
        assert len(await store.read("t")) == 5
        await store.append([_sized(900)])  # 4 x 300 + 900 = 2100 > 2000
        sizes = [approximate_size(e) for e in await store.read("t")]
        assert sizes == [300, 300, 300, 900]
        assert store.statistics().events_removed == 3 + 1 + 1 + 1


async def test_retention_by_size_keeps_count_across_compaction() -> None:
    """The size of what is stored stays exact through thousands of removals."""
    async with MemoryStore(max_bytes=10 * 250) as store:
        for _ in range(3000):
            await store.append([_sized(250)])
        assert [e.seq for e in await store.read("t", limit=100)] == list(range(2991, 3001))
        assert store._bytes == 10 * 250
        await store.append([_sized(2500)])
        assert store._bytes == 2500
        assert store.statistics().events_stored == 1


async def test_reads_with_max_bytes_stop_at_the_budget() -> None:
    """read(max_bytes=) returns the longest prefix that fits, and at least one event."""
    async with MemoryStore() as store:
        await store.append([_sized(size) for size in (500, 300, 300, 1000)])
        assert [e.seq for e in await store.read("t", max_bytes=1100)] == [1, 2, 3]
        assert [e.seq for e in await store.read("t", max_bytes=1099)] == [1, 2]
        assert [e.seq for e in await store.read("t", after=3, max_bytes=10)] == [4]
        with pytest.raises(ValueError, match="max_bytes"):
            await store.read("t", max_bytes=0)
        with pytest.raises(TypeError):
            await store.read("t", max_bytes=1.5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The default retention of `trio-realtime serve --store memory`


def test_a_memory_store_from_the_command_line_has_a_default_retention() -> None:
    """--store memory without limits keeps at most 100_000 events and 256 MiB of them."""
    store = open_store("memory")
    assert isinstance(store, MemoryStore)
    assert (store.max_events, store.max_bytes, store.max_age) == (
        DEFAULT_MEMORY_MAX_EVENTS,
        DEFAULT_MEMORY_MAX_BYTES,
        None,
    )
    assert (DEFAULT_MEMORY_MAX_EVENTS, DEFAULT_MEMORY_MAX_BYTES) == (100_000, 256 * 2**20)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"max_events": 10}, (10, None, None)),
        ({"max_bytes": 4096}, (None, 4096, None)),
        ({"max_age": 60.0}, (None, None, timedelta(seconds=60))),
        ({"max_events": 10, "max_bytes": 4096}, (10, 4096, None)),
    ],
)
def test_limits_given_on_the_command_line_replace_the_default_retention(
    options: dict[str, int | float], expected: tuple[object, ...]
) -> None:
    """Any retention limit given for --store memory replaces both defaults."""
    store = open_store("memory", **options)  # type: ignore[arg-type]
    assert isinstance(store, MemoryStore)
    assert (store.max_events, store.max_bytes, store.max_age) == expected


def test_max_bytes_is_refused_for_a_sqlite_store() -> None:
    """open_store refuses max_bytes for a sqlite store, which has no such limit."""
    with pytest.raises(CommandError, match="memory store only"):
        open_store("sqlite:x.db", max_bytes=10)


async def test_a_naive_time_is_stored_as_utc() -> None:
    """An event time without an offset is taken as UTC, and read back aware."""
    naive = datetime(2030, 6, 1, 12, 0, 0, 123456)
    async with MemoryStore() as store:
        await store.append([Event(topic="t", time=naive)])
        [event] = await store.read("t", since=naive)
        assert event.time == naive.replace(tzinfo=UTC)
