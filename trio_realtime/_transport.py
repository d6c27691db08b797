"""The WebSocket transport: one connection as text messages in and out, and the broker's side
(the listener). With :mod:`trio_realtime._transport_client` (the client's side,
``open_transport``), the only modules that touch trio-websocket.

The broker accepts connections with :func:`listen` (its door, a :class:`ConnectionGate`, counts
them and checks browser origins) and wraps each in a :class:`WebSocketTransport`; the client
gets one from ``open_transport``. Either way the rest of the package sees text messages in and
out, and trio-websocket's errors translated to ours at this edge:

* a closed connection raises :exc:`~trio_realtime.ConnectionClosed` with the WebSocket close
  ``code`` and ``reason`` (1006 when the TCP connection dropped without a close handshake);
* a failure to connect raises :exc:`~trio_realtime.ConnectionClosed` naming the URL, and a
  refused WebSocket handshake (an HTTP answer other than 101) raises
  :exc:`~trio_realtime.HandshakeError`.
"""

from __future__ import annotations

import errno
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Generator, Sequence
from functools import partial
from typing import Any, Final, NoReturn

import trio
import trio_websocket
import wsproto
import wsproto.connection
import wsproto.events
import wsproto.handshake

from ._errors import ConnectionClosed, RemoteProtocolError
from .security._certificates import peer_certificate_subject

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "LOCAL_ORIGINS",
    "MESSAGE_QUEUE_SIZE",
    "RECEIVE_BUFFER_SIZE",
    "SUBPROTOCOL",
    "ConnectionGate",
    "WebSocketTransport",
    "bind",
    "listen",
    "origin_pattern",
]

logger = logging.getLogger("trio_realtime.broker")

#: The largest message (in bytes of UTF-8 text) accepted by default: 1 MiB. A larger one closes
#: the connection with 1009.
DEFAULT_MAX_MESSAGE_SIZE: Final = 2**20
#: Seconds the graceful part of a close (the close handshake) may take before the TCP
#: connection is simply closed.
CLOSE_TIMEOUT: Final = 5.0
#: Bytes read from the socket at a time. trio-websocket's default (4 KiB) costs one read, and a
#: trip through the scheduler, per 4 KiB of a busy connection.
RECEIVE_BUFFER_SIZE: Final = 64 * 1024
#: The WebSocket subprotocol of this protocol: the broker selects it when a client offers it
#: (and accepts clients that offer none); the client offers it.
SUBPROTOCOL: Final = "trio-realtime.v1"
#: Received messages trio-websocket buffers before it stops reading the socket. Small, so that
#: a receiver that does not keep up pushes back on the sender through TCP.
MESSAGE_QUEUE_SIZE: Final = 4


#: The close code of a message larger than the receiver's limit.
CLOSE_MESSAGE_TOO_BIG: Final = 1009


def _utf8_size(message: str | bytes) -> int:
    if isinstance(message, bytes):
        return len(message)
    return len(message.encode("utf-8", "surrogatepass"))


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
    accepted connection), or get one from
    :func:`~trio_realtime._transport_client.open_transport` (the client). It does not own
    the connection's background task: whoever opened the connection does.

    Binary messages are accepted as UTF-8 text (some WebSocket tools send JSON that way); one
    that is not valid UTF-8 raises :exc:`~trio_realtime.RemoteProtocolError` with code
    ``bad_frame``, and the connection stays usable.

    Attributes:
        remote: The peer's ``host:port``.
        certificate_subject: The subject of the certificate the peer presented and the TLS
            handshake verified (mutual TLS), as an RFC 4514 string such as
            ``"CN=alice,O=Example"``; None without one.
    """

    def __init__(
        self,
        connection: trio_websocket.WebSocketConnection,
        *,
        remote: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        text_only: bool = False,
        certificate_subject: str | None = None,
    ) -> None:
        self._ws = connection
        self.remote: Final = remote if remote is not None else _endpoint(connection.remote)
        self.certificate_subject: Final = certificate_subject
        self._max_message_size = max_message_size
        self._text_only = text_only

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<WebSocketTransport {self.remote} {state}>"

    @property
    def subprotocol(self) -> str | None:
        """The WebSocket subprotocol selected at the handshake, or None."""
        return self._ws.subprotocol

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
            RemoteProtocolError: if a binary message is not valid UTF-8, or on the broker's
                side (*text_only*) is binary at all (code ``bad_frame``; the connection stays
                usable); on the broker's side, if a message was larger than
                *max_message_size* (code ``too_large``: the caller answers and closes with
                1009).
        """
        try:
            message = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc, self.remote) from None
        if message is _TOO_BIG:
            raise RemoteProtocolError(
                f"message too big: the most this broker reads is {self._max_message_size} bytes",
                code="too_large",
            )
        if self._text_only and isinstance(message, bytes):
            raise RemoteProtocolError(
                "binary messages are not part of the protocol: send each message as text "
                "(UTF-8 JSON)",
                code="bad_frame",
            )
        # trio-websocket counts characters; the limit is in bytes (UTF-8 takes up to 4 a
        # character). Only a message with more than a quarter of the limit in characters can
        # be over it, so most are never encoded for the check.
        limit = self._max_message_size
        if len(message) > limit // 4 and _utf8_size(message) > limit:
            await self.aclose(CLOSE_MESSAGE_TOO_BIG, f"message larger than {limit} bytes")
            raise ConnectionClosed(
                f"{self.remote} sent a message larger than {limit} bytes",
                code=CLOSE_MESSAGE_TOO_BIG,
                reason="message too big",
            )
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


#: The browser origins a broker without authentication accepts by default: pages served from
#: this machine (``localhost``, ``127.0.0.1`` and ``[::1]``, over HTTP or HTTPS, any port).
LOCAL_ORIGINS: Final = tuple(
    f"{scheme}://{host}{port}"
    for scheme in ("http", "https")
    for host in ("localhost", "127.0.0.1", "[::1]")
    for port in ("", ":*")
)


def origin_pattern(patterns: Sequence[str]) -> re.Pattern[str]:
    """One regular expression that matches an ``Origin`` header matched by any of
    *patterns*: globs in which ``*`` stands for any characters and ``?`` for one, all else
    (``[`` and ``]`` too, as in ``http://[::1]:*``) is literal; letter case does not count.

    Raises:
        ValueError: if *patterns* is a string (not a sequence of them), or one is empty.
    """
    if isinstance(patterns, str):
        raise ValueError(f"allowed origins must be a list of patterns, not the string {patterns!r}")
    parts = []
    for pattern in patterns:
        if not pattern:
            raise ValueError(f"an allowed origin must be a non-empty string, not {pattern!r}")
        parts.append(
            "".join(
                ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
            )
        )
    # No pattern at all matches nothing: every browser handshake is refused.
    return re.compile("|".join(f"(?:{part})" for part in parts) or "(?!)", re.IGNORECASE)


#: Distinct refused origins logged at INFO level; later ones are logged at DEBUG level only.
_ORIGINS_LOGGED: Final = 16


class ConnectionGate:
    """The broker's door: how many connections it holds, admits and refuses.

    A connection is counted from the moment it is accepted (while it does the WebSocket
    handshake too), so that a flood of half-open connections cannot exceed the limit. One
    over *max_connections* is refused at the handshake with HTTP 503; while more than
    :data:`REFUSE_SLACK` refusals are already under way, further connections are closed at
    once without reading them.

    A handshake with an ``Origin`` header (a web page's, sent by the browser) that matches
    none of *allowed_origins* (see :func:`origin_pattern`) is refused with HTTP 403; one
    without is not checked. None: every origin is allowed.

    Attributes:
        max_connections: The most connections served at once.
        held: Connections held now (handshaking or served).
        refused: Connections refused because of *max_connections* since the start.
        origin_refused: Handshakes refused because of their ``Origin`` since the start.
        accept_failures: Times ``accept()`` failed (such as when out of file descriptors).
        handshake_timeouts: Connections closed for not completing the WebSocket handshake in
            time.
    """

    def __init__(
        self, max_connections: int, *, allowed_origins: Sequence[str] | None = None
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections!r}")
        self.max_connections: Final = max_connections
        self._origins: Final = (
            origin_pattern(allowed_origins) if allowed_origins is not None else None
        )
        self.held = 0
        self.refused = 0
        self.origin_refused = 0
        self.accept_failures = 0
        self.handshake_timeouts = 0
        self._refusing = 0
        self._origins_logged: set[str] = set()

    def origin_allowed(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether a handshake with these HTTP *headers* may proceed, as far as its
        ``Origin`` goes (counting and logging a refusal)."""
        if self._origins is None:
            return True
        origins = [value for name, value in headers if name.lower() == b"origin"]
        refused = next(
            (
                origin
                for origin in (value.decode("latin-1").strip() for value in origins)
                if self._origins.fullmatch(origin) is None
            ),
            None,
        )
        if refused is None:
            return True
        self.origin_refused += 1
        if refused not in self._origins_logged and len(self._origins_logged) < _ORIGINS_LOGGED:
            self._origins_logged.add(refused)
            logger.info(
                "refused a WebSocket handshake from a web page at origin %r: not an allowed "
                "origin (allow it with --allow-origin, or Broker(allowed_origins=...))",
                refused,
            )
        else:
            logger.debug("refused a WebSocket handshake from origin %r", refused)
        return False


#: Refusals (HTTP 503 answers) under way at once; past that, connections are closed unread.
REFUSE_SLACK: Final = 32
_REFUSED_BODY: Final = b"too many connections: this broker is at its max_connections limit\n"
_ORIGIN_REFUSED_BODY: Final = b"origin not allowed: this broker does not serve this web page\n"
#: Seconds to wait before accepting again after ``accept()`` failed, first and at most.
ACCEPT_BACKOFF: Final = (0.05, 1.0)
#: ``accept()`` errors that mean the process or system ran out of something (descriptors,
#: memory): wait and try again, they pass.
_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Errors that end one connection, and only it: the peer left or broke the connection.
_CONNECTION_ERRORS: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio_websocket.ConnectionClosed,
)


#: What a server connection hands on in place of a message over the size limit.
_TOO_BIG: Final = b"\x00too big"


class _ServerConnection(trio_websocket.WebSocketConnection):
    """trio-websocket's connection, with two changes for the broker's side.

    wsproto reports a frame it cannot accept (a text message that is not UTF-8, a bad
    opcode) as a :class:`~wsproto.events.CloseConnection` with the code to close with (1007,
    1002 …), but trio-websocket then drops the TCP connection without sending that close
    frame. This sends it first, so that the peer learns why.

    trio-websocket closes a connection whose message is over its size limit (in characters)
    itself, at once. This counts the limit in bytes, and instead of closing, drops the rest
    of the message and hands on :data:`_TOO_BIG` in its place, so that the broker can answer
    ``too_large`` before it closes with 1009.

    And it lets go of the HTTP handshake's state once the WebSocket is open
    (:meth:`forget_handshake`): an idle connection keeps only what it needs.
    """

    _bytes_in_message = 0
    _skipping = False
    #: trio-websocket's reader task has ended (see :meth:`run_reader`).
    reader_done = False

    async def run_reader(self, handshake: trio.CancelScope) -> None:
        """trio-websocket's reader task; when it ends (the peer left), stop waiting for the
        peer's handshake request (*handshake*)."""
        try:
            await self._reader_task()
        finally:
            self.reader_done = True
            handshake.cancel()

    def forget_handshake(self) -> None:
        """Once the WebSocket is open, drop wsproto's HTTP handshake: its h11 connection, its
        buffers and queue stay allocated otherwise (about 2 KB a connection), unused. (The
        bytes that followed the request went to the WebSocket connection when it opened.)"""
        ws = self._wsproto
        if ws.connection is not None and type(ws.handshake) is not _OpenHandshake:
            ws.handshake = _OPEN_HANDSHAKE

    async def _handle_message_event(
        self, event: wsproto.events.BytesMessage | wsproto.events.TextMessage
    ) -> None:
        if self._skipping:  # the rest of a message found too big
            self._skipping = not event.message_finished
            return
        data = event.data
        size = (
            len(data)
            if isinstance(data, bytes | bytearray) or data.isascii()
            else (_utf8_size(data))
        )
        self._bytes_in_message += size
        if self._bytes_in_message > self._max_message_size:
            self._bytes_in_message = 0
            self._message_size = 0
            self._message_parts = []
            self._skipping = not event.message_finished
            try:
                await self._send_channel.send(_TOO_BIG)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
            return
        if event.message_finished:
            self._bytes_in_message = 0
        await super()._handle_message_event(event)

    async def _handle_close_connection_event(self, event: wsproto.events.CloseConnection) -> None:
        # Open still: the event is wsproto's verdict on bad input, not the peer's close frame.
        if self._wsproto.state is wsproto.connection.ConnectionState.OPEN:
            try:
                await self._send(wsproto.events.CloseConnection(event.code, event.reason))
            except trio_websocket.ConnectionClosed:
                pass
        await super()._handle_close_connection_event(event)


class _OpenHandshake(wsproto.handshake.H11Handshake):
    """What stands for wsproto's handshake once the WebSocket is open: no events, no state
    (``WSConnection`` asks it only for its events then)."""

    def __init__(self) -> None:  # (none of the handshake's state)
        pass

    def events(self) -> Generator[wsproto.events.Event, None, None]:
        yield from ()


_OPEN_HANDSHAKE: Final = _OpenHandshake()


async def _open_handshake(
    connection: _ServerConnection, gate: ConnectionGate, admitted: bool
) -> bool:
    """Answer the WebSocket handshake request: refuse it (False) for its ``Origin`` or when
    not *admitted*, else accept it (selecting our subprotocol when offered)."""
    request = await connection._get_request()
    if not gate.origin_allowed(request.headers):
        await request.reject(403, body=_ORIGIN_REFUSED_BODY)
        return False
    if not admitted:
        gate.refused += 1
        await request.reject(503, body=_REFUSED_BODY)
        return False
    offered = request.proposed_subprotocols
    await request.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    connection.forget_handshake()
    return True


def _peer_address(stream: trio.SocketStream) -> str | None:
    """The peer's ``host:port``, or None if it is already gone."""
    try:
        host, port, *_ = stream.socket.getpeername()
    except OSError:
        return None
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


async def bind(host: str, port: int) -> list[trio.SocketListener]:
    """Listening sockets on *host*:*port* (one per address family), for :func:`listen`: a
    broker binds before it opens its store, so that a port in use fails first.

    Raises:
        OSError: if it cannot listen on *host*:*port*.
    """
    return list(await trio.open_tcp_listeners(port, host=host))


async def listen(
    handler: Callable[[WebSocketTransport], Awaitable[None]],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    handler_nursery: trio.Nursery,
    max_message_size: int,
    handshake_timeout: float,
    gate: ConnectionGate,
    bound: Sequence[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept WebSocket clients on *host*:*port*, running ``handler(transport)`` for each.

    A startable task: ``port = await nursery.start(listen, …)`` returns once listening, with
    the port (the real one when *port* is 0). Connections run in *handler_nursery*; whatever
    happens to one of them (the peer leaves mid-handshake, sends garbage, resets the
    connection) ends that connection only. When ``accept()`` fails for want of resources
    (file descriptors above all), the listener logs one warning, keeps serving the
    connections it has, and tries again with a growing delay until it succeeds.

    *bound*: listeners already bound to *host*:*port* (see :func:`bind`), which this takes
    over (and closes when it ends); None: bind them here.

    Raises:
        OSError: if it cannot listen on *host*:*port*.
    """
    if bound is None:
        bound = await bind(host, port)
    listeners: list[trio.abc.Listener[Any]] = list(bound)
    if ssl_context is not None:
        listeners = [
            trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in listeners
        ]
    serve = partial(
        _serve_connection,
        handler,
        max_message_size=max_message_size,
        handshake_timeout=handshake_timeout,
        gate=gate,
    )
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, serve, handler_nursery, gate)
        sock = _socket_of(listeners[0])
        task_status.started(sock.getsockname()[1])
    raise AssertionError("unreachable")  # pragma: no cover


def _socket_of(listener: trio.abc.Listener[Any]) -> trio.socket.SocketType:
    if isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    assert isinstance(listener, trio.SocketListener)
    return listener.socket


async def _accept_loop(
    listener: trio.abc.Listener[Any],
    serve: Callable[[Any], Awaitable[None]],
    handler_nursery: trio.Nursery,
    gate: ConnectionGate,
) -> NoReturn:
    failures = 0
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                gate.accept_failures += 1
                if failures == 0:
                    resource = (
                        "out of file descriptors"
                        if exc.errno in (errno.EMFILE, errno.ENFILE)
                        else "out of resources"
                        if exc.errno in _RESOURCE_ERRNOS
                        else "failed"
                    )
                    logger.warning(
                        "cannot accept connections (%s: %s); serving the %d connections held "
                        "and retrying",
                        resource,
                        exc.strerror or exc,
                        gate.held,
                    )
                failures += 1
                low, high = ACCEPT_BACKOFF
                await trio.sleep(min(high, low * 2 ** min(failures - 1, 16)))
                continue
            if failures:
                logger.warning("accepting connections again (after %d failed attempts)", failures)
                failures = 0
            handler_nursery.start_soon(serve, stream)


def _certificate_subject(
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
) -> str | None:
    """The subject of the client certificate the TLS handshake verified, if any. (Call it
    after the WebSocket handshake: that went over TLS, so the TLS handshake is done.)"""
    if not isinstance(stream, trio.SSLStream):
        return None
    certificate: dict[str, object] | None = stream.getpeercert()
    return peer_certificate_subject(certificate)


async def _serve_connection(
    handler: Callable[[WebSocketTransport], Awaitable[None]],
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    *,
    max_message_size: int,
    handshake_timeout: float,
    gate: ConnectionGate,
) -> None:
    """One accepted connection: WebSocket handshake, admission, then *handler*."""
    socket_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    remote = _peer_address(socket_stream)
    admitted = gate.held < gate.max_connections
    if remote is None or (not admitted and gate._refusing >= REFUSE_SLACK):
        if remote is not None:
            gate.refused += 1
        await trio.aclose_forcefully(stream)
        return
    gate.held += 1
    if not admitted:
        gate._refusing += 1
    try:
        async with trio.open_nursery() as nursery:  # trio-websocket's reader task
            connection = _ServerConnection(
                stream,
                wsproto.WSConnection(wsproto.ConnectionType.SERVER),
                message_queue_size=MESSAGE_QUEUE_SIZE,
                max_message_size=max_message_size,  # (in bytes: see _ServerConnection)
                receive_buffer_size=RECEIVE_BUFFER_SIZE,
            )
            handshake = trio.CancelScope(deadline=trio.current_time() + handshake_timeout)
            nursery.start_soon(connection.run_reader, handshake)
            served = False
            try:
                # (In a function of its own: the request is not kept for the connection's life.)
                with handshake:
                    if not await _open_handshake(connection, gate, admitted):
                        return
                if handshake.cancelled_caught:
                    if not connection.reader_done:
                        gate.handshake_timeouts += 1
                        logger.debug("%s: no WebSocket handshake in time", remote)
                    return
                transport = WebSocketTransport(
                    connection,
                    remote=remote,
                    max_message_size=max_message_size,
                    text_only=True,
                    certificate_subject=_certificate_subject(stream),
                )
                served = True
                try:
                    await handler(transport)
                finally:
                    # Not shielded (the handler closes gracefully as it wants): a broker
                    # shutting down cancels this after its own grace period. (A close already
                    # under way returns at once.)
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await connection.aclose()
            finally:
                if served:
                    # The reader ends by itself once the close handshake is done (the
                    # handler's, or another task's still under way): give it that long.
                    nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                else:
                    nursery.cancel_scope.cancel()
    except* _CONNECTION_ERRORS as group:
        logger.debug("connection from %s ended: %r", remote, group.exceptions[0])
    except* Exception as group:
        logger.warning("connection from %s failed: %r", remote, group.exceptions[0])
        logger.debug("connection from %s failed", remote, exc_info=group)
    finally:
        gate.held -= 1
        if not admitted:
            gate._refusing -= 1
        await trio.aclose_forcefully(stream)
