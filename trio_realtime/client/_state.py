"""What the remote client keeps across its connections, and what it reports.

Its :class:`ClientState` and :class:`ClientStatistics`; its subscriptions
(:class:`RemoteSub`), the :class:`Outbox` of frames and operations waiting to be sent, the
operations waiting for an answer (:class:`Pending`), and the rules of reconnecting.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Generic, TypeAlias, TypeVar, cast

import attrs
import trio

from .._errors import (
    ConnectionClosed,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
    StoreError,
    TooLarge,
    refusal,
)
from .._event import Event, new_event_id
from ..bus._channel import check_since
from ..bus._requests import with_timeout
from ..protocol import (
    BAD_FRAME,
    CLOSE_POLICY,
    CLOSE_PROTOCOL,
    PROTOCOL,
    STORE_FAILED,
    UNKNOWN_TYPE,
    UNSUPPORTED_PROTOCOL,
    Ack,
    Cancel,
    ClientFrame,
    Error,
    History,
    HistoryResult,
    Ping,
    Pong,
    Publish,
    Refresh,
    Refreshed,
    Subscribe,
    Unsubscribe,
)

if TYPE_CHECKING:
    from ..bus._channel import Subscription
    from ..bus._requests import ReplyInbox

__all__ = [
    "ClientState",
    "ClientStatistics",
    "HistoryPage",
    "HistoryQuery",
    "Outbox",
    "OutboxItem",
    "Pending",
    "PublishAck",
    "RefreshOp",
    "RemoteSub",
    "RequestPending",
    "backoff_delay",
    "error_from_frame",
    "is_fatal",
    "since_fields",
]

T = TypeVar("T")

#: The frames that answer a ``ref`` (errors aside).
Answer: TypeAlias = Ack | HistoryResult | Refreshed


def error_from_frame(error: Error, topic: str) -> Exception:
    """The exception that reports the broker's *error* about an operation on *topic*.

    A protocol code (``bad_frame``, ``unknown_type``, ``protocol``) means the broker found
    this client's frame wrong: :exc:`LocalProtocolError`. ``store_failed`` is the
    :exc:`StoreError` a bus raises when its store fails. Every other code is a refusal:
    :func:`~trio_realtime._errors.refusal` maps it to the :exc:`Refused` subclass a bus
    raises in the same situation.
    """
    if error.code in _PROTOCOL_CODES:
        return LocalProtocolError(
            f"the broker found this client's frame wrong ({error.code}): {error.message}",
            code=error.code,
        )
    if error.code == STORE_FAILED:
        return StoreError(f"the broker's store failed: {error.message}")
    return refusal(error.code, error.message, topic=topic)


_PROTOCOL_CODES: Final = frozenset({BAD_FRAME, UNKNOWN_TYPE, PROTOCOL, UNSUPPORTED_PROTOCOL})


# ---------------------------------------------------------------------------------------------
# What the client reports


class ClientState(enum.Enum):
    """Where a :class:`Client` is in its life.

    ``CONNECTING``
        Opening a connection (the first one, or a reconnect).
    ``CONNECTED``
        The handshake is done: frames flow.
    ``DISCONNECTED``
        The connection dropped; the client waits (backoff) before reconnecting. Publishes
        wait in the outbox meanwhile.
    ``CLOSED``
        For good: the ``open_client`` block exited, or the connection was lost and could not
        or may not be re-established. Operations raise :exc:`~trio_realtime.ConnectionClosed`.
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@attrs.frozen(kw_only=True)
class ClientStatistics:
    """A snapshot of a client's counters.

    Attributes:
        state: The client's state.
        url: The URL of the broker it is connected to; while it is not, of the one it is
            trying, or tried last (:attr:`Client.url <trio_realtime.Client.url>`).
        reconnects: Connections re-established after the first (on the same broker or
            another).
        catch_ups: Times a persisted subscription that the broker dropped events for (a
            ``gap``) re-read them from the store.
        published: Events handed to the client for sending (``publish`` and ``request``).
        received: Events received from the broker.
        outbox: Frames and operations waiting to be sent.
        in_flight: Sent operations waiting for the broker's answer (acks, history reads).
        subscriptions: Live subscriptions, ``serve`` blocks included.
        errors: Errors the broker reported that no operation waited for (such as a refused
            fire-and-forget publish), and bad input from it.
        oversized: Messages from the broker larger than the client's ``max_message_size``:
            each closed the connection (1009) and was lost, with the events in it (see
            :func:`open_client`).
        requests_cancelled: Requests that this client's ``serve`` blocks stopped handling
            (the handler cancelled) or did not start, because their requester cancelled them.
        requests_expired: The same, because their deadline passed.
        late_replies: Replies to this client's requests that came when no request waited
            for them (it had been cancelled or had timed out, or had its reply already):
            dropped.
    """

    state: ClientState
    url: str
    reconnects: int
    catch_ups: int
    published: int
    received: int
    outbox: int
    in_flight: int
    subscriptions: int
    errors: int
    oversized: int
    requests_cancelled: int = 0
    requests_expired: int = 0
    late_replies: int = 0


# ---------------------------------------------------------------------------------------------
# Arguments, and the rules of reconnecting


def since_fields(since: object) -> tuple[int | None, str | None]:
    """The ``(since, since_time)`` frame fields for a ``since`` argument (seq or datetime),
    checked as every channel checks it (:func:`~trio_realtime.bus._channel.check_since`)."""
    checked = check_since(since)
    if isinstance(checked, datetime):
        return None, checked.isoformat()
    return checked, None


def is_fatal(exc: ConnectionClosed) -> bool:
    """Whether reconnecting after *exc* is pointless: closed by policy (1008), or a handshake
    the broker refused as a protocol mismatch."""
    if exc.code == CLOSE_POLICY:
        return True
    return isinstance(exc, HandshakeError) and exc.code == CLOSE_PROTOCOL


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait before reconnect attempt *attempt* (0, 1, …): exponential backoff with
    full jitter, uniform in ``[0, min(maximum, initial * 2**attempt)]``."""
    return random.uniform(0, min(maximum, initial * 2 ** min(attempt, 32)))


# ---------------------------------------------------------------------------------------------
# What survives a reconnect


class RemoteSub:
    """One subscription of the client: its local :class:`Subscription`, and what it takes to
    (re-)create it on the broker.

    The client's request inbox is a ``RemoteSub`` without a local subscription: the reader
    hands its events to the waiting requests instead.
    """

    __slots__ = (
        "behind",
        "error",
        "group",
        "id",
        "last_seq",
        "pattern",
        "resume_seq",
        "settled",
        "since",
        "since_time",
        "sub",
    )

    def __init__(
        self,
        pattern: str,
        *,
        group: str | None = None,
        since: int | None = None,
        since_time: str | None = None,
    ) -> None:
        self.pattern = pattern
        self.group = group
        self.since = since
        self.since_time = since_time
        self.sub: Subscription | None = None
        #: Its id on the current connection (None while it has none).
        self.id: int | None = None
        #: The ``seq`` of the last stored event it received: a resubscribe resumes after it.
        self.last_seq: int | None = None
        #: Where the broker's store was when the subscription went live: the resume point
        #: until a stored event arrives.
        self.resume_seq: int | None = None
        #: Set once the broker answered the first ``subscribe`` (or the client closed).
        self.settled = trio.Event()
        #: Why the first ``subscribe`` failed, once settled.
        self.error: BaseException | None = None
        #: Its ``block`` subscription fell behind by twice its buffer: its events are not
        #: delivered until the consumer made room (stored ones then come from the store).
        self.behind = False

    def __repr__(self) -> str:
        return f"<RemoteSub {self.pattern!r} id={self.id} last_seq={self.last_seq}>"

    def frame(self, sub_id: int) -> Subscribe:
        """The ``subscribe`` frame that (re-)creates it as *sub_id*, resuming where it was."""
        resume = self.resume_point()
        if resume is not None:
            return Subscribe(id=sub_id, pattern=self.pattern, group=self.group, since=resume)
        return Subscribe(
            id=sub_id,
            pattern=self.pattern,
            group=self.group,
            since=self.since,
            since_time=self.since_time,
        )

    def resume_point(self) -> int | None:
        """The seq to resume after: the later of the last stored event received and the
        store's position when the subscription went live. None for a queue group member,
        which must not replay what the other members handled."""
        if self.group is not None:
            return None
        points = [s for s in (self.last_seq, self.resume_seq) if s is not None]
        return max(points) if points else None

    def replay_point(self) -> int | None:
        """The seq after which a resubscribe replays stored events (None: it replays none,
        or replays from a time)."""
        resume = self.resume_point()
        return resume if resume is not None else self.since

    def advance_to(self, seq: int) -> None:
        """Resubscribe after *seq*: the stored events up to it were handled otherwise (read
        from the store, or skipped as too large to receive)."""
        self.last_seq = seq
        if self.resume_point() is None:  # a queue group member resumes from its since
            self.since, self.since_time = seq, None

    def settle(self, error: BaseException | None = None) -> None:
        """The first ``subscribe`` was answered (*error*: refused)."""
        if not self.settled.is_set():
            self.error = error
            self.settled.set()


class Pending(Generic[T]):
    """An operation that sends a frame with a ``ref`` and waits for the broker's answer.

    Until it is sent it waits in the :class:`Outbox`; then the link that sent it keeps it by
    ``ref``. If that link ends first, the client puts it back at the front of the outbox and
    it is sent again on the next connection.
    """

    __slots__ = ("abandoned", "done", "error", "ref", "result", "topic")

    def __init__(self, topic: str) -> None:
        #: The topic or pattern it is about (for error messages).
        self.topic = topic
        self.done = trio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        #: Its ref on the connection that sent it, while it waits for the answer there.
        self.ref: int | None = None
        #: Nobody waits for it any more: not worth sending (requests and history only).
        self.abandoned = False

    def frame(self, ref: int) -> ClientFrame:
        """The frame to send, with *ref*."""
        raise NotImplementedError

    def answer(self, frame: Answer) -> None:
        """The broker answered with *frame*."""
        raise NotImplementedError

    def succeed(self, result: T) -> None:
        if not self.done.is_set():
            self.result = result
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    async def wait(self) -> T:
        """Its result, once answered.

        Raises:
            Exception: what the broker's error maps to, or :exc:`ConnectionClosed`.
        """
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return cast("T", self.result)


class PublishAck(Pending[Event]):
    """A ``publish(…, ack=True)``: its result is the event with the broker's id and ``seq``."""

    __slots__ = ("event", "retain")

    def __init__(self, event: Event, retain: bool) -> None:
        super().__init__(event.topic)
        self.event = event
        self.retain = retain

    def frame(self, ref: int) -> ClientFrame:
        return Publish(event=self.event, retain=self.retain, ref=ref)

    def answer(self, frame: Answer) -> None:
        if type(frame) is Ack:
            self.succeed(attrs.evolve(self.event, id=frame.id, seq=frame.seq))
        else:
            self.fail(RemoteProtocolError(f"the broker answered a publish with {frame.TYPE!r}"))


class RequestPending(Pending[Event]):
    """A request: a publish with ``reply_to``; its result is the reply event.

    Its ``ack`` only means the request was routed (it is then not sent again after a
    reconnect); the reply arrives on the client's inbox subscription. Each time it is sent,
    it carries the time left until its *deadline* (on the Trio clock).
    """

    __slots__ = ("deadline", "event", "replies", "sent")

    def __init__(self, event: Event, replies: ReplyInbox[RequestPending], deadline: float) -> None:
        super().__init__(event.topic)
        self.event = event
        self.replies = replies
        self.deadline = deadline
        #: It was sent (as :attr:`event`, the last time).
        self.sent = False

    def frame(self, ref: int) -> ClientFrame:
        event = self.event
        assert event.reply_to is not None
        reply_to = self.replies.current(event.reply_to)
        if reply_to != event.reply_to:
            # Sent again, on a connection with another inbox: a new request (a new id), for
            # the first may have been stored and routed with its ack lost (its reply went to
            # the old inbox, and the broker would take this one for a duplicate).
            event = attrs.evolve(event, reply_to=reply_to, id=new_event_id())
        headers = with_timeout(dict(event.headers), self.deadline - trio.current_time())
        if headers is not None and headers != event.headers:  # (the time left, now)
            event = attrs.evolve(event, headers=headers)
        self.event = event
        self.sent = True
        return Publish(event=event, ref=ref)

    def cancel(self) -> Cancel:
        """The frame that cancels it, as it was last sent."""
        event = self.event
        assert event.reply_to is not None
        return Cancel(id=event.id, topic=event.topic, reply_to=event.reply_to)

    def answer(self, frame: Answer) -> None:
        pass  # routed; the reply comes as an event


class RefreshOp(Pending[Refreshed]):
    """A ``refresh``: a new credential for the connection; its result is the ``refreshed``
    frame. It belongs to one connection: the next one starts with a new token anyway."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        super().__init__("refresh")
        self.token = token

    def frame(self, ref: int) -> ClientFrame:
        return Refresh(ref=ref, token=self.token)

    def answer(self, frame: Answer) -> None:
        if type(frame) is Refreshed:
            self.succeed(frame)
        else:
            self.fail(RemoteProtocolError(f"the broker answered a refresh with {frame.TYPE!r}"))


@attrs.frozen(kw_only=True)
class HistoryPage:
    """What one ``history`` request returned.

    Attributes:
        events: The stored events, oldest first.
        more: More events may match: the broker stopped short of the limit to keep its
            message small enough (``history_result.more``), or the client lowered the limit
            after an answer too large for it.
        resume: With *more*, the seq to read on after, when it is not the last event's
            (``history_result.resume``: the broker read events it left out).
    """

    events: list[Event]
    more: bool
    resume: int | None = None


class HistoryQuery(Pending[HistoryPage]):
    """A ``history`` read: its result is one :class:`HistoryPage`.

    An answer larger than the client's ``max_message_size`` closes the connection (1009) and
    is lost; a query that was waiting for its answer then is sent again with half the limit
    (:meth:`shrink`), down to one event.
    """

    __slots__ = ("limit", "oversized_at_one", "shrunk", "since", "since_time")

    def __init__(
        self, pattern: str, *, since: int | None, since_time: str | None, limit: int
    ) -> None:
        super().__init__(pattern)
        self.since = since
        self.since_time = since_time
        self.limit = limit
        #: The limit was lowered: a full page does not mean the end.
        self.shrunk = False
        #: An answer too large was lost while it asked for one event.
        self.oversized_at_one = False

    def frame(self, ref: int) -> ClientFrame:
        return History(
            ref=ref,
            pattern=self.topic,
            since=self.since,
            since_time=self.since_time,
            limit=self.limit,
        )

    def answer(self, frame: Answer) -> None:
        if type(frame) is HistoryResult:
            events = list(frame.events)
            more = frame.more or (self.shrunk and len(events) >= self.limit)
            resume = frame.resume if frame.more else None
            self.succeed(HistoryPage(events=events, more=more, resume=resume))
        else:
            self.fail(
                RemoteProtocolError(f"the broker answered a history read with {frame.TYPE!r}")
            )

    def shrink(self, max_message_size: int) -> None:
        """A connection that waited for its answer ended on a message too large: lower the
        limit to send it again, or fail once one event alone was too large (twice)."""
        if self.limit > 1:
            self.limit //= 2
            self.shrunk = True
            return
        if not self.oversized_at_one:
            # Perhaps the message too large was another one: try once more.
            self.oversized_at_one = True
            return
        where = f"after seq {self.since}" if self.since is not None else "from the start"
        if self.since_time is not None:
            where = f"from {self.since_time}"
        self.fail(
            TooLarge(
                f"a stored event matching {self.topic!r} {where} is larger than this "
                f"client's max_message_size ({max_message_size} bytes); raise it (the "
                f"max_message_size argument of open_client) to read it"
            )
        )


#: What waits in the outbox: frames ready to send, and operations that get a ref when sent.
OutboxItem = ClientFrame | Pending[Any]

#: Frames that belong to one connection (their ids mean nothing on the next one).
_CONTROL: Final = frozenset({Subscribe, Unsubscribe, Cancel, Ping, Pong})


class Outbox:
    """Frames and operations waiting to be sent, in order; survives reconnects.

    Bounded for publishers: :meth:`full` tells ``publish`` to :meth:`wait_room`. Control frames
    (subscribe, unsubscribe, ping, pong) are never refused, and are dropped when the
    connection they were meant for ends.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size: Final = max_size
        self.items: deque[OutboxItem] = deque()
        self._room = trio.lowlevel.ParkingLot()
        self._ready = trio.lowlevel.ParkingLot()
        self._drained = trio.lowlevel.ParkingLot()
        self.closed = False

    def __len__(self) -> int:
        return len(self.items)

    def full(self) -> bool:
        return len(self.items) >= self.max_size

    def append(self, item: OutboxItem) -> None:
        self.items.append(item)
        if self._ready:
            self._ready.unpark()

    def push_front(self, items: Iterable[OutboxItem]) -> None:
        """Put *items* (in their order) before everything waiting."""
        self.items.extendleft(reversed(list(items)))
        if self.items and self._ready:
            self._ready.unpark()

    def take(self, n: int) -> list[OutboxItem]:
        """Remove and return up to *n* items from the front."""
        items = self.items
        if len(items) <= n:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(n)]
        if self._room:
            self._room.unpark_all()
        return batch

    def drop_control(self) -> None:
        """Forget the control frames: the connection they were meant for has ended."""
        if any(type(item) in _CONTROL for item in self.items):
            self.items = deque(item for item in self.items if type(item) not in _CONTROL)

    async def wait_room(self) -> None:
        """Wait until the outbox has room (or is closed)."""
        await self._room.park()

    async def wait_ready(self) -> None:
        """Wait until something is appended (the writer)."""
        await self._ready.park()

    async def wait_drained(self) -> None:
        """Wait until the writer reports it sent everything (or its connection ended)."""
        await self._drained.park()

    def notify_drained(self) -> None:
        if self._drained:
            self._drained.unpark_all()

    def close(self) -> list[OutboxItem]:
        """Empty it for good, waking everyone; return what was waiting."""
        self.closed = True
        items = list(self.items)
        self.items.clear()
        self._room.unpark_all()
        self._ready.unpark_all()
        self._drained.unpark_all()
        return items
