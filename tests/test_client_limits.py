"""The remote client's message size limit: what it will not send, and what it cannot receive."""

from __future__ import annotations

import inspect

import pytest
import trio
import trio.testing
from _scripted_server import Peer, scripted_server
from conftest import FAST, TIMEOUT, RunningBroker

from trio_realtime import (
    ConnectionClosed,
    Event,
    TooLarge,
)
from trio_realtime._transport import DEFAULT_MAX_MESSAGE_SIZE
from trio_realtime.broker._broker import Broker
from trio_realtime.client._client import open_client
from trio_realtime.client._link import LOCAL_TOO_BIG_REASON, refused_as_too_big
from trio_realtime.protocol import (
    History,
    HistoryResult,
)


async def test_frames_too_large_are_not_sent(live_broker: RunningBroker) -> None:
    """A frame larger than max_message_size fails (acked) or is dropped and counted."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_client(live_broker.url, max_message_size=4096) as a,
            open_client(live_broker.url) as b,
            b.subscribe("big.>") as sub,
        ):
            with pytest.raises(TooLarge) as info:
                await a.publish("big.x", "x" * 8000, ack=True)
            assert info.value.code == "too_large"
            await a.publish("big.x", "y" * 8000)
            await a.publish("big.x", "small")
            assert (await sub.receive()).data == "small"
            assert a.statistics().errors == 1
            # Many small frames that together exceed the limit go in several messages.
            for i in range(200):
                await a.publish("big.x", i)
            assert [(await sub.receive()).data for _ in range(200)] == list(range(200))


def test_default_max_message_size_is_the_brokers() -> None:
    """The client accepts by default what the broker may send by default (1 MiB of bytes)."""
    default = inspect.signature(open_client).parameters["max_message_size"].default
    assert default == DEFAULT_MAX_MESSAGE_SIZE == Broker().max_message_size == 2**20


async def test_frames_are_measured_in_bytes(live_broker: RunningBroker) -> None:
    """A frame within max_message_size in characters but not in UTF-8 bytes is not sent."""
    with trio.fail_after(TIMEOUT):
        async with open_client(live_broker.url, max_message_size=4096) as a:
            with pytest.raises(TooLarge, match="bytes") as info:
                await a.publish("big.x", "é" * 3000, ack=True)  # 3000 characters, 6000 bytes
            assert info.value.code == "too_large"
            assert (await a.publish("big.x", "é" * 1500, ack=True)).data == "é" * 1500


async def test_history_answer_too_large_is_asked_again_for_fewer_events() -> None:
    """A history answer larger than max_message_size closes the connection (1009); the read
    is sent again for half as many events, down to one, and then fails with too_large."""
    asked: list[int] = []
    big = Event(topic="h.big", data="x" * 3000, seq=1)
    small = [Event(topic="h.small", data=i, seq=2 + i) for i in range(4)]

    async def script(peer: Peer) -> None:
        await peer.welcome()
        while True:
            history = await peer.expect(History)
            asked.append(history.limit)
            if history.pattern == "h.big":
                page: tuple[Event, ...] = (big,)
            else:
                start = 0 if history.since is None else history.since - 1
                page = tuple(small[start : start + history.limit])
                if history.limit > 2:
                    page += (big,) * 3  # an answer too large (this broker does not split)
            await peer.send(HistoryResult(ref=history.ref, events=page))

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(script) as server,
            open_client(server.url, max_message_size=2048, **FAST) as client,
        ):
            got = await client.history("h.small", limit=4)
            assert [e.data for e in got] == [0, 1, 2, 3]
            assert asked == [4, 2, 2]  # too large; two (a full page: ask again); two
            asked.clear()
            with pytest.raises(TooLarge, match="max_message_size") as info:
                await client.history("h.big", limit=2)
            assert info.value.code == "too_large"
            assert asked == [2, 1, 1]  # one event alone is too large, twice
            assert client.statistics().oversized == 4


def test_refused_as_too_big_tells_our_refusal_from_the_brokers() -> None:
    """A 1009 is ours when its reason is our transport's (or trio-websocket's with our
    limit); a broker's 1009 names its own limit."""
    ours = ConnectionClosed("x", code=1009, reason=LOCAL_TOO_BIG_REASON)
    assert refused_as_too_big(ours, 4096)
    websocket = ConnectionClosed("x", code=1009, reason="Exceeded maximum message size: 4096 bytes")
    assert refused_as_too_big(websocket, 4096)
    assert not refused_as_too_big(websocket, 8192)  # the broker's limit, not ours
    brokers = ConnectionClosed("x", code=1009, reason="message larger than 2048 bytes")
    assert not refused_as_too_big(brokers, 4096)
    assert not refused_as_too_big(ConnectionClosed("x", code=1001, reason="message too big"), 1)
