"""Resume without loss: a persisted subscription catches up after a gap, and across restarts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import cast

import orjson
import pytest
import trio
import trio.testing
import trio_websocket
from conftest import FAST, running_broker, start_broker

from trio_realtime import Broker, Client, EpochChanged, Event, Subscription, open_client
from trio_realtime.client._oversized import Prober, catch_up_oversized, locate_oversized
from trio_realtime.client._state import RemoteSub
from trio_realtime.protocol import HistoryResult
from trio_realtime.store import MemoryStore, SQLiteStore

TIMEOUT = 30
PAYLOAD = "x" * 64 * 1024


async def test_gap_on_a_persisted_subscription_is_caught_up_from_the_store() -> None:
    """A client too slow for the broker loses nothing on a persisted topic: it re-reads."""
    broker = Broker(store=MemoryStore(), session_buffer=5, stats_interval=None)
    total = 120
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(broker) as server,
            open_client(server.url, name="slow") as client,
            client.subscribe("feed.>", since=0, max_buffer_size=1) as sub,
        ):
            # The client does not read: its one-event buffer fills, the subscription falls
            # behind, and what it did not take is read back from the store (a catch-up).
            for i in range(total):
                await broker.bus.publish("feed.x", {"i": i, "pad": PAYLOAD})
            seqs = [(await sub.receive()).seq for _ in range(total)]
            assert seqs == list(range(1, total + 1))
            assert sub.missed == 0
            assert client.statistics().catch_ups >= 1
            await broker.bus.publish("feed.x", {"i": total})
            assert (await sub.receive()).seq == total + 1


async def test_restart_with_a_new_store_is_reported_once() -> None:
    """A broker that comes back with another store makes the subscription raise EpochChanged."""
    with trio.fail_after(TIMEOUT):
        # The brokers serve in a nursery that encloses the client: they stop while it lives on.
        async with trio.open_nursery() as nursery:
            first = await start_broker(nursery, store=MemoryStore())
            async with (
                open_client(first.url, backoff_max=0.1) as client,
                client.subscribe("feed.>", since=0) as sub,
            ):
                await first.broker.bus.publish("feed.x", "old store")
                assert (await sub.receive()).seq == 1
                old_epoch = client.epoch
                await first.stop()

                second = await start_broker(nursery, store=MemoryStore(), port=first.port)
                await second.broker.bus.publish("feed.x", "stored before the client is back")
                await client.wait_connected()
                with pytest.raises(EpochChanged) as info:
                    await sub.receive()
                assert info.value.old_epoch == old_epoch
                assert info.value.new_epoch == client.epoch != old_epoch
                # then the subscription goes on, replaying the new store from its start
                got = await sub.receive()
                assert (got.seq, got.data) == (1, "stored before the client is back")
            await second.stop()


async def test_a_subscription_that_got_nothing_yet_resumes_from_when_it_subscribed(
    tmp_path: Path,
) -> None:
    """Events stored while the broker was away reach a subscriber that had received nothing."""
    db = tmp_path / "events.db"
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            first = await start_broker(nursery, store=SQLiteStore(db))
            await first.broker.bus.publish("orders.old", "before the subscription")
            async with (
                open_client(first.url, backoff_max=0.1) as client,
                client.subscribe("orders.>") as sub,
            ):
                await first.stop()
                # stored while no broker runs: the client cannot be connected yet
                async with SQLiteStore(db) as store:
                    await store.append(
                        [Event(topic="orders.new", data="while the client was away")]
                    )
                second = await start_broker(nursery, store=SQLiteStore(db), port=first.port)
                got = await sub.receive()
                assert (got.topic, got.data) == ("orders.new", "while the client was away")
                assert sub.missed == 0
            await second.stop()


async def test_only_subscriptions_outside_queue_groups_get_a_resume_point() -> None:
    """subscribed carries the store's last seq, but not for a queue group member."""
    with trio.fail_after(TIMEOUT):
        async with running_broker(store=MemoryStore()) as server:
            broker = server.broker
            for i in range(3):
                await broker.bus.publish("jobs.x", i)
            async with trio_websocket.open_websocket_url(server.url) as ws:
                await ws.send_message('{"type": "hello"}')
                await ws.get_message()
                await ws.send_message(
                    '[{"type": "subscribe", "id": 1, "pattern": "jobs.>"},'
                    ' {"type": "subscribe", "id": 2, "pattern": "jobs.>", "group": "w"}]'
                )
                # one message or two: the broker may batch the answers, or not
                frames: list[object] = []
                while len(frames) < 2:
                    message = orjson.loads(await ws.get_message())
                    frames += message if isinstance(message, list) else [message]
                assert frames == [
                    {"type": "subscribed", "id": 1, "seq": 3},
                    {"type": "subscribed", "id": 2, "seq": None},
                ]


def test_resume_point_is_the_later_one_and_none_in_a_group() -> None:
    """A subscription resumes after the later of its last seq and its subscribe-time seq."""
    sub = RemoteSub("orders.>")
    assert sub.resume_point() is None
    sub.resume_seq = 51
    sub.last_seq = 1  # an old retained event arrived first
    assert sub.resume_point() == 51
    sub.last_seq = 60
    assert sub.resume_point() == 60
    member = RemoteSub("jobs.>", group="w")
    member.last_seq = member.resume_seq = 5
    assert member.resume_point() is None


# ---------------------------------------------------------------------------------------------
# Messages too large for the client


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll *predicate* until it holds (callers hold a hang guard): for counters of the
    client's that no event announces."""
    while not predicate():
        await trio.testing.wait_all_tasks_blocked()


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
        and r.name == "trio_realtime.client"
        and text in r.getMessage()
    ]


async def test_a_stored_event_too_large_is_skipped_once_and_later_events_arrive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: a subscriber sent a stored event over its max_message_size looped forever
    (closed with 1009, reconnected, replayed the same event). Now it warns, counts the event
    as missed, resumes after it, and receives what follows."""
    broker = Broker(store=MemoryStore(), stats_interval=None)  # 1 MiB messages
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(broker) as served,
            open_client(served.url, max_message_size=4096, **FAST) as client,
            client.subscribe("feed.>") as sub,
        ):
            await broker.bus.publish("feed.x", "before")
            assert (await sub.receive()).data == "before"
            too_large = await broker.bus.publish("feed.x", "x" * 10_000)
            await broker.bus.publish("feed.x", "after")
            got = await sub.receive()
            assert (got.data, got.seq) == ("after", 3)
            assert sub.missed == 1
            await client.wait_connected()
            await broker.bus.publish("feed.x", "live")
            assert (await sub.receive()).data == "live"
            stats = client.statistics()
            assert (stats.oversized, stats.reconnects) == (1, 1)
    (warning,) = warnings_about(caplog, "was larger than this client's max_message_size")
    assert "4096 bytes" in warning
    assert "open_client(max_message_size=" in warning
    (skipped,) = warnings_about(caplog, "skipping the stored events")
    assert f"up to seq {too_large.seq}" in skipped


async def test_an_event_too_large_in_bytes_only_is_skipped_too() -> None:
    """An event within the limit in characters but not in UTF-8 bytes is refused and skipped
    the same way (the limit counts bytes)."""
    broker = Broker(store=MemoryStore(), stats_interval=None)
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(broker) as served,
            open_client(served.url, max_message_size=4096, **FAST) as client,
            client.subscribe("feed.>") as sub,
        ):
            await broker.bus.publish("feed.x", "é" * 3000)  # 3,000 characters, 6,000 bytes
            await broker.bus.publish("feed.x", "after")
            assert (await sub.receive()).data == "after"
            assert (sub.missed, client.statistics().oversized) == (1, 1)


async def test_an_unstored_event_too_large_is_counted_and_the_client_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An event too large that was not stored is lost to the client (and not replayed): it
    is counted and reported; the subscription goes on after the reconnect."""
    broker = Broker(stats_interval=None)  # no store
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(broker) as served,
            open_client(served.url, max_message_size=4096, **FAST) as client,
            client.subscribe("live.>") as sub,
        ):
            await broker.bus.publish("live.x", "before")
            assert (await sub.receive()).data == "before"
            await broker.bus.publish("live.x", "x" * 10_000)
            await wait_until(lambda: client.statistics().oversized == 1)
            await client.wait_connected()
            # the same connection, after the resubscribe: routed to the subscription
            await client.publish("live.x", "after", ack=True)
            assert (await sub.receive()).data == "after"
            assert sub.missed == 0  # it cannot know which subscriptions it was for
            assert client.statistics().reconnects == 1
    assert warnings_about(caplog, "was larger than this client's max_message_size")


async def test_a_replay_batched_beyond_the_limit_is_read_in_pages() -> None:
    """Stored events small enough one by one, but replayed in a batch too large for the
    client, reach it all the same: it reads them in pages it can receive, then resumes."""
    broker = Broker(store=MemoryStore(), stats_interval=None)
    total = 100
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as served:
            for i in range(total):
                await broker.bus.publish("feed.x", {"i": i, "pad": "p" * 200})
            async with (
                open_client(served.url, max_message_size=4096, **FAST) as client,
                client.subscribe("feed.>", since=0) as sub,
            ):
                got = [(await sub.receive()).data["i"] for _ in range(total)]
                assert got == list(range(total))
                assert sub.missed == 0
                assert client.statistics().oversized >= 1
                await client.wait_connected()
                await broker.bus.publish("feed.x", {"i": total})
                assert (await sub.receive()).data["i"] == total


async def test_reconnects_back_off_while_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that ends on a message too large with nothing received, read or skipped
    does not reset the backoff: the client does not reconnect in a tight loop."""
    broker = Broker(stats_interval=None)
    attempts: list[int] = []
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(broker) as served,
            open_client(served.url, max_message_size=4096, **FAST) as client,
            client.subscribe("live.>"),
        ):
            backoff = client._backoff

            def record(attempt: int) -> float:
                attempts.append(attempt)
                return backoff(attempt)

            monkeypatch.setattr(client, "_backoff", record)
            for n in range(1, 4):
                await client.wait_connected()
                await client.publish("sync.x", None, ack=True)  # after the resubscribe
                await broker.bus.publish("live.x", "x" * 10_000)
                await wait_until(partial(oversized_is, client, n))
    assert attempts == [1, 2, 3]


def oversized_is(client: Client, n: int) -> bool:
    return client.statistics().oversized == n


class FakeProber:
    """Answers history reads from a list of stored events, refusing (None) an answer whose
    events add up to more than *limit* bytes, as a client's transport would."""

    url = "ws://fake/"

    def __init__(self, sizes: dict[int, int], limit: int = 1000) -> None:
        self.events = [Event(topic="t.x", data="x" * size, seq=seq) for seq, size in sizes.items()]
        self.sizes = sizes
        self.max_message_size = limit
        self.reads = 0
        self.refused = 0

    async def read(self, pattern: str, since: int, limit: int) -> HistoryResult | None:
        await trio.lowlevel.checkpoint()
        self.reads += 1
        page = [e for e in self.events if e.seq is not None and e.seq > since][:limit]
        if sum(self.sizes[e.seq] for e in page if e.seq is not None) > self.max_message_size:
            self.refused += 1
            return None
        return HistoryResult(ref=1, events=tuple(page))

    async def fits(self, pattern: str, since: int) -> bool:
        return await self.read(pattern, since, 1) is not None


@pytest.mark.parametrize(
    ("sizes", "after", "expected"),
    [
        ({3: 1, 10: 5000, 11: 1}, 3, 10),  # one too large
        ({3: 1, 4: 5000, 5: 1}, 3, 4),  # right after
        ({3: 1, 10: 5000, 40: 5000, 41: 1}, 3, 40),  # two in a row (in the pattern's order)
        ({3: 1, 1000: 5000}, 3, 1000),  # far away, the last stored
        # Another one a little later, with one that fits between: the search may settle
        # on the later one (documented), skipping seq 11.
        ({3: 1, 10: 5000, 11: 1, 12: 5000, 13: 1}, 3, 12),
    ],
)
async def test_locate_oversized_finds_the_seq_by_bisection(
    sizes: dict[int, int], after: int, expected: int
) -> None:
    """The search finds the seq of the first event too large (or of the last of a run), in
    a number of reads that grows with the log of its distance."""
    prober = FakeProber(sizes)
    seq = await locate_oversized(cast("Prober", prober), "t.>", after)
    assert seq == expected
    assert prober.reads <= 2 * (expected - after).bit_length() + 2


async def test_catch_up_reads_in_pages_and_skips_only_what_is_too_large() -> None:
    """A catch-up hands over every event that can be received, in order, in pages that grow
    while they fit and shrink when they do not; one too large alone is skipped and counted."""
    sizes = dict.fromkeys(range(1, 201), 30)
    sizes[120] = 5000
    prober = FakeProber(sizes, limit=1000)
    rs = RemoteSub("t.>")
    rs.resume_seq = 0
    sub = Subscription("t.>", max_buffer_size=1000)
    rs.sub = sub
    delivered, skipped = await catch_up_oversized(cast("Prober", prober), rs, sub)
    assert (delivered, skipped) == (199, 1)
    got = [sub.receive_nowait().seq for _ in range(199)]
    assert got == [seq for seq in range(1, 201) if seq != 120]
    assert sub.missed == 1
    assert rs.resume_point() == 200
    assert prober.reads < 40  # pages of up to 32 events (33 would not fit)
    assert prober.refused < 15
