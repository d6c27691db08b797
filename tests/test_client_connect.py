"""The remote client connecting: the URL and options, the handshake, and closing.

A real broker where one will do; a scripted server (``_scripted_server``) for the refusals
and failures a real broker will not produce on purpose.
"""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from _scripted_server import Peer, scripted_server, silent_after_welcome
from conftest import TIMEOUT, RunningBroker, running_broker

from trio_realtime import (
    ConnectionClosed,
    Event,
    EventChannel,
    HandshakeError,
    open_bus,
)
from trio_realtime._transport_client import parse_url
from trio_realtime._util import open_service_nursery
from trio_realtime.client._client import Client, ClientState, open_client
from trio_realtime.protocol import (
    AUTH_FAILED,
    CLOSE_POLICY,
    Error,
    EventFrame,
    Hello,
    Pong,
    Subscribe,
    Subscribed,
    encode,
)

# ---------------------------------------------------------------------------------------------
# Connecting


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_connect_reports_state_session_and_name() -> None:
    """A connected client knows its session and state; the broker knows its name."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(name="central") as served,
            served.broker.bus.subscribe("$sys.connect") as connects,
        ):
            async with open_client(served.url, name="alpha") as client:
                assert client.state is ClientState.CONNECTED
                await client.wait_connected()
                connect = await connects.receive()
                assert connect.data["client"] == "alpha"
                assert connect.data["session"] == client.session
                assert client.broker == "central"
                assert client.epoch is None
                assert client.url == served.url
                assert "connected" in repr(client)
            assert client.statistics().state is ClientState.CLOSED
            with pytest.raises(trio.ClosedResourceError):  # closed by its owner, as a bus
                await client.wait_connected()


async def test_client_is_an_event_channel(live_broker: RunningBroker) -> None:
    """Client satisfies the EventChannel protocol (statically, and at run time)."""
    with trio.fail_after(TIMEOUT):
        async with open_client(live_broker.url) as client:
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


async def test_connect_timeout_names_the_url(loopback_clock: trio.testing.MockClock) -> None:
    """A server that accepts TCP but never answers the WebSocket handshake times out, after
    connect_timeout."""

    async def mute(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with open_service_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            url = f"ws://127.0.0.1:{port}"
            start = trio.current_time()
            with pytest.raises(ConnectionClosed, match=r"no WebSocket handshake within 2\.5 s"):
                async with open_client(url, connect_timeout=2.5):
                    pytest.fail("must not connect")
            assert trio.current_time() - start == pytest.approx(2.5)
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# The handshake


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


@pytest.mark.parametrize("answer", ["nothing", "pong first", "bad welcome", "close"])
async def test_handshake_failures_are_handshake_errors(
    answer: str, loopback_clock: trio.testing.MockClock
) -> None:
    """No answer (after connect_timeout), a frame other than welcome, a bad welcome or a
    close fail the handshake."""

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
            start = trio.current_time()
            with pytest.raises(HandshakeError) as info:
                async with open_client(server.url, connect_timeout=5.0):
                    pytest.fail("must not connect")
            elapsed = trio.current_time() - start
    if answer == "nothing":
        assert elapsed == pytest.approx(5.0)  # connect_timeout
    assert server.url in str(info.value)
    if answer == "close":
        assert info.value.code == 1011


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


# ---------------------------------------------------------------------------------------------
# Closing


async def test_body_exception_propagates_unwrapped(live_broker: RunningBroker) -> None:
    """An exception in the open_client block comes out as itself."""
    with trio.fail_after(TIMEOUT), pytest.raises(KeyError):
        async with open_client(live_broker.url):
            raise KeyError("x")


async def test_leaving_open_client_ends_iteration_and_fails_waiters(
    live_broker: RunningBroker,
) -> None:
    """Leaving open_client ends subscriptions cleanly and fails pending requests."""
    seen: list[object] = []
    called = trio.Event()
    failed: list[BaseException] = []

    async def stall(event: Event) -> None:
        called.set()
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with (
            live_broker.broker.bus.serve("stall.end", stall),
            trio.open_nursery() as nursery,  # its tasks outlive the client's block
            open_client(live_broker.url) as client,
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


async def test_a_client_and_a_bus_used_after_their_block_raise_alike(
    live_broker: RunningBroker,
) -> None:
    """Issue 8: after its block, a client raises trio.ClosedResourceError, as a bus does."""
    with trio.fail_after(TIMEOUT):
        async with open_bus() as bus:
            pass
        async with open_client(live_broker.url) as client:
            pass
        channel: EventChannel
        for channel in (bus, client):
            with pytest.raises(trio.ClosedResourceError):
                await channel.publish("after.x", 1)
            with pytest.raises(trio.ClosedResourceError):
                async with channel.subscribe("after.x"):
                    pytest.fail("must not subscribe")


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
