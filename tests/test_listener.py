"""Issue 7: the broker's listener, driven with raw sockets (findings 1, 2 and 11).

What one connection does in or around the WebSocket handshake ends that connection only;
``max_connections`` refuses one more with HTTP 503; the close codes for bad WebSocket input
are sent, not just a dropped TCP connection. (``test_hardening`` runs the same attacks, and
descriptor exhaustion, against a ``trio-realtime serve`` process.)
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import Callable

import pytest
import trio
import trio.testing
from conftest import running_broker
from test_interop import TEST_TIMEOUT, in_thread, open_peer
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from trio_realtime import Broker
from trio_realtime._transport_client import open_transport

UPGRADE = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def until_held(broker: Broker, count: int) -> None:
    """Until the broker holds *count* connections (closes arrive through the kernel, which
    delivers them on loopback before every task is blocked again)."""
    with trio.fail_after(5):
        while broker._gate.held != count:
            await trio.testing.wait_all_tasks_blocked()


def upgrade_request() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return UPGRADE.format(key=key).encode()


async def read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


async def upgraded(port: int) -> trio.SocketStream:
    """A raw TCP stream past the WebSocket handshake and the protocol's hello."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(upgrade_request())
    answer = await read_until(stream, b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 101"), answer
    await stream.send_all(frame(1, b'{"type":"hello"}'))
    await read_until(stream, b"welcome")
    return stream


def frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (FIN set)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 2**16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + mask + masked


async def until_close(stream: trio.SocketStream) -> tuple[list[str], int | None]:
    """Read frames until a close frame: the text messages before it, and its code (None if
    TCP ended without one)."""
    data = b""
    texts: list[str] = []
    while True:
        while len(data) >= 2:
            length = data[1] & 0x7F
            start = 2
            if length == 126:
                length, start = struct.unpack("!H", data[2:4])[0], 4
            elif length == 127:
                length, start = struct.unpack("!Q", data[2:10])[0], 10
            if len(data) < start + length:
                break
            opcode, payload = data[0] & 0x0F, data[start : start + length]
            data = data[start + length :]
            if opcode == 8:
                return texts, int(struct.unpack("!H", payload[:2])[0])
            if opcode == 1:
                texts.append(payload.decode())
        chunk = await stream.receive_some(65536)
        if not chunk:
            return texts, None
        data += chunk


async def close_code(stream: trio.SocketStream) -> int | None:
    """Read frames until a close frame; its code (None if TCP ended without one)."""
    return (await until_close(stream))[1]


async def test_peers_leaving_during_the_upgrade_end_only_their_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Finding 1: peers that leave mid-handshake (after one byte of the 101, half-way through
    the request, with a reset) end their connection only, with no error logged."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:
            for i in range(30):
                stream = await trio.open_tcp_stream("127.0.0.1", served.port)
                request = upgrade_request()
                if i % 3 == 0:
                    await stream.send_all(request)
                    await stream.receive_some(1)
                elif i % 3 == 1:
                    await stream.send_all(request[: len(request) // 2])
                else:
                    await stream.send_all(request)
                    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await stream.aclose()
            await until_held(served.broker, 0)
            await in_thread(lambda: _publish_and_receive(served.url))
    assert not [r for r in caplog.records if r.levelno >= 30]


def _publish_and_receive(url: str) -> None:
    with open_peer(url) as peer:
        peer.subscribe(1, "alive")
        peer.send({"type": "publish", "ref": 1, "event": {"topic": "alive", "data": 1}})
        assert peer.until(lambda f: f["type"] == "event")[-1]["event"]["data"] == 1


async def test_max_connections_refuses_one_more_with_503() -> None:
    """Finding 2: a connection over max_connections gets HTTP 503 and is counted; the others
    are served, and once one leaves a new one gets in."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(max_connections=2) as served:
            first = await upgraded(served.port)
            second = await upgraded(served.port)
            extra = await trio.open_tcp_stream("127.0.0.1", served.port)
            await extra.send_all(upgrade_request())
            answer = await read_until(extra, b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503"), answer
            await extra.aclose()
            assert served.broker.statistics().limits == {"max_connections": 1}
            await first.aclose()
            await until_held(served.broker, 1)
            third = await upgraded(served.port)
            await third.aclose()
            await second.aclose()


async def test_a_peer_silent_during_the_upgrade_is_closed_after_the_handshake_timeout(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """Finding 2: a connection that never completes the WebSocket handshake is closed after
    handshake_timeout, and counted."""
    handshake_timeout = 5.0
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(handshake_timeout=handshake_timeout) as served:
            stream = await trio.open_tcp_stream("127.0.0.1", served.port)
            start = trio.current_time()
            await stream.send_all(upgrade_request()[:20])
            assert await stream.receive_some(10) == b""  # closed by the broker
            assert trio.current_time() - start == pytest.approx(handshake_timeout)
            await stream.aclose()
            assert served.broker.statistics().errors == {"handshake_timeout": 1}


async def test_invalid_utf8_closes_with_1007() -> None:
    """Finding 11: a text message that is not UTF-8 is answered with close code 1007."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:
            stream = await upgraded(served.port)
            await stream.send_all(frame(1, b'{"type":"ping","x":"\xff\xfe"}'))
            assert await close_code(stream) == 1007
            await stream.aclose()
            await in_thread(lambda: _publish_and_receive(served.url))


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: bytes([0xC1]) + frame(1, b"{}")[1:], id="reserved bit"),
        pytest.param(lambda: frame(3, b"{}"), id="reserved opcode"),
        pytest.param(lambda: frame(1, b"{}")[:1] + bytes([0x02]) + b"{}", id="unmasked"),
    ],
)
async def test_a_frame_breaking_rfc_6455_closes_with_1002(bad: Callable[[], bytes]) -> None:
    """A WebSocket frame that breaks RFC 6455 is answered with close code 1002 (by the
    WebSocket layer), and only that connection ends."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:
            stream = await upgraded(served.port)
            await stream.send_all(bad())
            assert await close_code(stream) == 1002
            await stream.aclose()
            await in_thread(lambda: _publish_and_receive(served.url))


async def hello_less(port: int) -> trio.SocketStream:
    """A raw TCP stream past the WebSocket handshake, before the protocol's hello."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(upgrade_request())
    answer = await read_until(stream, b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return stream


@pytest.mark.parametrize(
    ("first", "code", "close"),
    [
        pytest.param(lambda: frame(2, b'{"type":"hello"}'), "bad_frame", 4000, id="binary"),
        pytest.param(
            lambda: frame(1, b'{"type":"hello","pad":"' + b"x" * 2048 + b'"}'),
            "too_large",
            1009,
            id="too large",
        ),
    ],
)
async def test_a_bad_first_message_is_answered_then_closed(
    first: Callable[[], bytes], code: str, close: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A binary or too large message instead of `hello` gets its `error` frame, then the
    close (4000 before hello; 1009 for the size): no failure in the broker's log, and a
    neighbour is served."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(max_message_size=1024) as served:
            stream = await hello_less(served.port)
            await stream.send_all(first())
            texts, close_code = await until_close(stream)
            assert close_code == close
            [error] = [json.loads(text) for text in texts]
            assert (error["type"], error["code"]) == ("error", code)
            await stream.aclose()
            await in_thread(lambda: _publish_and_receive(served.url))
            assert served.broker.statistics().errors == {code: 1}
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_the_message_size_limit_counts_bytes() -> None:
    """Finding 11: 300,000 four-byte characters (1.2 MB, 300,000 characters) are over a
    1 MiB limit: the broker answers `too_large`, then closes the connection with 1009."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:
            stream = await upgraded(served.port)
            payload = ('{"type":"ping","pad":"' + "\U0001f600" * 300_000 + '"}').encode()
            await stream.send_all(frame(1, payload))
            texts, code = await until_close(stream)
            assert code == 1009
            # Announced first (issue 8): the error frame says why.
            assert [json.loads(t)["code"] for t in texts] == ["too_large"]
            await stream.aclose()
            await in_thread(lambda: _publish_and_receive(served.url))
            assert served.broker.statistics().errors == {"too_large": 1}


async def test_a_binary_message_is_refused_as_bad_frame() -> None:
    """Binary messages are not part of the protocol: `bad_frame`, and the connection stays
    usable."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:
            stream = await upgraded(served.port)
            await stream.send_all(frame(2, b'{"type":"ping"}'))
            await stream.send_all(frame(1, b'{"type":"ping"}'))
            answers = (await read_until(stream, b"pong")).decode(errors="replace")
            assert "binary messages are not part of the protocol" in answers
            assert served.broker.statistics().errors == {"bad_frame": 1}
            await stream.aclose()
            await in_thread(lambda: _publish_and_receive(served.url))


async def test_a_client_silent_after_the_upgrade_is_told_why_it_is_closed(
    mock_clock: trio.testing.MockClock,
) -> None:
    """No `hello` within the handshake timeout: an `error` frame (`protocol`), then 4000.

    The clock jumps over the timeout by hand: an autojumping one would skip to the hang
    guard while the neighbour works in its thread, at the end.
    """
    handshake_timeout = 5.0
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(handshake_timeout=handshake_timeout) as served:
            stream = await trio.open_tcp_stream("127.0.0.1", served.port)
            await stream.send_all(upgrade_request())
            await read_until(stream, b"\r\n\r\n")
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(handshake_timeout)
            texts, code = await until_close(stream)
            assert code == 4000
            [error] = [json.loads(t) for t in texts]
            assert (error["type"], error["code"]) == ("error", "protocol")
            assert "hello" in error["message"]
            await stream.aclose()
            await in_thread(lambda: _publish_and_receive(served.url))


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        ([], None),
        (["trio-realtime.v1"], "trio-realtime.v1"),
        (["mqtt", "trio-realtime.v1"], "trio-realtime.v1"),
        (["mqtt"], None),
    ],
)
async def test_the_subprotocol_is_selected_when_offered(
    offered: list[str], selected: str | None
) -> None:
    """The broker selects `trio-realtime.v1` when a client offers it, and serves a client
    that offers none or only others (without selecting one)."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> str | None:
                with connect(
                    served.url,
                    subprotocols=[Subprotocol(p) for p in offered] or None,
                    open_timeout=5,
                ) as ws:
                    ws.send('{"type":"hello"}')
                    assert '"welcome"' in str(ws.recv(timeout=5))
                    return ws.subprotocol

            assert await in_thread(run) == selected


async def test_the_client_offers_the_subprotocol() -> None:
    """open_client offers `trio-realtime.v1`, and the broker selects it."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served, open_transport(served.url) as transport:
            assert transport._ws.subprotocol == "trio-realtime.v1"
