"""The remote client reading the broker's store: ``history()`` and ``subscribe(since=…)``."""

from __future__ import annotations

from datetime import UTC, datetime

import trio
import trio.testing
from _scripted_server import Peer, scripted_server
from conftest import TIMEOUT, running_broker

from trio_realtime import (
    Event,
    open_bus,
)
from trio_realtime.client._client import open_client
from trio_realtime.protocol import (
    History,
    HistoryResult,
)
from trio_realtime.store import MemoryStore


async def test_history_and_since_with_a_store() -> None:
    """history() and subscribe(since=…) read the broker's store, by seq or by time."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus(store=MemoryStore()) as bus,
            running_broker(bus=bus) as served,
            open_client(served.url) as client,
        ):
            sent = [await client.publish("hist.x", i, ack=True) for i in range(5)]
            assert sent[1].seq is not None
            assert sent[2].seq is not None
            got = await client.history("hist.>", since=sent[1].seq)
            assert [e.data for e in got] == [2, 3, 4]
            got = await client.history("hist.>", since=sent[0].time, limit=2)
            assert [e.data for e in got] == [0, 1]
            async with client.subscribe("hist.>", since=sent[2].seq) as sub:
                assert [(await sub.receive()).data for _ in range(2)] == [3, 4]
            async with client.subscribe("hist.>", since=sent[3].time) as sub:
                assert [(await sub.receive()).data for _ in range(2)] == [3, 4]


async def test_history_follows_more_until_it_has_the_limit() -> None:
    """history() asks again after the last event while the broker says ``more``, with the
    limit lowered by what it has; it stops at the limit, or when the broker has no more."""
    asked: list[tuple[int | None, str | None, int]] = []
    stored = [Event(topic="h.x", data=i, seq=10 + i) for i in range(10)]

    async def script(peer: Peer) -> None:
        await peer.welcome()
        while True:
            history = await peer.expect(History)
            asked.append((history.since, history.since_time, history.limit))
            start = 0 if history.since is None else history.since - 9
            page = stored[start : start + min(history.limit, 3)]  # three per message at most
            more = start + len(page) < len(stored) and len(page) < history.limit
            await peer.send(HistoryResult(ref=history.ref, events=tuple(page), more=more))

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server, open_client(server.url) as client:
            got = await client.history("h.>", since=datetime(2020, 1, 1, tzinfo=UTC), limit=8)
            assert [e.data for e in got] == list(range(8))
            assert asked == [(None, "2020-01-01T00:00:00+00:00", 8), (12, None, 5), (15, None, 2)]
            asked.clear()
            got = await client.history("h.>", since=15, limit=100)
            assert [e.data for e in got] == [6, 7, 8, 9]
            assert asked == [(15, None, 100), (18, None, 97)]


async def test_history_larger_than_one_message_of_a_real_broker() -> None:
    """A history read that the broker answers in parts returns every event up to the limit
    (what the ``history`` command prints)."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus(store=MemoryStore()) as bus,
            running_broker(bus=bus, max_message_size=4096) as served,
            open_client(served.url, max_message_size=4096) as client,
        ):
            for i in range(60):
                await bus.publish("big.x", {"i": i, "pad": "p" * 200})
            got = await client.history("big.>", limit=50)
            assert [e.data["i"] for e in got] == list(range(50))
            got = await client.history("big.>", since=got[-1].seq)
            assert [e.data["i"] for e in got] == list(range(50, 60))
