"""The WebSocket transport: the only module that touches trio-websocket.

Both sides use it. The client opens a connection with :func:`open_transport`; the broker wraps
each connection that ``trio_websocket.serve_websocket`` accepted in a
:class:`WebSocketTransport`. Either way the rest of the package sees text messages in and out,
and trio-websocket's errors translated to ours at this edge:

* a closed connection raises :exc:`~trio_realtime.ConnectionClosed` with the WebSocket close
  ``code`` and ``reason`` (1006 when the TCP connection dropped without a close handshake);
* a failure to connect raises :exc:`~trio_realtime.ConnectionClosed` naming the URL, and a
  refused WebSocket handshake (an HTTP answer other than 101) raises
  :exc:`~trio_realtime.HandshakeError`.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Final, NoReturn

import trio
import trio_websocket

from ._errors import ConnectionClosed, HandshakeError, RemoteProtocolError
from ._util import open_service_nursery

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MESSAGE_QUEUE_SIZE",
    "RECEIVE_BUFFER_SIZE",
    "WebSocketTransport",
    "listen",
    "open_transport",
    "parse_url",
]

#: The largest message (in characters of text) accepted by default: 1 MiB. A larger one closes
#: the connection with 1009.
DEFAULT_MAX_MESSAGE_SIZE: Final = 2**20
#: Seconds to connect (TCP, TLS and the WebSocket handshake) by default.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
#: Seconds the graceful part of a close (the close handshake) may take before the TCP
#: connection is simply closed.
CLOSE_TIMEOUT: Final = 5.0
#: Bytes read from the socket at a time. trio-websocket's default (4 KiB) costs one read, and a
#: trip through the scheduler, per 4 KiB of a busy connection.
RECEIVE_BUFFER_SIZE: Final = 64 * 1024
#: Received messages trio-websocket buffers before it stops reading the socket. Small, so that
#: a receiver that does not keep up pushes back on the sender through TCP.
MESSAGE_QUEUE_SIZE: Final = 4


def _endpoint(endpoint: trio_websocket.Endpoint | str) -> str:
    if isinstance(endpoint, str):
        return endpoint
    address = str(endpoint.address)
    if ":" in address:  # IPv6
        address = f"[{address}]"
    return f"{address}:{endpoint.port}"


def _closed(exc: trio_websocket.ConnectionClosed, remote: str) -> ConnectionClosed:
    """Our :exc:`ConnectionClosed` for trio-websocket's."""
    reason = exc.reason
    if reason is None:
        return ConnectionClosed(f"the WebSocket connection to {remote} is closed")
    text = f": {reason.reason}" if reason.reason else ""
    return ConnectionClosed(
        f"the WebSocket connection to {remote} closed with code {reason.code} "
        f"({reason.name}){text}",
        code=reason.code,
        reason=reason.reason,
    )


class WebSocketTransport:
    """One WebSocket connection, as text messages in and out.

    Construct it around a ``trio_websocket.WebSocketConnection`` (the broker does so for each
    accepted connection), or get one from :func:`open_transport` (the client). It does not own
    the connection's background task: whoever opened the connection does.

    Binary messages are accepted as UTF-8 text (some WebSocket tools send JSON that way); one
    that is not valid UTF-8 raises :exc:`~trio_realtime.RemoteProtocolError` with code
    ``bad_frame``, and the connection stays usable.

    Attributes:
        remote: The peer's ``host:port``.
    """

    def __init__(self, connection: trio_websocket.WebSocketConnection) -> None:
        self._ws = connection
        self.remote: Final = _endpoint(connection.remote)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<WebSocketTransport {self.remote} {state}>"

    @property
    def closed(self) -> bool:
        """Whether the connection is closed or closing (no more messages can be sent)."""
        return self._ws.closed is not None

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code, once the connection is closed or closing."""
        reason = self._ws.closed
        return None if reason is None else reason.code

    async def receive(self) -> str:
        """The next message.

        Messages the peer sent before it closed the connection are still received; then this
        raises.

        Raises:
            ConnectionClosed: if the connection is closed (with its close code and reason).
            RemoteProtocolError: if a binary message is not valid UTF-8 (code ``bad_frame``).
        """
        try:
            message = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc, self.remote) from None
        if isinstance(message, bytes):
            try:
                return message.decode()
            except UnicodeDecodeError as exc:
                raise RemoteProtocolError(
                    f"bad message: a binary message must be UTF-8 JSON text ({exc})",
                    code="bad_frame",
                ) from None
        return message

    async def send(self, text: str) -> None:
        """Send *text* as one text message.

        Raises:
            ConnectionClosed: if the connection is closed or closing.
        """
        try:
            await self._ws.send_message(text)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc, self.remote) from None

    async def aclose(
        self, code: int = 1000, reason: str | None = None, *, timeout: float = CLOSE_TIMEOUT
    ) -> None:
        """Close the connection with *code* and *reason*.

        The close handshake gets *timeout* seconds, shielded from cancellation; then (or at
        once, if the peer already closed) the TCP connection is closed. Idempotent: closing a
        closed transport does nothing. Never raises :exc:`ConnectionClosed`.
        """
        if reason is not None:
            reason = reason.encode()[:120].decode(errors="ignore")  # a close frame holds 123
        with trio.move_on_after(timeout, shield=True):
            await self._ws.aclose(code, reason)


def parse_url(url: str) -> tuple[str, int, str, bool]:
    """``(host, port, resource, tls)`` of a ``ws://`` or ``wss://`` URL.

    Raises:
        ValueError: if *url* is not a WebSocket URL with a host.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL (ws://… or wss://…): {url!r}")
    if not parts.hostname:
        raise ValueError(f"the WebSocket URL {url!r} names no host")
    tls = parts.scheme == "wss"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError as exc:
        raise ValueError(f"bad port in the WebSocket URL {url!r}: {exc}") from None
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return parts.hostname, port, resource, tls


def _first(group: BaseExceptionGroup[BaseException], cls: type[Exception]) -> Exception | None:
    for exc in group.exceptions:
        if isinstance(exc, cls):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc, cls)
            if found is not None:
                return found
    return None


async def _shielded_nursery(
    *, task_status: trio.TaskStatus[tuple[trio.Nursery, trio.CancelScope]]
) -> None:
    """Hold a nursery open, shielded from outside cancellation, until its scope is cancelled."""
    with trio.CancelScope(shield=True) as scope:
        async with trio.open_nursery() as nursery:
            task_status.started((nursery, scope))
            await trio.sleep_forever()


@asynccontextmanager
async def open_transport(
    url: str,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[WebSocketTransport]:
    """Connect to the WebSocket server at *url* for the duration of an ``async with`` block.

    Leaving the block closes the connection with code 1000 (the close handshake bounded by
    :data:`CLOSE_TIMEOUT`, then the TCP connection closed in any case). To close with another
    code, call :meth:`WebSocketTransport.aclose` before leaving.

    Args:
        url: A ``ws://`` or ``wss://`` URL.
        max_message_size: The largest message accepted, in characters; a larger one closes
            the connection with code 1009.
        connect_timeout: Seconds to connect, TLS and WebSocket handshakes included.
        ssl_context: For ``wss://`` URLs (default: the system's trusted certificates).

    Raises:
        ConnectionClosed: if the connection could not be made (the message names the URL and
            why).
        HandshakeError: if the server refused the WebSocket handshake.
        ValueError: if *url* is not a WebSocket URL.
    """
    host, port, resource, tls = parse_url(url)
    host_header = host if port in (80, 443) else f"{host}:{port}"
    if ":" in host and port not in (80, 443):
        host_header = f"[{host}]:{port}"
    deadline = trio.current_time() + connect_timeout
    try:
        async with open_service_nursery() as nursery:
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
            try:
                with trio.fail_at(deadline):
                    if tls:
                        stream = await trio.open_ssl_over_tcp_stream(
                            host,
                            port,
                            ssl_context=ssl_context or ssl.create_default_context(),
                            https_compatible=True,
                        )
                    else:
                        stream = await trio.open_tcp_stream(host, port)
            except trio.TooSlowError:
                raise ConnectionClosed(
                    f"could not connect to {url}: no connection within {connect_timeout:g} s"
                ) from None
            except OSError as exc:
                raise ConnectionClosed(f"could not connect to {url}: {exc}") from exc
            # trio-websocket's reader task must outlive a cancellation of this block long
            # enough to complete the close handshake: it runs shielded, and is cancelled
            # explicitly once the connection is closed.
            reader_nursery, reader_scope = await nursery.start(_shielded_nursery)
            try:
                try:
                    with trio.fail_at(deadline):
                        ws = await trio_websocket.wrap_client_stream(
                            reader_nursery,
                            stream,
                            host_header,
                            resource,
                            message_queue_size=MESSAGE_QUEUE_SIZE,
                            max_message_size=max_message_size,
                            receive_buffer_size=RECEIVE_BUFFER_SIZE,
                        )
                except trio.TooSlowError:
                    raise ConnectionClosed(
                        f"could not connect to {url}: no WebSocket handshake within "
                        f"{connect_timeout:g} s"
                    ) from None
                except (OSError, trio.BrokenResourceError) as exc:
                    raise ConnectionClosed(f"could not connect to {url}: {exc}") from exc
                transport = WebSocketTransport(ws)
                try:
                    yield transport
                finally:
                    await transport.aclose()
            finally:
                reader_scope.cancel()
                await trio.aclose_forcefully(stream)
    except BaseExceptionGroup as group:
        # trio-websocket's reader task raises when the server refuses the handshake.
        refused = _first(group, trio_websocket.HandshakeError)
        if refused is None:
            raise
        status = getattr(refused, "status_code", None)
        detail = f"HTTP status {status}" if status is not None else repr(refused)
        raise HandshakeError(
            f"{url} refused the WebSocket handshake ({detail}); is it a trio_realtime broker?"
        ) from refused


async def listen(
    handler: Callable[[WebSocketTransport], Awaitable[None]],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    handler_nursery: trio.Nursery,
    max_message_size: int,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept WebSocket clients on *host*:*port*, running ``handler(transport)`` for each.

    A startable task: ``port = await nursery.start(listen, …)`` returns once listening, with
    the port (the real one when *port* is 0). Handlers run in *handler_nursery*.
    """

    async def accept(request: trio_websocket.WebSocketRequest) -> None:
        try:
            connection = await request.accept()
        except trio_websocket.ConnectionClosed:
            return  # the client left during the WebSocket handshake
        await handler(WebSocketTransport(connection))

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
                receive_buffer_size=RECEIVE_BUFFER_SIZE,
            )
        )
        task_status.started(server.port)
    raise AssertionError("unreachable")  # pragma: no cover
