"""The remote client's link without sockets: heartbeat, backoff and closing, in virtual time.

A fake transport stands in for the WebSocket; the test plays the broker.
"""

from __future__ import annotations

import math
from typing import cast

import pytest
import trio
import trio.testing

from trio_realtime import (
    ConnectionClosed,
)
from trio_realtime._transport import WebSocketTransport
from trio_realtime.client._client import Client, ClientState, ClientStatistics
from trio_realtime.client._link import LOCAL_TOO_BIG_REASON, Link
from trio_realtime.protocol import (
    CLOSE_GOING_AWAY,
    ClientConnection,
    Hello,
    Ping,
    Pong,
    Welcome,
    encode,
)


class FakeTransport:
    """Stands in for a WebSocketTransport: the test plays the broker."""

    remote = "fake:0"

    def __init__(self, *, answer_pings: bool) -> None:
        self.answer_pings = answer_pings
        self.sent: list[str] = []
        self._inbox_send, self._inbox = trio.open_memory_channel[str](math.inf)

    async def receive(self) -> str:
        return await self._inbox.receive()

    async def send(self, text: str) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(text)
        if self.answer_pings and '"ping"' in text:
            self._inbox_send.send_nowait(encode(Pong()))


def make_client(nursery: trio.Nursery) -> Client:
    """A client that is not connected."""
    return Client._create(
        nursery,
        ("ws://fake/",),
        discover=True,
        token=None,
        name=None,
        reconnect=True,
        connect_timeout=1.0,
        max_outbox=10,
        backoff_initial=0.1,
        backoff_max=1.0,
        max_message_size=2**20,
        ssl_context=None,
    )


def make_link(nursery: trio.Nursery, transport: FakeTransport) -> Link:
    """A client's link over *transport*, past the handshake (heartbeat 5 s)."""
    client = make_client(nursery)
    conn = ClientConnection()
    conn.send(Hello())
    conn.receive_text(encode(Welcome(session="s", broker="b", heartbeat=5.0)))
    (welcome,) = conn.frames()
    assert isinstance(welcome, Welcome)
    return Link(client._link_context(), cast("WebSocketTransport", transport), conn, welcome)


async def test_heartbeat_gives_up_after_two_silent_intervals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A link pings after one idle interval and ends after two silent ones, closing 1001."""
    transport = FakeTransport(answer_pings=False)
    async with trio.open_nursery() as nursery:
        link = make_link(nursery, transport)
        start = trio.current_time()
        reason = await link.run()
        assert trio.current_time() - start == pytest.approx(10.0)
    assert link.close_code == CLOSE_GOING_AWAY
    assert "sent nothing for 10 s" in str(reason)
    assert transport.sent == [encode(Ping())]


async def test_heartbeat_keeps_an_answering_broker(autojump_clock: trio.testing.MockClock) -> None:
    """A broker that answers pings keeps the link up; it pings once per idle interval."""
    transport = FakeTransport(answer_pings=True)
    async with trio.open_nursery() as nursery:
        link = make_link(nursery, transport)
        nursery.start_soon(link.run)
        await trio.sleep(57.5)
        assert link.reason is None
        assert transport.sent == [encode(Ping())] * 11  # at 5, 10, … 55 s
        nursery.cancel_scope.cancel()


class ClosingTransport(FakeTransport):
    """A transport that refuses a message as too large, as WebSocketTransport does: it
    closes (taking a second) and only then raises; a send meanwhile fails with 1000."""

    def __init__(self) -> None:
        super().__init__(answer_pings=False)
        self.refuse = trio.Event()
        self.closing = False

    async def receive(self) -> str:
        await self.refuse.wait()
        self.closing = True
        with trio.CancelScope(shield=True):
            await trio.sleep(1.0)  # the close handshake
        raise ConnectionClosed("too big", code=1009, reason=LOCAL_TOO_BIG_REASON)

    async def send(self, text: str) -> None:
        await trio.lowlevel.checkpoint()
        if self.closing:
            raise ConnectionClosed("closed", code=1000)
        self.sent.append(text)


async def test_link_notes_a_message_too_large_even_if_a_send_fails_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reader's 1009 is noted on the link though a send racing the close ended it."""
    transport = ClosingTransport()
    async with trio.open_nursery() as nursery:
        link = make_link(nursery, transport)
        nursery.start_soon(link.run)
        await trio.testing.wait_all_tasks_blocked()
        transport.refuse.set()
        await trio.testing.wait_all_tasks_blocked()
        link.context.outbox.append(Ping())  # the writer sends while the reader closes
        await trio.sleep(2.0)
    assert link.reason is not None
    assert link.reason.code == 1000
    assert link.oversized


async def test_backoff_is_capped_full_jitter() -> None:
    """Reconnect delays are uniform in [0, min(max, initial * 2**attempt)]."""
    async with trio.open_nursery() as nursery:
        client = make_client(nursery)
        for attempt in range(8):
            ceiling = min(1.0, 0.1 * 2**attempt)
            delays = [client._backoff(attempt) for _ in range(200)]
            assert all(0 <= d <= ceiling for d in delays)
            assert max(delays) > ceiling / 2  # spread over the range, not fixed
        assert client.statistics() == ClientStatistics(
            state=ClientState.CONNECTING,
            url="ws://fake/",
            reconnects=0,
            catch_ups=0,
            published=0,
            received=0,
            outbox=0,
            in_flight=0,
            subscriptions=0,
            errors=0,
            oversized=0,
        )
