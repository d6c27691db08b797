"""The exceptions of trio_realtime.

Every error the library raises on purpose derives from :class:`RealtimeError`, split by whose
fault it is::

    RealtimeError
    ├── Refused                             an operation was refused; ``code`` says why
    │   ├── InvalidTopic (also ValueError)      a topic or pattern breaks the grammar
    │   ├── PermissionDenied                    not allowed (``forbidden``)
    │   ├── NoResponders                        a request found nobody to answer it
    │   ├── StoreUnavailable (also ValueError)  there is no store: no history, no ``since``
    │   ├── TooLarge (also ValueError)          an event is larger than the limit
    │   ├── LimitExceeded                       a configured limit (``limit``)
    │   └── DuplicateEventId (also ValueError)  the event id belongs to another publisher's event
    ├── ProtocolError                       the wire protocol was broken
    │   ├── LocalProtocolError              ... by us (a bug, or a misuse of the API)
    │   └── RemoteProtocolError             ... by the peer (carries the PROTOCOL.md error code)
    ├── ConnectionClosed                    the connection to the broker is gone
    │   └── HandshakeError                  the broker refused or failed the handshake
    ├── RequestFailed                       the responder's handler raised
    ├── SlowConsumer                        a subscription fell too far behind and was ended
    ├── EpochChanged                        the broker's store was replaced: resume impossible
    └── StoreError                          the event store failed or its file is unusable

A :exc:`Refused` leaves the channel usable: the operation was not done, nothing else is
affected. A bus and a client raise the same class in the same situation; on the wire, its
``code`` is the ``error`` frame's code (``forbidden``, ``no_store``…), and :func:`refusal`
turns a code back into the class.

Trio's own :exc:`trio.ClosedResourceError`, :exc:`trio.BrokenResourceError`,
:exc:`trio.EndOfChannel` and :exc:`trio.TooSlowError` are used as they are.
"""

from __future__ import annotations

__all__ = [
    "ConnectionClosed",
    "DuplicateEventId",
    "EpochChanged",
    "HandshakeError",
    "InvalidTopic",
    "LimitExceeded",
    "LocalProtocolError",
    "NoResponders",
    "PermissionDenied",
    "ProtocolError",
    "RealtimeError",
    "Refused",
    "RemoteProtocolError",
    "RequestFailed",
    "SlowConsumer",
    "StoreError",
    "StoreUnavailable",
    "TooLarge",
    "refusal",
]


class RealtimeError(Exception):
    """The root of every error trio_realtime raises on purpose."""


class Refused(RealtimeError):
    """An operation was refused, by the bus or by the broker; the channel stays usable.

    ``code`` is the PROTOCOL.md error code of the refusal (``forbidden``, ``limit``…). The
    subclasses are the refusals a program handles on purpose; a refusal with another code
    (``rate_limited``, say, or ``internal``: the broker failed) is a plain ``Refused``.
    """

    #: The error code of this kind of refusal.
    CODE: str = "refused"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code: str = self.CODE if code is None else code


class InvalidTopic(Refused, ValueError):
    """A topic or subscription pattern does not follow the topic grammar.

    The message names the offending topic and the rule it broke.
    """

    CODE = "invalid_topic"

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


class PermissionDenied(Refused):
    """The broker refused an action this connection is not allowed to take (``forbidden``)."""

    CODE = "forbidden"


class NoResponders(Refused):
    """A request was published to a topic that nothing subscribes to (``no_responders``)."""

    CODE = "no_responders"

    def __init__(self, topic: str) -> None:
        super().__init__(f"no responders for request on topic {topic!r}: nothing subscribes to it")
        self.topic = topic


class TooLarge(Refused, ValueError):
    """An event is larger than the broker's ``max_event_size`` (``too_large``)."""

    CODE = "too_large"


class LimitExceeded(Refused):
    """A configured limit refused the operation, such as ``max_subscriptions`` (``limit``).

    The message names the limit.
    """

    CODE = "limit"


class DuplicateEventId(Refused, ValueError):
    """The event's id is already stored for another publisher's event (``duplicate_id``).

    Event ids must be unique: leave the id out and one is assigned. (Re-sending one's own
    event with the same id is not an error: it is acknowledged as a duplicate.)
    """

    CODE = "duplicate_id"


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


class StoreUnavailable(Refused, ValueError):
    """There is no event store: ``history()`` and ``subscribe(since=…)`` cannot be served.

    Raised alike by a bus opened without a store and by a client whose broker has none (it
    answers error code ``no_store``). Give the bus a store (``open_bus(store=…)``), or run the
    broker with one (``trio-realtime serve --store …``).
    """

    CODE = "no_store"


_REFUSALS: dict[str, type[Refused]] = {
    cls.CODE: cls
    for cls in (PermissionDenied, TooLarge, LimitExceeded, DuplicateEventId, StoreUnavailable)
}


def refusal(code: str, message: str, *, topic: str) -> Refused:
    """The exception for a refusal with error *code* about an operation on *topic*.

    The one mapping from wire codes to exceptions, used by the client for every ``error``
    frame that answers one of its operations.
    """
    if code == InvalidTopic.CODE:
        return InvalidTopic(topic, f"refused by the broker: {message}")
    if code == NoResponders.CODE:
        return NoResponders(topic)
    cls = _REFUSALS.get(code)
    if cls is not None:
        return cls(f"refused by the broker ({code}): {message}")
    return Refused(f"refused by the broker ({code}): {message}", code=code)
