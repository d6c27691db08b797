"""The connection state machines: one for the broker's side, one for the client's.

They do no I/O. Feed each received WebSocket text message to :meth:`receive_text`, take the
frames out of :meth:`frames`, and turn frames you want to send into message text with
:meth:`send`. Both check the protocol's rules as frames pass (the handshake, the direction of
each frame type, subscription ids and refs) and keep the bookkeeping their owner needs.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Generic, NoReturn, TypeVar, cast

import attrs

from .._errors import LocalProtocolError, RemoteProtocolError
from ._codec import decode, encode
from ._frames import (
    CLIENT_FRAME_TYPES,
    PROTOCOL,
    PROTOCOL_VERSION,
    SERVER_FRAME_TYPES,
    UNKNOWN_TYPE,
    UNSUPPORTED_PROTOCOL,
    Ack,
    ClientFrame,
    Error,
    EventFrame,
    Hello,
    History,
    HistoryResult,
    Publish,
    ServerFrame,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ._frames import Frame

__all__ = ["ClientConnection", "ConnectionState", "ServerConnection"]

_In = TypeVar("_In")
_Out = TypeVar("_Out")


class ConnectionState(enum.Enum):
    """Where a connection is in its life. Both sides go through the same states, in order."""

    #: No ``hello`` yet: the client has not sent it / the broker has not received it.
    AWAITING_HELLO = "awaiting_hello"
    #: ``hello`` is on its way: the client waits for ``welcome`` (and may already send other
    #: frames); the broker must answer with ``welcome`` or ``error``.
    AWAITING_WELCOME = "awaiting_welcome"
    #: The handshake is done; frames flow both ways.
    OPEN = "open"
    #: The handshake was refused, a fatal protocol error happened, or ``close()`` was called.
    CLOSED = "closed"


AWAITING_HELLO: Final = ConnectionState.AWAITING_HELLO
AWAITING_WELCOME: Final = ConnectionState.AWAITING_WELCOME
OPEN: Final = ConnectionState.OPEN
CLOSED: Final = ConnectionState.CLOSED


def _int_ref(frame: object) -> int | None:
    """The integer ``ref``, else ``id``, of a frame (to answer it with ``error {ref}``)."""
    ref = getattr(frame, "ref", None)
    if type(ref) is int:
        return ref
    id_ = getattr(frame, "id", None)
    return id_ if type(id_) is int else None


class _Connection(Generic[_In, _Out]):
    """What both sides share: the state, the buffer of received frames, the three verbs."""

    _SIDE: str
    _PEER: str
    _RECEIVES: frozenset[type[Frame]]
    _SENDS: frozenset[type[Frame]]
    _SENDS_EVENTS: bool
    #: Whether received messages are checked for integers orjson would change (see decode).
    _EXACT_INTEGERS: bool

    def __init__(self) -> None:
        self._state = AWAITING_HELLO
        self._buffer: deque[Frame | RemoteProtocolError] = deque()
        # subscription id -> confirmed (True once ``subscribed`` passed, False while pending)
        self._subs: dict[int, bool] = {}

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} state={self._state.name} "
            f"subscriptions={len(self._subs)} buffered={len(self._buffer)}>"
        )

    @property
    def state(self) -> ConnectionState:
        """The connection's :class:`ConnectionState`."""
        return self._state

    @property
    def active_subscriptions(self) -> frozenset[int]:
        """Ids of the subscriptions confirmed by ``subscribed`` and not since unsubscribed."""
        return frozenset(id_ for id_, confirmed in self._subs.items() if confirmed)

    @property
    def pending_subscriptions(self) -> frozenset[int]:
        """Ids of the subscriptions requested but not yet answered (nor since unsubscribed)."""
        return frozenset(id_ for id_, confirmed in self._subs.items() if not confirmed)

    def receive_text(self, text: str | bytes) -> None:
        """Feed in one received WebSocket message; its frames come out of :meth:`frames`.

        Nothing is checked here (the message is decoded and buffered). After the connection is
        :attr:`~ConnectionState.CLOSED`, messages are ignored.
        """
        if self._state is not CLOSED:
            self._buffer.extend(decode(text, exact_integers=self._EXACT_INTEGERS))

    def _frames(self) -> Iterator[_In | RemoteProtocolError]:
        buffer = self._buffer
        while buffer and self._may_process():
            result = self._process(buffer.popleft())
            if result is not None:
                yield result

    def _send(self, frames: _Out | Sequence[_Out]) -> str:
        if self._SENDS_EVENTS and self._state is OPEN and type(frames) is EventFrame:
            return encode(frames)  # fan-out's hot path: nothing to check or record
        batch: Sequence[Any] = frames if isinstance(frames, (list, tuple)) else (frames,)
        state = self._check_send(batch)
        text = encode(cast("Any", frames))
        self._state = state
        sent = self._sent
        for frame in batch:
            if type(frame) is not EventFrame:  # events need no bookkeeping
                sent(frame)
        return text

    def close(self) -> None:
        """Mark the connection closed (for example when the WebSocket closed) and drop the buffer.

        Afterwards received messages are ignored and only ``error`` frames may be sent (by the
        broker side, to explain the close).
        """
        self._state = CLOSED
        self._buffer.clear()

    # -- helpers for the sides ----------------------------------------------------------------

    def _fail(self, message: str, *, code: str = PROTOCOL, ref: int | None = None) -> NoReturn:
        self._state = CLOSED
        self._buffer.clear()
        raise RemoteProtocolError(message, code=code, ref=ref)

    def _wrong_direction(self, frame: Frame) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"{frame.TYPE!r} frames go from {self._SIDE} to {self._PEER}; "
            f"the {self._SIDE} does not accept them",
            code=UNKNOWN_TYPE,
            ref=_int_ref(frame),
        )

    def _check_direction(self, frame: object) -> type[Frame]:
        cls = type(frame)
        if cls in self._SENDS:
            return cls
        if cls in self._RECEIVES:
            raise LocalProtocolError(
                f"a {self._SIDE} cannot send {cast('Frame', frame).TYPE!r} frames; "
                f"they go from {self._PEER} to {self._SIDE}"
            )
        raise LocalProtocolError(f"cannot send {frame!r}: it is not a frame")

    def _may_process(self) -> bool:
        raise NotImplementedError

    def _process(self, item: Frame | RemoteProtocolError) -> _In | RemoteProtocolError | None:
        raise NotImplementedError

    def _check_send(self, frames: Sequence[object]) -> ConnectionState:
        raise NotImplementedError

    def _sent(self, frame: Any) -> None:
        raise NotImplementedError


class ServerConnection(_Connection[ClientFrame, ServerFrame]):
    """The broker's side of one connection.

    It receives client frames and sends broker frames::

        conn = ServerConnection()
        conn.receive_text(message)
        try:
            for item in conn.frames():
                if isinstance(item, RemoteProtocolError):
                    reply = conn.send(Error.from_exception(item))  # not fatal: go on
                elif isinstance(item, Hello):
                    reply = conn.send(Welcome(session=..., broker=..., heartbeat=30.0))
                ...
        except RemoteProtocolError as exc:  # fatal: explain, then close
            reply = conn.send(Error.from_exception(exc))
            close_code = close_code_for(exc.code)

    Rules it enforces: the first frame must be a ``hello`` of protocol version 1 (else a fatal
    ``protocol`` or ``unsupported_protocol`` error); after ``hello``, :meth:`frames` yields
    nothing more until :class:`Welcome` (or an :class:`Error`, which refuses the handshake and
    closes the connection) is sent; a second ``hello`` is fatal; a ``subscribe`` reusing the id
    of a live or pending subscription yields a ``protocol`` error with that ``ref`` (not fatal);
    broker-only frame types from the client yield ``unknown_type`` errors. ``unsubscribe`` of an
    unknown id passes through: answer it :class:`~trio_realtime.protocol.Unsubscribed` all the
    same. The ``seq`` of a published event is cleared (clients cannot choose it).

    Subscription bookkeeping: a ``subscribe`` makes its id pending; sending
    :class:`Subscribed` confirms it; sending an :class:`Error` with its ``ref`` while it is
    pending rejects it; ``unsubscribe`` removes it.
    """

    _SIDE = "broker"
    _PEER = "client"
    _RECEIVES = CLIENT_FRAME_TYPES
    _SENDS = SERVER_FRAME_TYPES
    _SENDS_EVENTS = True
    _EXACT_INTEGERS = True  # clients are not trusted

    def __init__(self) -> None:
        super().__init__()
        self._hello: Hello | None = None
        # Answers still owed, by ref: errors for frames rejected here, acks/results for requests.
        self._owed_errors: dict[int, int] = {}
        self._open_refs: dict[int, int] = {}

    @property
    def hello(self) -> Hello | None:
        """The client's :class:`Hello`, once received."""
        return self._hello

    def frames(self) -> Iterator[ClientFrame | RemoteProtocolError]:
        """The received frames, in order, checked against the protocol as they come out.

        A frame that could not be decoded, or that breaks a rule without endangering the
        connection, comes out as a :exc:`~trio_realtime.RemoteProtocolError` (not raised):
        answer it with ``send(Error.from_exception(item))`` and go on; the connection stays
        usable. Frames are processed one at a time as you iterate, so what you send while
        handling one frame is taken into account for the next (the ``welcome`` you send
        answering :class:`Hello` lets the frames after it out). Frames you do not take stay
        buffered for the next call.

        Raises:
            RemoteProtocolError: for a fatal violation (the first frame not a valid ``hello``,
                a second ``hello``, an unsupported protocol version). The connection is then
                :attr:`~ConnectionState.CLOSED` and its buffer dropped: send
                ``Error.from_exception(exc)`` and close the WebSocket with
                ``close_code_for(exc.code)``.
        """
        return self._frames()

    def send(self, frames: ServerFrame | Sequence[ServerFrame]) -> str:
        """The text of one WebSocket message carrying *frames*.

        Pass one frame, or a list or tuple of frames to send them as one batch. Either all of
        them are accepted and the connection's state moves on, or none is.

        Raises:
            LocalProtocolError: if a frame may not be sent now (a client frame, anything but
                ``welcome`` or ``error`` before the handshake is done, a second ``welcome``,
                anything but ``error`` once closed), or cannot be encoded.
        """
        return self._send(frames)

    def _may_process(self) -> bool:
        return self._state is OPEN or self._state is AWAITING_HELLO

    def _owe_error(self, error: RemoteProtocolError) -> RemoteProtocolError:
        if error.ref is not None:
            self._owed_errors[error.ref] = self._owed_errors.get(error.ref, 0) + 1
        return error

    def _process(self, item: Frame | RemoteProtocolError) -> ClientFrame | RemoteProtocolError:
        cls = type(item)
        if self._state is AWAITING_HELLO:
            if cls is Hello:
                hello = cast("Hello", item)
                if hello.protocol != PROTOCOL_VERSION:
                    self._fail(
                        f"this broker speaks protocol version {PROTOCOL_VERSION}, "
                        f"not {hello.protocol!r}",
                        code=UNSUPPORTED_PROTOCOL,
                    )
                self._hello = hello
                self._state = AWAITING_WELCOME
                return hello
            if isinstance(item, RemoteProtocolError):
                self._fail(f"the first frame must be a valid 'hello': {item}")
            self._fail(f"the first frame must be 'hello', not {item.TYPE!r}", ref=_int_ref(item))
        if isinstance(item, RemoteProtocolError):
            return self._owe_error(item)
        if cls not in CLIENT_FRAME_TYPES:
            return self._owe_error(self._wrong_direction(item))
        if cls is Publish:
            publish = cast("Publish", item)
            if publish.ref is not None:
                self._open_refs[publish.ref] = self._open_refs.get(publish.ref, 0) + 1
            if publish.event.seq is not None:
                return attrs.evolve(publish, event=attrs.evolve(publish.event, seq=None))
            return publish
        if cls is Subscribe:
            sub_id = cast("Subscribe", item).id
            if sub_id in self._subs:
                return self._owe_error(
                    RemoteProtocolError(
                        f"subscription id {sub_id} is already in use on this connection; "
                        "unsubscribe it first or choose another id",
                        code=PROTOCOL,
                        ref=sub_id,
                    )
                )
            self._subs[sub_id] = False
        elif cls is Unsubscribe:
            self._subs.pop(cast("Unsubscribe", item).id, None)
        elif cls is History:
            ref = cast("History", item).ref
            self._open_refs[ref] = self._open_refs.get(ref, 0) + 1
        elif cls is Hello:
            self._fail("a second 'hello' on an open connection")
        return cast("ClientFrame", item)

    def _check_send(self, frames: Sequence[object]) -> ConnectionState:
        state = self._state
        for frame in frames:
            if state is OPEN and type(frame) is EventFrame:
                continue  # the bulk of a busy connection's batches
            cls = self._check_direction(frame)
            if state is OPEN:
                if cls is Welcome:
                    raise LocalProtocolError("'welcome' was already sent on this connection")
            elif cls is Error:
                if state is not CLOSED:
                    state = CLOSED  # an error before welcome refuses the handshake
            elif state is AWAITING_WELCOME:
                if cls is not Welcome:
                    raise LocalProtocolError(
                        f"cannot send {cls.TYPE!r} before answering 'hello' with 'welcome' "
                        "(or 'error' to refuse it)"
                    )
                state = OPEN
            elif state is AWAITING_HELLO:
                raise LocalProtocolError(
                    f"cannot send {cls.TYPE!r} before the client's 'hello' arrived "
                    "(only 'error' may be sent now)"
                )
            else:
                raise LocalProtocolError(
                    f"cannot send {cls.TYPE!r}: the connection is closed (only 'error' may be "
                    "sent, to explain why)"
                )
        return state

    def _sent(self, frame: ServerFrame) -> None:
        cls = type(frame)
        if cls is Subscribed:
            sub_id = cast("Subscribed", frame).id
            if sub_id in self._subs:
                self._subs[sub_id] = True
        elif cls is Ack or cls is HistoryResult:
            _discount(self._open_refs, cast("Ack | HistoryResult", frame).ref)
        elif cls is Error:
            ref = cast("Error", frame).ref
            if ref is None:
                return
            if _discount(self._owed_errors, ref) or _discount(self._open_refs, ref):
                return
            if self._subs.get(ref) is False:
                del self._subs[ref]  # the broker refused this pending subscription


def _discount(counts: dict[int, int], key: int) -> bool:
    """Count one answer for *key* off *counts*; False if none was owed."""
    count = counts.get(key)
    if count is None:
        return False
    if count <= 1:
        del counts[key]
    else:
        counts[key] = count - 1
    return True


class ClientConnection(_Connection[ServerFrame, ClientFrame]):
    """The client's side of one connection.

    It sends client frames and receives broker frames::

        conn = ClientConnection()
        message = conn.send(Hello(token="secret"))
        sub_id = conn.next_id()
        message = conn.send(Subscribe(id=sub_id, pattern="orders.>"))  # pipelined
        conn.receive_text(received)
        for item in conn.frames():
            if isinstance(item, Welcome): ...
            elif isinstance(item, EventFrame): ...

    Rules it enforces: the first frame sent must be :class:`Hello` (then any client frame may
    follow at once, before ``welcome`` arrives); the first frame received must be
    :class:`Welcome` of protocol version 1 (else a fatal ``protocol`` or
    ``unsupported_protocol`` error), or an :class:`Error`, which means the broker refused the
    handshake: it comes out of :meth:`frames` and the connection is then closed. A second
    ``welcome`` is fatal; client-only frame types from the broker yield ``unknown_type``
    errors.

    Ids and refs: a subscription id may not be reused while its subscription is live or
    pending, and a ``ref`` may not be reused while it awaits its answer; subscription ids and
    refs awaiting answers share one space, since an ``error`` names either by ``ref``.
    :meth:`next_id` hands out fresh ones. An :class:`Error` whose ``ref`` names a pending
    subscription means the broker refused it: the id is free again.
    """

    _SIDE = "client"
    _PEER = "broker"
    _RECEIVES = SERVER_FRAME_TYPES
    _SENDS = CLIENT_FRAME_TYPES
    _SENDS_EVENTS = False
    _EXACT_INTEGERS = False  # the broker refuses such integers: it never sends one

    def __init__(self) -> None:
        super().__init__()
        self._welcome: Welcome | None = None
        self._refs: set[int] = set()
        self._last_id = 0

    @property
    def welcome(self) -> Welcome | None:
        """The broker's :class:`Welcome`, once received."""
        return self._welcome

    @property
    def pending_refs(self) -> frozenset[int]:
        """Refs of sent ``publish`` and ``history`` frames that await their answer."""
        return frozenset(self._refs)

    def frames(self) -> Iterator[ServerFrame | RemoteProtocolError]:
        """The received frames, in order, checked against the protocol as they come out.

        A frame that could not be decoded, or that breaks a rule without endangering the
        connection, comes out as a :exc:`~trio_realtime.RemoteProtocolError` (not raised): log
        it and go on; the connection stays usable. Frames are processed one at a time as you
        iterate; frames you do not take stay buffered for the next call.

        Raises:
            RemoteProtocolError: for a fatal violation (the first frame neither ``welcome`` nor
                ``error``, a second ``welcome``, an unsupported protocol version). The
                connection is then :attr:`~ConnectionState.CLOSED` and its buffer dropped:
                close the WebSocket with ``close_code_for(exc.code)``.
        """
        return self._frames()

    def send(self, frames: ClientFrame | Sequence[ClientFrame]) -> str:
        """The text of one WebSocket message carrying *frames*.

        Pass one frame, or a list or tuple of frames to send them as one batch. Either all of
        them are accepted and the connection's state moves on, or none is.

        Raises:
            LocalProtocolError: if a frame may not be sent now (a broker frame, anything before
                ``hello``, a second ``hello``, a reused subscription id or ref, anything once
                closed), or cannot be encoded.
        """
        return self._send(frames)

    def next_id(self) -> int:
        """A fresh number to use as a subscription id or a ref (1, 2, 3 … skipping any in use)."""
        candidate = self._last_id + 1
        while candidate in self._subs or candidate in self._refs:
            candidate += 1
        self._last_id = candidate
        return candidate

    def _may_process(self) -> bool:
        return self._state is not CLOSED

    def _process(self, item: Frame | RemoteProtocolError) -> ServerFrame | RemoteProtocolError:
        cls = type(item)
        if cls is EventFrame and self._state is OPEN:
            return cast("EventFrame", item)  # the bulk of the traffic: nothing to check
        if self._state is not OPEN:
            if self._state is AWAITING_HELLO:
                self._fail("the broker sent a frame before the client's 'hello'")
            if cls is Welcome:
                welcome = cast("Welcome", item)
                if welcome.protocol != PROTOCOL_VERSION:
                    self._fail(
                        f"this client speaks protocol version {PROTOCOL_VERSION}, "
                        f"not {welcome.protocol!r}",
                        code=UNSUPPORTED_PROTOCOL,
                    )
                self._welcome = welcome
                self._state = OPEN
                return welcome
            if cls is Error:
                self.close()  # the broker refused the handshake
                return cast("Error", item)
            if isinstance(item, RemoteProtocolError):
                self._fail(f"the first frame from the broker must be a valid 'welcome': {item}")
            self._fail(f"the first frame from the broker must be 'welcome', not {item.TYPE!r}")
        if isinstance(item, RemoteProtocolError):
            return item
        if cls not in SERVER_FRAME_TYPES:
            return self._wrong_direction(item)
        if cls is Subscribed:
            sub_id = cast("Subscribed", item).id
            if self._subs.get(sub_id) is False:
                self._subs[sub_id] = True
        elif cls is Ack or cls is HistoryResult:
            self._refs.discard(cast("Ack | HistoryResult", item).ref)
        elif cls is Error:
            ref = cast("Error", item).ref
            if ref in self._refs:
                self._refs.discard(ref)
            elif ref is not None and self._subs.get(ref) is False:
                del self._subs[ref]  # the broker refused the subscription
        elif cls is Welcome:
            self._fail("a second 'welcome' on an open connection")
        return cast("ServerFrame", item)

    def _check_send(self, frames: Sequence[object]) -> ConnectionState:
        state = self._state
        batch_subs: set[int] = set()  # subscription ids this batch takes
        batch_refs: set[int] = set()  # refs this batch takes
        freed: set[int] = set()  # subscription ids this batch releases
        for frame in frames:
            cls = self._check_direction(frame)
            if state is AWAITING_HELLO:
                if cls is not Hello:
                    raise LocalProtocolError(f"the first frame must be 'hello', not {cls.TYPE!r}")
                state = AWAITING_WELCOME
                continue
            if state is CLOSED:
                raise LocalProtocolError(f"cannot send {cls.TYPE!r}: the connection is closed")
            if cls is Hello:
                raise LocalProtocolError("'hello' was already sent on this connection")
            if cls is Subscribe:
                sub_id = cast("Subscribe", frame).id
                self._check_free(sub_id, "subscription id", batch_subs, batch_refs, freed)
                batch_subs.add(sub_id)
            elif cls is Unsubscribe:
                sub_id = cast("Unsubscribe", frame).id
                batch_subs.discard(sub_id)
                freed.add(sub_id)
            elif cls is Publish or cls is History:
                ref = cast("Publish | History", frame).ref
                if ref is not None:
                    self._check_free(ref, "ref", batch_subs, batch_refs, freed)
                    batch_refs.add(ref)
        return state

    def _check_free(
        self, number: int, what: str, batch_subs: set[int], batch_refs: set[int], freed: set[int]
    ) -> None:
        """Refuse *number* if an answer naming it could be mistaken for another's."""
        in_use = number in batch_subs or number in batch_refs or number in self._refs
        confirmed = self._subs.get(number)
        if not in_use and confirmed is not None and number not in freed:
            # a live subscription's id may double as a ref; a pending one's may not
            in_use = what == "subscription id" or not confirmed
        if in_use:
            raise LocalProtocolError(
                f"{what} {number} is already in use on this connection (by a live or pending "
                "subscription, or a ref awaiting its answer); use next_id() for a fresh one"
            )

    def _sent(self, frame: ClientFrame) -> None:
        cls = type(frame)
        if cls is Subscribe:
            self._subs[cast("Subscribe", frame).id] = False
        elif cls is Unsubscribe:
            self._subs.pop(cast("Unsubscribe", frame).id, None)
        elif cls is Publish or cls is History:
            ref = cast("Publish | History", frame).ref
            if ref is not None:
                self._refs.add(ref)
