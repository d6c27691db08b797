"""Listening for WebSocket clients (broker side)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, NoReturn

import trio
import trio_websocket

from ._errors import ConnectionClosed

__all__ = ["ServerTransport", "listen"]

#: Received messages trio-websocket queues per connection before it stops reading the socket.
MESSAGE_QUEUE_SIZE: Final = 8


class ServerTransport:
    """One accepted WebSocket connection: text in, text out."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        remote = ws.remote
        self.remote = (
            f"{remote.address}:{remote.port}"
            if isinstance(remote, trio_websocket.Endpoint)
            else str(remote)
        )

    async def receive(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            raise ConnectionClosed(
                f"connection closed: {reason}",
                code=reason.code if reason is not None else None,
                reason=reason.reason if reason is not None else None,
            ) from exc

    async def send(self, text: str) -> None:
        try:
            await self._ws.send_message(text)
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            raise ConnectionClosed(
                f"connection closed: {reason}",
                code=reason.code if reason is not None else None,
                reason=reason.reason if reason is not None else None,
            ) from exc

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        await self._ws.aclose(code, reason)


async def listen(
    handler: Callable[[ServerTransport], Awaitable[None]],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    handler_nursery: trio.Nursery,
    max_message_size: int,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept WebSocket clients on *host*:*port*, running ``handler(transport)`` for each."""

    async def accept(request: trio_websocket.WebSocketRequest) -> None:
        try:
            ws = await request.accept()
        except trio_websocket.ConnectionClosed:
            return
        await handler(ServerTransport(ws))

    async with trio.open_nursery() as nursery:
        server: trio_websocket.WebSocketServer = await nursery.start(
            partial(
                trio_websocket.serve_websocket,
                accept,
                host,
                port,
                ssl_context,
                handler_nursery=handler_nursery,
                max_message_size=max_message_size,
                message_queue_size=MESSAGE_QUEUE_SIZE,
            )
        )
        task_status.started(server.port)
    raise AssertionError("unreachable")  # pragma: no cover
