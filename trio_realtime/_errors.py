"""The exceptions of trio_realtime.

Every error the library raises on purpose derives from :class:`RealtimeError`, split by whose
fault it is::

    RealtimeError
    ├── InvalidTopic (also ValueError)     a topic or pattern breaks the grammar
    ├── ProtocolError                       the wire protocol was broken
    │   ├── LocalProtocolError              ... by us (a bug, or a misuse of the API)
    │   └── RemoteProtocolError             ... by the peer (carries the PROTOCOL.md error code)
    ├── ConnectionClosed                    the connection to the broker is gone
    │   └── HandshakeError                  the broker refused or failed the handshake
    ├── PermissionDenied                    the broker refused an action (``forbidden``)
    ├── NoResponders                        a request found nobody to answer it
    ├── RequestFailed                       the responder's handler raised
    ├── SlowConsumer                        a subscription fell too far behind and was ended
    ├── EpochChanged                        the broker's store was replaced: resume impossible
    ├── StoreError                          the event store failed or its file is unusable
    └── StoreUnavailable (also ValueError)  there is no store: no history, no ``since``

Trio's own :exc:`trio.ClosedResourceError`, :exc:`trio.BrokenResourceError`,
:exc:`trio.EndOfChannel` and :exc:`trio.TooSlowError` are used as they are.
"""

from __future__ import annotations

__all__ = [
    "ConnectionClosed",
    "EpochChanged",
    "HandshakeError",
    "InvalidTopic",
    "LocalProtocolError",
    "NoResponders",
    "PermissionDenied",
    "ProtocolError",
    "RealtimeError",
    "RemoteProtocolError",
    "RequestFailed",
    "SlowConsumer",
    "StoreError",
    "StoreUnavailable",
]


class RealtimeError(Exception):
    """The root of every error trio_realtime raises on purpose."""


class InvalidTopic(RealtimeError, ValueError):
    """A topic or subscription pattern does not follow the topic grammar.

    The message names the offending topic and the rule it broke.
    """

    def __init__(self, topic: object, rule: str) -> None:
        super().__init__(f"invalid topic {topic!r}: {rule}")
        self.topic = topic
        self.rule = rule


class ProtocolError(RealtimeError):
    """The wire protocol was broken. ``code`` is the PROTOCOL.md error code."""

    def __init__(self, message: str, *, code: str = "protocol") -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """Our side tried to do something the protocol does not allow (a bug or API misuse)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow.

    ``code`` is the error code that is (or would be) sent back in an ``error`` frame, such as
    ``bad_frame`` or ``unknown_type``. ``ref`` is the ``id``/``ref`` of the offending frame when
    it carried one, so the answer can be ``error {ref}``; else None.
    """

    def __init__(self, message: str, *, code: str = "protocol", ref: int | None = None) -> None:
        super().__init__(message, code=code)
        self.ref = ref


class ConnectionClosed(RealtimeError):
    """The connection to the broker is closed and could not be (or is not to be) re-established.

    ``code`` and ``reason`` are the WebSocket close code and reason, when known.
    """

    def __init__(self, message: str, *, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class HandshakeError(ConnectionClosed):
    """The broker refused the handshake (bad token, unsupported protocol) or it timed out."""


class PermissionDenied(RealtimeError):
    """The broker refused an action this connection is not allowed to take."""


class NoResponders(RealtimeError):
    """A request was published to a topic that nothing subscribes to."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"no responders for request on topic {topic!r}: nothing subscribes to it")
        self.topic = topic


class RequestFailed(RealtimeError):
    """The responder's handler raised while answering a request.

    ``message`` carries the handler's error message, as the responder reported it.
    """

    def __init__(self, topic: str, message: str) -> None:
        super().__init__(f"request on topic {topic!r} failed in the responder: {message}")
        self.topic = topic
        self.message = message


class SlowConsumer(RealtimeError):
    """A subscription with ``overflow="disconnect"`` fell behind by a full buffer and was ended."""


class EpochChanged(RealtimeError):
    """The broker's store is not the one a subscription was resuming from.

    Raised once by a remote subscription's receive, after the events received before the
    reconnect: its seqs belong to a store that was wiped or replaced (``old_epoch`` to
    ``new_epoch``), so events stored there after the last one received may be lost. The
    subscription goes on, replaying the new store from its start; keep iterating to continue.
    """

    def __init__(self, pattern: str, old_epoch: str | None, new_epoch: str | None) -> None:
        super().__init__(
            f"subscription {pattern!r}: the broker's store changed (epoch {old_epoch!r} -> "
            f"{new_epoch!r}); events stored in the old store after the last one received may "
            f"be lost; the subscription goes on with the new store from its start"
        )
        self.pattern = pattern
        self.old_epoch = old_epoch
        self.new_epoch = new_epoch


class StoreError(RealtimeError):
    """The event store failed, or its file is corrupt or unreadable (the message names it)."""


class StoreUnavailable(RealtimeError, ValueError):
    """There is no event store: ``history()`` and ``subscribe(since=…)`` cannot be served.

    Raised alike by a bus opened without a store and by a client whose broker has none (it
    answers error code ``no_store``). Give the bus a store (``open_bus(store=…)``), or run the
    broker with one (``trio-realtime serve --store …``).
    """
