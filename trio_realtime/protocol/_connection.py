"""The connection state machine: one class, :class:`Connection`, for either role.

It does no I/O. Feed each received WebSocket text message to :meth:`Connection.receive_text`,
take the frames out of :meth:`Connection.frames`, and turn frames you want to send into
message text with :meth:`Connection.send`. It checks the protocol's rules as frames pass (the
handshake, the direction of each frame type, subscription ids and refs) and keeps the one
record of them its owner needs: which subscriptions are pending or live, which refs await an
answer, and what the owner attached to each.

The states and what moves a connection between them are tables, as in h11's ``_state.py``:
:data:`SEND_TRANSITIONS` and :data:`RECEIVE_TRANSITIONS` map ``(role, state, frame type)`` to
the next state. A frame type missing from the table for the current state is a violation: one
we try to send is refused with :exc:`~trio_realtime.LocalProtocolError` (nothing changes, the
caller may go on); one received is a fatal :class:`FrameError`, and the connection moves to
:attr:`ConnectionState.ERROR`, as it does when the owner reports a failed send
(:meth:`Connection.send_failed`). A clean end (a refused handshake, :meth:`Connection.close`)
moves to :attr:`ConnectionState.CLOSED`.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeVar, cast

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
    Refresh,
    Refreshed,
    ServerFrame,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ._frames import Frame

__all__ = [
    "RECEIVE_TRANSITIONS",
    "SEND_TRANSITIONS",
    "ClientConnection",
    "Connection",
    "ConnectionState",
    "FrameError",
    "Role",
    "ServerConnection",
]

_S = TypeVar("_S")  # what the owner attaches to a subscription
_R = TypeVar("_R")  # what the owner attaches to a ref awaiting its answer


class Role(enum.Enum):
    """Which side of a connection a :class:`Connection` is."""

    CLIENT = "client"
    SERVER = "server"


class ConnectionState(enum.Enum):
    """Where a connection is in its life. Both sides go through the same states, in order."""

    #: No ``hello`` yet: the client has not sent it / the broker has not received it.
    AWAITING_HELLO = "awaiting_hello"
    #: ``hello`` is on its way: the client waits for ``welcome`` (and may already send other
    #: frames); the broker must answer with ``welcome`` or ``error``.
    AWAITING_WELCOME = "awaiting_welcome"
    #: The handshake is done; frames flow both ways.
    OPEN = "open"
    #: Ended cleanly: the handshake was refused, or :meth:`Connection.close` was called.
    CLOSED = "closed"
    #: Ended by a fatal protocol violation (the peer's, seen in :meth:`Connection.frames`)
    #: or a send that failed (:meth:`Connection.send_failed`). Only ``error`` frames may
    #: still be sent (by the broker), to explain.
    ERROR = "error"


AWAITING_HELLO: Final = ConnectionState.AWAITING_HELLO
AWAITING_WELCOME: Final = ConnectionState.AWAITING_WELCOME
OPEN: Final = ConnectionState.OPEN
CLOSED: Final = ConnectionState.CLOSED
ERROR: Final = ConnectionState.ERROR

_ENDED: Final = frozenset({CLOSED, ERROR})


@attrs.frozen(kw_only=True)
class FrameError:
    """A received frame that could not be taken: an event of :meth:`Connection.frames`.

    Attributes:
        code: The error code to answer with (``bad_frame``, ``unknown_type``, ``protocol`` …).
        message: What was wrong, for humans.
        ref: The ``id`` or ``ref`` of the bad frame, when it had one, so that the answer can
            be ``error {ref}``; else None.
        fatal: The violation ends the connection (it is now in the ``ERROR`` state): explain
            with :meth:`to_frame` (the broker), then close the WebSocket with
            ``close_code_for(code)``. Otherwise answer (or log) it and go on.
    """

    code: str
    message: str
    ref: int | None = None
    fatal: bool = False

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_exception(cls, exc: RemoteProtocolError, *, fatal: bool = False) -> FrameError:
        """The event for *exc* (as the codec's :func:`decode` returns them)."""
        return cls(code=exc.code, message=str(exc), ref=exc.ref, fatal=fatal)

    def to_frame(self) -> Error:
        """The ``error`` frame that answers it."""
        return Error(ref=self.ref, code=self.code, message=self.message)

    def as_exception(self) -> RemoteProtocolError:
        """It as a :exc:`~trio_realtime.RemoteProtocolError`, to raise or log."""
        return RemoteProtocolError(self.message, code=self.code, ref=self.ref)


# ---------------------------------------------------------------------------------------------
# The state tables

_Key = tuple[Role, ConnectionState, type[Any]]

CLIENT: Final = Role.CLIENT
SERVER: Final = Role.SERVER


def _build_send() -> dict[_Key, ConnectionState]:
    table: dict[_Key, ConnectionState] = {}
    # the client: hello first, then any client frame (pipelined before welcome too)
    table[CLIENT, AWAITING_HELLO, Hello] = AWAITING_WELCOME
    for state in (AWAITING_WELCOME, OPEN):
        for cls in CLIENT_FRAME_TYPES - {Hello}:
            table[CLIENT, state, cls] = state
    # the broker: only error before hello; welcome (or error, refusing) answers hello
    table[SERVER, AWAITING_HELLO, Error] = CLOSED
    table[SERVER, AWAITING_WELCOME, Welcome] = OPEN
    table[SERVER, AWAITING_WELCOME, Error] = CLOSED
    for cls in SERVER_FRAME_TYPES - {Welcome}:
        table[SERVER, OPEN, cls] = OPEN
    # an ended connection may still explain itself
    table[SERVER, CLOSED, Error] = CLOSED
    table[SERVER, ERROR, Error] = ERROR
    return table


def _build_receive() -> dict[_Key, ConnectionState]:
    table: dict[_Key, ConnectionState] = {}
    table[SERVER, AWAITING_HELLO, Hello] = AWAITING_WELCOME
    for cls in CLIENT_FRAME_TYPES - {Hello}:
        table[SERVER, OPEN, cls] = OPEN
    for cls in SERVER_FRAME_TYPES:  # from the wrong side: not fatal (unknown_type)
        table[SERVER, OPEN, cls] = OPEN
    table[CLIENT, AWAITING_WELCOME, Welcome] = OPEN
    table[CLIENT, AWAITING_WELCOME, Error] = CLOSED  # the broker refused the handshake
    for cls in SERVER_FRAME_TYPES - {Welcome}:
        table[CLIENT, OPEN, cls] = OPEN
    for cls in CLIENT_FRAME_TYPES:
        table[CLIENT, OPEN, cls] = OPEN
    return table


#: ``(role, state, frame type) -> next state`` for frames a side sends. A frame whose key is
#: missing may not be sent: :meth:`Connection.send` raises LocalProtocolError.
SEND_TRANSITIONS: Final[dict[_Key, ConnectionState]] = _build_send()
#: ``(role, state, frame type) -> next state`` for frames a side receives. A received frame
#: whose key is missing is a fatal violation (state ``ERROR``).
RECEIVE_TRANSITIONS: Final[dict[_Key, ConnectionState]] = _build_receive()

#: Why a frame may not be sent, by ``(role, state)``, when the table has no entry for it.
_SEND_REFUSALS: Final[dict[tuple[Role, ConnectionState], str]] = {
    (CLIENT, AWAITING_HELLO): "the first frame must be 'hello', not {type!r}",
    (CLIENT, AWAITING_WELCOME): "'hello' was already sent on this connection",
    (CLIENT, OPEN): "'hello' was already sent on this connection",
    (CLIENT, CLOSED): "cannot send {type!r}: the connection is closed",
    (CLIENT, ERROR): "cannot send {type!r}: the connection is closed (after an error)",
    (SERVER, AWAITING_HELLO): (
        "cannot send {type!r} before the client's 'hello' arrived (only 'error' may be sent now)"
    ),
    (SERVER, AWAITING_WELCOME): (
        "cannot send {type!r} before answering 'hello' with 'welcome' (or 'error' to refuse it)"
    ),
    (SERVER, OPEN): "'welcome' was already sent on this connection",
    (SERVER, CLOSED): (
        "cannot send {type!r}: the connection is closed (only 'error' may be sent, to explain why)"
    ),
    (SERVER, ERROR): (
        "cannot send {type!r}: the connection is closed after an error (only 'error' may be "
        "sent, to explain why)"
    ),
}

#: Why a received frame is fatal, by ``(role, state)``, when the table has no entry for it.
_RECEIVE_VIOLATIONS: Final[dict[tuple[Role, ConnectionState], str]] = {
    (SERVER, AWAITING_HELLO): "the first frame must be 'hello', not {type!r}",
    (SERVER, OPEN): "a second 'hello' on an open connection",
    (CLIENT, AWAITING_HELLO): "the broker sent a frame before the client's 'hello'",
    (CLIENT, AWAITING_WELCOME): "the first frame from the broker must be 'welcome', not {type!r}",
    (CLIENT, OPEN): "a second 'welcome' on an open connection",
}

#: States in which received frames are taken out of the buffer, by role. (The broker holds
#: what a client pipelined after ``hello`` until it has answered with ``welcome``.)
_PROCESSING: Final[dict[Role, frozenset[ConnectionState]]] = {
    SERVER: frozenset({AWAITING_HELLO, OPEN}),
    CLIENT: frozenset({AWAITING_HELLO, AWAITING_WELCOME, OPEN}),
}

_SENDS: Final = {CLIENT: CLIENT_FRAME_TYPES, SERVER: SERVER_FRAME_TYPES}
_RECEIVES: Final = {CLIENT: SERVER_FRAME_TYPES, SERVER: CLIENT_FRAME_TYPES}
_NAMES: Final = {CLIENT: ("client", "broker"), SERVER: ("broker", "client")}


def _int_ref(frame: object) -> int | None:
    """The integer ``ref``, else ``id``, of a frame (to answer it with ``error {ref}``)."""
    ref = getattr(frame, "ref", None)
    if type(ref) is int:
        return ref
    id_ = getattr(frame, "id", None)
    return id_ if type(id_) is int else None


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


class _Sub(Generic[_S]):
    """One subscription id in use: sent (pending until confirmed), and what is attached."""

    __slots__ = ("confirmed", "sent", "value")

    def __init__(self, value: _S | None, *, sent: bool) -> None:
        self.sent = sent
        self.confirmed = False
        self.value = value


# ---------------------------------------------------------------------------------------------
# The connection


class Connection(Generic[_S, _R]):
    """One side of one connection, sans I/O: the broker's (``Role.SERVER``) or a client's.

    Three verbs: :meth:`receive_text` feeds in a received message, :meth:`frames` takes out
    what it held (frames, and :class:`FrameError` events for what could not be taken), and
    :meth:`send` turns frames into the text of one message. Both roles enforce the
    handshake (hello, then welcome or a refusing error), the direction of each frame type, and
    the rules of subscription ids and refs:

    * the broker: a ``subscribe`` reusing the id of a live or pending subscription yields a
      non-fatal ``protocol`` error with that ``ref``; client-bound frame types from the client
      yield ``unknown_type`` errors; ``unsubscribe`` of an unknown id passes through (answer
      it ``unsubscribed`` all the same); the ``seq`` of a published event is cleared.
    * a client: a subscription id may not be reused while its subscription is live or
      pending, nor a ``ref`` while it awaits its answer (they share one space, since an
      ``error`` names either by ``ref``); :meth:`next_id` hands out fresh ones.

    **One record of ids and refs.** The connection is where a side keeps its subscriptions
    and refs: the owner attaches its own object to each (:meth:`attach` for a subscription,
    the *refs* argument of :meth:`send` for a ref), looks it up (:meth:`subscription`,
    :meth:`pending`), and lets the connection forget it as the protocol says (a refusing
    ``error`` or an ``unsubscribe`` for an id, which ``subscribed`` only confirms; an
    ``ack``, a ``history_result`` or an ``error`` for a ref). When a received
    frame ends a subscription or answers a ref, what was attached stays readable while the
    owner handles that frame, and goes when the next item is taken.
    """

    _hello: Hello | None
    _welcome: Welcome | None

    #: The role this class is fixed to (None: given to the constructor).
    ROLE: ClassVar[Role | None] = None

    def __init__(self, role: Role | None = None) -> None:
        if role is None:
            role = self.ROLE
        if role is None:
            raise TypeError("Connection() needs a role: Role.CLIENT or Role.SERVER")
        if self.ROLE is not None and role is not self.ROLE:
            raise TypeError(f"{type(self).__name__} is the {self.ROLE.value}'s side")
        #: The side this connection is: :attr:`Role.CLIENT` or :attr:`Role.SERVER`.
        self.role: Final = role
        self._state = AWAITING_HELLO
        self._buffer: deque[Frame | RemoteProtocolError] = deque()
        self._subs: dict[int, _Sub[_S]] = {}
        self._attached = 0  # subscriptions with something attached
        self._refs: dict[int, _R | None] = {}  # client: refs awaiting their answer
        self._hello = None
        self._welcome = None
        self._last_id = 0
        # the broker's answers still owed, by ref: errors for frames refused here, and
        # acks / results for requests
        self._owed_errors: dict[int, int] = {}
        self._open_refs: dict[int, int] = {}
        self._server = role is SERVER
        self._side, self._peer = _NAMES[role]
        self._sends = _SENDS[role]
        self._receives = _RECEIVES[role]
        self._processing = _PROCESSING[role]
        # the broker does not trust clients' integers; the broker never sends such integers
        self._exact_integers = role is SERVER

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.role.name} state={self._state.name} "
            f"subscriptions={len(self._subs)} buffered={len(self._buffer)}>"
        )

    # -- what the owner reads -----------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The connection's :class:`ConnectionState`."""
        return self._state

    @property
    def hello(self) -> Hello | None:
        """The client's :class:`Hello`, once received (the broker's side)."""
        return self._hello

    @property
    def welcome(self) -> Welcome | None:
        """The broker's :class:`Welcome`, once received (a client's side)."""
        return self._welcome

    @property
    def active_subscriptions(self) -> frozenset[int]:
        """Ids of the subscriptions confirmed by ``subscribed`` and not since unsubscribed."""
        return frozenset(id_ for id_, sub in self._subs.items() if sub.confirmed)

    @property
    def pending_subscriptions(self) -> frozenset[int]:
        """Ids of the subscriptions requested but not yet answered (nor since unsubscribed)."""
        return frozenset(id_ for id_, sub in self._subs.items() if sub.sent and not sub.confirmed)

    @property
    def pending_refs(self) -> frozenset[int]:
        """Refs of sent ``publish`` and ``history`` frames that await their answer (client)."""
        return frozenset(self._refs)

    def subscription(self, sub_id: int) -> _S | None:
        """What the owner attached to subscription *sub_id* (None: nothing, or not in use)."""
        sub = self._subs.get(sub_id)
        return None if sub is None else sub.value

    @property
    def attached_count(self) -> int:
        """How many subscriptions have something attached."""
        return self._attached

    def subscriptions(self) -> list[tuple[int, _S]]:
        """``(id, attached)`` of every subscription the owner attached something to."""
        return [(id_, sub.value) for id_, sub in self._subs.items() if sub.value is not None]

    def pending(self, ref: int) -> _R | None:
        """What the owner attached to *ref*, a ref awaiting its answer (client)."""
        return self._refs.get(ref)

    def pending_items(self) -> list[tuple[int, _R]]:
        """``(ref, attached)`` of every ref awaiting its answer with something attached."""
        return [(ref, value) for ref, value in self._refs.items() if value is not None]

    # -- what the owner records -----------------------------------------------------------------

    def attach(self, sub_id: int, value: _S) -> None:
        """Attach *value* to subscription *sub_id*.

        The broker attaches its sink to a subscription it accepts. A client reserves an id
        this way before its ``subscribe`` is sent (from :meth:`next_id`): events for it are
        then handed to *value*.

        Raises:
            LocalProtocolError: (the broker) if *sub_id* is no subscription of the client's.
        """
        sub = self._subs.get(sub_id)
        if sub is None:
            if self._server:
                raise LocalProtocolError(f"subscription {sub_id} was not requested by the client")
            self._subs[sub_id] = _Sub(value, sent=False)
            self._attached += 1
        else:
            if sub.value is None:
                self._attached += 1
            sub.value = value

    def detach(self, sub_id: int) -> _S | None:
        """Forget what was attached to *sub_id*; return it. The id stays in use until the
        protocol frees it (a client's ``unsubscribe``, sent or received)."""
        sub = self._subs.get(sub_id)
        if sub is None:
            return None
        value, sub.value = sub.value, None
        if value is not None:
            self._attached -= 1
        if not sub.sent and not self._server:
            del self._subs[sub_id]  # reserved, never sent: free again
        return value

    def discard_pending(self, ref: int) -> _R | None:
        """Forget *ref* (its frame was not sent after all, or will not be answered here);
        what was attached to it."""
        return self._refs.pop(ref, None)

    def forget_pending(self) -> list[_R]:
        """Forget every ref awaiting its answer (the connection is over); what was attached."""
        values = [value for value in self._refs.values() if value is not None]
        self._refs.clear()
        return values

    def next_id(self) -> int:
        """A fresh number to use as a subscription id or a ref (1, 2, 3 … skipping any in use)."""
        candidate = self._last_id + 1
        while candidate in self._subs or candidate in self._refs:
            candidate += 1
        self._last_id = candidate
        return candidate

    # -- the three verbs ----------------------------------------------------------------------

    def receive_text(self, text: str | bytes) -> None:
        """Feed in one received WebSocket message; its frames come out of :meth:`frames`.

        Nothing is checked here (the message is decoded and buffered). Once the connection
        has ended (``CLOSED`` or ``ERROR``), messages are ignored.
        """
        if self._state not in _ENDED:
            self._buffer.extend(decode(text, exact_integers=self._exact_integers))

    def frames(self) -> Iterator[Frame | FrameError]:
        """The received frames, in order, checked against the protocol as they come out.

        A frame that could not be decoded, or that breaks a rule, comes out as a
        :class:`FrameError` in its place: never raised, so that one bad frame in a batch
        does not hide the good ones. A non-fatal one leaves the connection usable (the broker
        answers it with ``error``). A fatal one (the first frame not ``hello`` / ``welcome``,
        a second one, an unsupported protocol version) is the last item: the connection is
        then in the ``ERROR`` state and its buffer dropped. Frames are processed one at a time
        as you iterate; frames you do not take stay buffered for the next call.
        """
        buffer = self._buffer
        forget: tuple[bool, int] | None = None
        try:
            while buffer and self._state in self._processing:
                item = self._process(buffer.popleft())
                if type(item) is tuple:  # a frame that frees an id or a ref once handled
                    item, forget = item
                yield item
                if forget is not None:
                    self._forget(*forget)
                    forget = None
        finally:
            if forget is not None:
                self._forget(*forget)

    def _forget(self, is_ref: bool, key: int) -> None:
        if is_ref:
            self._refs.pop(key, None)
            return
        sub = self._subs.pop(key, None)
        if sub is not None and sub.value is not None:
            self._attached -= 1

    def send(self, frames: Frame | Sequence[Frame], *, refs: dict[int, _R] | None = None) -> str:
        """The text of one WebSocket message carrying *frames*.

        Pass one frame, or a list or tuple of frames to send them as one batch. Either all of
        them are accepted and the connection's state moves on, or none is. A client passes
        in *refs* what to attach to the refs of the batch's ``publish`` and ``history``
        frames (see :meth:`pending`).

        Raises:
            LocalProtocolError: if a frame may not be sent now (a frame of the other side,
                anything before ``hello`` / answering it, a second ``hello`` or ``welcome``,
                a reused subscription id or ref, anything but ``error`` once ended), or
                cannot be encoded. Nothing changes: the caller may go on.
        """
        state = self._state
        if self._server and state is OPEN and type(frames) is EventFrame:
            return encode(frames)  # fan-out's hot path: nothing to check or record
        batch: Sequence[Any] = frames if isinstance(frames, (list, tuple)) else (frames,)
        new_state = self._check_send(batch)
        text = encode(cast("Any", frames))
        self._state = new_state
        sent = self._sent
        for frame in batch:
            cls = type(frame)
            if cls is EventFrame or (cls is Publish and frame.ref is None):
                continue  # events and unacknowledged publishes need no bookkeeping
            sent(frame, refs)
        return text

    def send_failed(self) -> None:
        """The owner could not send a message this connection produced (the WebSocket
        failed): the connection moves to ``ERROR``, so that the send is not taken for one
        that went out."""
        self._state = ERROR
        self._buffer.clear()

    def close(self) -> None:
        """Mark the connection closed (the WebSocket closed cleanly) and drop the buffer.

        Afterwards received messages are ignored and only ``error`` frames may be sent (by the
        broker, to explain the close). A connection in the ``ERROR`` state stays there.
        """
        if self._state is not ERROR:
            self._state = CLOSED
        self._buffer.clear()

    # -- receiving ------------------------------------------------------------------------------

    def _fatal(self, message: str, *, code: str = PROTOCOL, ref: int | None = None) -> FrameError:
        self._state = ERROR
        self._buffer.clear()
        return FrameError(code=code, message=message, ref=ref, fatal=True)

    def _process(self, item: Frame | RemoteProtocolError) -> Any:
        """One received item: a frame or FrameError to yield, or a pair ``(that, (is_ref,
        key))`` when the subscription id or ref *key* is to be forgotten once it is handled."""
        cls = type(item)
        state = self._state
        if state is OPEN:
            if cls is EventFrame and not self._server:
                return item  # the bulk of a client's traffic: nothing to check
            if cls is Publish and self._server:  # the bulk of a broker's
                return self._received_publish(cast("Publish", item))
        if isinstance(item, RemoteProtocolError):
            if state is not OPEN:
                first = "'hello'" if self._server else "'welcome'"
                where = "the first frame" if self._server else "the first frame from the broker"
                return self._fatal(f"{where} must be a valid {first}: {item}")
            return self._owe(FrameError.from_exception(item))
        frame = item
        next_state = RECEIVE_TRANSITIONS.get((self.role, state, cls))
        if next_state is None:
            message = _RECEIVE_VIOLATIONS[self.role, state].format(type=frame.TYPE)
            return self._fatal(message, ref=_int_ref(frame) if self._server else None)
        if cls not in self._receives:
            return self._owe(
                FrameError(
                    code=UNKNOWN_TYPE,
                    message=f"{frame.TYPE!r} frames go from {self._side} to {self._peer}; "
                    f"the {self._side} does not accept them",
                    ref=_int_ref(frame),
                )
            )
        handler = self._RECEIVED.get(cls)
        result = frame if handler is None else handler(self, frame)
        if self._state is state:  # (a handler may have ended it)
            self._state = next_state
        return result

    def _owe(self, error: FrameError) -> FrameError:
        if self._server and error.ref is not None:
            self._owed_errors[error.ref] = self._owed_errors.get(error.ref, 0) + 1
        return error

    def _received_hello(self, hello: Hello) -> Any:
        if hello.protocol != PROTOCOL_VERSION:
            return self._fatal(
                f"this broker speaks protocol version {PROTOCOL_VERSION}, not {hello.protocol!r}",
                code=UNSUPPORTED_PROTOCOL,
            )
        self._hello = hello
        return hello

    def _received_welcome(self, welcome: Welcome) -> Any:
        if welcome.protocol != PROTOCOL_VERSION:
            return self._fatal(
                f"this client speaks protocol version {PROTOCOL_VERSION}, not {welcome.protocol!r}",
                code=UNSUPPORTED_PROTOCOL,
            )
        self._welcome = welcome
        return welcome

    def _received_error(self, error: Error) -> Any:
        if self._state is AWAITING_WELCOME:  # the broker refused the handshake
            self._state = CLOSED
            self._buffer.clear()
            return error
        ref = error.ref
        if ref is None:
            return error
        if ref in self._refs:
            return error, (True, ref)
        sub = self._subs.get(ref)
        if sub is not None and sub.sent and not sub.confirmed:
            return error, (False, ref)  # the broker refused the subscription
        return error

    def _received_answer(self, frame: Ack | HistoryResult | Refreshed) -> Any:
        if frame.ref in self._refs:
            return frame, (True, frame.ref)
        return frame

    def _received_unsubscribed(self, frame: Unsubscribed) -> Any:
        if frame.reason is not None:  # the broker ended it: the id is free again
            # (Only a confirmed one: the broker ended a subscription it had confirmed, so an
            # unconfirmed one with that id is a new one the client made meanwhile.)
            sub = self._subs.get(frame.id)
            if sub is not None and sub.confirmed:
                return frame, (False, frame.id)
        return frame

    def _received_subscribed(self, frame: Subscribed) -> Any:
        sub = self._subs.get(frame.id)
        if sub is not None and sub.sent:
            sub.confirmed = True
        return frame

    def _received_publish(self, publish: Publish) -> Any:
        if publish.ref is not None:
            self._open_refs[publish.ref] = self._open_refs.get(publish.ref, 0) + 1
        if publish.event.seq is not None:
            return attrs.evolve(publish, event=attrs.evolve(publish.event, seq=None))
        return publish

    def _received_subscribe(self, frame: Subscribe) -> Any:
        sub_id = frame.id
        if sub_id in self._subs:
            return self._owe(
                FrameError(
                    code=PROTOCOL,
                    message=f"subscription id {sub_id} is already in use on this connection; "
                    "unsubscribe it first or choose another id",
                    ref=sub_id,
                )
            )
        self._subs[sub_id] = _Sub(None, sent=True)
        return frame

    def _received_unsubscribe(self, frame: Unsubscribe) -> Any:
        if frame.id in self._subs:
            return frame, (False, frame.id)
        return frame

    def _received_history(self, frame: History | Refresh) -> Any:
        if frame.ref is not None:
            self._open_refs[frame.ref] = self._open_refs.get(frame.ref, 0) + 1
        return frame

    #: What receiving a frame type records, beyond the state table (by frame type; which
    #: frame types reach a handler depends on the role, through the tables).
    _RECEIVED: ClassVar[dict[type[Any], Any]] = {
        Hello: _received_hello,
        Welcome: _received_welcome,
        Error: _received_error,
        Ack: _received_answer,
        HistoryResult: _received_answer,
        Refreshed: _received_answer,
        Subscribed: _received_subscribed,
        Unsubscribed: _received_unsubscribed,
        Publish: _received_publish,
        Subscribe: _received_subscribe,
        Unsubscribe: _received_unsubscribe,
        History: _received_history,
        Refresh: _received_history,
    }

    # -- sending --------------------------------------------------------------------------------

    def _check_send(self, frames: Sequence[object]) -> ConnectionState:
        """The state after sending *frames*, checked against the table and the id rules."""
        state = self._state
        role = self.role
        server = self._server
        batch_subs: set[int] = set()  # subscription ids this batch takes
        batch_refs: set[int] = set()  # refs this batch takes
        freed: set[int] = set()  # subscription ids this batch releases
        for frame in frames:
            cls = type(frame)
            if server and state is OPEN and cls is EventFrame:
                continue  # the bulk of a busy connection's batches
            if (
                cls is Publish
                and not server
                and (state is OPEN or state is AWAITING_WELCOME)
                and cast("Publish", frame).ref is None
            ):
                continue  # the bulk of a publishing client's (allowed, and leaves the state)
            if cls not in self._sends:
                if cls in self._receives:
                    raise LocalProtocolError(
                        f"a {self._side} cannot send {cast('Frame', frame).TYPE!r} frames; "
                        f"they go from {self._peer} to {self._side}"
                    )
                raise LocalProtocolError(f"cannot send {frame!r}: it is not a frame")
            next_state = SEND_TRANSITIONS.get((role, state, cls))
            if next_state is None:
                raise LocalProtocolError(
                    _SEND_REFUSALS[role, state].format(type=cast("Frame", frame).TYPE)
                )
            state = next_state
            if server:
                continue
            if cls is Subscribe:
                sub_id = cast("Subscribe", frame).id
                self._check_free(sub_id, "subscription id", batch_subs, batch_refs, freed)
                batch_subs.add(sub_id)
            elif cls is Unsubscribe:
                sub_id = cast("Unsubscribe", frame).id
                batch_subs.discard(sub_id)
                freed.add(sub_id)
            elif cls is Publish or cls is History or cls is Refresh:
                ref = cast("Publish | History | Refresh", frame).ref
                if ref is not None:
                    self._check_free(ref, "ref", batch_subs, batch_refs, freed)
                    batch_refs.add(ref)
        return state

    def _check_free(
        self, number: int, what: str, batch_subs: set[int], batch_refs: set[int], freed: set[int]
    ) -> None:
        """Refuse *number* if an answer naming it could be mistaken for another's."""
        in_use = number in batch_subs or number in batch_refs or number in self._refs
        sub = self._subs.get(number)
        if not in_use and sub is not None and sub.sent and number not in freed:
            # a live subscription's id may double as a ref; a pending one's may not
            in_use = what == "subscription id" or not sub.confirmed
        if in_use:
            raise LocalProtocolError(
                f"{what} {number} is already in use on this connection (by a live or pending "
                "subscription, or a ref awaiting its answer); use next_id() for a fresh one"
            )

    def _sent(self, frame: Any, refs: dict[int, _R] | None) -> None:
        cls = type(frame)
        if self._server:
            if cls is Subscribed:
                sub = self._subs.get(frame.id)
                if sub is not None:
                    sub.confirmed = True
            elif cls is Ack or cls is HistoryResult or cls is Refreshed:
                if frame.ref is not None:
                    _discount(self._open_refs, frame.ref)
            elif cls is Unsubscribed and frame.reason is not None:
                self._forget(False, frame.id)  # the broker ended it: the id is free again
            elif cls is Error:
                ref = frame.ref
                if ref is None:
                    return
                if _discount(self._owed_errors, ref) or _discount(self._open_refs, ref):
                    return
                sub = self._subs.get(ref)
                if sub is not None and not sub.confirmed:
                    self._forget(False, ref)  # the broker refused this pending subscription
            return
        if cls is Subscribe:
            sub = self._subs.get(frame.id)
            if sub is None:
                self._subs[frame.id] = _Sub(None, sent=True)
            else:
                sub.sent = True
        elif cls is Unsubscribe:
            self._forget(False, frame.id)
        elif cls is Publish or cls is History or cls is Refresh:
            ref = frame.ref
            if ref is not None:
                self._refs[ref] = None if refs is None else refs.get(ref)


class ServerConnection(Connection[Any, Any]):
    """``Connection(Role.SERVER)``: the broker's side, kept as a name for compatibility.

    It receives client frames and sends broker frames::

        conn = ServerConnection()
        conn.receive_text(message)
        for item in conn.frames():
            if isinstance(item, FrameError):
                reply = conn.send(item.to_frame())  # answer it
                if item.fatal:  # explain, then close
                    close_code = close_code_for(item.code)
                    break
            elif isinstance(item, Hello):
                reply = conn.send(Welcome(session=..., broker=..., heartbeat=30.0))
            ...
    """

    ROLE = SERVER

    def frames(self) -> Iterator[ClientFrame | FrameError]:
        """:meth:`Connection.frames`, typed for this side: client frames."""
        return cast("Iterator[ClientFrame | FrameError]", super().frames())


class ClientConnection(Connection[Any, Any]):
    """``Connection(Role.CLIENT)``: a client's side, kept as a name for compatibility.

    It sends client frames and receives broker frames::

        conn = ClientConnection()
        message = conn.send(Hello(token="secret"))
        sub_id = conn.next_id()
        message = conn.send(Subscribe(id=sub_id, pattern="orders.>"))  # pipelined
        conn.receive_text(received)
        for item in conn.frames():
            if isinstance(item, Welcome): ...
            elif isinstance(item, EventFrame): ...
    """

    ROLE = CLIENT

    def frames(self) -> Iterator[ServerFrame | FrameError]:
        """:meth:`Connection.frames`, typed for this side: broker frames."""
        return cast("Iterator[ServerFrame | FrameError]", super().frames())
