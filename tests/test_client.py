"""The remote client: open_client against a real broker, and a scripted server for the rest.

Most tests run a real :class:`~trio_realtime._broker.Broker` on 127.0.0.1, port 0. A
:class:`ScriptedServer` speaks the protocol by hand (through
:class:`~trio_realtime.protocol.ServerConnection` and the server side of
:class:`~trio_realtime._transport.WebSocketTransport`) for what a real broker will not do on
purpose: go silent, close with 1001/1008/4001, refuse a handshake, report a gap, lose an ack.
"""

from __future__ import annotations

import inspect
import math
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, TypeVar, cast

import attrs
import pytest
import trio
import trio.testing
import trio_websocket

from trio_realtime import (
    ConnectionClosed,
    EpochChanged,
    Event,
    EventChannel,
    HandshakeError,
    InvalidTopic,
    NoResponders,
    PermissionDenied,
    RemoteProtocolError,
    RequestFailed,
    StoreUnavailable,
    TooLarge,
    event_type,
    open_bus,
)
from trio_realtime._broker import Broker, BrokerServer
from trio_realtime._client import Client, ClientState, ClientStatistics, open_client
from trio_realtime._client_conn import LOCAL_TOO_BIG_REASON, Link, refused_as_too_big
from trio_realtime._transport import DEFAULT_MAX_MESSAGE_SIZE, WebSocketTransport, parse_url
from trio_realtime._util import open_service_nursery
from trio_realtime.protocol import (
    AUTH_FAILED,
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_SLOW_CONSUMER,
    FORBIDDEN,
    Ack,
    ClientConnection,
    ClientFrame,
    Error,
    EventFrame,
    Gap,
    Hello,
    History,
    HistoryResult,
    Ping,
    Pong,
    Publish,
    ServerConnection,
    ServerFrame,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    encode,
)
from trio_realtime.store import MemoryStore

#: Hang guard for every test that talks over sockets.
TIMEOUT: Final = 10
#: Reconnect quickly in tests.
FAST: Final[dict[str, Any]] = {"backoff_initial": 0.01, "backoff_max": 0.05}

F = TypeVar("F")


@event_type("test.client.point")
@attrs.frozen
class Point:
    """A typed payload for these tests."""

    x: int
    y: int


# ---------------------------------------------------------------------------------------------
# Servers


@asynccontextmanager
async def running_broker(port: int = 0, **options: Any) -> AsyncIterator[tuple[Broker, str]]:
    """A real broker serving on 127.0.0.1 for the block: ``(broker, url)``."""
    options.setdefault("stats_interval", None)
    async with open_service_nursery() as nursery:
        broker = Broker(**options)
        server: BrokerServer = await nursery.start(broker.serve, "127.0.0.1", port)
        yield broker, server.url


class Brokers:
    """Starts and stops real brokers in a nursery that encloses the clients of a test (so a
    broker can stop while its clients live on)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._running: list[tuple[trio.CancelScope, trio.Event]] = []

    async def start(self, port: int = 0, **options: Any) -> str:
        """Start a broker on 127.0.0.1:*port*; its URL."""
        done = trio.Event()
        scope, url = await self._nursery.start(self._serve, port, options, done)
        self._running.append((scope, done))
        return cast("str", url)

    async def stop(self) -> None:
        """Stop the broker started last, and wait until it has closed its clients."""
        scope, done = self._running.pop()
        scope.cancel()
        await done.wait()

    @staticmethod
    async def _serve(
        port: int,
        options: dict[str, Any],
        done: trio.Event,
        *,
        task_status: trio.TaskStatus[tuple[trio.CancelScope, str]],
    ) -> None:
        try:
            with trio.CancelScope() as scope:
                async with running_broker(port, **options) as (_, url):
                    task_status.started((scope, url))
                    await trio.sleep_forever()
        finally:
            done.set()


class Peer:
    """The server's side of one scripted connection."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, index: int) -> None:
        self.ws = ws
        self.transport = WebSocketTransport(ws)
        self.index = index
        self.conn = ServerConnection()
        self._frames: deque[ClientFrame] = deque()

    async def receive(self) -> ClientFrame:
        """The client's next frame."""
        while not self._frames:
            self.conn.receive_text(await self.transport.receive())
            for item in self.conn.frames():
                assert not isinstance(item, RemoteProtocolError), item
                self._frames.append(item)
        return self._frames.popleft()

    async def expect(self, cls: type[F]) -> F:
        """The client's next frame of type *cls* (pings and pongs are skipped)."""
        while True:
            frame = await self.receive()
            if isinstance(frame, cls):
                return frame
            assert isinstance(frame, (Ping, Pong)), f"expected {cls.__name__}, got {frame!r}"

    async def welcome(self, *, heartbeat: float = 30.0, epoch: str | None = None) -> Hello:
        """Complete the handshake; the client's ``hello``."""
        hello = await self.receive()
        assert isinstance(hello, Hello)
        await self.send(
            Welcome(session=f"s{self.index}", broker="scripted", heartbeat=heartbeat, epoch=epoch)
        )
        return hello

    async def send(self, *frames: ServerFrame) -> None:
        """Send *frames* as one message."""
        await self.transport.send(self.conn.send(list(frames) if len(frames) > 1 else frames[0]))

    async def idle(self) -> None:
        """From now on, only answer ``unsubscribe`` and ``ping`` (as a broker would)."""
        while True:
            frame = await self.receive()
            if isinstance(frame, Unsubscribe):
                await self.send(Unsubscribed(id=frame.id))
            elif isinstance(frame, Ping):
                await self.send(Pong())

    async def close(self, code: int, reason: str = "scripted") -> None:
        """Close the connection with *code*."""
        await self.transport.aclose(code, reason)


Script = Callable[[Peer], Awaitable[None]]


class ScriptedServer:
    """A WebSocket server that runs *script* for each connection (numbered from 1)."""

    def __init__(self, script: Script, *, reject: int | None = None) -> None:
        self.script = script
        self.reject = reject
        self.connections = 0
        self.close_codes: list[int | None] = []
        self.url = ""
        self._changed = trio.Event()

    async def wait_connections(self, n: int) -> None:
        """Wait until *n* connections were accepted."""
        while self.connections < n:
            await self._changed.wait()

    async def handle(self, request: trio_websocket.WebSocketRequest) -> None:
        if self.reject is not None:
            await request.reject(self.reject)
            return
        ws = await request.accept()
        self.connections += 1
        self._changed.set()
        self._changed = trio.Event()
        try:
            await self.script(Peer(ws, self.connections))
        except ConnectionClosed as exc:
            self.close_codes.append(exc.code)


@asynccontextmanager
async def scripted_server(
    script: Script, *, reject: int | None = None
) -> AsyncIterator[ScriptedServer]:
    """A :class:`ScriptedServer` on 127.0.0.1 for the block."""
    server = ScriptedServer(script, reject=reject)
    async with open_service_nursery() as nursery:
        ws_server: trio_websocket.WebSocketServer = await nursery.start(
            partial(trio_websocket.serve_websocket, server.handle, "127.0.0.1", 0, None)
        )
        server.url = f"ws://127.0.0.1:{ws_server.port}"
        yield server


async def silent_after_welcome(peer: Peer) -> None:
    """A script: complete the handshake, then read and never answer."""
    await peer.welcome()
    while True:
        await peer.receive()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------
# Connecting


async def test_connect_reports_state_session_and_name() -> None:
    """A connected client knows its session and state; the broker knows its name."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(name="central") as (broker, url),
            broker.bus.subscribe("$sys.connect") as connects,
        ):
            async with open_client(url, name="alpha") as client:
                assert client.state is ClientState.CONNECTED
                await client.wait_connected()
                connect = await connects.receive()
                assert connect.data["client"] == "alpha"
                assert connect.data["session"] == client.session
                assert client.broker == "central"
                assert client.epoch is None
                assert client.url == url
                assert "connected" in repr(client)
            assert client.statistics().state is ClientState.CLOSED
            with pytest.raises(trio.ClosedResourceError):  # closed by its owner, as a bus
                await client.wait_connected()


async def test_client_is_an_event_channel() -> None:
    """Client satisfies the EventChannel protocol (statically, and at run time)."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as (_, url), open_client(url) as client:
            channel: EventChannel = client
            assert isinstance(channel, EventChannel)
    assert issubclass(Client, EventChannel)


async def test_first_connect_failure_names_the_url_and_reason() -> None:
    """The first connect is not retried: it fails at once, naming the URL and why."""
    url = f"ws://127.0.0.1:{free_port()}/"
    with trio.fail_after(TIMEOUT), pytest.raises(ConnectionClosed) as info:
        async with open_client(url):
            pytest.fail("must not connect")
    assert not isinstance(info.value, HandshakeError)
    assert f"could not connect to {url}" in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/", "ws:///path", "127.0.0.1:80"])
async def test_bad_url_raises_value_error(url: str) -> None:
    """A URL that is not ws:// or wss:// with a host is refused before connecting."""
    with pytest.raises(ValueError, match="URL"):
        async with open_client(url):
            pytest.fail("must not connect")


@pytest.mark.parametrize(
    "options",
    [
        {"max_outbox": 0},
        {"backoff_initial": 0},
        {"backoff_initial": 2.0, "backoff_max": 1.0},
        {"connect_timeout": 0},
        {"max_message_size": 10},
    ],
)
async def test_bad_options_raise_value_error(options: dict[str, Any]) -> None:
    """Out-of-range options are refused before connecting."""
    with pytest.raises(ValueError, match=r"must|need"):
        async with open_client("ws://127.0.0.1:1", **options):
            pytest.fail("must not connect")


async def test_refused_handshake_is_a_handshake_error() -> None:
    """A broker refusing ``hello`` raises HandshakeError with the code, URL and reason."""
    hellos: list[Hello] = []

    async def refuse(peer: Peer) -> None:
        hello = await peer.receive()
        assert isinstance(hello, Hello)
        hellos.append(hello)
        await peer.send(Error(code=AUTH_FAILED, message="bad token"))
        await peer.close(CLOSE_POLICY, "auth failed")

    with trio.fail_after(TIMEOUT):
        async with scripted_server(refuse) as server:
            with pytest.raises(HandshakeError) as info:
                async with open_client(server.url, token="nope", name="n"):
                    pytest.fail("must not connect")
    assert info.value.code == CLOSE_POLICY
    assert server.url in str(info.value)
    assert "auth_failed" in str(info.value)
    (hello,) = hellos
    assert (hello.token, hello.client) == ("nope", "n")
    assert hello.instance is not None


async def test_http_rejection_is_a_handshake_error() -> None:
    """A server refusing the WebSocket upgrade raises HandshakeError naming the status."""
    with trio.fail_after(TIMEOUT):
        async with scripted_server(silent_after_welcome, reject=403) as server:
            with pytest.raises(HandshakeError, match="HTTP status 403"):
                async with open_client(server.url):
                    pytest.fail("must not connect")


async def test_body_exception_propagates_unwrapped() -> None:
    """An exception in the open_client block comes out as itself."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as (_, url):
            with pytest.raises(KeyError):
                async with open_client(url):
                    raise KeyError("x")


# ---------------------------------------------------------------------------------------------
# Publishing and subscribing


async def test_publish_reaches_a_subscriber_on_another_client() -> None:
    """An event published by one client arrives intact at another's subscription."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as (_, url),
            open_client(url, name="pub") as a,
            open_client(url) as b,
            b.subscribe("orders.>") as sub,
        ):
            sent = await a.publish("orders.created", {"id": 1, "s": "é"}, headers={"k": "v"})
            assert sent.source == "pub"
            assert sent.seq is None
            assert await sub.receive() == sent
            typed = await a.publish("orders.paid", [1], type="custom", source="svc")
            got = await sub.receive()
            assert (
                (got.type, got.source, got.data)
                == ("custom", "svc", [1])
                == (
                    typed.type,
                    typed.source,
                    typed.data,
                )
            )


async def test_typed_subscription_over_the_broker() -> None:
    """subscribe(cls) delivers typed payloads; a payload that does not fit is counted."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as (_, url),
            open_client(url) as a,
            open_client(url) as b,
            b.subscribe(Point) as sub,
        ):
            await a.publish(Point(1, 2))
            await a.publish("test.client.point", {"no": "fit"})
            await a.publish("test.client.point", {"x": 3, "y": 4})
            assert [(await sub.receive()).data for _ in range(2)] == [Point(1, 2), Point(3, 4)]
            assert sub.statistics().rejected == 1


async def test_ack_returns_the_brokers_seq() -> None:
    """publish(ack=True) returns seq None for an unstored topic, the store's seq otherwise."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as (_, url), open_client(url) as client:
            event = await client.publish("plain.x", 1, ack=True)
            assert event.seq is None
            assert event.data == 1
        async with (
            open_bus(store=MemoryStore()) as bus,
            running_broker(bus=bus) as (_, url),
            open_client(url) as client,
        ):
            first = await client.publish("kept.x", 1, ack=True)
            second = await client.publish("kept.x", 2, ack=True)
            assert first.seq is not None
            assert second.seq == first.seq + 1
            assert client.statistics().in_flight == 0


async def test_bad_input_is_rejected_locally() -> None:
    """Bad topics, patterns, data and arguments raise before anything is sent."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as (broker, url), open_client(url) as client:
            with pytest.raises(InvalidTopic, match=r"'a\.\*'"):
                await client.publish("a.*", 1)
            with pytest.raises(InvalidTopic):
                await client.publish("a.*", 1, ack=True)
            with pytest.raises(TypeError, match="data"):
                await client.publish("a.b", {1, 2})
            with pytest.raises(InvalidTopic):
                async with client.subscribe("a..b"):
                    pytest.fail("must not subscribe")
            with pytest.raises(TypeError, match="since"):
                async with client.subscribe("a.b", since=True):
                    pytest.fail("must not subscribe")
            with pytest.raises(ValueError, match="overflow"):
                async with client.subscribe("a.b", overflow="sometimes"):
                    pytest.fail("must not subscribe")
            with pytest.raises(InvalidTopic):
                await client.history("a..b")
            with pytest.raises(ValueError, match="limit"):
                await client.history("a.b", limit=-1)
            with pytest.raises(InvalidTopic):
                await client.request("a.>", 1)
            assert client.statistics().outbox == 0
            assert broker.statistics().errors == {}


async def test_broker_refusals_map_to_exceptions() -> None:
    """The broker's error codes become PermissionDenied and StoreUnavailable (as on a bus)."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as (_, url), open_client(url) as client:
            with pytest.raises(PermissionDenied, match="reserved"):
                await client.publish("$sys.fake", 1, ack=True)
            with pytest.raises(StoreUnavailable, match="no store"):
                async with client.subscribe("a.b", since=0):
                    pytest.fail("a broker without a store cannot replay")
            with pytest.raises(StoreUnavailable, match="no store"):
                await client.history("a.>")
            # A refused fire-and-forget publish is counted; the connection goes on.
            await client.publish("$sys.fake", 1)
            await client.publish("a.b", 1, ack=True)  # answered after the error
            assert client.statistics().errors == 1
            assert client.state is ClientState.CONNECTED


async def test_frames_too_large_are_not_sent() -> None:
    """A frame larger than max_message_size fails (acked) or is dropped and counted."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as (_, url),
            open_client(url, max_message_size=4096) as a,
            open_client(url) as b,
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


async def test_frames_are_measured_in_bytes() -> None:
    """A frame within max_message_size in characters but not in UTF-8 bytes is not sent."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as (_, url), open_client(url, max_message_size=4096) as a:
            with pytest.raises(TooLarge, match="bytes") as info:
                await a.publish("big.x", "é" * 3000, ack=True)  # 3000 characters, 6000 bytes
            assert info.value.code == "too_large"
            assert (await a.publish("big.x", "é" * 1500, ack=True)).data == "é" * 1500


async def test_history_and_since_with_a_store() -> None:
    """history() and subscribe(since=…) read the broker's store, by seq or by time."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus(store=MemoryStore()) as bus,
            running_broker(bus=bus) as (_, url),
            open_client(url) as client,
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
            running_broker(bus=bus, max_message_size=4096) as (_, url),
            open_client(url, max_message_size=4096) as client,
        ):
            for i in range(60):
                await bus.publish("big.x", {"i": i, "pad": "p" * 200})
            got = await client.history("big.>", limit=50)
            assert [e.data["i"] for e in got] == list(range(50))
            got = await client.history("big.>", since=got[-1].seq)
            assert [e.data["i"] for e in got] == list(range(50, 60))


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


# ---------------------------------------------------------------------------------------------
# Request/reply


async def test_request_reply_between_clients() -> None:
    """request() gets serve()'s reply; failures, timeouts and no responders raise."""

    async def double(event: Event) -> Any:
        return event.data * 2

    def fail(event: Event) -> Any:
        raise ValueError("cannot do that")

    async def stall(event: Event) -> Any:
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as (_, url),
            open_client(url) as a,
            open_client(url) as b,
            b.serve("rpc.double", double),
            b.serve("rpc.fail", fail),
            b.serve("rpc.stall", stall),
        ):
            assert (await a.request("rpc.double", 21)).data == 42
            with pytest.raises(RequestFailed, match="cannot do that"):
                await a.request("rpc.fail", 1)
            with pytest.raises(trio.TooSlowError):
                await a.request("rpc.stall", timeout=0.1)
            with pytest.raises(NoResponders):
                await a.request("rpc.nobody", 1)
            assert [(await a.request("rpc.double", i)).data for i in range(3)] == [0, 2, 4]
            assert b.statistics().subscriptions == 3


# ---------------------------------------------------------------------------------------------
# Leaving


async def test_leaving_subscribe_unsubscribes_on_the_broker() -> None:
    """Once a subscription's block exits, normally or cancelled, the broker no longer routes."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as (_, url), open_client(url) as a, open_client(url) as b:
            async with b.subscribe("leave.x") as sub:
                await a.publish("leave.x", 1)
                await sub.receive()
            with pytest.raises(trio.ClosedResourceError):
                sub.receive_nowait()
            with pytest.raises(NoResponders):
                await a.request("leave.x")
            with trio.CancelScope() as scope:
                async with b.subscribe("leave.x"):
                    scope.cancel()
                    await trio.sleep_forever()
            with pytest.raises(NoResponders):
                await a.request("leave.x")
            assert b.statistics().subscriptions == 0


async def test_leaving_open_client_ends_iteration_and_fails_waiters() -> None:
    """Leaving open_client ends subscriptions cleanly and fails pending requests."""
    seen: list[object] = []
    called = trio.Event()
    failed: list[BaseException] = []

    async def stall(event: Event) -> None:
        called.set()
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as (broker, url),
            broker.bus.serve("stall.end", stall),
            trio.open_nursery() as nursery,  # its tasks outlive the client's block
            open_client(url) as client,
        ):

            async def consume(task_status: trio.TaskStatus[None]) -> None:
                async with client.subscribe("end.>") as sub:
                    task_status.started()
                    async for event in sub:
                        seen.append(event.data)  # noqa: PERF401 - watched per step
                seen.append("end")

            async def ask() -> None:
                try:
                    await client.request("stall.end", timeout=TIMEOUT)
                except trio.ClosedResourceError as exc:
                    failed.append(exc)

            await nursery.start(consume)
            nursery.start_soon(ask)
            await called.wait()
            async with client.subscribe("end.>") as witness:
                await client.publish("end.x", 1)
                await witness.receive()
    assert seen == [1, "end"]
    assert len(failed) == 1
    assert client.state is ClientState.CLOSED
    # Used after its block, a client raises what a bus does (ConnectionClosed is for a
    # connection lost for good).
    with pytest.raises(trio.ClosedResourceError):
        await client.publish("end.x", 2)
    with pytest.raises(trio.ClosedResourceError):
        async with client.subscribe("end.x"):
            pytest.fail("must not subscribe")


# ---------------------------------------------------------------------------------------------
# Reconnecting


async def test_reconnect_resubscribes_resumes_and_flushes_the_outbox() -> None:
    """After a broker restart, subscriptions, serve and the inbox work again; stored events
    published meanwhile are replayed without duplicates; publishes made meanwhile are sent."""

    async def echo(event: Event) -> Any:
        return event.data

    with trio.fail_after(TIMEOUT):
        async with open_bus(store=MemoryStore()) as bus, trio.open_nursery() as nursery:
            brokers = Brokers(nursery)
            url = await brokers.start(bus=bus)
            async with (
                open_client(url, **FAST) as client,
                client.subscribe("r.>") as sub,
                client.serve("rpc.echo", echo),
            ):
                await client.publish("r.x", "before", ack=True)
                assert (await sub.receive()).data == "before"
                assert (await client.request("rpc.echo", 1)).data == 1
                epoch = client.epoch

                await brokers.stop()  # the broker shuts down: it closes the client with 1001
                await bus.publish("r.x", "stored while down")  # the client must catch up
                for i in range(700):  # more than one batch waits in the outbox
                    await client.publish("r.x", i)

                await brokers.start(parse_url(url)[1], bus=bus)
                assert (await sub.receive()).data == "stored while down"
                assert [(await sub.receive()).data for _ in range(700)] == list(range(700))
                await client.publish("r.x", "after")
                assert (await sub.receive()).data == "after"
                assert (await client.request("rpc.echo", 2)).data == 2
                stats = client.statistics()
                assert stats.reconnects == 1
                assert stats.state is ClientState.CONNECTED
                assert client.epoch == epoch
            await brokers.stop()


async def test_reconnect_disabled_closes_the_client() -> None:
    """With reconnect=False a lost connection closes the client: everything raises."""
    called = trio.Event()
    outcome: list[BaseException] = []

    async def stall(event: Event) -> None:
        called.set()
        await trio.sleep_forever()

    async def ask(client: Client) -> None:
        try:
            await client.request("down.stall", timeout=TIMEOUT)
        except ConnectionClosed as exc:
            outcome.append(exc)

    with trio.fail_after(TIMEOUT):
        async with open_bus() as bus, trio.open_nursery() as nursery:
            brokers = Brokers(nursery)
            url = await brokers.start(bus=bus)
            async with (
                bus.serve("down.stall", stall),
                open_client(url, reconnect=False) as client,
                client.subscribe("down.>") as sub,
                client.serve("down.rpc", stall),  # its handlers end quietly with the client
            ):
                nursery.start_soon(ask, client)
                await called.wait()
                await brokers.stop()
                with pytest.raises(ConnectionClosed) as info:
                    await sub.receive()
                assert info.value.code == CLOSE_GOING_AWAY
                assert client.state is ClientState.CLOSED
                with pytest.raises(ConnectionClosed, match="lost the connection"):
                    await client.publish("down.x", 1)
                with pytest.raises(ConnectionClosed):
                    await client.history("down.>")
                with pytest.raises(ConnectionClosed):
                    async with client.subscribe("down.y"):
                        pytest.fail("must not subscribe")
    assert len(outcome) == 1


@pytest.mark.parametrize(
    ("code", "reconnects"),
    [(CLOSE_GOING_AWAY, True), (CLOSE_SLOW_CONSUMER, True), (CLOSE_POLICY, False)],
)
async def test_close_code_decides_whether_to_reconnect(code: int, reconnects: bool) -> None:
    """1001 and 4001 make the client reconnect; 1008 closes it for good."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        if peer.index == 1:
            await peer.expect(Publish)
            await peer.close(code, "scripted close")
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server, open_client(server.url, **FAST) as client:
            if reconnects:
                await client.publish("x.y", 1)
                await server.wait_connections(2)
                await client.wait_connected()
                assert client.statistics().reconnects == 1
            else:
                with pytest.raises(ConnectionClosed) as info:
                    await client.publish("x.y", 1, ack=True)
                assert info.value.code == CLOSE_POLICY
                assert "scripted close" in str(info.value)
                assert client.state is ClientState.CLOSED
                assert server.connections == 1


async def test_acked_publish_in_flight_is_resent_with_the_same_id() -> None:
    """An acked publish whose ack was lost with the connection is sent again, same id."""
    ids: list[str] = []

    async def script(peer: Peer) -> None:
        await peer.welcome()
        publish = await peer.expect(Publish)
        ids.append(publish.event.id)
        if peer.index == 1:
            await peer.close(CLOSE_GOING_AWAY, "restart")
            return
        assert publish.ref is not None
        await peer.send(Ack(ref=publish.ref, id=publish.event.id, seq=7))
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server, open_client(server.url, **FAST) as client:
            event = await client.publish("a.b", 1, ack=True)
    assert event.seq == 7
    assert ids == [event.id, event.id]


async def test_instance_is_kept_across_reconnects_and_a_duplicate_ack_resolves() -> None:
    """hello.instance is one random id per client, sent again on every reconnect; a publish
    re-sent after its ack was lost is answered ``duplicate`` and returns the original seq."""
    hellos: list[Hello] = []

    async def script(peer: Peer) -> None:
        hellos.append(await peer.welcome())
        publish = await peer.expect(Publish)
        assert publish.ref is not None
        if peer.index == 1:  # stored as seq 7, but the ack is lost with the connection
            await peer.close(CLOSE_GOING_AWAY, "restart")
            return
        await peer.send(Ack(ref=publish.ref, id=publish.event.id, seq=7, duplicate=True))
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server:
            async with open_client(server.url, **FAST) as client:
                event = await client.publish("a.b", 1, ack=True)
                assert client.statistics().reconnects == 1
            async with open_client(server.url, **FAST) as other:
                pass
    assert (event.seq, event.data) == (7, 1)
    instances = [hello.instance for hello in hellos]
    assert instances[:2] == [client.instance, client.instance]
    assert instances[2] == other.instance != client.instance
    assert len(client.instance) == 32
    int(client.instance, 16)  # hex


async def test_resubscribe_resumes_after_the_last_seq_of_the_same_epoch() -> None:
    """A resubscribe resumes after the last seq seen; a new store is reported and replayed."""
    resubscribes: list[Subscribe] = []

    async def script(peer: Peer) -> None:
        await peer.welcome(epoch="one" if peer.index < 3 else "two")
        subscribe = await peer.expect(Subscribe)
        await peer.send(Subscribed(id=subscribe.id))
        if peer.index == 1:
            await peer.send(EventFrame(subs=(subscribe.id,), event=Event(topic="e.x", seq=41)))
            await peer.send(EventFrame(subs=(subscribe.id,), event=Event(topic="e.x", seq=42)))
        else:
            resubscribes.append(subscribe)
        if peer.index < 3:
            await peer.expect(Publish)
            await peer.close(CLOSE_GOING_AWAY)
        else:
            await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(script) as server,
            open_client(server.url, **FAST) as client,
            client.subscribe("e.>", since=40) as sub,
        ):
            assert [(await sub.receive()).seq for _ in range(2)] == [41, 42]
            await client.publish("e.go", 1)  # connection 1 closes on it
            await server.wait_connections(2)
            await client.wait_connected()
            await client.publish("e.go", 2)  # connection 2 closes on it
            await server.wait_connections(3)
            await client.wait_connected()
            assert client.epoch == "two"
            with pytest.raises(EpochChanged, match="'one' -> 'two'") as info:
                sub.receive_nowait()
            assert (info.value.old_epoch, info.value.new_epoch) == ("one", "two")
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()  # reported once; the subscription goes on
    assert [(r.since, r.since_time) for r in resubscribes] == [(42, None), (0, None)]


async def test_refused_resubscribe_ends_the_subscription_with_the_error() -> None:
    """If the broker refuses to re-create a subscription after a reconnect, it ends."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        subscribe = await peer.expect(Subscribe)
        if peer.index == 1:
            await peer.send(Subscribed(id=subscribe.id))
            await peer.close(CLOSE_GOING_AWAY)
            return
        await peer.send(Error(ref=subscribe.id, code=FORBIDDEN, message="not any more"))
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server, open_client(server.url, **FAST) as client:
            async with client.subscribe("f.>") as sub:
                with pytest.raises(PermissionDenied, match="not any more"):
                    await sub.receive()
            assert client.statistics().subscriptions == 0


@pytest.mark.parametrize("answer", ["nothing", "pong first", "bad welcome", "close"])
async def test_handshake_failures_are_handshake_errors(answer: str) -> None:
    """No answer, a frame other than welcome, a bad welcome or a close fail the handshake."""

    async def script(peer: Peer) -> None:
        await peer.receive()
        if answer == "pong first":  # the protocol forbids it: bypass ServerConnection
            await peer.transport.send(encode(Pong()))
        elif answer == "bad welcome":
            await peer.transport.send('{"type": "welcome", "session": 1}')
        elif answer == "close":
            await peer.close(1011, "broken")
            return
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server:
            with pytest.raises(HandshakeError) as info:
                async with open_client(server.url, connect_timeout=0.2):
                    pytest.fail("must not connect")
    assert server.url in str(info.value)
    if answer == "close":
        assert info.value.code == 1011


async def test_subscribe_cancelled_before_the_answer_is_withdrawn() -> None:
    """A subscribe cancelled while waiting for ``subscribed`` is unsubscribed on the broker."""
    withdrawn = trio.Event()

    async def script(peer: Peer) -> None:
        await peer.welcome()
        subscribe = await peer.expect(Subscribe)
        unsubscribe = await peer.expect(Unsubscribe)
        assert unsubscribe.id == subscribe.id
        await peer.send(Unsubscribed(id=unsubscribe.id))
        withdrawn.set()
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server, open_client(server.url) as client:
            with trio.move_on_after(0.05) as scope:
                async with client.subscribe("w.x"):
                    pytest.fail("the broker never confirmed it")
            assert scope.cancelled_caught
            await withdrawn.wait()
            assert client.statistics().subscriptions == 0


async def test_full_block_subscription_pushes_back_and_counts_what_the_broker_dropped() -> None:
    """A full ``block`` subscription stalls the connection; the broker drops the oldest
    events for this client and reports them, so received + missed is what was published."""
    n = 300
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(session_buffer=8) as (broker, url),
            open_client(url) as a,
            open_client(url) as b,
            b.subscribe("bp.x", max_buffer_size=1) as sub,
        ):
            for i in range(n):
                await a.publish("bp.x", [i, "x" * 65536])
            await a.publish("bp.x", ["marker", ""], ack=True)
            received = []
            while (event := await sub.receive()).data[0] != "marker":
                received.append(event.data[0])
            assert sub.missed > 0
            assert len(received) + sub.missed == n
            assert received == sorted(received)
            assert broker.statistics().dropped == sub.missed
            assert b.statistics().reconnects == 0


async def test_outbox_is_bounded_while_disconnected() -> None:
    """While disconnected, publishes wait in the outbox; when it is full, publish waits."""
    gate = trio.Event()
    received: list[object] = []
    all_in = trio.Event()

    async def script(peer: Peer) -> None:
        if peer.index == 1:
            await peer.welcome()
            await peer.close(CLOSE_GOING_AWAY)
            return
        await gate.wait()
        await peer.welcome()
        while True:
            frame = await peer.receive()
            if isinstance(frame, Publish):
                received.append(frame.event.data)
                if len(received) == 3:
                    all_in.set()

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(script) as server,
            open_client(server.url, max_outbox=2, **FAST) as client,
        ):
            await server.wait_connections(2)  # the client is redialling; it waits at the gate
            assert client.state is ClientState.CONNECTING
            await client.publish("q.x", 1)
            await client.publish("q.x", 2)
            third_done = trio.Event()

            async def third() -> None:
                await client.publish("q.x", 3)
                third_done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(third)
                await trio.testing.wait_all_tasks_blocked()
                assert not third_done.is_set()
                assert client.statistics().outbox == 2
                gate.set()
            await all_in.wait()
    assert received == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# What only a scripted server does


async def test_event_frames_fan_out_and_gaps_count_as_missed() -> None:
    """An event frame reaches every listed subscription; a gap adds to ``missed``."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        one = await peer.expect(Subscribe)
        await peer.send(Subscribed(id=one.id))
        two = await peer.expect(Subscribe)
        event = Event(topic="g.x", data=1, seq=5)
        await peer.send(
            Subscribed(id=two.id),
            Gap(sub=one.id, missed=3),
            EventFrame(subs=(one.id, two.id), event=event),
        )
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(script) as server,
            open_client(server.url) as client,
            client.subscribe("g.>") as one,
            client.subscribe("g.x") as two,
        ):
            assert (await one.receive()).data == (await two.receive()).data == 1
            assert (one.missed, two.missed) == (3, 0)
            assert client.statistics().received == 1


async def test_a_gap_of_stored_events_is_caught_up_from_the_store() -> None:
    """A gap's stored events are re-read (resubscribe after the resume point); the rest count."""
    caught_up: list[Subscribe] = []

    async def script(peer: Peer) -> None:
        await peer.welcome(epoch="e")
        first = await peer.expect(Subscribe)
        await peer.send(Subscribed(id=first.id, seq=10), Gap(sub=first.id, missed=3, stored=2))
        unsubscribe = await peer.expect(Unsubscribe)
        assert unsubscribe.id == first.id
        again = await peer.expect(Subscribe)
        caught_up.append(again)
        await peer.send(
            Unsubscribed(id=first.id),
            Subscribed(id=again.id),
            EventFrame(subs=(again.id,), event=Event(topic="g.x", data="from the store", seq=11)),
        )
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(script) as server,
            open_client(server.url) as client,
            client.subscribe("g.>") as sub,
        ):
            assert (await sub.receive()).data == "from the store"
            assert sub.missed == 1  # the one dropped event that was not stored
            assert client.statistics().catch_ups == 1
    assert [(s.pattern, s.since) for s in caught_up] == [("g.>", 10)]


async def test_binary_messages_are_read_as_utf8_text() -> None:
    """A binary message is decoded as UTF-8; one that is not UTF-8 is counted, not fatal."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        sub = await peer.expect(Subscribe)
        await peer.send(Subscribed(id=sub.id))
        await peer.ws.send_message(b"\xff\xfe")
        frame = EventFrame(subs=(sub.id,), event=Event(topic="b.x", data="bin"))
        await peer.ws.send_message(encode(frame).encode())
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(script) as server,
            open_client(server.url) as client,
            client.subscribe("b.>") as sub,
        ):
            assert (await sub.receive()).data == "bin"
            assert client.statistics().errors == 1


async def test_silent_broker_is_dropped_and_redialled() -> None:
    """The client pings an idle broker, drops one silent for two heartbeats (closing with
    1001), reconnects, and answers the broker's pings."""
    pinged = trio.Event()
    ponged = trio.Event()

    async def script(peer: Peer) -> None:
        if peer.index == 1:
            await peer.welcome(heartbeat=0.05)
            while True:
                if isinstance(await peer.receive(), Ping):
                    pinged.set()
        await peer.welcome()
        await peer.send(Ping())
        await peer.expect(Pong)
        ponged.set()
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server, open_client(server.url, **FAST) as client:
            await server.wait_connections(2)
            await ponged.wait()
            assert pinged.is_set()
            assert server.close_codes == [CLOSE_GOING_AWAY]
            assert client.state is ClientState.CONNECTED


# ---------------------------------------------------------------------------------------------
# The transport


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("ws://h", ("h", 80, "/", False)),
        ("wss://h/p?q=1", ("h", 443, "/p?q=1", True)),
        ("ws://[::1]:9/x", ("::1", 9, "/x", False)),
    ],
)
def test_parse_url(url: str, parsed: tuple[str, int, str, bool]) -> None:
    """WebSocket URLs split into host, port, resource and TLS, with default ports."""
    assert parse_url(url) == parsed


def test_parse_url_rejects_a_bad_port() -> None:
    """A port that is not a number is a ValueError naming the URL."""
    with pytest.raises(ValueError, match="bad port"):
        parse_url("ws://h:http/")


async def test_connect_timeout_names_the_url() -> None:
    """A server that accepts TCP but never answers the WebSocket handshake times out."""

    async def mute(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with open_service_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            url = f"ws://127.0.0.1:{port}"
            with pytest.raises(ConnectionClosed, match=r"no WebSocket handshake within 0\.1 s"):
                async with open_client(url, connect_timeout=0.1):
                    pytest.fail("must not connect")
            nursery.cancel_scope.cancel()


async def test_server_side_transport_reports_the_close() -> None:
    """The server side of a WebSocketTransport sees the client's close code; sending after
    it raises ConnectionClosed; closing again does nothing."""
    closed = trio.Event()
    seen: list[tuple[bool, int | None, str]] = []

    async def script(peer: Peer) -> None:
        await peer.welcome()
        with pytest.raises(ConnectionClosed) as info:
            await peer.idle()
        transport = peer.transport
        seen.append((transport.closed, info.value.code, repr(transport)))
        with pytest.raises(ConnectionClosed):
            await transport.send("{}")
        await transport.aclose()
        closed.set()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server:
            async with open_client(server.url):
                pass
            await closed.wait()
    ((is_closed, code, text),) = seen
    assert is_closed
    assert code == 1000
    assert "closed" in text


# ---------------------------------------------------------------------------------------------
# Without sockets (virtual time)


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


def make_link(nursery: trio.Nursery, transport: FakeTransport) -> Link:
    """A client's link over *transport*, past the handshake (heartbeat 5 s)."""
    client = Client._create(
        nursery,
        "ws://fake/",
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
    conn = ClientConnection()
    conn.send(Hello())
    conn.receive_text(encode(Welcome(session="s", broker="b", heartbeat=5.0)))
    (welcome,) = conn.frames()
    assert isinstance(welcome, Welcome)
    return Link(client, cast("WebSocketTransport", transport), conn, welcome)


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
        link.client._outbox.append(Ping())  # the writer sends while the reader closes
        await trio.sleep(2.0)
    assert link.reason is not None
    assert link.reason.code == 1000
    assert link.oversized


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


async def test_backoff_is_capped_full_jitter() -> None:
    """Reconnect delays are uniform in [0, min(max, initial * 2**attempt)]."""
    async with trio.open_nursery() as nursery:
        client = make_link(nursery, FakeTransport(answer_pings=False)).client
        for attempt in range(8):
            ceiling = min(1.0, 0.1 * 2**attempt)
            delays = [client._backoff(attempt) for _ in range(200)]
            assert all(0 <= d <= ceiling for d in delays)
            assert max(delays) > ceiling / 2  # spread over the range, not fixed
        assert client.statistics() == ClientStatistics(
            state=ClientState.CONNECTING,
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


async def test_a_client_and_a_bus_used_after_their_block_raise_alike() -> None:
    """Issue 8: after its block, a client raises trio.ClosedResourceError, as a bus does."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as (_, url):
            async with open_bus() as bus:
                pass
            async with open_client(url) as client:
                pass
            channel: EventChannel
            for channel in (bus, client):
                with pytest.raises(trio.ClosedResourceError):
                    await channel.publish("after.x", 1)
                with pytest.raises(trio.ClosedResourceError):
                    async with channel.subscribe("after.x"):
                        pytest.fail("must not subscribe")
