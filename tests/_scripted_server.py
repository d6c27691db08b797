"""A scripted server for the remote client's tests: it speaks the protocol by hand.

For what a real broker will not do on purpose: go silent, close with 1001/1008/4001, refuse a
handshake, report a gap, lose an ack. It speaks through
:class:`~trio_realtime.protocol.ServerConnection` and the server side of
:class:`~trio_realtime._transport.WebSocketTransport`, on 127.0.0.1, port 0. (A real broker
comes from ``conftest.running_broker``.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar

import trio
import trio_websocket
from conftest import HOST

from trio_realtime import ConnectionClosed
from trio_realtime._transport import WebSocketTransport
from trio_realtime._util import open_service_nursery
from trio_realtime.protocol import (
    ClientFrame,
    FrameError,
    Hello,
    Ping,
    Pong,
    ServerConnection,
    ServerFrame,
    Unsubscribe,
    Unsubscribed,
    Welcome,
)

F = TypeVar("F")


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
                assert not isinstance(item, FrameError), item
                self._frames.append(item)
        return self._frames.popleft()

    async def expect(self, cls: type[F]) -> F:
        """The client's next frame of type *cls* (pings and pongs are skipped)."""
        while True:
            frame = await self.receive()
            if isinstance(frame, cls):
                return frame
            assert isinstance(frame, (Ping, Pong)), f"expected {cls.__name__}, got {frame!r}"

    async def welcome(
        self, *, heartbeat: float = 30.0, epoch: str | None = None, inbox: str | None = None
    ) -> Hello:
        """Complete the handshake; the client's ``hello``."""
        hello = await self.receive()
        assert isinstance(hello, Hello)
        await self.send(
            Welcome(
                session=f"s{self.index}",
                broker="scripted",
                heartbeat=heartbeat,
                epoch=epoch,
                inbox=inbox,
            )
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
            partial(trio_websocket.serve_websocket, server.handle, HOST, 0, None)
        )
        server.url = f"ws://127.0.0.1:{ws_server.port}"
        yield server


async def silent_after_welcome(peer: Peer) -> None:
    """A script: complete the handshake, then read and never answer."""
    await peer.welcome()
    while True:
        await peer.receive()
