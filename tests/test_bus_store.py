"""The bus with a store: persisted topics, replay with `since`, history, group commit."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_realtime.bus._commit as commit_module
import trio_realtime.bus._replay as replay_module
from trio_realtime import Event, EventChannel, StoreError, open_bus
from trio_realtime.store import MemoryStore, SQLiteStore, Store
from trio_realtime.testing import check_channel

StoreFactory = Callable[[], Store]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Each test runs against a MemoryStore and a SQLiteStore in a real file."""
    if request.param == "memory":
        return MemoryStore
    return lambda: SQLiteStore(tmp_path / "events.db")


async def test_stored_bus_passes_check_channel(make_store: StoreFactory) -> None:
    """A bus with a store meets the whole EventChannel contract, history included."""
    with trio.fail_after(60):
        async with open_bus(store=make_store()) as bus:

            @asynccontextmanager
            async def same_bus() -> AsyncIterator[EventChannel]:
                yield bus

            await check_channel(
                same_bus, stored=True, open_owned=lambda: open_bus(store=MemoryStore())
            )


async def test_default_persistence_skips_reserved_and_inbox(make_store: StoreFactory) -> None:
    """With a store and no persist list, all topics but $… and _inbox.… are stored."""
    async with open_bus(store=make_store()) as bus:
        assert (await bus.publish("a.b", 1)).seq == 1
        assert (await bus.publish("$sys.x", 1)).seq is None
        assert (await bus.publish("_inbox.x", 1)).seq is None
        assert (await bus.publish("c", 1)).seq == 2
        assert bus.is_persisted("a.b")
        assert not bus.is_persisted("$sys.x")
        assert bus.statistics().stored == 2


async def test_persist_patterns_choose_the_stored_topics(make_store: StoreFactory) -> None:
    """persist=[…] stores only the matching topics."""
    async with open_bus(store=make_store(), persist=["orders.>", "audit"]) as bus:
        assert (await bus.publish("orders.eu.created", 1)).seq == 1
        assert (await bus.publish("audit", 1)).seq == 2
        assert (await bus.publish("metrics.cpu", 1)).seq is None
        assert [e.topic for e in await bus.history(">")] == ["orders.eu.created", "audit"]


async def test_replay_switches_to_live_without_gap_or_duplicate(make_store: StoreFactory) -> None:
    """subscribe(since=…) while publishers keep publishing sees every seq exactly once."""
    total = 3000
    async with open_bus(store=make_store()) as bus:
        for i in range(500):
            await bus.publish("r.x", i)

        async def keep_publishing() -> None:
            for i in range(500, total):
                await bus.publish("r.y" if i % 2 else "r.x", i)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_publishing)
                async with bus.subscribe("r.>", since=0, max_buffer_size=64) as sub:
                    seqs = [(await sub.receive()).seq for _ in range(total)]
        assert seqs == list(range(1, total + 1))


async def test_replay_rereads_when_too_much_is_held(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live events beyond the hold limit during replay are re-read from the store, not lost."""
    monkeypatch.setattr(replay_module, "MAX_HELD_DURING_REPLAY", 3)
    monkeypatch.setattr(replay_module, "REPLAY_PAGE", 5)
    async with open_bus(store=make_store()) as bus:
        for i in range(20):
            await bus.publish("h.x", i)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def more() -> None:
                    for i in range(20, 60):
                        await bus.publish("h.x", i)

                nursery.start_soon(more)
                async with bus.subscribe("h.x", since=0, max_buffer_size=2) as sub:
                    data = [(await sub.receive()).data for _ in range(60)]
        assert data == list(range(60))


async def test_replay_since_a_time_and_unstored_events_after_replay() -> None:
    """since=datetime replays from that time; unpersisted live events follow the replay."""
    async with open_bus(store=MemoryStore(), persist=["p.>"]) as bus:
        clock_events = [await bus.publish("p.x", i) for i in range(3)]
        async with bus.subscribe(">", since=clock_events[1].time) as sub:
            await bus.publish("q.live", "not stored")
            got = [(await sub.receive()).data for _ in range(3)]
        assert got[:2] == [1, 2]
        assert got[2] == "not stored"


async def test_store_failure_reaches_the_publisher_and_the_bus_goes_on() -> None:
    """A store error fails the publishes of that batch with StoreError; later ones work."""

    class FlakyStore(MemoryStore):
        fail_next = False

        async def append(self, events: list[Event]) -> list[Event]:  # type: ignore[override]
            if self.fail_next:
                self.fail_next = False
                raise StoreError("disk on fire")
            return await super().append(events)

    store = FlakyStore()
    async with open_bus(store=store) as bus, bus.subscribe("f") as sub:
        store.fail_next = True
        with pytest.raises(StoreError, match="disk on fire"):
            await bus.publish("f", 1)
        assert (await bus.publish("f", 2)).seq == 1
        assert (await sub.receive()).data == 2  # the failed one was never routed


async def test_resent_event_id_is_a_duplicate_only_for_its_publisher(
    make_store: StoreFactory,
) -> None:
    """Issue 7, finding 8: a recent id re-sent by its publisher is a duplicate (original seq);
    the same id from another publisher is refused, never acknowledged as the other's event."""
    async with open_bus(store=make_store()) as bus, bus.subscribe("d") as sub:
        first = await bus.publish("d", 1)
        event = attrs.evolve(first, seq=None, data="forged")
        pending = await bus.publish_pipelined(event, publisher="someone else")
        assert isinstance(pending, commit_module.PendingCommit)
        with pytest.raises(ValueError, match="another publisher"):
            await pending.wait()
        mine = await bus.publish_pipelined(attrs.evolve(first, seq=None), publisher=None)
        assert isinstance(mine, commit_module.PendingCommit)
        assert mine.duplicate
        assert (await mine.wait()).seq == first.seq
        # In flight: the committer has not stored it yet.
        new = attrs.evolve(first, id="in-flight-id", seq=None)
        held = await bus.publish_pipelined(new, publisher="a")
        assert isinstance(held, commit_module.PendingCommit)
        again = await bus.publish_pipelined(new, publisher="a")
        other = await bus.publish_pipelined(new, publisher="b")
        assert again is held
        assert isinstance(other, commit_module.PendingCommit)
        with pytest.raises(ValueError, match="another publisher"):
            await other.wait()
        assert (await held.wait()).seq == first.seq + 1  # type: ignore[operator]
        assert [(await sub.receive()).data for _ in range(2)] == [1, 1]
        assert bus.statistics().stored == 2


async def test_resent_event_id_is_stored_once(make_store: StoreFactory) -> None:
    """Publishing an event whose id was just stored returns the stored event, not a copy."""
    async with open_bus(store=make_store()) as bus, bus.subscribe("d") as sub:
        first = await bus.publish("d", 1)
        again = await bus.publish_event(attrs.evolve(first, seq=None))
        assert again == first
        assert bus.statistics().stored == 1
        assert (await sub.receive()).id == first.id
        with pytest.raises(trio.WouldBlock):
            sub.receive_nowait()


async def test_event_refused_by_the_store_does_not_fail_its_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event the store refuses (a duplicate id beyond the window) fails alone."""
    monkeypatch.setattr(commit_module, "DEDUPE_WINDOW", 0)
    async with open_bus(store=MemoryStore()) as bus:
        old = await bus.publish("d", "old")
        results: list[object] = []

        async def publish(event: Event) -> None:
            try:
                results.append((await bus.publish_event(event)).data)
            except ValueError:
                results.append("refused")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish, Event(topic="d", data="new 1"))
            nursery.start_soon(publish, attrs.evolve(old, seq=None))
            nursery.start_soon(publish, Event(topic="d", data="new 2"))
        assert sorted(map(str, results)) == ["new 1", "new 2", "refused"]


async def test_concurrent_publishers_share_transactions(tmp_path: Path) -> None:
    """Many tasks publishing persisted events at once are stored in shared transactions."""
    store = SQLiteStore(tmp_path / "group.db")
    async with open_bus(store=store) as bus:
        async with trio.open_nursery() as nursery:
            for task in range(50):
                for _ in range(1):
                    nursery.start_soon(bus.publish, "g", task)
        stats = store.statistics()
        assert stats.events_appended == 50
        assert stats.transactions < 50


async def test_replay_failure_ends_the_subscription_with_the_error() -> None:
    """If reading the store fails during replay, the subscriber gets the StoreError."""

    class BrokenReads(MemoryStore):
        async def read(self, *args: object, **kwargs: object) -> list[Event]:
            raise StoreError("cannot read")

    async with open_bus(store=BrokenReads()) as bus, bus.subscribe("x", since=0) as sub:
        with pytest.raises(StoreError, match="cannot read"):
            await sub.receive()


async def test_bus_opens_and_closes_its_store(tmp_path: Path) -> None:
    """open_bus opens the store on entry and closes it on exit, even when cancelled."""
    store = SQLiteStore(tmp_path / "owned.db")
    with trio.CancelScope() as scope:
        async with open_bus(store=store) as bus:
            await bus.publish("a", 1)
            scope.cancel()
            await trio.sleep_forever()
    with pytest.raises(trio.ClosedResourceError):
        await store.append([Event(topic="a")])
    async with SQLiteStore(tmp_path / "owned.db") as reopened:
        assert await reopened.last_seq() == 1


async def test_pending_publishes_fail_when_the_bus_closes() -> None:
    """A persisted publish still queued when the bus closes raises ClosedResourceError."""

    class SlowStore(MemoryStore):
        async def append(self, events: list[Event]) -> list[Event]:  # type: ignore[override]
            await trio.sleep_forever()
            raise AssertionError

    outcome: list[BaseException] = []
    async with trio.open_nursery() as nursery, open_bus(store=SlowStore()) as bus:

        async def publish() -> None:
            try:
                await bus.publish("a", 1)
            except trio.ClosedResourceError as exc:
                outcome.append(exc)

        nursery.start_soon(publish)
        nursery.start_soon(publish)
        await trio.testing.wait_all_tasks_blocked()
    assert len(outcome) >= 1


async def test_history_arguments(make_store: StoreFactory) -> None:
    """history() honours pattern, since (seq or time) and limit."""
    async with open_bus(store=make_store()) as bus:
        events = [await bus.publish(f"h.{i % 3}", i) for i in range(9)]
        assert [e.data for e in await bus.history("h.1")] == [1, 4, 7]
        assert [e.data for e in await bus.history("h.*", since=6)] == [6, 7, 8]
        assert [e.data for e in await bus.history("h.*", since=0, limit=2)] == [0, 1]
        since = events[7].time - timedelta(microseconds=0)
        assert (await bus.history("h.*", since=since))[0].data <= 7
        assert math.isfinite(len(await bus.history(">")))


async def test_unstored_events_lost_during_a_long_replay_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held-back events of unstored topics that a replay had to let go count as missed."""
    monkeypatch.setattr(replay_module, "MAX_HELD_DURING_REPLAY", 3)
    with trio.fail_after(10):
        async with open_bus(store=MemoryStore(), persist=["p.>"]) as bus:
            for i in range(5):
                await bus.publish("p.x", i)
            async with bus.subscribe(">", since=0, max_buffer_size=1) as sub:
                # the replay waits for room after its first event: everything below is held
                for i in range(6):
                    await bus.publish("q.unstored", i)
                await bus.publish("p.x", 5)
                got = [(await sub.receive()).data for _ in range(6)]
                assert got == [0, 1, 2, 3, 4, 5]
                assert sub.missed == 6
                await bus.publish("q.unstored", "live")
                assert (await sub.receive()).data == "live"


async def test_a_replay_holds_live_events_again_once_it_reads_the_store_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After letting held events go, a replay holds new live events again from its next read
    of the store on: an unstored event published during that read is not lost."""
    monkeypatch.setattr(replay_module, "MAX_HELD_DURING_REPLAY", 2)

    class PausingStore(MemoryStore):
        reads = 0
        pause_at = 0
        paused = trio.Event()
        resume = trio.Event()

        async def read(self, *args: Any, **kwargs: Any) -> list[Event]:
            self.reads += 1
            if self.reads == self.pause_at:
                self.paused.set()
                await self.resume.wait()
            return await super().read(*args, **kwargs)

    store = PausingStore()
    with trio.fail_after(10):
        async with open_bus(store=store, persist=["p.>"]) as bus:
            await bus.publish("p.x", 0)
            await bus.publish("p.x", 1)
            async with bus.subscribe(">", since=0, max_buffer_size=1) as sub:
                await trio.testing.wait_all_tasks_blocked()  # the replay waits for room
                for i in range(3):  # one more than can be held: let go
                    await bus.publish("q.unstored", i)
                store.pause_at = store.reads + 1
                # Room: the replay offers 1, then reads the store again, and pauses there.
                assert [(await sub.receive()).data for _ in range(2)] == [0, 1]
                await store.paused.wait()
                await bus.publish("q.unstored", "during the read")
                store.resume.set()
                assert (await sub.receive()).data == "during the read"
                assert sub.missed == 3


async def test_unstored_retained_events_follow_a_replay() -> None:
    """subscribe(since=…) gets stored retained events in the replay, the others after it."""
    async with open_bus(store=MemoryStore(), persist=["p.>"]) as bus:
        await bus.publish("p.x", "stored", retain=True)
        await bus.publish("cfg.x", "not stored", retain=True)
        async with bus.subscribe(">", since=0) as sub:
            assert [(await sub.receive()).data for _ in range(2)] == ["stored", "not stored"]
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()


async def test_the_next_batch_is_stored_while_one_is_routed() -> None:
    """Storing and routing are a pipeline: while a blocked subscriber holds up the routing of
    a stored batch, the next batches are stored, up to MAX_STORED_UNROUTED, and then the
    store waits too; everything arrives in seq order once the subscriber reads."""
    appended: list[list[Any]] = []

    class CountingStore(MemoryStore):
        async def append(self, events: list[Event]) -> list[Event]:  # type: ignore[override]
            appended.append([e.data for e in events])
            return await super().append(events)

    with trio.fail_after(10):
        async with (
            open_bus(store=CountingStore()) as bus,
            bus.subscribe("a", max_buffer_size=1) as sub,
        ):
            done = []
            for i in range(2 + commit_module.MAX_STORED_UNROUTED + 2):
                # One publish at a time, each its own batch.
                done.append(await bus.publish_pipelined(Event(topic="a", data=i)))
                await trio.testing.wait_all_tasks_blocked()
            # The first event fills the subscriber's buffer and the second blocks its batch's
            # routing: with it, MAX_STORED_UNROUTED batches are stored, and no more.
            assert len(appended) == 1 + commit_module.MAX_STORED_UNROUTED
            received = [(await sub.receive()).data for _ in done]
            assert received == list(range(len(done)))
            stored = [p if isinstance(p, Event) else await p.wait() for p in done]
            assert [e.seq for e in stored] == list(range(1, len(done) + 1))
            assert bus.last_seq == len(done)
