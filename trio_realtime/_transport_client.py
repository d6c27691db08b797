"""The client's side of the WebSocket transport: :func:`open_transport` connects to a broker's
URL and yields a :class:`~trio_realtime._transport.WebSocketTransport`.

Failures are translated to ours at this edge, as in :mod:`trio_realtime._transport`: a failure
to connect (TCP, TLS, or the WebSocket handshake in time) raises
:exc:`~trio_realtime.ConnectionClosed` naming the URL and why, and a refused WebSocket handshake
(an HTTP answer other than 101) raises :exc:`~trio_realtime.HandshakeError`.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio
import trio_websocket
import wsproto

from ._errors import ConnectionClosed, HandshakeError
from ._transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MESSAGE_QUEUE_SIZE,
    RECEIVE_BUFFER_SIZE,
    SUBPROTOCOL,
    WebSocketTransport,
)
from ._util import open_service_nursery

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "open_transport", "parse_url"]

#: Seconds to connect (TCP, TLS and the WebSocket handshake) by default.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0


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
    :data:`~trio_realtime._transport.CLOSE_TIMEOUT`, then the TCP connection closed in any
    case). To close with another code, call :meth:`WebSocketTransport.aclose` before
    leaving.

    Args:
        url: A ``ws://`` or ``wss://`` URL.
        max_message_size: The largest message accepted, in bytes; a larger one closes the
            connection with code 1009.
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
            if isinstance(stream, trio.SSLStream):
                # Here, not lazily inside trio-websocket, which would hide a refused
                # certificate behind a handshake timeout.
                await _tls_handshake(stream, url, deadline, connect_timeout)
            # trio-websocket's reader task must outlive a cancellation of this block long
            # enough to complete the close handshake: it runs shielded, and is cancelled
            # explicitly once the connection is closed.
            reader_nursery, reader_scope = await nursery.start(_shielded_nursery)
            try:
                try:
                    with trio.fail_at(deadline):
                        ws = await _wrap_client_stream(
                            reader_nursery, stream, host_header, resource, max_message_size
                        )
                except trio.TooSlowError:
                    raise ConnectionClosed(
                        f"could not connect to {url}: no WebSocket handshake within "
                        f"{connect_timeout:g} s"
                    ) from None
                except (OSError, trio.BrokenResourceError) as exc:
                    raise ConnectionClosed(f"could not connect to {url}: {exc}") from exc
                transport = WebSocketTransport(ws, max_message_size=max_message_size)
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


async def _wrap_client_stream(
    reader_nursery: trio.Nursery,
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    host_header: str,
    resource: str,
    max_message_size: int,
) -> trio_websocket.WebSocketConnection:
    """``trio_websocket.wrap_client_stream``, but a connection that ends before the server
    answers the handshake (a TLS server refusing the client's certificate, a plain-text
    server) raises :exc:`trio.BrokenResourceError` at once, where trio-websocket would wait
    for an answer forever."""
    connection = trio_websocket.WebSocketConnection(
        stream,
        wsproto.WSConnection(wsproto.ConnectionType.CLIENT),
        host=host_header,
        path=resource,
        client_subprotocols=[SUBPROTOCOL],
        message_queue_size=MESSAGE_QUEUE_SIZE,
        max_message_size=max_message_size,
        receive_buffer_size=RECEIVE_BUFFER_SIZE,
    )
    ended = trio.Event()

    async def read() -> None:
        try:
            await connection._reader_task()
        finally:
            ended.set()

    async def until(event: trio.Event, scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    reader_nursery.start_soon(read)
    async with trio.open_nursery() as waiting:
        waiting.start_soon(until, connection._open_handshake, waiting.cancel_scope)
        waiting.start_soon(until, ended, waiting.cancel_scope)
    if not connection._open_handshake.is_set():
        raise trio.BrokenResourceError("the server closed the connection during the handshake")
    return connection


async def _tls_handshake(
    stream: trio.SSLStream[trio.SocketStream], url: str, deadline: float, timeout: float
) -> None:
    """The client's TLS handshake on *stream*, its failure a :exc:`ConnectionClosed` that
    says why (such as ``certificate verify failed``)."""
    try:
        with trio.fail_at(deadline):
            await stream.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise ConnectionClosed(
            f"could not connect to {url}: no TLS handshake within {timeout:g} s"
        ) from None
    except (OSError, trio.BrokenResourceError) as exc:
        await trio.aclose_forcefully(stream)
        cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
        reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
        raise ConnectionClosed(
            f"could not connect to {url}: the TLS handshake failed "
            f"({reason or cause}); for a server with its own CA, give an ssl_context that "
            "trusts it"
        ) from exc
