"""Frame classes, error codes and close codes of the wire protocol, version 1.

Every frame is a frozen, keyword-only attrs class. Its wire ``"type"`` string is the class
variable ``TYPE``; :data:`FRAME_TYPES` maps type strings back to classes. Frames are plain
values: nothing here checks field types at construction (mypy does that for our own code, and
the codec does it for what arrives on the wire).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Final, TypeAlias, get_args

import attrs

from .._event import REPLY_ERROR_HEADER, Event
from .._topics import INBOX_PREFIX

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._errors import RemoteProtocolError

__all__ = [
    "AUTH_EXPIRED",
    "AUTH_FAILED",
    "BAD_FRAME",
    "CLIENT_FRAME_TYPES",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_BIG",
    "DUPLICATE_ID",
    "ERROR_CODES",
    "FORBIDDEN",
    "FRAME_TYPES",
    "INBOX_PREFIX",
    "INTERNAL",
    "INVALID_TOPIC",
    "NO_RESPONDERS",
    "PROTOCOL",
    "PROTOCOL_VERSION",
    "RATE_LIMITED",
    "REPLY_ERROR_HEADER",
    "SERVER_FRAME_TYPES",
    "SLOW_CONSUMER",
    "STORE_FAILED",
    "TOO_LARGE",
    "UNKNOWN_TYPE",
    "UNSUPPORTED_PROTOCOL",
    "USER_HEADER",
    "Ack",
    "Cancel",
    "ClientFrame",
    "Error",
    "EventFrame",
    "Frame",
    "Gap",
    "Hello",
    "History",
    "HistoryResult",
    "Ping",
    "Pong",
    "Publish",
    "Refresh",
    "Refreshed",
    "ServerFrame",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
    "Welcome",
    "close_code_for",
]

#: The protocol version this package speaks (``hello.protocol`` and ``welcome.protocol``).
PROTOCOL_VERSION: Final = 1

# ---------------------------------------------------------------------------------------------
# Error codes (the ``code`` of an ``error`` frame)

#: The message is not JSON, a frame is not an object, or a field is missing or of the wrong type.
BAD_FRAME: Final = "bad_frame"
#: The frame's ``type`` is not one this side accepts.
UNKNOWN_TYPE: Final = "unknown_type"
#: A protocol rule was broken (``hello`` not first, a second ``hello``, a reused subscription id).
PROTOCOL: Final = "protocol"
#: ``hello.protocol`` names a version the broker does not speak.
UNSUPPORTED_PROTOCOL: Final = "unsupported_protocol"
#: The ``hello`` token was missing or refused (or, not fatal, a ``refresh`` token).
AUTH_FAILED: Final = "auth_failed"
#: (Extension) The connection's credential expired and no ``refresh`` replaced it in time.
AUTH_EXPIRED: Final = "auth_expired"
#: The connection may not do that (publish or subscribe there, or read that history).
FORBIDDEN: Final = "forbidden"
#: A topic or pattern breaks the topic grammar.
INVALID_TOPIC: Final = "invalid_topic"
#: A message or event is larger than the broker accepts.
TOO_LARGE: Final = "too_large"
#: The connection sends faster than the broker allows.
RATE_LIMITED: Final = "rate_limited"
#: The connection reads too slowly and is being disconnected.
SLOW_CONSUMER: Final = "slow_consumer"
#: A publish with ``reply_to`` matched no subscription, so nobody can answer it.
NO_RESPONDERS: Final = "no_responders"
#: The broker failed; not the client's fault.
INTERNAL: Final = "internal"
#: (Extension) The broker has no store: ``since`` and ``history`` cannot be served.
NO_STORE: Final = "no_store"
#: (Extension) A configured limit refused the frame, such as the most subscriptions one
#: connection may hold; the message names the limit. The connection stays usable.
LIMIT: Final = "limit"
#: (Extension) A published event's id is already stored for another publisher's event.
DUPLICATE_ID: Final = "duplicate_id"
#: (Extension) The broker's store failed to store or read events; not the client's fault.
STORE_FAILED: Final = "store_failed"

#: Every error code of protocol version 1.
ERROR_CODES: Final[frozenset[str]] = frozenset(
    {
        BAD_FRAME,
        UNKNOWN_TYPE,
        PROTOCOL,
        UNSUPPORTED_PROTOCOL,
        AUTH_FAILED,
        AUTH_EXPIRED,
        FORBIDDEN,
        INVALID_TOPIC,
        TOO_LARGE,
        RATE_LIMITED,
        SLOW_CONSUMER,
        NO_RESPONDERS,
        INTERNAL,
        LIMIT,
        NO_STORE,
        DUPLICATE_ID,
        STORE_FAILED,
    }
)

# ---------------------------------------------------------------------------------------------
# WebSocket close codes

#: Normal closure: the work is done.
CLOSE_NORMAL: Final = 1000
#: The broker is shutting down (clients should reconnect elsewhere or later).
CLOSE_GOING_AWAY: Final = 1001
#: Policy: authentication failed, the credential expired, or the connection went on
#: publishing over its rate limit.
CLOSE_POLICY: Final = 1008
#: A message was larger than the receiver accepts.
CLOSE_TOO_BIG: Final = 1009
#: A text message was not valid UTF-8.
CLOSE_INVALID_PAYLOAD: Final = 1007
#: The broker failed internally.
CLOSE_INTERNAL: Final = 1011
#: The peer broke the protocol (``hello`` not first, a second ``hello``, a bad version).
CLOSE_PROTOCOL: Final = 4000
#: The client read too slowly and was disconnected.
CLOSE_SLOW_CONSUMER: Final = 4001
#: (Extension) The peer stayed silent for two heartbeat intervals: it did not answer a ping.
CLOSE_HEARTBEAT: Final = 4002

_CLOSE_CODES: Final[Mapping[str, int]] = {
    AUTH_FAILED: CLOSE_POLICY,
    AUTH_EXPIRED: CLOSE_POLICY,
    FORBIDDEN: CLOSE_POLICY,
    TOO_LARGE: CLOSE_TOO_BIG,
    RATE_LIMITED: CLOSE_POLICY,
    INTERNAL: CLOSE_INTERNAL,
    SLOW_CONSUMER: CLOSE_SLOW_CONSUMER,
}


def close_code_for(code: str) -> int:
    """The WebSocket close code to use when an error with *code* ends the connection.

    ``auth_failed``, ``auth_expired``, ``forbidden`` and ``rate_limited`` close with
    :data:`CLOSE_POLICY`,
    ``too_large`` with :data:`CLOSE_TOO_BIG`, ``internal`` with :data:`CLOSE_INTERNAL`,
    ``slow_consumer`` with :data:`CLOSE_SLOW_CONSUMER`, and every other code (``protocol``,
    ``unsupported_protocol``, ``bad_frame`` …) with :data:`CLOSE_PROTOCOL`.
    """
    return _CLOSE_CODES.get(code, CLOSE_PROTOCOL)


# ---------------------------------------------------------------------------------------------
# Request/reply conventions (plain publish; these are names, not frames)

#: (Extension) The header in which a broker that authenticates its clients names the user
#: who published an event. The broker sets it on every event a client publishes, replacing
#: any value the client gave, so that consumers can trust it.
USER_HEADER: Final = "rtuser"

# INBOX_PREFIX and REPLY_ERROR_HEADER are defined with the topics and the events, and are
# re-exported from here.

# ---------------------------------------------------------------------------------------------
# Client → broker frames


@attrs.frozen(kw_only=True)
class Hello:
    """The first frame a client sends: who it is and which protocol it speaks.

    Attributes:
        protocol: The protocol version; only 1 exists.
        token: The credential the broker checks, or None.
        client: A free-form name for the client (for logs and metrics), or None.
        instance: (Extension) A random id the client keeps across its reconnects, or None.
            The broker deduplicates a re-sent publish (same event ``id``) only within the
            publisher that sent it first: this connection, or an earlier one with the same
            *instance*.
    """

    TYPE: ClassVar[str] = "hello"

    protocol: int = PROTOCOL_VERSION
    token: str | None = None
    client: str | None = None
    instance: str | None = None


@attrs.frozen(kw_only=True)
class Subscribe:
    """Start a subscription; answered by :class:`Subscribed` or an :class:`Error` with ``ref=id``.

    Attributes:
        id: Chosen by the client, unique among this connection's subscriptions; the broker
            names it in the ``subs`` of each :class:`EventFrame` it delivers.
        pattern: A topic pattern (``*`` and ``>`` wildcards allowed).
        group: A queue group name: each event goes to one member of the group, or None.
        since: Replay stored events with a ``seq`` greater than this first, or None.
        since_time: *Extension.* Replay stored events published at or after this ISO 8601
            time first, or None.
    """

    TYPE: ClassVar[str] = "subscribe"

    id: int
    pattern: str
    group: str | None = None
    since: int | None = None
    since_time: str | None = None


@attrs.frozen(kw_only=True)
class Unsubscribe:
    """End a subscription; always answered by :class:`Unsubscribed`, even for unknown ids.

    Attributes:
        id: The id the client gave the subscription.
    """

    TYPE: ClassVar[str] = "unsubscribe"

    id: int


@attrs.frozen(kw_only=True)
class Publish:
    """Publish an event; with ``ref`` set, answered by :class:`Ack` or an :class:`Error`.

    Attributes:
        event: The event. The broker assigns its ``seq``; a client's ``seq`` is ignored.
        retain: Keep it as the topic's last value, delivered to later subscribers.
        ref: A number chosen by the client to match the answer to this publish, or None for no
            answer (fire and forget: errors are still reported, without a ``ref``).
    """

    TYPE: ClassVar[str] = "publish"

    event: Event
    retain: bool = False
    ref: int | None = None


@attrs.frozen(kw_only=True)
class History:
    """*Extension.* Read stored events; answered by :class:`HistoryResult` or :class:`Error`.

    Attributes:
        ref: Chosen by the client to match the answer.
        pattern: Which topics to read (wildcards allowed).
        since: Only events with a ``seq`` greater than this, or None.
        since_time: Only events published at or after this ISO 8601 time, or None.
        limit: At most this many events (the oldest first).
    """

    TYPE: ClassVar[str] = "history"

    ref: int
    pattern: str
    since: int | None = None
    since_time: str | None = None
    limit: int = 100


@attrs.frozen(kw_only=True)
class Refresh:
    """*Extension.* A new credential for this connection, before the current one expires;
    answered by :class:`Refreshed` or an :class:`Error` (code ``auth_failed``: not fatal,
    the connection keeps its current credential until it expires), each with the ``ref``.

    Attributes:
        token: The new credential. It must name the same user as the connection's.
        ref: Chosen by the client to match the answer, or None.
    """

    TYPE: ClassVar[str] = "refresh"

    token: str
    ref: int | None = None


@attrs.frozen(kw_only=True)
class Cancel:
    """*Extension.* A request given up on; it travels both ways, as ``ping`` does.

    From a client: it no longer waits for the reply to its request (cancelled, or timed
    out). The broker checks that the request is the connection's own (*reply_to* lies in its
    inbox) and passes the cancel on to the connection the request was delivered to, if it
    is still handling it. No answer, unless it is refused (an :class:`Error` with a null
    ``ref``: ``forbidden``, ``invalid_topic``, ``rate_limited``).

    From the broker: the requester of a request this connection received gave up on it: stop
    handling it (its reply would be dropped).

    Attributes:
        id: The request event's id.
        topic: The request's topic.
        reply_to: The request's ``reply_to``.
    """

    TYPE: ClassVar[str] = "cancel"

    id: str
    topic: str
    reply_to: str


@attrs.frozen(kw_only=True)
class Ping:
    """Are you there? Either side may send it; the other answers :class:`Pong`."""

    TYPE: ClassVar[str] = "ping"


@attrs.frozen(kw_only=True)
class Pong:
    """The answer to :class:`Ping`."""

    TYPE: ClassVar[str] = "pong"


# ---------------------------------------------------------------------------------------------
# Broker → client frames


@attrs.frozen(kw_only=True)
class Welcome:
    """The broker's answer to a good :class:`Hello`: the connection is open.

    Attributes:
        protocol: The protocol version; only 1 exists.
        session: The broker's id for this connection (for logs).
        broker: The broker's name.
        heartbeat: The broker pings an idle connection about this often, in seconds; a client
            that hears nothing for about twice as long should consider the connection dead.
        epoch: *Extension.* The identity of the broker's event store, or None: ``seq`` numbers
            are comparable only between connections that saw the same epoch.
        user: *Extension.* The user the broker authenticated this connection as, or None when
            the broker does not authenticate. The broker stamps it on every event this
            connection publishes (the header :data:`USER_HEADER`).
        inbox: *Extension.* This connection's own inbox, an unguessable ``_inbox.<id>``
            topic: the connection receives replies on it and topics under it (a request's
            ``reply_to`` lies there). Only this connection may subscribe there, when the
            broker checks permissions. None from a broker that does not assign inboxes.
        expires_in: *Extension.* Seconds until the connection's credential expires, or
            None if it does not: send :class:`Refresh` before then, or the broker closes the
            connection (``auth_expired``, close code 1008). (A duration, so that the two
            clocks need not agree.)
        nodes: *Extension.* WebSocket URLs of the cluster's other nodes, to fail over to (as
            NATS's INFO ``connect_urls``); empty (and left out on the wire) from a broker
            that advertises none. A client checks them before it dials one.
    """

    TYPE: ClassVar[str] = "welcome"

    protocol: int = PROTOCOL_VERSION
    session: str
    broker: str
    heartbeat: float
    epoch: str | None = None
    user: str | None = None
    inbox: str | None = None
    expires_in: float | None = None
    nodes: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class EventFrame:
    """An event delivered to a client (wire type ``"event"``).

    Attributes:
        subs: The ids of this client's subscriptions that the event matched (one frame per
            event, however many of them matched).
        event: The event.
    """

    TYPE: ClassVar[str] = "event"

    subs: tuple[int, ...]
    event: Event


@attrs.frozen(kw_only=True)
class Subscribed:
    """The subscription with this ``id`` is live.

    Attributes:
        id: The subscription's id.
        seq: (Extension) The broker store's last ``seq`` when the subscription went live, or
            None without a store: a client whose connection drops before any stored event
            arrives resumes after it, so it loses nothing stored in the meantime.
    """

    TYPE: ClassVar[str] = "subscribed"

    id: int
    seq: int | None = None


@attrs.frozen(kw_only=True)
class Unsubscribed:
    """The subscription with this ``id`` is gone (or never existed).

    The answer to :class:`Unsubscribe`; or, with a ``reason``, the broker ended the
    subscription on its own (a ``refresh`` brought permissions that no longer allow it), and
    the id is free again.

    Attributes:
        id: The subscription's id.
        reason: (Extension) Why the broker ended the subscription, or None when this answers
            the client's ``unsubscribe``.
    """

    TYPE: ClassVar[str] = "unsubscribed"

    id: int
    reason: str | None = None


@attrs.frozen(kw_only=True)
class Ack:
    """The publish with this ``ref`` was routed (and stored, where its topic is stored).

    Attributes:
        ref: The publish's ``ref``.
        id: The event's id (the broker's, when the client left it out).
        seq: The event's position in the store, or None when it was not stored.
        duplicate: (Extension) The publish repeated an event this publisher had already
            stored (same ``id``): it was not stored or routed again, and ``seq`` is the
            original's.
    """

    TYPE: ClassVar[str] = "ack"

    ref: int
    id: str
    seq: int | None = None
    duplicate: bool = False


@attrs.frozen(kw_only=True)
class Gap:
    """A subscription lost events to overflow (its buffer was full).

    Attributes:
        sub: The subscription's id.
        missed: How many events it lost since the last gap report.
        stored: (Extension) How many of those were stored events, which a client can read
            again from the store (see ``subscribe.since``); the rest are lost for good. None
            when the broker does not say.
    """

    TYPE: ClassVar[str] = "gap"

    sub: int
    missed: int
    stored: int | None = None


@attrs.frozen(kw_only=True)
class Error:
    """Something the client sent, or the connection itself, went wrong.

    Attributes:
        ref: The ``id`` or ``ref`` of the client frame this answers, or None.
        code: One of the error codes, such as :data:`BAD_FRAME`.
        message: What happened and what to do, for humans.
    """

    TYPE: ClassVar[str] = "error"

    ref: int | None = None
    code: str
    message: str

    @classmethod
    def from_exception(cls, exc: RemoteProtocolError) -> Error:
        """The frame that reports *exc* (as returned by ``decode`` or raised by a connection)."""
        return cls(ref=exc.ref, code=exc.code, message=str(exc))


@attrs.frozen(kw_only=True)
class Refreshed:
    """*Extension.* The answer to :class:`Refresh`: the new credential is the connection's.

    Attributes:
        ref: The refresh's ``ref``, or None.
        user: The user, the same as before.
        expires_in: Seconds until the new credential expires, or None if it does not.
    """

    TYPE: ClassVar[str] = "refreshed"

    ref: int | None = None
    user: str | None = None
    expires_in: float | None = None


@attrs.frozen(kw_only=True)
class HistoryResult:
    """*Extension.* The answer to :class:`History` (wire type ``"history_result"``).

    Attributes:
        ref: The request's ``ref``.
        events: The stored events, oldest first.
        more: The result stopped short of ``limit`` (to keep the message under the size
            limit, or to bound the work of one answer), and more events may match: ask again
            with ``since`` set to ``resume`` (and ``limit`` lowered by the events received).
        resume: (Extension) With ``more``, the ``seq`` to ask again after; None: the last
            event's. It is past the last event when the broker read stored events it left out
            (the connection may not read their topics), so that the next part does not read
            them again.
    """

    TYPE: ClassVar[str] = "history_result"

    ref: int
    events: tuple[Event, ...]
    more: bool = False
    resume: int | None = None


#: Frames a client sends.
ClientFrame: TypeAlias = (
    Hello | Subscribe | Unsubscribe | Publish | History | Refresh | Cancel | Ping | Pong
)
#: Frames a broker sends.
ServerFrame: TypeAlias = (
    Welcome
    | EventFrame
    | Subscribed
    | Unsubscribed
    | Ack
    | Gap
    | Error
    | HistoryResult
    | Refreshed
    | Cancel
    | Ping
    | Pong
)
#: Any frame.
Frame: TypeAlias = (
    Hello
    | Subscribe
    | Unsubscribe
    | Publish
    | History
    | Refresh
    | Cancel
    | Ping
    | Pong
    | Welcome
    | EventFrame
    | Subscribed
    | Unsubscribed
    | Ack
    | Gap
    | Error
    | HistoryResult
    | Refreshed
)

#: Wire type string → frame class.
FRAME_TYPES: Final[Mapping[str, type[Frame]]] = {cls.TYPE: cls for cls in get_args(Frame)}
#: The classes of frames a client sends.
CLIENT_FRAME_TYPES: Final[frozenset[type[Frame]]] = frozenset(get_args(ClientFrame))
#: The classes of frames a broker sends.
SERVER_FRAME_TYPES: Final[frozenset[type[Frame]]] = frozenset(get_args(ServerFrame))
